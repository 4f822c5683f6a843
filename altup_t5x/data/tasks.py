"""seqio tasks and mixtures of altup-t5x, all named `altup_*` (no clash with `t5.data`).

Importing this module registers everything (re-import or `register_tasks()` again
replaces the entries, so it is idempotent). Registration reads no data and no
vocabulary file: both load on first use.

- `altup_embedded_span_corruption`: span corruption on the embedded KJV corpus with
  the locally trained `vocab.default_vocabulary()`; works offline after `pip install`.
- `altup_c4_span_corruption`: T5's C4 pretraining objective (TFDS `c4/en:3.1.0`).
- GLUE `altup_glue_{name}_v2` (TFDS glue 2.0.0), `altup_glue_mnli_{matched,mismatched}_v2`
  (eval only), mixture `altup_glue_v2_proportional`.
- SuperGLUE `altup_super_glue_{name}_v102` (TFDS super_glue 1.0.2), mixture
  `altup_super_glue_v102_proportional`.
- Test-split inference for the leaderboards (`altup_t5x.leaderboard`): the diagnostic sets
  `altup_glue_ax_v2` (MNLI's format) and `altup_super_glue_ax{b,g}_v102` (RTE's format), and the
  mixtures `altup_glue_v2_test` / `altup_super_glue_v102_test` of every task with a test split
  that the leaderboard scores (MNLI as its matched and mismatched tasks).
- `altup_squad_v010` (SQuAD v1.1) and `altup_trivia_qa_closed_book`.

TFDS tasks use `vocab.t5_vocabulary()` (T5's 32k SPM on GCS, or `$ALTUP_T5X_SPM_PATH`);
`register_tasks(vocabulary=...)` overrides it programmatically.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import seqio

from altup_t5x.data import corpus
from altup_t5x.data import metrics
from altup_t5x.data import preprocessors as prep
from altup_t5x.data import vocab as vocab_lib

EMBEDDED_SPAN_CORRUPTION = "altup_embedded_span_corruption"
C4_SPAN_CORRUPTION = "altup_c4_span_corruption"
GLUE_MIXTURE = "altup_glue_v2_proportional"
SUPER_GLUE_MIXTURE = "altup_super_glue_v102_proportional"
GLUE_TEST_MIXTURE = "altup_glue_v2_test"
SUPER_GLUE_TEST_MIXTURE = "altup_super_glue_v102_test"
SQUAD = "altup_squad_v010"
TRIVIA_QA = "altup_trivia_qa_closed_book"

C4_TFDS = "c4/en:3.1.0"
SQUAD_TFDS = "squad/v1.1:3.0.0"
TRIVIA_QA_TFDS = "trivia_qa/unfiltered.nocontext:1.1.0"


def glue_task_name(name: str) -> str:
  return f"altup_glue_{name}_v2"


def super_glue_task_name(name: str) -> str:
  return f"altup_super_glue_{name}_v102"


# Label names of the TFDS ClassLabel features (index = TFDS label id).
GLUE_LABELS = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "stsb": None,  # regression
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
}
SUPER_GLUE_LABELS = {
    "boolq": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"),
    "multirc": ("False", "True"),
    "record": None,  # extractive: answers are entity strings
    "rte": ("entailment", "not_entailment"),
    "wic": ("False", "True"),
    "wsc": ("False", "True"),
}
# Train-split sizes from the TFDS catalog (glue 2.0.0, super_glue 1.0.2): the
# "proportional" mixing rates, known without downloading the data.
GLUE_TRAIN_SIZES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846, "stsb": 5749,
                    "mnli": 392702, "qnli": 104743, "rte": 2490, "wnli": 635}
SUPER_GLUE_TRAIN_SIZES = {"boolq": 9427, "cb": 250, "copa": 400, "multirc": 27088,
                          "record": 100730, "rte": 2490, "wic": 5428, "wsc": 554}


# ----------------------------------------------------------------------------
# Postprocessors: decoded strings -> what the metrics compare.

def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def string_label_to_class_id(output, label_classes: Sequence[str], example=None,
                             is_target: bool = False) -> int:
  """Index of the decoded label in `label_classes`; -1 (counted wrong) if it is not one."""
  del example, is_target
  text = _text(output).strip()
  return label_classes.index(text) if text in label_classes else -1


def string_to_float(output, example=None, is_target: bool = False, default: float = -1.0) -> float:
  del example, is_target
  try:
    return float(_text(output))
  except ValueError:
    return default


def multirc_postprocess(output, example=None, is_target: bool = False):
  value = string_label_to_class_id(output, ("False", "True"))
  if not is_target:
    return {"value": value}
  group = (int(example["idx/paragraph"]), int(example["idx/question"]))
  return {"value": value, "group": group}


def _answers(example) -> list[str]:
  return [_text(a) for a in example["answers"]]


def qa_postprocess(output, example=None, is_target: bool = False):
  """Targets: all gold answers of the example; predictions: the decoded string."""
  return _answers(example) if is_target else _text(output)


def record_postprocess(output, example=None, is_target: bool = False):
  if not is_target:
    return _text(output)
  group = (int(example["idx/passage"]), int(example["idx/query"]))
  return {"answers": _answers(example) or ["<unk>"], "group": group}


# ----------------------------------------------------------------------------
# Registration helpers.

def _output_features(vocabulary: seqio.Vocabulary) -> dict:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def _add_task(name: str, **kwargs) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **kwargs)


def _add_mixture(name: str, tasks) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks)


def _text_preprocessors(format_fn, dataset_level: bool = False, **kwargs) -> list:
  """Formatting (an example function, or a dataset function if `dataset_level`) + tokenize + EOS."""
  fmt = format_fn if dataset_level else functools.partial(prep.map_examples, fn=format_fn, **kwargs)
  return [fmt, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]


def _span_corruption_preprocessors() -> list:
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      prep.span_corruption,
      seqio.preprocessors.append_eos_after_trim,
  ]


def _classification_metrics(name: str) -> tuple[list, object]:
  """(metric_fns, postprocess_fn) of a GLUE/SuperGLUE classification task, as T5."""
  labels = GLUE_LABELS.get(name) or SUPER_GLUE_LABELS.get(name)
  post = functools.partial(string_label_to_class_id, label_classes=labels)
  if name == "cola":
    return [metrics.matthews_corrcoef], post
  if name in ("mrpc", "qqp"):
    return [metrics.f1_invalid_as_wrong, metrics.accuracy], post
  if name == "cb":
    return [functools.partial(metrics.mean_multiclass_f1, num_classes=3), metrics.accuracy], post
  return [metrics.accuracy], post


def _register_glue(vocabulary: seqio.Vocabulary) -> list:
  features = _output_features(vocabulary)
  mixture = []
  for name, labels in GLUE_LABELS.items():
    splits = {"train": "train", "validation": "validation", "test": "test"}
    if name == "stsb":
      fmt = _text_preprocessors(prep.stsb_text)
      metric_fns = [metrics.pearson_corrcoef, metrics.spearman_corrcoef]
      post = string_to_float
    else:
      fmt = _text_preprocessors(prep.glue_text, benchmark_name=name, label_names=labels)
      metric_fns, post = _classification_metrics(name)
    if name == "mnli":
      # No "validation" split, as T5's glue_mnli_v002 (TFDS split names): an evaluator of the
      # mixture's "validation" split skips this task, so MNLI-matched and -mismatched are each
      # evaluated once, by the two eval-only tasks below.
      splits = {"train": "train", "validation_matched": "validation_matched",
                "validation_mismatched": "validation_mismatched",
                "test_matched": "test_matched", "test_mismatched": "test_mismatched"}
    _add_task(glue_task_name(name),
              source=seqio.TfdsDataSource(tfds_name=f"glue/{name}:2.0.0", splits=splits),
              preprocessors=fmt, output_features=features,
              postprocess_fn=post, metric_fns=metric_fns)
    mixture.append((glue_task_name(name), float(GLUE_TRAIN_SIZES[name])))

  # MNLI's two validation sets as separate eval-only tasks (T5's matched/mismatched).
  metric_fns, post = _classification_metrics("mnli")
  for variant in ("matched", "mismatched"):
    task = glue_task_name(f"mnli_{variant}")
    _add_task(task,
              source=seqio.TfdsDataSource(
                  tfds_name=f"glue/mnli_{variant}:2.0.0",
                  splits={"validation": "validation", "test": "test"}),
              preprocessors=_text_preprocessors(
                  prep.glue_text, benchmark_name="mnli", label_names=GLUE_LABELS["mnli"]),
              output_features=features, postprocess_fn=post, metric_fns=metric_fns)
    mixture.append((task, 0.0))  # no train split: evaluated, never sampled

  # The diagnostic set (TFDS glue/ax, a test split only) in MNLI's format, so that the MNLI model
  # predicts it (as T5's glue_ax_v002); inference only, in the test mixture, not in this one.
  _add_task(glue_task_name("ax"),
            source=seqio.TfdsDataSource(tfds_name="glue/ax:2.0.0", splits={"test": "test"}),
            preprocessors=_text_preprocessors(
                prep.glue_text, benchmark_name="mnli", label_names=GLUE_LABELS["mnli"]),
            output_features=features, postprocess_fn=post, metric_fns=[])
  return mixture


def _axb_text(x: Mapping) -> dict:
  """AX-b in SuperGLUE RTE's format (as T5's super_glue_axb_v102): sentence1/2 read as
  premise/hypothesis, so that the input reads as an RTE example."""
  pair = {"premise": x["sentence1"], "hypothesis": x["sentence2"], "label": x["label"],
          "idx": x["idx"]}
  return prep.glue_text(pair, benchmark_name="rte", label_names=SUPER_GLUE_LABELS["rte"])


def _register_super_glue(vocabulary: seqio.Vocabulary) -> list:
  features = _output_features(vocabulary)
  mixture = []
  for name, labels in SUPER_GLUE_LABELS.items():
    tfds_config = "wsc.fixed" if name == "wsc" else name
    if name == "record":
      fmt = _text_preprocessors(prep.record_text, dataset_level=True)
      metric_fns, post = [metrics.record], record_postprocess
    elif name == "multirc":
      fmt = _text_preprocessors(prep.glue_text, benchmark_name="multirc", label_names=labels,
                                feature_names=("question", "answer", "paragraph"))
      metric_fns, post = [metrics.multirc], multirc_postprocess
    elif name == "wsc":
      fmt = _text_preprocessors(prep.wsc_text)
      metric_fns, post = _classification_metrics(name)
    else:
      feature_names = ("sentence1", "sentence2", "word") if name == "wic" else None
      fmt = _text_preprocessors(prep.glue_text, benchmark_name=name, label_names=labels,
                                feature_names=feature_names)
      metric_fns, post = _classification_metrics(name)
    _add_task(super_glue_task_name(name),
              source=seqio.TfdsDataSource(
                  tfds_name=f"super_glue/{tfds_config}:1.0.2",
                  splits={"train": "train", "validation": "validation", "test": "test"}),
              preprocessors=fmt, output_features=features,
              postprocess_fn=post, metric_fns=metric_fns)
    mixture.append((super_glue_task_name(name), float(SUPER_GLUE_TRAIN_SIZES[name])))

  # The diagnostic sets (test split only) in RTE's format, so that the RTE model predicts them (as
  # T5's super_glue_ax{b,g}_v102); inference only, in the test mixture, not in this one.
  _, post = _classification_metrics("rte")
  for name, fmt in (("axb", _axb_text), ("axg", functools.partial(
      prep.glue_text, benchmark_name="rte", label_names=SUPER_GLUE_LABELS["rte"]))):
    _add_task(super_glue_task_name(name),
              source=seqio.TfdsDataSource(tfds_name=f"super_glue/{name}:1.0.2",
                                          splits={"test": "test"}),
              preprocessors=_text_preprocessors(fmt), output_features=features,
              postprocess_fn=post, metric_fns=[])
  return mixture


def register_tasks(vocabulary: Optional[seqio.Vocabulary] = None,
                   embedded_vocabulary: Optional[seqio.Vocabulary] = None) -> None:
  """(Re-)register every altup task and mixture.

  Args:
    vocabulary: for the TFDS tasks (C4, GLUE, SuperGLUE, SQuAD, TriviaQA); default
      `vocab.t5_vocabulary()`, which honours `$ALTUP_T5X_SPM_PATH` at call time.
    embedded_vocabulary: for `altup_embedded_span_corruption`; default
      `vocab.default_vocabulary()` (trained locally on first use).
  """
  vocabulary = vocabulary or vocab_lib.t5_vocabulary()
  embedded_vocabulary = embedded_vocabulary or vocab_lib.default_vocabulary()

  _add_task(EMBEDDED_SPAN_CORRUPTION,
            source=corpus.data_source(),
            preprocessors=_span_corruption_preprocessors(),
            output_features=_output_features(embedded_vocabulary),
            # Exact match of the decoded span targets: gives t5x.eval / the runner a seqio metric
            # on a pretraining task (T5's span-corruption tasks have none, and T5X's eval stops).
            metric_fns=[metrics.sequence_accuracy])
  _add_task(C4_SPAN_CORRUPTION,
            source=seqio.TfdsDataSource(tfds_name=C4_TFDS),
            preprocessors=_span_corruption_preprocessors(),
            output_features=_output_features(vocabulary),
            metric_fns=[])

  features = _output_features(vocabulary)
  _add_task(SQUAD,
            source=seqio.TfdsDataSource(tfds_name=SQUAD_TFDS,
                                        splits={"train": "train", "validation": "validation"}),
            preprocessors=_text_preprocessors(prep.squad_text),
            output_features=features, postprocess_fn=qa_postprocess,
            metric_fns=[metrics.squad])
  _add_task(TRIVIA_QA,
            source=seqio.TfdsDataSource(tfds_name=TRIVIA_QA_TFDS,
                                        splits={"train": "train", "validation": "validation"}),
            preprocessors=_text_preprocessors(prep.trivia_qa_text),
            output_features=features, postprocess_fn=qa_postprocess,
            metric_fns=[metrics.squad])

  _add_mixture(GLUE_MIXTURE, _register_glue(vocabulary))
  _add_mixture(SUPER_GLUE_MIXTURE, _register_super_glue(vocabulary))
  # Every task the leaderboards score, on its test split (T5X's infer runs each task of a mixture
  # on the split, and MNLI's own task has test_matched/test_mismatched, not "test").
  glue_test = [glue_task_name(n) for n in GLUE_LABELS if n != "mnli"] + [
      glue_task_name(n) for n in ("mnli_matched", "mnli_mismatched", "ax")]
  super_glue_test = [super_glue_task_name(n) for n in list(SUPER_GLUE_LABELS) + ["axb", "axg"]]
  _add_mixture(GLUE_TEST_MIXTURE, [(t, 1.0) for t in glue_test])
  _add_mixture(SUPER_GLUE_TEST_MIXTURE, [(t, 1.0) for t in super_glue_test])


register_tasks()
