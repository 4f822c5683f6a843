"""The runner's input pipelines: which seqio task, with which lengths, batched how.

`DatasetConfig` is T5X's `utils.DatasetConfig` (same fields); `get_dataset` gives batches of model
features with the seqio `EncDecFeatureConverter`, sharded over hosts.
"""
import contextlib
import dataclasses
import importlib
import logging
from typing import Mapping, Optional

from altup_t5x.config import RunnerError


@dataclasses.dataclass
class DatasetConfig:
  """One seqio dataset, as T5X's `utils.DatasetConfig`."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'train'
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 42
  use_cached: bool = False
  pack: bool = True
  module: Optional[str] = 'altup_t5x.data.tasks'  # imported to register the tasks

  def __post_init__(self):
    if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or \
        self.batch_size < 1:
      raise RunnerError(f'BATCH_SIZE={self.batch_size!r} must be a positive integer '
                        f'(dataset {self.mixture_or_task_name!r}, split {self.split!r}).')


def get_task(cfg: DatasetConfig):
  """The seqio task or mixture, or one clear error listing the registered names."""
  import seqio  # pylint: disable=g-import-not-at-top
  if cfg.module:
    importlib.import_module(cfg.module)
  try:
    return seqio.get_mixture_or_task(cfg.mixture_or_task_name)
  except ValueError as e:
    names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    raise RunnerError(f'MIXTURE_OR_TASK_NAME={cfg.mixture_or_task_name!r} is not a registered '
                      f'seqio task or mixture; registered: {", ".join(names) or "(none)"}.') from e


def check_data_prepared(cfg: DatasetConfig, task) -> None:
  """Every TFDS dataset the split reads is prepared, else one error naming dataset, version and
  the TFDS data dir (seqio's own error is `KeyError: ... splits is empty`, at the first read)."""
  import seqio  # pylint: disable=g-import-not-at-top
  for sub in leaf_tasks(task):
    source = getattr(sub, 'source', None)
    if not isinstance(source, seqio.TfdsDataSource) or cfg.split not in sub.splits:
      continue
    loader = source.tfds_dataset
    try:
      builder = loader.builder
      prepared = bool(builder.info.splits)
      where = builder.data_dir
    except Exception as e:  # pylint: disable=broad-except  (no builder: name or version unknown)
      raise RunnerError(f'task {sub.name!r} reads the TFDS dataset {loader.name!r}, which TFDS '
                        f'cannot load: {type(e).__name__}: {e}') from e
    if not prepared:
      name, _, version = (loader.resolved_tfds_name() or loader.name).partition(':')
      raise RunnerError(
          f'task {sub.name!r} needs the TFDS dataset {name} version {version or "(any)"}, which '
          f'is not prepared in the TFDS data dir (looked for {where}). Prepare it with '
          f'`tfds build {name}:{version}` (same data dir), or point TFDS_DATA_DIR (or the task '
          f'source\'s data_dir) at a directory that has it.')


def check_feature_lengths(cfg: DatasetConfig, task) -> None:
  """Feature lengths must name the task's features and leave room for a token and EOS."""
  lengths = dict(cfg.task_feature_lengths or {})
  wanted = {'inputs', 'targets'}
  features = set(task.output_features) & wanted
  if set(lengths) != features:
    raise RunnerError(f'TASK_FEATURE_LENGTHS={lengths!r} must give exactly the features '
                      f'{sorted(features)} of task {task.name!r}.')
  for name, n in lengths.items():
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
      raise RunnerError(f'TASK_FEATURE_LENGTHS[{name!r}]={n!r} cannot hold the data: it must be '
                        'an integer >= 2 (at least one token plus EOS).')
  for sub in leaf_tasks(task):
    needed = _span_corruption_targets_length(sub, lengths)
    if needed and lengths.get('targets', needed) < needed:
      raise RunnerError(
          f"TASK_FEATURE_LENGTHS['targets']={lengths['targets']} cannot hold the data of task "
          f"{sub.name!r}: span corruption of inputs length {lengths['inputs']} makes targets of "
          f"{needed} tokens (with EOS); set targets >= {needed} or shorten inputs.")


def leaf_tasks(task):
  """The tasks of a mixture, or [task] for a task."""
  return list(getattr(task, 'tasks', None) or [task])


def _span_corruption_targets_length(task, lengths) -> Optional[int]:
  """Targets length a span-corruption task produces for the given inputs length, else None."""
  from altup_t5x.data import preprocessors as prep  # pylint: disable=g-import-not-at-top
  for p in getattr(task, 'preprocessors', ()):
    fn = getattr(p, 'func', p)
    if fn is prep.span_corruption and 'inputs' in lengths:
      kwargs = getattr(p, 'keywords', {}) or {}
      return prep.random_spans_length(
          lengths['inputs'], kwargs.get('noise_density', prep.NOISE_DENSITY),
          kwargs.get('mean_noise_span_length', prep.MEAN_NOISE_SPAN_LENGTH))[1]
  return None


def get_dataset(cfg: DatasetConfig, *, shard_index: int = 0, num_shards: int = 1,
                num_epochs: Optional[int] = None, feature_converter=None):
  """A batched tf.data pipeline of model features (host-local batch = batch_size / num_shards).

  The order depends only on `cfg.seed` (and the shard), so a restarted run that skips the batches
  it already consumed sees exactly the same data as an uninterrupted one.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  task = get_task(cfg)
  check_feature_lengths(cfg, task)
  if cfg.batch_size % num_shards:
    raise RunnerError(f'BATCH_SIZE={cfg.batch_size} must be divisible by the number of data '
                      f'shards ({num_shards}).')
  if feature_converter is None:
    feature_converter = seqio.EncDecFeatureConverter(pack=cfg.pack)
  with _without_restart_shuffling_warning():
    ds = seqio.get_dataset(
        cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
        dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs,
        feature_converter=feature_converter, use_cached=cfg.use_cached, seed=cfg.seed,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards))
  return ds.batch(cfg.batch_size // num_shards, drop_remainder=num_epochs is None)


class _DropRestartShufflingWarning(logging.Filter):
  """seqio warns that an uncached FunctionDataSource "results in insufficient shuffling on
  restarts". The runner's order is a function of the seed and a restart skips the consumed
  batches (see `get_dataset`), so a restart sees the data an uninterrupted run would: the warning
  does not apply here."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'insufficient shuffling on restarts' not in record.getMessage()


@contextlib.contextmanager
def _without_restart_shuffling_warning():
  logger = logging.getLogger('absl')
  drop = _DropRestartShufflingWarning()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)
