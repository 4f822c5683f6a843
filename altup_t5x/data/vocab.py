"""Vocabularies: a small SentencePiece model trained on the embedded corpus, T5's, and bytes.

`default_vocabulary()` needs no network: on first use it trains a ~1,000-piece unigram
model on the train split of the embedded corpus (about 10 s on 2 cores) and caches it
under `corpus.cache_dir()`. Importing this module or constructing the vocabulary trains
nothing; the model file is produced when seqio first loads the model.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import tempfile
import threading
from typing import Optional

import seqio

from altup_t5x.data import corpus

T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
SPM_PATH_ENV = "ALTUP_T5X_SPM_PATH"
DEFAULT_EXTRA_IDS = 100
DEFAULT_VOCAB_SIZE = 1000

# T5's id convention; no BOS.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

_train_lock = threading.Lock()


def default_model_path(vocab_size: int = DEFAULT_VOCAB_SIZE) -> str:
  name = f"kjv_unigram_{vocab_size}_c{corpus.CORPUS_VERSION}.model"
  return os.path.join(corpus.cache_dir(), "vocab", name)


def _atomic_write(path: str, data: bytes) -> None:
  """Write via a temp file in the same directory + os.replace (atomic on POSIX).

  Readers never see a partial file (writers are serialised by `ensure_default_model`'s lock).
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".model")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache file should be readable like any other
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def train_sentencepiece(texts, vocab_size: int, num_threads: int = 2) -> bytes:
  """Serialized unigram SentencePiece model with T5's ids (pad 0, eos 1, unk 2, no bos).

  Input order is fixed and sentence sampling/shuffling is off, so the result is a
  function of `texts` and the settings only.
  """
  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)),
      model_writer=model,
      model_type="unigram",
      vocab_size=vocab_size,
      character_coverage=1.0,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
      num_threads=num_threads,
      shuffle_input_sentence=False,
      input_sentence_size=0,  # use every sentence, no random sampling
      max_sentence_length=8192,
      minloglevel=2,
  )
  return model.getvalue()


@contextlib.contextmanager
def _file_lock(path: str):
  """An exclusive lock on `path + ".lock"` across processes (fcntl; released on exit or crash)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "a") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_default_model(vocab_size: int = DEFAULT_VOCAB_SIZE, path: Optional[str] = None) -> str:
  """Returns the cached model path, training it on the corpus train split if missing.

  Concurrent first uses (threads or processes, e.g. two runs started at once) train it once:
  the first takes a file lock next to the model, the others wait for it and find the file.
  """
  path = path or default_model_path(vocab_size)
  if os.path.exists(path):
    return path
  with _train_lock, _file_lock(path):
    if not os.path.exists(path):
      _atomic_write(path, train_sentencepiece(corpus.texts("train"), vocab_size))
  return path


class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` whose model file is trained on first load.

  The path is known up front (so equality, pickling and gin copies work without
  touching disk); `_model_context`, the single place where seqio reads the file,
  first makes sure it exists.
  """

  def __init__(self, vocab_size: int = DEFAULT_VOCAB_SIZE, extra_ids: int = DEFAULT_EXTRA_IDS,
               model_path: Optional[str] = None):
    self._train_vocab_size = vocab_size
    super().__init__(model_path or default_model_path(vocab_size), extra_ids=extra_ids)

  def _model_context(self):
    if not self._model:
      ensure_default_model(self._train_vocab_size, self._sentencepiece_model_file)
    return super()._model_context()


def default_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS,
                       vocab_size: int = DEFAULT_VOCAB_SIZE) -> LazySentencePieceVocabulary:
  """~1,000-piece unigram SPM of the embedded corpus + `extra_ids` sentinels (offline)."""
  return LazySentencePieceVocabulary(vocab_size=vocab_size, extra_ids=extra_ids)


def t5_spm_path() -> str:
  """`$ALTUP_T5X_SPM_PATH` if set, else T5's public `cc_all.32000` model on GCS."""
  return os.environ.get(SPM_PATH_ENV) or T5_SPM_PATH


def t5_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """T5's 32k SentencePiece vocabulary with 100 sentinels (32,100 ids), as T5X uses.

  Loading is lazy; the GCS default needs network access, so offline set
  `ALTUP_T5X_SPM_PATH` to a local copy (any SentencePiece model path works).
  """
  return seqio.SentencePieceVocabulary(t5_spm_path(), extra_ids=extra_ids)


def byte_vocabulary(extra_ids: int = 0) -> seqio.ByteVocabulary:
  """UTF-8 bytes (ByT5 ids: pad 0, eos 1, unk 2, bytes 3..258), no file needed."""
  return seqio.ByteVocabulary(extra_ids=extra_ids)


def padded_vocab_size(vocabulary, multiple: int = 128) -> int:
  """The vocabulary size rounded up to a multiple (for NUM_EMBEDDINGS), as T5's 32128."""
  n = vocabulary.vocab_size
  return ((n + multiple - 1) // multiple) * multiple
