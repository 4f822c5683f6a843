"""scripts/scaling_benchmark.py runs (a compile sweep at tiny size) and resumes from its CSV."""
import csv
import importlib.util
import os

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
  sb.main(['sweep', '--sizes', 'tiny', '--cases', '3', '--csv', path])
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert [(r['scan_layers'], r['remat_policy']) for r in rows] == [
      ('False', 'none'), ('True', 'none'), ('True', 'full')]
  assert all(float(r['temp_bytes']) > 0 and float(r['compile_s']) > 0 for r in rows)
  # Rematerializing everything keeps fewer temporaries than keeping everything (scanned).
  assert float(rows[2]['temp_bytes']) < float(rows[1]['temp_bytes'])
  capsys.readouterr()
  sb.main(['sweep', '--sizes', 'tiny', '--cases', '4', '--csv', path])  # only the 4th is new
  assert capsys.readouterr().out.count('(in the CSV already)') == 3
  with open(path) as f:
    assert len(list(csv.DictReader(f))) == 4
