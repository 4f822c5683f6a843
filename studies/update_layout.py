"""The AltUp update in several memory layouts of the stream: time, FLOPs and bytes of fwd + bwd.

N layers' predict / compute / correct around a cheap stand-in layer, every layout timed side by side
in one process, after a check that they all compute the same loss and gradients.

    python -m studies.update_layout                       # K = 2, 4 at 8 x 512 x 512, float32
    python -m studies.update_layout --quick               # a tiny shape, 2 repeats: a smoke run
    python -m studies.update_layout --ks 4 --shape 8,512,512 --repeats 9 --csv update_layout.csv

Why. On XLA:CPU the predictor P z over a stacked block axis (`altup.predict`, a K x K dot) becomes
one small matmul kernel per layer and pass, and taking the active block out of the stacked stream
puts a zero fill and an update-slice into the backward pass (the gradient of a slice is a padded
array). This study asks whether holding the K blocks as K separate [b, l, d] arrays, with the
predictor written as K*K scalar multiply-adds that XLA fuses into elementwise loops, is cheaper.

Layouts (all compute the same function; `check_equivalence` verifies the loss and every gradient):

  unfused            `altup.predict` -> layer -> `altup.correct` per layer, on the stacked
                     [b, l, K, d] stream (two passes over the stream per layer).
  fused              the deferred correction on the stacked stream, as `network.run_layers` runs it:
                     (z, g, delta) = (x, 0, 0); per layer `altup.corrected_block`, then
                     `altup.predict_deferred`; `altup.apply_correction` after the last layer.
  fused_vjp          `fused` with each layer's stream arithmetic as `altup.stacked_deferred_step`:
                     the same formulas with a hand-written backward pass (the network's stacked
                     stream with static coefficients, K > network.BLOCKS_LAYOUT_MAX_K).
  blocks             the deferred correction with the stream as a tuple of K [b, l, d] arrays:
                     xhat_i = sum_j p[i, j] z_j + (P g)_i delta written per block, the active block
                     taken by Python indexing (no slice, so no pad in the backward pass). Input and
                     output are tuples (the loss sums over them).
  blocks_stacked_io  `blocks` between one unstack of a stacked [b, l, K, d] input and one stack of
                     the output: what a drop-in replacement inside the network would cost.

The problem: N layers (default 4), layer i runs on block j* = i mod K and reads the corrected block
(`altup_layer_input='input'`); layer i is x + tanh(rmsnorm(x) @ W_i) with W_i [d, d], a T5.1.1
layer's shape (pre-norm, residual) with one matmul; p_i [K, K] and g_i [K] are parameters. The
timed program is `jax.value_and_grad` of mean(y^2) over the output stream y with respect to the
stream input, every p_i, g_i and W_i.

Method. Before timing, every layout is checked against `unfused` at a small shape (CHECK_SHAPE, at
'highest' matmul precision so that no platform rounds the dots to a lower precision): the loss and
every gradient must agree to `--tolerance` relative (max |a - b| / max |b|; `fused_vjp`: at least
LAYOUT_TOLERANCE's); the run exits non-zero if one does not. Then every (K, layout) program is compiled (`jax.jit(...).lower().compile()`),
called once to warm up, and the timed rounds go round-robin over them (one call each per round, the
order rotated by one each round), so a change of machine load hits every layout alike. A case's
time is the median of its rounds; the spread is max - min. Ratios are to `unfused` and to `fused`
of the same K, measured in the same process. FLOPs and bytes accessed are XLA's `cost_analysis` of
the compiled program, peak bytes its `memory_analysis` (`studies.common.compiled_stats`). With
--csv, one row per (K, layout) is added to that table (a re-measured case of the same run replaces
its row).
"""
import argparse
import functools
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from altup_t5x import altup
from altup_t5x import csv_tables
from studies import common

LAYOUTS = ('unfused', 'fused', 'fused_vjp', 'blocks', 'blocks_stacked_io')
# Layouts whose stream (input and its gradient) is a tuple of K [b, l, d] arrays, not [b, l, K, d].
TUPLE_LAYOUTS = ('blocks',)
DEFAULT_SHAPE = (8, 512, 512)  # batch, length, block width d
CHECK_SHAPE = (2, 16, 32)  # the equivalence check's shape, and --quick's
COLUMNS = ['run', 'date', 'device', 'loadavg', 'allocator', 'layer', 'batch', 'length', 'width',
           'layers', 'k', 'layout', 'flops', 'bytes_accessed', 'peak_bytes', 'compile_s',
           'median_ms', 'spread_ms', 'calls', 'ratio_unfused', 'ratio_fused']
