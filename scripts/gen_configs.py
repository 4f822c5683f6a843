"""Writes the T5X run configs in configs/: one ready file per experiment of the AltUp paper.

    python scripts/gen_configs.py            # rewrite configs/ and docs/pods.md's generated block
    python scripts/gen_configs.py --check    # exit 1 if either differs from what would be written
    python scripts/gen_configs.py --plan_commands   # the planner runs behind the pretrain headers

Each file layers, T5X style: size (gin/t5_1_1/<size>.gin) -> AltUp variant (gin/altup/*.gin) ->
model (gin/models/t5x_encoder_decoder.gin) -> tasks (gin/t5x_tasks.gin) -> T5X run gin
(t5x/configs/runs/<kind>.gin) -> the experiment's settings. Hyperparameters follow the paper's
setup (arXiv 2301.13310, section 4): C4 span-corruption pretraining for 500k steps at batch 256
with lengths 512/114, finetuning for 50k steps at batch 256. Each file's header carries the exact
command line; each pretrain header also names the slice its config fits as shipped, from the
compiled planner rows of benchmarks/pods.csv, and generation fails if a pretrain config fits none
of SLICES with MARGIN memory left. The generated files are committed; edit this script, not them.
"""
import argparse
import csv
import dataclasses
import os
import sys
import textwrap
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's altup_t5x

from altup_t5x.plan import CHIPS, GiB  # pylint: disable=g-import-not-at-top

SIZES = ('small', 'base', 'large', 'xl')
# Pretraining only (the paper stops at XL): XXL, as T5X's scalable_t5 runs it.
PRETRAIN_ONLY_SIZES = ('xxl',)
# name in file names -> (variant gin, description)
# AltUpConfig.layer_period() of each variant: the --period of scan_convert.
SCAN_PERIOD = {'baseline': 1, 'altup_k2': 2, 'altup_k4': 4, 'recycled_k2': 2}
VARIANTS = {
    'baseline': ('gin/altup/baseline.gin', 'the T5.1.1 baseline (no AltUp)'),
    'altup_k2': ('gin/altup/k2.gin', 'AltUp, K=2'),
    'altup_k4': ('gin/altup/k4.gin', 'AltUp, K=4'),
    'recycled_k2': ('gin/altup/recycled_k2.gin', 'Recycled-AltUp, K=2'),
}
SIZE_NAMES = {'small': 'T5.1.1-Small', 'base': 'T5.1.1-Base', 'large': 'T5.1.1-Large',
              'xl': 'T5.1.1-XL (the paper\'s "3B")', 'xxl': 'T5.1.1-XXL ("11B")'}
# XL does not fit data-parallel in 16 GiB TPUv3 cores (float32 params + grads alone are ~23 GB):
# shard it 8 ways over 'model', as T5X does for its XL/XXL configs on pods.
NUM_PARTITIONS = {'small': 1, 'base': 1, 'large': 1, 'xl': 8, 'xxl': 16}
# Network scaling options per size, (SCAN_LAYERS, REMAT_POLICY) where a size differs from
# gin/t5_1_1/arch.gin's (False, 'none'): the setting with which every variant of that size fits a
# slice of SLICES (below) by the planner. XL and XXL scan their layers and rematerialise each
# scanned group ('full'): unscanned XL needs 155.6 GiB per device on 32 devices, and XXL AltUp with
# T5X scalable_t5's 'minimal' needs 102.6 GiB on 64 (PODS.md). One setting per size keeps the
# variants' step times comparable (remat recomputes the forward pass in the backward pass).
SCALING = {'xl': (True, 'full'), 'xxl': (True, 'full')}


# Device counts at which each size's pretrain configs are compiled as shipped by the planner
# (scripts/plan_shipped.sh runs `python scripts/gen_configs.py --plan_commands`); the mesh is
# devices / NUM_PARTITIONS x NUM_PARTITIONS.
PLAN_DEVICES = {'small': (8,), 'base': (16,), 'large': (16,), 'xl': (16, 32), 'xxl': (64,)}


def plan_commands(every_compiled_row: bool = False) -> List[str]:
  """The planner command lines that produce the shipped rows of benchmarks/pods.csv, and with
  every_compiled_row those of its other compiled rows too (other devices, scan/remat settings)."""
  out = []
  if every_compiled_row:
    path = os.path.join(ROOT, 'benchmarks', 'pods.csv')
    with open(path) as f:
      for r in csv.DictReader(f):
        if r['mode'] != 'compiled' or not r['config'].startswith('c4_'):
          continue
        size = r['config'].split('_')[1]
        if _is_shipped(r, size) and int(r['devices']) in PLAN_DEVICES[size]:
          continue  # below
        model = r['mesh'].split('x')[1]
        out.append(f'python -m altup_t5x.plan configs/pretrain/{r["config"]}.gin '
                   f'--devices {r["devices"]} --num_partitions {model} '
                   f'--gin.SCAN_LAYERS={r["scan_layers"]} '
                   f'--gin.REMAT_POLICY="\'{r["remat_policy"]}\'" --csv benchmarks/pods.csv')
  for size in (*SIZES, *PRETRAIN_ONLY_SIZES):
    for devices in PLAN_DEVICES[size]:
      for variant in VARIANTS:
        out.append(f'python -m altup_t5x.plan configs/pretrain/c4_{size}_{variant}.gin '
                   f'--devices {devices} --num_partitions {NUM_PARTITIONS[size]} '
                   '--csv benchmarks/pods.csv')
  return out


