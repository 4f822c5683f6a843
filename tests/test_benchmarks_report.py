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
  assert 'add `sweep` to --parts' in msgs[-1]


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
