r"""Pod planner: per-device memory, FLOPs and compile time of the real train step, on a CPU.

    python -m altup_t5x.plan configs/pretrain/c4_xl_altup_k2.gin --devices 32 --num_partitions 8
    python -m altup_t5x.plan gin/t5_1_1/small.gin gin/altup/k2.gin gin/runner/model.gin \
        gin/runner/pretrain.gin --devices 8 --num_partitions 1 --gin.BATCH_SIZE=64 --json
    python -m altup_t5x.plan ... --analytic        # shapes and shardings only, nothing compiled
    python -m altup_t5x.plan --pods-md             # PODS.md from benchmarks/pods.csv

Takes the gin files and `--gin.NAME=value` overrides of `t5x.train` (a file from configs/, or size +
variant + model gin + run gin) or of the standalone runner (gin/runner/model.gin + a run gin).
N devices are simulated on the host CPU (`--xla_force_host_platform_device_count`), the train step
is built exactly as the trainer builds it and compiled ahead of time from abstract shapes
(`jax.ShapeDtypeStruct`): no parameter is ever allocated.

* T5X backend (the MODEL is a `t5x.models` model): T5X's `PjitPartitioner` (with the gin's axis
  rules) on a ('data', 'model') `Mesh` built here -- on CPU T5X's default mesh puts every device
  on 'model' whatever `num_partitions` says -- T5X's `TrainStateInitializer` (train state and
  Adafactor state shapes and axes) and `t5x.trainer.train_with_lr` as the step.
* Runner backend (the MODEL is `altup_t5x.models.EncoderDecoderModel`): `partitioning.Partitioner`
  and `trainer.Trainer`'s train step (optax Adafactor).

Per device it reports parameter and optimizer-state bytes (from each array's shard shape under
its sharding), XLA's memory analysis of the compiled step (arguments, outputs, temporaries; peak =
arguments + outputs - aliased + temporaries), XLA's cost analysis (FLOPs and bytes accessed of the
per-device program; flops_per_step = per device x devices) and the lowering + compile time, and
whether that peak fits each accelerator's memory (`CHIPS`). `--analytic` stops after the shapes
and shardings: parameter and optimizer bytes only, for configurations too large to compile here;
the fit is then a lower bound (no activations).

This module is the command line; the planner itself is the package `altup_t5x.planning`.
"""
import argparse
import json
import sys
from typing import Any, Dict, Mapping, Sequence

from altup_t5x import csv_tables
from altup_t5x.planning import PlanError
from altup_t5x.planning import analysis
from altup_t5x.planning import pods
from altup_t5x.planning.chips import CHIPS, GiB, fits_table, format_gib
from altup_t5x.planning.pods import render_pods_md
from altup_t5x.planning.topology import check_topology

__all__ = ['CHIPS', 'GiB', 'JSON_KEYS', 'PlanError', 'check_topology', 'fits_table', 'main',
           'render_pods_md']

