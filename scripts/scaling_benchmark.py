"""Benchmarks of the scaling options: scan_layers, remat_policy, one_hot_embedding.

    nice -n 19 python scripts/scaling_benchmark.py compile --sizes base large xl   # compile time
    nice -n 19 python scripts/scaling_benchmark.py memory --sizes base large       # XLA temporaries
    nice -n 19 python scripts/scaling_benchmark.py step                            # step times, small
    nice -n 19 python scripts/scaling_benchmark.py sweep --sizes large base           # both first
    nice -n 19 python scripts/scaling_benchmark.py embedding                       # one-hot vs gather
    python scripts/scaling_benchmark.py profile       # where a scanned step's extra time goes (CPU)

Each part prints a table and appends its rows to benchmarks/scaling.csv (--csv); `profile` to
benchmarks/scaling_profile.csv (--profile_csv). Rows record the process's malloc (`allocator`):
XLA:CPU allocates a step's buffers anew each call, so on CPU the allocator is part of a step time
(e.g. `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2` from Debian's libjemalloc2).

Method (as scripts/benchmark.py): the train step is the runner's (loss, gradients, Adafactor update)
on one CPU device, float32, batch 8 x 512/114 (T5X's anchor setup for scalable_t5), compiled ahead
of time (`jax.jit(step).lower(...).compile()`) on `jax.eval_shape`d parameters and optimizer state,
so no parameter is ever allocated (XL included). `compile`: seconds to lower and to compile, scanned
vs unrolled, in one process. `memory`: XLA's temporary bytes of the compiled step
(`memory_analysis().temp_size_in_bytes`) per remat policy, scanned and unrolled. `step`: step time
of real steps at T5.1.1-small (batch 2 x 128/32, as scripts/benchmark.py's 'small' shape), median
of round-robin timed calls over the variants, so machine load hits all alike. Note: XLA's
`cost_analysis()` counts a while loop's body once, so the 'flops' column of scanned rows is not the
step's FLOPs (use the unrolled row's).
"""
import argparse
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout first

from studies import common as bm  # pylint: disable=g-import-not-at-top

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from altup_t5x import csv_tables
from altup_t5x.config import AltUpConfig
from altup_t5x.network import Transformer

VARIANTS = {'baseline': {}, 'altup_k2': dict(altup_k=2), 'altup_k4': dict(altup_k=4)}
COLUMNS = ['part', 'size', 'variant', 'scan_layers', 'remat_policy', 'one_hot_embedding', 'batch',
           'inputs', 'targets', 'lower_s', 'compile_s', 'temp_bytes', 'peak_bytes', 'flops',
           'step_ms', 'step_ms_min', 'step_ms_max', 'param_scan_axis', 'process', 'allocator']
# One id per process: `step` ratios compare rows of the same process only (report.py numbers runs).
PROCESS = time.strftime('%Y-%m-%dT%H:%M:%S') + f'-{os.getpid()}'


allocator = bm.allocator  # the process's malloc, recorded with each row


def config(size, variant, vocab_size=32128, **overrides):
  return AltUpConfig.from_size(size, vocab_size=vocab_size, dropout_rate=0.0,
                               dtype='float32', **VARIANTS[variant], **overrides)


def abstract_args(cfg, batch, inputs, targets):
  """ShapeDtypeStructs of (params, opt_state, batch, rng): nothing allocated."""
  module = Transformer(cfg)
  tokens = lambda l: jax.ShapeDtypeStruct((batch, l), jnp.int32)
  data = {'encoder_input_tokens': tokens(inputs), 'decoder_input_tokens': tokens(targets),
          'decoder_target_tokens': tokens(targets)}
  params = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.ones((1, inputs), jnp.int32), jnp.ones((1, targets), jnp.int32),
      jnp.ones((1, targets), jnp.int32), enable_dropout=False)['params'])
  optimizer = bm.make_optimizer()
  opt_state = jax.eval_shape(optimizer.init, params)
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  return module, optimizer, (params, opt_state, data, rng)


def aot(cfg, batch=8, inputs=512, targets=114):
  module, optimizer, args = abstract_args(cfg, batch, inputs, targets)
  step = jax.jit(bm.make_train_step(module, optimizer), donate_argnums=(0, 1))
  t0 = time.perf_counter()
  lowered = step.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  stats = bm.compiled_stats(compiled)
  return dict(lower_s=t1 - t0, compile_s=t2 - t1, temp_bytes=stats['temp_bytes'],
              peak_bytes=stats['peak_bytes'], flops=stats['flops'])


