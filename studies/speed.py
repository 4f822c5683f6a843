"""Speed: train step, forward pass, cached decode step, memory and FLOPs of every variant.

Method. Ratios are taken within one process: every variant is compiled first, then the timed
rounds go round-robin over the variants (round r times `--steps` consecutive calls of each variant
in turn), so a change of machine load hits all variants alike. The reported time is the median of
all timed calls (rounds x steps >= 20) after one warm-up call per round; the spread is the min-max
of the per-round medians. FLOPs and memory come from XLA's compiled executable:
`cost_analysis()['flops']` and `memory_analysis()` (argument + output + temp - alias bytes, i.e.
the buffers XLA's CPU backend allocates for one call: on CPU this is the executable's planned peak,
not a measured resident set size).
"""
import os
import statistics
import time
from typing import List

import jax
import jax.numpy as jnp
import numpy as np
from altup_t5x import csv_tables
from altup_t5x.models import count_params
from altup_t5x.network import Transformer
from studies.common import (ALL_VARIANTS, KINDS, QUICK_SHAPES, QUICK_VARIANTS, SPEED_SHAPES,
                            SPEED_VARIANTS, VARIANTS, Timed, compile_all, init_params, make_config,
                            make_optimizer, make_optimizer_update, make_train_step,
                            random_batch)

def build_speed_case(size_name: str, shape: dict, variant: str, seed: int = 0):
  """Compiles the train step, forward pass and cached decode step of one variant."""
  cfg = make_config(shape['size'], variant, shape['vocab_size'])
  module = Transformer(config=cfg)
  rng = jax.random.PRNGKey(seed)
  batch = random_batch(rng, cfg.vocab_size, shape['batch'], shape['inputs'], shape['targets'])
  params = init_params(module, rng, batch)  # op by op: no compile
  optimizer = make_optimizer()
  opt_state = optimizer.init(params)
  n_params = count_params(params)

  # Training step (params and optimizer state donated, as in a real loop).
  train_step = make_train_step(module, optimizer)
  copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
  train = Timed('train', train_step, (copy(params), opt_state, batch, rng),
                stateful=lambda state, out: (out[0], out[1], state[2], out[3]), donate=(0, 1))

  # Forward pass (teacher-forced logits, no dropout).
  fwd_fn = lambda p, b: module.apply({'params': p}, b['encoder_input_tokens'],
                                     b['decoder_input_tokens'], b['decoder_target_tokens'],
                                     enable_dropout=False)
  forward = Timed('forward', fwd_fn, (params, batch))

  # One cached decode step (one token for every row), the cache fed back between calls.
  length = shape['targets']
  enc = batch['encoder_input_tokens']

  def cache_shapes():  # T5X's cache starts as zeros (and cache_index 0): only shapes are needed
    _, v = module.apply({'params': params}, encoder_input_tokens=enc,
                        decoder_input_tokens=jnp.ones((enc.shape[0], length), jnp.int32),
                        decoder_target_tokens=jnp.ones((enc.shape[0], length), jnp.int32),
                        decode=True, enable_dropout=False, mutable=['cache'])
    return v['cache']

  encoded = module.apply({'params': params}, enc, enable_dropout=False, method=module.encode)

  def decode_step(cache, token, p, encoded):
    logits, v = module.apply({'params': p, 'cache': cache}, encoded, enc, token, token,
                             enable_dropout=False, decode=True, max_decode_length=length,
                             mutable=['cache'], method=module.decode)
    return v['cache'], jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)

  token0 = jnp.zeros((enc.shape[0], 1), jnp.int32)
  shapes = jax.eval_shape(cache_shapes)
  fresh = lambda: (jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), token0,
                   params, encoded)
  decode = Timed('decode', decode_step, fresh(), donate=(0,),
                 stateful=lambda state, out: (out[0], out[1], state[2], state[3]), reset=fresh)
  decode.steps_per_reset = length

  # The optimizer update alone (Adafactor on gradients shaped like the params): its cost grows with
  # the parameter count, not the batch, so it tells how much of the step time is per-parameter.
  opt_update = make_optimizer_update(optimizer)

  # The (never donated) params serve as the parameters and as gradients, and the updated params are
  # dropped: only the optimizer state is fed back, so no further copy of a large tree stays in memory.
  opt = Timed('optimizer', opt_update, (params, optimizer.init(params), params), donate=(1,),
              stateful=lambda state, out: (state[0], out[1], state[2]))
  return dict(cfg=cfg, n_params=n_params, train=train, forward=forward, decode=decode,
              optimizer=opt)



