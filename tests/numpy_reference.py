"""An independent NumPy (float64) forward pass of the T5.1.1 encoder-decoder with AltUp.

Written from the equations (T5.1.1: pre-norm RMS layers, gated-GELU MLP, unscaled attention with
relative position buckets; AltUp: arXiv 2301.13310 Algorithm 1) with explicit loops, sharing no
code with the package. Reads the Flax parameter tree by T5X's names.
"""
import math

import numpy as np


def rms_norm(x, scale, eps=1e-6):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def gelu(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def bucket(rel, bidirectional, num_buckets, max_distance):
  """T5's bucket of one relative position (key - query), scalar version."""
  n = -rel
  out = 0
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      out += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return out + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) *
                          (num_buckets - max_exact))
  return out + min(large, num_buckets - 1)


def rel_bias(table, qlen, klen, bidirectional, num_buckets, max_distance):
  bias = np.zeros((table.shape[0], qlen, klen))
  for i in range(qlen):
    for j in range(klen):
      bias[:, i, j] = table[:, bucket(j - i, bidirectional, num_buckets, max_distance)]
  return bias  # [h, q, k]


def attention(p, xq, xkv, allowed, bias, heads, head_dim):
  """allowed [b, q, k] booleans; bias [h, q, k] or None."""
  b, q, _ = xq.shape
  k = xkv.shape[1]
  Q = (xq @ p['query']['kernel']).reshape(b, q, heads, head_dim)
  K = (xkv @ p['key']['kernel']).reshape(b, k, heads, head_dim)
  V = (xkv @ p['value']['kernel']).reshape(b, k, heads, head_dim)
  out = np.zeros((b, q, heads, head_dim))
  for bi in range(b):
    for h in range(heads):
      logits = Q[bi, :, h] @ K[bi, :, h].T
      if bias is not None:
        logits = logits + bias[h]
      # Fully masked rows (padding queries) become uniform, as in the float32 model.
      logits = np.where(allowed[bi], logits, -1e30)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      out[bi, :, h] = w @ V[bi, :, h]
  return out.reshape(b, q, heads * head_dim) @ p['out']['kernel']


def mlp(p, x):
  return (gelu(x @ p['wi_0']['kernel']) * (x @ p['wi_1']['kernel'])) @ p['wo']['kernel']


def encoder_layer(p, x, allowed, bias, cfg):
  h = rms_norm(x, p['pre_attention_layer_norm']['scale'])
  x = x + attention(p['attention'], h, h, allowed, bias, cfg.num_heads, cfg.head_dim)
  return x + mlp(p['mlp'], rms_norm(x, p['pre_mlp_layer_norm']['scale']))


def decoder_layer(p, y, encoded, self_allowed, cross_allowed, bias, cfg):
  h = rms_norm(y, p['pre_self_attention_layer_norm']['scale'])
  y = y + attention(p['self_attention'], h, h, self_allowed, bias, cfg.num_heads, cfg.head_dim)
  h = rms_norm(y, p['pre_cross_attention_layer_norm']['scale'])
  y = y + attention(p['encoder_decoder_attention'], h, encoded, cross_allowed, None,
                    cfg.num_heads, cfg.head_dim)
  return y + mlp(p['mlp'], rms_norm(y, p['pre_mlp_layer_norm']['scale']))


def rms(x):
  return np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True))


def rescaled(x, target):
  """Gemma 3n's magnitude matching: x scaled to the RMS magnitude `target`."""
  return x * target / np.maximum(rms(x), 1e-12)


def embed_blocks(table, tokens, cfg, stack_params=None):
  """-> list of K arrays [b, l, d]."""
  e = table[tokens]
  k, d = cfg.altup_k, cfg.emb_dim
  if k == 1:
    return [e]
  if cfg.altup_embedding == 'wide':
    return [e[..., i * d:(i + 1) * d] for i in range(k)]
  if cfg.altup_embedding == 'projected':  # Gemma 3n: block i >= 1 is e W_i at e's magnitude
    w = stack_params['altup_embed_projection']
    return [e] + [rescaled(e @ w[i - 1], rms(e)) for i in range(1, k)]
  return [e.copy() for _ in range(k)]


def dynamic_coefficients(cp, h, cfg):
  """Gemma 3n's router: r = tanh(rmsnorm(h) / d @ W_r); P = I + r clip(W_p), g = 1 + r clip(W_g)."""
  k, c = cfg.altup_k, cfg.altup_coef_clip
  r = np.tanh((rms_norm(h, cp['router_norm']['scale']) / cfg.emb_dim) @ cp['router'])
  p = np.eye(k) + np.einsum('...r,rij->...ij', r, np.clip(cp['predict'], -c, c))
  g = 1.0 + np.einsum('...r,ri->...i', r, np.clip(cp['correct'], -c, c))
  return p, g


