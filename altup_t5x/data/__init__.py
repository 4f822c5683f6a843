"""Data for altup-t5x: embedded corpus, vocabularies, span corruption, seqio tasks, metrics.

Importing `altup_t5x.data.tasks` registers the `altup_*` seqio tasks and mixtures
(e.g. `MIXTURE_OR_TASK_MODULE = "altup_t5x.data.tasks"` in a T5X gin file). This
package module imports nothing heavy by itself.
"""
