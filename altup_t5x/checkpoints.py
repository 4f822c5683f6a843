"""Orbax checkpoints of the train state: periodic + final saves, keep-N, resume from the latest.

A checkpoint holds {'step', 'params', 'opt_state'} (the optimizer state as a plain dict, via
flax.serialization). Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save (even with kill -9) leaves no half-written checkpoint that a
restart could pick up: only finalised steps are listed.

Restoring uses the *current* run's shardings as the target, so a checkpoint written on one mesh
(e.g. 1 device) restores onto any other (e.g. 4 x 2). Before reading any array, the stored shapes
are compared with the model's; a checkpoint of another architecture gives one clear error, and a
checkpoint whose files cannot be read (e.g. overwritten on disk) another one, which names the file
and the previous intact step. Nothing is ever deleted on restore.

A step is read as what the manager wrote: a composite checkpoint (`<step>/_CHECKPOINT_METADATA`)
whose one item, 'default', holds the state.
"""
import json
import os
import re
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax
import jax
import orbax.checkpoint as ocp

from altup_t5x.config import RunnerError

PyTree = Any
ITEM = 'default'  # the item name CheckpointManager gives a single-item checkpoint


class CorruptCheckpointError(RunnerError):
  """A checkpoint step whose files cannot be read."""


def _shape_tree(tree: PyTree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(getattr(x, 'shape', ()))
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def describe_mismatch(stored: Mapping[str, tuple], expected: Mapping[str, tuple], limit: int = 6
                      ) -> Optional[str]:
  """Human-readable difference of two {path: shape} maps, or None if they agree."""
  only_stored = sorted(set(stored) - set(expected))
  only_expected = sorted(set(expected) - set(stored))
  wrong = sorted(k for k in set(stored) & set(expected) if stored[k] != expected[k])
  if not (only_stored or only_expected or wrong):
    return None
  parts = []
  if wrong:
    parts.append('shape differs: ' + ', '.join(f'{k} {stored[k]} (checkpoint) vs {expected[k]} '
                                               f'(model)' for k in wrong[:limit]))
  if only_expected:
    parts.append('missing in checkpoint: ' + ', '.join(only_expected[:limit]))
  if only_stored:
    parts.append('not in model: ' + ', '.join(only_stored[:limit]))
  return '; '.join(parts)


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `<model_dir>/checkpoints`."""

  def __init__(self, directory: str, keep: Optional[int] = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return list(self.manager.all_steps())

  def save(self, state: PyTree, step: int, wait: bool = False) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(to_storable(state)), force=True)
    if wait:
      self.manager.wait_until_finished()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def check_compatible(self, abstract_state: PyTree, step: int, what: str = 'params') -> None:
    stored = load_shapes(self.manager, step)
    expected = _shape_tree(to_storable(abstract_state))
    if what == 'params':
      stored = {k: v for k, v in stored.items() if k.startswith('params/')}
      expected = {k: v for k, v in expected.items() if k.startswith('params/')}
    diff = describe_mismatch(stored, expected)
    if diff:
      raise RunnerError(f'checkpoint {self.directory}/{step} was written for a different '
                        f'architecture than the configured model: {diff}.')

  def restore(self, abstract_state: PyTree, step: Optional[int] = None) -> PyTree:
    """Restores onto the shardings of `abstract_state` (ShapeDtypeStructs with .sharding)."""
    step = self.latest_step() if step is None else step
    self.check_compatible(abstract_state, step, what='all')
    target = to_storable(abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless the files are bad)
      _raise_if_corrupt(os.path.join(self.directory, str(step)), e)
      raise
    return from_storable(abstract_state, restored)


def to_storable(state: PyTree) -> PyTree:
  return {'step': state['step'], 'params': state['params'],
          'opt_state': flax.serialization.to_state_dict(state['opt_state'])}


def from_storable(template: PyTree, stored: PyTree) -> PyTree:
  return {'step': stored['step'], 'params': stored['params'],
          'opt_state': flax.serialization.from_state_dict(template['opt_state'],
                                                          stored['opt_state'])}


def load_shapes(manager: ocp.CheckpointManager, step: int):
  return _stored_shapes(os.path.join(str(manager.directory), str(step)))


def _step_checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**{ITEM: ocp.PyTreeCheckpointHandler()}))


def _stored_shapes(step_dir: str):
  """{path: shape} of a finalised checkpoint, read from its metadata only (no arrays)."""
  try:
    meta = _step_checkpointer().metadata(step_dir)
    item = (getattr(meta, 'item_metadata', None) or {}).get(ITEM)
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless the files are bad)
    _raise_if_corrupt(step_dir, e)
    raise
  shapes = _shape_tree(getattr(item, 'tree', item)) if item is not None else {}
  if not shapes:  # Orbax logs and returns nothing when the item's metadata cannot be decoded
    _raise_if_corrupt(step_dir, None, force=True)
  return shapes


# Files of an Orbax/OCDBT checkpoint that can be checked without TensorStore: JSON metadata, OCDBT
# manifests (magic bytes 0x0cdb3a2a), and data files, which start with OCDBT's 0x0cdb or, compressed,
# zstd's frame magic 0x28b52ffd.
_JSON_FILES = ('_CHECKPOINT_METADATA', '_METADATA', '_sharding')
_MANIFEST_MAGIC = b'\x0c\xdb\x3a\x2a'
_DATA_MAGICS = (b'\x0c\xdb', b'\x28\xb5\x2f\xfd')


def find_bad_file(step_dir: str, data_files: bool = True) -> Optional[Tuple[str, str]]:
  """(file, what is wrong) for the first checkpoint file that cannot be decoded, else None.

  `data_files`: also check the headers of the OCDBT data files (d/*).
  """
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      parent = os.path.basename(root)
      try:
        if name in _JSON_FILES or parent == 'array_metadatas':
          with open(path, 'rb') as f:
            json.loads(f.read().decode('utf-8'))
        elif name == 'manifest.ocdbt':
          with open(path, 'rb') as f:
            if f.read(len(_MANIFEST_MAGIC)) != _MANIFEST_MAGIC:
              return path, 'not an OCDBT manifest (wrong header)'
        elif parent == 'd' and data_files:
          with open(path, 'rb') as f:
            head = f.read(4)
          if not any(head.startswith(m) for m in _DATA_MAGICS):
            return path, 'not an OCDBT data file (wrong header)'
      except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return path, f'{type(e).__name__}: {e}'
  return None


def is_intact(step_dir: str) -> bool:
  """Whether a step's metadata files decode and list arrays (no array is read)."""
  if find_bad_file(step_dir, data_files=False) is not None:
    return False
  try:
    _stored_shapes(step_dir)
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def _raise_if_corrupt(step_dir: str, error: Optional[BaseException], force: bool = False) -> None:
  """Raises CorruptCheckpointError if the step's files are bad (or `force`), else returns."""
  bad = find_bad_file(step_dir)
  message = f'{type(error).__name__}: {error}' if error is not None else ''
  if bad is None:
    named = re.findall(r'local file "([^"]*[^/"])"', message)
    if named:
      bad = (named[-1], message.split('[tensorstore_spec')[0].strip()[:300])
    elif not (force or 'DATA_LOSS' in message):
      return
  directory, step = os.path.split(os.path.abspath(step_dir))
  what = f'{bad[0]} ({bad[1]})' if bad else f'a file under {step_dir} ({message or "its metadata"})'
  earlier = sorted((int(s) for s in os.listdir(directory)
                    if s.isdigit() and step.isdigit() and int(s) < int(step)), reverse=True)
  previous = next((s for s in earlier if is_intact(os.path.join(directory, str(s)))), None)
  if previous is None:
    advice = f'there is no earlier intact checkpoint in {directory}.'
  else:
    advice = (f'the previous intact checkpoint is step {previous} ({directory}/{previous}): to '
              f'resume from it, move {step_dir} out of {directory} (e.g. rename it to '
              f'{step}.corrupt), or point CHECKPOINT_PATH at {directory}/{previous}.')
  raise CorruptCheckpointError(
      f'checkpoint {step_dir} is unreadable or corrupt: {what}. Nothing was deleted; '
      + advice) from error


def resolve_checkpoint(path: str):
  """(manager directory, step) for CHECKPOINT_PATH: a checkpoints dir, a model dir or a step dir."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise RunnerError(f'CHECKPOINT_PATH={path!r} does not exist.')
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(base)
  for d in (path, os.path.join(path, 'checkpoints')):
    if os.path.isdir(d):
      steps = [int(s) for s in os.listdir(d) if s.isdigit()]
      if steps:
        return d, max(steps)
  raise RunnerError(f'CHECKPOINT_PATH={path!r} holds no finished checkpoint (expected a model '
                    'dir, its checkpoints/ dir, or a checkpoints/<step> dir).')


def restore_params(path: str, abstract_params: PyTree) -> PyTree:
  """Only the parameters of a checkpoint (for eval, infer and INITIAL_CHECKPOINT_PATH)."""
  directory, step = resolve_checkpoint(path)
  step_dir = os.path.join(directory, str(step))
  stored = {k: v for k, v in _stored_shapes(step_dir).items() if k.startswith('params/')}
  expected = {'params/' + k: v for k, v in _shape_tree(abstract_params).items()}
  diff = describe_mismatch(stored, expected)
  if diff:
    raise RunnerError(f'checkpoint {step_dir} was written for a different architecture '
                      f'than the configured model: {diff}.')
  target = {'params': abstract_params}
  args = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)
  try:
    restored = _step_checkpointer().restore(step_dir, args=ocp.args.Composite(**{ITEM: args}))
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless the files are bad)
    _raise_if_corrupt(step_dir, e)
    raise
  return restored[ITEM]['params'], step
