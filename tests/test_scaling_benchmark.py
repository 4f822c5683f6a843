"""scripts/scaling_benchmark.py runs (a compile sweep at tiny size) and resumes from its CSV."""
import csv
import importlib.util
import os

from altup_t5x import csv_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
  spec = importlib.util.spec_from_file_location(
      'scaling_benchmark', os.path.join(ROOT, 'scripts', 'scaling_benchmark.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_sweep_writes_rows_and_resumes(tmp_path, capsys):
  sb = _load()
  path = str(tmp_path / 'scaling.csv')
  sb.main(['sweep', '--sizes', 'tiny', '--cases', '2', '--csv', path])
  capsys.readouterr()
  sb.main(['sweep', '--sizes', 'tiny', '--cases', '3', '--csv', path])  # only the 3rd is new
  assert capsys.readouterr().out.count('(in the CSV already)') == 2
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert [(r['scan_layers'], r['remat_policy']) for r in rows] == [
      ('False', 'none'), ('True', 'none'), ('True', 'full')]
  assert all(float(r['temp_bytes']) > 0 and float(r['compile_s']) > 0 for r in rows)
  # Rematerializing everything keeps fewer temporaries than keeping everything (scanned).
  assert float(rows[2]['temp_bytes']) < float(rows[1]['temp_bytes'])


def test_step_cases_rejects_an_unknown_case():
  sb = _load()
  assert list(sb.step_cases(['scanned_axis0'])) == ['unrolled', 'scanned_axis0']
  try:
    sb.step_cases(['scaned'])
  except SystemExit as e:
    assert "['scaned']" in str(e) and 'scanned_axis0' in str(e)
  else:
    raise AssertionError('an unknown --only case was accepted')


def test_op_categories_sum_executed_instructions_per_call():
  from studies import xla_profile
  events = [
      dict(ph='X', name='ynn_fusion.3', dur=3000.0),
      dict(ph='X', name='dot.7', dur=1000.0),
      dict(ph='X', name='bitcast_dynamic-update-slice_fusion.31', dur=500.0),
      dict(ph='X', name='dynamic-slice_bitcast_fusion.2', dur=250.0),
      dict(ph='X', name='subtract_dynamic-slice_fusion', dur=250.0),
      dict(ph='X', name='wrapped_broadcast.4', dur=400.0),
      dict(ph='X', name='copy.12', dur=200.0),
      dict(ph='X', name='copy_bitcast_fusion.1', dur=100.0),
      dict(ph='X', name='while.6', dur=60.0),
      dict(ph='X', name='multiply_add_fusion', dur=40.0),
      # Not executed instructions: runtime and Python frames, async ends, other phases.
      dict(ph='X', name='ThunkExecutor::Execute', dur=9e6),
      dict(ph='X', name='$api.py:2479 block_until_ready', dur=9e6),
      dict(ph='X', name='end: ynn_fusion', dur=9e6),
      dict(ph='X', name='PjitFunction(<lambda>)', dur=9e6),
      dict(ph='i', name='dot.8', dur=9e6),
  ]
  got = xla_profile.op_categories(events, calls=2)
  assert got == {
      'matmul': (2.0, 1.0),
      'stack write (dynamic-update-slice)': (0.25, 0.5),
      'slice read (dynamic-slice)': (0.25, 1.0),
      'zero fill (broadcast)': (0.2, 0.5),
      'copy': (0.1, 0.5),
      'transpose / layout copy': (0.05, 0.5),
      'while loop control': (0.03, 0.5),
      'other ops': (0.02, 0.5),
  }
  assert list(got) == xla_profile.ORDER  # the report's row order


def test_a_real_profile_sees_a_scans_stacking_and_its_matmuls():
  """XLA:CPU names its trace events after the instructions: the categories find a scan's stack
  writes and matmuls in a real trace (guards against a jaxlib that renames them)."""
  import jax
  import jax.numpy as jnp
  from studies import xla_profile

  def f(w, x):
    def body(h, w_l):
      h = jnp.tanh(h @ w_l)
      return h, h  # the stacked output is written with dynamic-update-slice
    return jax.lax.scan(body, x, w)

  w, x = jnp.ones((4, 64, 64)) / 64, jnp.ones((32, 64))
  fn = jax.jit(f)
  jax.block_until_ready(fn(w, x))
  cats, wall_ms = xla_profile.trace_ops(lambda: fn(w, x), calls=3)
  assert wall_ms > 0
  assert cats['matmul'][1] >= 4  # one per layer at least
  assert cats['stack write (dynamic-update-slice)'][1] >= 4
  assert all(ms >= 0 for ms, _ in cats.values())


def _step_row(sb, process, scan, allocator, ms, axis=1):
  row = {k: '' for k in sb.COLUMNS}
  row.update(part='step', size='small', variant='baseline', scan_layers=str(scan),
             remat_policy='none', one_hot_embedding='False', batch='8', inputs='512',
             targets='114', step_ms=str(ms), step_ms_min=str(ms), step_ms_max=str(ms),
             param_scan_axis=str(axis), process=process, allocator=allocator)
  return row


def test_report_numbers_step_runs_by_process_and_names_the_malloc(tmp_path):
  """Each process's rows are one run, its ratios to its own unrolled step, whatever the malloc."""
  from studies import report
  sb = _load()
  sweep = dict(_step_row(sb, '', False, '', ''), part='sweep', lower_s='1', compile_s='2',
               temp_bytes=str(2**30), peak_bytes=str(2**31))
  rows = [sweep, _step_row(sb, 'p1', False, '', 2000.0), _step_row(sb, 'p1', True, '', 2500.0),
          _step_row(sb, 'p2', False, 'jemalloc retain:true', 1000.0),
          _step_row(sb, 'p2', True, 'jemalloc retain:true', 1100.0, axis=0)]
  csv_tables.update(str(tmp_path / 'scaling.csv'), rows, sb.COLUMNS)
  text = report.scaling_section(str(tmp_path))
  assert '| 1 | baseline | 8 x 512/114 | scanned | 2500.0 | 2500.0-2500.0 | 1.250x |' in text
  assert ('| 2 | baseline | 8 x 512/114 | unrolled, jemalloc (retain) | 1000.0 | 1000.0-1000.0 '
          '| 1.000x |') in text
  assert ('| 2 | baseline | 8 x 512/114 | scanned, param_scan_axis 0, jemalloc (retain) | 1100.0 '
          '| 1100.0-1100.0 | 1.100x |') in text


def test_report_profile_table_sums_categories_per_case(tmp_path):
  from studies import report
  sb = _load()
  base = dict(process='p', allocator='', variant='baseline', batch=2, inputs=128, targets=32,
              rounds=1, calls=1, traced_ms=10.0)
  rows = [dict(base, case='unrolled', step_ms=100.0, minor_faults=5, category='matmul',
               core_ms=80.0, ops=4),
          dict(base, case='scanned', step_ms=120.0, minor_faults=7, category='matmul',
               core_ms=70.0, ops=4),
          dict(base, case='scanned', step_ms=120.0, minor_faults=7,
               category='stack write (dynamic-update-slice)', core_ms=30.0, ops=8)]
  csv_tables.update(str(tmp_path / 'scaling_profile.csv'), rows, sb.PROFILE_COLUMNS)
  text = report.scaling_profile_section(str(tmp_path))
  assert '| matmul | 80.0 | 70.0 | -10.0 |' in text
  assert '| stack write (dynamic-update-slice) | 0.0 | 30.0 | +30.0 |' in text
  assert '| all instructions | 80.0 | 100.0 | +20.0 |' in text
  assert '| step, wall ms (untraced, round-robin median) | 100.0 | 120.0 | 1.200x |' in text
  assert '| minor page faults per untraced step | 5 | 7 | +2 |' in text
  assert 'malloc glibc' in text
