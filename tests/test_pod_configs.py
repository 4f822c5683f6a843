"""The pod route's documents and configs agree with each other and with the planner's table.

- every configs/pretrain file, as shipped, fits the slice its header names, by a compiled row of
  benchmarks/pods.csv with its own scan/remat/model-axis setting and >= 10% memory left (the
  slice's device count is derived here from the slice name, independently of gen_configs.py);
- one --tfds_data_dir, one set of pinned commits (t5x_pins.txt), and every repository path that
  README.md and docs/ name exists.
"""
import csv
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1024 ** 3
# Memory per JAX device of each chip (TPU v3: one core of the 32 GiB chip; GPUs: GB as sold).
MEMORY = {'tpu_v3': 16 * GiB, 'tpu_v4': 32 * GiB, 'tpu_v5e': 16 * GiB, 'tpu_v5p': 95 * GiB,
          'a100_40gb': 40e9, 'a100_80gb': 80e9, 'h100_80gb': 80e9}
PRETRAIN = sorted(glob.glob(os.path.join(REPO, 'configs', 'pretrain', '*.gin')))
DOCS = [os.path.join(REPO, 'README.md')] + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))


def _devices(slice_name: str) -> int:
  """JAX devices of a slice name: v3-N has N cores, v4-N / v5p-N count 2 TensorCores per chip,
  v5e-N counts chips, 'H x 8 <GPU>' is H hosts of 8 GPUs."""
  m = re.fullmatch(r'v(3|4|5e|5p)-(\d+)', slice_name)
  if m:
    n = int(m.group(2))
    return n // 2 if m.group(1) in ('4', '5p') else n
  m = re.fullmatch(r'(\d+) x 8 (A100 40GB|A100 80GB|H100 80GB)', slice_name)
  assert m, slice_name
  return 8 * int(m.group(1))


def _setting(text: str):
  body = text.split('from __gin__')[1]
  scan = re.search(r'^SCAN_LAYERS = (\w+)$', body, re.M)
  remat = re.search(r"^REMAT_POLICY = '(\w+)'$", body, re.M)
  model = re.search(r'^partitioning.PjitPartitioner.num_partitions = (\d+)$', body, re.M)
  return (scan.group(1) if scan else 'False', remat.group(1) if remat else 'none',
          int(model.group(1)) if model else 1)


def _rows():
  with open(os.path.join(REPO, 'benchmarks', 'pods.csv')) as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize('path', PRETRAIN, ids=os.path.basename)
def test_pretrain_config_fits_the_slice_its_header_names(path):
  text = open(path).read()
  header = ' '.join(l[2:] for l in text.split('from __gin__')[0].splitlines())
  m = re.search(r'Fits as shipped \(.*?\): (.+?) \((\d+) x (\w+), ([\d.]+) GiB per device\), '
                r'planned peak ([\d.]+) GiB per device \((\d+)% left\)', header)
  assert m, header
  slice_name, devices, chip = m.group(1), int(m.group(2)), m.group(3)
  assert _devices(slice_name) == devices
  scan, remat, model = _setting(text)
  name = os.path.basename(path)[:-4]
  rows = [r for r in _rows() if r['config'] == name and r['mode'] == 'compiled'
          and int(r['devices']) == devices and int(r['mesh'].split('x')[1]) == model
          and (r['scan_layers'], r['remat_policy']) == (scan, remat)]
  assert len(rows) == 1, (name, devices, scan, remat, model)
  peak = int(rows[0]['peak_bytes_per_device'])
  assert peak <= 0.9 * MEMORY[chip], (name, peak / GiB, chip)
  assert f'{peak / GiB:.1f}' == m.group(5)
  assert int(r'{:.0f}'.format(100 * (1 - peak / MEMORY[chip]))) == int(m.group(6))


def test_xl_and_xxl_ship_scanned_layers_with_the_unscanned_override_documented():
  for path in PRETRAIN:
    size = os.path.basename(path).split('_')[1]
    text = open(path).read()
    if size in ('xl', 'xxl'):
      assert _setting(text)[:2] == ('True', 'full'), path
      assert 'python -m altup_t5x.scan_convert --to scanned' in text
      assert '--gin.SCAN_LAYERS=False --gin.REMAT_POLICY="\'none\'"' in text
    # eval/infer/finetune of a size restore its pretraining checkpoint: the same layout.
    for kind in ('finetune', 'eval', 'infer'):
      for other in glob.glob(os.path.join(REPO, 'configs', kind, f'*_{size}_*.gin')):
        assert _setting(open(other).read())[:2] == _setting(text)[:2], other


def _shipped_text_files():
  out = [os.path.join(REPO, f) for f in ('README.md', 'setup.py', 't5x_pins.txt')]
  out += DOCS[1:] + glob.glob(os.path.join(REPO, 'scripts', '*'))
  out += glob.glob(os.path.join(REPO, 'configs', '*', '*.gin'))
  return sorted(set(out))


def test_one_tfds_data_dir_everywhere():
  seen = set()
  for path in _shipped_text_files():
    text = open(path).read()
    seen.update(re.findall(r'--tfds_data_dir=(gs://\S+?)(?=["`\s\\]|$)', text))
    assert 'gs://$BUCKET/tfds' not in text and '${BUCKET}/tfds' not in text, path
  assert seen == {'gs://${BUCKET}/tensorflow_datasets'}, seen


def test_commits_are_named_only_in_t5x_pins():
  with open(os.path.join(REPO, 't5x_pins.txt')) as f:
    commits = re.findall(r'\b[0-9a-f]{40}\b', f.read())
  assert len(commits) == 4
  for path in _shipped_text_files():
    if path.endswith('t5x_pins.txt'):
      continue
    text = open(path).read()
    for c in commits:
      assert c[:7] not in text, (path, c)


def test_readme_points_to_the_pod_guide_and_the_plans():
  readme = open(os.path.join(REPO, 'README.md')).read()
  for target in ('docs/pods.md', 'PODS.md', 'docs/verification.md', 'docs/data.md'):
    assert f']({target})' in readme, target
  assert len(readme.splitlines()) <= 250


# Repository paths as the documents write them (commands and links); templates with <...>, {...}
# or * stand for several files and are checked by their fixed part only.
PATH = re.compile(r'(?<![\w./~$-])((?:\.\./)?(?:scripts|configs|gin|docs|altup_t5x|tests|studies|'
                  r'benchmarks)/[\w./<>{},*-]*[\w*>}])')


@pytest.mark.parametrize('doc', DOCS, ids=os.path.basename)
def test_every_path_a_document_names_exists(doc):
  text = open(doc).read()
  base = os.path.dirname(doc)
  missing = []
  for p in sorted(set(PATH.findall(text))):
    fixed = re.split(r'[<{*]', p)[0].rstrip('/_')
    if not fixed or fixed.count('/') == 0 and not os.path.isdir(os.path.join(REPO, fixed)):
      continue
    here = [os.path.join(root, fixed) for root in (REPO, base)]
    if not any(os.path.exists(h) or glob.glob(h + '*') for h in here):
      missing.append(p)
  assert not missing, missing
