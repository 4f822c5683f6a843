"""Our K=1 network against T5X's own `t5x.examples.t5.network` (runs where T5X is installed)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_batch, tiny_config
from altup_t5x.network import Transformer

t5x_network = pytest.importorskip('t5x.examples.t5.network',
                                  reason='T5X is not installed (it is not on PyPI; see README)')

SIZES = dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2,
             num_decoder_layers=3)


def test_k1_equals_t5x_t5_1_1_network():
  ours = Transformer(tiny_config(**SIZES))
  theirs = t5x_network.Transformer(t5x_network.T5Config(
      vocab_size=40, dtype=jnp.float32, mlp_activations=('gelu', 'linear'), dropout_rate=0.0,
      logits_via_embedding=False, **SIZES))
  enc, dec, tgt = make_batch()
  our_vars = ours.init(jax.random.PRNGKey(0), enc, dec, tgt, enable_dropout=False)
  their_vars = theirs.init(jax.random.PRNGKey(1), enc, dec, tgt, enable_dropout=False)
  shapes = lambda v: {k: x.shape for k, x in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(v['params']), sep='/').items()}
  assert shapes(our_vars) == shapes(their_vars)  # same names, same shapes
  axes = lambda v: jax.tree_util.tree_map(lambda a: tuple(a.names), flax.core.unfreeze(
      v['params_axes']), is_leaf=lambda a: hasattr(a, 'names'))
  assert axes(our_vars) == axes(their_vars)
  params = our_vars['params']
  ours_out = ours.apply({'params': params}, enc, dec, tgt, enable_dropout=False)
  theirs_out = theirs.apply({'params': params}, enc, dec, tgt, enable_dropout=False)
  mask = np.asarray(tgt) > 0
  np.testing.assert_allclose(np.asarray(ours_out)[mask], np.asarray(theirs_out)[mask],
                             rtol=1e-6, atol=1e-6)


def _to_scalable_t5(params, num_heads, head_dim):
  """Our scanned K=1 parameters (param_scan_axis=1) as T5X scalable_t5's tree: 3-D attention
  kernels (embed, layers, heads, kv) / (heads, layers, kv, embed), one relative-position table per
  layer (ours is one per stack, shared by its layers), the scanned group named after the stack."""
  out = {'token_embedder': params['token_embedder']}
  for stack in ('encoder', 'decoder'):
    ours = flax.core.unfreeze(params[stack])
    group = dict(ours.pop('layers')['layers_0'])
    num_layers = group['pre_mlp_layer_norm']['scale'].shape[1]
    for name in ('attention', 'self_attention', 'encoder_decoder_attention'):
      if name not in group:
        continue
      att = dict(group[name])
      for proj in ('query', 'key', 'value'):
        k = att[proj]['kernel']  # [d, L, h*n]
        att[proj] = {'kernel': k.reshape(k.shape[:2] + (num_heads, head_dim))}
      k = att['out']['kernel']  # [h*n, L, d]
      att['out'] = {'kernel': jnp.transpose(
          k.reshape((num_heads, head_dim) + k.shape[1:]), (0, 2, 1, 3))}  # [h, L, n, d]
      group[name] = att
    table = ours.pop('relpos_bias')['rel_embedding']  # [h, buckets]
    group['relpos_bias'] = {'rel_embedding': jnp.broadcast_to(
        table[:, None], (table.shape[0], num_layers, table.shape[1]))}
    ours[stack] = group
    out[stack] = ours
  return out


@pytest.mark.t5x
def test_scanned_k1_equals_t5x_scalable_t5_network():
  scalable = pytest.importorskip('t5x.examples.scalable_t5.network')
  ours = Transformer(tiny_config(scan_layers=True, **SIZES))
  theirs = scalable.Transformer(scalable.T5Config(
      vocab_size=40, dtype=jnp.float32, mlp_activations=('gelu', 'linear'), dropout_rate=0.0,
      logits_via_embedding=False, scan_layers=True, param_scan_axis=1, **SIZES))
  enc, dec, tgt = make_batch()
  our_vars = ours.init(jax.random.PRNGKey(0), enc, dec, tgt, enable_dropout=False)
  their_vars = theirs.init(jax.random.PRNGKey(1), enc, dec, tgt, enable_dropout=False)
  mapped = _to_scalable_t5(our_vars['params'], SIZES['num_heads'], SIZES['head_dim'])
  shapes = lambda tree: {k: x.shape for k, x in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(tree), sep='/').items()}
  assert shapes(mapped) == shapes(their_vars['params'])
  # The stacked axis is 'layers' at position 1 in both.
  our_axes = flax.traverse_util.flatten_dict(flax.core.unfreeze(our_vars['params_axes']), sep='/')
  their_axes = flax.traverse_util.flatten_dict(flax.core.unfreeze(their_vars['params_axes']),
                                               sep='/')
  assert our_axes['encoder/layers/layers_0/mlp/wi_0/kernel_axes'].names == (
      their_axes['encoder/encoder/mlp/wi_0/kernel_axes'].names)
  ours_out = ours.apply({'params': our_vars['params']}, enc, dec, tgt, enable_dropout=False)
  theirs_out = theirs.apply({'params': mapped}, enc, dec, tgt, enable_dropout=False)
  mask = np.asarray(tgt) > 0
  np.testing.assert_allclose(np.asarray(ours_out)[mask], np.asarray(theirs_out)[mask],
                             rtol=1e-5, atol=1e-5)
