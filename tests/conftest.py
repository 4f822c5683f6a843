"""Settings for the whole test run, and the helpers the tests share.

The suite is dominated by XLA compilation of tiny programs on 2 CPU cores. LLVM's optimisation
level 0 compiles them about a third faster (measured on tests/test_scan.py: 57 s -> 34 s for the
MoE scan equivalence), and at these shapes the slower generated code costs nothing. Both sides
of every equivalence the tests check are compiled under the same flag. Set before JAX creates
its CPU backend; subprocesses started by the tests inherit it. An XLA_FLAGS from the caller that
already sets the level wins.

The repository root goes on sys.path so that the tests import this checkout's `studies/` (the
benchmark code, which is not installed) as the scripts do.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

_FLAG = '--xla_backend_optimization_level=0'
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()


# --------------------------------------------------------------------------------------------------
# Shared helpers (`from conftest import tiny_config, make_batch`).

# A T5.1.1-shaped network small enough to compile in seconds: two heads and 2 + 2 layers, so that
# attention, the layer stacks and AltUp's alternating block selection all have more than one of
# each; vocabulary 40 so that random ids fill it.
TINY = dict(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2,
            num_decoder_layers=2, dropout_rate=0.0)


def tiny_config(**overrides):
  """The TINY `AltUpConfig`, any field replaced by `overrides` (e.g. altup_k=2)."""
  from altup_t5x.config import AltUpConfig  # pylint: disable=g-import-not-at-top
  return AltUpConfig(**{**TINY, **overrides})


def make_batch(seed=0, b=2, le=7, ld=5, vocab=40, pad=True, low=1):
  """(encoder tokens, decoder inputs, decoder targets), int32, of random ids in [low, vocab).

  With `pad`, the second example is shorter (its last 2 encoder and last decoder positions are
  padding, id 0), which exercises the padding masks. Decoder inputs are the targets shifted right
  behind a 0, as T5X's feature converter makes them.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  enc = rng.randint(low, vocab, (b, le)).astype(np.int32)
  targets = rng.randint(low, vocab, (b, ld)).astype(np.int32)
  if pad:
    enc[1, le - 2:] = 0
    targets[1, ld - 1:] = 0
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)
  return jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(targets)
