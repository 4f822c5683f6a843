"""BENCHMARKS.md and the README's results are exactly what the generator makes of the committed data."""
import os
import subprocess

import pytest

from studies import fidelity, report, t5x_compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, 'benchmarks')


def test_benchmarks_md_is_generated_from_committed_data():
  path = os.path.join(ROOT, 'BENCHMARKS.md')
  with open(path) as f:
    committed = f.read()
  assert committed == report.render(DATA, path), (
      'BENCHMARKS.md differs from the generator\'s output: run '
      '`python scripts/benchmark.py report --out benchmarks/` and commit the result')


def test_readme_results_are_generated_from_committed_data():
  with open(os.path.join(ROOT, 'README.md')) as f:
    committed = f.read()
  assert report.README_BEGIN in committed and report.README_END in committed
  assert committed == report.render_readme(DATA, committed)


def test_analysis_template_rejects_unknown_fields():
  rows = [dict(shape='small', variant='baseline', inputs='4', targets='2', train_ratio='1',
               train_flop_ratio='1', params='10', optimizer_ms='1', train_ms='2', batch='2')]
  assert report.fill_template('{speed.small.baseline.train_ms:.1f}', rows, [], {}) == '2.0'
  with pytest.raises(KeyError, match='speed.small.altup_k9'):
    report.fill_template('{speed.small.altup_k9.train_ms}', rows, [], {})


def test_t5x_python_is_a_flag_or_env_with_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.delenv(t5x_compare.T5X_PYTHON_ENV, raising=False)
  with pytest.raises(t5x_compare.T5XPythonError, match='--t5x-python'):
    t5x_compare.t5x_python(None)
  with pytest.raises(t5x_compare.T5XPythonError, match='not an executable'):
    t5x_compare.t5x_python(str(tmp_path / 'missing'))
  exe = tmp_path / 'python'
  exe.write_text('#!/bin/sh\n')
  exe.chmod(0o755)
  monkeypatch.setenv(t5x_compare.T5X_PYTHON_ENV, str(exe))
  assert t5x_compare.t5x_python(None) == str(exe)


def test_fidelity_plan_resumes_and_report_marks_missing(tmp_path):
  """A cached run leaves the plan's todo list; the report shows it and marks the rest."""
  runs = {}
  todo = fidelity.plan(runs)
  assert len({s['name'] for s in todo}) == len(todo)
  assert [s['part'] for s in todo[:12]] == ['sweep'] * 12
  first = todo[0]
  os.makedirs(fidelity.runs_dir(str(tmp_path)))
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(fidelity.runs_dir(str(tmp_path)), first['name'] + '.json'), 'w') as f:
    json.dump(dict(first, eval=[[0, 0.0, 7.0], [300, 30.0, 4.5]], train_seconds=30.0,
                   compile_s=5.0, loadavg=1.0), f)
  runs = fidelity.load_runs(str(tmp_path))
  assert first['name'] in runs
  text = report.fidelity_section(str(tmp_path), [], '.')
  assert '**Status: 1 of' in text and '4.5000' in text and 'not yet run' in text


