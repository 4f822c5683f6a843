"""Orbax checkpoints of the train state: periodic + final saves, keep-N, resume from the latest.

A checkpoint holds {'step', 'params', 'opt_state'} (the optimizer state as a plain dict, via
flax.serialization). Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save (even with kill -9) leaves no half-written checkpoint that a
restart could pick up: only finalised steps are listed.

Restoring uses the *current* run's shardings as the target, so a checkpoint written on one mesh
(e.g. 1 device) restores onto any other (e.g. 4 x 2). Before reading any array, the stored shapes
are compared with the model's; a checkpoint of another architecture gives one clear error.
"""
import os
from typing import Any, Mapping, Optional, Sequence

import flax
import jax
import orbax.checkpoint as ocp

from altup_t5x.config import RunnerError

PyTree = Any


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
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
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


def _item_dir(step_dir: str) -> str:
  return os.path.join(step_dir, 'default')


def _stored_shapes(step_dir: str):
  """{path: shape} of a finalised checkpoint, read from its metadata only (no arrays)."""
  meta = ocp.PyTreeCheckpointer().metadata(_item_dir(step_dir))
  tree = getattr(meta, 'tree', None)
  if tree is None:
    tree = getattr(meta, 'item_metadata', meta)
    tree = getattr(tree, 'tree', tree)
  return _shape_tree(tree)


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
  restored = ocp.PyTreeCheckpointer().restore(
      _item_dir(step_dir), args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  return restored['params'], step
