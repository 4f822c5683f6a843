"""Evaluation metrics with seqio's signature `fn(targets, predictions) -> {name: float}`.

Scores are percentages (x100), as T5 reports them. Pure NumPy/SciPy. Predictions
that a postprocessor could not map to a label arrive as -1 (class tasks) or -1.0
(STS-B) and count as wrong.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import scipy.stats


def accuracy(targets, predictions) -> dict:
  t, p = np.asarray(targets), np.asarray(predictions)
  return {"accuracy": 100.0 * float(np.mean(t == p))}


def sequence_accuracy(targets, predictions) -> dict:
  """Exact match of whole decoded target strings (x100), e.g. all spans of a span-corruption
  example; named apart from the token accuracy that eval reports as 'accuracy'."""
  t, p = np.asarray(targets), np.asarray(predictions)
  return {"sequence_accuracy": 100.0 * float(np.mean(t == p))}


def _f1(tp: int, fp: int, fn: int) -> float:
  denom = 2 * tp + fp + fn
  return 2.0 * tp / denom if denom else 0.0


def f1_invalid_as_wrong(targets, predictions, positive: int = 1) -> dict:
  """Binary F1 of class `positive`; a prediction outside {0, 1} counts as the wrong class."""
  t, p = np.asarray(targets), np.asarray(predictions)
  p = np.where(np.isin(p, [0, 1]), p, 1 - t)
  tp = int(np.sum((p == positive) & (t == positive)))
  fp = int(np.sum((p == positive) & (t != positive)))
  fn = int(np.sum((p != positive) & (t == positive)))
  return {"f1": 100.0 * _f1(tp, fp, fn)}


def mean_multiclass_f1(targets, predictions, num_classes: int) -> dict:
  """Unweighted mean over classes 0..num_classes-1 of one-vs-rest F1 (T5's CB metric)."""
  t, p = np.asarray(targets), np.asarray(predictions)
  scores = []
  for c in range(num_classes):
    tp = int(np.sum((p == c) & (t == c)))
    fp = int(np.sum((p == c) & (t != c)))
    fn = int(np.sum((p != c) & (t == c)))
    scores.append(_f1(tp, fp, fn))
  return {f"mean_{num_classes}class_f1": 100.0 * float(np.mean(scores))}


def matthews_corrcoef(targets, predictions) -> dict:
  """Matthews correlation (multiclass form from the confusion matrix; = phi for 2 classes)."""
  t, p = np.asarray(targets), np.asarray(predictions)
  labels = np.union1d(t, p)
  ti, pi = np.searchsorted(labels, t), np.searchsorted(labels, p)
  cm = np.zeros((len(labels), len(labels)), dtype=np.float64)
  np.add.at(cm, (ti, pi), 1)
  n = cm.sum()
  correct = np.trace(cm)
  true_counts, pred_counts = cm.sum(axis=1), cm.sum(axis=0)
  cov_tp = correct * n - true_counts @ pred_counts
  cov_pp = n * n - pred_counts @ pred_counts
  cov_tt = n * n - true_counts @ true_counts
  denom = np.sqrt(cov_pp * cov_tt)
  return {"matthews_corrcoef": 100.0 * float(cov_tp / denom) if denom else 0.0}


def pearson_corrcoef(targets, predictions) -> dict:
  return {"pearson_corrcoef": 100.0 * float(scipy.stats.pearsonr(
      np.asarray(targets, np.float64), np.asarray(predictions, np.float64))[0])}


def spearman_corrcoef(targets, predictions) -> dict:
  return {"spearman_corrcoef": 100.0 * float(scipy.stats.spearmanr(
      np.asarray(targets, np.float64), np.asarray(predictions, np.float64))[0])}


# ----------------------------------------------------------------------------
# SQuAD (v1.1 official answer normalisation), also used by ReCoRD and TriviaQA.

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
  """Lower case, drop punctuation, drop articles a/an/the, collapse whitespace."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def _exact(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(prediction: str, gold: str) -> float:
  p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
  same = sum((collections.Counter(p) & collections.Counter(g)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def _as_answer_list(t) -> list:
  if isinstance(t, Mapping):
    t = t["answers"]
  if isinstance(t, (str, bytes)):
    t = [t]
  return [a.decode() if isinstance(a, bytes) else str(a) for a in t]


def squad(targets: Sequence, predictions: Sequence[str]) -> dict:
  """Exact match and token F1, each the max over a question's gold answers, averaged.

  `targets[i]` is a list of gold answer strings (or one string, or a dict with "answers").
  Named "em" and "f1", as T5's `t5.evaluation.metrics.squad` (used for SQuAD, TriviaQA, ReCoRD).
  """
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions.")
  em, f1 = [], []
  for golds, pred in zip(targets, predictions):
    golds = _as_answer_list(golds)
    em.append(max(_exact(pred, g) for g in golds))
    f1.append(max(_token_f1(pred, g) for g in golds))
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def record(targets: Sequence[Mapping], predictions: Sequence[str]) -> dict:
  """ReCoRD: SQuAD EM/F1 per query, counting each (passage, query) group once.

  `targets[i]` = {"answers": [...], "group": hashable}; the training format makes one
  example per gold answer, so the first prediction of each group is scored.
  """
  seen, t_keep, p_keep = set(), [], []
  for t, p in zip(targets, predictions):
    if t["group"] in seen:
      continue
    seen.add(t["group"])
    t_keep.append(t["answers"])
    p_keep.append(p)
  return squad(t_keep, p_keep)


def multirc(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> dict:
  """MultiRC: F1 over all answer options (F1a) and exact match of whole questions (EM).

  `targets[i]` / `predictions[i]` = {"value": 0/1 (or -1), "group": question id}.
  """
  t = np.asarray([x["value"] for x in targets])
  p = np.asarray([x["value"] for x in predictions])
  groups = collections.defaultdict(list)
  for x, ok in zip(targets, t == p):
    groups[x["group"]].append(bool(ok))
  em = np.mean([all(v) for v in groups.values()])
  return {"f1a": f1_invalid_as_wrong(t, p)["f1"], "exact_match": 100.0 * float(em)}


# ----------------------------------------------------------------------------
# Benchmark averages.

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
SUPER_GLUE_TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")


def _benchmark_average(scores: Mapping[str, Mapping[str, float]], tasks: Iterable[str],
                       aliases: Mapping[str, Sequence[str]]) -> dict:
  """Mean over tasks of the mean of each task's metrics; tasks missing are skipped."""
  per_task = {}
  for task in tasks:
    names = aliases.get(task, (task,))
    values = [v for n in names if n in scores for v in scores[n].values()]
    if values:
      per_task[task] = float(np.mean(values))
  if not per_task:
    raise ValueError(f"No scores for any of {tuple(tasks)}; got {sorted(scores)}.")
  return {"average": float(np.mean(list(per_task.values()))), **per_task}


def glue_average(scores: Mapping[str, Mapping[str, float]],
                 exclude: Optional[Iterable[str]] = None) -> dict:
  """GLUE score: per task the mean of its metrics (MRPC/QQP: F1 and accuracy, STS-B:
  Pearson and Spearman, MNLI: matched and mismatched accuracy), then the mean over tasks.

  `scores` maps a task name (`cola`, ..., `mnli_matched`, `mnli_mismatched`) to that
  task's metric dict. Returns {"average": ..., task: task score}.
  """
  tasks = [t for t in GLUE_TASKS if t not in set(exclude or ())]
  return _benchmark_average(scores, tasks, {"mnli": ("mnli_matched", "mnli_mismatched", "mnli")})


def super_glue_average(scores: Mapping[str, Mapping[str, float]],
                       exclude: Optional[Iterable[str]] = None) -> dict:
  """SuperGLUE score: per task the mean of its metrics (CB: F1 and accuracy, MultiRC:
  F1a and EM, ReCoRD: F1 and EM), then the mean over the 8 tasks."""
  tasks = [t for t in SUPER_GLUE_TASKS if t not in set(exclude or ())]
  return _benchmark_average(scores, tasks, {})
