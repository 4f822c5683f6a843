r"""Standalone training: `python -m altup_t5x.train` (console script `altup-train`).

    python -m altup_t5x.train --gin_search_paths=. \
      --gin_file=gin/t5_1_1/tiny.gin --gin_file=gin/altup/k2.gin \
      --gin_file=gin/runner/model.gin --gin_file=gin/runner/pretrain.gin \
      --gin.MODEL_DIR=\"/tmp/altup_k2\" --gin.TRAIN_STEPS=200 --gin.BATCH_SIZE=16 \
      --gin.MIXTURE_OR_TASK_NAME=\"altup_embedded_span_corruption\" \
      --gin.TASK_FEATURE_LENGTHS="{'inputs': 64, 'targets': 16}"

Same macros as T5X's runs/pretrain.gin: MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, MIXTURE_OR_TASK_NAME,
TASK_FEATURE_LENGTHS, DROPOUT_RATE, USE_CACHED_TASKS, INITIAL_CHECKPOINT_PATH.

Behaviour:
  * resumes automatically from the latest checkpoint in MODEL_DIR/checkpoints (same data order:
    the consumed batches are skipped; same dropout keys: fold_in(seed, step));
  * saves every `checkpoint_period` steps and at the end, keeping `keep_checkpoints`;
  * SIGTERM (preemption): saves the current step, waits for the write and exits with status 0;
  * a NaN/Inf loss stops the run (NonFiniteLossError) and keeps the last good checkpoint;
  * TensorBoard summaries in MODEL_DIR/train (and MODEL_DIR/eval), one JSON line per logged step
    in MODEL_DIR/train_metrics.jsonl, a progress line with steps/s and ETA, and a final summary.
"""
import json
import math
import os
import signal
import time
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import numpy as np

from altup_t5x import cli
from altup_t5x import checkpoints as checkpoints_lib
from altup_t5x import losses
from altup_t5x import models as models_lib
from altup_t5x import partitioning
from altup_t5x import trainer as trainer_lib
from altup_t5x.data import datasets