# The keys of --json's object that every plan has (tests and scripts read them).
JSON_KEYS = ('devices', 'mesh', 'params', 'param_bytes_per_device', 'optimizer_bytes_per_device',
             'temp_bytes_per_device', 'peak_bytes_per_device', 'flops_per_step',
             'compile_seconds', 'fits')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The command line, checked: a bad flag is a PlanError before anything is built."""
  parser = argparse.ArgumentParser(prog='python -m altup_t5x.plan', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('gin_files', nargs='*', help='gin files (also --gin_file)')
  parser.add_argument('--gin_file', action='append', default=[])
  parser.add_argument('--gin_search_paths', action='append', default=[])
  parser.add_argument('--gin_bindings', action='append', default=[])
  parser.add_argument('--devices', type=int, default=8, help='simulated devices (default 8)')
  parser.add_argument('--num_partitions', type=int, default=None,
                      help="size of the 'model' mesh axis (default: the gin's)")
  parser.add_argument('--chip', default=None, help=f'one of {sorted(CHIPS)} (default: all)')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  parser.add_argument('--backend', choices=('auto', 't5x', 'runner'), default='auto')
  parser.add_argument('--analytic', action='store_true', help='no compile: shapes/shardings only')
  parser.add_argument('--csv', default=None, help='append the result as a row to this CSV')
  parser.add_argument('--label', default=None, help='config name in the CSV row')
  parser.add_argument('--pods-md', dest='pods_md', action='store_true',
                      help='write PODS.md from benchmarks/pods.csv and exit')
  parser.add_argument('--pods-sweep', dest='pods_sweep', action='store_true',
                      help='--analytic rows for every configs/pretrain/c4_* file on its slices '
                           '(SLICES) into --csv')
  parser.add_argument('--pods-csv', dest='pods_csv', default='benchmarks/pods.csv')
  parser.add_argument('--pods-out', dest='pods_out', default='PODS.md')
  args, rest = parser.parse_known_args(list(argv))
  from altup_t5x import cli  # pylint: disable=g-import-not-at-top  (imports jax; no backend yet)
  bindings = list(args.gin_bindings) + cli.gin_overrides(rest, parser, PlanError)
  args.gin_files = list(args.gin_files) + [f for x in args.gin_file for f in x.split(',') if f]
  args.gin_search_paths = [p for x in args.gin_search_paths for p in x.split(',') if p]
  args.gin_bindings = bindings
  if args.chip is not None and args.chip not in CHIPS:
    raise PlanError(f'--chip={args.chip!r} is not known; allowed: {sorted(CHIPS)}.')
  if args.pods_sweep and not args.csv:
    raise PlanError('--pods-sweep needs --csv (e.g. --csv benchmarks/pods.csv).')
  if args.pods_sweep and not args.analytic:
    raise PlanError('--pods-sweep runs in --analytic mode only (compile rows one by one).')
  if not args.pods_md and not args.pods_sweep:
    if not args.gin_files:
      raise PlanError('no gin file given: pass a file from configs/ or size + variant + model + '
                      'run gin files.')
    if args.devices < 1:
      raise PlanError(f'--devices={args.devices} must be >= 1.')
    if args.num_partitions is not None and args.num_partitions < 1:
      raise PlanError(f'--num_partitions={args.num_partitions} must be >= 1.')
  return args


def format_text(r: Mapping[str, Any]) -> str:
  """The plan as the lines the command prints without --json."""
  lines = [
      f"backend: {r['backend_detail']}",
      f"mode: {r['mode']}   devices: {r['devices']}   mesh: {r['mesh']}   batch: "
      f"{r['batch_size']} x {r['task_feature_lengths']}",
      f"scan_layers: {r['scan_layers']}   remat_policy: {r['remat_policy']}",
      f"params: {r['params']:,}",
      'per device:',
      f"  parameters        {format_gib(r['param_bytes_per_device'])}",
      f"  optimizer state   {format_gib(r['optimizer_bytes_per_device'])}",
      f"  XLA arguments     {format_gib(r['argument_bytes_per_device'])}",
      f"  XLA temporaries   {format_gib(r['temp_bytes_per_device'])}",
      f"  XLA peak          {format_gib(r['peak_bytes_per_device'])}",
  ]
  if r['flops_per_device'] is not None and r['scan_layers']:
    lines.append('  (scan_layers: XLA counts the scanned loop body once, FLOPs are a lower bound)')
  if r['flops_per_device'] is not None:
    lines.append(f"  FLOPs             {r['flops_per_device']:.4g} per device, "
                 f"{r['flops_per_step']:.4g} per step")
  if r['bytes_accessed_per_device'] is not None:
    lines.append(f"  bytes accessed    {r['bytes_accessed_per_device']:.4g}")
  if r['compile_seconds'] is not None:
    lines.append(f"lowering + compile: {r['compile_seconds']:.1f} s")
  lines.append(f"fits ({r['fits_basis']}):")
  for chip, f in r['fits'].items():
    lines.append(f"  {chip:10s} {f['memory_bytes'] / GiB:7.2f} GiB  "
                 f"{'fits' if f['fits'] else 'DOES NOT FIT':12s} "
                 f"margin {f['margin_bytes'] / GiB:+.2f} GiB")
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> Dict[str, Any]:
  """Runs the command line `argv`; returns the plan ({} for --pods-md / --pods-sweep)."""
  args = parse_args(argv)
  gin_kwargs = dict(gin_search_paths=args.gin_search_paths, gin_bindings=args.gin_bindings,
                    backend=args.backend, chip=args.chip)
  if args.pods_sweep:
    pods.sweep(args.gin_files, args.csv, **gin_kwargs)
    return {}
  if args.pods_md:
    text = render_pods_md(csv_tables.read(args.pods_csv))
    with open(args.pods_out, 'w') as f:
      f.write(text)
    print(f'wrote {args.pods_out} ({len(text.splitlines())} lines) from {args.pods_csv}')
    return {}
  result = analysis.plan(args.gin_files, args.devices, args.num_partitions,
                         analytic=args.analytic, **gin_kwargs)
  if args.csv:
    label, size, variant = pods.config_label(args.gin_files)
    pods.append_csv(args.csv, pods.csv_row(result, args.label or label, size, variant))
  if args.json:
    print(json.dumps(result, sort_keys=True))
  else:
    print(format_text(result))
  return result


def console_main():
  try:
    main(sys.argv[1:])
  except PlanError as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except
    name = type(e).__name__
    if name in ('ConfigError', 'RunnerError'):
      print(f'ERROR: {e}', file=sys.stderr, flush=True)
      sys.exit(2)
    raise


if __name__ == '__main__':
  if analysis.gin_config.t5x_importable():
    # T5X's run gins (t5x/configs/runs/*.gin) bind `__main__.train`, the function that
    # `python -m t5x.train` runs: run as `python -m altup_t5x.plan`, this module is `__main__`
    # and offers T5X's (the planner never calls it).
    from t5x.train import train  # pylint: disable=g-import-not-at-top,unused-import
  console_main()
