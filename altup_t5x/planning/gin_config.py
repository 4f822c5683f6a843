"""The gin files of a plan, parsed as t5x.train or altup_t5x.train parses them.

The planner reads what the train step is built from (MODEL, BATCH_SIZE, TASK_FEATURE_LENGTHS and
the model-parallel size) through a gin configurable of its own, `capture`, bound to those macros.
T5X's run files (t5x/configs/runs/*.gin) also bind `__main__.train`, the function of
`python -m t5x.train`: altup_t5x/plan.py, the planner's `__main__`, offers T5X's for them.
"""
import dataclasses
import importlib.util
import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence

from altup_t5x.planning import PlanError


def capture(model=None, batch_size=None, task_feature_lengths=None, num_partitions=None):
  """Bound by the planner's gin lines to the macros it needs; returns them."""
  return dict(model=model, batch_size=batch_size, task_feature_lengths=task_feature_lengths,
              num_partitions=num_partitions)


@dataclasses.dataclass
class GinPlan:
  """What the gin files configure, as far as the plan needs it."""
  model: Any
  batch_size: int
  task_feature_lengths: Mapping[str, int]
  num_partitions: int
  backend: str  # 't5x' for a `t5x.models` model, 'runner' for altup_t5x.models'
  # T5X: the gin's arguments of `partitioning.PjitPartitioner` (logical axis rules, ...).
  partitioner_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)


def t5x_importable() -> bool:
  return importlib.util.find_spec('t5x') is not None


def _find(files: Sequence[str], search: Sequence[str]):
  found = []
  for f in files:
    cands = [f] + [os.path.join(p, f) for p in search]
    path = next((c for c in cands if os.path.isfile(c)), None)
    if path is None:
      raise PlanError(f'gin file {f!r} not found (searched: {list(search)}).')
    found.append(path)
  return found


def load_gin(gin_files: Sequence[str], gin_search_paths: Sequence[str],
             gin_bindings: Sequence[str], num_partitions: Optional[int] = None,
             backend: str = 'auto') -> GinPlan:
  """Parses the gin files like t5x.train / altup_t5x.train and returns what the plan needs."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  search = list(gin_search_paths) or ['.']
  have_t5x = t5x_importable()
  if have_t5x:  # T5X's own gin files (t5x/configs/...) are found as T5X finds them
    import t5x  # pylint: disable=g-import-not-at-top
    search.append(os.path.dirname(os.path.dirname(os.path.abspath(t5x.__file__))))
  for p in search:
    gin.add_config_file_search_path(p)
  files = _find(gin_files, search)
  text = ' '.join(open(f).read() for f in files)
  if 'from t5x' in text and not have_t5x:
    raise PlanError('these gin files need T5X (they import t5x), which is not importable here; use '
                    'the runner gins (gin/runner/model.gin + gin/runner/pretrain.gin) instead.')
  uses_t5x_partitioner = 't5x/configs/runs/' in text or 'PjitPartitioner' in text
  lines = ['from __gin__ import dynamic_registration',
           'from altup_t5x.planning import gin_config',
           'gin_config.capture.model = %MODEL',
           'gin_config.capture.batch_size = %BATCH_SIZE',
           'gin_config.capture.task_feature_lengths = %TASK_FEATURE_LENGTHS']
  if not uses_t5x_partitioner:
    lines.append('gin_config.capture.num_partitions = %NUM_PARTITIONS')
  try:
    gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=False)
    gin.parse_config('\n'.join(lines))
    got = gin.get_configurable(capture)()
    kwargs = {}
    if uses_t5x_partitioner:
      from t5x import partitioning as t5x_partitioning  # pylint: disable=g-import-not-at-top
      kwargs = gin.get_bindings(t5x_partitioning.PjitPartitioner)
  except (SyntaxError, ValueError, NameError, ImportError, AttributeError, TypeError,
          KeyError, IOError) as e:
    hint = ('; T5X\'s run gins bind `__main__.train`: run the planner as `python -m '
            'altup_t5x.plan`' if '__main__' in str(e) or 'train_script' in str(e) else '')
    raise PlanError(f'gin configuration: {type(e).__name__}: {e}{hint}') from e
  if got['model'] is None:
    raise PlanError('the gin files define no MODEL: pass a model gin (gin/models/*.gin or '
                    'gin/runner/model.gin).')
  if uses_t5x_partitioner:
    submesh = kwargs.get('model_parallel_submesh')
    got['num_partitions'] = kwargs.get('num_partitions') or (
        math.prod(submesh) if submesh else None)
  got_backend = 'runner' if type(got['model']).__module__.startswith('altup_t5x') else 't5x'
  if backend != 'auto' and backend != got_backend:
    raise PlanError(f'--backend={backend} but the gin files build a {got_backend} model '
                    f'({type(got["model"]).__module__}); pass the matching gin files.')
  return GinPlan(model=got['model'], batch_size=got['batch_size'],
                 task_feature_lengths=got['task_feature_lengths'],
                 num_partitions=num_partitions or got['num_partitions'] or 1,
                 backend=got_backend, partitioner_kwargs=kwargs)
