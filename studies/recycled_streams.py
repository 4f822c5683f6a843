"""Why Recycled-AltUp gains little: do its K streams stay copies of one another?

    python -m studies.recycled_streams                         # identity init, peak LR 0.03
    python -m studies.recycled_streams --coef_init normal --coef_init_scale 0.3
    python -m studies.recycled_streams --scale study_w128 --coef_lr_scale 10   # d=128, 10x coef LR

Recycled-AltUp starts with K identical blocks (the d-wide embedding replicated). With identity
coefficients (p = I, g = 1) every block gets the same update, and while the blocks are equal the
gradient of p[i, j] = <dL/dxhat^i, x^j> is the same for every j: p can only move as I + c 1^T
(each block rescaled by a common vector), so the blocks stay proportional to each other except
where the active block's own layer path breaks the symmetry. This trains one Recycled K=2 model
at the fidelity study's scale (d=64, 4+4 layers, batch 16 x 64/16, T5X's rsqrt schedule, the
embedded corpus; `--scale study_w128`: d=128) and reports, at the probe steps, for the encoder's
last stream (the blocks entering the reduction, on 8 validation rows):

  diff        |x^1 - x^2| / |x^1|              (0: identical blocks)
  non-prop    |x^2 - c x^1| / |x^2|, c the best scalar  (0: one block a multiple of the other)
  p, g        the learned coefficients of each encoder layer

and the final validation loss. Rows are appended to --csv (benchmarks/recycled_streams.csv).
"""
import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from altup_t5x import csv_tables
from altup_t5x.config import AltUpConfig
from altup_t5x.network import AltUpStack, Transformer
from studies import fidelity
from studies.common import init_params, make_config_from, make_eval_sums, make_train_step

COLUMNS = ['date', 'scale', 'variant', 'coef_init', 'coef_init_scale', 'coef_lr_scale', 'lr',
           'seed', 'step', 'diff', 'non_prop', 'scale_c', 'p_offdiag_max', 'g_spread_max',
           'eval_loss', 'train_seconds']


def encoder_streams(module, params, tokens):
  """The encoder's K blocks entering the reduction, [b, l, k, d] (captured at `finish`)."""
  captured = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, AltUpStack) and context.method_name == 'finish':
      captured.setdefault(context.module.name, args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    module.apply({'params': params}, tokens, enable_dropout=False, method=module.encode)
  return np.asarray(captured['encoder'], np.float64)


def stream_stats(x, valid):
  m = valid[..., None].astype(np.float64)
  x1, x2 = x[..., 0, :] * m, x[..., 1, :] * m
  c = float(np.sum(x1 * x2) / np.sum(x1 * x1))
  return dict(diff=float(np.linalg.norm(x1 - x2) / np.linalg.norm(x1)),
              non_prop=float(np.linalg.norm(x2 - c * x1) / np.linalg.norm(x2)), scale_c=c)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--coef_init', default='identity', choices=['identity', 'normal'])
  parser.add_argument('--coef_init_scale', type=float, default=0.01)
  parser.add_argument('--coef_lr_scale', type=float, default=1.0,
                      help='train the AltUp coefficients at this multiple of the LR')
  parser.add_argument('--scale', default='study', choices=['study', 'study_w128'],
                      help='the fidelity study\'s d=64 scale, or d=128 with the rest unchanged')
  parser.add_argument('--lr', type=float, default=0.03)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--steps', type=int, default=fidelity.FULL_STEPS)
  parser.add_argument('--probes', default='0,100,500', help='extra probe steps (the last always)')
  parser.add_argument('--out', default='benchmarks', help='where the corpus cache and CSV live')
  parser.add_argument('--csv', default=os.path.join('benchmarks', 'recycled_streams.csv'))
  args = parser.parse_args(argv)
  if args.coef_lr_scale <= 0:
    parser.error(f'--coef_lr_scale={args.coef_lr_scale} must be > 0')
  sc = fidelity.SCALES[args.scale]
  train, evals = fidelity._data(args.scale, args.out)  # pylint: disable=protected-access
  cfg = make_config_from(AltUpConfig(vocab_size=fidelity.VOCAB_SIZE, dropout_rate=0.0,
                                     **sc['model']), 'recycled_k2')
  cfg = cfg.replace(altup_coef_init=args.coef_init, altup_coef_init_scale=args.coef_init_scale)
  module = Transformer(cfg)
  optimizer = fidelity.study_optimizer('recycled_k2', 'rsqrt', args.lr, args.coef_lr_scale)
  step_fn = jax.jit(make_train_step(module, optimizer))
  b, n = sc['batch'], len(train['encoder_input_tokens'])
  order = np.random.RandomState(args.seed).permutation(n)
  batch_at = lambda s: {k: jnp.asarray(v[order[(s * b) % n:(s * b) % n + b]])
                        for k, v in train.items()}
  params = init_params(module, jax.random.PRNGKey(args.seed), batch_at(0))
  opt_state = optimizer.init(params)
  rng = jax.random.PRNGKey(1000 + args.seed)
  probe_tokens = jnp.asarray(evals['encoder_input_tokens'][:8])
  eval_sums = make_eval_sums(module)
  probes = sorted({int(p) for p in args.probes.split(',') if p} | {args.steps})
  rows, seconds = [], 0.0

  def probe(step):
    x = encoder_streams(module, params, probe_tokens)
    enc = jax.device_get(params)['encoder']
    coefs = [(np.asarray(enc[f'altup_{i}']['predict']), np.asarray(enc[f'altup_{i}']['correct']))
             for i in range(cfg.num_encoder_layers)]
    row = dict(date=time.strftime('%Y-%m-%d %H:%M'), scale=args.scale, variant='recycled_k2',
               coef_init=args.coef_init, coef_init_scale=args.coef_init_scale,
               coef_lr_scale=args.coef_lr_scale, lr=args.lr,
               seed=args.seed, step=step, **stream_stats(x, np.asarray(probe_tokens) > 0),
               p_offdiag_max=max(float(np.max(np.abs(p - np.diag(np.diag(p))))) for p, _ in coefs),
               g_spread_max=max(float(np.ptp(g)) for _, g in coefs), train_seconds=round(seconds, 1))
    if step == args.steps:
      tot = cnt = 0.0
      for i in range(0, len(evals['encoder_input_tokens']) - b + 1, b):
        a, c = eval_sums(params, {k: jnp.asarray(v[i:i + b]) for k, v in evals.items()})
        tot, cnt = tot + float(a), cnt + float(c)
      row['eval_loss'] = tot / cnt
    rows.append(row)
    print(f'step {step}: diff {row["diff"]:.4f}, non-prop {row["non_prop"]:.4f} '
          f'(c {row["scale_c"]:.3f}), max |p offdiag| {row["p_offdiag_max"]:.3f}, '
          f'max g spread {row["g_spread_max"]:.3f}'
          + (f', eval loss {row["eval_loss"]:.4f}' if 'eval_loss' in row else ''), flush=True)
    for i, (p, g) in enumerate(coefs):
      print(f'  encoder layer {i}: p = {np.round(p.astype(float), 3).tolist()}, '
            f'g = {np.round(g.astype(float), 3).tolist()}')

  for step in range(args.steps + 1):
    if step in probes:
      probe(step)
    if step == args.steps:
      break
    t0 = time.perf_counter()
    params, opt_state, _, rng = step_fn(params, opt_state, batch_at(step), rng)
    jax.block_until_ready(params)
    seconds += time.perf_counter() - t0
  if args.csv:
    csv_tables.update(args.csv, rows, COLUMNS)


if __name__ == '__main__':
  main()
