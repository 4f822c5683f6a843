"""The command line of the runner entry points (train, eval, infer): flags, gin, errors.

Nothing here is specific to AltUp. The command line follows T5X (`t5x/gin_utils.py`):

    python -m altup_t5x.train --gin_search_paths=. \
      --gin_file=gin/t5_1_1/tiny.gin --gin_file=gin/altup/k2.gin \
      --gin_file=gin/runner/model.gin --gin_file=gin/runner/pretrain.gin \
      --gin.MODEL_DIR=\"/tmp/altup\" --gin.TRAIN_STEPS=100

`--gin.NAME=value` is `--gin_bindings='NAME = value'`; a value that is not a Python literal, a
gin reference (@...) or macro (%...) is taken as a string, so `--gin.MODEL_DIR=/tmp/x` works too.
"""
import argparse
import ast
import importlib
import os
import sys
from typing import Sequence

import jax

from altup_t5x.config import RunnerError


def _gin_value(value: str) -> str:
  v = value.strip()
  if not v or v[0] in '@%([{\'"' or v in ('True', 'False', 'None'):
    return v
  try:
    ast.literal_eval(v)
    return v
  except (ValueError, SyntaxError):
    return repr(v)


def parse_args(argv: Sequence[str], description: str = '') -> argparse.Namespace:
  """--gin_file (repeatable), --gin_search_paths (comma separated), --gin_bindings, --gin.X=v."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin file (repeatable, or comma separated); relative paths are looked '
                           'up in --gin_search_paths')
  parser.add_argument('--gin_search_paths', action='append', default=[],
                      help='comma-separated directories to look up gin files and includes in')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help="extra binding, e.g. 'TRAIN_STEPS = 10' (repeatable)")
  parser.add_argument('--multiprocess_gpu', action='store_true',
                      help='call jax.distributed.initialize() (multi-host)')
  parser.add_argument('--coordinator_address', default=None)
  parser.add_argument('--process_count', type=int, default=None)
  parser.add_argument('--process_index', type=int, default=None)
  args, rest = parser.parse_known_args(list(argv))
  bindings = list(args.gin_bindings)
  unknown = []
  i = 0
  while i < len(rest):
    arg = rest[i]
    if arg.startswith('--gin.'):
      body = arg[len('--gin.'):]
      if '=' in body:
        name, value = body.split('=', 1)
      elif i + 1 < len(rest):
        name, value = body, rest[i + 1]
        i += 1
      else:
        raise RunnerError(f'{arg} has no value: write --gin.NAME=value.')
      bindings.append(f'{name} = {_gin_value(value)}')
    else:
      unknown.append(arg)
    i += 1
  if unknown:
    parser.error(f'unrecognized arguments: {" ".join(unknown)}')
  args.gin_file = [f for item in args.gin_file for f in item.split(',') if f]
  args.gin_search_paths = [p for item in args.gin_search_paths for p in item.split(',') if p]
  args.gin_bindings = bindings
  return args


def _resolve_gin_file(path: str, search_paths: Sequence[str]) -> str:
  candidates = [path] if os.path.isabs(path) else [os.path.join(p, path) for p in search_paths]
  if not os.path.isabs(path):
    candidates.append(path)
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise RunnerError(f'gin file {path!r} not found (looked in: '
                    f'{", ".join(os.path.abspath(c) for c in candidates)}); check --gin_file and '
                    f'--gin_search_paths.')


def parse_gin(gin_files: Sequence[str], gin_search_paths: Sequence[str] = (),
              gin_bindings: Sequence[str] = (), finalize: bool = False) -> None:
  """Parses gin files and bindings; one clear RunnerError for a missing or malformed file."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  search = list(gin_search_paths) or ['.']
  for p in search:
    gin.add_config_file_search_path(p)
  if not gin_files:
    raise RunnerError('no --gin_file given: pass at least a size file, gin/runner/model.gin and a '
                      'run gin (see README "Standalone runner").')
  files = [_resolve_gin_file(f, search) for f in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, list(gin_bindings), finalize_config=finalize)
  except IOError as e:
    raise RunnerError(f'a gin include could not be found: {e} (gin search paths: {search}).') from e
  except (SyntaxError, ValueError, NameError, ImportError, AttributeError, TypeError,
          KeyError) as e:
    if 'gin.REQUIRED' in str(e):
      raise RunnerError(f'a required gin setting is missing: {e} (set it with '
                        '--gin.NAME=value)') from e
    raise RunnerError(f'malformed gin configuration: {type(e).__name__}: {e}') from e


def configured(fn):
  """The gin-configured version of a function registered by a gin file (dynamic registration)."""
  import gin  # pylint: disable=g-import-not-at-top
  try:
    return gin.get_configurable(fn)
  except ValueError:
    return fn


def call_configured(fn, what: str):
  """Calls a gin-configured function, turning unset REQUIRED macros into a RunnerError."""
  try:
    return configured(fn)()
  except (RuntimeError, ValueError, TypeError) as e:
    msg = str(e)
    if 'REQUIRED' in msg or 'required' in msg and 'gin' in msg.lower():
      raise RunnerError(f'{what}: a required gin setting is missing: {msg}') from e
    raise


def run_entry_point(argv, description: str, module_name: str, fn_name: str):
  """`python -m altup_t5x.<module>`: flags -> jax.distributed -> gin -> the configured function.

  The function is looked up on the importable module (not a `python -m` __main__ copy), because
  that is the object the gin files' `from altup_t5x import <module>` registers.
  """
  args = parse_args(argv, description=description)
  maybe_initialize_distributed(args)
  # finalize: as T5X, an unset %gin.REQUIRED macro (e.g. CHECKPOINT_PATH) is named right here.
  parse_gin(args.gin_file, args.gin_search_paths, args.gin_bindings, finalize=True)
  fn = getattr(importlib.import_module(f'altup_t5x.{module_name}'), fn_name)
  return call_configured(fn, module_name)


def console_entry(main, exit_codes=()):
  """Runs `main(sys.argv[1:])`; a RunnerError (exit 2) or an error in `exit_codes` ({type: code})
  is printed as one line instead of a traceback."""
  codes = dict(exit_codes)
  try:
    main(sys.argv[1:])
  except (RunnerError, *codes) as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    sys.exit(codes.get(type(e), 2))
  sys.exit(0)


def maybe_initialize_distributed(args) -> None:
  """jax.distributed for multi-host runs; a no-op on one process."""
  if args.multiprocess_gpu or args.coordinator_address:
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.process_count, process_id=args.process_index)
