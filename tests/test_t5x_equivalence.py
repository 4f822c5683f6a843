"""Our K=1 network against T5X's own `t5x.examples.t5.network` (runs where T5X is installed)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altup_t5x import AltUpConfig
from altup_t5x.network import Transformer

t5x_network = pytest.importorskip('t5x.examples.t5.network',
                                  reason='T5X is not installed (it is not on PyPI; see README)')

SIZES = dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2,
             num_decoder_layers=3)


def test_k1_equals_t5x_t5_1_1_network():
  ours = Transformer(AltUpConfig(vocab_size=40, dropout_rate=0.0, **SIZES))
  theirs = t5x_network.Transformer(t5x_network.T5Config(
      vocab_size=40, dtype=jnp.float32, mlp_activations=('gelu', 'linear'), dropout_rate=0.0,
      logits_via_embedding=False, **SIZES))
  rng = np.random.RandomState(0)
  enc = jnp.asarray(rng.randint(1, 40, (2, 7)), jnp.int32).at[1, 5:].set(0)
  tgt = jnp.asarray(rng.randint(1, 40, (2, 5)), jnp.int32).at[1, 4:].set(0)
  dec = jnp.concatenate([jnp.zeros((2, 1), jnp.int32), tgt[:, :-1]], 1)
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
