"""Speed and quality benchmarks of AltUp against the T5.1.1 baseline; writes BENCHMARKS.md.

Everything (about 25 minutes on 2 idle CPU cores, an estimate: speed ~12, T5X comparison ~3,
quality ~10; about 2.5x that at load average 6):

    python scripts/benchmark.py all --out benchmarks/

Parts (each writes into --out; `report` rebuilds BENCHMARKS.md from what is there):

    python scripts/benchmark.py speed   --out benchmarks/   # step / forward / decode time, memory, FLOPs
    /work/scratch/t5xenv/bin/python scripts/benchmark.py t5x --out benchmarks/  # our K=1 vs T5X's network
    python scripts/benchmark.py quality --out benchmarks/   # loss curves on the embedded corpus
    python scripts/benchmark.py report  --out benchmarks/   # BENCHMARKS.md (at the repo root)

`--quick` shrinks every part to a smoke run (seconds to a minute; numbers meaningless).

Method. Ratios are taken within one process: every variant is compiled first, then the timed
rounds go round-robin over the variants (round r times `--steps` consecutive calls of each variant
in turn), so a change of machine load hits all variants alike. The reported time is the median of
all timed calls (rounds x steps >= 20) after one warm-up call per round; the spread is the min-max
of the per-round medians. FLOPs and memory come from XLA's compiled executable:
`cost_analysis()['flops']` and `memory_analysis()` (argument + output + temp - alias bytes, i.e.
the buffers XLA's CPU backend allocates for one call: on CPU this is the executable's planned peak,
not a measured resident set size).
"""
import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
T5X_PYTHON = '/work/scratch/t5xenv/bin/python'

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from altup_t5x.config import AltUpConfig, SIZES
from altup_t5x.network import Transformer
from altup_t5x import moe

# ------------------------------------------------------------------------------------------------
# Variants.

# Speed-benchmark shapes. 'tiny' is T5X's own test size (emb 8, 2+2 layers) with the embedded
# corpus vocabulary; 'small' is T5.1.1-small with T5's 32128-id vocabulary. Lengths keep T5's
# span-corruption input:target ratio (512:114 ~ 128:32).
SPEED_SHAPES = {
    'tiny': dict(size='tiny', vocab_size=1100, batch=8, inputs=128, targets=32),
    'small': dict(size='small', vocab_size=32128, batch=2, inputs=128, targets=32),
}
QUICK_SHAPES = {
    'tiny': dict(size='tiny', vocab_size=1100, batch=2, inputs=32, targets=8),
}
QUICK_VARIANTS = ['baseline', 'altup_k2', 'seq_altup_s2']

VARIANTS = {
    # name: (description, AltUpConfig overrides or a callable(base_cfg) -> cfg)
    'baseline': ('T5.1.1 baseline (K=1)', {}),
    'altup_k2': ('AltUp K=2 (wide embedding)', dict(altup_k=2)),
    'recycled_k2': ('Recycled-AltUp K=2', dict(altup_k=2, altup_embedding='recycled')),
    'altup_k4': ('AltUp K=4 (wide embedding)', dict(altup_k=4)),
    'recycled_k4': ('Recycled-AltUp K=4', dict(altup_k=4, altup_embedding='recycled')),
    'altup_k2_dynamic': ('AltUp K=2, dynamic coefficients', dict(altup_k=2, altup_coefficients='dynamic')),
    'seq_altup_s2': ('Sequence-AltUp, encoder stride 2', dict(sequence_altup_stride=2)),
    'moe': ('MoE baseline (4 experts, every 2nd layer, top-1)', dict(moe_num_experts=4, moe_every=2)),
    'altup_k2_moe': ('AltUp K=2 + MoE (4 experts, every 2nd layer)',
                     dict(altup_k=2, moe_num_experts=4, moe_every=2)),
    'dense_2d': ('dense T5.1.1 of width 2d (2x emb, heads, mlp)', 'dense2'),
    'dense_4d': ('dense T5.1.1 of width 4d (4x emb, heads, mlp)', 'dense4'),
}
SPEED_VARIANTS = {
    'tiny': list(VARIANTS),
    'small': [v for v in VARIANTS if v not in ('dense_4d', 'moe')],
}