# The equivalence check's relative tolerance. `fused_vjp`'s own: its coefficient gradients are
# float32 sums over the check's tokens in another order than autodiff's (per-token products, then
# the tokens), which with cancellation differ by up to ~1.4e-5 relative at K=1.
TOLERANCE = 1e-5
LAYOUT_TOLERANCE = {'fused_vjp': 5e-5}
CSV_KEY = ('run', 'batch', 'length', 'width', 'layers', 'k', 'layout')


# ------------------------------------------------------------------------------------------------
# The problem and the layouts.

def make_problem(k: int, shape: Tuple[int, int, int], layers: int, seed: int = 0):
  """The stacked stream input x [b, l, k, d] and the parameters of `layers` layers.

  Returns:
    (x, params), params a list of {'p': [k, k], 'g': [k], 'w': [d, d]} (float32). p is the identity
    and g ones (AltUp's initialisation) plus noise, so that every coefficient takes part; W is
    scaled by 1/sqrt(d) so that tanh stays out of saturation.
  """
  b, l, d = shape
  keys = jax.random.split(jax.random.PRNGKey(seed), 3 * layers + 1)
  x = jax.random.normal(keys[0], (b, l, k, d), jnp.float32)
  params = []
  for i in range(layers):
    kp, kg, kw = keys[1 + 3 * i:4 + 3 * i]
    params.append({
        'p': jnp.eye(k, dtype=jnp.float32) + 0.3 * jax.random.normal(kp, (k, k), jnp.float32),
        'g': 1.0 + 0.3 * jax.random.normal(kg, (k,), jnp.float32),
        'w': jax.random.normal(kw, (d, d), jnp.float32) / np.sqrt(d),
    })
  return x, params


# The stand-in layer, as the CSV's `layer` column names it. A T5.1.1 layer normalises its input
# and adds its output to it; both change which layout is cheapest (XLA fuses the backward pass of
# the stream's arithmetic into the layer's own), so the stand-in does too. Rows with `tanh` were
# measured with the bare tanh(x W).
LAYER = 'prenorm_residual'


def layer_fn(x, w):
  """The stand-in layer on the active block, [..., d] -> [..., d]: x + tanh(rmsnorm(x) W)."""
  normed = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-6)
  return x + jnp.tanh(normed @ w)


def stream_unfused(x, params):
  """predict -> layer -> correct per layer on the stacked stream [b, l, k, d]."""
  k = x.shape[-2]
  for i, lp in enumerate(params):
    block = i % k
    xhat = altup.predict(x, lp['p'])
    out = layer_fn(altup.select_block(x, block), lp['w'])
    x = altup.correct(xhat, out, lp['g'], block)
  return x


def plain_deferred_step(z, g, delta, p, block):
  """A layer's stream arithmetic by the plain formulas (autodiffed): y^{j*} = z^{j*} + g[j*] delta,
  xhat = P z + (P g) (x) delta and xhat^{j*}; `altup.stacked_deferred_step`'s signature."""
  xhat = altup.predict_deferred(z, g, delta, p)
  return altup.corrected_block(z, g, delta, block), xhat, xhat[..., block, :]


def stream_fused(x, params, step=plain_deferred_step):
  """The deferred correction on the stacked stream, in `network.run_layers`' order; `step` is a
  layer's stream arithmetic (`fused_vjp`: `altup.stacked_deferred_step`)."""
  k = x.shape[-2]
  z, g, delta = x, jnp.zeros((k,), jnp.float32), jnp.zeros(x.shape[:-2] + x.shape[-1:], jnp.float32)
  for i, lp in enumerate(params):
    block = i % k
    x_active, xhat, xhat_active = step(z, g, delta, lp['p'], block)
    out = layer_fn(x_active, lp['w'])
    z, g, delta = xhat, lp['g'], out - xhat_active
  return altup.apply_correction(z, g, delta)


