"""Runs a T5X script (t5x.train, t5x.eval, t5x.infer) on mock SuperGLUE, offline.

    python tests/t5x_mock_super_glue.py t5x.train \
      --gin_file=configs/smoke/tiny_baseline_finetune.gin \
      --gin.MIXTURE_OR_TASK_NAME="'altup_super_glue_v102_proportional'" ...

Every TFDS super_glue split is replaced by the few rows of `rows()` (tfds.testing.mock_data), and
the GLUE/SuperGLUE tasks are registered with the embedded corpus's vocabulary, the one of the
smoke configs' model (T5X checks that the task's and the model's vocabularies match). T5X's own
scripts then run unchanged, as `python -m <script>` would run them. Used by tests/test_t5x_route.py.
"""
import contextlib
import functools
import runpy
import sys
from unittest import mock as mock_lib

# Test rows per split; the test rows have no labels (-1), as the real test splits.
NUM_ROWS = {'train': 8, 'validation': 4, 'test': 5}
_WORDS = ('the king went out to the field and saw a great light over the river of life '
          'and he said unto them that the day was come').split()


def _text(i: int, n: int = 6) -> str:
  return ' '.join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(n)).capitalize() + '.'


def rows(config: str, split: str) -> list:
  """The mock rows of TFDS super_glue/<config> (its features, ids 0..n-1)."""
  n = NUM_ROWS[split]
  test = split == 'test'

  def label(i, k=2):
    return -1 if test else i % k

  if config == 'boolq':
    return [{'question': _text(i, 4).lower(), 'passage': _text(i + 1, 12), 'label': label(i),
             'idx': i} for i in range(n)]
  if config in ('cb', 'rte', 'axg'):
    k = 3 if config == 'cb' else 2
    return [{'premise': _text(i, 8), 'hypothesis': _text(i + 3, 5), 'label': label(i, k),
             'idx': i} for i in range(n)]
  if config == 'axb':
    return [{'sentence1': _text(i, 8), 'sentence2': _text(i + 3, 5), 'label': label(i),
             'idx': i} for i in range(n)]
  if config == 'copa':
    return [{'premise': _text(i, 6), 'choice1': _text(i + 1, 4), 'choice2': _text(i + 2, 4),
             'question': ('cause', 'effect')[i % 2], 'label': label(i), 'idx': i}
            for i in range(n)]
  if config == 'wic':
    return [{'word': 'light', 'sentence1': 'The light was great.', 'sentence2': _text(i, 5),
             'start1': 4, 'end1': 9, 'start2': 0, 'end2': 3, 'label': label(i), 'idx': i}
            for i in range(n)]
  if config == 'wsc.fixed':
    return [{'text': 'Mark told Pete he saw the light.', 'span1_text': ('Mark', 'Pete')[i % 2],
             'span1_index': 2 * (i % 2), 'span2_text': 'he', 'span2_index': 3, 'label': label(i),
             'idx': i} for i in range(n)]
  if config == 'multirc':  # n answers: 2 per question, 2 questions per paragraph
    return [{'paragraph': _text(a // 4, 14), 'question': _text(a // 2, 4) + '?',
             'answer': _text(a, 3), 'label': label(a),
             'idx': {'paragraph': a // 4, 'question': a // 2, 'answer': a}} for a in range(n)]
  if config == 'record':
    out = []
    for i in range(n):
      entity = ('Mark', 'Pete', 'Jordan', 'Egypt')[i % 4]
      out.append({'passage': f'{entity} went out. {_text(i, 10)}\n@highlight\n{_text(i + 1, 4)}',
                  'query': f'@placeholder went out to the field.',
                  'entities': [entity, 'Pete'],
                  'answers': [] if test else [entity],
                  'idx': {'passage': i, 'query': i}})
    return out
  raise KeyError(f'no mock rows for super_glue/{config}')


def _as_dataset(self, split, **unused_kwargs):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if self.name != 'super_glue':
    raise KeyError(f'only super_glue is mocked, not {self.name}')
  # String lists as tf.string even when empty (a bare [] would be float32).
  data = [{k: tf.constant(v, tf.string) if k in ('answers', 'entities') else v
           for k, v in r.items()} for r in rows(self.builder_config.name, str(split))]
  return functools.reduce(lambda a, b: a.concatenate(b),
                          [tf.data.Dataset.from_tensors(r) for r in data])


@contextlib.contextmanager
def mock():
  """Context in which TFDS super_glue reads `rows()`.

  seqio asks a TFDS source for its files (to decide where to shard: T5X passes a ShardInfo) and
  its size, which TFDS reads from the prepared data's metadata; the mock has none, so each split
  is one shard (read whole, as one host reads it) of `rows()`'s size.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def size(source, split):
    return len(rows(source.tfds_dataset.name.split('/')[1].split(':')[0], split))

  with tfds.testing.mock_data(as_dataset_fn=_as_dataset), mock_lib.patch.object(
      seqio.TfdsDataSource, 'list_shards', lambda self, split: [f'{split}-00000-of-00001']), \
      mock_lib.patch.object(seqio.TfdsDataSource, 'num_input_examples', size):
    yield


def register_tasks():
  from altup_t5x.data import tasks  # pylint: disable=g-import-not-at-top
  from altup_t5x.data import vocab  # pylint: disable=g-import-not-at-top
  tasks.register_tasks(vocabulary=vocab.default_vocabulary())


def main(argv):
  if len(argv) < 2 or not argv[1].startswith('t5x.'):
    raise SystemExit(f'usage: {argv[0]} t5x.train|t5x.eval|t5x.infer [flags]')
  script = argv[1]
  with mock():
    register_tasks()
    sys.argv = [script] + argv[2:]
    runpy.run_module(script, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main(sys.argv)