def row(part, size, variant, cfg, shape, **values):
  out = dict(part=part, size=size, variant=variant, scan_layers=cfg.scan_layers,
             remat_policy=cfg.remat_policy, one_hot_embedding=cfg.one_hot_embedding,
             param_scan_axis=cfg.param_scan_axis, allocator=allocator(), **shape)
  out.update(values)
  return out


def run_compile(args):
  shape = dict(batch=8, inputs=512, targets=114)
  rows = []
  for size in args.sizes:
    for variant in args.variants:
      pair = {}
      for scan in (False, True):
        cfg = config(size, variant, scan_layers=scan)
        r = aot(cfg, **shape)
        pair[scan] = r['lower_s'] + r['compile_s']
        rows.append(row('compile', size, variant, cfg, shape, **r))
        print(f'{size:6s} {variant:9s} scan={scan!s:5s} lower {r["lower_s"]:6.1f}s compile '
              f'{r["compile_s"]:6.1f}s temp {r["temp_bytes"] / 2**30:6.2f} GiB', flush=True)
        csv_tables.update(args.csv, rows[-1:], COLUMNS)
      print(f'{size:6s} {variant:9s} scanned / unrolled (lower + compile) = '
            f'{pair[True] / pair[False]:.2f}x', flush=True)
  return rows


def run_memory(args):
  shape = dict(batch=8, inputs=512, targets=114)
  rows = []
  for size in args.sizes:
    for variant in args.variants:
      for scan in (True, False):
        temps = {}
        for policy in ('none', 'minimal', 'full'):
          cfg = config(size, variant, scan_layers=scan, remat_policy=policy)
          r = aot(cfg, **shape)
          temps[policy] = r['temp_bytes']
          rows.append(row('memory', size, variant, cfg, shape, **r))
          csv_tables.update(args.csv, rows[-1:], COLUMNS)
          print(f'{size:6s} {variant:9s} scan={scan!s:5s} remat={policy:8s} temp '
                f'{r["temp_bytes"] / 2**30:7.2f} GiB ({r["temp_bytes"] / temps["none"]:.2f}x '
                f'of none)  compile {r["lower_s"] + r["compile_s"]:.1f}s', flush=True)
  return rows


def existing_rows(path, part):
  """Rows of `part` already in the CSV, keyed by (size, variant, scan_layers, remat_policy)."""
  return {(r['size'], r['variant'], r['scan_layers'] == 'True', r['remat_policy']):
          {k: float(r[k]) for k in ('lower_s', 'compile_s', 'temp_bytes', 'peak_bytes', 'flops')}
          for r in csv_tables.read(path, missing_ok=True) if r['part'] == part}


def run_sweep(args):
  """compile + memory in one pass per size: unrolled/scanned x remat none/full (then minimal).

  A case already in the CSV is not compiled again (unless --redo): the sweep resumes."""
  shape = dict(batch=8, inputs=512, targets=114)
  rows = []
  have = {} if args.redo else existing_rows(args.csv, 'sweep')
  for size in args.sizes:
    for variant in args.variants:
      res = {}
      for scan, policy in ((False, 'none'), (True, 'none'), (True, 'full'), (False, 'full'),
                           (True, 'minimal'), (False, 'minimal'))[:args.cases]:
        cfg = config(size, variant, scan_layers=scan, remat_policy=policy)
        if (size, variant, scan, policy) in have:
          res[scan, policy] = have[size, variant, scan, policy]
          print(f'{size:6s} {variant:9s} scan={scan!s:5s} remat={policy:8s} (in the CSV already)',
                flush=True)
          continue
        r = aot(cfg, **shape)
        res[scan, policy] = r
        rows.append(row('sweep', size, variant, cfg, shape, **r))
        csv_tables.update(args.csv, rows[-1:], COLUMNS)
        none = res.get((scan, 'none'), r)
        print(f'{size:6s} {variant:9s} scan={scan!s:5s} remat={policy:8s} lower {r["lower_s"]:6.1f}s '
              f'compile {r["compile_s"]:6.1f}s temp {r["temp_bytes"] / 2**30:7.2f} GiB '
              f'({r["temp_bytes"] / none["temp_bytes"]:.2f}x of none)', flush=True)
        if (False, 'none') in res and (True, 'none') in res and scan and policy == 'none':
          total = lambda x: x['lower_s'] + x['compile_s']
          print(f'{size:6s} {variant:9s} scanned / unrolled (lower + compile) = '
                f'{total(res[True, "none"]) / total(res[False, "none"]):.2f}x', flush=True)
  return rows


STEP_CASES = {
    'unrolled': dict(),
    'scanned': dict(scan_layers=True),
    'scanned_axis0': dict(scan_layers=True, param_scan_axis=0),
    'remat_minimal': dict(remat_policy='minimal'),
    'remat_full': dict(remat_policy='full'),
    'scanned_remat_full': dict(scan_layers=True, remat_policy='full'),
    'one_hot': dict(one_hot_embedding=True),
}


