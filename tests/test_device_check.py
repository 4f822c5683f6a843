"""scripts/device_check.sh, the prepared accelerator run, on CPU at tiny size: it runs the same code
path (studies/step_cost.py) end to end, says which device it ran on and writes the rows the report
reads. Only FLOPs and the rows' structure are checked, never a timing."""
import os
import subprocess
import sys

from altup_t5x import csv_tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_check_tiny_run_writes_its_rows(tmp_path):
  csv_path = str(tmp_path / 'step_cost.csv')
  env = dict(os.environ, PYTHON=sys.executable, CSV=csv_path, JAX_PLATFORMS='cpu',
             PYTHONPATH=REPO)
  out = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'device_check.sh'), '--tiny'],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'on cpu' in out.stdout, out.stdout
  rows = csv_tables.read(csv_path)
  cases = {(r['variant'], r['option'], r['kind']) for r in rows}
  # The optimizer update alone is timed once per variant, with the shipped settings.
  assert cases == {(v, o, k) for v in ('baseline', 'altup_k2') for o in ('default', 'scanned')
                   for k in ('train', 'decode')} | {(v, 'default', 'optimizer')
                                                    for v in ('baseline', 'altup_k2')}
  for r in rows:
    assert r['dtype'] == 'bfloat16' and r['device'].startswith('cpu') and r['run'].startswith('tiny-')
    assert float(r['median_ms']) > 0 and float(r['flops']) > 0 and float(r['peak_bytes']) > 0
    assert r['mfu'] == ''  # no known peak for a CPU
    assert (r['tokens_per_s'] == '') == (r['kind'] == 'optimizer')
    if r['variant'] == 'baseline':
      assert float(r['ratio']) == 1.0 and float(r['flops_ratio']) == 1.0
  by = {(r['variant'], r['option'], r['kind']): r for r in rows}
  # AltUp K=2's train step costs a few percent more FLOPs than the baseline at this tiny width
  # (d=8: the per-layer K x K work is not small next to the layer), never less.
  ratio = float(by[('altup_k2', 'default', 'train')]['flops_ratio'])
  assert 1.0 < ratio < 1.2, ratio
  # A scanned row reports the unrolled program's FLOPs (XLA counts a loop body once).
  assert by[('altup_k2', 'scanned', 'train')]['flops'] == by[('altup_k2', 'default', 'train')]['flops']