def _scaling(size: str) -> str:
  if size not in SCALING:
    return ''
  scan, remat = SCALING[size]
  return f"SCAN_LAYERS = {scan}\nREMAT_POLICY = '{remat}'\n"

PRETRAIN_STEPS = 500_000
FINETUNE_STEPS = 50_000
BATCH_SIZE = 256
PRETRAIN_LENGTHS = {'inputs': 512, 'targets': 114}


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  description: str
  mixture: str
  lengths: Dict[str, int]


# Finetuning inputs are 512 tokens as in T5 (Raffel et al. 2020); targets are sized to the answers:
# GLUE labels are one or two words (T5X's GPU MNLI example uses 16), SuperGLUE ReCoRD entities and
# WSC spans, SQuAD answer spans and TriviaQA answers fit in 64. Override TASK_FEATURE_LENGTHS if needed.
# TFDS datasets each benchmark reads (names and versions of altup_t5x/data/tasks.py).
TFDS_NAMES = {'c4': 'c4/en:3.1.0', 'glue': 'glue/*:2.0.0', 'super_glue': 'super_glue/*:1.0.2',
              'squad': 'squad/v1.1:3.0.0', 'trivia_qa': 'trivia_qa/unfiltered.nocontext:1.1.0'}

BENCHMARKS = (
    Benchmark('glue', 'GLUE (all nine tasks, examples-proportional mixture)',
              'altup_glue_v2_proportional', {'inputs': 512, 'targets': 16}),
    Benchmark('super_glue', 'SuperGLUE (all eight tasks, examples-proportional mixture)',
              'altup_super_glue_v102_proportional', {'inputs': 512, 'targets': 64}),
    Benchmark('squad', 'SQuAD v1.1', 'altup_squad_v010', {'inputs': 512, 'targets': 64}),
    Benchmark('trivia_qa', 'closed-book TriviaQA', 'altup_trivia_qa_closed_book',
              {'inputs': 512, 'targets': 64}),
)

# Tiny, offline configs on the embedded corpus: the ones used to check the gin files under T5X on
# a CPU (see tests/test_gin_files.py and docs); not experiments.
SMOKE_VARIANTS = ('baseline', 'altup_k2', 'recycled_k2')
SMOKE_LENGTHS = {'inputs': 32, 'targets': 8}
SMOKE_BATCH = 4
SMOKE_PRETRAIN_STEPS = 20
SMOKE_FINETUNE_STEPS = 10

BUCKET = '${BUCKET}'  # placeholder in the documented commands
# The one --tfds_data_dir of every command (TFDS's own default directory name, in the bucket).
TFDS_DIR = f'gs://{BUCKET}/tensorflow_datasets'
CHECKPOINT_PERIOD = 5000

# Common slices and hosts: name -> (JAX devices, chip of altup_t5x.plan.CHIPS). A JAX device is a
# TPU v3 core (v3-N: N cores), a TPU v4/v5p chip (v4-N, v5p-N: N TensorCores, 2 per chip, so N/2
# devices), a TPU v5e chip (v5e-N: N chips) or one GPU (hosts of 8 GPUs).
SLICES = {}
for _n in (8, 32, 64, 128):
  SLICES[f'v3-{_n}'] = (_n, 'tpu_v3')