def test_fidelity_workers_claim_runs_with_lock_files(tmp_path):
  """Two workers never train the same run; a dead worker's lock is taken over."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  lock = str(tmp_path / 'run.lock')
  assert fidelity._try_lock(lock)
  assert not fidelity._try_lock(lock)  # held by a live process (this one)
  os.remove(lock)
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  with open(lock, 'w') as f:
    f.write(dead)
  assert fidelity._try_lock(lock)
  with open(lock) as f:
    assert int(f.read()) == os.getpid()


def test_fidelity_claims_wait_for_the_sweep(tmp_path):
  """Without the sweep in --parts and no worker running it, claim runs stop with a message."""
  msgs = []
  assert fidelity.run_study(str(tmp_path), parts=['a'], log=msgs.append) == []
  assert 'add `sweep`' in msgs[-1] and 'to --parts' in msgs[-1]


def test_fidelity_verdicts_equal_a_numpy_paired_test():
  """Claim rows: mean paired difference and its standard error as NumPy computes them; the rule's
  three outcomes; (d)-(g) get a second pair at the baseline's best LR, planned after the ablation."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  runs = {}
  def add(variant, lr, seed, steps, loss, scale='study'):
    s = fidelity.spec(scale, variant, 'rsqrt', lr, seed, steps, 'x')
    runs[s['name']] = dict(s, eval=[[0, 0.0, 7.0], [steps, 1.0, loss]])
  # Sweep: baseline best at 0.03, every AltUp K=2-family variant best at 0.1.
  for v, best in (('baseline', 0.03), ('altup_k2', 0.1), ('recycled_k2', 0.1), ('altup_k4', 0.1)):
    for lr in fidelity.LRS:
      add(v, lr, 0, fidelity.SWEEP_STEPS, 3.0 if lr == best else 4.0)
  full = fidelity.FULL_STEPS
  base = [3.40, 3.42, 3.41]
  k2_low = [3.38, 3.39, 3.40]       # at 0.03: better on every seed
  k2_high = [3.45, 3.47, 3.44]      # at 0.1: worse on every seed
  for seed in range(3):
    add('baseline', 0.03, seed, full, base[seed])
    add('altup_k2', 0.03, seed, full, k2_low[seed])
    add('altup_k2', 0.1, seed, full, k2_high[seed])
  add('altup_k2_same', 0.1, 0, full, 3.30)   # (d): one better, one worse -> inconclusive
  add('altup_k2_same', 0.1, 1, full, 3.60)
  rows = {(r['cid'], r['lr'], r['ref_lr']): r for r in report._claim_rows(runs, fidelity, [])}
  d = np.array(base) - np.array(k2_low)
  r = rows[('a', 0.03, 0.03)]
  np.testing.assert_allclose(r['m'], d.mean())
  np.testing.assert_allclose(r['se'], d.std(ddof=1) / np.sqrt(3))
  assert r['verdict'] == 'reproduced' and r['n'] == 3
  assert rows[('a', 0.1, 0.03)]['verdict'] == 'not reproduced'
  assert rows[('d', 0.1, 0.1)]['verdict'] == 'inconclusive'
  assert rows[('d', 0.03, 0.03)]['n'] == 0  # planned (lr_check), not run
  assert fidelity.claim_pairs(runs, 'd') == [(0.1, 0.1), (0.03, 0.03)]
  plan = fidelity.plan(runs)
  parts = [s['part'] for s in plan]
  assert 'lr_check' in parts and parts.index('lr_check') > max(
      i for i, p in enumerate(parts) if p == 'ablation')
  checked = {s['variant'] for s in plan if s['part'] == 'lr_check'}
  assert checked == {'altup_k2_same', 'altup_k2_dynamic', 'altup_k2_predicted', 'altup_k2_moe'}


def test_scaling_md_is_generated_from_committed_data():
  with open(os.path.join(ROOT, report.SCALING_DOC)) as f:
    committed = f.read()
  assert committed == report.render_scaling(DATA, ROOT), (
      f'{report.SCALING_DOC} differs from the generator\'s output: run '
      '`python scripts/benchmark.py report --out benchmarks/` and commit the result')


def _headline_cells(text, variant):
  """The cells of the headline table's row of `variant` (its name in backticks)."""
  lines = [l for l in text.splitlines() if l.startswith('| ') and f'(`{variant}`)' in l]
  assert len(lines) == 1, lines
  return [c.strip() for c in lines[0].strip('|').split(' | ')]


def test_headline_costs_equal_the_step_cost_csv():
  """The headline reads the CPU run of step_cost.csv with the most tokens per batch; its ratios are
  those of the CSV's raw columns (FLOPs, median time, peak bytes over the baseline's)."""
  import csv  # pylint: disable=g-import-not-at-top
  with open(os.path.join(DATA, 'step_cost.csv'), newline='') as f:
    rows = [r for r in csv.DictReader(f) if r['kind'] == 'train' and r['option'] == 'default'
            and r['size'] == 'small' and r['device'].startswith('cpu')]
  tokens = {r['run']: int(r['batch']) * (int(r['inputs']) + int(r['targets'])) for r in rows}
  run = [name for name in tokens if tokens[name] == max(tokens.values())][-1]
  by = {r['variant']: r for r in rows if r['run'] == run}
  text = report.render(DATA, os.path.join(ROOT, 'BENCHMARKS.md'))
  head = text.split('## What a step costs')[0]
  assert f'run `{run}`' in head
  for variant in ('altup_k2', 'altup_k4'):
    cells = _headline_cells(head, variant)
    ratio = lambda col: float(by[variant][col]) / float(by['baseline'][col])
    assert cells[1] == f'{ratio("flops"):.3f}x'
    assert cells[2] == f'{ratio("median_ms"):.3f}x'
    assert cells[4] == f'{ratio("peak_bytes"):.3f}x'
  assert text.index('## Results at a glance') < text.index('## Targets') < text.index(
      '## Reproducing')
  assert '## Scaling options' in text and report.SCALING_DOC in text
  assert '| kind of instruction |' not in text  # the profile tables live in docs/scaling.md


