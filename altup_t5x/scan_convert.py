"""Converts parameters between scanned and unrolled layer stacks (AltUpConfig.scan_layers).

An unrolled stack names its layers `layers_{i}`, `altup_{i}`, `sequence_altup_{i}` (i = 0..N-1);
a scanned one (see `altup_t5x.network`) holds one group of P = `AltUpConfig.layer_period()` members
`layers/{layers_j, altup_j, sequence_altup_j}` (j = 0..P-1) whose parameters carry an extra axis of
size N / P at `param_scan_axis`. Unrolled layer i is member j = i mod P at index i // P. Everything
else (embedding, relative position biases, final norms, logits) is the same in both.

    params = scan_convert.to_scanned(params, encoder_period=2, decoder_period=2, param_scan_axis=1)
    params = scan_convert.to_unrolled(params, param_scan_axis=1)

Checkpoints (parameters only; the optimizer state is not converted), T5X's (a checkpoint_<step>
directory or a T5X model dir) or the runner's, written in the format they came in:

    python -m altup_t5x.scan_convert --to scanned --period 2 --in MODEL_DIR --out NEW_DIR
    python -m altup_t5x.scan_convert --to unrolled --in T5X_DIR/checkpoint_20 --out NEW_DIR

The period is `AltUpConfig.layer_period()`: K for alternating AltUp, lcm with moe_every for MoE
and (encoder only) with the Sequence-AltUp stride; 1 for the plain network. `--out` must not exist;
the result is a checkpoint directory that eval/infer/INITIAL_CHECKPOINT_PATH read.
"""
import argparse
import os
import re
import sys
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

PyTree = Any
STACKS = ('encoder', 'decoder')
SCANNED_NAME = 'layers'
_MEMBER = re.compile(r'(layers|altup|sequence_altup)_(\d+)')


class ConvertError(ValueError):
  """The parameters do not have the layout the conversion expects."""


def _split_stack(stack: Mapping[str, PyTree]):
  layered, rest = {}, {}
  for name, sub in stack.items():
    m = _MEMBER.fullmatch(name)
    if m:
      layered[(m[1], int(m[2]))] = sub
    else:
      rest[name] = sub
  return layered, rest


def stack_to_scanned(stack: Mapping[str, PyTree], period: int, param_scan_axis: int = 1) -> Dict:
  """One unrolled stack's parameters -> scanned (the layer groups under 'layers')."""
  layered, rest = _split_stack(stack)
  if SCANNED_NAME in rest:
    raise ConvertError('the stack is already scanned (it has a `layers` group).')
  if not layered:
    return dict(rest)
  num_layers = 1 + max(i for prefix, i in layered if prefix == 'layers')
  if num_layers % period:
    raise ConvertError(f'{num_layers} layers are not a multiple of the period {period}.')
  members = {}
  for (prefix, i), _ in sorted(layered.items()):
    members.setdefault(f'{prefix}_{i % period}', []).append(i)
  group = {}
  for member, indices in members.items():
    prefix = member.rsplit('_', 1)[0]
    expected = list(range(int(member.rsplit('_', 1)[1]), num_layers, period))
    if indices != expected:
      raise ConvertError(f'layers {indices} of `{prefix}` do not repeat with period {period}.')
    subs = [layered[(prefix, i)] for i in indices]
    group[member] = jax.tree_util.tree_map(
        lambda *xs: np.stack([np.asarray(x) for x in xs], axis=param_scan_axis), *subs)
  out = dict(rest)
  out[SCANNED_NAME] = group
  return out