for _n in (16, 32, 64, 128, 256):
  SLICES[f'v4-{_n}'] = (_n // 2, 'tpu_v4')
for _n in (8, 16, 32, 64, 128):
  SLICES[f'v5e-{_n}'] = (_n, 'tpu_v5e')
for _n in (16, 32, 64, 128, 256):
  SLICES[f'v5p-{_n}'] = (_n // 2, 'tpu_v5p')
for _hosts in (1, 2, 4, 8, 16):
  for _chip, _gpu in (('a100_40gb', 'A100 40GB'), ('a100_80gb', 'A100 80GB'),
                      ('h100_80gb', 'H100 80GB')):
    SLICES[f'{_hosts} x 8 {_gpu}'] = (8 * _hosts, _chip)
# A plan fits a slice when its peak leaves at least this fraction of the device's memory free:
# XLA:CPU's estimate is not the accelerator compiler's (PODS.md), and the runtime needs some.
MARGIN = 0.10


def _lengths(lengths: Dict[str, int]) -> str:
  return '{' + ', '.join(f"'{k}': {v}" for k, v in lengths.items()) + '}'


def _command(first: str, args: List[str]) -> List[str]:
  """One shell command as comment lines, an argument per continued line."""
  out = [f'#   {first}' + (' \\' if args else '')]
  for i, arg in enumerate(args):
    out.append(f'#     {arg}' + (' \\' if i < len(args) - 1 else ''))
  return out


def _header(lines: List[str], command: List[str], env: str = '',
            then: Tuple[List[str], ...] = ()) -> str:
  """Comment lines, then the `python -m <command>` line to run; `then` holds the commands to run
  after it, each a program (its first item, written as is) and its arguments."""
  out = [f'# {l}' if l else '#' for l in lines]
  out.append('#')
  out.append(f'# Command{"s" if then else ""} (from the repository root, with the Python of '
             'scripts/install_t5x.sh; docs/pods.md):')
  out += _command(f'{env}python -m {command[0]}', command[1:])
  for cmd in then:
    out += _command(cmd[0], cmd[1:])
  out.append('#')
  out.append(f'# Generated by scripts/gen_configs.py; edit that script, not this file.')
  return '\n'.join(out) + '\n'


def _includes(size: str, variant: str, run: str, extra: Tuple[str, ...] = ()) -> str:
  files = [f'gin/t5_1_1/{size}.gin', VARIANTS[variant][0], 'gin/models/t5x_encoder_decoder.gin',
           *extra, 'gin/t5x_tasks.gin', f't5x/configs/runs/{run}.gin']
  return '\n'.join(f"include '{f}'" for f in files) + '\n'


def _partitions(size: str) -> str:
  n = NUM_PARTITIONS[size]
  if n == 1:
    return ''
  return f'partitioning.PjitPartitioner.num_partitions = {n}\n'


def _compiled_rows(name: str) -> List[Dict[str, str]]:
  path = os.path.join(ROOT, 'benchmarks', 'pods.csv')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r for r in csv.DictReader(f) if r['config'] == name and r['mode'] == 'compiled']


def _shipped_setting(size: str) -> Tuple[str, str, int]:
  scan, remat = SCALING.get(size, (False, 'none'))
  return str(scan), remat, NUM_PARTITIONS[size]


def _is_shipped(row: Dict[str, str], size: str) -> bool:
  model = int(row['mesh'].split('x')[1])
  return (row['scan_layers'], row['remat_policy'], model) == _shipped_setting(size)


def slices_that_fit(peak_bytes: int, devices: int) -> List[str]:
  """SLICES with `devices` JAX devices whose memory per device exceeds the peak by MARGIN."""
  return [name for name, (d, chip) in SLICES.items()
          if d == devices and peak_bytes <= (1 - MARGIN) * CHIPS[chip]]


def shipped_fit(name: str, size: str) -> Optional[Dict[str, object]]:
  """The smallest slice (fewest devices; then TPU before GPU, least memory first) that a compiled
  plan of the config as shipped, at one of PLAN_DEVICES, fits; or None."""
  # Only the rows scripts/plan_shipped.sh recompiles (PLAN_DEVICES): the others may predate a
  # model change.
  rows = sorted((r for r in _compiled_rows(name) if _is_shipped(r, size)
                 and int(r['devices']) in PLAN_DEVICES[size]), key=lambda r: int(r['devices']))
  order = list(SLICES)
  for r in rows:
    peak = int(float(r['peak_bytes_per_device']))
    fits = slices_that_fit(peak, int(r['devices']))
    if fits:
      best = min(fits, key=lambda n: (not SLICES[n][1].startswith('tpu'), CHIPS[SLICES[n][1]],
                                      order.index(n)))
      memory = CHIPS[SLICES[best][1]]
      return dict(row=r, slice=best, chip=SLICES[best][1], peak=peak, memory=memory,
                  margin=1 - peak / memory, fits=fits)
  return None


def _wrap(text: str, indent: str = '    ') -> List[str]:
  """Lines of at most 97 characters (a gin comment of 100 columns) that never split a slice name."""
  for name in SLICES:
    text = text.replace(name, name.replace(' ', '\0'))
  return [l.replace('\0', ' ') for l in
          textwrap.wrap(text, width=97, subsequent_indent=indent, break_on_hyphens=False)]


def _memory(name: str, size: str, variant: str) -> List[str]:
  """Header lines: the slice the config fits as shipped and the per-device peak of every compiled
  plan of it in benchmarks/pods.csv (PODS.md), so a user sees what fits before launching."""
  rows = _compiled_rows(name)
  fit = shipped_fit(name, size)
  if fit is None:
    raise SystemExit(
        f'configs/pretrain/{name}.gin: no compiled plan of the shipped setting (scan, remat, '
        f'num_partitions = {_shipped_setting(size)}) fits a slice of SLICES with '
        f'{MARGIN:.0%} memory left; run scripts/plan_shipped.sh or change SCALING.')
  scan, remat, _ = _shipped_setting(size)
  r = fit['row']
  out = ['']
  out += _wrap(f'Fits as shipped (SCAN_LAYERS = {scan}, REMAT_POLICY = \'{remat}\', mesh '
               f'{r["mesh"]} = data x model): {fit["slice"]} ({r["devices"]} x {fit["chip"]}, '
               f'{fit["memory"] / GiB:.1f} GiB per device), planned peak {fit["peak"] / GiB:.1f} '
               f'GiB per device ({fit["margin"]:.0%} left). Slices, setup, resuming and storage: '
               'docs/pods.md.', indent='')
  if scan == 'True':
    out += _wrap('The public T5.1.1 checkpoints and the upcycler write unscanned layers: convert '
                 'such a checkpoint with `python -m altup_t5x.scan_convert --to scanned --period '
                 f'{SCAN_PERIOD[variant]} --in DIR --out NEW_DIR`, or train unscanned with '
                 '--gin.SCAN_LAYERS=False --gin.REMAT_POLICY="\'none\'" (memory below).', indent='')
  out += ['', 'Per-device peak memory of one train step, planned by `python -m altup_t5x.plan` '
          '(PODS.md; compiled', 'for simulated devices: XLA:CPU\'s estimate, not a guarantee for '
          'the accelerator). Mesh: data x model', '(model = partitioning.PjitPartitioner.'
          'num_partitions). Other settings are gin overrides, e.g.',
          f'--gin.SCAN_LAYERS=True --gin.REMAT_POLICY="\'full\'". Slices listed leave >= '
          f'{MARGIN:.0%} of the memory free.']
  shipped = _shipped_setting(size)
  for r in sorted(rows, key=lambda r: (int(r['devices']), r['scan_layers'] != shipped[0],
                                       r['remat_policy'] != shipped[1], r['scan_layers'],
                                       r['remat_policy'])):
    need = int(float(r['peak_bytes_per_device']))
    model = int(r['mesh'].split('x')[1])
    tag = ' (shipped)' if _is_shipped(r, size) else ''
    mp = '' if model == NUM_PARTITIONS[size] else f', num_partitions {model}'
    fits = slices_that_fit(need, int(r['devices']))
    out += _wrap(f'  {r["devices"]} devices ({r["mesh"]}{mp}), scan {r["scan_layers"]}, remat '
                 f'{r["remat_policy"]}{tag}: {need / GiB:.1f} GiB; fits: '
                 + (', '.join(fits) or 'none of SLICES'))
  return out


def _layout_note(size: str, variant: str) -> List[str]:
  if size not in SCALING or not SCALING[size][0]:
    return []
  period = SCAN_PERIOD[variant]
  return ['', 'Scanned layers, as the pretrain config of this size: restore an unscanned '
          'checkpoint after', f'`python -m altup_t5x.scan_convert --to scanned --period {period} '
          '--in DIR --out NEW_DIR`.']


def pretrain(size: str, variant: str) -> Tuple[str, str]:
  name = f'c4_{size}_{variant}'
  path = f'configs/pretrain/{name}.gin'
  model_dir = f'gs://{BUCKET}/altup/pretrain/{name}'
  head = _header(
      [f'Pretrain {SIZE_NAMES[size]}, {VARIANTS[variant][1]}, on C4 span corruption:',
       f'{PRETRAIN_STEPS:,} steps, batch {BATCH_SIZE}, lengths {_lengths(PRETRAIN_LENGTHS)} '
       '(the AltUp paper\'s setup),',
       'inverse-square-root learning rate with 10k warmup and dropout 0 (T5X\'s T5.1.1 C4 '
       'pretraining).', '',
       f'C4 (TFDS {TFDS_NAMES["c4"]}) must be prepared in --tfds_data_dir beforehand '
       '(docs/data.md).',
       *_memory(name, size, variant)],
      ['t5x.train', f'--gin_file={path}', f'--gin.MODEL_DIR="\'{model_dir}\'"',
       f'--tfds_data_dir={TFDS_DIR}'])
  body = f"""from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import partitioning
from t5x import utils

{_includes(size, variant, 'pretrain')}
MIXTURE_OR_TASK_NAME = 'altup_c4_span_corruption'
TASK_FEATURE_LENGTHS = {_lengths(PRETRAIN_LENGTHS)}
TRAIN_STEPS = {PRETRAIN_STEPS}
BATCH_SIZE = {BATCH_SIZE}
DROPOUT_RATE = 0.0
USE_CACHED_TASKS = False  # the altup_* tasks preprocess on the fly

train_script.train.eval_period = 5000
utils.SaveCheckpointConfig.period = 5000
{_partitions(size)}{_scaling(size)}"""
  return path, head + body


def finetune(bench: Benchmark, size: str, variant: str) -> Tuple[str, str]:
  name = f'{bench.name}_{size}_{variant}'
  path = f'configs/finetune/{name}.gin'
  ckpt = f'gs://{BUCKET}/altup/pretrain/c4_{size}_{variant}/checkpoint_{PRETRAIN_STEPS}'
  model_dir = f'gs://{BUCKET}/altup/finetune/{name}'
  head = _header(
      [f'Finetune {SIZE_NAMES[size]}, {VARIANTS[variant][1]}, on {bench.description}:',
       f'{FINETUNE_STEPS:,} steps at batch {BATCH_SIZE} from the {PRETRAIN_STEPS:,}-step C4 '
       'checkpoint (the AltUp paper\'s setup),',
       'constant learning rate 1e-3 and dropout 0.1 (T5X\'s runs/finetune.gin). Validation '
       'metrics are computed every 5,000 steps.', '',
       f'TRAIN_STEPS counts from step 0, as in T5X: {PRETRAIN_STEPS:,} + {FINETUNE_STEPS:,}. '
       'For a checkpoint at another step N,',
       f'pass --gin.TRAIN_STEPS=N+{FINETUNE_STEPS}. TFDS {TFDS_NAMES[bench.name]} must be '
       'prepared in --tfds_data_dir (docs/data.md).', *_layout_note(size, variant)],
      ['t5x.train', f'--gin_file={path}', f'--gin.INITIAL_CHECKPOINT_PATH="\'{ckpt}\'"',
       f'--gin.MODEL_DIR="\'{model_dir}\'"', f'--tfds_data_dir={TFDS_DIR}'])
  body = f"""from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import partitioning
from t5x import utils

{_includes(size, variant, 'finetune')}
MIXTURE_OR_TASK_NAME = '{bench.mixture}'
TASK_FEATURE_LENGTHS = {_lengths(bench.lengths)}
TRAIN_STEPS = {PRETRAIN_STEPS + FINETUNE_STEPS}
INITIAL_CHECKPOINT_PATH = %gin.REQUIRED
BATCH_SIZE = {BATCH_SIZE}
DROPOUT_RATE = 0.1
USE_CACHED_TASKS = False  # the altup_* tasks preprocess on the fly
EVAL_PERIOD = 5000

utils.SaveCheckpointConfig.period = 5000
{_partitions(size)}{_scaling(size)}"""
  return path, head + body


def evaluate(bench: Benchmark, size: str, variant: str) -> Tuple[str, str]:
  name = f'{bench.name}_{size}_{variant}'
  path = f'configs/eval/{name}.gin'
  ckpt = f'gs://{BUCKET}/altup/finetune/{name}/checkpoint_{PRETRAIN_STEPS + FINETUNE_STEPS}'
  head = _header(
      [f'Evaluate the finetuned {SIZE_NAMES[size]}, {VARIANTS[variant][1]}, on the validation '
       f'split of {bench.description}', '(the test labels are not public); metrics go to '
       'EVAL_OUTPUT_DIR (JSON and TensorBoard). Every checkpoint of a finetune:',
       'CHECKPOINT_PATH = its MODEL_DIR and --gin.utils.RestoreCheckpointConfig.mode="\'all\'" '
       '(docs/pods.md).', *_layout_note(size, variant)],
      ['t5x.eval', f'--gin_file={path}', f'--gin.CHECKPOINT_PATH="\'{ckpt}\'"',
       f'--gin.EVAL_OUTPUT_DIR="\'gs://{BUCKET}/altup/eval/{name}\'"',
       f'--tfds_data_dir={TFDS_DIR}'])
  body = f"""from __gin__ import dynamic_registration
from t5x import partitioning
from t5x import utils

{_includes(size, variant, 'eval')}
MIXTURE_OR_TASK_NAME = '{bench.mixture}'
DROPOUT_RATE = 0.0  # unused at evaluation, but the architecture requires it

utils.DatasetConfig.split = 'validation'
{_partitions(size)}{_scaling(size)}"""
  return path, head + body


def infer(bench: Benchmark, size: str, variant: str) -> Tuple[str, str]:
  name = f'{bench.name}_{size}_{variant}'
  path = f'configs/infer/{name}.gin'
  ckpt = f'gs://{BUCKET}/altup/finetune/{name}/checkpoint_{PRETRAIN_STEPS + FINETUNE_STEPS}'
  head = _header(
      [f'Predictions (beam search) of the finetuned {SIZE_NAMES[size]}, {VARIANTS[variant][1]}, '
       f'on the validation split of', f'{bench.description}, written as JSON lines to '
       'INFER_OUTPUT_DIR. Add --gin.infer.mode="\'score\'" to score the targets instead;',
       'the test split for a leaderboard: '
       + (f'{infer_test_path(bench.name, size, variant)}.' if bench.name in TEST_BENCHMARKS
          else 'docs/pods.md.'), *_layout_note(size, variant)],
      ['t5x.infer', f'--gin_file={path}', f'--gin.CHECKPOINT_PATH="\'{ckpt}\'"',
       f'--gin.INFER_OUTPUT_DIR="\'gs://{BUCKET}/altup/infer/{name}\'"',
       f'--tfds_data_dir={TFDS_DIR}'])
  body = f"""from __gin__ import dynamic_registration
from t5x import partitioning
from t5x import utils

{_includes(size, variant, 'infer')}
MIXTURE_OR_TASK_NAME = '{bench.mixture}'
TASK_FEATURE_LENGTHS = {_lengths(bench.lengths)}
DROPOUT_RATE = 0.0  # unused at inference, but the architecture requires it

utils.DatasetConfig.split = 'validation'
{_partitions(size)}{_scaling(size)}"""
  return path, head + body


# The benchmarks with a leaderboard: what their test-split configs predict. The test mixture is
# bound once, in gin/t5x_infer_<bench>_test.gin, which those configs include.
TEST_BENCHMARKS = {
    'glue': 'GLUE (every task, MNLI as its matched and mismatched sets, and the diagnostic set AX, '
            'predicted as MNLI)',
    'super_glue': 'SuperGLUE (the eight tasks and the diagnostic sets AX-b and AX-g, predicted as '
                  'RTE)',
}


def infer_test_path(bench: str, size: str, variant: str) -> str:
  return f'configs/infer/{bench}_{size}_{variant}_test.gin'


def infer_test(bench: Benchmark, size: str, variant: str) -> Tuple[str, str]:
  """infer()'s config on the test split, for the leaderboard export (altup_t5x.leaderboard)."""
  name = f'{bench.name}_{size}_{variant}'
  path = infer_test_path(bench.name, size, variant)
  test_gin = f'gin/t5x_infer_{bench.name}_test.gin'
  ckpt = f'gs://{BUCKET}/altup/finetune/{name}/checkpoint_{PRETRAIN_STEPS + FINETUNE_STEPS}'
  out_dir = f'gs://{BUCKET}/altup/infer_test/{name}'
  head = _header(
      [*_wrap(f'Predictions (beam search) of the finetuned {SIZE_NAMES[size]}, '
              f'{VARIANTS[variant][1]}, on the test split of {TEST_BENCHMARKS[bench.name]}: the '
              f'test mixture of {test_gin}, which also keeps each example\'s ids. One '
              '<task>-predict.jsonl-00000-of-00001 per task in INFER_OUTPUT_DIR, which '
              'altup_t5x.leaderboard turns into the zip to upload (copied out of the bucket '
              'first). Each task\'s best checkpoint instead of the last: docs/pods.md.', indent=''),
       *_layout_note(size, variant)],
      ['t5x.infer', f'--gin_file={path}', f'--gin.CHECKPOINT_PATH="\'{ckpt}\'"',
       f'--gin.INFER_OUTPUT_DIR="\'{out_dir}\'"', f'--tfds_data_dir={TFDS_DIR}'],
      then=([f'gsutil -m cp -r {out_dir} .'],
            ['python -m altup_t5x.leaderboard', f'--benchmark={bench.name}',
             f'--predictions={name}', f'--output={name}.zip', f'--tfds_data_dir={TFDS_DIR}']))
  body = f"""from __gin__ import dynamic_registration
from t5x import partitioning
from t5x import utils

{_includes(size, variant, 'infer')}# After the run gin, so that its split ('test') and mixture override runs/infer.gin's.
include '{test_gin}'

TASK_FEATURE_LENGTHS = {_lengths(bench.lengths)}
DROPOUT_RATE = 0.0  # unused at inference, but the architecture requires it
"""
  pods = _partitions(size) + _scaling(size)
  return path, head + body + (f'\n{pods}' if pods else '')


def smoke(variant: str) -> List[Tuple[str, str]]:
  """Tiny configs on the embedded corpus: pretrain, finetune, eval and infer, CPU-sized."""
  base = f'configs/smoke/tiny_{variant}'
  out_dir = f'/tmp/altup_t5x_smoke/{variant}'
  env = 'JAX_PLATFORMS=cpu '
  common_lines = [f'T5X\'s tiny T5.1.1 size, {VARIANTS[variant][1]}, on the embedded (offline) '
                  'corpus with its own vocabulary:', 'a minutes-long check on a CPU that T5X '
                  'trains, evaluates and decodes this network, not an experiment.']
  lengths = _lengths(SMOKE_LENGTHS)
  files = []
  extra = ('gin/vocab/embedded.gin',)

  head = _header(['Smoke pretraining: ' + common_lines[0], *common_lines[1:],
                  f'{SMOKE_PRETRAIN_STEPS} steps, checkpoint at step {SMOKE_PRETRAIN_STEPS}.'],
                 ['t5x.train', f'--gin_file={base}_pretrain.gin',
                  f'--gin.MODEL_DIR="\'{out_dir}/pretrain\'"'], env)
  files.append((f'{base}_pretrain.gin', head + f"""from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import utils

{_includes('tiny', variant, 'pretrain', extra)}
MIXTURE_OR_TASK_NAME = 'altup_embedded_span_corruption'
TASK_FEATURE_LENGTHS = {lengths}
TRAIN_STEPS = {SMOKE_PRETRAIN_STEPS}
BATCH_SIZE = {SMOKE_BATCH}
DROPOUT_RATE = 0.0
USE_CACHED_TASKS = False
ACTIVATION_DTYPE = 'float32'  # CPU
RANDOM_SEED = 0

train_script.train:
  eval_period = {SMOKE_PRETRAIN_STEPS // 2}
  eval_steps = 2
utils.SaveCheckpointConfig.period = {SMOKE_PRETRAIN_STEPS}
utils.create_learning_rate_scheduler.warmup_steps = 10
"""))

  ft_steps = SMOKE_PRETRAIN_STEPS + SMOKE_FINETUNE_STEPS
  head = _header(['Smoke finetuning: ' + common_lines[0], *common_lines[1:],
                  f'{SMOKE_FINETUNE_STEPS} steps from the smoke pretraining checkpoint, with '
                  'inference evaluation at the end.'],
                 ['t5x.train', f'--gin_file={base}_finetune.gin',
                  f'--gin.INITIAL_CHECKPOINT_PATH="\'{out_dir}/pretrain/checkpoint_'
                  f'{SMOKE_PRETRAIN_STEPS}\'"', f'--gin.MODEL_DIR="\'{out_dir}/finetune\'"'], env)
  files.append((f'{base}_finetune.gin', head + f"""from __gin__ import dynamic_registration
import __main__ as train_script
from t5x import utils

{_includes('tiny', variant, 'finetune', extra)}
MIXTURE_OR_TASK_NAME = 'altup_embedded_span_corruption'
TASK_FEATURE_LENGTHS = {lengths}
TRAIN_STEPS = {ft_steps}
INITIAL_CHECKPOINT_PATH = %gin.REQUIRED
BATCH_SIZE = {SMOKE_BATCH}
DROPOUT_RATE = 0.1
USE_CACHED_TASKS = False
ACTIVATION_DTYPE = 'float32'  # CPU
RANDOM_SEED = 0
EVAL_STEPS = 2
EVAL_PERIOD = {SMOKE_FINETUNE_STEPS}
EVALUATOR_NUM_EXAMPLES = 8

infer_eval/utils.DatasetConfig.task_feature_lengths = {lengths}
utils.SaveCheckpointConfig.period = {SMOKE_FINETUNE_STEPS}
"""))

  head = _header(['Smoke evaluation: ' + common_lines[0], *common_lines[1:],
                  'Decodes 8 validation examples and computes the task\'s metrics.'],
                 ['t5x.eval', f'--gin_file={base}_eval.gin',
                  f'--gin.CHECKPOINT_PATH="\'{out_dir}/pretrain/checkpoint_'
                  f'{SMOKE_PRETRAIN_STEPS}\'"', f'--gin.EVAL_OUTPUT_DIR="\'{out_dir}/eval\'"'], env)
  files.append((f'{base}_eval.gin', head + f"""from __gin__ import dynamic_registration
import seqio
from t5x import utils

{_includes('tiny', variant, 'eval', extra)}
MIXTURE_OR_TASK_NAME = 'altup_embedded_span_corruption'
TASK_FEATURE_LENGTHS = {lengths}
DROPOUT_RATE = 0.0
ACTIVATION_DTYPE = 'float32'  # CPU

seqio.Evaluator.num_examples = 8
utils.DatasetConfig.split = 'validation'
utils.DatasetConfig.batch_size = {SMOKE_BATCH}
"""))

  head = _header(['Smoke inference: ' + common_lines[0], *common_lines[1:],
                  'Writes predictions for the validation split (about a minute); add '
                  '--gin.infer.mode="\'score\'" to score the targets instead.'],
                 ['t5x.infer', f'--gin_file={base}_infer.gin',
                  f'--gin.CHECKPOINT_PATH="\'{out_dir}/pretrain/checkpoint_'
                  f'{SMOKE_PRETRAIN_STEPS}\'"', f'--gin.INFER_OUTPUT_DIR="\'{out_dir}/infer\'"'],
                 env)
  files.append((f'{base}_infer.gin', head + f"""from __gin__ import dynamic_registration
import __main__ as infer_script
from t5x import utils

{_includes('tiny', variant, 'infer', extra)}
MIXTURE_OR_TASK_NAME = 'altup_embedded_span_corruption'
TASK_FEATURE_LENGTHS = {lengths}
DROPOUT_RATE = 0.0
ACTIVATION_DTYPE = 'float32'  # CPU

utils.DatasetConfig.split = 'validation'
utils.DatasetConfig.batch_size = {SMOKE_BATCH}
"""))
  return files


DOCS_PODS = 'docs/pods.md'
DOCS_BEGIN = '<!-- shipped: generated by `python scripts/gen_configs.py`; do not edit -->'
DOCS_END = '<!-- end of generated shipped-config tables -->'


def docs_block() -> str:
  """docs/pods.md's generated part: slices, and where each pretrain config fits as shipped."""
  families = {}
  for name, (devices, chip) in SLICES.items():
    families.setdefault(chip, []).append(f'{name} ({devices})')
  out = [DOCS_BEGIN, '', '| chip (one JAX device) | memory per device | slices (JAX devices) |',
         '|---|---|---|']
  for chip, names in families.items():
    out.append(f'| `{chip}` | {CHIPS[chip] / GiB:.1f} GiB | {", ".join(names)} |')
  n_ckpt = PRETRAIN_STEPS // CHECKPOINT_PERIOD + 1  # T5X also saves step 0 before the loop
  out += ['', f'Every pretrain config as shipped, at the fewest devices where a compiled plan '
          f'leaves >= {MARGIN:.0%} of the memory free (TPU first, then the least memory); '
          '"also" lists the '
          'other slices of that size that fit. A checkpoint holds the float32 parameters (4 bytes '
          'each) and the Adafactor state (the planner\'s optimizer bytes: T5X keeps the factored '
          f'statistics replicated, so one device holds all of it); {n_ckpt} checkpoints is a '
          f'{PRETRAIN_STEPS:,}-step run at period {CHECKPOINT_PERIOD:,} (steps 0, '
          f'{CHECKPOINT_PERIOD:,}, ..., {PRETRAIN_STEPS:,}) with T5X\'s default `keep = None`.', '',
          '| config | scan, remat | mesh | fits | peak GiB/device | left | also | parameters | '
          f'checkpoint GiB | {n_ckpt} checkpoints TiB |', '|' + '---|' * 10]
  for size in (*SIZES, *PRETRAIN_ONLY_SIZES):
    for variant in VARIANTS:
      name = f'c4_{size}_{variant}'
      fit = shipped_fit(name, size)
      if fit is None:
        raise SystemExit(f'{name}: fits no slice as shipped (see _memory)')
      r = fit['row']
      ckpt = 4 * int(r['params']) + int(float(r['optimizer_bytes_per_device']))
      scan, remat, _ = _shipped_setting(size)
      also = [n for n in fit['fits'] if n != fit['slice']]
      out.append(f'| `{name}` | {scan}, {remat} | {r["mesh"]} | {fit["slice"]} | '
                 f'{fit["peak"] / GiB:.1f} | {fit["margin"]:.0%} | {", ".join(also) or "-"} | '
                 f'{int(r["params"]) / 1e6:,.0f}M | {ckpt / GiB:.1f} | '
                 f'{n_ckpt * ckpt / 1024 ** 4:.2f} |')
  out += ['', 'Regenerate after a change to the model: `bash scripts/plan_shipped.sh` (compiles '
          'these rows again, then writes PODS.md, this block and the configs).', DOCS_END]
  return '\n'.join(out)


def _docs_text(root: str) -> Tuple[Optional[str], Optional[str]]:
  """(current, generated) text of docs/pods.md, or (None, None) if it does not exist."""
  path = os.path.join(root, DOCS_PODS)
  if not os.path.exists(path):
    return None, None
  text = open(path).read()
  if DOCS_BEGIN not in text or DOCS_END not in text:
    raise SystemExit(f'{DOCS_PODS}: the markers {DOCS_BEGIN!r} and {DOCS_END!r} are missing')
  head, rest = text.split(DOCS_BEGIN, 1)
  tail = rest.split(DOCS_END, 1)[1]
  return text, head + docs_block() + tail


def all_configs() -> Dict[str, str]:
  files = {}
  for size in SIZES:
    for variant in VARIANTS:
      files.update([pretrain(size, variant)])
      for bench in BENCHMARKS:
        files.update([finetune(bench, size, variant), evaluate(bench, size, variant),
                      infer(bench, size, variant)])
        if bench.name in TEST_BENCHMARKS:
          files.update([infer_test(bench, size, variant)])
  for size in PRETRAIN_ONLY_SIZES:
    for variant in VARIANTS:
      files.update([pretrain(size, variant)])
  for variant in SMOKE_VARIANTS:
    files.update(smoke(variant))
  return files


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true',
                      help='only compare configs/ with what would be written; exit 1 on a difference')
  parser.add_argument('--root', default=ROOT,
                      help='repository root (default: this script\'s parent directory)')
  parser.add_argument('--plan_commands', action='store_true',
                      help='print the planner commands for the shipped rows of benchmarks/pods.csv')
  parser.add_argument('--all', action='store_true',
                      help='with --plan_commands: also every other compiled row of pods.csv')
  args = parser.parse_args(argv)
  if args.plan_commands:
    print('\n'.join(plan_commands(args.all)))
    return 0
  files = all_configs()
  stale = []
  for rel, text in sorted(files.items()):
    path = os.path.join(args.root, rel)
    old = open(path).read() if os.path.exists(path) else None
    if old == text:
      continue
    stale.append(rel)
    if not args.check:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write(text)
  existing = set()
  for kind in ('pretrain', 'finetune', 'eval', 'infer', 'smoke'):
    d = os.path.join(args.root, 'configs', kind)
    if os.path.isdir(d):
      existing.update(f'configs/{kind}/{n}' for n in os.listdir(d) if n.endswith('.gin'))
  extra = sorted(existing - set(files))
  docs_old, docs_new = _docs_text(args.root)
  if docs_old != docs_new:
    stale.append(DOCS_PODS)
    if not args.check:
      with open(os.path.join(args.root, DOCS_PODS), 'w') as f:
        f.write(docs_new)
  if args.check:
    for rel in stale:
      print(f'out of date: {rel}')
    for rel in extra:
      print(f'not generated: {rel}')
    if stale or extra:
      print('run: python scripts/gen_configs.py', file=sys.stderr)
      return 1
    print(f'{len(files)} config files and {DOCS_PODS} up to date')
    return 0
  for rel in extra:
    os.remove(os.path.join(args.root, rel))
  print(f'wrote {len([r for r in stale if r != DOCS_PODS])} of {len(files)} config files'
        + (f', removed {len(extra)} stale' if extra else '')
        + (f' and {DOCS_PODS}' if DOCS_PODS in stale else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
