"""Writes BENCHMARKS.md (and the README's results block) from the files in a benchmarks folder.

    python scripts/make_benchmarks_md.py benchmarks/    # same as: python scripts/benchmark.py report
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from studies import report  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  for path in report.write_all(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, 'benchmarks'),
                               ROOT):
    print(path)
