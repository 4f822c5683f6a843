"""Every TFDS-backed task on hand-written rows (tfds.testing.mock_data), in T5's formats.

GCS is unreachable, so the tasks are re-registered with seqio's small test
SentencePiece model; the formats are checked on the pretokenized strings.
"""
import functools
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from altup_t5x.data import metrics
from altup_t5x.data import preprocessors as prep
from altup_t5x.data import tasks

TEST_SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece", "sentencepiece.model")
LENGTHS = {"inputs": 512, "targets": 64}


@pytest.fixture(scope="module")
def test_vocab():
  vocabulary = seqio.SentencePieceVocabulary(TEST_SPM, extra_ids=10)
  tasks.register_tasks(vocabulary=vocabulary)
  yield vocabulary
  tasks.register_tasks()  # restore the defaults for other test modules


_ROWS = {}     # "builder/config" -> list of example dicts
_REQUESTS = []  # (builder/config, split) seen by the mock


def _as_dataset(self, split, **unused_kwargs):
  key = f"{self.name}/{self.builder_config.name}" if self.builder_config else self.name
  _REQUESTS.append((key, str(split)))
  rows = _ROWS[key]
  return functools.reduce(lambda a, b: a.concatenate(b), [tf.data.Dataset.from_tensors(r) for r in rows])


def _run(task_name, builder, rows, split="validation"):
  _ROWS[builder] = rows
  task = seqio.get_mixture_or_task(task_name)
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
    ds = task.get_dataset(LENGTHS, split=split, shuffle=False, use_cached=False, try_in_mem_cache=False)
    out = list(ds.as_numpy_iterator())
  for ex in out:
    assert ex["targets"].dtype == np.int32 and ex["targets"][-1] == 1  # EOS appended
    if "inputs" in ex:
      assert ex["inputs"][-1] == 1
  return out


def _pairs(out):
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode()) for ex in out]


GLUE_CASES = [
    ("cola", [{"sentence": "The book was read.", "label": 1, "idx": 0},
              {"sentence": "Book the read was.", "label": -1, "idx": 1}],
     [("cola sentence: The book was read.", "acceptable"),
      ("cola sentence: Book the read was.", "<unk>")]),
    ("sst2", [{"sentence": "a charming journey", "label": 1, "idx": 0}],
     [("sst2 sentence: a charming journey", "positive")]),
    ("mrpc", [{"sentence1": "He left.", "sentence2": "He went away.", "label": 1, "idx": 0}],
     [("mrpc sentence1: He left. sentence2: He went away.", "equivalent")]),
    ("qqp", [{"question1": "Why?", "question2": "How?", "label": 0, "idx": 0}],
     [("qqp question1: Why? question2: How?", "not_duplicate")]),
    ("stsb", [{"sentence1": "A cat.", "sentence2": "A dog.", "label": np.float32(1.13), "idx": 0}],
     [("stsb sentence1: A cat. sentence2: A dog.", "1.2")]),
    ("mnli", [{"premise": "A man sleeps.", "hypothesis": "A man runs.", "label": 2, "idx": 0}],
     [("mnli hypothesis: A man runs. premise: A man sleeps.", "contradiction")]),
    ("qnli", [{"question": "Who?", "sentence": "Bob did.", "label": 0, "idx": 0}],
     [("qnli question: Who? sentence: Bob did.", "entailment")]),
    ("rte", [{"sentence1": "It rains.", "sentence2": "It is dry.", "label": 1, "idx": 0}],
     [("rte sentence1: It rains. sentence2: It is dry.", "not_entailment")]),
    ("wnli", [{"sentence1": "I saw it.", "sentence2": "It was seen.", "label": 1, "idx": 0}],
     [("wnli sentence1: I saw it. sentence2: It was seen.", "entailment")]),
]