def _cost_row(run, device, variant, flops, ms, peak, option='default'):
  from studies import step_cost  # pylint: disable=g-import-not-at-top
  row = {k: '' for k in step_cost.COLUMNS}
  row.update(run=run, date='2026-12-01 10:00', device=device, loadavg='1.0', size='small',
             batch='8', inputs='512', targets='114', dtype='float32', variant=variant,
             option=option, kind='train', params='1000', flops=str(flops), peak_bytes=str(peak),
             compile_s='1', median_ms=str(ms), spread_ms='0', calls='3', ratio='1',
             flops_ratio='1', tokens_per_s='1', mfu='')
  return row


def test_headline_gpu_column_reads_accelerator_rows_only(tmp_path):
  from altup_t5x import csv_tables  # pylint: disable=g-import-not-at-top
  from studies import step_cost  # pylint: disable=g-import-not-at-top
  cpu = [_cost_row('c', 'cpu:cpu', 'baseline', 100, 200.0, 10),
         _cost_row('c', 'cpu:cpu', 'altup_k2', 101, 230.0, 12),
         _cost_row('c', 'cpu:cpu', 'altup_k2', 101, 220.0, 12, option='unfused')]
  path = str(tmp_path / 'step_cost.csv')
  csv_tables.write(path, cpu, step_cost.COLUMNS)
  text = report.headline_section(str(tmp_path), [], '.')
  assert _headline_cells(text, 'altup_k2')[1:5] == ['1.010x', '1.150x', 'not measured', '1.200x']
  assert 'step time on a GPU or TPU' in text
  gpu = [_cost_row('g', 'gpu:NVIDIA H200', 'baseline', 100, 10.0, 10),
         _cost_row('g', 'gpu:NVIDIA H200', 'altup_k2', 101, 10.5, 12)]
  csv_tables.write(path, cpu + gpu, step_cost.COLUMNS)
  text = report.headline_section(str(tmp_path), [], '.')
  assert _headline_cells(text, 'altup_k2')[1:5] == ['1.010x', '1.150x', '1.050x', '1.200x']
  assert 'step time on a GPU or TPU' not in text and 'run `g`' in text
  section = report.step_cost_section(str(tmp_path))
  assert ('- run `c`: AltUp K=2: fused 1.150x, unfused 1.100x the baseline (fused / unfused 1.045).'
          in section)


def test_step_cost_table_names_the_malloc_and_the_optimizer_update():
  """Each CPU run's table names the malloc it ran with; a case's optimizer-alone row fills the
  `optimizer ms` column (cases without one show '-')."""
  from studies import step_cost  # pylint: disable=g-import-not-at-top
  rows = [_cost_row('c', 'cpu:cpu', 'baseline', 100, 200.0, 10),
          _cost_row('c', 'cpu:cpu', 'altup_k2', 101, 230.0, 12),
          dict(_cost_row('c', 'cpu:cpu', 'baseline', 5, 40.5, 4), kind='optimizer')]
  for r in rows:
    r['allocator'] = 'jemalloc retain:true'
  text = step_cost.markdown(rows)
  assert 'malloc jemalloc retain:true, load average' in text
  lines = {l.split(' | ')[1]: l for l in text.splitlines() if l.startswith('| small |')}
  assert ' | 40.5 | ' in lines['baseline'] and ' | - | ' in lines['altup_k2']
  gpu = [dict(r, device='gpu:NVIDIA H200') for r in rows[:2]]
  assert 'malloc' not in step_cost.markdown(gpu)


def test_step_cost_section_splits_the_step_into_optimizer_and_rest(tmp_path):
  """With optimizer-alone rows, the section gives each variant's train step, optimizer update and
  the rest (train minus optimizer) against the baseline's, from the CSV's medians."""
  from altup_t5x import csv_tables  # pylint: disable=g-import-not-at-top
  from studies import step_cost  # pylint: disable=g-import-not-at-top
  rows = [_cost_row('c', 'cpu:cpu', 'baseline', 100, 200.0, 10),
          _cost_row('c', 'cpu:cpu', 'altup_k2', 101, 230.0, 12),
          dict(_cost_row('c', 'cpu:cpu', 'baseline', 5, 50.0, 4), kind='optimizer'),
          dict(_cost_row('c', 'cpu:cpu', 'altup_k2', 6, 60.0, 5), kind='optimizer')]
  csv_tables.write(str(tmp_path / 'step_cost.csv'), rows, step_cost.COLUMNS)
  section = report.step_cost_section(str(tmp_path))
  assert ('- run `c` (the baseline\'s optimizer update 50.0 ms of its 200.0 ms step, 25%): '
          'AltUp K=2: train step 1.150x, optimizer update 1.200x, the rest 1.133x.') in section