def make_config(size: str, variant: str, vocab_size: int, dropout_rate: float = 0.0,
                **size_overrides) -> AltUpConfig:
  return make_config_from(AltUpConfig.from_size(size, vocab_size=vocab_size,
                                                dropout_rate=dropout_rate, **size_overrides),
                          variant)


# ------------------------------------------------------------------------------------------------
# Jitted functions: training step, forward pass, one cached decode step.

def cross_entropy(logits, targets, weights):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_loss_fn(module: Transformer):
  cfg = module.config

  def loss_fn(params, batch, dropout_rng):
    logits, state = module.apply(
        {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
        batch['decoder_target_tokens'], encoder_segment_ids=batch.get('encoder_segment_ids'),
        decoder_segment_ids=batch.get('decoder_segment_ids'),
        encoder_positions=batch.get('encoder_positions'),
        decoder_positions=batch.get('decoder_positions'),
        enable_dropout=cfg.dropout_rate > 0, rngs={'dropout': dropout_rng},
        mutable=['intermediates'])
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = batch['decoder_target_tokens'] > 0
    loss = cross_entropy(logits, batch['decoder_target_tokens'], weights.astype(jnp.float32))
    if getattr(cfg, 'moe_num_experts', 0):  # T5X's T5Config has no MoE fields
      aux, z = moe.aux_losses(state.get('intermediates', {}), cfg.moe_aux_loss_coef,
                              cfg.moe_z_loss_coef)
      loss = loss + aux + z
    return loss

  return loss_fn


def make_optimizer(learning_rate=0.01):
  """T5X's pretraining optimizer: Adafactor (its defaults) at lr 1/sqrt(10000) during warm-up."""
  try:
    from altup_t5x import optimizers  # pylint: disable=g-import-not-at-top
    return optimizers.adafactor(learning_rate)
  except ImportError:
    return optax.adafactor(learning_rate, decay_rate=0.8, clipping_threshold=1.0,
                           multiply_by_parameter_scale=True)


def make_train_step(module, optimizer):
  loss_fn = make_loss_fn(module)

  def train_step(params, opt_state, batch, rng):
    rng, dropout_rng = jax.random.split(rng)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, dropout_rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, loss, rng

  return train_step


def make_eval_loss(module):
  loss_fn = make_loss_fn(module)
  return lambda params, batch: loss_fn(params, batch, jax.random.PRNGKey(0))


def random_batch(rng, vocab_size, batch, inputs, targets):
  r1, r2 = jax.random.split(rng)
  enc = jax.random.randint(r1, (batch, inputs), 2, vocab_size, jnp.int32)
  dec_t = jax.random.randint(r2, (batch, targets), 2, vocab_size, jnp.int32)
  dec_in = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), dec_t[:, :-1]], axis=1)
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in,
          'decoder_target_tokens': dec_t}


