"""Sparse Mixture-of-Experts MLP (AltUp + MoE, arXiv 2301.13310 section 5).

Routing is done within groups of tokens (one group = one sequence of the batch, [g, n, d]):

- token choice, top-k (k=1 is Switch routing, Fedus et al. 2021): each token picks its k most
  probable experts; an expert holds at most C = ceil(capacity_factor * n * k / E) tokens; tokens
  beyond capacity are dropped (their MLP output is zero, the residual carries them). In the encoder
  the slots go first to every token's first choice in sequence order, then to second choices, ...;
  in the decoder (`causal=True`) they go in position order, each token's choices together, so a
  token's routing never depends on a later token, and cached decoding continues the same slot
  assignment from per-row expert fill counts kept in the 'cache' collection: a one-token decode
  step drops exactly what the teacher-forced pass drops. Gates are the router probabilities,
  renormalised over the chosen experts when k > 1.
- expert choice (Zhou et al. 2022): each expert picks its C = ceil(capacity_factor * n / E) most
  probable tokens; gates are the router probabilities. Encoder only: an expert choosing among all
  positions makes a token's output depend on later tokens, which a decoder must not
  (`AltUpConfig` refuses it there).

Auxiliary losses, returned by the routing functions and sown (unweighted) by `MoeMlp` into the
'intermediates' collection under the names T5X's `t5x.contrib.moe.models.MoeEncoderDecoderModel`
reads (MOE_METRICS), so that T5X model class trains our MoE layers unchanged; the standalone runner
uses `aux_losses`, which weighs them the same way (mean over MoE layers times a factor):
- load balancing (Switch): E * sum_e f_e * P_e, with f_e the fraction of tokens whose first choice is
  e and P_e the mean router probability of e (1.0 when perfectly balanced); 0 for expert choice,
  which is balanced by construction.
- router z-loss (Zoph et al. 2022): mean over tokens of logsumexp(router logits)^2.

Shapes: g groups, n tokens per group, e experts, c capacity, d model, m mlp width.
"""
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from altup_t5x import layers

# The names T5X's MoeEncoderDecoderModel averages over layers (t5x/contrib/moe/models.py).
MOE_METRICS = ('auxiliary_loss', 'router_z_loss', 'fraction_tokens_left_behind', 'expert_usage',
               'router_confidence')


def capacity(num_tokens: int, num_experts: int, capacity_factor: float, top_k: int = 1) -> int:
  return max(1, int(math.ceil(capacity_factor * num_tokens * top_k / num_experts)))


