"""Shared pieces of the benchmarks: variants, configs, the jitted train step, timing, run metadata.

Measurements are written with `altup_t5x.csv_tables` (floats as FLOAT_FORMAT); parameters are
counted with `altup_t5x.models.count_params`, as the trainer counts them.
"""
import json
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from altup_t5x.config import AltUpConfig
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
# Variants used only by the fidelity study (not timed by the speed benchmark).
STUDY_VARIANTS = {
    'altup_k2_same': ('AltUp K=2, same-block selection', dict(altup_k=2, altup_selection='same')),
    'altup_k2_predicted': ('AltUp K=2, layer reads the predicted block (Gemma 3n)',
                           dict(altup_k=2, altup_layer_input='predicted')),
    'seq_skip_s2': ('stride-and-skip, encoder stride 2', dict(sequence_altup_stride=2,
                                                              sequence_altup_mode='skip')),
    # gin/altup/gemma3n_k4.gin's settings.
    'gemma3n_k4': ("Gemma 3n's AltUp block, K=4", dict(
        altup_k=4, altup_selection='same', altup_layer_input='predicted',
        altup_coefficients='dynamic', altup_correct_router='output', altup_coef_init='gemma3n',
        altup_embedding='projected', altup_reduction='unproject')),
    # Recycled-AltUp with its blocks' symmetry broken (studies.sizes, `remedies`): coefficients
    # started at I + N(0, 0.3) noise, or trained at 10x the LR (COEF_LR_SCALE).
    'recycled_k2_noise': ('Recycled-AltUp K=2, coefficients initialised I + N(0, 0.3)', dict(
        altup_k=2, altup_embedding='recycled', altup_coef_init='normal',
        altup_coef_init_scale=0.3)),
    'recycled_k2_coef_lr10': ('Recycled-AltUp K=2, coefficients at 10x the LR',
                              dict(altup_k=2, altup_embedding='recycled')),
}
ALL_VARIANTS = {**VARIANTS, **STUDY_VARIANTS}
# Variants whose AltUp coefficients train at a multiple of the LR (fidelity.study_optimizer).
COEF_LR_SCALE = {'recycled_k2_coef_lr10': 10.0}

SPEED_VARIANTS = {
    'tiny': list(VARIANTS),
    'small': [v for v in VARIANTS if v not in ('dense_4d', 'moe')],
}


def make_config(size: str, variant: str, vocab_size: int, dropout_rate: float = 0.0,
                **size_overrides) -> AltUpConfig:
  return make_config_from(AltUpConfig.from_size(size, vocab_size=vocab_size,
                                                dropout_rate=dropout_rate, **size_overrides),
                          variant)



def make_config_from(base: AltUpConfig, variant: str) -> AltUpConfig:
  overrides = ALL_VARIANTS[variant][1]
  if isinstance(overrides, str) and overrides.startswith('dense'):
    f = int(overrides[len('dense'):])
    return base.replace(emb_dim=f * base.emb_dim, num_heads=f * base.num_heads,
                        mlp_dim=f * base.mlp_dim)
  return base.replace(**overrides)


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


def allocator() -> str:
  """The process's malloc, as a row records it: 'glibc', or 'jemalloc <MALLOC_CONF>' etc. when one is
  preloaded (`LD_PRELOAD=libjemalloc.so.2`).

  XLA:CPU allocates each step's buffers anew, so on CPU the allocator is part of what a step time
  measures: glibc hands buffers over 32 MiB back to the kernel when they are freed, and the next
  step takes them back as page faults (zero-filling the 263 MB gradient of T5.1.1-small's K=4 wide
  table, for one, takes several times as long as with jemalloc set never to return memory:
  `MALLOC_CONF=retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1`); accelerator runtimes keep device
  memory in a pool of their own.
  """
  preload = os.environ.get('LD_PRELOAD', '')
  for name in ('jemalloc', 'tcmalloc', 'mimalloc'):
    if name in preload:
      conf = os.environ.get('MALLOC_CONF', '')
      return f'{name} {conf}' if conf else name
  return 'glibc'


def make_optimizer(learning_rate=0.01):
  """T5X's pretraining optimizer: Adafactor (its defaults) at lr 1/sqrt(10000) during warm-up."""
  try:
    from altup_t5x import optimizers  # pylint: disable=g-import-not-at-top
    return optimizers.adafactor(learning_rate)
  except ImportError:
    return optax.adafactor(learning_rate, decay_rate=0.8, clipping_threshold=1.0,
                           multiply_by_parameter_scale=True)


def make_optimizer_update(optimizer):
  """(params, opt_state, grads) -> (new params, new opt_state): the optimizer update alone, to time
  the part of a train step that grows with the parameter count, not the batch."""
  def optimizer_update(params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return optimizer_update


def make_train_step(module, optimizer):
  loss_fn = make_loss_fn(module)

  def train_step(params, opt_state, batch, rng):
    rng, dropout_rng = jax.random.split(rng)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, dropout_rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, loss, rng

  return train_step


def make_eval_sums(module):
  """Jitted (params, packed batch) -> (token-weighted sum of the cross-entropy, token count):
  summed over batches and divided, the eval loss of a whole split, as T5X weights it."""

  def eval_sums(params, batch):
    logits = module.apply({'params': params}, batch['encoder_input_tokens'],
                          batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                          encoder_segment_ids=batch['encoder_segment_ids'],
                          decoder_segment_ids=batch['decoder_segment_ids'],
                          encoder_positions=batch['encoder_positions'],
                          decoder_positions=batch['decoder_positions'], enable_dropout=False)
    w = batch['decoder_loss_weights'].astype(jnp.float32)
    return cross_entropy(logits, batch['decoder_target_tokens'], w) * jnp.sum(w), jnp.sum(w)

  return jax.jit(eval_sums)


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



KINDS = ('train', 'forward', 'decode', 'optimizer')


def compile_all(timeds: Sequence[Timed]):
  """XLA compiles release the GIL: compile on all cores at once."""
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  with futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
    list(pool.map(lambda t: t.compile(), timeds))


# Measured values keep six significant digits in the CSVs.
FLOAT_FORMAT = '.6g'


def write_meta(out, part):
  path = os.path.join(out, 'meta.json')
  meta = json.load(open(path)) if os.path.exists(path) else {}
  meta[part] = dict(date=time.strftime('%Y-%m-%d %H:%M'), machine=platform.machine(),
                    cpus=os.cpu_count(), backend=jax.default_backend(), jax=jax.__version__,
                    loadavg=os.getloadavg()[0])
  json.dump(meta, open(path, 'w'), indent=1)

