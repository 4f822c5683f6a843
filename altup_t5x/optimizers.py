"""Adafactor with T5X's defaults (optax) and T5X's learning-rate schedules.

T5X's Adafactor (`t5x/adafactor.py`) defaults: decay_rate=0.8, step_offset=0,
multiply_by_parameter_scale=True, clipping_threshold=1.0, epsilon1=1e-30, epsilon2=1e-3 (the
parameter-scale floor), min_dim_size_to_factor=128, no momentum, no weight decay. optax's
`adafactor` has the same algorithm and the same defaults (its parameter-scale floor is also 1e-3).
One difference: T5X picks the factored dimensions from logical axis rules, optax from the two
largest dimensions of each parameter; with factoring rules that send the new AltUp axes to
FactorDim.NONE (our partitioning rules) the choice differs only in which rows/columns are
averaged for the second-moment estimate of stacked parameters.

Schedules: `learning_rate_schedule(factors='constant * rsqrt_decay', base_learning_rate=1.0,
warmup_steps=10000)` is T5X's pretraining schedule (`utils.create_learning_rate_scheduler`):
lr(step) = base * 1 / sqrt(max(step, warmup_steps)) -- constant 1/sqrt(warmup) during warmup.
Add 'linear_warmup' for a linear ramp.
"""
from typing import Callable, Optional, Union

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
FACTORS = ('constant', 'linear_warmup', 'rsqrt_decay', 'rsqrt_normalized_decay', 'linear_decay',
           'cosine_decay')


def learning_rate_schedule(factors: str = 'constant * rsqrt_decay',
                           base_learning_rate: float = 1.0, warmup_steps: int = 10000,
                           decay_factor: float = 0.5, steps_per_decay: int = 20000,
                           steps_per_cycle: int = 100000, step_offset: int = 0,
                           min_learning_rate: float = 1e-8) -> Schedule:
  """T5X-style product of schedule factors, e.g. 'constant * linear_warmup * rsqrt_decay'."""
  names = [n.strip() for n in factors.split('*')]
  for n in names:
    if n not in FACTORS:
      raise ValueError(f'learning_rate_schedule: unknown factor {n!r} in factors={factors!r}; '
                       f'allowed: {FACTORS}.')
  if warmup_steps < 0:
    raise ValueError(f'learning_rate_schedule.warmup_steps={warmup_steps} must be >= 0.')

  def schedule(step):
    step = jnp.maximum(jnp.asarray(step, jnp.float32) - step_offset, 0.0)
    warmup = jnp.maximum(float(warmup_steps), 1.0)
    ret = jnp.asarray(1.0, jnp.float32)
    for name in names:
      if name == 'constant':
        ret *= base_learning_rate
      elif name == 'linear_warmup':
        ret *= jnp.minimum(1.0, step / warmup)
      elif name == 'rsqrt_decay':
        ret /= jnp.sqrt(jnp.maximum(step, warmup))
      elif name == 'rsqrt_normalized_decay':
        ret *= jnp.sqrt(warmup) / jnp.sqrt(jnp.maximum(step, warmup))
      elif name == 'linear_decay':
        ret *= jnp.maximum(0.0, 1.0 - step / steps_per_decay)
      elif name == 'cosine_decay':
        progress = jnp.maximum(0.0, (step - warmup) / float(steps_per_cycle))
        ret *= jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
    return jnp.maximum(ret, min_learning_rate)

  return schedule


def adafactor(learning_rate: Union[float, Schedule, None] = None, *,
              decay_rate: float = 0.8, decay_offset: int = 0,
              multiply_by_parameter_scale: bool = True, clipping_threshold: Optional[float] = 1.0,
              momentum: Optional[float] = None, weight_decay_rate: Optional[float] = None,
              epsilon1: float = 1e-30, min_dim_size_to_factor: int = 128,
              factored: bool = True) -> optax.GradientTransformation:
  """optax Adafactor with T5X's defaults; learning_rate defaults to T5X's rsqrt schedule."""
  if learning_rate is None:
    learning_rate = learning_rate_schedule()
  return optax.adafactor(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, decay_offset=decay_offset,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate, eps=epsilon1, factored=factored)
