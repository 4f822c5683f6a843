r"""Checkpoints across tools: upcycle dense T5.1.1 into AltUp, and runner <-> T5X conversion.

    # A dense T5.1.1 checkpoint (T5X's checkpoint_<step> dir, legacy or Orbax, or a runner model
    # dir) -> an AltUp checkpoint that computes the same function, in T5X's format:
    python -m altup_t5x.convert upcycle --input /ckpts/t5_1_1_small/checkpoint_1000000 \
      --output /ckpts/recycled_k2 --gin_file=gin/t5_1_1/small.gin \
      --gin_file=gin/altup/recycled_k2.gin [--format=t5x|runner] [--gin.NUM_EMBEDDINGS=...]

    # A runner checkpoint -> T5X (and back); parameters and step are copied exactly:
    python -m altup_t5x.convert runner-to-t5x --input /runs/k2 --output /ckpts/k2_t5x
    python -m altup_t5x.convert t5x-to-runner --input /ckpts/k2_t5x/checkpoint_200 --output /runs/k2b

Formats
  * T5X, written: what T5X's `OrbaxCheckpointManagerInterface` writes at HEAD, `OUT/checkpoint_<step>/
    state/` (an Orbax PyTree with OCDBT) holding T5X's state dict {'target': params, 'state':
    {'step'}}. `t5x.eval` / `t5x.infer` restore it as CHECKPOINT_PATH=OUT/checkpoint_<step>;
    `t5x.train` restores it as INITIAL_CHECKPOINT_PATH with gin/t5x_restore_missing_from_scratch.gin,
    which initialises the Adafactor state that the checkpoint does not hold.
  * T5X, read: that format, and the legacy one of the public T5.1.1 checkpoints (a msgpack
    `checkpoint` file plus one TensorStore array per parameter). Local paths only (copy gs:// first).
  * Runner: the standalone runner's model dir, `OUT/checkpoints/<step>/`, holding {'step',
    'params'}: INITIAL_CHECKPOINT_PATH / CHECKPOINT_PATH of altup_t5x.train / eval / infer.

Optimizer state is never carried over: T5X's Adafactor (factored dimensions chosen by logical axis
rules, its own state tree) and the runner's optax Adafactor (two largest dimensions, optax's tree)
keep different statistics, so the destination starts a fresh Adafactor state (a warning says so).

Memory: parameters are read one tensor at a time; the output tree is built in host memory and
written at the end (Orbax writes a checkpoint in one call), so the peak is the output plus one
input tensor (XL: about 12 GB for the 3B float32 parameters).

The output directory must not exist: nothing is ever written into an existing directory. The
checkpoint is built in a temporary sibling directory and renamed into place when complete.
"""
import argparse
import os
import shutil
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import flax
import numpy as np

from altup_t5x import models

Path = Tuple[str, ...]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T5X_STEP_PREFIX = 'checkpoint'  # T5X's checkpoint_<step> directories
T5X_STATE_ITEM = 'state'


class ConvertError(ValueError):
  """A path or setting of the conversion is wrong; the message names it."""


