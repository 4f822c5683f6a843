r"""Standalone evaluation: `python -m altup_t5x.eval` (console script `altup-eval`).

    python -m altup_t5x.eval --gin_search_paths=. \
      --gin_file=gin/t5_1_1/tiny.gin --gin_file=gin/altup/k2.gin \
      --gin_file=gin/runner/model.gin --gin_file=gin/runner/eval.gin \
      --gin.CHECKPOINT_PATH=\"/tmp/altup_k2\" --gin.EVAL_OUTPUT_DIR=\"/tmp/altup_k2/eval\"

Macros as T5X's runs/eval.gin: CHECKPOINT_PATH (a model dir, its checkpoints/ dir or one
checkpoints/<step> dir), EVAL_OUTPUT_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE.
Reports teacher-forced loss and token accuracy over the split, and the task's seqio metrics
(`metric_fns` after `postprocess_fn`) on decoded predictions of the first examples, plus
`decode_exact_match`. Writes EVAL_OUTPUT_DIR/metrics.json, predictions.jsonl and TensorBoard
scalars.
"""
import inspect
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from altup_t5x import cli
from altup_t5x import checkpoints as checkpoints_lib
from altup_t5x import models as models_lib
from altup_t5x import partitioning
from altup_t5x import trainer as trainer_lib
from altup_t5x.data import datasets

RunnerError = cli.RunnerError


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def load_model_params(model, cfg: datasets.DatasetConfig, checkpoint_path: str,
                      num_partitions: int = 1):
  """Validates the config, builds a Trainer and restores the checkpoint's parameters."""
  if not checkpoint_path:
    raise RunnerError('CHECKPOINT_PATH is not set.')
  task = datasets.get_task(cfg)
  datasets.check_feature_lengths(cfg, task)
  datasets.check_data_prepared(cfg, task)
  partitioner = partitioning.Partitioner(num_partitions)
  if cfg.batch_size % partitioner.data_size:
    raise RunnerError(f'BATCH_SIZE={cfg.batch_size} must be divisible by the data axis of the '
                      f'mesh ({partitioner.data_size}).')
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.model_input_shapes(cfg.task_feature_lengths))
  params, step = checkpoints_lib.restore_params(checkpoint_path, trainer.abstract_params)
  return task, trainer, params, step


def _task_dataset(task, cfg: datasets.DatasetConfig):
  return task.get_dataset(dict(cfg.task_feature_lengths), split=cfg.split, shuffle=False,
                          num_epochs=1, seed=cfg.seed if cfg.seed is not None else 0,
                          use_cached=cfg.use_cached)


def raw_examples(task, cfg: datasets.DatasetConfig, max_examples: Optional[int]) -> List[Dict]:
  """The task's preprocessed, tokenized examples (unpacked, in order)."""
  ds = _task_dataset(task, cfg)
  if max_examples:
    ds = ds.take(max_examples)
  return list(ds.as_numpy_iterator())


def count_examples(task, cfg: datasets.DatasetConfig) -> int:
  """Number of preprocessed examples in the task's split (one pass over it if not known)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = _task_dataset(task, cfg)
  n = int(ds.cardinality())
  if n >= 0:
    return n

  @tf.autograph.experimental.do_not_convert
  def add_one(count, _):
    return count + 1
  return int(ds.reduce(tf.constant(0, tf.int64), add_one))


def evaluated_tasks(task, split: str) -> list:
  """The tasks of `task` (a task or mixture) that have `split`, as seqio's Evaluator picks them."""
  subs = [sub for sub in datasets.leaf_tasks(task) if split in sub.splits]
  if not subs:
    raise RunnerError(f'{task.name!r} has no {split!r} split in any of its tasks '
                      f'(splits: {sorted({s for t in datasets.leaf_tasks(task) for s in t.splits})}).')
  return subs