def router_z_loss(logits):
  """[g, n, e] -> scalar."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def load_balancing_loss(probs, first_choice):
  """probs [g, n, e], first_choice [g, n] int -> scalar (1.0 when balanced)."""
  num_experts = probs.shape[-1]
  fraction = jnp.mean(jax.nn.one_hot(first_choice, num_experts), axis=1)  # [g, e]
  mean_prob = jnp.mean(probs, axis=1)  # [g, e]
  return jnp.mean(jnp.sum(fraction * mean_prob, axis=-1)) * num_experts


def top_k_routing(logits, top_k: int, expert_capacity: int, causal: bool = False, filled=None):
  """Token-choice routing. logits [g, n, e] -> (dispatch [g, n, e, c] bool, combine [g, n, e, c],
  load-balancing loss).

  The capacity slots of an expert are filled in one of two orders:
  - causal=False (encoder): every token's first choice in sequence order, then every second
    choice, ... (first choices have priority, as in GShard/Switch);
  - causal=True (decoder): in position order, each token's k choices together, so whether a token
    is dropped depends only on itself and the tokens before it.
  filled [g, e] (cached decoding, implies causal): tokens the group's experts already hold from
  earlier steps; the buffer then has c = min(expert_capacity, n) slots, indexed from `filled`.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  g, n, e = probs.shape
  remaining = probs
  experts, gates = [], []
  for _ in range(top_k):  # k is tiny (1 or 2): one argmax per choice
    choice = jnp.argmax(remaining, axis=-1)  # [g, n]
    experts.append(choice)
    gates.append(jnp.take_along_axis(probs, choice[..., None], axis=-1)[..., 0])
    remaining = remaining * (1.0 - jax.nn.one_hot(choice, e))
  if top_k > 1:
    total = sum(gates)
    gates = [gate / total for gate in gates]
  onehots = [jax.nn.one_hot(choice, e, dtype=jnp.int32) for choice in experts]  # [g, n, e] each
  buffer = expert_capacity if filled is None else min(expert_capacity, n)
  if causal or filled is not None:
    chosen = sum(onehots)  # a token's choices are distinct experts: 0/1
    before = jnp.cumsum(chosen, axis=1) - chosen  # this call's earlier tokens in each expert
    start = jnp.zeros((g, e), jnp.int32) if filled is None else filled
  dispatch = jnp.zeros((g, n, e, buffer), bool)
  combine = jnp.zeros((g, n, e, buffer), jnp.float32)
  so_far = jnp.zeros((g, e), jnp.int32)  # non-causal order: slots taken by earlier choices
  for onehot, gate in zip(onehots, gates):
    if causal or filled is not None:
      index = jnp.sum(before * onehot, axis=-1)  # [g, n], the slot in this call's buffer
      kept = index + jnp.sum(start[:, None, :] * onehot, axis=-1) < expert_capacity
    else:
      index = jnp.sum((jnp.cumsum(onehot, axis=1) - 1 + so_far[:, None, :]) * onehot, axis=-1)
      kept = index < expert_capacity
      so_far = so_far + jnp.sum(onehot, axis=1)
    slot = jax.nn.one_hot(jnp.where(kept, index, buffer), buffer + 1)[..., :-1]
    mask = onehot[..., None].astype(bool) & slot[:, :, None, :].astype(bool)  # [g, n, e, c]
    dispatch = dispatch | mask
    combine = combine + mask * gate[..., None, None]
  return dispatch, combine, load_balancing_loss(probs, experts[0])