def init_params(module, rng, batch):
  variables = module.init(
      {'params': rng, 'dropout': rng}, batch['encoder_input_tokens'][:1],
      batch['decoder_input_tokens'][:1], batch['decoder_target_tokens'][:1])
  return variables['params']


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def compiled_stats(compiled) -> Dict[str, float]:
  """FLOPs and planned peak bytes of one call, from XLA's compiled executable."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  out = {'flops': float(cost.get('flops', float('nan'))),
         'bytes_accessed': float(cost.get('bytes accessed', float('nan')))}
  mem = compiled.memory_analysis()
  if mem is not None:
    out['peak_bytes'] = float(mem.argument_size_in_bytes + mem.output_size_in_bytes +
                              mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    out['temp_bytes'] = float(mem.temp_size_in_bytes)
  else:
    out['peak_bytes'] = out['temp_bytes'] = float('nan')
  return out


class Timed:
  """One jitted callable with its arguments; `call()` runs it once and blocks."""

  def __init__(self, name: str, fn: Callable, args: tuple, stateful: Any = None,
               reset: Optional[Callable] = None, donate: tuple = ()):
    self.name, self.fn, self.args, self.stateful, self.reset_fn = name, fn, args, stateful, reset
    self.lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
    self.compiled = None
    self.times: List[List[float]] = []
    self.state = args

  def compile(self):
    t0 = time.perf_counter()
    self.compiled = self.lowered.compile()
    self.compile_s = time.perf_counter() - t0
    self.stats = compiled_stats(self.compiled)
    self.lowered = None
    return self

  def reset(self):
    if self.reset_fn is not None:
      self.state = self.reset_fn()

  def call(self) -> float:
    t0 = time.perf_counter()
    out = self.compiled(*self.state)
    jax.block_until_ready(out)
    dt = time.perf_counter() - t0
    if self.stateful:  # feed the new state back (the old buffers were donated)
      self.state = self.stateful(self.state, out)
    return dt


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
  def opt_update(p, s, g):
    updates, s = optimizer.update(g, s, p)
    return optax.apply_updates(p, updates), s

  # The (never donated) params serve as the parameters and as gradients, and the updated params are
  # dropped: only the optimizer state is fed back, so no further copy of a large tree stays in memory.
  opt = Timed('optimizer', opt_update, (params, optimizer.init(params), params), donate=(1,),
              stateful=lambda state, out: (state[0], out[1], state[2]))
  return dict(cfg=cfg, n_params=n_params, train=train, forward=forward, decode=decode,
              optimizer=opt)


KINDS = ('train', 'forward', 'decode', 'optimizer')


def compile_all(timeds: Sequence[Timed]):
  """XLA compiles release the GIL: compile on all cores at once."""
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  with futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
    list(pool.map(lambda t: t.compile(), timeds))


def run_speed(args) -> List[dict]:
  shapes = QUICK_SHAPES if args.quick else SPEED_SHAPES
  if args.sizes:
    shapes = {k: v for k, v in shapes.items() if k in args.sizes.split(',')}
  rows = []
  for size_name, shape in shapes.items():
    variants = QUICK_VARIANTS if args.quick else SPEED_VARIANTS[size_name]
    if args.variants:
      variants = [v for v in variants if v in args.variants.split(',')]
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
      row = dict(shape=size_name, variant=v, description=VARIANTS[v][0],
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


def write_csv(path, rows, columns):
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    w.writeheader()
    for r in rows:
      w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()})


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------
# Quality: loss against steps and wall-clock on the embedded corpus.

# A model small enough for 3 seeds x 4 variants in ~10 minutes on 2 idle cores (the K*d-wide dense
# model alone is ~half of it), with T5.1.1's shape ratios (mlp = 2 emb, heads x head_dim = emb).
QUALITY_MODEL = dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, num_encoder_layers=2,
                     num_decoder_layers=2)
QUALITY_RUN = dict(batch=16, inputs=128, targets=32, steps=200, baseline_steps=300, eval_every=20,
                   eval_examples=128, learning_rate=0.01)
QUICK_QUALITY_MODEL = dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                           num_decoder_layers=1)
QUICK_QUALITY_RUN = dict(batch=4, inputs=64, targets=16, steps=12, baseline_steps=18, eval_every=6,
                         eval_examples=16, learning_rate=0.01)
QUALITY_VARIANTS = ['baseline', 'altup_k2', 'recycled_k2', 'dense_2d']


def quality_config(variant: str, model: dict) -> AltUpConfig:
  base = AltUpConfig(vocab_size=1100, dropout_rate=0.0, **model)  # T5.1.1 pretraining: no dropout
  return make_config_from(base, variant)


def make_config_from(base: AltUpConfig, variant: str) -> AltUpConfig:
  overrides = VARIANTS[variant][1]
  if isinstance(overrides, str) and overrides.startswith('dense'):
    f = int(overrides[len('dense'):])
    return base.replace(emb_dim=f * base.emb_dim, num_heads=f * base.num_heads,
                        mlp_dim=f * base.mlp_dim)
  return base.replace(**overrides)


def load_corpus_batches(run: dict, num_train: int, out_dir: str):
  """Packed span-corruption examples of the embedded corpus as numpy arrays (cached on disk)."""
  lengths = {'inputs': run['inputs'], 'targets': run['targets']}
  from altup_t5x.data import corpus  # pylint: disable=g-import-not-at-top
  del out_dir  # the arrays are a cache, not a result: they go with the vocabulary's cache
  cache = os.path.join(corpus.cache_dir(), 'benchmark')
  os.makedirs(cache, exist_ok=True)
  path = os.path.join(cache, f'span_corruption_{run["inputs"]}_{run["targets"]}_{num_train}_'
                             f'{run["eval_examples"]}.npz')
  if os.path.exists(path):
    data = np.load(path)
    return ({k[6:]: data[k] for k in data.files if k.startswith('train_')},
            {k[5:]: data[k] for k in data.files if k.startswith('eval_')})
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  import seqio  # pylint: disable=g-import-not-at-top
  import altup_t5x.data.tasks  # pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task('altup_embedded_span_corruption')
  converter = seqio.EncDecFeatureConverter(pack=True)

  def take(split, n):
    ds = task.get_dataset(lengths, split=split, shuffle=split == 'train', seed=0, num_epochs=None)
    ds = converter(ds, lengths)
    rows = list(ds.take(n).as_numpy_iterator())
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  t0 = time.perf_counter()
  train, evals = take('train', num_train), take('validation', run['eval_examples'])
  print(f'  data: {num_train} train + {len(evals["encoder_input_tokens"])} validation packed '
        f'examples in {time.perf_counter() - t0:.0f}s', flush=True)
  np.savez(path, **{f'train_{k}': v for k, v in train.items()},
           **{f'eval_{k}': v for k, v in evals.items()})
  return train, evals


_QUALITY_FNS = {}


def _quality_fns(cfg, run):
  """(module, optimizer, jitted train step, jitted eval sums) per config, shared by all seeds."""
  key = (cfg, run['learning_rate'])
  if key in _QUALITY_FNS:
    return _QUALITY_FNS[key]
  module = Transformer(config=cfg)
  optimizer = make_optimizer(run['learning_rate'])
  train_step = jax.jit(make_train_step(module, optimizer), donate_argnums=(0, 1))

  def eval_sums(params, batch):  # token-weighted sum of the cross-entropy and the token count
    logits = module.apply({'params': params}, batch['encoder_input_tokens'],
                          batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                          encoder_segment_ids=batch['encoder_segment_ids'],
                          decoder_segment_ids=batch['decoder_segment_ids'],
                          encoder_positions=batch['encoder_positions'],
                          decoder_positions=batch['decoder_positions'], enable_dropout=False)
    w = batch['decoder_loss_weights'].astype(jnp.float32)
    return cross_entropy(logits, batch['decoder_target_tokens'], w) * jnp.sum(w), jnp.sum(w)

  _QUALITY_FNS[key] = (module, optimizer, train_step, jax.jit(eval_sums))
  return _QUALITY_FNS[key]


class QualityRun:
  """One variant and seed: params, optimizer state, the shared jitted train step and eval loss."""

  def __init__(self, variant, cfg, seed, run, example_batch):
    self.variant, self.seed, self.cfg = variant, seed, cfg
    module, optimizer, self.train_step, self.eval_sums = _quality_fns(cfg, run)
    self.params = init_params(module, jax.random.PRNGKey(seed), example_batch)
    self.n_params = count_params(self.params)
    self.opt_state = optimizer.init(self.params)
    self.rng = jax.random.PRNGKey(1000 + seed)

    self.train_curve, self.eval_curve = [], []  # (step, seconds, loss)
    self.seconds = 0.0

  def warm_up(self, batch, eval_batch):
    """Compiles both functions; the state is copied, so this trains nothing."""
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
    jax.block_until_ready(self.train_step(copy(self.params), copy(self.opt_state), batch, self.rng))
    jax.block_until_ready(self.eval_sums(self.params, eval_batch))

  def step(self, batch):
    t0 = time.perf_counter()
    self.params, self.opt_state, loss, self.rng = self.train_step(self.params, self.opt_state,
                                                                  batch, self.rng)
    loss = float(loss)  # blocks
    dt = time.perf_counter() - t0
    return loss, dt

  def evaluate(self, eval_batches):
    total, count = 0.0, 0.0
    for b in eval_batches:
      s, n = self.eval_sums(self.params, b)
      total, count = total + float(s), count + float(n)
    return total / count


def run_quality(args) -> dict:
  model = QUICK_QUALITY_MODEL if args.quick else QUALITY_MODEL
  run = dict(QUICK_QUALITY_RUN if args.quick else QUALITY_RUN)
  if args.train_steps:
    run['baseline_steps'] = int(round(args.train_steps * run['baseline_steps'] / run['steps']))
    run['steps'] = args.train_steps
  seeds = list(range(args.seeds))
  num_train = run['baseline_steps'] * run['batch']
  print(f'\n== quality: model {model}, run {run}, seeds {seeds}', flush=True)
  train, evals = load_corpus_batches(run, num_train, args.out)
  b = run['batch']
  eval_batches = [{k: jnp.asarray(v[i:i + b]) for k, v in evals.items()}
                  for i in range(0, len(evals['encoder_input_tokens']) - b + 1, b)]
  results = {'model': model, 'run': run, 'seeds': seeds, 'variants': {}}
  t_total = time.perf_counter()
  for seed in seeds:
    # Data order depends on the seed; every variant of a seed sees the same batches.
    order = np.random.RandomState(seed).permutation(num_train)
    batch_at = lambda step: {k: jnp.asarray(v[order[step * b:(step + 1) * b]])
                             for k, v in train.items()}
    runs = {}
    for v in QUALITY_VARIANTS:
      t0 = time.perf_counter()
      runs[v] = QualityRun(v, quality_config(v, model), seed, run, batch_at(0))
      runs[v].warm_up(batch_at(0), eval_batches[0])
      print(f'  seed {seed} {v:12s} params {runs[v].n_params / 1e6:.3f}M  '
            f'compile {time.perf_counter() - t0:.0f}s', flush=True)
    for step in range(run['baseline_steps']):
      batch = batch_at(step)
      # Round-robin over the variants at every step: load changes hit all of them alike.
      for v, r in runs.items():
        limit = run['baseline_steps'] if v == 'baseline' else run['steps']
        if step >= limit:
          continue
        loss, dt = r.step(batch)
        r.seconds += dt
        r.train_curve.append((step + 1, r.seconds, loss))
        if (step + 1) % run['eval_every'] == 0 or step + 1 == limit:
          r.eval_curve.append((step + 1, r.seconds, r.evaluate(eval_batches)))
      if (step + 1) % run['eval_every'] == 0:
        print(f'  seed {seed} step {step + 1:4d}: ' + '  '.join(
            f'{v} {r.eval_curve[-1][2]:.3f}' for v, r in runs.items() if r.eval_curve) +
              f'  ({time.perf_counter() - t_total:.0f}s)', flush=True)
    for v, r in runs.items():
      entry = results['variants'].setdefault(v, {'description': VARIANTS[v][0],
                                                 'params': r.n_params, 'seeds': {}})
      entry['seeds'][str(seed)] = {'train': r.train_curve, 'eval': r.eval_curve}
  results['seconds'] = time.perf_counter() - t_total
  summarize_quality(results)
  return results


def _interp_reach(curve, target):
  """First (step, seconds) at which a piecewise-linear eval curve reaches `target`, or None."""
  prev = None
  for step, sec, loss in curve:
    if loss <= target:
      if prev is None:
        return step, sec
      (s0, t0, l0) = prev
      f = (l0 - target) / max(l0 - loss, 1e-12)
      return s0 + f * (step - s0), t0 + f * (sec - t0)
    prev = (step, sec, loss)
  return None


def summarize_quality(results):
  """Final eval loss (mean, std, min-max over seeds) and the baseline's steps/seconds to reach it."""
  run = results['run']
  summary = {}
  base = results['variants']['baseline']['seeds']
  for v, entry in results['variants'].items():
    finals, secs, reach_steps, reach_secs = [], [], [], []
    for seed, curves in entry['seeds'].items():
      at = [e for e in curves['eval'] if e[0] == run['steps']][0]  # compare at the same step
      finals.append(at[2])
      secs.append(at[1])
      reach = _interp_reach(base[seed]['eval'], at[2])
      reach_steps.append(reach[0] if reach else float('nan'))
      reach_secs.append(reach[1] if reach else float('nan'))
    summary[v] = dict(
        final_eval_loss=float(np.mean(finals)),
        final_eval_loss_std=float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
        final_eval_loss_min=float(np.min(finals)), final_eval_loss_max=float(np.max(finals)),
        seconds=float(np.mean(secs)), step_ms=1e3 * float(np.mean(secs)) / run['steps'],
        baseline_steps_to_reach=float(np.mean(reach_steps)),
        baseline_steps_reached=int(np.sum(np.isfinite(reach_steps))),
        baseline_seconds_to_reach=float(np.mean(reach_secs)),
        finals=[float(x) for x in finals], params=entry['params'])
  results['summary'] = summary
  print(f'\n{"variant":12s} {"params":>8s} {"eval loss":>10s} {"std":>6s} {"ms/step":>8s} '
        f'{"base steps to reach":>20s} {"base s to reach":>16s} {"own s":>7s}')
  for v, s in summary.items():
    print(f'{v:12s} {s["params"]/1e6:7.3f}M {s["final_eval_loss"]:10.4f} '
          f'{s["final_eval_loss_std"]:6.4f} {s["step_ms"]:8.1f} '
          f'{s["baseline_steps_to_reach"]:14.0f} ({s["baseline_steps_reached"]}/'
          f'{len(s["finals"])}) {s["baseline_seconds_to_reach"]:16.1f} {s["seconds"]:7.1f}',
          flush=True)