@pytest.mark.parametrize("name,rows,expected", GLUE_CASES, ids=[c[0] for c in GLUE_CASES])
def test_glue_tasks(test_vocab, name, rows, expected):
  split = "validation_matched" if name == "mnli" else "validation"
  out = _run(tasks.glue_task_name(name), f"glue/{name}", rows, split=split)
  assert _pairs(out) == expected
  assert [int(ex["idx"]) for ex in out] == [r["idx"] for r in rows]


def test_glue_labels_match_tfds():
  for config in tfds.builder_cls("glue").BUILDER_CONFIGS:
    if config.name in tasks.GLUE_LABELS and config.name != "stsb":
      assert tuple(config.label_classes) == tasks.GLUE_LABELS[config.name], config.name
  for config in tfds.builder_cls("super_glue").BUILDER_CONFIGS:
    name = "wsc" if config.name == "wsc.fixed" else config.name
    if name in tasks.SUPER_GLUE_LABELS and name != "record" and config.name != "wsc":
      assert tuple(config.label_classes) == tasks.SUPER_GLUE_LABELS[name], config.name


def test_mnli_splits(test_vocab):
  row = [{"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 0}]
  _REQUESTS.clear()
  _run(tasks.glue_task_name("mnli"), "glue/mnli", row, split="validation_matched")
  _run(tasks.glue_task_name("mnli"), "glue/mnli", row, split="validation_mismatched")
  for variant in ("matched", "mismatched"):
    out = _run(tasks.glue_task_name(f"mnli_{variant}"), f"glue/mnli_{variant}", row)
    assert _pairs(out) == [("mnli hypothesis: H. premise: P.", "entailment")]
  assert _REQUESTS == [("glue/mnli", "validation_matched"), ("glue/mnli", "validation_mismatched"),
                       ("glue/mnli_matched", "validation"), ("glue/mnli_mismatched", "validation")]
  assert "train" not in seqio.get_mixture_or_task(tasks.glue_task_name("mnli_matched")).splits


def test_glue_mixture_evaluates_each_validation_set_once(test_vocab):
  """As seqio's Evaluator, evaluate the mixture's tasks that have a 'validation' split."""
  glue = seqio.get_mixture_or_task(tasks.GLUE_MIXTURE)
  evaluated = [t for t in glue.tasks if "validation" in t.splits and t.metric_fns]
  _REQUESTS.clear()
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
    for t in evaluated:
      _ROWS[t.source.tfds_dataset.name.split(":")[0]] = [{"idx": 0}]
      t.source.get_dataset(split="validation", shuffle=False)
  # Each (TFDS dataset, split) once: MNLI matched and mismatched, and no MNLI-matched twice.
  assert len(_REQUESTS) == len(set(_REQUESTS)) == len(tasks.GLUE_LABELS) + 1
  assert ("glue/mnli_matched", "validation") in _REQUESTS
  assert ("glue/mnli_mismatched", "validation") in _REQUESTS
  assert not any(name == "glue/mnli" for name, _ in _REQUESTS)


SUPER_GLUE_CASES = [
    ("boolq", "boolq", [{"question": "is it wet", "passage": "It rains.", "label": 1, "idx": 0}],
     [("boolq passage: It rains. question: is it wet", "True")]),
    ("cb", "cb", [{"premise": "It may rain.", "hypothesis": "It rains.", "label": 2, "idx": 0}],
     [("cb hypothesis: It rains. premise: It may rain.", "neutral")]),
    ("copa", "copa", [{"premise": "The glass broke.", "choice1": "It fell.", "choice2": "It sang.",
                       "question": "cause", "label": 0, "idx": 0}],
     [("copa choice1: It fell. choice2: It sang. premise: The glass broke. question: cause", "choice1")]),
    ("rte", "rte", [{"premise": "It rains.", "hypothesis": "It is wet.", "label": 0, "idx": 0}],
     [("rte hypothesis: It is wet. premise: It rains.", "entailment")]),
    ("wic", "wic", [{"sentence1": "A river bank.", "sentence2": "A savings bank.", "word": "bank",
                     "start1": 8, "start2": 10, "end1": 12, "end2": 14, "label": 0, "idx": 0}],
     [("wic sentence1: A river bank. sentence2: A savings bank. word: bank", "False")]),
    ("wsc", "wsc.fixed", [{"text": "Mark told Pete many lies about himself, which Pete included in his book.",
                           "span1_text": "Mark", "span1_index": 0, "span2_text": "his", "span2_index": 11,
                           "label": 1, "idx": 0}],
     [("wsc text: * Mark * told Pete many lies about himself, which Pete included in # his # book.", "True")]),
]


@pytest.mark.parametrize("name,config,rows,expected", SUPER_GLUE_CASES, ids=[c[0] for c in SUPER_GLUE_CASES])
def test_super_glue_tasks(test_vocab, name, config, rows, expected):
  out = _run(tasks.super_glue_task_name(name), f"super_glue/{config}", rows)
  assert _pairs(out) == expected


def test_multirc(test_vocab):
  rows = [{"paragraph": "<b>Sent 1: </b>Bob ran.<br>", "question": "Who ran?", "answer": "Bob",
           "label": 1, "idx": {"paragraph": 4, "question": 5, "answer": 6}}]
  out = _run(tasks.super_glue_task_name("multirc"), "super_glue/multirc", rows)
  assert _pairs(out) == [("multirc question: Who ran? answer: Bob paragraph: Sent 1: Bob ran. ", "True")]
  ex = out[0]
  assert (ex["idx/paragraph"], ex["idx/question"], ex["idx/answer"]) == (4, 5, 6)
  task = seqio.get_mixture_or_task(tasks.super_glue_task_name("multirc"))
  target = task.postprocess_fn("True", example=ex, is_target=True)
  assert target == {"value": 1, "group": (4, 5)}
  assert task.postprocess_fn("nonsense", example=ex, is_target=False) == {"value": -1}


def test_record_one_example_per_answer(test_vocab):
  rows = [{"passage": "The cat sat.\n@highlight\nCats sit\n@highlight\nDogs run", "query": "@placeholder sat.",
           "entities": ["cat", "Cats"], "answers": ["cat", "Cats"], "idx": {"passage": 0, "query": 7}},
          {"passage": "P", "query": "Q", "entities": ["E"], "answers": tf.constant([], tf.string),
           "idx": {"passage": 1, "query": 8}}]
  out = _run(tasks.super_glue_task_name("record"), "super_glue/record", rows)
  inputs = "record query: @placeholder sat. entities: cat, Cats passage: The cat sat. Cats sit. Dogs run"
  assert _pairs(out) == [(inputs, "cat"), (inputs, "Cats"),
                         ("record query: Q entities: E passage: P", "<unk>")]
  task = seqio.get_mixture_or_task(tasks.super_glue_task_name("record"))
  targets = [task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True) for ex in out]
  assert targets[0] == {"answers": ["cat", "Cats"], "group": (0, 7)} == targets[1]
  assert targets[2] == {"answers": ["<unk>"], "group": (1, 8)}
  assert task.metric_fns[0](targets, ["Cats", "x", "nothing"]) == {"em": 50.0, "f1": 50.0}


def test_squad(test_vocab):
  rows = [{"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
           "answers": {"text": ["France", "in France"], "answer_start": [12, 9]}}]
  out = _run(tasks.SQUAD, "squad/v1.1", rows)
  assert _pairs(out) == [("question: Where is Paris ? context: Paris is in France .", "France")]
  task = seqio.get_mixture_or_task(tasks.SQUAD)
  target = task.postprocess_fn(out[0]["targets_pretokenized"], example=out[0], is_target=True)
  assert target == ["France", "in France"]
  assert task.metric_fns[0]([target], ["in france"]) == {"em": 100.0, "f1": 100.0}


def test_trivia_qa_closed_book(test_vocab):
  rows = [{"question": "Who wrote Hamlet?", "question_id": "tc_1",
           "answer": {"value": "William Shakespeare", "aliases": ["Shakespeare", "Bard of Avon"]}}]
  out = _run(tasks.TRIVIA_QA, "trivia_qa/unfiltered.nocontext", rows)
  assert _pairs(out) == [("trivia_qa question: Who wrote Hamlet?", "William Shakespeare")]
  task = seqio.get_mixture_or_task(tasks.TRIVIA_QA)
  target = task.postprocess_fn("William Shakespeare", example=out[0], is_target=True)
  assert target == ["William Shakespeare", "Shakespeare", "Bard of Avon"]
  assert task.metric_fns[0]([target], ["shakespeare"])["em"] == 100.0


def test_c4_span_corruption(test_vocab):
  text = "the quick brown fox jumps over the lazy dog and then runs far away into the woods " * 3
  rows = [{"text": text, "url": "u", "timestamp": "t"}]
  task = seqio.get_mixture_or_task(tasks.C4_SPAN_CORRUPTION)
  _ROWS["c4/en"] = rows
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset), seqio.map_seed_manager(1):
    out = list(task.get_dataset({"inputs": 32, "targets": 16}, split="train", shuffle=False,
                                use_cached=False, try_in_mem_cache=False).as_numpy_iterator())
  original = test_vocab.encode(text)
  merged = sum((prep.merge_sentinels(ex["inputs"], ex["targets"], test_vocab) for ex in out), [])
  assert merged == original
  first_sentinel = test_vocab.vocab_size - 1
  assert all(ex["targets"][0] == first_sentinel for ex in out)


