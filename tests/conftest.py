"""Test-session settings.

The suite is dominated by XLA compilation of tiny programs on 2 CPU cores. LLVM's optimisation
level 0 compiles them about a third faster (measured on tests/test_scan.py: 57 s -> 34 s for the
MoE scan equivalence), and at these shapes the slower generated code costs nothing. Both sides
of every equivalence the tests check are compiled under the same flag. Set before JAX creates
its CPU backend; subprocesses started by the tests inherit it. An XLA_FLAGS from the caller that
already sets the level wins.
"""
import os

_FLAG = '--xla_backend_optimization_level=0'
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
