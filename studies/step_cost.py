"""What a step costs: train-step and decode-step time, FLOPs and memory of AltUp's variants against
the baseline, under the options that change the cost (fused/unfused predict-correct, gather/one-hot
lookup, scanned/unrolled layers), on whatever device JAX runs on.

    python -m studies.step_cost --sizes small --shape 8,512,114 --dtype float32
    python -m studies.step_cost --sizes small,base --dtype bfloat16 --options default,one_hot,scanned

Method. Every (size, variant, option) case is compiled first (`jax.jit(...).lower().compile()` on
real arrays); the timed rounds then go round-robin over the cases (in each round: one warm-up call
and `--steps` timed calls of each case in turn), so a change of machine load hits every case
alike. A case's time is the median of its timed calls; ratios are to the baseline of the same
size and option, measured in the same process. FLOPs and planned peak bytes come from XLA's
compiled executable (`cost_analysis`, `memory_analysis`); XLA counts a while loop's body once, so
a scanned step's FLOPs are not its real count: MFU of a scanned case uses the unrolled case's
FLOPs. tokens/s counts encoder + decoder tokens of the batch per second of train step; MFU is
FLOPs / step time / the device's peak (known accelerators only, bfloat16 dense peaks from the
vendors' data sheets; empty on CPU).

Options: `default` = the shipped T5X settings (gather lookup, fused updates, unrolled layers);
`unfused` = predict / layer / correct per layer (the textbook order, two passes over the stream);
`one_hot` = T5X's one-hot matmul lookup; `scanned` = scan_layers=True. Each `default` case also
times its optimizer update alone (kind `optimizer`: Adafactor on gradients shaped like the
parameters), the part of a train step that grows with the parameter count, not with the batch.
Rows are appended to --csv (benchmarks/step_cost.csv), one per (case, kind), with the run's name,
the device, the load average, the date and the process's malloc (on CPU the allocator is part of a
step's time: `studies.common.allocator`).
"""
import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from altup_t5x import csv_tables
from altup_t5x.config import ConfigError
from altup_t5x.models import count_params
from altup_t5x.network import Transformer
from studies import common

VARIANTS = {
    'baseline': {},
    'altup_k2': dict(altup_k=2),
    'recycled_k2': dict(altup_k=2, altup_embedding='recycled'),
    'altup_k4': dict(altup_k=4),
    'seq_altup_s2': dict(sequence_altup_stride=2),
}
OPTIONS = {
    'default': {},
    'unfused': dict(altup_fused_updates=False),
    'one_hot': dict(one_hot_embedding=True),
    'scanned': dict(scan_layers=True),
}
# Per-device shapes (batch, inputs, targets): T5.1.1 pretraining lengths.
SHAPES = {'tiny': (2, 32, 8), 'small': (16, 512, 114), 'base': (8, 512, 114)}
VOCAB = {'tiny': 1100}  # every other size: T5's 32128
# bfloat16 dense peak FLOP/s per chip (vendor data sheets: NVIDIA A100 312 TFLOPS, H100/H200 SXM
# 989 TFLOPS; Google Cloud TPU v4 275, v5e 197, v5p 459).
PEAK_FLOPS = {'a100': 312e12, 'h100': 989e12, 'h200': 989e12, 'tpu v4': 275e12,
              'tpu v5 lite': 197e12, 'tpu v5e': 197e12, 'tpu v5p': 459e12}
COLUMNS = ['run', 'date', 'device', 'loadavg', 'allocator', 'size', 'batch', 'inputs', 'targets',
           'dtype', 'variant', 'option', 'kind', 'params', 'flops', 'peak_bytes', 'compile_s',
           'median_ms', 'spread_ms', 'calls', 'ratio', 'flops_ratio', 'tokens_per_s', 'mfu']


def device_name() -> str:
  d = jax.devices()[0]
  return f'{d.platform}:{getattr(d, "device_kind", "")}'.strip(':')


def peak_flops(dtype: str):
  kind = getattr(jax.devices()[0], 'device_kind', '').lower()
  if dtype != 'bfloat16':
    return None
  for name, peak in PEAK_FLOPS.items():
    if name in kind:
      return peak
  return None


def config_of(size, dtype, variant, option):
  cfg = common.make_config(size, 'baseline', VOCAB.get(size, 32128))
  return cfg.replace(dtype=dtype, **VARIANTS[variant], **OPTIONS[option])