def run_stack(stack_params, blocks, layer_fn, num_layers, cfg):
  k = cfg.altup_k
  for i in range(num_layers):
    lp = stack_params[f'layers_{i}']
    if k == 1:
      blocks = [layer_fn(lp, blocks[0])]
      continue
    cp = stack_params[f'altup_{i}']
    j = 0 if cfg.altup_selection == 'same' else i % k
    if cfg.altup_coefficients == 'dynamic':  # per token: p [b, l, k, k], g [b, l, k]
      pc, gc = dynamic_coefficients(cp, blocks[j], cfg)
      xhat = [sum(pc[..., a, c, None] * blocks[c] for c in range(k)) for a in range(k)]
    else:
      pc, gc = cp['predict'], cp['correct']
      xhat = [sum(pc[a, c] * blocks[c] for c in range(k)) for a in range(k)]
    source = xhat[j] if cfg.altup_layer_input == 'predicted' else blocks[j]
    out = layer_fn(lp, source)
    if cfg.altup_coefficients == 'dynamic':
      if cfg.altup_correct_router == 'output':  # Gemma 3n: the router on the layer output
        _, gc = dynamic_coefficients(cp, out, cfg)
      blocks = [xhat[a] + gc[..., a, None] * (out - xhat[j]) for a in range(k)]
    else:
      blocks = [xhat[a] + gc[a] * (out - xhat[j]) for a in range(k)]
  return blocks


def reduce_blocks(blocks, stack_params, cfg):
  if cfg.altup_k == 1:
    return blocks[0]
  if cfg.altup_reduction == 'mean':
    return sum(blocks) / len(blocks)
  if cfg.altup_reduction == 'sum':
    return sum(blocks)
  if cfg.altup_reduction == 'unproject':  # Gemma 3n: U_i, back to block 0's magnitude, mean
    u = stack_params['altup_unembed_projection']
    rest = [rescaled(blocks[i] @ u[i - 1], rms(blocks[0])) for i in range(1, len(blocks))]
    return (blocks[0] + sum(rest)) / len(blocks)
  w = stack_params['altup_reduce']
  return sum(blocks[i] @ w[i] for i in range(len(blocks)))


def forward(params, cfg, enc_tokens, dec_inputs, dec_targets):
  """Teacher-forced logits [b, l_dec, vocab] in float64 (no dropout, no packing)."""
  to64 = lambda t: {k: to64(v) if isinstance(v, dict) else np.asarray(v, np.float64)
                    for k, v in t.items()}
  params = to64(params)
  table = params['token_embedder']['embedding']
  enc_tokens, dec_inputs, dec_targets = map(np.asarray, (enc_tokens, dec_inputs, dec_targets))
  ep, dp = params['encoder'], params['decoder']
  nb, md = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance

  le = enc_tokens.shape[1]
  enc_ok = enc_tokens > 0
  enc_allowed = enc_ok[:, :, None] & enc_ok[:, None, :]
  ebias = rel_bias(ep['relpos_bias']['rel_embedding'], le, le, True, nb, md)
  blocks = embed_blocks(table, enc_tokens, cfg, ep)
  blocks = run_stack(ep, blocks, lambda p, x: encoder_layer(p, x, enc_allowed, ebias, cfg),
                     cfg.num_encoder_layers, cfg)
  encoded = rms_norm(reduce_blocks(blocks, ep, cfg), ep['encoder_norm']['scale'])

  ld = dec_inputs.shape[1]
  dec_ok = dec_targets > 0
  causal = np.tril(np.ones((ld, ld), bool))
  self_allowed = causal[None] & dec_ok[:, :, None] & dec_ok[:, None, :]
  cross_allowed = dec_ok[:, :, None] & enc_ok[:, None, :]
  dbias = rel_bias(dp['relpos_bias']['rel_embedding'], ld, ld, False, nb, md)
  blocks = embed_blocks(table, dec_inputs, cfg, dp)
  blocks = run_stack(
      dp, blocks,
      lambda p, y: decoder_layer(p, y, encoded, self_allowed, cross_allowed, dbias, cfg),
      cfg.num_decoder_layers, cfg)
  y = rms_norm(reduce_blocks(blocks, dp, cfg), dp['decoder_norm']['scale'])
  if cfg.logits_via_embedding:
    return y @ table.T / math.sqrt(y.shape[-1])
  return y @ dp['logits_dense']['kernel']