def step_cases(only):
  """The cases to run: `only` (validated) plus the unrolled reference, in STEP_CASES's order."""
  unknown = sorted(set(only or ()) - set(STEP_CASES))
  if unknown:
    raise SystemExit(f'ERROR: --only {unknown}: unknown case(s); expected some of {list(STEP_CASES)}')
  return {k: v for k, v in STEP_CASES.items() if not only or k in only or k == 'unrolled'}


def real_step(variant, shape, overrides):
  """T5.1.1-small's compiled train step on real parameters, called once: (cfg, call); each
  `call()` runs one more step on the state the last one left (parameters and optimizer state are
  donated) and returns its outputs."""
  cfg = config('small', 'baseline' if variant == 'scalable_t5' else variant, **overrides)
  module = Transformer(cfg) if variant != 'scalable_t5' else scalable_t5(cfg)
  optimizer = bm.make_optimizer()
  rng = jax.random.PRNGKey(0)
  data = bm.random_batch(rng, cfg.vocab_size, **shape)
  params = module.init(rng, data['encoder_input_tokens'][:1], data['decoder_input_tokens'][:1],
                       data['decoder_target_tokens'][:1], enable_dropout=False)['params']
  state = [params, optimizer.init(params), data, rng]
  fn = jax.jit(bm.make_train_step(module, optimizer), donate_argnums=(0, 1))

  def call():
    out = fn(*state)
    state[0], state[1] = out[0], out[1]
    return out

  jax.block_until_ready(call())
  return cfg, call


def run_step(args):
  batch, inputs, targets = (int(x) for x in args.shape.split(','))
  shape = dict(batch=batch, inputs=inputs, targets=targets)
  cases = step_cases(args.only)
  rows = []
  for variant in args.variants:
    timed = {}
    for name, overrides in cases.items():
      cfg, call = real_step(variant, shape, overrides)
      timed[name] = (cfg, call, [])
    for _ in range(args.rounds):
      for name, (cfg, call, times) in timed.items():
        round_times = []
        for _ in range(args.steps + 1):
          t0 = time.perf_counter()
          jax.block_until_ready(call())
          round_times.append(time.perf_counter() - t0)
        times.append(statistics.median(round_times[1:]))
    base = statistics.median(timed['unrolled'][2])
    for name, (cfg, _, times) in timed.items():
      med = statistics.median(times)
      rows.append(row('step', 'small', variant, cfg, shape, process=PROCESS, step_ms=1e3 * med,
                      step_ms_min=1e3 * min(times), step_ms_max=1e3 * max(times)))
      print(f'small {variant:9s} {name:20s} step {1e3 * med:8.1f} ms ({med / base:.3f}x of '
            f'unrolled; round medians {1e3 * min(times):.1f}-{1e3 * max(times):.1f})', flush=True)
    csv_tables.update(args.csv, rows[-len(timed):], COLUMNS)
  return rows


PROFILE_COLUMNS = ['process', 'allocator', 'variant', 'case', 'batch', 'inputs', 'targets',
                   'rounds', 'calls',
                   'step_ms', 'traced_ms', 'minor_faults', 'category', 'core_ms', 'ops']


