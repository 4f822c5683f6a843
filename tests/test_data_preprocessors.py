"""Span corruption pieces and text formats on hand-written inputs."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from altup_t5x.data import preprocessors as prep


class _StubVocab:
  """Only what the sentinel code reads: 90 regular ids + 10 extra ids."""
  vocab_size = 100
  extra_ids = 10
  eos_id = 1


def _np(d):
  return {k: v.numpy().tolist() for k, v in d.items()}


@pytest.mark.parametrize("inputs_length,expected", [
    (512, (568, 114)),  # T5's C4 setting: 483 kept + 28 sentinels + EOS; 85 noise + 28 + EOS
    (128, (141, 29)),   # 120 + 7 + 1; 21 + 7 + 1
    (626, (694, 140)),  # 590 + 35 + 1; 104 + 35 + 1
])
def test_random_spans_length(inputs_length, expected):
  assert prep.random_spans_length(inputs_length) == expected
  tokens, targets = expected
  assert prep.corrupted_lengths(tokens) == (inputs_length, targets)
  assert prep.corrupted_lengths(tokens + 1)[0] > inputs_length
  assert prep.random_spans_helper is prep.random_spans_length


def test_noise_mask_counts_and_layout():
  for length, seed in [(2, 1), (10, 2), (20, 3), (141, 4), (568, 5), (1000, 6)]:
    mask = prep.random_spans_noise_mask(length, tf.constant([seed, 7])).numpy()
    noise = min(max(round(length * 0.15), 1), length - 1)
    spans = max(round(noise / 3), 1)
    assert mask.shape == (length,) and mask.sum() == noise, length
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert len(starts) == spans, length
    assert not mask[0] and mask[-1]  # non-noise span first, noise span last
  assert prep.random_spans_noise_mask(1, tf.constant([0, 0])).numpy().tolist() == [False]


def test_noise_mask_is_random_and_seeded():
  a = prep.random_spans_noise_mask(200, tf.constant([1, 2])).numpy()
  b = prep.random_spans_noise_mask(200, tf.constant([1, 2])).numpy()
  c = prep.random_spans_noise_mask(200, tf.constant([3, 4])).numpy()
  assert (a == b).all() and (a != c).any()
  # Over many seeds every position but the first is sometimes noise, at ~15% on average.
  mask_fn = tf.function(lambda seed: prep.random_spans_noise_mask(50, seed))  # traced once
  masks = np.stack([mask_fn(tf.constant([s, 0])).numpy() for s in range(200)])
  assert masks[:, 0].sum() == 0 and masks[:, 1:].any(axis=0).all()
  assert masks.mean() == pytest.approx(8 / 50)  # round(7.5)=8 noise tokens (half to even)


def test_spans_to_sentinels_hand_example():
  tokens = tf.range(10, 20)
  mask = tf.constant([0, 0, 1, 1, 0, 1, 0, 0, 0, 1]) > 0
  v = _StubVocab()
  inputs = prep.spans_to_sentinels(tokens, mask, v).numpy().tolist()
  targets = prep.spans_to_sentinels(tokens, tf.logical_not(mask), v).numpy().tolist()
  assert inputs == [10, 11, 99, 14, 98, 16, 17, 18, 97]
  assert targets == [99, 12, 13, 98, 15, 97, 19]
  assert prep.merge_sentinels(inputs + [1], targets + [1], v) == list(range(10, 20))


def test_corrupt_tokens_roundtrip():
  v = _StubVocab()
  tokens = tf.constant(np.arange(2, 62), tf.int32)
  out = _np(prep.corrupt_tokens(tokens, tf.constant([5, 6]), v))
  assert prep.merge_sentinels(out["inputs"], out["targets"], v) == list(range(2, 62))
  # 60 tokens: 9 noise tokens in 3 spans
  assert len(out["inputs"]) == 51 + 3 and len(out["targets"]) == 9 + 3
  assert out["targets"][0] == 99 and out["inputs"][0] == 2


def _ds(rows):
  return tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(rows, dtype=tf.int32)})


def _rows(ds):
  return [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]


def test_concat_and_split_tokens():
  ds = prep.concat_examples(_ds([[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]), batch_size=2)
  assert _rows(ds) == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
  assert _rows(prep.split_tokens(ds, 3)) == [[5, 6, 7], [8, 9], [10, 11, 12], [13, 14]]
  assert _rows(prep.split_tokens(_ds([[1, 2, 3, 4], [5]]), 2)) == [[1, 2], [3, 4], [5]]


def test_select_random_chunk():
  rows = [[5, 6, 7], [8, 9], [], [10, 11, 12, 13, 14]]
  with seqio.map_seed_manager(3):
    got = _rows(prep.select_random_chunk(_ds(rows), max_length=2))
  assert len(got) == 3  # the empty example is dropped
  assert got[0] in ([5, 6], [7]) and got[1] == [8, 9] and got[2] in ([10, 11], [12, 13], [14])
  assert _rows(prep.select_random_chunk(_ds(rows), max_length=100)) == [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]


def test_span_corruption_requires_sentinels_and_length():
  class NoExtra(_StubVocab):
    extra_ids = 0
  features = {"targets": seqio.Feature(NoExtra())}
  with pytest.raises(ValueError, match="extra_ids"):
    prep.span_corruption(_ds([[3, 4]]), {"inputs": 16, "targets": 8}, features)
  with pytest.raises(ValueError, match="sequence_length"):
    prep.span_corruption(_ds([[3, 4]]), None, {"targets": seqio.Feature(_StubVocab())})


def test_span_corruption_preprocessor_lengths():
  v = _StubVocab()
  features = {"inputs": seqio.Feature(v), "targets": seqio.Feature(v)}
  stream = list(range(2, 82))  # 80 tokens in 4 documents
  ds = _ds([stream[:30], stream[30:45], stream[45:70], stream[70:]])
  with seqio.map_seed_manager(0):
    out = list(prep.span_corruption(ds, {"inputs": 16, "targets": 8}, features).as_numpy_iterator())
  tokens_length, _ = prep.random_spans_length(16)  # 17: 14 kept + 1 sentinel + EOS = 16
  assert tokens_length == 17
  merged = [prep.merge_sentinels(ex["inputs"], ex["targets"], v) for ex in out]
  assert [len(m) for m in merged] == [17, 17, 17, 17, 12]
  assert sum(merged, []) == stream
  assert all(len(ex["inputs"]) == 15 for ex in out[:4])  # EOS comes later, in the task


def _fmt(fn, **x):
  return _np_str(fn({k: tf.constant(v) for k, v in x.items()}))


def _np_str(d):
  return {k: (v.numpy().decode() if v.dtype == tf.string and v.shape.rank == 0 else v.numpy())
          for k, v in d.items()}


def test_glue_text_sorted_features_and_unk_label():
  out = _fmt(lambda x: prep.glue_text(x, "mnli", ("entailment", "neutral", "contradiction")),
             premise="A man sleeps.", hypothesis="A person rests.", label=-1, idx=3)
  assert out["inputs"] == "mnli hypothesis: A person rests. premise: A man sleeps."
  assert out["targets"] == "<unk>" and out["idx"] == 3


def test_stsb_rounds_to_fifths():
  for label, want in [(3.1, "3.2"), (2.94, "3.0"), (0.0, "0.0"), (4.5, "4.4"), (-1.0, "-1.0")]:
    out = _fmt(prep.stsb_text, sentence1="a", sentence2="b", label=np.float32(label), idx=0)
    assert out["targets"] == want, label  # 4.5*5 = 22.5 rounds half to even -> 22 -> 4.4


def test_wsc_marks_spans():
  out = _fmt(prep.wsc_text, text="Mark told Pete many lies about himself, which Pete included in his book.",
             span1_text="Pete", span1_index=2, span2_text="himself,", span2_index=6, label=1, idx=0)
  assert out["inputs"] == ("wsc text: Mark told * Pete * many lies about # himself, # "
                           "which Pete included in his book.")
  assert out["targets"] == "True"
  # Regex characters in a span are literal.
  out = _fmt(prep.wsc_text, text="He (Bob) left because he was ill.",
             span1_text="(Bob)", span1_index=1, span2_text="he", span2_index=4, label=0, idx=1)
  assert out["inputs"] == "wsc text: He * (Bob) * left because # he # was ill."


def test_pad_punctuation():
  assert prep.pad_punctuation(tf.constant("Hi, (there) x-y!  ok.")).numpy() == b"Hi , ( there ) x - y ! ok ."