def stream_blocks(xs, params):
  """The deferred correction with the stream as a tuple of k arrays [b, l, d].

  Every step is written per block with scalar coefficients, so XLA sees only elementwise
  multiply-adds of [b, l, d] arrays (which it fuses into loops over the stream) and no stacked axis
  to slice: the active block is a Python index, its gradient flows to that array alone.
  """
  k = len(xs)
  z = tuple(xs)
  g = jnp.zeros((k,), jnp.float32)
  delta = jnp.zeros_like(z[0])
  for i, lp in enumerate(params):
    block = i % k
    p = lp['p']
    x_active = z[block] + g[block] * delta
    pg = jnp.sum(p * g[None, :], axis=-1)  # (P g)_r, [k]
    xhat = []
    for r in range(k):
      acc = pg[r] * delta
      for j in range(k):
        acc = acc + p[r, j] * z[j]
      xhat.append(acc)
    out = layer_fn(x_active, lp['w'])
    z, g, delta = tuple(xhat), lp['g'], out - xhat[block]
  return tuple(z[r] + g[r] * delta for r in range(k))


def stream_blocks_stacked_io(x, params):
  """`stream_blocks` between one unstack of x [b, l, k, d] and one stack of the output."""
  return jnp.stack(stream_blocks(jnp.unstack(x, axis=-2), params), axis=-2)


STREAMS = {'unfused': stream_unfused, 'fused': stream_fused,
           'fused_vjp': functools.partial(stream_fused, step=altup.stacked_deferred_step),
           'blocks': stream_blocks, 'blocks_stacked_io': stream_blocks_stacked_io}


def loss_fn(layout: str):
  """(stream input, params) -> mean(y^2) over every element of the output stream y."""
  stream = STREAMS[layout]
  if layout in TUPLE_LAYOUTS:
    def loss(xs, params):
      ys = stream(xs, params)
      return sum(jnp.sum(jnp.square(y)) for y in ys) / (len(ys) * ys[0].size)
  else:
    def loss(x, params):
      y = stream(x, params)
      return jnp.sum(jnp.square(y)) / y.size
  return loss


def loss_and_grads(layout: str):
  """The timed program: (stream input, params) -> (loss, (d loss / d input, d loss / d params))."""
  return jax.value_and_grad(loss_fn(layout), argnums=(0, 1))


def inputs_of(layout: str, x, params):
  """The arguments of `layout`'s program for the stacked input x: the stream as it holds it."""
  if layout in TUPLE_LAYOUTS:
    return (tuple(x[..., j, :] for j in range(x.shape[-2])), params)
  return (x, params)


# ------------------------------------------------------------------------------------------------
# The equivalence check.

def flat_results(layout: str, result) -> Dict[str, np.ndarray]:
  """{name: array} of a program's output: loss, d/dx as [b, l, k, d], each layer's d/d(p, g, w)."""
  loss, (dx, dparams) = jax.device_get(result)
  if layout in TUPLE_LAYOUTS:
    dx = np.stack(dx, axis=-2)
  out = {'loss': np.asarray(loss), 'd/dx': np.asarray(dx)}
  for i, lp in enumerate(dparams):
    for name in sorted(lp):
      out[f'd/d{name}[layer {i}]'] = np.asarray(lp[name])
  return out


def mismatches(results: Dict[str, Dict[str, np.ndarray]], reference: str,
               tol: float) -> List[str]:
  """One message per (layout, quantity) that differs from `reference`'s by more than `tol` (or the
  layout's LAYOUT_TOLERANCE, if larger) relative
  (max |a - b| / max |b|; shapes must match; NaN never passes)."""
  errors = []
  want_all = results[reference]
  for layout, got_all in results.items():
    if layout == reference:
      continue
    if sorted(got_all) != sorted(want_all):
      errors.append(f'{layout}: outputs {sorted(got_all)} != {reference}\'s {sorted(want_all)}')
      continue
    for name, want in want_all.items():
      got = got_all[name]
      if got.shape != want.shape:
        errors.append(f'{layout} {name}: shape {got.shape} != {reference}\'s {want.shape}')
        continue
      scale = max(float(np.max(np.abs(want))), np.finfo(np.float32).tiny)
      err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) / scale
      limit = max(tol, LAYOUT_TOLERANCE.get(layout, 0.0))
      if not err <= limit:
        errors.append(f'{layout} {name}: relative difference {err:.3g} to {reference} > {limit:g}')
  return errors


