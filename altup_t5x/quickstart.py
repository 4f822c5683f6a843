r"""Quickstart: train a tiny T5.1.1 baseline and a tiny AltUp K=2 model side by side.

    python -m altup_t5x.quickstart [--steps 150] [--workdir /tmp/altup_quickstart]

Both models use gin/t5_1_1/tiny.gin with the sizes of gin/runner/quickstart.gin (d=128, 2+2 layers,
inputs 64 / targets 16, batch 16) on the embedded span-corruption task (offline; the vocabulary
is trained on first use). Each is trained with the standalone runner (`altup_t5x.train.train`),
evaluated on the validation split (`altup_t5x.eval.evaluate`), and decodes a few examples.
Prints a table: validation cross-entropy per token and accuracy, median step time, parameters,
and one line on what the table does and does not show. Both models train at the baseline's best
peak learning rate at this size (0.03; see gin/runner/quickstart.gin).
About 5 minutes on 2 CPU cores.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = (('baseline', 'gin/altup/baseline.gin'), ('altup_k2', 'gin/altup/k2.gin'))


def _gin_files(variant_gin: str, run_gin: str):
  return ['gin/t5_1_1/tiny.gin', variant_gin, 'gin/runner/model.gin', run_gin,
          'gin/runner/quickstart.gin']


def run(steps: int = 150, workdir: str = None, examples: int = 3, eval_batches: int = 4):
  from altup_t5x import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from altup_t5x import train as train_lib  # pylint: disable=g-import-not-at-top
  from altup_t5x import cli  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  workdir = workdir or os.path.join(tempfile.gettempdir(), 'altup_quickstart')
  search = [REPO_ROOT]
  results = {}
  for name, variant in VARIANTS:
    model_dir = os.path.join(workdir, name)
    if os.path.exists(model_dir):
      shutil.rmtree(model_dir)  # always a fresh, comparable run
    print(f'\n=== {name}: training {steps} steps -> {model_dir}', flush=True)
    cli.parse_gin(_gin_files(variant, 'gin/runner/pretrain.gin'), search,
                  [f'MODEL_DIR = {model_dir!r}', f'TRAIN_STEPS = {steps}'])
    train_result = cli.call_configured(train_lib.train, 'train')
    print(f'=== {name}: evaluating', flush=True)
    cli.parse_gin(_gin_files(variant, 'gin/runner/eval.gin'), search,
                  [f'CHECKPOINT_PATH = {model_dir!r}',
                   f"EVAL_OUTPUT_DIR = {os.path.join(model_dir, 'eval')!r}",
                   f'EVAL_STEPS = {eval_batches}', f'MAX_PREDICT_EXAMPLES = {examples}',
                   'BATCH_SIZE = 16'])
    eval_metrics = cli.call_configured(eval_lib.evaluate, 'eval')
    import json  # pylint: disable=g-import-not-at-top
    with open(os.path.join(model_dir, 'eval', 'predictions.jsonl')) as f:
      predictions = [json.loads(line) for line in f]
    results[name] = (train_result, eval_metrics, predictions)

  print('\n=== Decoded validation examples (greedy)')
  for i, row in enumerate(results[VARIANTS[0][0]][2]):
    print(f'[{i}] input : {row["inputs"][:110]}')
    print(f'    target: {row["targets"]}')
    for name, _ in VARIANTS:
      print(f'    {name:9s}: {results[name][2][i]["prediction"]}')

  header = (f'| {"model":9s} | {"params":>9s} | {"train xent/tok":>14s} | {"val xent/tok":>12s} | '
            f'{"val acc":>7s} | {"step time":>9s} | {"train wall":>10s} |')
  lines = [header, '|' + '|'.join('-' * (len(c)) for c in header.split('|')[1:-1]) + '|']
  for name, _ in VARIANTS:
    tr, ev, _ = results[name]
    lines.append(f'| {name:9s} | {tr["params"]:>9,d} | {_per_token(tr):>14.4f} | '
                 f'{ev["cross_ent_loss"]:>12.4f} | {ev["accuracy"]:>7.4f} | '
                 f'{1000 * tr["median_step_time_s"]:>7.1f}ms | {tr["wall_time_s"]:>9.1f}s |')
  print('\n' + '\n'.join(lines))
  print(f'\nThis table: one seed of each model, the same batches and learning rate (peak 0.03, the '
        f'baseline\'s best at this size), {steps} steps; it does not show a gain beyond seed noise, '
        f'at each model\'s own best learning rate or with longer training (BENCHMARKS.md, "Fidelity").')
  print(f'\nTotal wall time: {time.time() - t0:.1f}s  (outputs under {workdir})')
  return results


def quiet_tensorflow() -> None:
  """Imports TensorFlow (it only reads the data here) so that it prints nothing of its own.

  Before the import: TF_CPP_MIN_LOG_LEVEL=2 turns TensorFlow's C++ INFO and WARNING lines off
  (errors stay), and TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow from announcing its oneDNN CPU
  kernels, a line it prints at import whatever the log level (the input pipeline's integer and
  string ops do not use them). Values the caller set win. `cli.import_tensorflow_quietly` then
  drops what TensorFlow's CUDA build prints on a machine without an NVIDIA driver.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  from altup_t5x import cli  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()


def _per_token(train_result):
  """The last logged train cross-entropy per target token (the runner's loss is a sum, as T5X's)."""
  return float('nan') if train_result.get('train_xent') is None else train_result['train_xent']


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--examples', type=int, default=3)
  args = parser.parse_args(argv)
  quiet_tensorflow()
  run(args.steps, args.workdir, args.examples)


if __name__ == '__main__':
  main(sys.argv[1:])
