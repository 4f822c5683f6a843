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
import contextlib
import ctypes
import importlib
import os
import re
import sys
import tempfile
import tokenize
from typing import Optional, Sequence

import jax

from altup_t5x.config import ConfigError, RunnerError


def _gin_value(value: str) -> str:
  v = value.strip()
  if not v or v[0] in '@%([{\'"' or v in ('True', 'False', 'None'):
    return v
  try:
    ast.literal_eval(v)
    return v
  except (ValueError, SyntaxError):
    return repr(v)


def gin_overrides(rest: Sequence[str], parser: argparse.ArgumentParser,
                  error_cls: type = RunnerError) -> list:
  """T5X-style `--gin.NAME=value` (or `--gin.NAME value`) arguments as gin binding strings; any
  other leftover argument is a parser error."""
  bindings, unknown = [], []
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
        raise error_cls(f'{arg} has no value: write --gin.NAME=value.')
      bindings.append(f'{name} = {_gin_value(value)}')
    else:
      unknown.append(arg)
    i += 1
  if unknown:
    parser.error(f'unrecognized arguments: {" ".join(unknown)}')
  return bindings


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
  bindings = list(args.gin_bindings) + gin_overrides(rest, parser)
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
  with _gin_errors(search):
    gin.parse_config_files_and_bindings(files, [], finalize_config=False)
  for binding in gin_bindings:  # one at a time, so that an error names the binding
    with _gin_errors(search, f'in the binding {binding!r} (--gin_bindings / --gin.NAME=value)'):
      gin.parse_config(binding)
  if finalize:
    with _gin_errors(search):
      gin.finalize()


@contextlib.contextmanager
def _gin_errors(search: Sequence[str], where: str = ''):
  """Parse errors of gin (and of Python's tokenizer under it) as one RunnerError."""
  where = f' {where}' if where else ''
  try:
    yield
  except IOError as e:
    raise RunnerError(f'a gin include could not be found: {e} (gin search paths: '
                      f'{list(search)}).') from e
  except (SyntaxError, ValueError, NameError, ImportError, AttributeError, TypeError,
          KeyError, tokenize.TokenError) as e:
    if 'gin.REQUIRED' in str(e):
      raise RunnerError(f'a required gin setting is missing: {e} (set it with '
                        '--gin.NAME=value)') from e
    location = next((line.strip() for line in str(e).splitlines()[1:]
                     if line.strip().startswith('In file')), '')
    raise RunnerError(f'malformed gin configuration{where}: {type(e).__name__}: '
                      f'{_first_line(e)}' + (f' ({location})' if location else '')) from e


def _first_line(e: BaseException) -> str:
  """An error's own message, without the context lines gin appends ("In call to ...")."""
  lines = str(e).strip().splitlines()
  return lines[0] if lines else type(e).__name__


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
  import_tensorflow_quietly()  # before gin imports the tasks (seqio imports TensorFlow)
  # finalize: as T5X, an unset %gin.REQUIRED macro (e.g. CHECKPOINT_PATH) is named right here.
  parse_gin(args.gin_file, args.gin_search_paths, args.gin_bindings, finalize=True)
  fn = getattr(importlib.import_module(f'altup_t5x.{module_name}'), fn_name)
  return call_configured(fn, module_name)


def run_cli(main, argv: Sequence[str], exit_codes=()) -> int:
  """Runs `main(argv)` and returns the exit status: 0, or for a configuration error (RunnerError,
  AltUpConfig's ConfigError: 2; a type in `exit_codes` ({type: code}): its code) one `ERROR:` line
  on stderr instead of a traceback. Other exceptions propagate."""
  codes = dict(exit_codes)
  try:
    main(list(argv))
  except (RunnerError, ConfigError, *codes) as e:
    code = next((c for t, c in codes.items() if isinstance(e, t)), 2)
    print(f'ERROR: {_first_line(e)}', file=sys.stderr, flush=True)
    return code
  return 0


def console_entry(main, exit_codes=()):
  """The console script / `python -m` entry: `sys.exit(run_cli(main, sys.argv[1:]))`."""
  sys.exit(run_cli(main, sys.argv[1:], exit_codes))


def check_output_dir(setting: str, path: Optional[str]) -> None:
  """A directory the run writes to must be a directory, or creatable as one."""
  if not path:
    return
  if '://' in path:  # gs:// etc.: checked by the filesystem when written
    return
  p = os.path.abspath(path)
  while not os.path.exists(p):
    p = os.path.dirname(p)
  if not os.path.isdir(p):
    what = 'is a file' if p == os.path.abspath(path) else f'is inside {p!r}, which is a file'
    raise RunnerError(f'{setting}={path!r} {what}; expected a directory (created if missing).')


def maybe_initialize_distributed(args) -> None:
  """jax.distributed for multi-host runs; a no-op on one process."""
  if args.multiprocess_gpu or args.coordinator_address:
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.process_count, process_id=args.process_index)


# --------------------------------------------------------------------------------------------------
# TensorFlow (input pipelines only) on a machine without CUDA.

# What TensorFlow's CUDA-enabled wheel prints on a machine with no NVIDIA driver: not errors, since
# TensorFlow only runs the input pipelines here (JAX picks its own devices).
_NO_CUDA_NOISE = [re.compile(p) for p in (
    r'^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR',
    r'cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine',
    r'cuda_platform\.cc:\d+\] failed call to cuInit',
)]


def cuda_driver_present() -> bool:
  """Whether the NVIDIA driver library (libcuda) can be loaded."""
  try:
    ctypes.CDLL('libcuda.so.1')
    return True
  except OSError:
    return False


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow and keeps it off accelerators, without its no-CUDA noise.

  TF_CPP_MIN_LOG_LEVEL defaults to 1 (TensorFlow's INFO lines off; warnings and errors stay).
  The lines TensorFlow prints before its logging is initialised and its failed cuInit are
  dropped only where no NVIDIA driver exists (where they say nothing); everything else it prints
  meanwhile is passed on to stderr unchanged. A no-op once TensorFlow is imported.
  """
  if 'tensorflow' in sys.modules:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  drop = [] if cuda_driver_present() else _NO_CUDA_NOISE
  with _filtered_stderr(drop):
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      return
    for kind in ('GPU', 'TPU'):  # initialises TensorFlow's devices now, inside the filter
      try:
        tf.config.set_visible_devices([], kind)
      except (RuntimeError, ValueError):
        pass


@contextlib.contextmanager
def _filtered_stderr(drop: Sequence['re.Pattern']):
  """Captures file descriptor 2 (C++ logging included) and re-emits the lines not in `drop`."""
  if not drop:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      for line in tmp.read().decode('utf-8', 'replace').splitlines(keepends=True):
        if not any(p.search(line) for p in drop):
          sys.stderr.write(line)
      sys.stderr.flush()