def run_profile(args):
  """Per-category op time of the small train step, unrolled vs scanned (`studies/xla_profile.py`):
  what the scanned step's extra time is made of. All cases are built and warmed up first, untraced
  step times are round-robin medians as in `step` (a case measured alone first in a process pays the
  allocator's warm-up), then each case is traced for --steps calls. Rows go to --profile_csv."""
  from studies import xla_profile  # pylint: disable=g-import-not-at-top
  batch, inputs, targets = (int(x) for x in args.shape.split(','))
  shape = dict(batch=batch, inputs=inputs, targets=targets)
  cases = step_cases(args.only or ['scanned', 'scanned_axis0'])
  rows = []
  for variant in args.variants:
    calls = {name: real_step(variant, shape, overrides)[1] for name, overrides in cases.items()}
    times = {name: [] for name in calls}
    faults = {name: [] for name in calls}
    for r in range(args.rounds + 1):  # round 0 warms every case up
      for name, call in calls.items():
        for _ in range(args.steps):
          f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
          t0 = time.perf_counter()
          jax.block_until_ready(call())
          if r:
            times[name].append(time.perf_counter() - t0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    for name, call in calls.items():
      cats, traced = xla_profile.trace_ops(call, args.steps)
      step = 1e3 * statistics.median(times[name])
      fault = statistics.median(faults[name])
      for cat, (ms, ops) in cats.items():
        rows.append(dict(process=PROCESS, allocator=allocator(), variant=variant, case=name,
                         rounds=args.rounds, calls=args.steps, step_ms=step, traced_ms=traced,
                         minor_faults=fault, category=cat, core_ms=ms, ops=ops, **shape))
      print(f'small {variant} {name}: step {step:.1f} ms untraced ({fault:.0f} page faults), '
            f'{traced:.1f} ms traced; '
            + ', '.join(f'{c} {ms:.1f}' for c, (ms, _) in cats.items()), flush=True)
  csv_tables.update(args.profile_csv, rows, PROFILE_COLUMNS)
  return rows


def scalable_t5(cfg):
  """T5X's own examples/scalable_t5 network at the same T5.1.1 size and scan setting (the anchor
  for `step --variants scalable_t5`, run with the Python of a T5X environment)."""
  try:
    from t5x.examples.scalable_t5 import network  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f'ERROR: --variants scalable_t5 needs T5X importable ({e}); run this script '
                     'with the Python of a T5X environment.')
  if cfg.one_hot_embedding or cfg.remat_policy not in ('none', 'minimal', 'full'):
    raise SystemExit('ERROR: scalable_t5 cases: scanned/unrolled and remat policies only')
  return network.Transformer(network.T5Config(
      vocab_size=cfg.vocab_size, emb_dim=cfg.emb_dim, num_heads=cfg.num_heads,
      num_encoder_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim, mlp_activations=('gelu', 'linear'),
      dropout_rate=0.0, logits_via_embedding=False, dtype=jnp.float32,
      scan_layers=cfg.scan_layers, param_scan_axis=cfg.param_scan_axis,
      remat_policy={'none': 'none', 'minimal': 'minimal', 'full': 'full'}[cfg.remat_policy]))


def run_embedding(args):
  """The token lookup alone (forward + gradient), one-hot matmul vs gather, T5.1.1-small table."""
  from altup_t5x import layers  # pylint: disable=g-import-not-at-top
  vocab, width, shape = 32128, 512, (2, 128)
  tokens = jax.random.randint(jax.random.PRNGKey(0), shape, 0, vocab)
  rows, med = [], {}
  for one_hot in (False, True):
    module = layers.Embed(vocab, width, one_hot=one_hot)
    params = module.init(jax.random.PRNGKey(0), tokens)
    fn = jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, tokens) ** 2)))
    jax.block_until_ready(fn(params))
    times = []
    for _ in range(args.rounds * args.steps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params))
      times.append(time.perf_counter() - t0)
    med[one_hot] = statistics.median(times)
    rows.append(dict(part='embedding', size='small', variant='lookup_only',
                     one_hot_embedding=one_hot, batch=shape[0], inputs=shape[1],
                     step_ms=1e3 * med[one_hot], step_ms_min=1e3 * min(times),
                     step_ms_max=1e3 * max(times)))
    print(f'embedding {vocab} x {width}, tokens {shape}, one_hot={one_hot!s:5s}: '
          f'{1e3 * med[one_hot]:.1f} ms (fwd + grad)', flush=True)
  print(f'one-hot / gather = {med[True] / med[False]:.1f}x')
  csv_tables.update(args.csv, rows, COLUMNS)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('part', choices=('compile', 'memory', 'step', 'sweep', 'embedding',
                                       'profile'))
  parser.add_argument('--cases', type=int, default=6, help='sweep: how many of its 6 cases')
  parser.add_argument('--shape', default='2,128,32',
                      help='step, profile: batch,inputs,targets (default: scripts/benchmark.py\'s '
                           'small shape)')
  parser.add_argument('--only', nargs='+', default=None,
                      help='step, profile: these cases only (with unrolled, the reference; '
                           'profile\'s default: scanned scanned_axis0): unrolled, '
                           'scanned, scanned_axis0, remat_minimal, remat_full, scanned_remat_full, '
                           'one_hot')
  parser.add_argument('--redo', action='store_true', help='sweep: compile cases already in the CSV')
  parser.add_argument('--sizes', nargs='+', default=['base', 'large', 'xl'])
  parser.add_argument('--variants', nargs='+', default=['baseline'],
                      choices=sorted(VARIANTS) + ['scalable_t5'],
                      help='scalable_t5 (step only): T5X\'s own network, as the anchor')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--csv', default=os.path.join(ROOT, 'benchmarks', 'scaling.csv'))
  parser.add_argument('--profile_csv',
                      default=os.path.join(ROOT, 'benchmarks', 'scaling_profile.csv'))
  args = parser.parse_args(argv)
  {'compile': run_compile, 'memory': run_memory, 'step': run_step, 'sweep': run_sweep,
   'embedding': run_embedding, 'profile': run_profile}[
      args.part](args)


if __name__ == '__main__':
  main()