RunnerError = cli.RunnerError


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf."""


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


class _Summaries:
  """TensorBoard scalars (clu) + a JSON-lines copy, written by process 0 only."""

  def __init__(self, model_dir: str, name: str):
    self.enabled = jax.process_index() == 0
    self.writer = None
    self.jsonl = None
    if not self.enabled:
      return
    os.makedirs(model_dir, exist_ok=True)
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self.writer = metric_writers.SummaryWriter(os.path.join(model_dir, name))
    except Exception as e:  # pylint: disable=broad-except
      _log(f'[warn] TensorBoard summaries disabled: {e}')
    self.jsonl = open(os.path.join(model_dir, f'{name}_metrics.jsonl'), 'a')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    if self.writer is not None:
      self.writer.write_scalars(step, dict(scalars))
    self.jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self.jsonl.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
    if self.jsonl is not None:
      self.jsonl.close()


def _keep_tf_off_accelerators():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass


def _batches(cfg: datasets.DatasetConfig, skip: int = 0):
  _keep_tf_off_accelerators()
  ds = datasets.get_dataset(cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
  if skip:
    ds = ds.skip(skip)
  return ds.prefetch(2).as_numpy_iterator()


def evaluate_loss(trainer: trainer_lib.Trainer, params, cfg: datasets.DatasetConfig,
                  num_batches: Optional[int]) -> Dict[str, float]:
  """Teacher-forced loss / token accuracy over (at most num_batches of) a split."""
  return evaluate_loss_counted(trainer, params, cfg, num_batches)[0]


def evaluate_loss_counted(trainer: trainer_lib.Trainer, params, cfg: datasets.DatasetConfig,
                          num_batches: Optional[int]):
  """(metrics, examples evaluated, whether the whole split was) of `evaluate_loss`."""
  _keep_tf_off_accelerators()
  ds = datasets.get_dataset(cfg, shard_index=jax.process_index(), num_shards=jax.process_count(),
                            num_epochs=1)
  if num_batches:
    ds = ds.take(num_batches + 1)  # one more, to know whether the split had more
  host_bs = cfg.batch_size // jax.process_count()
  metrics = []
  examples = 0
  complete = True
  for i, batch in enumerate(ds.as_numpy_iterator()):
    if num_batches and i == num_batches:
      complete = False
      break
    examples += _count_examples(batch)
    batch, _ = trainer_lib.pad_batch(batch, host_bs)  # padded rows have zero loss weight
    metrics.append(trainer.eval_step(params, trainer.partitioner.shard_batch(batch)))
  return losses.summarize_metrics(metrics), examples, complete


def _count_examples(batch: Mapping[str, np.ndarray]) -> int:
  """Examples in a batch of model features: packed segments, or rows with targets."""
  seg = batch.get('decoder_segment_ids')
  if seg is not None:
    return int(sum(len(np.unique(row[row > 0])) for row in np.asarray(seg)))
  return int(np.sum(np.any(np.asarray(batch['decoder_loss_weights']) > 0, axis=-1)))


def train(*, model: models_lib.EncoderDecoderModel, train_dataset_cfg: datasets.DatasetConfig,
          model_dir: str, total_steps: int,
          eval_dataset_cfg: Optional[datasets.DatasetConfig] = None,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          eval_period: int = 0, eval_steps: int = 10, log_period: int = 100,
          random_seed: int = 0, num_partitions: int = 1,
          initial_checkpoint_path: Optional[str] = None,
          learning_rate_fn: Optional[Callable[[Any], Any]] = None,
          async_checkpointing: bool = True) -> Dict[str, Any]:
  """Trains `model` to `total_steps` (resuming from MODEL_DIR if possible); returns a summary."""
  t_start = time.time()
  if not isinstance(total_steps, int) or total_steps < 1:
    raise RunnerError(f'TRAIN_STEPS={total_steps!r} must be a positive integer.')
  if checkpoint_period < 1:
    raise RunnerError(f'checkpoint_period={checkpoint_period} must be >= 1.')
  if train_dataset_cfg.seed is None:
    train_dataset_cfg.seed = 0  # a fixed order is what makes resuming exact
  # --- Everything a user can get wrong is checked before any compilation. -------------------
  cli.check_output_dir('MODEL_DIR', model_dir)
  task = datasets.get_task(train_dataset_cfg)
  datasets.check_feature_lengths(train_dataset_cfg, task)
  datasets.check_data_prepared(train_dataset_cfg, task)
  if eval_dataset_cfg is not None and eval_period:
    eval_task = datasets.get_task(eval_dataset_cfg)
    datasets.check_feature_lengths(eval_dataset_cfg, eval_task)
    datasets.check_data_prepared(eval_dataset_cfg, eval_task)
  partitioner = partitioning.Partitioner(num_partitions)
  if train_dataset_cfg.batch_size % partitioner.data_size:
    raise RunnerError(f'BATCH_SIZE={train_dataset_cfg.batch_size} must be divisible by the data '
                      f'axis of the mesh ({partitioner.data_size} = devices / num_partitions).')
  trainer = trainer_lib.Trainer(
      model, partitioner, trainer_lib.model_input_shapes(train_dataset_cfg.task_feature_lengths),
      seed=random_seed, learning_rate_fn=learning_rate_fn)
  ckpt = checkpoints_lib.Checkpointer(os.path.join(model_dir, 'checkpoints'),
                                      keep=keep_checkpoints, async_save=async_checkpointing)
  latest = ckpt.latest_step()
  if latest is not None:
    ckpt.check_compatible(trainer.abstract_state, latest, what='all')
  num_params = models_lib.count_params(trainer.abstract_params)
  _log(f'[train] model_dir={model_dir} task={train_dataset_cfg.mixture_or_task_name} '
       f'lengths={dict(train_dataset_cfg.task_feature_lengths)} batch={train_dataset_cfg.batch_size} '
       f'params={num_params:,} mesh={dict(partitioner.mesh.shape)} devices={jax.device_count()}')

  # --- State. --------------------------------------------------------------------------------
  if latest is not None:
    state = ckpt.restore(trainer.abstract_state, latest)
    _log(f'[train] resumed from {ckpt.directory}/{latest}')
  elif initial_checkpoint_path:
    params, step0 = checkpoints_lib.restore_params(initial_checkpoint_path,
                                                   trainer.abstract_params)
    state = trainer.state_from_params(params)
    _log(f'[train] initialised from {initial_checkpoint_path} (step {step0})')
  else:
    state = trainer.init_state()
  start = int(jax.device_get(state['step']))
  last_saved = latest
  summaries = _Summaries(model_dir, 'train')
  eval_summaries = _Summaries(model_dir, 'eval') if eval_dataset_cfg and eval_period else None

  status = 'completed'
  step = start
  step_times = []
  last_metrics: Dict[str, float] = {}
  eval_metrics: Dict[str, float] = {}
  if start >= total_steps:
    _log(f'[train] already at step {start} >= TRAIN_STEPS={total_steps}; nothing to do.')
  batches = _batches(train_dataset_cfg, skip=start) if start < total_steps else iter(())
  t_loop = time.time()
  if start < total_steps:
    _log(f'[train] step {start + 1}/{total_steps}: compiling the train step (the first step; '
         'not counted in steps/s and ETA)...')
  try:
    with _Preemption() as preemption:
      while step < total_steps:
        t0 = time.time()
        host_batch = next(batches)
        state, metrics = trainer.train_step(state, partitioner.shard_batch(host_batch))
        metrics = jax.device_get(metrics)
        loss = float(metrics['loss'])
        step += 1
        step_times.append(time.time() - t0)
        if not math.isfinite(loss):
          ckpt.wait()
          good = ckpt.latest_step()
          raise NonFiniteLossError(
              f'training loss is {loss} at step {step}: stopping. The last good checkpoint '
              f'({"step " + str(good) if good is not None else "none"}) in {ckpt.directory} is '
              'kept; lower the learning rate or check the data, then restart to resume from it.')
        if step % log_period == 0 or step == total_steps or step == start + 1:
          summary = losses.summarize_metrics([metrics])
          summary['loss'] = loss
          for k in ('grad_norm', 'learning_rate'):
            if k in metrics:
              summary[k] = float(metrics[k])
          # Wall time per step, data included; the compiling first step is left out.
          recent = step_times[1:][-log_period:]
          if recent:
            steps_per_sec = 1.0 / max(np.mean(recent), 1e-9)
            summary['steps_per_sec'] = steps_per_sec
            speed = (f'{steps_per_sec:.2f} steps/s '
                     f'ETA {format_seconds((total_steps - step) / steps_per_sec)}')
          else:
            speed = f'compiled + first step in {step_times[0]:.1f}s'
          summaries.write(step, summary)
          last_metrics = summary
          _log(f'[train] step {step}/{total_steps} loss={loss:.4f} '
               f'acc={summary["accuracy"]:.4f} {speed}')
        if eval_summaries is not None and step % eval_period == 0:
          eval_metrics = evaluate_loss(trainer, state['params'], eval_dataset_cfg, eval_steps)
          eval_summaries.write(step, eval_metrics)
          _log(f'[eval] step {step} loss={eval_metrics["loss"]:.4f} '
               f'acc={eval_metrics["accuracy"]:.4f}')
        if step % checkpoint_period == 0:
          ckpt.save(state, step)
          last_saved = step
        if preemption.requested:
          ckpt.save(state, step, wait=True)
          last_saved = step
          status = 'preempted'
          _log(f'[train] SIGTERM: saved step {step} to {ckpt.directory}; exiting cleanly.')
          break
    if status == 'completed' and step > start:
      ckpt.save(state, step)
      last_saved = step
  finally:
    ckpt.close()
    summaries.close()
    if eval_summaries is not None:
      eval_summaries.close()

  timed = step_times[1:] or step_times
  result = {
      'status': status, 'step': step, 'start_step': start, 'last_checkpoint': last_saved,
      'params': num_params, 'loss': last_metrics.get('loss'),
      'accuracy': last_metrics.get('accuracy'),
      'train_xent': last_metrics.get('cross_ent_loss'),
      'median_step_time_s': float(np.median(timed)) if timed else None,
      'first_step_time_s': step_times[0] if step_times else None,
      'wall_time_s': time.time() - t_start, 'loop_time_s': time.time() - t_loop,
      'eval': eval_metrics,
  }
  _log('[train] summary: ' + ', '.join(
      f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in result.items()
      if k != 'eval'))
  return result


def format_seconds(s: float) -> str:
  """7s, 3m05s, 1h02m03s."""
  s = int(round(max(s, 0)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f'{h}h{m:02d}m{sec:02d}s' if h else (f'{m}m{sec:02d}s' if m else f'{sec}s')


def main(argv) -> Dict[str, Any]:
  return cli.run_entry_point(argv, __doc__, 'train', 'train')


def console_main():
  from altup_t5x import train as module  # pylint: disable=g-import-not-at-top  (see cli)
  cli.console_entry(module.main, {module.NonFiniteLossError: 3})


if __name__ == '__main__':
  console_main()