# ------------------------------------------------------------------------------------------------
# Our K=1 network against T5X's own `t5x.examples.t5.network` (run with T5X's Python).

T5X_SHAPES = {'tiny': SPEED_SHAPES['tiny'], 'small': SPEED_SHAPES['small']}


def run_t5x(args) -> List[dict]:
  """Train step and forward time of T5X's Transformer and ours (K=1), same config, one process."""
  from t5x.examples.t5 import network as t5x_network  # pylint: disable=g-import-not-at-top
  shapes = QUICK_SHAPES if args.quick else T5X_SHAPES
  if args.sizes:
    shapes = {k: v for k, v in shapes.items() if k in args.sizes.split(',')}
  rows = []
  for size_name, shape in shapes.items():
    cfg = make_config(shape['size'], 'baseline', shape['vocab_size'])
    t5x_cfg = t5x_network.T5Config(
        vocab_size=cfg.vocab_size, dtype=cfg.dtype, emb_dim=cfg.emb_dim, num_heads=cfg.num_heads,
        num_encoder_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
        head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim, mlp_activations=cfg.mlp_activations,
        dropout_rate=cfg.dropout_rate, logits_via_embedding=cfg.logits_via_embedding,
        float32_attention_logits=cfg.float32_attention_logits)
    modules = {'altup_t5x': Transformer(config=cfg), 't5x': t5x_network.Transformer(config=t5x_cfg)}
    rng = jax.random.PRNGKey(0)
    batch = random_batch(rng, cfg.vocab_size, shape['batch'], shape['inputs'], shape['targets'])
    cases = {}
    print(f'\n== t5x comparison: {size_name} shape {shape}', flush=True)
    for name, module in modules.items():
      params = init_params(module, rng, batch)
      optimizer = make_optimizer()
      opt_state = optimizer.init(params)
      copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
      train = Timed('train', make_train_step(module, optimizer),
                    (copy(params), opt_state, batch, rng), donate=(0, 1),
                    stateful=lambda state, out: (out[0], out[1], state[2], out[3]))
      fwd_fn = lambda p, b, module=module: module.apply(
          {'params': p}, b['encoder_input_tokens'], b['decoder_input_tokens'],
          b['decoder_target_tokens'], enable_dropout=False)
      forward = Timed('forward', fwd_fn, (params, batch))
      compile_all([train, forward])
      cases[name] = dict(params=count_params(params), train=train, forward=forward)
      print(f'  {name:10s} params {cases[name]["params"] / 1e6:.3f}M', flush=True)
    for _ in range(args.rounds):
      for kind in ('train', 'forward'):
        for name in modules:
          timed = cases[name][kind]
          timed.call()
          timed.times.append([timed.call() for _ in range(args.steps)])
    for name in modules:
      c = cases[name]
      row = dict(shape=size_name, network=name, params=c['params'])
      for kind in ('train', 'forward'):
        ts = [t for r in c[kind].times for t in r]
        per_round = [statistics.median(r) for r in c[kind].times]
        row[f'{kind}_ms'] = 1e3 * statistics.median(ts)
        row[f'{kind}_ms_lo'], row[f'{kind}_ms_hi'] = 1e3 * min(per_round), 1e3 * max(per_round)
        row[f'{kind}_n'] = len(ts)
        row[f'{kind}_gflops'] = c[kind].stats['flops'] / 1e9
      rows.append(row)
    ref = rows[-1]
    for row in rows[-2:]:
      for kind in ('train', 'forward'):
        row[f'{kind}_ratio'] = row[f'{kind}_ms'] / ref[f'{kind}_ms']
      print(f'  {row["network"]:10s} train {row["train_ms"]:8.1f} ms ({row["train_ratio"]:.3f}x)  '
            f'forward {row["forward_ms"]:8.1f} ms ({row["forward_ratio"]:.3f}x)  '
            f'train GFLOP {row["train_gflops"]:.3f}', flush=True)
  return rows