def examples_to_batches(examples: Sequence[Mapping], lengths: Mapping[str, int],
                        batch_size: int):
  """Unpacked model features, [batch_size, length] each, padding the last batch with zeros."""
  li, lt = lengths['inputs'], lengths['targets']
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    enc = np.zeros((batch_size, li), np.int32)
    tgt = np.zeros((batch_size, lt), np.int32)
    for i, ex in enumerate(chunk):
      x, y = np.asarray(ex['inputs'])[:li], np.asarray(ex['targets'])[:lt]
      enc[i, :len(x)], tgt[i, :len(y)] = x, y
    dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    yield {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
           'decoder_input_tokens': dec_in,
           'decoder_loss_weights': (tgt > 0).astype(np.int32)}, len(chunk)


def _text(x) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def _postprocess(task, text, example, is_target):
  fn = task.postprocess_fn
  if fn is None:
    return text
  try:
    return fn(text, example=example, is_target=is_target)
  except TypeError:
    return fn(text)


def example_ids(example: Mapping) -> Dict[str, int]:
  """The example's dataset ids (`idx`, or `idx/<part>` for MultiRC and ReCoRD), kept in the rows
  so that test-split predictions can be matched to the leaderboard's ids."""
  return {k: int(v) for k, v in example.items() if k == 'idx' or k.startswith('idx/')}


def predict_examples(trainer, params, task, cfg, examples, num_decodes: int = 1,
                     decoder_params=None, progress_every_s: float = 30.0) -> List[Dict[str, Any]]:
  """Decodes every example; returns rows with the example's ids, texts and scores.

  Logs progress (examples decoded, rate, ETA) every `progress_every_s` seconds; the first batch,
  which compiles the decoder, is left out of the rate.
  """
  vocab = task.output_features['targets'].vocabulary
  in_vocab = task.output_features['inputs'].vocabulary
  rows = []
  total = len(examples)
  t_first, n_first, t_last_log = None, 0, time.time()
  if total > cfg.batch_size:
    _log(f'[eval] {task.name}: decoding {total} examples (compiling first)...')
  for batch, n in examples_to_batches(examples, cfg.task_feature_lengths, cfg.batch_size):
    decodes, aux = trainer.predict_step(params, trainer.partitioner.shard_batch(batch),
                                        num_decodes=num_decodes, decoder_params=decoder_params)
    decodes, scores = np.asarray(decodes), np.asarray(aux['scores'])
    for i in range(n):
      ex = examples[len(rows)]
      ids = [int(t) for t in decodes[i]]
      rows.append({
          **example_ids(ex),
          'inputs': in_vocab.decode([int(t) for t in ex['inputs']]),
          'targets': _text(ex['targets_pretokenized']) if 'targets_pretokenized' in ex
                     else vocab.decode([int(t) for t in ex['targets']]),
          'prediction': vocab.decode(ids), 'prediction_ids': ids,
          'target_ids': [int(t) for t in ex['targets']], 'score': float(scores[i])})
    now = time.time()
    if t_first is None:
      t_first, n_first = now, len(rows)
    elif now - t_last_log >= progress_every_s and len(rows) < total:
      rate = (len(rows) - n_first) / max(now - t_first, 1e-9)
      _log(f'[eval] {task.name}: decoded {len(rows)}/{total} examples, {rate:.1f} examples/s, '
           f'ETA {_format_seconds((total - len(rows)) / max(rate, 1e-9))}')
      t_last_log = now
  return rows


def _format_seconds(s: float) -> str:
  from altup_t5x import train as train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.format_seconds(s)


def task_metrics(task, examples, rows) -> Dict[str, float]:
  """The task's seqio metrics on postprocessed predictions (+ decode_exact_match)."""
  out = {}
  targets = [_postprocess(task, r['targets'], ex, True) for r, ex in zip(rows, examples)]
  preds = [_postprocess(task, r['prediction'], ex, False) for r, ex in zip(rows, examples)]
  for fn in getattr(task, 'predict_metric_fns', None) or getattr(task, 'metric_fns', []):
    params = inspect.signature(fn).parameters if callable(fn) else {}
    if 'predictions' in params or len(params) >= 2:
      out.update({k: float(v) for k, v in fn(targets, preds).items()})
  if rows:
    exact = [r['prediction_ids'][:len(r['target_ids'])] == r['target_ids'] for r in rows]
    out['decode_exact_match'] = 100.0 * float(np.mean(exact))
  return out