class Case:
  """The compiled train step and one cached decode step of one (size, variant, option)."""

  def __init__(self, size, shape, dtype, variant, option, seed=0):
    self.size, self.shape, self.dtype, self.variant, self.option = size, shape, dtype, variant, option
    b, li, lt = shape
    self.cfg = cfg = config_of(size, dtype, variant, option)
    module = Transformer(cfg)
    rng = jax.random.PRNGKey(seed)
    batch = common.random_batch(rng, cfg.vocab_size, b, li, lt)
    params = jax.jit(lambda: common.init_params(module, rng, batch))()
    self.params = count_params(params)
    optimizer = common.make_optimizer()
    opt_state = jax.jit(optimizer.init)(params)
    step = common.make_train_step(module, optimizer)
    self.train = common.Timed('train', step, (params, opt_state, batch, rng), donate=(0, 1),
                              stateful=lambda s, out: (out[0], out[1], s[2], out[3]))
    enc = batch['encoder_input_tokens']
    encoded = jax.jit(lambda p: module.apply({'params': p}, enc, enable_dropout=False,
                                             method=module.encode))(params)
    shapes = jax.eval_shape(lambda p: module.apply(
        {'params': p}, encoder_input_tokens=enc, decoder_input_tokens=jnp.ones((b, lt), jnp.int32),
        decoder_target_tokens=jnp.ones((b, lt), jnp.int32), decode=True, enable_dropout=False,
        mutable=['cache'])[1]['cache'], params)

    def decode_step(cache, token, p, encoded):
      logits, v = module.apply({'params': p, 'cache': cache}, encoded, enc, token, token,
                               enable_dropout=False, decode=True, max_decode_length=lt,
                               mutable=['cache'], method=module.decode)
      return v['cache'], jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)

    fresh = lambda: (jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                     jnp.zeros((b, 1), jnp.int32), self.train.state[0], encoded)
    self.decode = common.Timed('decode', decode_step, fresh(), donate=(0,), reset=fresh,
                               stateful=lambda s, out: (out[0], out[1], s[2], s[3]))
    self.decode.steps_per_reset = lt

    # The optimizer update alone (Adafactor on gradients shaped like the params, on a copy of them,
    # updated in place as in the train step): its cost grows with the parameter count, not the
    # batch, so it tells how much of a train step is per-parameter work.
    self.optimizer = None
    if option == 'default':  # the other options have the same parameters
      copy = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p))
      own, grads = copy(params), copy(params)
      self.optimizer = common.Timed('optimizer', common.make_optimizer_update(optimizer),
                                    (own, jax.jit(optimizer.init)(own), grads), donate=(0, 1),
                                    stateful=lambda s, out: (out[0], out[1], s[2]))
    self.calls = 0

  def timeds(self):
    return tuple(t for t in (self.train, self.decode, self.optimizer) if t is not None)


def run(sizes, variants, options, dtype, shapes, rounds, steps, csv_path, run_name):
  todo = []
  for size in sizes:
    for option in options:
      for variant in variants:
        if option == 'unfused' and variant in ('baseline', 'seq_altup_s2'):
          continue  # no AltUp stream: unfused is the same program
        try:  # every config is checked before anything is built
          config_of(size, dtype, variant, option)
        except ConfigError as e:
          print(f'skipped {size} {variant} {option}: {e}')
          continue
        todo.append((size, variant, option))
  cases = [Case(size, shapes[size], dtype, variant, option) for size, variant, option in todo]
  t0 = time.perf_counter()
  programs = [t for c in cases for t in c.timeds()]
  common.compile_all(programs)
  print(f'compiled {len(cases)} cases ({len(programs)} programs) in '
        f'{time.perf_counter() - t0:.0f} s on {device_name()}', flush=True)
  for r in range(rounds):
    for case in cases:
      for timed in case.timeds():
        if timed.name == 'decode':
          timed.reset()
        timed.call()  # warm-up
        times = []
        for _ in range(steps):
          if timed.name == 'decode' and case.calls % timed.steps_per_reset == 0:
            timed.reset()
          times.append(timed.call())
        timed.times.append(times)
    print(f'round {r + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)', flush=True)
  return rows_of(cases, dtype, run_name, csv_path)


def rows_of(cases, dtype, run_name, csv_path):
  date = time.strftime('%Y-%m-%d %H:%M')
  load = f'{os.getloadavg()[0]:.2f}'
  peak = peak_flops(dtype)
  by_key = {}
  for case in cases:
    for timed in case.timeds():
      all_times = [t for rnd in timed.times for t in rnd]
      by_key[(case.size, case.variant, case.option, timed.name)] = (case, timed, all_times)
  rows = []
  for (size, variant, option, kind), (case, timed, times) in by_key.items():
    med = statistics.median(times)
    per_round = [statistics.median(t) for t in timed.times]
    base = by_key.get((size, 'baseline', option if option != 'unfused' else 'default', kind))
    base_med = statistics.median(base[2]) if base else float('nan')
    flops = timed.stats['flops']
    base_flops = base[1].stats['flops'] if base else float('nan')
    if option == 'scanned':  # XLA counts a loop body once: the unrolled program's FLOPs
      unrolled = by_key.get((size, variant, 'default', kind))
      flops = unrolled[1].stats['flops'] if unrolled else float('nan')
      base_un = by_key.get((size, 'baseline', 'default', kind))
      base_flops = base_un[1].stats['flops'] if base_un else float('nan')
    b, li, lt = case.shape
    tokens = {'train': b * (li + lt), 'decode': b}.get(kind)  # the optimizer: no tokens
    rows.append(dict(
        run=run_name, date=date, device=device_name(), loadavg=load,
        allocator=common.allocator(), size=size, batch=b, inputs=li,
        targets=lt, dtype=dtype, variant=variant, option=option, kind=kind, params=case.params,
        flops=f'{flops:.6g}', peak_bytes=f'{timed.stats["peak_bytes"]:.6g}',
        compile_s=f'{timed.compile_s:.3g}', median_ms=f'{1e3 * med:.6g}',
        spread_ms=f'{1e3 * (max(per_round) - min(per_round)):.3g}', calls=len(times),
        ratio=f'{med / base_med:.4f}', flops_ratio=f'{flops / base_flops:.4f}',
        tokens_per_s='' if tokens is None else f'{tokens / med:.6g}',
        mfu='' if peak is None or tokens is None else f'{flops / med / peak:.4f}'))
  print_table(rows)
  if csv_path:  # a re-measured case of the same run replaces its row
    csv_tables.update(csv_path, rows, COLUMNS, key=('run', 'size', 'variant', 'option', 'kind'))
  return rows