T5X_COLUMNS = ['shape', 'network', 'params'] + [
    f'{k}_{c}' for k in ('train', 'forward')
    for c in ('ms', 'ms_lo', 'ms_hi', 'n', 'ratio', 'gflops')]


# ------------------------------------------------------------------------------------------------
# Outputs: CSV and plots.

def write_quality_csv(path, results):
  rows = []
  for v, s in results['summary'].items():
    rows.append(dict(variant=v, description=VARIANTS[v][0], **{
        k: val for k, val in s.items() if not isinstance(val, list)},
                     finals=' '.join(f'{x:.4f}' for x in s['finals'])))
  write_csv(path, rows, list(rows[0]))
  curve_rows = []
  for v, entry in results['variants'].items():
    for seed, curves in entry['seeds'].items():
      for kind in ('train', 'eval'):
        for step, sec, loss in curves[kind]:
          curve_rows.append(dict(variant=v, seed=seed, kind=kind, step=step, seconds=sec, loss=loss))
  write_csv(path.replace('.csv', '_curves.csv'), curve_rows, list(curve_rows[0]))


COLORS = {'baseline': 'black', 'altup_k2': 'tab:blue', 'recycled_k2': 'tab:green',
          'dense_2d': 'tab:red'}


def _mean_curve(entry, kind, x_index, smooth=1):
  """Mean and min/max over seeds of a curve; x is the step or the (mean) seconds."""
  curves = [np.array(c[kind], dtype=float) for c in entry['seeds'].values()]
  n = min(len(c) for c in curves)
  ys = np.stack([c[:n, 2] for c in curves])
  if smooth > 1:
    kernel = np.ones(smooth) / smooth
    ys = np.stack([np.convolve(np.pad(y, (smooth - 1, 0), mode='edge'), kernel, 'valid')
                   for y in ys])
  xs = np.mean(np.stack([c[:n, x_index] for c in curves]), axis=0)
  return xs, ys.mean(0), ys.min(0), ys.max(0)