def _study_runs():
  """Synthetic fidelity runs: a sweep (baseline best at 0.03, AltUp K=2 at 0.1), claim (a)
  reproduced at 0.03/0.03, and the dense 2x reference (g3) better than AltUp K=2 on every seed."""
  runs = {}
  def add(variant, lr, seed, steps, loss):
    s = fidelity.spec('study', variant, 'rsqrt', lr, seed, steps, 'x')
    runs[s['name']] = dict(s, eval=[[0, 0.0, 7.0], [steps, 1.0, loss]])
  for v, best in (('baseline', 0.03), ('altup_k2', 0.1), ('recycled_k2', 0.1), ('altup_k4', 0.1)):
    for lr in fidelity.LRS:
      add(v, lr, 0, fidelity.SWEEP_STEPS, 3.0 if lr == best else 4.0)
  for seed, (b, k2, dense) in enumerate([(3.40, 3.38, 3.30), (3.42, 3.39, 3.31),
                                         (3.41, 3.40, 3.29)]):
    add('baseline', 0.03, seed, fidelity.FULL_STEPS, b)
    for lr in (0.03, 0.1):
      add('altup_k2', lr, seed, fidelity.FULL_STEPS, k2)
    add('dense_2d', 0.03, seed, fidelity.FULL_STEPS, dense)
  return runs


def test_a_reference_model_beating_altup_is_never_an_altup_gain():
  rows = [r for r in report._claim_rows(_study_runs(), fidelity, []) if r['n']]
  g3 = [r for r in rows if r['cid'] == 'g3']
  assert g3 and all(r['verdict'] == 'reproduced' for r in g3)  # dense 2x is better
  for text in (report.summary_line(rows, fidelity, 1, 2),
               report._fidelity_reading(rows, _study_runs(), fidelity)):
    gains = text.split('reproduced at equal steps')[1].split('The opposite significant')[0]
    assert '(a) altup_k2' in gains and '(g3)' not in gains
    reference = text.split('Reference model against AltUp:')[1]
    assert '(g3) dense_2d' in reference and 'dense_2d better' in reference
  assert all('dense_2d better (a reference model, not an AltUp gain)' in r['line'] for r in g3)


def test_readme_says_each_altup_gain_at_equal_wall_clock():
  """Each reproduced AltUp claim in the README carries its equal wall-clock verdict; (g3) is not
  among the gains; (g1) is named as the one-router-pass dynamic variant."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    line = next(l for l in f if l.startswith('- Fidelity study'))
  runs = fidelity.load_runs(DATA)
  rows = [r for r in report._claim_rows(runs, fidelity, report._study_speed_rows(
      DATA, report._table(DATA, 'speed.csv'))) if r['n']]
  gains = line.split('reproduced at equal steps')[1].split('The opposite significant')[0]
  assert '(g3)' not in gains
  reproduced = [r for r in rows if r['short'] == 'reproduced' and r['cid'] not in ('g3',)]
  assert reproduced
  for r in reproduced:
    assert (f'({r["cid"]}) {r["v"]} vs {r["ref"]} at peak LR {r["lr"]:g}/{r["ref_lr"]:g} '
            f'{r["m"]:+.4f}') in gains
    assert f'at equal wall-clock {r["tm"]:+.4f} +- {r["tse"]:.4f}: {r["time_short"]}' in gains
  assert "altup_correct_router='input'" in line


def test_fidelity_csv_is_generated_from_the_cached_runs():
  """benchmarks/fidelity.csv holds exactly the eval curves of the committed runs (both studies)."""
  from altup_t5x import csv_tables  # pylint: disable=g-import-not-at-top
  from studies.common import FLOAT_FORMAT  # pylint: disable=g-import-not-at-top
  runs = fidelity.load_runs(DATA)
  want = [{k: format(v, FLOAT_FORMAT) if isinstance(v, float) else str(v) for k, v in r.items()}
          for r in fidelity.csv_rows(runs)]
  got = csv_tables.read(os.path.join(DATA, 'fidelity.csv'))
  assert len(got) == len(want)
  assert got == want, ('benchmarks/fidelity.csv differs from the cached runs: run '
                       '`python scripts/benchmark.py sizes --out benchmarks/ --plan` after '
                       '`fidelity.write_outputs`, or any fidelity/sizes command')
