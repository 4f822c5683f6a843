"""Every variant trains in the standalone runner with falling loss; upcycling end to end.

Slow (a few minutes): `bash scripts/test.sh -m slow`.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altup_t5x import checkpoints, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = ['gin/t5_1_1/tiny.gin', 'gin/runner/model.gin']
SMALL = ['EMBED_DIM = 64', 'NUM_HEADS = 2', 'HEAD_DIM = 32', 'MLP_DIM = 128',
         'WARMUP_STEPS = 20', 'LOG_PERIOD = 1']
VARIANTS = {
    'sequence_altup_stride2': ['ALTUP_K = 2', 'network.AltUpConfig.sequence_altup_stride = 2'],
    'stride_and_skip': ['ALTUP_K = 2', 'network.AltUpConfig.sequence_altup_stride = 2',
                        "network.AltUpConfig.sequence_altup_mode = 'skip'"],
    'moe_top2': ['ALTUP_K = 2', 'network.AltUpConfig.moe_num_experts = 4',
                 'network.AltUpConfig.moe_every = 1', 'network.AltUpConfig.moe_top_k = 2'],
    'moe_expert_choice': ['ALTUP_K = 2', 'network.AltUpConfig.moe_num_experts = 4',
                          "network.AltUpConfig.moe_routing = 'expert_choice'"],
    'dynamic_coefficients': ['ALTUP_K = 2', "network.AltUpConfig.altup_coefficients = 'dynamic'"],
    'recycled_k4_same': ['ALTUP_K = 4', "ALTUP_EMBEDDING = 'recycled'", "ALTUP_SELECTION = 'same'"],
}


def train(model_dir, steps, bindings):
  from altup_t5x import train as train_lib
  cli.parse_gin(ARCH + ['gin/runner/pretrain.gin', 'gin/runner/cpu_tiny.gin'], [REPO],
                [f'MODEL_DIR = {str(model_dir)!r}', f'TRAIN_STEPS = {steps}',
                 'CHECKPOINT_PERIOD = 1000', *SMALL, *bindings])
  result = cli.call_configured(train_lib.train, 'train')
  with open(os.path.join(model_dir, 'train_metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return result, [r['loss'] for r in rows if 'loss' in r]


@pytest.mark.slow
@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_variant_loss_falls(variant, tmp_path):
  result, losses = train(tmp_path / variant, 200, VARIANTS[variant])
  assert result['status'] == 'completed' and len(losses) == 200
  assert np.all(np.isfinite(losses))
  first, last = np.mean(losses[:10]), np.mean(losses[-20:])
  assert last < 0.75 * first, (variant, first, last)


@pytest.mark.slow
def test_upcycled_checkpoint_keeps_logits_and_trains_on(tmp_path):
  from altup_t5x.config import AltUpConfig
  from altup_t5x.network import Transformer
  dense_dir = tmp_path / 'dense'
  train(dense_dir, 20, [])
  out = tmp_path / 'recycled'
  cmd = [sys.executable, '-m', 'altup_t5x.convert', 'upcycle', '--format=runner',
         f'--input={dense_dir}', f'--output={out}', f'--gin_search_paths={REPO}',
         '--gin_file=gin/t5_1_1/tiny.gin', '--gin_file=gin/altup/recycled_k2.gin',
         '--gin.NUM_EMBEDDINGS=1152'] + [f'--gin.{b.replace(" ", "")}' for b in SMALL[:4]]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'upcycled' in proc.stdout
  # Refuses to overwrite.
  again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
  assert again.returncode != 0 and 'already exists' in again.stderr

  sizes = dict(vocab_size=1152, emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128,
               num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
  dense_cfg, altup_cfg = AltUpConfig(**sizes), AltUpConfig(**sizes, altup_k=2,
                                                           altup_embedding='recycled')
  shapes = lambda cfg: jax.eval_shape(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(0), *[jnp.ones((1, 4), jnp.int32)] * 3, enable_dropout=False))['params']
  dense_params, _ = checkpoints.restore_params(str(dense_dir), shapes(dense_cfg))
  altup_params, step = checkpoints.restore_params(str(out), shapes(altup_cfg))
  assert step == 0
  rng = np.random.RandomState(0)
  enc = jnp.asarray(rng.randint(1, 1100, (2, 12)), jnp.int32)
  dec = jnp.asarray(rng.randint(1, 1100, (2, 6)), jnp.int32)
  dense_logits = Transformer(dense_cfg).apply({'params': dense_params}, enc, dec, dec,
                                              enable_dropout=False)
  altup_logits = Transformer(altup_cfg).apply({'params': altup_params}, enc, dec, dec,
                                              enable_dropout=False)
  np.testing.assert_allclose(np.asarray(altup_logits), np.asarray(dense_logits), rtol=1e-5,
                             atol=1e-5)
  # ... and trains on from there.
  _, losses = train(tmp_path / 'finetune', 30,
                    ['ALTUP_K = 2', "ALTUP_EMBEDDING = 'recycled'",
                     f'INITIAL_CHECKPOINT_PATH = {str(out)!r}'])
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