def expert_choice_routing(logits, expert_capacity: int):
  """Expert-choice routing. logits [g, n, e] -> (dispatch, combine [g, n, e, c], 0.0)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  n = probs.shape[1]
  c = min(expert_capacity, n)
  gate, token = jax.lax.top_k(jnp.swapaxes(probs, 1, 2), c)  # [g, e, c]
  dispatch = jax.nn.one_hot(token, n, dtype=jnp.float32)  # [g, e, c, n]
  dispatch = jnp.transpose(dispatch, (0, 3, 1, 2))  # [g, n, e, c]
  if c < expert_capacity:
    pad = [(0, 0), (0, 0), (0, 0), (0, expert_capacity - c)]
    dispatch, gate = jnp.pad(dispatch, pad), jnp.pad(gate, [(0, 0), (0, 0), (0, expert_capacity - c)])
  combine = dispatch * gate[:, None, :, :]
  return dispatch.astype(bool), combine, jnp.zeros((), jnp.float32)


class MoeMlp(nn.Module):
  """Drop-in for `layers.MlpBlock` with E gated-MLP experts: [b, l, d] -> [b, l, d]."""
  num_experts: int
  intermediate_dim: int
  routing: str = 'top_k'
  top_k: int = 1
  capacity_factor: float = 1.25
  activations: Tuple[str, ...] = ('gelu', 'linear')
  intermediate_dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32
  causal: bool = False  # decoder: routing of a token may not depend on later tokens

  @nn.compact
  def __call__(self, inputs, deterministic: bool = False, decode: bool = False,
               decode_length: Optional[int] = None):
    """decode=True (cached decoding, T5X's convention): the first call, on the full length, only
    creates the cache; later calls route one step's tokens, continuing the slot assignment of the
    earlier steps from the cached expert fill counts, with the capacity of a decode_length group.
    So cached decoding drops exactly the tokens the teacher-forced pass drops."""
    e, m = self.num_experts, self.intermediate_dim
    g, n, d = inputs.shape
    router = layers.param_with_axes('router', nn.initializers.normal(2e-2), (d, e), jnp.float32,
                                    axes=('embed', 'unmodeled'))
    logits = jnp.einsum('gnd,de->gne', inputs.astype(jnp.float32), router)
    if self.routing == 'expert_choice':
      if self.causal or decode:
        raise ValueError('expert-choice routing is not causal: use it in the encoder only.')
      dispatch, combine, balance = expert_choice_routing(
          logits, capacity(n, e, self.capacity_factor))
      expert_capacity = dispatch.shape[-1]
    else:
      filled = None
      if decode:
        stepping = self.has_variable('cache', 'expert_counts')
        counts = self.variable('cache', 'expert_counts', jnp.zeros, (g, e), jnp.int32)
        if stepping:
          filled = counts.value
      group = n if filled is None else (decode_length or n)
      expert_capacity = capacity(group, e, self.capacity_factor, self.top_k)
      dispatch, combine, balance = top_k_routing(logits, self.top_k, expert_capacity,
                                                 self.causal or decode, filled)
      if filled is not None:
        counts.value = filled + jnp.sum(dispatch, axis=(1, 3)).astype(jnp.int32)
    routed = jnp.any(dispatch, axis=(2, 3))  # [g, n]
    metrics = {
        'auxiliary_loss': balance,
        'router_z_loss': router_z_loss(logits),
        'fraction_tokens_left_behind': 1.0 - jnp.mean(routed.astype(jnp.float32)),
        # Fraction of all expert slots that hold a token.
        'expert_usage': jnp.sum(dispatch.astype(jnp.float32)) / (g * e * expert_capacity),
        'router_confidence': jnp.sum(combine) / (g * n),  # mean total gate per token
    }
    for name in MOE_METRICS:
      self.sow('intermediates', name, metrics[name])

    expert_in = jnp.einsum('gnec,gnd->egcd', dispatch.astype(self.dtype), inputs.astype(self.dtype))
    expert_in = layers.with_sharding_constraint(expert_in, ('expert', None, None, 'embed'))
    # Per-expert fan-in: the expert axis is a batch axis of the initialiser.
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', batch_axis=(0,))
    hidden = None
    for i, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      w = layers.param_with_axes(name, init, (e, d, m), jnp.float32, axes=('expert', 'embed', 'mlp'))
      h = layers._activation(act)(jnp.einsum('egcd,edm->egcm', expert_in, w.astype(self.dtype)))
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(rate=self.intermediate_dropout_rate)(hidden, deterministic=deterministic)
    wo = layers.param_with_axes('wo', init, (e, m, d), jnp.float32, axes=('expert', 'mlp', 'embed'))
    expert_out = jnp.einsum('egcm,emd->egcd', hidden, wo.astype(self.dtype))
    expert_out = layers.with_sharding_constraint(expert_out, ('expert', None, None, 'embed'))
    return jnp.einsum('gnec,egcd->gnd', combine.astype(self.dtype), expert_out)


def layer_metrics(intermediates):
  """{metric: mean over MoE layers} of the sown MOE_METRICS ({} when there is no MoE layer)."""
  sums, counts = {}, {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    keys = [getattr(p, 'key', None) for p in path]
    name = next((k for k in reversed(keys) if k in MOE_METRICS), None)
    if name is not None:
      # One scalar per layer; a scanned stack sows them stacked on a leading layer axis.
      sums[name] = sums.get(name, 0.0) + jnp.sum(jnp.asarray(leaf, jnp.float32))
      counts[name] = counts.get(name, 0) + int(jnp.size(leaf))
  return {name: sums[name] / counts[name] for name in sums}


def aux_losses(intermediates, aux_loss_factor: float, router_z_loss_factor: float):
  """(load-balancing loss, router z-loss), weighted as T5X's MoeEncoderDecoderModel does."""
  metrics = layer_metrics(intermediates)
  if not metrics:
    zero = jnp.zeros((), jnp.float32)
    return zero, zero
  return (aux_loss_factor * metrics['auxiliary_loss'],
          router_z_loss_factor * metrics['router_z_loss'])
