"""seqio preprocessors: T5's span-corruption objective and text-to-text formats.

Span corruption (Raffel et al. 2020, section 3.1.4; T5's `span_corruption`) as used
for C4 pretraining: the token stream is cut into pieces of `random_spans_length(...)`
tokens, 15% of each piece (mean span 3) is replaced span-by-span by sentinels in the
inputs, and the targets list every sentinel followed by the tokens it replaced.
With inputs length 512 this gives 568-token pieces and 114-token targets (EOS
included), the lengths T5 uses.

Sentinels are the vocabulary's extra ids, highest id first (`vocab_size - 1` is
`<extra_id_0>`), as in T5; the number of spans per piece must not exceed the number
of extra ids (28 spans at inputs length 512, 100 extra ids).

All example-level functions are TF ops so they run inside seqio's tf.data pipeline.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


# ----------------------------------------------------------------------------
# Lengths.

def _num_noise(num_tokens: int, noise_density: float, mean_noise_span_length: float):
  num_noise_tokens = int(round(num_tokens * noise_density))
  num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
  return num_noise_tokens, num_noise_spans


def corrupted_lengths(num_tokens: int, noise_density: float = NOISE_DENSITY,
                      mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                      extra_tokens_per_span_inputs: int = 1,
                      extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
  """(inputs, targets) lengths, EOS included, after corrupting `num_tokens` tokens."""
  noise, spans = _num_noise(num_tokens, noise_density, mean_noise_span_length)
  inputs = num_tokens - noise + spans * extra_tokens_per_span_inputs + 1
  targets = noise + spans * extra_tokens_per_span_targets + 1
  return inputs, targets


def random_spans_length(inputs_length: int, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
  """Longest uncorrupted length whose corrupted inputs (with EOS) fit `inputs_length`.

  Same contract as T5's `random_spans_helper`: returns (tokens_length, targets_length),
  e.g. (568, 114) for inputs_length=512, density 0.15, mean span 3.
  """
  if inputs_length < 2:
    raise ValueError(f"inputs_length must be >= 2 for span corruption, got {inputs_length}.")
  lengths = functools.partial(
      corrupted_lengths, noise_density=noise_density,
      mean_noise_span_length=mean_noise_span_length,
      extra_tokens_per_span_inputs=extra_tokens_per_span_inputs,
      extra_tokens_per_span_targets=extra_tokens_per_span_targets)
  tokens_length = inputs_length
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  inputs, targets = lengths(tokens_length)
  # At density 0.5 the targets can come out one longer than the inputs; T5 then
  # shortens the piece by one so a model with equal lengths still fits.
  if noise_density == 0.5 and targets > inputs:
    tokens_length -= 1
    targets -= 1
  return tokens_length, targets


# Alias under T5's name for readers coming from T5.
random_spans_helper = random_spans_length


# ----------------------------------------------------------------------------
# Noise mask and sentinels.

def _random_composition(total: tf.Tensor, parts: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """`parts` positive int32 lengths summing to `total`, uniform over compositions.

  Picks `parts - 1` distinct cut points among 1..total-1.
  """
  scores = tf.random.stateless_uniform([total - 1], seed=seed)
  cuts = tf.sort(tf.gather(tf.range(1, total), tf.argsort(scores)[:parts - 1]))
  bounds = tf.concat([[0], cuts, [total]], axis=0)
  return bounds[1:] - bounds[:-1]


def random_spans_noise_mask(length, seed, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH):
  """Boolean [length] mask: alternating non-noise / noise spans, non-noise first.

  round(length * density) noise tokens (at least 1, at most length - 1) in
  max(1, round(noise / mean_span)) spans; the split of noise and of non-noise
  tokens into spans is random (stateless, from `seed`, an int [2] tensor).
  Lengths below 2 give an all-False mask.
  """
  orig_length = tf.convert_to_tensor(length, tf.int32)
  length = tf.maximum(orig_length, 2)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length), tf.int32)
  num_nonnoise = length - num_noise
  num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, num_nonnoise))
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
  noise_lengths = _random_composition(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_composition(num_nonnoise, num_spans, seeds[1])
  # [nonnoise_0, noise_0, nonnoise_1, noise_1, ...]
  span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  span_starts = tf.cumsum(span_lengths)[:-1]
  starts = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
  mask = tf.equal(tf.cumsum(starts) % 2, 1)
  mask = mask[:orig_length]
  return tf.logical_and(mask, orig_length >= 2)


def _check_sentinels(vocabulary: seqio.Vocabulary) -> None:
  if not vocabulary.extra_ids:
    raise ValueError(
        f"Span corruption takes its sentinels from the vocabulary's extra ids, but "
        f"{vocabulary} has extra_ids=0; build it with extra_ids=100 as T5 does.")


def spans_to_sentinels(tokens: tf.Tensor, mask: tf.Tensor, vocabulary: seqio.Vocabulary):
  """Replace each run of `mask`-ed tokens by one sentinel (vocab_size-1, -2, ... in order)."""
  mask = tf.cast(mask, tf.bool)
  previous = tf.concat([[False], mask[:-1]], axis=0)
  starts = tf.logical_and(mask, tf.logical_not(previous))
  continues = tf.logical_and(mask, previous)
  sentinel = vocabulary.vocab_size - tf.cumsum(tf.cast(starts, tokens.dtype))
  out = tf.where(starts, sentinel, tokens)
  return tf.boolean_mask(out, tf.logical_not(continues))


def corrupt_tokens(tokens: tf.Tensor, seed: tf.Tensor, vocabulary: seqio.Vocabulary,
                   noise_density: float = NOISE_DENSITY,
                   mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> dict:
  """One example: {"inputs": noise spans -> sentinels, "targets": kept spans -> sentinels}."""
  mask = random_spans_noise_mask(tf.size(tokens), seed, noise_density, mean_noise_span_length)
  return {
      "inputs": spans_to_sentinels(tokens, mask, vocabulary),
      "targets": spans_to_sentinels(tokens, tf.logical_not(mask), vocabulary),
  }


def merge_sentinels(inputs: Sequence[int], targets: Sequence[int], vocabulary: seqio.Vocabulary):
  """Inverse of `corrupt_tokens` (NumPy/Python): the original token list.

  EOS, if present at the end of either side, is dropped first. Used by tests and
  for inspecting pretraining examples.
  """
  def strip(x):
    x = [int(t) for t in x]
    return x[:-1] if x and x[-1] == vocabulary.eos_id else x

  first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
  inputs, targets = strip(inputs), strip(targets)
  fills: dict[int, list[int]] = {}
  current = None
  for t in targets:
    if t >= first_sentinel:
      current = fills.setdefault(t, [])
    elif current is not None:
      current.append(t)
  out: list[int] = []
  for t in inputs:
    out.extend(fills.get(t, []) if t >= first_sentinel else [t])
  return out


# ----------------------------------------------------------------------------
# Chunking long texts into pieces for packing.

def select_random_chunk(dataset: tf.data.Dataset, max_length: int = 65536,
                        feature_key: str = "targets") -> tf.data.Dataset:
  """Keep one uniformly chosen `max_length` window (aligned to multiples) per example.

  Drops empty examples and every feature other than `feature_key`.
  """
  @seqio.map_over_dataset(num_seeds=1)
  def _chunk(ex, seed):
    tokens = ex[feature_key]
    n = tf.size(tokens)
    num_windows = (n + max_length - 1) // max_length
    start = tf.random.stateless_uniform([], seed, 0, num_windows, dtype=tf.int32) * max_length
    return {feature_key: tokens[start:start + max_length]}

  dataset = dataset.filter(lambda ex: tf.size(ex[feature_key]) > 0)
  return _chunk(dataset)


def concat_examples(dataset: tf.data.Dataset, batch_size: int = 128,
                    feature_key: str = "targets") -> tf.data.Dataset:
  """Concatenate the tokens of `batch_size` consecutive examples (T5's `reduce_concat_tokens`)."""
  dataset = dataset.map(lambda ex: ex[feature_key], num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.ragged_batch(batch_size)
  return dataset.map(lambda rt: {feature_key: rt.flat_values}, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
  """Cut each example into consecutive pieces of `max_tokens_per_segment` (last may be shorter)."""
  size = max_tokens_per_segment

  def _split(ex):
    tokens = ex[feature_key]
    n = tf.size(tokens)
    remainder = tf.reshape(n % size, [1])
    row_lengths = tf.concat(
        [tf.fill([n // size], size), tf.boolean_mask(remainder, remainder > 0)], axis=0)
    pieces = tf.RaggedTensor.from_row_lengths(tokens, tf.cast(row_lengths, tf.int64))
    return tf.data.Dataset.from_tensor_slices({feature_key: pieces})

  return dataset.flat_map(_split)


# ----------------------------------------------------------------------------
# The full objective.

def span_corruption(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                    merge_examples_to_reduce_padding: bool = True,
                    input_feature_key: str = "inputs") -> tf.data.Dataset:
  """seqio preprocessor: tokenized "targets" -> span-corrupted {"inputs", "targets"}.

  Place after `seqio.preprocessors.tokenize` (and `seqio.CacheDatasetPlaceholder`)
  and before `seqio.preprocessors.append_eos_after_trim`.
  """
  if not sequence_length or not sequence_length.get(input_feature_key):
    raise ValueError(
        f"span_corruption needs sequence_length[{input_feature_key!r}] to size its pieces, "
        f"got sequence_length={sequence_length}.")
  vocabulary = output_features["targets"].vocabulary
  _check_sentinels(vocabulary)
  tokens_length, _ = random_spans_length(
      sequence_length[input_feature_key], noise_density, mean_noise_span_length)

  dataset = select_random_chunk(dataset, feature_key="targets")
  if merge_examples_to_reduce_padding:
    dataset = concat_examples(dataset, feature_key="targets")
  dataset = split_tokens(dataset, tokens_length, feature_key="targets")

  @seqio.map_over_dataset(num_seeds=1)
  def _corrupt(ex, seed):
    out = corrupt_tokens(ex["targets"], seed, vocabulary, noise_density, mean_noise_span_length)
    return {input_feature_key: out["inputs"], "targets": out["targets"]}

  return _corrupt(dataset)


# ----------------------------------------------------------------------------
# Text-to-text formats (T5's, as facts: benchmark name, "feature: value" pairs
# in sorted key order unless given, label names; "<unk>" for unlabeled -1 rows).

def _join(parts) -> tf.Tensor:
  return tf.strings.join(parts, separator=" ")


def _label_string(label, label_names: Sequence[str]) -> tf.Tensor:
  label = tf.cast(label, tf.int32)
  names = tf.constant(list(label_names))
  return tf.cond(label < 0, lambda: tf.constant("<unk>"),
                 lambda: tf.gather(names, tf.maximum(label, 0)))


def glue_text(x: Mapping[str, tf.Tensor], benchmark_name: str, label_names: Sequence[str],
              feature_names: Optional[Sequence[str]] = None) -> dict:
  """`{benchmark} {k1}: {v1} {k2}: {v2}` -> label name, e.g. `cola sentence: ...` -> `acceptable`."""
  keys = feature_names or sorted(k for k in x if k not in ("label", "idx"))
  parts = [benchmark_name]
  for k in keys:
    parts += [f"{k}:", x[k]]
  inputs = _join(parts)
  out = {"inputs": inputs, "targets": _label_string(x["label"], label_names)}
  if benchmark_name == "multirc":
    out["inputs"] = tf.strings.regex_replace(
        tf.strings.regex_replace(inputs, "<br>", " "), "<(/)?b>", "")
    for k in ("paragraph", "question", "answer"):
      out[f"idx/{k}"] = x["idx"][k]
  elif "idx" in x:
    out["idx"] = x["idx"]
  return out


def stsb_text(x: Mapping[str, tf.Tensor]) -> dict:
  """STS-B as T5: the score rounded to the nearest 0.2, printed with one decimal."""
  label = tf.strings.as_string(tf.round(tf.cast(x["label"], tf.float32) * 5) / 5, precision=1)
  inputs = _join(["stsb sentence1:", x["sentence1"], "sentence2:", x["sentence2"]])
  return {"inputs": inputs, "targets": label, "idx": x["idx"]}


def _regex_escape(s: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(s, r"([\\.^$|?*+()\[\]{}])", r"\\\1")


def _mark_span(text, span_text, word_index, mark: str):
  """Surround `span_text` found after `word_index` whitespace-separated words with `mark`."""
  pattern = tf.strings.join(
      [r"^((?:\S+\s){", tf.strings.as_string(word_index), "})(", _regex_escape(span_text), ")"])
  return tf.strings.regex_replace(text, pattern, rf"\1{mark} \2 {mark}")


def wsc_text(x: Mapping[str, tf.Tensor]) -> dict:
  """WSC as T5: `wsc text: Mark told * Pete * ... # he # ...` -> `False`/`True`."""
  text = _mark_span(x["text"], x["span1_text"], x["span1_index"], "*")
  # Marking span 1 added two words before span 2 when span 1 comes first.
  span2_index = x["span2_index"] + 2 * tf.cast(x["span1_index"] < x["span2_index"], x["span2_index"].dtype)
  text = _mark_span(text, x["span2_text"], span2_index, "#")
  return {"inputs": _join(["wsc text:", text]),
          "targets": _label_string(x["label"], ("False", "True")), "idx": x["idx"]}


def _record_passage(passage: tf.Tensor) -> tf.Tensor:
  passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD as T5: one example per gold answer (or one `<unk>` example when none).

  `record query: {query} entities: {e1, e2, ...} passage: {passage}` -> answer; the
  full answer list and the (passage, query) ids are kept for the metric.
  """
  def _per_answer(x):
    answers = x["answers"]
    n = tf.maximum(tf.size(answers), 1)
    targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant(["<unk>"]))
    inputs = _join(["record query:", x["query"], "entities:",
                    tf.strings.reduce_join(x["entities"], separator=", "),
                    "passage:", _record_passage(x["passage"])])
    repeat = lambda t: tf.fill([n], t)  # noqa: E731
    return tf.data.Dataset.from_tensor_slices({
        "inputs": repeat(inputs),
        "targets": targets,
        "answers": tf.RaggedTensor.from_tensor(tf.repeat(answers[tf.newaxis], n, axis=0)),
        "idx/passage": repeat(x["idx"]["passage"]),
        "idx/query": repeat(x["idx"]["query"]),
    })

  return dataset.flat_map(_per_answer)


_NON_WORD = r"(\W)"


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """Spaces around every non-word character, whitespace collapsed (T5's SQuAD input style)."""
  text = tf.strings.regex_replace(text, _NON_WORD, r" \1 ")
  return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def squad_text(x: Mapping[str, tf.Tensor], include_context: bool = True,
               pad_punct: bool = True) -> dict:
  """SQuAD as T5: `question: {q} context: {c}` -> first answer; `answers` keeps all.

  T5's preprocessor spaces out punctuation (`pad_punct=True`); the SQuAD metric
  normalises punctuation away, so scores do not depend on it.
  """
  norm = pad_punctuation if pad_punct else (lambda t: t)
  answers = norm(x["answers"]["text"])
  question, context = norm(x["question"]), norm(x["context"])
  if include_context:
    inputs = _join(["question:", question, "context:", context])
  else:
    inputs = _join(["squad trivia question:", question])
  return {"inputs": inputs, "targets": answers[0], "answers": answers, "id": x["id"],
          "question": question, "context": context}


def trivia_qa_text(x: Mapping[str, tf.Tensor]) -> dict:
  """Closed-book TriviaQA: `trivia_qa question: {q}` -> answer value; `answers` = value + aliases."""
  answer = x["answer"]
  return {"inputs": _join(["trivia_qa question:", x["question"]]),
          "targets": answer["value"],
          "answers": tf.concat([[answer["value"]], answer["aliases"]], axis=0)}


def map_examples(dataset: tf.data.Dataset, fn, **kwargs) -> tf.data.Dataset:
  """Dataset-level wrapper so an example function can be a seqio preprocessor."""
  return dataset.map(functools.partial(fn, **kwargs) if kwargs else fn,
                     num_parallel_calls=tf.data.AUTOTUNE)


def filter_empty_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.filter(lambda ex: tf.strings.length(ex["targets"]) > 0)