def layout_results(k: int, shape: Tuple[int, int, int] = CHECK_SHAPE, layers: int = 4,
                   seed: int = 0, layouts: Sequence[str] = LAYOUTS):
  """{layout: flat_results} of every layout on the same problem, at 'highest' matmul precision."""
  x, params = make_problem(k, shape, layers, seed)
  out = {}
  with jax.default_matmul_precision('highest'):
    for layout in layouts:
      result = jax.jit(loss_and_grads(layout))(*inputs_of(layout, x, params))
      out[layout] = flat_results(layout, result)
  return out


def check_equivalence(k: int, shape: Tuple[int, int, int] = CHECK_SHAPE, layers: int = 4,
                      seed: int = 0, tol: float = TOLERANCE) -> List[str]:
  """Every layout's loss and gradients against 'unfused': the mismatches (empty if all agree)."""
  return mismatches(layout_results(k, shape, layers, seed), 'unfused', tol)


# ------------------------------------------------------------------------------------------------
# Timing.

def device_name() -> str:
  d = jax.devices()[0]
  return f'{d.platform}:{getattr(d, "device_kind", "")}'.strip(':')


class Case:
  """One (K, layout): its compiled program (a `common.Timed`) and its timed calls."""

  def __init__(self, k: int, layout: str, x, params):
    self.k, self.layout = k, layout
    self.timed = common.Timed(f'{layout} K={k}', loss_and_grads(layout),
                              inputs_of(layout, x, params))
    self.times: List[float] = []


def run(ks: Sequence[int], layouts: Sequence[str], shape: Tuple[int, int, int], layers: int,
        repeats: int, seed: int = 0) -> List[Case]:
  """Compiles every (K, layout), then times `repeats` round-robin rounds; the cases with times."""
  cases = []
  for k in ks:
    x, params = make_problem(k, shape, layers, seed)
    cases.extend(Case(k, layout, x, params) for layout in layouts)
  t0 = time.perf_counter()
  common.compile_all([c.timed for c in cases])
  print(f'compiled {len(cases)} programs in {time.perf_counter() - t0:.1f} s on {device_name()}',
        flush=True)
  for c in cases:
    c.timed.call()  # warm-up: first-call allocations stay out of the timed rounds
  for r in range(repeats):
    shift = r % len(cases)
    for c in cases[shift:] + cases[:shift]:
      c.times.append(c.timed.call())
  return cases


def rows_of(cases: Sequence[Case], shape, layers: int, run_name: str) -> List[Dict[str, str]]:
  date = time.strftime('%Y-%m-%d %H:%M')
  load = f'{os.getloadavg()[0]:.2f}'
  median = {(c.k, c.layout): statistics.median(c.times) for c in cases}
  ratio = lambda c, ref: (f'{median[(c.k, c.layout)] / median[(c.k, ref)]:.4f}'
                          if (c.k, ref) in median else '')
  b, l, d = shape
  rows = []
  for c in cases:
    stats = c.timed.stats
    rows.append(dict(
        run=run_name, date=date, device=device_name(), loadavg=load,
        allocator=common.allocator(), layer=LAYER, batch=b, length=l, width=d,
        layers=layers, k=c.k, layout=c.layout, flops=f'{stats["flops"]:.6g}',
        bytes_accessed=f'{stats["bytes_accessed"]:.6g}', peak_bytes=f'{stats["peak_bytes"]:.6g}',
        compile_s=f'{c.timed.compile_s:.3g}', median_ms=f'{1e3 * median[(c.k, c.layout)]:.6g}',
        spread_ms=f'{1e3 * (max(c.times) - min(c.times)):.3g}', calls=len(c.times),
        ratio_unfused=ratio(c, 'unfused'), ratio_fused=ratio(c, 'fused')))
  return rows


def print_table(rows):
  head = ('k', 'layout', 'median_ms', 'spread_ms', 'ratio_unfused', 'ratio_fused', 'gflops',
          'mb_accessed', 'peak_mb')
  table = [head]
  for r in rows:
    table.append((str(r['k']), r['layout'], f'{float(r["median_ms"]):.2f}',
                  f'{float(r["spread_ms"]):.2f}', r['ratio_unfused'] or '-',
                  r['ratio_fused'] or '-',
                  f'{float(r["flops"]) / 1e9:.3f}', f'{float(r["bytes_accessed"]) / 1e6:.1f}',
                  f'{float(r["peak_bytes"]) / 1e6:.1f}'))
  widths = [max(len(row[i]) for row in table) for i in range(len(head))]
  for row in table:
    print(' | '.join(cell.rjust(w) for cell, w in zip(row, widths)))