def test_classification_postprocess_and_metrics(test_vocab):
  cola = seqio.get_mixture_or_task(tasks.glue_task_name("cola"))
  assert [cola.postprocess_fn(s) for s in (b"acceptable", "unacceptable", "maybe")] == [1, 0, -1]
  assert cola.metric_fns[0]([1, 0, 1, 0], [1, 0, 0, 0]) == pytest.approx(
      metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, 0, 0]))
  stsb = seqio.get_mixture_or_task(tasks.glue_task_name("stsb"))
  assert stsb.postprocess_fn("3.4") == 3.4 and stsb.postprocess_fn("n/a") == -1.0
  cb = seqio.get_mixture_or_task(tasks.super_glue_task_name("cb"))
  names = set()
  for fn in cb.metric_fns:
    names |= set(fn([0, 1, 2], [0, 1, 1]))
  assert names == {"mean_3class_f1", "accuracy"}


def test_mixtures(test_vocab):
  glue = seqio.get_mixture_or_task(tasks.GLUE_MIXTURE)
  names = {t.name for t in glue.tasks}
  assert names == {tasks.glue_task_name(n) for n in list(tasks.GLUE_LABELS) + ["mnli_matched", "mnli_mismatched"]}
  assert glue.get_rate(seqio.get_mixture_or_task(tasks.glue_task_name("qqp"))) == 363846.0
  sg = seqio.get_mixture_or_task(tasks.SUPER_GLUE_MIXTURE)
  assert {t.name for t in sg.tasks} == {tasks.super_glue_task_name(n) for n in tasks.SUPER_GLUE_LABELS}
  assert sg.get_rate(seqio.get_mixture_or_task(tasks.super_glue_task_name("cb"))) == 250.0


def test_register_is_idempotent_and_names_are_ours(test_vocab):
  before = set(seqio.TaskRegistry.names())
  tasks.register_tasks(vocabulary=test_vocab)
  assert set(seqio.TaskRegistry.names()) == before
  ours = [n for n in before if n.startswith("altup_")]
  assert len(ours) == 2 + 12 + 10 + 2  # GLUE with AX, SuperGLUE with AX-b and AX-g
  task = seqio.get_mixture_or_task(tasks.glue_task_name("cola"))
  assert task.output_features["targets"].vocabulary is test_vocab
  assert task.output_features["inputs"].required is False and task.output_features["inputs"].add_eos