def plot_quality(results, out):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n_seeds = len(results['seeds'])
  for x_index, xlabel, name in ((0, 'training step', 'steps'),
                                (1, 'training wall-clock (s, step time only)', 'time')):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind, smooth in ((axes[0], 'train', 10), (axes[1], 'eval', 1)):
      for v, entry in results['variants'].items():
        xs, mean, lo, hi = _mean_curve(entry, kind, x_index, smooth)
        ax.plot(xs, mean, color=COLORS.get(v), label=f'{v} ({entry["params"] / 1e6:.2f}M)')
        ax.fill_between(xs, lo, hi, color=COLORS.get(v), alpha=0.15)
      ax.set_xlabel(xlabel)
      ax.set_ylabel(f'{kind} loss' + (' (10-step mean)' if smooth > 1 else ' (validation split)'))
      ax.grid(alpha=0.3)
      if kind == 'eval':
        last = [_mean_curve(e, 'eval', x_index)[1][-1] for e in results['variants'].values()]
        first = [_mean_curve(e, 'eval', x_index)[1][min(2, len(e['seeds']['0']['eval']) - 1)]
                 for e in results['variants'].values()]
        ax.set_ylim(min(last) - 0.1, max(first) + 0.1)
    axes[0].legend()
    fig.suptitle(f'Embedded-corpus span corruption, mean of {n_seeds} seeds (band: min-max)')
    fig.tight_layout()
    fig.savefig(os.path.join(out, f'quality_loss_vs_{name}.png'), dpi=100)
    plt.close(fig)
  # The paper's kind of figure: what the baseline needs to match each variant's final loss.
  summary = results['summary']
  steps = results['run']['steps']
  names = [v for v in summary if v != 'baseline']
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, own, label in ((axes[0], 'baseline_steps_to_reach', None, 'steps'),
                              (axes[1], 'baseline_seconds_to_reach', 'seconds', 'seconds')):
    base_need = [summary[v][key] for v in names]
    own_cost = [steps if own is None else summary[v][own] for v in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, own_cost, 0.4, label='variant', color=[COLORS.get(v) for v in names])
    ax.bar(x + 0.2, [b if np.isfinite(b) else 0 for b in base_need], 0.4, color='grey',
           label='baseline to reach the same eval loss')
    for xi, b in zip(x, base_need):
      if not np.isfinite(b):
        ax.text(xi + 0.2, 0, 'not\nreached', ha='center', va='bottom', fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel(label)
    ax.legend(fontsize=8)
  fig.suptitle(f'Baseline {label} needed to reach each variant\'s final eval loss (mean of seeds)')
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'quality_baseline_to_reach.png'), dpi=100)
  plt.close(fig)