def _warn(msg: str) -> None:
  print(f'WARNING: {msg}', file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Reading: one class per format, each giving the parameter shapes and one tensor at a time.

class Source:
  """A checkpoint's parameters: `shapes` ({path: shape}) without values, `read(path)` one value."""
  kind = ''
  path = ''
  step = 0
  shapes: Dict[Path, Tuple[int, ...]] = {}

  def read(self, path: Path) -> np.ndarray:
    raise NotImplementedError


def _orbax_leaf_reader(item_dir: str, prefix: Path):
  """read(path) restoring one array of an Orbax PyTree checkpoint (OCDBT or not)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.PyTreeCheckpointer()

  def read(path: Path) -> np.ndarray:
    full = prefix + tuple(path)
    item = flax.traverse_util.unflatten_dict({full: np.zeros((), np.float32)})
    restore_args = flax.traverse_util.unflatten_dict(
        {full: ocp.RestoreArgs(restore_type=np.ndarray)})
    restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
    return np.asarray(flax.traverse_util.flatten_dict(restored)[full])
  return read


def _orbax_metadata(item_dir: str) -> Dict[Path, Any]:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  meta = ocp.PyTreeCheckpointer().metadata(item_dir)
  tree = getattr(meta, 'tree', None)
  if tree is None:
    tree = getattr(meta, 'item_metadata', meta)
    tree = getattr(tree, 'tree', tree)
  return flax.traverse_util.flatten_dict(dict(tree))


def _step_scalar(value) -> int:
  return int(np.asarray(value).reshape(()))


class RunnerSource(Source):
  kind = 'runner'

  def __init__(self, path: str):
    from altup_t5x import checkpoints  # pylint: disable=g-import-not-at-top
    directory, step = checkpoints.resolve_checkpoint(path)
    self.path = os.path.join(directory, str(step))
    item = os.path.join(self.path, 'default')
    meta = _orbax_metadata(item)
    self.shapes = {k[1:]: tuple(v.shape) for k, v in meta.items() if k[0] == 'params'}
    if not self.shapes:
      raise ConvertError(f'{self.path} holds no parameters (not a runner checkpoint).')
    self.read = _orbax_leaf_reader(item, ('params',))
    self.step = (_step_scalar(_orbax_leaf_reader(item, ())(('step',)))
                 if ('step',) in meta else step)


class T5XOrbaxSource(Source):
  """T5X HEAD's format: checkpoint_<step>/state/, an Orbax PyTree of T5X's state dict."""
  kind = 't5x'

  def __init__(self, step_dir: str):
    self.path = step_dir
    item = os.path.join(step_dir, T5X_STATE_ITEM)
    meta = _orbax_metadata(item)
    self.shapes = {k[1:]: tuple(v.shape) for k, v in meta.items() if k[0] == 'target'}
    if not self.shapes:
      raise ConvertError(f'{item} holds no "target" parameters (not a T5X checkpoint).')
    self.read = _orbax_leaf_reader(item, ('target',))
    self.step = (_step_scalar(_orbax_leaf_reader(item, ())(('state', 'step')))
                 if ('state', 'step') in meta else _step_of(step_dir))


class T5XLegacySource(Source):
  """T5X's legacy format (the public T5.1.1 checkpoints): msgpack `checkpoint` + TensorStore."""
  kind = 't5x'

  def __init__(self, step_dir: str):
    self.path = step_dir
    with open(os.path.join(step_dir, 'checkpoint'), 'rb') as f:
      contents = flax.serialization.msgpack_restore(f.read())
    if contents.get('version', 0) < 2 or 'optimizer' not in contents:
      raise ConvertError(f'{step_dir}/checkpoint is not a T5X checkpoint of version >= 2 (keys '
                         f'{sorted(contents)}).')
    state = contents['optimizer']
    self._leaves = flax.traverse_util.flatten_dict(state['target'],
                                                   is_leaf=lambda _, x: _is_ts_spec(x))
    self.shapes = {k: self._shape(v) for k, v in self._leaves.items()}
    step = state.get('state', {}).get('step')
    self.step = _step_of(step_dir) if step is None else _step_scalar(step)

  @staticmethod
  def _shape(leaf):
    if _is_ts_spec(leaf):
      return tuple(leaf['metadata']['shape'])
    return tuple(np.shape(leaf))

  def read(self, path: Path) -> np.ndarray:
    leaf = self._leaves[tuple(path)]
    if not _is_ts_spec(leaf):
      return np.asarray(leaf)
    import tensorstore as ts  # pylint: disable=g-import-not-at-top
    spec = _absolute_ts_spec(leaf, self.path)
    try:
      store = ts.open(spec, open=True).result()
    except ValueError:  # no .zarray next to the chunks: the spec in the msgpack is the metadata
      store = ts.open(spec, open=True, assume_metadata=True).result()
    return np.asarray(store.read().result())


def _is_ts_spec(x) -> bool:
  return isinstance(x, dict) and {'driver', 'kvstore', 'metadata'} <= set(x)


def _absolute_ts_spec(spec: dict, ckpt_dir: str) -> dict:
  """T5X stores array paths relative to the checkpoint dir (in one of two spec layouts)."""
  spec = {**spec, 'kvstore': dict(spec['kvstore'])}
  kv = spec['kvstore']
  if kv.get('driver') not in ('file', 'gfile', None):  # 'gfile': T5X's name for a local file
    raise ConvertError(f'{ckpt_dir}: arrays stored with the {kv.get("driver")!r} driver; copy '
                       'the checkpoint to a local directory first.')
  if 'path' in kv:
    kv['path'] = os.path.join(ckpt_dir, kv['path'])
  elif 'path' in spec:
    kv['path'] = os.path.join(ckpt_dir, spec.pop('path'))
  kv['driver'] = 'file'
  return spec


def _step_of(step_dir: str) -> int:
  base = os.path.basename(os.path.normpath(step_dir))
  digits = base.rsplit('_', 1)[-1]
  return int(digits) if digits.isdigit() else 0


def _t5x_step_dirs(model_dir: str):
  out = []
  for name in os.listdir(model_dir):
    prefix = T5X_STEP_PREFIX + '_'
    if name.startswith(prefix) and name[len(prefix):].isdigit():
      out.append((int(name[len(prefix):]), os.path.join(model_dir, name)))
  return sorted(out)


def open_t5x(path: str) -> Source:
  """A T5X checkpoint_<step> dir (or a model dir: its latest step), legacy or Orbax format."""
  if path.startswith('gs://'):
    raise ConvertError(f'--input={path}: copy the checkpoint to a local directory first '
                       '(e.g. `gsutil -m cp -r gs://.../checkpoint_1000000 /local/dir/`).')
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ConvertError(f'--input={path} is not a directory.')
  if not (os.path.isdir(os.path.join(path, T5X_STATE_ITEM)) or
          os.path.isfile(os.path.join(path, 'checkpoint'))):
    steps = _t5x_step_dirs(path)
    if not steps:
      raise ConvertError(f'--input={path} is not a T5X checkpoint: expected a checkpoint_<step> '
                         'directory (with a state/ dir or a msgpack `checkpoint` file) or a T5X '
                         'model dir containing one.')
    path = steps[-1][1]
  if os.path.isdir(os.path.join(path, T5X_STATE_ITEM)):
    return T5XOrbaxSource(path)
  return T5XLegacySource(path)


def open_runner(path: str) -> Source:
  from altup_t5x import config  # pylint: disable=g-import-not-at-top
  try:
    return RunnerSource(path)
  except config.RunnerError as e:
    raise ConvertError(f'--input: {e}') from e


def open_checkpoint(path: str) -> Source:
  """A dense checkpoint in either format, detected from its layout."""
  p = os.path.abspath(path)
  looks_t5x = os.path.isdir(p) and (
      os.path.isdir(os.path.join(p, T5X_STATE_ITEM)) or
      os.path.isfile(os.path.join(p, 'checkpoint')) or bool(_t5x_step_dirs(p)))
  return open_t5x(path) if looks_t5x or path.startswith('gs://') else open_runner(path)


# --------------------------------------------------------------------------------------------------
# Writing.

def _prepare_output(output: str) -> Tuple[str, str]:
  out = os.path.abspath(output)
  if os.path.lexists(out):
    raise ConvertError(f'--output={out} already exists; refusing to write into an existing '
                       'directory (choose a new path).')
  parent = os.path.dirname(out)
  if not os.path.isdir(parent):
    raise ConvertError(f'--output={out}: the parent directory {parent} does not exist.')
  tmp = f'{out}.tmp-{os.getpid()}'
  if os.path.lexists(tmp):
    raise ConvertError(f'{tmp} exists (left by an interrupted run?); remove it first.')
  return out, tmp


def _finish_output(tmp: str, out: str) -> None:
  if os.path.lexists(out):  # appeared while we were writing: leave it alone
    raise ConvertError(f'--output={out} appeared while converting; the result is left in {tmp}.')
  os.rename(tmp, out)


def write_t5x(output: str, params: Dict[Path, np.ndarray], step: int) -> str:
  """Writes T5X's {'target', 'state': {'step'}} as OUT/checkpoint_<step>/state; returns that dir."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out, tmp = _prepare_output(output)
  try:
    manager = ocp.CheckpointManager(
        tmp, options=ocp.CheckpointManagerOptions(step_prefix=T5X_STEP_PREFIX, create=True,
                                                  enable_async_checkpointing=False),
        item_handlers={T5X_STATE_ITEM: ocp.PyTreeCheckpointHandler(use_ocdbt=True)})
    state = {'target': flax.traverse_util.unflatten_dict(params),
             'state': {'step': np.asarray(step, np.int32)}}
    manager.save(step, args=ocp.args.Composite(**{T5X_STATE_ITEM: ocp.args.PyTreeSave(state)}))
    manager.wait_until_finished()
    manager.close()
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _finish_output(tmp, out)
  return os.path.join(out, f'{T5X_STEP_PREFIX}_{step}')


def write_runner(output: str, params: Dict[Path, np.ndarray], step: int) -> str:
  """Writes the runner's {'step', 'params'} as OUT/checkpoints/<step>; returns that dir."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out, tmp = _prepare_output(output)
  try:
    manager = ocp.CheckpointManager(
        os.path.join(tmp, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    manager.save(step, args=ocp.args.StandardSave(
        {'step': np.asarray(step, np.int32), 'params': flax.traverse_util.unflatten_dict(params)}))
    manager.wait_until_finished()
    manager.close()
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _finish_output(tmp, out)
  return os.path.join(out, 'checkpoints', str(step))


WRITERS = {'t5x': write_t5x, 'runner': write_runner}


# --------------------------------------------------------------------------------------------------
# The three operations.

def convert(source: Source, output: str, fmt: str) -> str:
  """Copies parameters and step exactly into `fmt`; the optimizer state is reset."""
  _prepare_output(output)  # fail before reading anything
  params = {path: source.read(path) for path in sorted(source.shapes)}
  _warn(f'optimizer state is not converted ({source.kind} -> {fmt}): the destination starts a '
        'fresh Adafactor state (README "Upcycling and converting checkpoints").')
  written = WRITERS[fmt](output, params, source.step)
  print(f'converted {source.path} ({source.kind}, step {source.step}, '
        f'{models.count_params(params):,} parameters) -> {written} ({fmt})', flush=True)
  return written


def upcycle(source: Source, cfg, output: str, fmt: str = 't5x') -> str:
  """Writes the AltUp model `cfg` grown from the dense `source` at step 0."""
  from altup_t5x import upcycle as upcycle_lib  # pylint: disable=g-import-not-at-top
  upcycle_lib.check_upcycle(cfg)
  _prepare_output(output)  # fail before reading anything
  params = dict(upcycle_lib.upcycle_tensors(cfg, source.shapes, source.read))
  written = WRITERS[fmt](output, params, 0)
  print(f'upcycled {source.path} ({source.kind}, step {source.step}, '
        f'{models.count_params(source.shapes):,} parameters) -> {written} ({fmt}, step 0, '
        f'altup_k={cfg.altup_k}, {cfg.altup_embedding} embedding, {cfg.altup_coefficients} '
        f'coefficients, {models.count_params(params):,} parameters)', flush=True)
  return written


# --------------------------------------------------------------------------------------------------
# Command line.

def _parser():
  parser = argparse.ArgumentParser(prog='python -m altup_t5x.convert',
                                   description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__)
  sub = parser.add_subparsers(dest='command', required=True)
  up = sub.add_parser('upcycle', help='dense T5.1.1 (T5X or runner) -> AltUp (T5X or runner)')
  up.add_argument('--input', required=True)
  up.add_argument('--output', required=True)
  up.add_argument('--gin_file', action='append', default=[],
                  help='size + AltUp variant files describing the target, as for training')
  up.add_argument('--gin_search_paths', default=REPO_ROOT)
  up.add_argument('--format', choices=sorted(WRITERS), default='t5x')
  for name in ('runner-to-t5x', 't5x-to-runner'):
    p = sub.add_parser(name, help=f'{name.replace("-to-", " -> ")}: parameters and step, exact')
    p.add_argument('--input', required=True)
    p.add_argument('--output', required=True)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = _parser()
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  bindings = []
  for item in rest:
    if args.command != 'upcycle' or not item.startswith('--gin.'):
      parser.error(f'unknown argument {item!r}')
    bindings.append(item[len('--gin.'):])
  if args.command == 'runner-to-t5x':
    return convert(open_runner(args.input), args.output, 't5x')
  if args.command == 't5x-to-runner':
    return convert(open_t5x(args.input), args.output, 'runner')
  from altup_t5x import cli  # pylint: disable=g-import-not-at-top
  from altup_t5x.config import AltUpConfig  # pylint: disable=g-import-not-at-top
  if not args.gin_file:
    parser.error('upcycle needs --gin_file: a size file and an AltUp variant (e.g. '
                 '--gin_file=gin/t5_1_1/small.gin --gin_file=gin/altup/recycled_k2.gin)')
  if not any(b.replace(' ', '').startswith('DROPOUT_RATE=') for b in bindings):
    bindings.append('DROPOUT_RATE = 0.0')  # a run setting the architecture files leave REQUIRED
  cli.parse_gin(args.gin_file, args.gin_search_paths.split(','), bindings)
  cfg = cli.configured(AltUpConfig)()
  return upcycle(open_checkpoint(args.input), cfg, args.output, args.format)


def console_main():
  from altup_t5x import config, upcycle as upcycle_lib  # pylint: disable=g-import-not-at-top
  try:
    main()
  except (ConvertError, upcycle_lib.UpcycleError, config.ConfigError, config.RunnerError) as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  console_main()
