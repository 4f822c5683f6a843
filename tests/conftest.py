"""Test-session settings.

The suite is dominated by XLA compilation of tiny programs on 2 CPU cores. LLVM's optimisation
level 0 compiles them about a third faster (measured on tests/test_scan.py: 57 s -> 34 s for the
MoE scan equivalence), and at these shapes the slower generated code costs nothing. Both sides
of every equivalence the tests check are compiled under the same flag. Set before JAX creates
its CPU backend; subprocesses started by the tests inherit it. An XLA_FLAGS from the caller that
already sets the level wins.

The repository root goes on sys.path so that the tests import this checkout's `studies/` (the
benchmark code, which is not installed) as the scripts do.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

_FLAG = '--xla_backend_optimization_level=0'
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