def plot_speed(out):
  path = os.path.join(out, 'speed.csv')
  if not os.path.exists(path):
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = read_csv(path)
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


# ------------------------------------------------------------------------------------------------
# Command line.

EXPECTED_DURATION = (
    'Expected duration on 2 idle CPU cores: about 25 minutes (speed: tiny ~3 + small ~9, of which '
    'compilation is about half; T5X comparison ~3; quality ~10). On a loaded machine it grows '
    'with the load (measured at load average ~6 on 2 cores: about 2.5x).')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('command', choices=['speed', 't5x', 'quality', 'report', 'all'])
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks'))
  parser.add_argument('--quick', action='store_true', help='smoke-test sizes (numbers meaningless)')
  parser.add_argument('--sizes', default='', help='speed: comma-separated subset of tiny,small')
  parser.add_argument('--variants', default='', help='speed: comma-separated subset of variants')
  parser.add_argument('--rounds', type=int, default=4, help='speed: round-robin rounds')
  parser.add_argument('--steps', type=int, default=5, help='speed: timed calls per round')
  parser.add_argument('--seeds', type=int, default=3, help='quality: seeds per variant')
  parser.add_argument('--train_steps', type=int, default=0, help='quality: steps (0 = default)')
  args = parser.parse_args(argv)
  if args.quick:
    args.rounds, args.steps = min(args.rounds, 2), min(args.steps, 2)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  if args.command == 'all' and not args.quick:
    print(EXPECTED_DURATION, flush=True)
  if args.command in ('speed', 'all'):
    rows = run_speed(args)
    write_csv(os.path.join(args.out, 'speed.csv'), rows, SPEED_COLUMNS)
    write_meta(args.out, 'speed')
  if args.command == 't5x':
    rows = run_t5x(args)
    write_csv(os.path.join(args.out, 't5x.csv'), rows, T5X_COLUMNS)
    write_meta(args.out, 't5x')
  if args.command == 'all':
    if os.path.exists(T5X_PYTHON):  # T5X lives in its own environment
      cmd = [T5X_PYTHON, os.path.abspath(__file__), 't5x', '--out', args.out,
             '--rounds', str(args.rounds), '--steps', str(args.steps)] + (
                 ['--quick'] if args.quick else [])
      print('\n$ ' + ' '.join(cmd), flush=True)
      subprocess.run(cmd, check=False)
    else:
      print(f'\n(no T5X environment at {T5X_PYTHON}: T5X comparison skipped)')
  if args.command in ('quality', 'all'):
    results = run_quality(args)
    json.dump(results, open(os.path.join(args.out, 'quality.json'), 'w'))
    write_quality_csv(os.path.join(args.out, 'quality.csv'), results)
    plot_quality(results, args.out)
    write_meta(args.out, 'quality')
  if args.command in ('speed', 'all', 'report'):
    plot_speed(args.out)
  if args.command in ('report', 'all', 'speed', 'quality'):
    import make_benchmarks_md  # pylint: disable=g-import-not-at-top
    path = make_benchmarks_md.write(args.out, os.path.join(ROOT, 'BENCHMARKS.md'))
    print(f'\nwrote {path}')
  print(f'\n{args.command}: {time.perf_counter() - t0:.0f}s', flush=True)


def write_meta(out, part):
  path = os.path.join(out, 'meta.json')
  meta = json.load(open(path)) if os.path.exists(path) else {}
  meta[part] = dict(date=time.strftime('%Y-%m-%d %H:%M'), machine=platform.machine(),
                    cpus=os.cpu_count(), backend=jax.default_backend(), jax=jax.__version__,
                    loadavg=os.getloadavg()[0])
  json.dump(meta, open(path, 'w'), indent=1)


if __name__ == '__main__':
  main()