def print_table(rows):
  head = ('size', 'variant', 'option', 'kind', 'median_ms', 'ratio', 'flops_ratio',
          'peak_bytes', 'tokens_per_s', 'mfu')
  print(' | '.join(head))
  for r in rows:
    print(' | '.join(str(r[h]) for h in head))


def parse_shape(text):
  parts = [int(x) for x in text.split(',')]
  if len(parts) != 3 or min(parts) < 1:
    raise argparse.ArgumentTypeError(f'--shape {text!r}: expected BATCH,INPUTS,TARGETS, e.g. 8,512,114')
  return tuple(parts)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='small', help=f'comma-separated, of {", ".join(SHAPES)}')
  parser.add_argument('--shape', type=parse_shape, default=None,
                      help='BATCH,INPUTS,TARGETS for every size (default: per size, '
                           + ', '.join(f'{k} {",".join(map(str, v))}' for k, v in SHAPES.items()) + ')')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--options', default='default,unfused', help=f'of {", ".join(OPTIONS)}')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--csv', default=os.path.join('benchmarks', 'step_cost.csv'))
  parser.add_argument('--run', default=None, help='name of this run in the CSV (default: date)')
  args = parser.parse_args(argv)
  lists = {}
  for name, allowed in (('sizes', SHAPES), ('variants', VARIANTS), ('options', OPTIONS)):
    lists[name] = [x for x in getattr(args, name).split(',') if x]
    bad = [x for x in lists[name] if x not in allowed]
    if bad or not lists[name]:
      parser.error(f'--{name} {",".join(bad) or "(empty)"}: allowed values: {", ".join(allowed)}')
  if 'baseline' not in lists['variants']:
    parser.error('--variants must include baseline (every ratio is to it)')
  shapes = {s: args.shape or SHAPES[s] for s in lists['sizes']}
  run(lists['sizes'], lists['variants'], lists['options'], args.dtype, shapes, args.rounds,
      args.steps, args.csv, args.run or time.strftime('%Y-%m-%d %H:%M'))


if __name__ == '__main__':
  main()


def markdown(rows) -> str:
  """The rows of step_cost.csv as one Markdown table per run (for BENCHMARKS.md)."""
  runs = []
  for r in rows:
    if r['run'] not in runs:
      runs.append(r['run'])
  out = []
  for run_name in runs:
    rs = [r for r in rows if r['run'] == run_name]
    first = rs[0]
    shapes = sorted({(r['size'], r['batch'], r['inputs'], r['targets']) for r in rs})
    shape_text = ', '.join(f'{s} {b} x {i}/{t}' for s, b, i, t in shapes)
    malloc = f', malloc {first["allocator"]}' if first['device'].startswith('cpu') else ''
    out.append(f'Run `{run_name}` ({first["date"]}, {first["device"]}, {first["dtype"]}, '
               f'{shape_text}{malloc}, load average {first["loadavg"]} at the end):\n')
    out.append('| size | variant | option | train ms | train ratio | train FLOPs ratio | '
               'peak memory ratio | decode ms | decode ratio | optimizer ms | tokens/s | MFU |')
    out.append('|---|---|---|---|---|---|---|---|---|---|---|---|')
    by = {(r['size'], r['variant'], r['option'], r['kind']): r for r in rs}
    for (size, variant, option, kind), r in by.items():
      if kind != 'train':
        continue
      d = by.get((size, variant, option, 'decode'), {})
      o = by.get((size, variant, option, 'optimizer'))
      opt = f'{float(o["median_ms"]):.1f}' if o else '-'
      base = by.get((size, 'baseline', option if option != 'unfused' else 'default', 'train'))
      mem = (float(r['peak_bytes']) / float(base['peak_bytes'])) if base else float('nan')
      out.append(f'| {size} | {variant} | {option} | {float(r["median_ms"]):.1f} | '
                 f'{float(r["ratio"]):.3f}x | {float(r["flops_ratio"]):.3f}x | {mem:.3f}x | '
                 f'{float(d.get("median_ms", "nan")):.2f} | {float(d.get("ratio", "nan")):.3f}x | '
                 f'{opt} | {float(r["tokens_per_s"]):.0f} | {r["mfu"] or "-"} |')
    out.append('')
  return '\n'.join(out)
