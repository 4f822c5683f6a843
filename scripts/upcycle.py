r"""Turn a dense T5.1.1 checkpoint into an AltUp checkpoint with identical outputs at step 0.

    python scripts/upcycle.py \
      --dense_checkpoint /runs/dense_small           # our runner's model dir / checkpoints/<step>
      --output_dir /runs/recycled_k2_init \
      --gin_file gin/t5_1_1/small.gin --gin_file gin/altup/recycled_k2.gin \
      [--gin.NUM_EMBEDDINGS=1100] [--from_t5x]

The gin files describe the AltUp target (size + variant, as for training); the dense model is the
same config with altup_k=1. `--from_t5x` reads a T5X checkpoint directory (checkpoint_<step>, needs
T5X installed) instead of ours. The output is a step-0 checkpoint of parameters that the runner
starts from with `--gin.INITIAL_CHECKPOINT_PATH="'<output_dir>'"` (e.g. with gin/runner/finetune.gin
settings). The script refuses to write into an existing output directory, so nothing is overwritten.

What upcycling does is documented in altup_t5x/upcycle.py. (T5X users with a Recycled target can
also let T5X do it: `utils.RestoreCheckpointConfig.fallback_to_scratch = True` initialises the
AltUp coefficients, which the dense checkpoint lacks, at their identity values.)
"""
import argparse
import os
import sys

import jax
import numpy as np


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__)
  parser.add_argument('--dense_checkpoint', required=True)
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--gin_file', action='append', required=True)
  parser.add_argument('--gin_search_paths', default=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  parser.add_argument('--from_t5x', action='store_true')
  args, rest = parser.parse_known_args(argv)
  bindings = []
  for item in rest:
    if not item.startswith('--gin.'):
      parser.error(f'unknown argument {item!r}')
    bindings.append(item[len('--gin.'):])
  if 'DROPOUT_RATE' not in ' '.join(bindings):
    bindings.append('DROPOUT_RATE = 0.0')
  return args, bindings


def main(argv=None):
  args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
  from altup_t5x import checkpoints, cli, upcycle  # pylint: disable=g-import-not-at-top
  from altup_t5x.config import AltUpConfig  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(args.output_dir)
  if os.path.exists(out) and os.listdir(out):
    raise SystemExit(f'--output_dir={out} exists and is not empty; refusing to overwrite it.')
  cli.parse_gin(args.gin_file, args.gin_search_paths.split(','), bindings)
  cfg = cli.configured(AltUpConfig)()
  dense_cfg = upcycle.dense_config_of(cfg)
  abstract = upcycle.param_shapes(dense_cfg)
  if args.from_t5x:
    from t5x import checkpoints as t5x_checkpoints  # pylint: disable=g-import-not-at-top
    dense = t5x_checkpoints.load_t5x_checkpoint(args.dense_checkpoint)['target']
    step = 0
  else:
    abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), abstract)
    dense, step = checkpoints.restore_params(args.dense_checkpoint, abstract)
  params = upcycle.upcycle_params(jax.device_get(dense), cfg)
  manager = ocp.CheckpointManager(os.path.join(out, 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(0, args=ocp.args.StandardSave({'step': np.int32(0), 'params': params}))
  manager.wait_until_finished()
  n_dense = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(dense))
  n_new = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  print(f'upcycled {args.dense_checkpoint} (step {step}, {n_dense:,} parameters) -> {out} '
        f'(altup_k={cfg.altup_k}, {cfg.altup_embedding}, {n_new:,} parameters)')


if __name__ == '__main__':
  main()