def run_speed(args) -> List[dict]:
  shapes = QUICK_SHAPES if args.quick else SPEED_SHAPES
  if args.sizes:
    shapes = {k: v for k, v in shapes.items() if k in args.sizes.split(',')}
  rows = []
  for size_name, shape in shapes.items():
    variants = QUICK_VARIANTS if args.quick else SPEED_VARIANTS[size_name]
    if args.variants:  # an explicit list may name any variant, the fidelity study's included
      unknown = [v for v in args.variants.split(',') if v not in ALL_VARIANTS]
      if unknown:
        raise SystemExit(f'ERROR: --variants: unknown {unknown}; known: {sorted(ALL_VARIANTS)}')
      variants = args.variants.split(',')
      if 'baseline' not in variants:
        raise SystemExit('ERROR: --variants must include baseline (ratios are to it)')
    print(f'\n== speed: {size_name} shape {shape}: compiling {len(variants)} variants', flush=True)
    cases = {}
    for v in variants:
      t0 = time.perf_counter()
      cases[v] = build_speed_case(size_name, shape, v)
      compile_all([cases[v][k] for k in KINDS])
      c = cases[v]
      print(f'  {v:18s} params {c["n_params"]/1e6:8.3f}M  compile train {c["train"].compile_s:5.1f}s '
            f'fwd {c["forward"].compile_s:5.1f}s decode {c["decode"].compile_s:5.1f}s '
            f'(set-up {time.perf_counter() - t0:5.1f}s)', flush=True)
    rounds, steps = args.rounds, args.steps
    t_start = time.perf_counter()
    for r in range(rounds):
      for kind in KINDS:
        for v in variants:  # round-robin: every variant once per round, same conditions
          timed = cases[v][kind]
          if kind == 'decode':
            # One round = decode `targets` tokens from a fresh cache; first token is warm-up.
            timed.reset()
            ts = [timed.call() for _ in range(timed.steps_per_reset)][1:]
          else:
            timed.call()  # warm-up
            # The optimizer-only timing is a diagnostic: fewer calls keep the run short.
            ts = [timed.call() for _ in range(min(2, steps) if kind == 'optimizer' else steps)]
          timed.times.append(ts)
      print(f'  round {r + 1}/{rounds} done ({time.perf_counter() - t_start:.0f}s)', flush=True)
    for v in variants:
      c = cases[v]
      row = dict(shape=size_name, variant=v, description=ALL_VARIANTS[v][0],
                 emb_dim=c['cfg'].emb_dim, altup_k=c['cfg'].altup_k, params=c['n_params'],
                 batch=shape['batch'], inputs=shape['inputs'], targets=shape['targets'])
      for kind in KINDS:
        timed = c[kind]
        all_times = [t for ts in timed.times for t in ts]
        per_round = [statistics.median(ts) for ts in timed.times]
        row[f'{kind}_ms'] = 1e3 * statistics.median(all_times)
        row[f'{kind}_ms_lo'] = 1e3 * min(per_round)
        row[f'{kind}_ms_hi'] = 1e3 * max(per_round)
        row[f'{kind}_n'] = len(all_times)
        row[f'{kind}_gflops'] = timed.stats['flops'] / 1e9
        row[f'{kind}_gbytes'] = timed.stats['bytes_accessed'] / 1e9
        row[f'{kind}_peak_mb'] = timed.stats['peak_bytes'] / 2**20
        row[f'{kind}_compile_s'] = timed.compile_s
      rows.append(row)
    base = next(r for r in rows if r['shape'] == size_name and r['variant'] == 'baseline')
    for row in rows:
      if row['shape'] != size_name:
        continue
      for kind in KINDS:
        row[f'{kind}_ratio'] = row[f'{kind}_ms'] / base[f'{kind}_ms']
        row[f'{kind}_flop_ratio'] = row[f'{kind}_gflops'] / base[f'{kind}_gflops']
        row[f'{kind}_peak_ratio'] = row[f'{kind}_peak_mb'] / base[f'{kind}_peak_mb']
    print_speed_table([r for r in rows if r['shape'] == size_name])
  return rows


SPEED_COLUMNS = ['shape', 'variant', 'description', 'emb_dim', 'altup_k', 'params', 'batch', 'inputs',
                 'targets']
for _k in KINDS:
  SPEED_COLUMNS += [f'{_k}_ms', f'{_k}_ms_lo', f'{_k}_ms_hi', f'{_k}_n', f'{_k}_ratio',
                    f'{_k}_gflops', f'{_k}_flop_ratio', f'{_k}_gbytes', f'{_k}_peak_mb', f'{_k}_peak_ratio',
                    f'{_k}_compile_s']


def print_speed_table(rows):
  print()
  print(f'{"variant":18s} {"params":>8s} {"train ms":>9s} {"x":>5s} {"flop x":>6s} {"fwd ms":>8s} '
        f'{"x":>5s} {"dec ms/tok":>10s} {"x":>5s} {"peak MB":>8s} {"x":>5s} {"opt ms":>7s}')
  for r in rows:
    print(f'{r["variant"]:18s} {r["params"]/1e6:7.2f}M {r["train_ms"]:9.1f} {r["train_ratio"]:5.2f} '
          f'{r["train_flop_ratio"]:6.2f} {r["forward_ms"]:8.1f} {r["forward_ratio"]:5.2f} '
          f'{r["decode_ms"]:10.2f} {r["decode_ratio"]:5.2f} {r["train_peak_mb"]:8.1f} '
          f'{r["train_peak_ratio"]:5.2f} {r["optimizer_ms"]:7.1f}', flush=True)



def plot_speed(out):
  path = os.path.join(out, 'speed.csv')
  if not os.path.exists(path):
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = csv_tables.read(path)
  shapes = list(dict.fromkeys(r['shape'] for r in rows))
  fig, axes = plt.subplots(1, len(shapes), figsize=(7 * len(shapes), 4.5), squeeze=False)
  for ax, shape in zip(axes[0], shapes):
    rs = [r for r in rows if r['shape'] == shape]
    x = np.arange(len(rs))
    for off, key, label in ((-0.3, 'train_ratio', 'train step'), (-0.1, 'train_flop_ratio', 'train FLOPs'),
                            (0.1, 'forward_ratio', 'forward'), (0.3, 'decode_ratio', 'decode/token')):
      ax.bar(x + off, [float(r[key]) for r in rs], 0.2, label=label)
    ax.axhline(1.0, color='black', lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([r['variant'] for r in rs], rotation=45, ha='right')
    ax.set_ylabel('ratio to baseline (same process)')
    ax.set_title(f'{shape}')
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'speed_ratios.png'), dpi=100)
  plt.close(fig)


