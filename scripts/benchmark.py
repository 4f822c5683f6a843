"""Benchmarks of AltUp against the T5.1.1 baseline; the command line of `studies/`.

    python scripts/benchmark.py speed    --out benchmarks/  # step / forward / decode time, memory, FLOPs
    python scripts/benchmark.py t5x      --out benchmarks/ --t5x-python PY  # our K=1 vs T5X's network
    python scripts/benchmark.py quality  --out benchmarks/  # loss curves on the embedded corpus
    python scripts/benchmark.py fidelity --out benchmarks/  # the paper-claims study (resumable)
    python scripts/benchmark.py sizes    --out benchmarks/ --jobs 2  # the claims at d=64 and d=128
    python scripts/benchmark.py report   --out benchmarks/  # BENCHMARKS.md, docs/scaling.md, README results
    python scripts/benchmark.py all      --out benchmarks/  # speed, t5x (if a T5X Python is given), quality

Measurements only write into --out; BENCHMARKS.md is written by `report` alone (or by any command
given --write-report). The T5X comparison runs under the Python of an environment where T5X is
installed: `--t5x-python PATH` or the environment variable ALTUP_T5X_PYTHON.
`--quick` shrinks every part to a smoke run (seconds to a minute; numbers meaningless).
Method and measured quantities: the docstrings of `studies/{speed,quality,fidelity,sizes}.py`.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# The commands that end by plotting their measurements (matplotlib, setup.py's `bench` extra).
PLOTTING_COMMANDS = ('speed', 'quality', 'fidelity', 'all')

EXPECTED_DURATION = (
    'Expected duration on 2 idle CPU cores: about 25 minutes (speed: tiny ~3 + small ~9, of which '
    'compilation is about half; T5X comparison ~3; quality ~10). On a loaded machine it grows '
    'with the load (measured at load average ~6 on 2 cores: about 2.5x).')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('command',
                      choices=['speed', 't5x', 'quality', 'fidelity', 'sizes', 'report', 'all'])
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks'))
  parser.add_argument('--quick', action='store_true', help='smoke-test sizes (numbers meaningless)')
  parser.add_argument('--write-report', action='store_true',
                      help='also rewrite BENCHMARKS.md (and the README results) from --out')
  parser.add_argument('--t5x-python', default=None,
                      help='t5x/all: the Python of an environment with T5X installed '
                           '(default: $ALTUP_T5X_PYTHON)')
  parser.add_argument('--sizes', default='', help='speed: comma-separated subset of tiny,small')
  parser.add_argument('--variants', default='', help='speed: comma-separated subset of variants')
  parser.add_argument('--rounds', type=int, default=4, help='speed: round-robin rounds')
  parser.add_argument('--steps', type=int, default=5, help='speed: timed calls per round')
  parser.add_argument('--seeds', type=int, default=3, help='quality: seeds per variant')
  parser.add_argument('--train_steps', type=int, default=0, help='quality: steps (0 = default)')
  parser.add_argument('--parts', default='',
                      help='fidelity: comma-separated subset of sweep,a,ablation,b,c,d,e,f,g1,g2,g3; '
                           'sizes: of sweep1500,sizes,remedies')
  parser.add_argument('--max-minutes', type=float, default=None,
                      help='fidelity: start no new run after this many minutes')
  parser.add_argument('--plan', action='store_true', help='fidelity: list the runs, run nothing')
  parser.add_argument('--jobs', type=int, default=1,
                      help='fidelity: runs trained at once, each in its own process pinned to one '
                           'CPU core')
  parser.add_argument('--scale', default='study', choices=['study', 'study_d128', 'study_w128'],
                      help='fidelity: the claims\' model scale (study_w128: twice the width, '
                           'the rest as study; study_d128: twice the width, batch and lengths, '
                           'for an accelerator)')
  args = parser.parse_args(argv)
  if args.quick:
    args.rounds, args.steps = min(args.rounds, 2), min(args.steps, 2)
  if (args.command in PLOTTING_COMMANDS and not args.plan
      and importlib.util.find_spec('matplotlib') is None):  # before anything is measured
    sys.exit(f'ERROR: `{args.command}` plots its results with matplotlib, which is not installed; '
             'install the benchmark extra: pip install -e ".[bench]"')

  from studies import t5x_compare  # pylint: disable=g-import-not-at-top
  t5x_python = None
  if args.command == 'all' and (args.t5x_python or os.environ.get(t5x_compare.T5X_PYTHON_ENV)):
    try:  # validated before any compile
      t5x_python = t5x_compare.t5x_python(args.t5x_python)
    except t5x_compare.T5XPythonError as e:
      sys.exit(f'ERROR: {e}')
  os.makedirs(args.out, exist_ok=True)
  from altup_t5x import csv_tables  # pylint: disable=g-import-not-at-top
  from studies import common  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  if args.command == 'all' and not args.quick:
    print(EXPECTED_DURATION, flush=True)
  if args.command in ('speed', 'all'):
    from studies import speed  # pylint: disable=g-import-not-at-top
    rows = speed.run_speed(args)
    csv_tables.write(os.path.join(args.out, 'speed.csv'), rows, speed.SPEED_COLUMNS,
                     float_format=common.FLOAT_FORMAT)
    common.write_meta(args.out, 'speed')
    speed.plot_speed(args.out)
  if args.command == 't5x':
    try:
      rows = t5x_compare.run_t5x(args)
    except ImportError as e:
      sys.exit(f'ERROR: `t5x` needs T5X importable ({e}); run it with the Python of a T5X '
               f'environment (see --t5x-python).')
    csv_tables.write(os.path.join(args.out, 't5x.csv'), rows, t5x_compare.T5X_COLUMNS,
                     float_format=common.FLOAT_FORMAT)
    common.write_meta(args.out, 't5x')
  if args.command == 'all':
    if t5x_python:
      cmd = [t5x_python, os.path.abspath(__file__), 't5x', '--out', args.out,
             '--rounds', str(args.rounds), '--steps', str(args.steps)] + (
                 ['--quick'] if args.quick else [])
      print('\n$ ' + ' '.join(cmd), flush=True)
      subprocess.run(cmd, check=False)
    else:
      print(f'\n(T5X comparison skipped: no --t5x-python and no {t5x_compare.T5X_PYTHON_ENV})')
  if args.command in ('quality', 'all'):
    from studies import quality  # pylint: disable=g-import-not-at-top
    results = quality.run_quality(args)
    json.dump(results, open(os.path.join(args.out, 'quality.json'), 'w'))
    quality.write_quality_csv(os.path.join(args.out, 'quality.csv'), results)
    quality.plot_quality(results, args.out)
    common.write_meta(args.out, 'quality')
  if args.command in ('fidelity', 'sizes'):
    from studies import fidelity  # pylint: disable=g-import-not-at-top
    from studies import sizes  # pylint: disable=g-import-not-at-top
    parts = [p for p in args.parts.split(',') if p] or None
    known = sizes.PARTS if args.command == 'sizes' else (
        'sweep', 'ablation', fidelity.LR_CHECK_PART, *fidelity.CLAIMS)
    if parts and set(parts) - set(known):
      sys.exit(f'ERROR: --parts {args.parts!r}: unknown part(s) {sorted(set(parts) - set(known))}; '
               f'`{args.command}` has {", ".join(known)}')
    if args.command == 'fidelity':
      fidelity.use_scale(args.scale)
    elif args.quick:
      sys.exit('ERROR: `sizes` has no --quick mode (its runs are the full study\'s); the study\'s '
               'smoke test is `fidelity --quick`')
    plan_fn = sizes.plan if args.command == 'sizes' else fidelity.plan
    if (args.command == 'sizes' and not args.plan and not args.quick and
        not os.path.exists(os.path.join(args.out, sizes.SPEED_CSV))):
      # Before any worker starts: the step-time ratios want the cores to themselves.
      sizes.measure_speed(args.out, log=lambda m: print(m, flush=True))
    if args.jobs > 1 and not args.plan:
      cmd = [sys.executable, os.path.abspath(__file__), args.command, '--out', args.out,
             '--scale', args.scale, '--jobs', '1'] + (['--parts', args.parts] if parts else []) + (
                 ['--max-minutes', str(args.max_minutes)] if args.max_minutes else []) + (
                     ['--quick'] if args.quick else [])
      cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
      procs = []
      for i in range(args.jobs):
        # Pinned after the start (a preexec_fn would fork this process, whose JAX threads may
        # already run: `sizes` measures its step times here first).
        procs.append(subprocess.Popen(cmd))
        if len(cores) >= args.jobs:
          os.sched_setaffinity(procs[-1].pid, {cores[i % len(cores)]})
        time.sleep(5)  # staggered: the first worker builds the data cache
      rcs = [p.wait() for p in procs]
      if any(rcs):
        sys.exit(f'ERROR: {args.command} workers exited with {rcs}')
    elif args.plan:
      runs = fidelity.load_runs(args.out)
      for s in plan_fn(runs, args.quick):
        if not parts or s['part'] in parts:
          state = 'done' if s['name'] in runs else ('todo' if s.get('ready', True) else 'wait')
          print(f'{state}  {s["part"]:9s} {s["name"]}')
    elif args.command == 'sizes':
      sizes.run(args.out, parts, args.max_minutes, log=lambda m: print(m, flush=True))
      fidelity.write_outputs(args.out)
    else:
      fidelity.run_study(args.out, parts, args.max_minutes, args.quick,
                         log=lambda m: print(m, flush=True))
      fidelity.write_outputs(args.out)
  if args.command == 'report' or args.write_report:
    from studies import report  # pylint: disable=g-import-not-at-top
    for path in report.write_all(args.out, ROOT):
      print(f'\nwrote {path}')
  print(f'\n{args.command}: {time.perf_counter() - t0:.0f}s', flush=True)


if __name__ == '__main__':
  main()
