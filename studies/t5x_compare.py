"""Our K=1 network against T5X's own `t5x.examples.t5.network`, run under T5X's Python."""
import os
import statistics
from typing import List, Optional

import jax
import jax.numpy as jnp

from altup_t5x.models import count_params
from altup_t5x.network import Transformer
from studies.common import (QUICK_SHAPES, SPEED_SHAPES, Timed, compile_all, init_params,
                            make_config, make_optimizer, make_train_step, random_batch)

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




T5X_PYTHON_ENV = 'ALTUP_T5X_PYTHON'


class T5XPythonError(ValueError):
  """The Python interpreter of T5X's environment is not given or not usable."""


def t5x_python(flag: Optional[str]) -> str:
  """The T5X environment's Python: `--t5x-python`, else $ALTUP_T5X_PYTHON; a clear error otherwise."""
  path = flag or os.environ.get(T5X_PYTHON_ENV, '')
  if not path:
    raise T5XPythonError(
        f'the T5X comparison runs under the Python of an environment where T5X is installed: pass '
        f'--t5x-python /path/to/t5x-venv/bin/python or set {T5X_PYTHON_ENV} (or run '
        f'`that-python scripts/benchmark.py t5x` directly).')
  if not (os.path.isfile(path) and os.access(path, os.X_OK)):
    raise T5XPythonError(f'--t5x-python / {T5X_PYTHON_ENV}: {path!r} is not an executable file '
                         f'(expected the python of an environment where T5X is installed).')
  return path