# ------------------------------------------------------------------------------------------------
# Command line.

def parse_shape(text):
  try:
    parts = [int(x) for x in text.split(',')]
  except ValueError:
    parts = []
  if len(parts) != 3 or min(parts) < 1:
    raise argparse.ArgumentTypeError(f'--shape {text!r}: expected BATCH,LENGTH,WIDTH (positive '
                                     'integers), e.g. 8,512,512')
  return tuple(parts)


def parse_ks(text):
  try:
    ks = [int(x) for x in text.split(',') if x]
  except ValueError:
    ks = []
  if not ks or min(ks) < 1:
    raise argparse.ArgumentTypeError(f'--ks {text!r}: expected comma-separated block counts '
                                     'K >= 1, e.g. 2,4')
  return ks


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--ks', type=parse_ks, default=[2, 4], help='block counts K (default 2,4)')
  parser.add_argument('--layouts', default=','.join(LAYOUTS),
                      help=f'comma-separated, of {", ".join(LAYOUTS)} (default: all)')
  parser.add_argument('--shape', type=parse_shape, default=None,
                      help='BATCH,LENGTH,WIDTH of one block (default %s; --quick: %s)' % (
                          ','.join(map(str, DEFAULT_SHAPE)), ','.join(map(str, CHECK_SHAPE))))
  parser.add_argument('--layers', type=int, default=4, help='layers N (default 4)')
  parser.add_argument('--repeats', type=int, default=None,
                      help='timed rounds (default 7; --quick: 2)')
  parser.add_argument('--quick', action='store_true', help='tiny shape and 2 rounds: a smoke run')
  parser.add_argument('--tolerance', type=float, default=TOLERANCE,
                      help=f'relative tolerance of the equivalence check (default {TOLERANCE:g})')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--csv', default=None, help='add the rows to this CSV table (default: none)')
  parser.add_argument('--run', default=None, help='name of this run in the CSV (default: date)')
  args = parser.parse_args(argv)
  layouts = [x for x in args.layouts.split(',') if x]
  bad = [x for x in layouts if x not in LAYOUTS]
  if bad or not layouts:
    parser.error(f'--layouts {",".join(bad) or "(empty)"}: allowed values: {", ".join(LAYOUTS)}')
  if len(set(layouts)) != len(layouts):
    parser.error(f'--layouts {args.layouts!r}: a layout is named twice')
  if args.layers < 1:
    parser.error(f'--layers {args.layers}: expected at least 1')
  repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
  if repeats < 1:
    parser.error(f'--repeats {repeats}: expected at least 1')
  if not args.tolerance > 0:
    parser.error(f'--tolerance {args.tolerance}: expected a positive number')
  shape = args.shape or (CHECK_SHAPE if args.quick else DEFAULT_SHAPE)

  for k in args.ks:
    errors = check_equivalence(k, CHECK_SHAPE, args.layers, args.seed, args.tolerance)
    if errors:
      sys.exit(f'update_layout: at K={k} ({"x".join(map(str, CHECK_SHAPE))}, {args.layers} layers) '
               'a layout does not compute what unfused does:\n  ' + '\n  '.join(errors))
  print(f'equivalence check: every layout matches unfused to {args.tolerance:g} relative '
        f'(K={",".join(map(str, args.ks))}, {"x".join(map(str, CHECK_SHAPE))}, '
        f'{args.layers} layers)', flush=True)

  cases = run(args.ks, layouts, shape, args.layers, repeats, args.seed)
  rows = rows_of(cases, shape, args.layers, args.run or time.strftime('%Y-%m-%d %H:%M'))
  b, l, d = shape
  print(f'forward + backward of {args.layers} layers\' AltUp updates, {b} x {l} x {d} float32 per '
        f'block, median of {repeats} rounds:')
  print_table(rows)
  if args.csv:
    csv_tables.update(args.csv, rows, COLUMNS, key=CSV_KEY)
    print(f'wrote {len(rows)} rows to {args.csv}')
  return rows


if __name__ == '__main__':
  main()
