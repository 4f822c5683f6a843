"""Metrics against values computed by hand (all scores are x100, as T5 reports them)."""
import numpy as np
import pytest

from altup_t5x.data import metrics


def test_accuracy():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 75.0}


def test_f1_binary_counts_invalid_as_wrong():
  # idx: 0 tp, 1 fn, 2 fp, 3 tn, 4 invalid (-1) on a positive -> fn.  F1 = 2/(2+1+2)
  out = metrics.f1_invalid_as_wrong([1, 1, 0, 0, 1], [1, 0, 1, 0, -1])
  assert out == pytest.approx({"f1": 40.0})
  # An invalid prediction on a negative target becomes a false positive: 2*1/(2+1+0).
  assert metrics.f1_invalid_as_wrong([1, 0], [1, 7]) == pytest.approx({"f1": 100 * 2 / 3})


def test_mean_multiclass_f1_cb_style():
  # class 0: tp 2 -> 1.0; class 1: tp 1, fp 1, fn 1 -> 0.5; class 2: tp 0 -> 0.0
  out = metrics.mean_multiclass_f1([0, 1, 2, 0, 1, 2], [0, 1, 1, 0, 2, -1], num_classes=3)
  assert out == pytest.approx({"mean_3class_f1": 50.0})


def test_matthews_corrcoef():
  # tp 2, tn 2, fp 1, fn 1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
  out = metrics.matthews_corrcoef([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1])
  assert out == pytest.approx({"matthews_corrcoef": 100 / 3})
  assert metrics.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1])["matthews_corrcoef"] == pytest.approx(100)
  assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0])["matthews_corrcoef"] == pytest.approx(-100)
  # Constant predictions: undefined correlation, reported as 0 (as sklearn does).
  assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1])["matthews_corrcoef"] == 0.0


def test_matthews_corrcoef_with_invalid_label_is_multiclass():
  # Labels {-1, 0, 1}; confusion rows=true: [[0,0,0],[1,1,0],[0,0,2]] (order -1, 0, 1)
  # n=4, correct=3, t=[0,2,2], p=[1,1,2]: cov_tp=3*4-(0+2+4)=6; pp=16-(1+1+4)=10; tt=16-8=8
  out = metrics.matthews_corrcoef([0, 0, 1, 1], [-1, 0, 1, 1])
  assert out["matthews_corrcoef"] == pytest.approx(100 * 6 / np.sqrt(10 * 8))


def test_pearson_and_spearman():
  t, p = [1, 2, 3, 4], [2, 4, 6, 9]
  # deviations t: -1.5 -.5 .5 1.5; p: -3.25 -1.25 .75 3.75 -> sum(dt*dp)=11.5, sum dt^2=5, sum dp^2=26.75
  assert metrics.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(100 * 11.5 / np.sqrt(5 * 26.75))
  # ranks differ by d = 0,1,1,0: rho = 1 - 6*2/(4*(16-1)) = 0.8
  assert metrics.spearman_corrcoef([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx({"spearman_corrcoef": 80.0})


def test_normalize_answer():
  assert metrics.normalize_answer("The  Quick, brown fox.") == "quick brown fox"
  assert metrics.normalize_answer("An apple a day") == "apple day"
  assert metrics.normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_squad_max_over_gold_answers():
  targets = [["Eiffel Tower", "tower"], ["a red dog barked"]]
  predictions = ["the Eiffel Tower!", "big red dog"]
  # q1: exact after normalisation; q2: 2 shared tokens of 3 and 3 -> F1 2/3, EM 0
  out = metrics.squad(targets, predictions)
  assert out == pytest.approx({"em": 50.0, "f1": 100 * (1 + 2 / 3) / 2})
  # A single string target is one gold answer.
  assert metrics.squad(["Paris"], ["paris"]) == pytest.approx({"em": 100.0, "f1": 100.0})


def test_record_deduplicates_queries():
  targets = [{"answers": ["Obama", "Barack Obama"], "group": (0, 0)},
             {"answers": ["Obama", "Barack Obama"], "group": (0, 0)},
             {"answers": ["Paris"], "group": (0, 1)}]
  predictions = ["Barack Obama", "ignored duplicate", "London"]
  assert metrics.record(targets, predictions) == pytest.approx({"em": 50.0, "f1": 50.0})


def test_multirc_f1a_and_exact_match():
  targets = [{"value": 1, "group": "a"}, {"value": 0, "group": "a"}, {"value": 1, "group": "b"}]
  predictions = [{"value": 1}, {"value": 0}, {"value": 0}]
  # F1a over answers: tp 1, fn 1 -> 2/3; EM: question a right, b wrong -> 1/2
  out = metrics.multirc(targets, predictions)
  assert out == pytest.approx({"f1a": 100 * 2 / 3, "exact_match": 50.0})


def test_glue_and_super_glue_averages():
  glue = {"cola": {"matthews_corrcoef": 40.0}, "sst2": {"accuracy": 90.0},
          "mrpc": {"f1": 80.0, "accuracy": 70.0}, "stsb": {"pearson_corrcoef": 60.0, "spearman_corrcoef": 62.0},
          "mnli_matched": {"accuracy": 80.0}, "mnli_mismatched": {"accuracy": 82.0}}
  out = metrics.glue_average(glue)
  # per task: 40, 90, 75, 61, 81
  assert out["mrpc"] == 75.0 and out["stsb"] == 61.0 and out["mnli"] == 81.0
  assert out["average"] == pytest.approx((40 + 90 + 75 + 61 + 81) / 5)
  assert metrics.glue_average(glue, exclude=["cola"])["average"] == pytest.approx((90 + 75 + 61 + 81) / 4)

  sg = {"boolq": {"accuracy": 80.0}, "cb": {"mean_3class_f1": 70.0, "accuracy": 90.0},
        "record": {"em": 60.0, "f1": 62.0}}
  assert metrics.super_glue_average(sg)["average"] == pytest.approx((80 + 80 + 61) / 3)
  with pytest.raises(ValueError, match="No scores"):
    metrics.super_glue_average({"unknown": {"accuracy": 1.0}})


def test_sequence_accuracy_is_named_apart_from_token_accuracy():
  assert metrics.sequence_accuracy(["a b", "c", "d"], ["a b", "c ", "d"]) == {
      "sequence_accuracy": pytest.approx(200.0 / 3)}