def stack_to_unrolled(stack: Mapping[str, PyTree], param_scan_axis: int = 1) -> Dict:
  """One scanned stack's parameters -> unrolled `layers_{i}`, `altup_{i}`, ..."""
  if SCANNED_NAME not in stack:
    layered, _ = _split_stack(stack)
    if layered:
      raise ConvertError('the stack is already unrolled (it has `layers_0`, ...).')
    return dict(stack)
  out = {k: v for k, v in stack.items() if k != SCANNED_NAME}
  group = stack[SCANNED_NAME]
  parsed = {}
  for member, sub in group.items():
    m = _MEMBER.fullmatch(member)
    if not m:
      raise ConvertError(f'unexpected member `{member}` in the scanned group.')
    parsed[(m[1], int(m[2]))] = sub
  period = 1 + max(j for prefix, j in parsed if prefix == 'layers')
  for (prefix, j), sub in parsed.items():
    leaves = jax.tree_util.tree_leaves(sub)
    count = np.shape(leaves[0])[param_scan_axis]
    for t in range(count):
      out[f'{prefix}_{t * period + j}'] = jax.tree_util.tree_map(
          lambda x, t=t: np.take(np.asarray(x), t, axis=param_scan_axis), sub)
  return out


def to_scanned(params: Mapping[str, PyTree], encoder_period: int, decoder_period: Optional[int] = None,
               param_scan_axis: int = 1) -> Dict:
  """Transformer parameters (unrolled) -> scanned; periods from `AltUpConfig.layer_period`."""
  periods = {'encoder': encoder_period,
             'decoder': encoder_period if decoder_period is None else decoder_period}
  return {k: stack_to_scanned(v, periods[k], param_scan_axis) if k in STACKS else v
          for k, v in params.items()}


def to_unrolled(params: Mapping[str, PyTree], param_scan_axis: int = 1) -> Dict:
  """Transformer parameters (scanned) -> unrolled."""
  return {k: stack_to_unrolled(v, param_scan_axis) if k in STACKS else v
          for k, v in params.items()}


def convert_checkpoint(src: str, dst: str, to: str, encoder_period: int = 1,
                       decoder_period: Optional[int] = None, param_scan_axis: int = 1) -> str:
  """Converts a checkpoint's parameters, in the format it is in: a T5X checkpoint (Orbax or
  legacy in, T5X Orbax `dst/checkpoint_<step>` out) or a runner one (`dst/checkpoints/<step>`).
  The step is kept; the optimizer state is not converted. `dst` must not exist. Returns the
  written step directory."""
  import flax  # pylint: disable=g-import-not-at-top
  from altup_t5x import convert  # pylint: disable=g-import-not-at-top
  if to not in ('scanned', 'unrolled'):
    raise ConvertError(f'--to={to!r}; allowed: scanned, unrolled.')
  if os.path.lexists(dst):
    raise ConvertError(f'--out={dst!r} exists; give a new directory (nothing is overwritten).')
  try:
    source = convert.open_checkpoint(src)
  except convert.ConvertError as e:
    raise ConvertError(str(e)) from e
  params = flax.traverse_util.unflatten_dict({p: source.read(p) for p in sorted(source.shapes)})
  if to == 'scanned':
    params = to_scanned(params, encoder_period, decoder_period, param_scan_axis)
  else:
    params = to_unrolled(params, param_scan_axis)
  flat = flax.traverse_util.flatten_dict(params)
  return convert.WRITERS[source.kind](dst, flat, source.step)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--to', required=True, choices=('scanned', 'unrolled'))
  parser.add_argument('--in', dest='src', required=True,
                      help='T5X checkpoint_<step> dir or T5X model dir (output: T5X Orbax), or a '
                           'runner model dir, its checkpoints/ dir or a step dir (output: runner)')
  parser.add_argument('--out', required=True, help='new directory (must not exist)')
  parser.add_argument('--period', type=int, default=1,
                      help='encoder layer period (AltUpConfig.layer_period(encoder=True)); '
                           'needed with --to scanned')
  parser.add_argument('--decoder_period', type=int, default=None,
                      help='decoder layer period (default: --period)')
  parser.add_argument('--param_scan_axis', type=int, default=1, choices=(0, 1))
  args = parser.parse_args(argv)
  try:
    out = convert_checkpoint(args.src, args.out, args.to, args.period, args.decoder_period,
                             args.param_scan_axis)
  except (ConvertError, OSError, ValueError) as e:  # RunnerError is a ValueError
    print(f'scan_convert: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
