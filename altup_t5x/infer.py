r"""Standalone inference: `python -m altup_t5x.infer` (console script `altup-infer`).

    python -m altup_t5x.infer --gin_search_paths=. \
      --gin_file=gin/t5_1_1/tiny.gin --gin_file=gin/runner/model.gin \
      --gin_file=gin/runner/infer.gin \
      --gin.CHECKPOINT_PATH=\"/tmp/altup\" --gin.INFER_OUTPUT_DIR=\"/tmp/altup/infer\" \
      --gin.infer.mode=\"score\"

Macros as T5X's runs/infer.gin: CHECKPOINT_PATH, INFER_OUTPUT_DIR, MIXTURE_OR_TASK_NAME,
TASK_FEATURE_LENGTHS, BATCH_SIZE. `mode` is 'predict' (decode; NUM_DECODES > 1 = beam search
width) or 'score' (log-likelihood of each example's targets). Writes one JSON line per example to
INFER_OUTPUT_DIR/<task>-<mode>.jsonl.
"""
import json
import os
import time
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from altup_t5x import cli
from altup_t5x import eval as eval_lib
from altup_t5x import models as models_lib
from altup_t5x.data import datasets

RunnerError = cli.RunnerError
MODES = ('predict', 'score')


def infer(*, model: models_lib.EncoderDecoderModel, dataset_cfg: datasets.DatasetConfig,
          checkpoint_path: str, output_dir: str, mode: str = 'predict',
          num_decodes: int = 1, max_examples: Optional[int] = 64,
          num_partitions: int = 1) -> List[Dict[str, Any]]:
  """Predicts or scores the first `max_examples` examples of the split; returns the rows."""
  if mode not in MODES:
    raise RunnerError(f'infer.mode={mode!r} is not supported; allowed: {MODES}.')
  t0 = time.time()
  cli.check_output_dir('INFER_OUTPUT_DIR', output_dir)
  task, trainer, params, step = eval_lib.load_model_params(model, dataset_cfg, checkpoint_path,
                                                           num_partitions)
  rows_all = []
  for sub in eval_lib.evaluated_tasks(task, dataset_cfg.split):
    examples = eval_lib.raw_examples(sub, dataset_cfg, max_examples)
    if mode == 'predict':
      rows = eval_lib.predict_examples(trainer, params, sub, dataset_cfg, examples, num_decodes)
    else:
      vocab = sub.output_features['targets'].vocabulary
      rows = []
      for batch, n in eval_lib.examples_to_batches(examples, dataset_cfg.task_feature_lengths,
                                                   dataset_cfg.batch_size):
        scores = np.asarray(trainer.score_step(params, trainer.partitioner.shard_batch(batch)))
        for i in range(n):
          ex = examples[len(rows)]
          rows.append({'inputs': vocab.decode([int(t) for t in ex['inputs']]),
                       'targets': vocab.decode([int(t) for t in ex['targets']]),
                       'score': float(scores[i])})
    if jax.process_index() == 0:
      os.makedirs(output_dir, exist_ok=True)
      with open(os.path.join(output_dir, f'{sub.name}-{mode}.jsonl'), 'w') as f:
        for r in rows:
          f.write(json.dumps(r) + '\n')
    rows_all.extend(dict(r, task=sub.name) for r in rows)
  if jax.process_index() == 0:
    print(f'[infer] {mode}: {len(rows_all)} examples from checkpoint step {step} -> {output_dir} '
          f'({time.time() - t0:.1f}s)', flush=True)
  return rows_all


def main(argv):
  return cli.run_entry_point(argv, __doc__, 'infer', 'infer')


def console_main():
  cli.console_entry(main)


if __name__ == '__main__':
  console_main()