def evaluate(*, model: models_lib.EncoderDecoderModel, dataset_cfg: datasets.DatasetConfig,
             checkpoint_path: str, output_dir: Optional[str] = None, num_partitions: int = 1,
             eval_steps: Optional[int] = None, max_predict_examples: Optional[int] = None,
             num_decodes: int = 1) -> Dict[str, float]:
  """Loss/accuracy over the split plus the task's metrics on decoded predictions.

  By default both cover the whole split. `eval_steps` (batches, for the loss) and
  `max_predict_examples` (decoded examples, for the task's metrics) limit them; a limited number
  is reported as such: "metrics on N of M examples".
  """
  from altup_t5x import train as train_lib  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  cli.check_output_dir('EVAL_OUTPUT_DIR', output_dir)
  for name, value in (('EVAL_STEPS', eval_steps), ('MAX_PREDICT_EXAMPLES', max_predict_examples)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise RunnerError(f'{name}={value!r} must be a positive integer, or None for the whole '
                        'split.')
  task, trainer, params, step = load_model_params(model, dataset_cfg, checkpoint_path,
                                                  num_partitions)
  subs = evaluated_tasks(task, dataset_cfg.split)
  _log(f'[eval] checkpoint step {step}, task {dataset_cfg.mixture_or_task_name} '
       f'split {dataset_cfg.split}')
  totals = {}

  def total(sub):
    if sub.name not in totals:
      totals[sub.name] = count_examples(sub, dataset_cfg)
    return totals[sub.name]

  loss_metrics, loss_examples, complete = train_lib.evaluate_loss_counted(
      trainer, params, dataset_cfg, eval_steps)
  metrics = dict(loss_metrics)
  loss_note = ''
  if not complete and loss_examples < sum(total(sub) for sub in subs):
    loss_note = (f' (metrics on {loss_examples} of {sum(total(sub) for sub in subs)} examples: '
                 f'EVAL_STEPS={eval_steps})')
  _log('[eval] ' + ', '.join(f'{k}={v:.4g}' for k, v in loss_metrics.items()) + loss_note)
  rows_all = []
  for sub in subs:
    examples = raw_examples(sub, dataset_cfg, max_predict_examples)
    rows = predict_examples(trainer, params, sub, dataset_cfg, examples, num_decodes)
    # Namespaced by task (as T5X logs inference metrics), so that a task metric called e.g.
    # 'accuracy' never overwrites the teacher-forced token accuracy.
    task_scores = task_metrics(sub, examples, rows)
    metrics.update({f'{sub.name}/{k}': v for k, v in task_scores.items()})
    note = ''
    if max_predict_examples and len(examples) == max_predict_examples and \
        total(sub) > len(examples):
      note = (f' (metrics on {len(examples)} of {total(sub)} examples: '
              f'MAX_PREDICT_EXAMPLES={max_predict_examples})')
    _log(f'[eval] {sub.name}: ' + ', '.join(f'{k}={v:.4g}' for k, v in task_scores.items())
         + (note or f' ({len(examples)} examples)'))
    rows_all.extend(dict(r, task=sub.name) for r in rows)
  metrics['step'] = step
  if output_dir and jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, 'metrics.json'), 'w') as f:
      json.dump(metrics, f, indent=1)
    with open(os.path.join(output_dir, 'predictions.jsonl'), 'w') as f:
      for r in rows_all:
        f.write(json.dumps(r) + '\n')
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      w = metric_writers.SummaryWriter(output_dir)
      w.write_scalars(step, {k: v for k, v in metrics.items() if k != 'step'})
      w.close()
    except Exception as e:  # pylint: disable=broad-except
      _log(f'[warn] no TensorBoard summary: {e}')
  _log(f'[eval] done in {time.time() - t0:.1f}s' + (f' -> {output_dir}' if output_dir else ''))
  return metrics


def main(argv):
  return cli.run_entry_point(argv, __doc__, 'eval', 'evaluate')


def console_main():
  cli.console_entry(main)


if __name__ == '__main__':
  console_main()
