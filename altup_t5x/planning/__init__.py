"""The pod planner's parts; its command line is `python -m altup_t5x.plan` (altup_t5x/plan.py).

  chips           memory per device of each accelerator, and the fit of a per-device need
  topology        simulated CPU devices, the ('data', 'model') mesh, topology errors
  gin_config      the gin files of t5x.train or of the standalone runner -> what is planned
  backend         the interface both backends implement, and the shape helpers they share
  t5x_backend     T5X's PjitPartitioner, TrainStateInitializer and train step
  runner_backend  the runner's Partitioner and Trainer
  analysis        shapes -> bytes per device; compile -> XLA's memory and cost analyses
  pods            rows of benchmarks/pods.csv and PODS.md, the pretrain configs on their slices
"""


class PlanError(ValueError):
  """A bad plan request (topology, files), found before anything is compiled."""
