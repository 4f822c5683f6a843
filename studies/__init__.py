"""Benchmarks of this library: what is measured, and the report generated from the measurements.

  speed        step / forward / decode time, memory and FLOPs per variant (`speed.csv`)
  t5x_compare  our K=1 network against T5X's `t5x.examples.t5.network` (`t5x.csv`)
  quality      eval-loss curves on the embedded corpus (`quality.json`, `quality.csv`)
  fidelity     the paper-claims study: LR sweep, seeds, verdicts (`fidelity/`, `fidelity.csv`)
  report       BENCHMARKS.md (and the README's results block) from those files, nothing else

The command line is `scripts/benchmark.py`.
"""
