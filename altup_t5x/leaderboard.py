r"""GLUE and SuperGLUE leaderboard submissions from test-split predictions.

    # Predictions of every task on its test split, by T5X (ids kept by the test-split gin) ...
    python -m t5x.infer --gin_file=configs/infer/super_glue_small_altup_k2.gin \
      --gin_file=gin/t5x_infer_super_glue_test.gin \
      --gin.CHECKPOINT_PATH="'...'" --gin.INFER_OUTPUT_DIR="'/tmp/sg_test'"
    # ... or by the runner (python -m altup_t5x.infer with MIXTURE_OR_TASK_NAME the test mixture,
    # infer/datasets.DatasetConfig.split = 'test' and MAX_EXAMPLES = None), then:
    python -m altup_t5x.leaderboard --benchmark=super_glue --predictions=/tmp/sg_test \
      --output=/tmp/super_glue_submission.zip

The zip holds one file per leaderboard task at its root, as the leaderboards take it:
  * SuperGLUE (super.gluebenchmark.com): BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC, WSC, AX-b,
    AX-g, each `<name>.jsonl` with one `{"idx": ..., "label": ...}` line per test example;
    MultiRC one line per paragraph, `{"idx": p, "passage": {"questions": [{"idx": q, "answers":
    [{"idx": a, "label": 0|1}, ...]}, ...]}}`; ReCoRD `{"idx": <query idx>, "label": "<entity>"}`.
  * GLUE (gluebenchmark.com): CoLA, SST-2, MRPC, STS-B, QQP, MNLI-m, MNLI-mm, QNLI, RTE, WNLI, AX,
    each `<name>.tsv` with the header `index<TAB>prediction` and one line per test example.

The diagnostic sets have no training data: AX-b and AX-g (TFDS super_glue/axb, super_glue/axg)
are predicted by the model finetuned on SuperGLUE RTE, AX (glue/ax) by the model finetuned on
MNLI. Their tasks (`altup_super_glue_ax{b,g}_v102`, `altup_glue_ax_v2`) format the examples as RTE
/ MNLI inputs and are in the test mixtures `altup_super_glue_v102_test` / `altup_glue_v2_test`.

Nothing is written unless the whole submission is valid: every file present, every test id
predicted exactly once, every prediction a label of its task (or `--unknown_label=first`). The ids
are compared with the TFDS test split when it can be read (`--tfds_data_dir`), else with the
published test sizes (ids 0..n-1; MultiRC and ReCoRD by count). The zip is assembled in memory
and moved into place in one step, so a refused or interrupted export leaves OUTPUT as it was.
"""
# Formats, as the leaderboards' own toolkit writes them (facts checked, no code taken): jiant v1
# `jiant/evaluate.py` (nyu-mll/jiant at 093c556, 2020-09-03: GLUE_NAME_MAP, SUPERGLUE_NAME_MAP,
# `_write_*_preds`) and jiant v2 (`jiant/scripts/benchmarks/benchmarks.py`, `jiant/tasks/lib/*.py`
# `get_glue_preds` / `super_glue_format_preds`): file names; GLUE TSV header `index\tprediction`,
# CoLA/SST-2/MRPC/QQP/WNLI as 0/1, MNLI/AX, QNLI, RTE as label names, STS-B a number; SuperGLUE
# BoolQ and WiC "true"/"false", WSC "True"/"False", CB/RTE/AX-b/AX-g label names, COPA 0/1,
# MultiRC nested per paragraph and question with 0/1 answers, ReCoRD the answer text per query.
# Test sizes: the glue and super_glue dataset cards of Hugging Face datasets (num_examples of each
# test split; the same source files as TFDS glue 2.0.0 and super_glue 1.0.2).
import argparse
import collections
import dataclasses
import io
import json
import math
import os
import re
import sys
import tempfile
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from altup_t5x.data import tasks as tasks_lib

BENCHMARKS = ('glue', 'super_glue')
FORMATS = ('auto', 't5x', 'runner')
IDS_FROM = ('auto', 'split', 'size')
UNKNOWN_LABEL = ('error', 'first')
MULTIRC_IDS = ('idx/paragraph', 'idx/question', 'idx/answer')
RECORD_IDS = ('idx/passage', 'idx/query')
STSB_RANGE = (0.0, 5.0)
_SHOWN = 10  # ids listed per problem
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same predictions give the same zip


class LeaderboardError(ValueError):
  """The predictions cannot make a valid submission; the message names the files and ids."""


@dataclasses.dataclass(frozen=True)
class LeaderboardFile:
  """One file of a submission and the seqio task whose test-split predictions fill it.

  `style` says how a predicted label (one of the task's target strings, TFDS label order) is
  written: 'index' its TFDS class id, 'name' the string itself, 'lower' lower-cased, 'score' a
  number (STS-B), 'multirc' 0/1 answers nested per question, 'record' the answer text.
  `test_size` is the number of test examples (MultiRC: answers, ReCoRD: queries).
  """
  name: str
  task: str
  style: str
  test_size: int

  @property
  def filename(self) -> str:
    return f'{self.name}.{"tsv" if self.task.startswith("altup_glue_") else "jsonl"}'

  @property
  def labels(self) -> Tuple[str, ...]:
    short = re.sub(r'^altup_(super_)?glue_|_v2$|_v102$', '', self.task)
    if short in ('ax', 'mnli_matched', 'mnli_mismatched'):
      short = 'mnli'
    if short in ('axb', 'axg'):
      short = 'rte'
    table = tasks_lib.SUPER_GLUE_LABELS if 'super_glue' in self.task else tasks_lib.GLUE_LABELS
    return tuple(table[short] or ())

  def leaderboard_label(self, text: str) -> Any:
    """The leaderboard's label for the predicted target string (one of `self.labels`)."""
    if self.style in ('index', 'multirc'):
      return self.labels.index(text)
    return text.lower() if self.style == 'lower' else text


def _sg(name, short, style, size):
  return LeaderboardFile(name, tasks_lib.super_glue_task_name(short), style, size)


def _glue(name, short, style, size):
  return LeaderboardFile(name, tasks_lib.glue_task_name(short), style, size)


FILES = {
    'super_glue': (
        _sg('BoolQ', 'boolq', 'lower', 3245),
        _sg('CB', 'cb', 'name', 250),
        _sg('COPA', 'copa', 'index', 500),
        _sg('MultiRC', 'multirc', 'multirc', 9693),
        _sg('ReCoRD', 'record', 'record', 10000),
        _sg('RTE', 'rte', 'name', 3000),
        _sg('WiC', 'wic', 'lower', 1400),
        _sg('WSC', 'wsc', 'name', 146),
        _sg('AX-b', 'axb', 'name', 1104),
        _sg('AX-g', 'axg', 'name', 356),
    ),
    'glue': (
        _glue('CoLA', 'cola', 'index', 1063),
        _glue('SST-2', 'sst2', 'index', 1821),
        _glue('MRPC', 'mrpc', 'index', 1725),
        _glue('STS-B', 'stsb', 'score', 1379),
        _glue('QQP', 'qqp', 'index', 390965),
        _glue('MNLI-m', 'mnli_matched', 'name', 9796),
        _glue('MNLI-mm', 'mnli_mismatched', 'name', 9847),
        _glue('QNLI', 'qnli', 'name', 5463),
        _glue('RTE', 'rte', 'name', 3000),
        _glue('WNLI', 'wnli', 'index', 146),
        _glue('AX', 'ax', 'name', 1104),
    ),
}
TEST_MIXTURES = {'glue': tasks_lib.GLUE_TEST_MIXTURE,
                 'super_glue': tasks_lib.SUPER_GLUE_TEST_MIXTURE}
TEST_GINS = {'glue': 'gin/t5x_infer_glue_test.gin',
             'super_glue': 'gin/t5x_infer_super_glue_test.gin'}


# --------------------------------------------------------------------------------------------------
# Finding and reading prediction files.

_T5X_NAME = re.compile(r'^(?P<task>.+)-(?P<mode>predict|predict_with_aux)\.jsonl-'
                       r'(?P<shard>\d{5})-of-(?P<shards>\d{5})$')
_RUNNER_NAME = re.compile(r'^(?P<task>.+)-predict\.jsonl$')


def _classify(path: str, fmt: str) -> Optional[Tuple[str, str, Optional[Tuple[int, int]]]]:
  """(task, format, (shard, shards) or None) of a prediction file name, None if it is not one."""
  base = os.path.basename(path)
  m = _T5X_NAME.match(base)
  if m and fmt in ('auto', 't5x'):
    return m.group('task'), f't5x:{m.group("mode")}', (int(m.group('shard')),
                                                        int(m.group('shards')))
  m = _RUNNER_NAME.match(base)
  if m and fmt in ('auto', 'runner'):
    return m.group('task'), 'runner', None
  return None


def find_prediction_files(paths: Sequence[str], fmt: str = 'auto') -> Dict[str, List[str]]:
  """{seqio task: its prediction files} from directories (not recursive) and files.

  T5X's `t5x.infer` writes `<task>-predict.jsonl-<shard>-of-<shards>` (all shards are needed),
  the runner's `altup_t5x.infer` writes `<task>-predict.jsonl`.
  """
  if fmt not in FORMATS:
    raise LeaderboardError(f'--format={fmt!r}: expected one of {FORMATS}.')
  if not paths:
    raise LeaderboardError('--predictions: give the directories or files of the predictions.')
  found = collections.defaultdict(list)  # task -> [(path, format, shard info)]
  for path in paths:
    if os.path.isdir(path):
      candidates = [os.path.join(path, n) for n in sorted(os.listdir(path))]
      candidates = [p for p in candidates if os.path.isfile(p)]
    elif os.path.isfile(path):
      if _classify(path, fmt) is None:
        raise LeaderboardError(
            f'--predictions: {path} is not named as a prediction file of --format={fmt} '
            f"(T5X: '<task>-predict.jsonl-00000-of-00001', runner: '<task>-predict.jsonl').")
      candidates = [path]
    else:
      raise LeaderboardError(f'--predictions: {path} does not exist.')
    for p in candidates:
      kind = _classify(p, fmt)
      if kind:
        found[kind[0]].append((p, kind[1], kind[2]))
  out = {}
  for task, entries in found.items():
    formats = sorted({e[1] for e in entries})
    if len(formats) > 1:
      raise LeaderboardError(
          f'{task}: predictions in more than one format ({", ".join(formats)}): '
          f'{", ".join(e[0] for e in entries)}; pass only one set (or --format).')
    if formats[0] == 'runner':
      if len(entries) > 1:
        raise LeaderboardError(f'{task}: more than one prediction file: '
                               f'{", ".join(e[0] for e in entries)}.')
    else:
      shards = {e[2][1] for e in entries}
      have = sorted(e[2][0] for e in entries)
      if len(shards) > 1 or have != list(range(next(iter(shards)))):
        raise LeaderboardError(
            f'{task}: T5X shards {have} of {sorted(shards)} found; every shard '
            f'0..N-1 of one `t5x.infer` run (infer.num_shards=N) is needed, once.')
    out[task] = [e[0] for e in sorted(entries, key=lambda e: e[2] or (0, 0))]
  return out


def _as_int(value, what: str, where: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
    raise LeaderboardError(f'{where}: {what} is {value!r}, not an integer id.')
  return int(value)


def read_predictions(files: Sequence[str], entry: LeaderboardFile) -> List[Tuple[Any, str]]:
  """[(id, predicted text)] of the entry's task, in file order.

  The id is `idx` (an int), MultiRC's (paragraph, question, answer) and ReCoRD's (passage, query).
  T5X keeps the ids under "inputs" when run with the test-split gin; the runner's rows carry them
  at the top level.
  """
  keys = {'multirc': MULTIRC_IDS, 'record': RECORD_IDS}.get(entry.style, ('idx',))
  rows = []
  for path in files:
    with open(path) as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f'{path}:{line_no}'
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise LeaderboardError(f'{where}: not a JSON line ({e}).') from None
        if 'prediction' not in row:
          raise LeaderboardError(
              f'{where}: no "prediction" (keys {sorted(row)}); decode with infer.mode=\'predict\''
              f' (T5X: or \'predict_with_aux\'), not \'score\'.')
        fields = row['inputs'] if isinstance(row.get('inputs'), dict) else row
        missing = [k for k in keys if k not in fields]
        if missing:
          raise LeaderboardError(
              f'{where}: the example ids {missing} are not in the predictions. T5X writes only '
              f'the *_pretokenized features unless told: run t5x.infer with '
              f'--gin_file={TEST_GINS["glue" if "altup_glue_" in entry.task else "super_glue"]}'
              f' (after the infer config); the runner (altup_t5x.infer) writes them itself.')
        ids = tuple(_as_int(fields[k], k, where) for k in keys)
        prediction = row['prediction']
        if not isinstance(prediction, str):
          raise LeaderboardError(
              f'{where}: the prediction is {type(prediction).__name__} {prediction!r}, not one '
              f'decoded string; decode one answer per example (no return_all_decodes).')
        rows.append((ids if len(ids) > 1 else ids[0], prediction))
  return rows


# --------------------------------------------------------------------------------------------------
# The test split's ids.

def split_ids(entry: LeaderboardFile, tfds_data_dir: Optional[str] = None):
  """The ids of the entry's TFDS test split (keyed as `read_predictions` keys them); None if
  the split is not prepared in the data dir."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = seqio.get_mixture_or_task(entry.task).source
  name = source.tfds_dataset.name
  data_dir = tfds_data_dir or source.tfds_dataset.data_dir
  try:
    ds = tfds.builder(name, data_dir=data_dir).as_dataset(split='test', shuffle_files=False)
  except (AssertionError, tfds.core.DatasetNotFoundError, FileNotFoundError):
    return None  # not prepared there
  ids = []
  for idx in ds.map(lambda ex: ex['idx']).as_numpy_iterator():  # the ids alone: no text decoded
    if entry.style == 'multirc':
      ids.append((int(idx['paragraph']), int(idx['question']), int(idx['answer'])))
    elif entry.style == 'record':
      ids.append((int(idx['passage']), int(idx['query'])))
    else:
      ids.append(int(idx))
  return ids


def _show(ids) -> str:
  ids = sorted(ids)
  more = f' and {len(ids) - _SHOWN} more' if len(ids) > _SHOWN else ''
  return ', '.join(str(i) for i in ids[:_SHOWN]) + more


def _check_ids(entry: LeaderboardFile, predicted: Sequence, expected: Optional[Sequence],
               test_size: int) -> List[str]:
  """Problems of the predicted ids: duplicates, then missing / unexpected ones."""
  problems = []
  counts = collections.Counter(predicted)
  duplicates = [i for i, c in counts.items() if c > 1]
  if duplicates:
    problems.append(f'{len(duplicates)} ids predicted more than once: {_show(duplicates)}')
  have = set(counts)
  if entry.style == 'record':  # one prediction per query; ReCoRD's file is keyed by query
    queries = collections.Counter(q for _, q in have)
    twice = [q for q, c in queries.items() if c > 1]
    if twice:
      problems.append(f'{len(twice)} queries predicted in more than one passage: {_show(twice)}')
  if expected is not None:
    expected = set(expected)
    source = 'the TFDS test split'
  elif entry.style in ('multirc', 'record'):
    if len(have) != test_size:
      problems.append(f'{len(have)} distinct ids, the test split has {test_size} '
                      f'({"answers" if entry.style == "multirc" else "queries"})')
    return problems
  else:
    expected = set(range(test_size))
    source = f'the test split\'s ids 0..{test_size - 1}'
  missing, unexpected = expected - have, have - expected
  if missing:
    problems.append(f'{len(missing)} of {len(expected)} ids of {source} have no prediction: '
                    f'{_show(missing)}')
  if unexpected:
    problems.append(f'{len(unexpected)} ids are not in {source}: {_show(unexpected)}')
  return problems


# --------------------------------------------------------------------------------------------------
# Labels and file contents.

def _score(text: str) -> Optional[float]:
  try:
    value = float(text)
  except ValueError:
    return None
  return value if math.isfinite(value) and STSB_RANGE[0] <= value <= STSB_RANGE[1] else None


def _labels(entry: LeaderboardFile, rows, unknown_label: str) -> Tuple[Dict, List[str], int]:
  """({id: leaderboard label}, problems, number of predictions replaced under 'first')."""
  out, bad = {}, []
  for ids, text in rows:
    text = text.strip()
    if entry.style == 'record':
      out[ids] = text
    elif entry.style == 'score':
      value = _score(text)
      if value is None:
        bad.append((ids, text))
        if unknown_label == 'first':
          try:
            value = min(max(float(text), STSB_RANGE[0]), STSB_RANGE[1])
          except ValueError:
            value = STSB_RANGE[0]
          value = value if math.isfinite(value) else STSB_RANGE[0]
      out[ids] = value
    elif text in entry.labels:
      out[ids] = entry.leaderboard_label(text)
    else:
      bad.append((ids, text))
      out[ids] = entry.leaderboard_label(entry.labels[0])
  if bad and unknown_label == 'error':
    allowed = (f'a number in [{STSB_RANGE[0]:g}, {STSB_RANGE[1]:g}]' if entry.style == 'score'
               else ', '.join(repr(x) for x in entry.labels))
    by_text = collections.defaultdict(list)
    for ids, text in bad:
      by_text[text].append(ids)
    groups = sorted(by_text.items(), key=lambda g: (-len(g[1]), min(g[1])))
    shown = '; '.join(f'{t!r} (id {ids[0]})' if len(ids) == 1 else f'{t!r} ({len(ids)} ids: '
                      f'{_show(ids)})' for t, ids in groups[:_SHOWN])
    more = f'; {len(groups) - _SHOWN} other texts' if len(groups) > _SHOWN else ''
    return out, [f'{len(bad)} of {len(rows)} predictions are not a label of the task '
                 f'(allowed: {allowed}): {shown}{more} (--unknown_label=first writes the first '
                 f'label instead)'], 0
  return out, [], len(bad)


def render(entry: LeaderboardFile, labels: Mapping) -> str:
  """The file's text: lines ordered by id."""
  if entry.filename.endswith('.tsv'):
    lines = ['index\tprediction']
    for i in sorted(labels):
      value = labels[i]
      lines.append(f'{i}\t{value:.3f}' if entry.style == 'score' else f'{i}\t{value}')
    return '\n'.join(lines) + '\n'
  lines = []
  if entry.style == 'multirc':
    passages = collections.defaultdict(lambda: collections.defaultdict(list))
    for (p, q, a) in sorted(labels):
      passages[p][q].append({'idx': a, 'label': labels[(p, q, a)]})
    for p in sorted(passages):
      questions = [{'idx': q, 'answers': answers} for q, answers in sorted(passages[p].items())]
      lines.append(json.dumps({'idx': p, 'passage': {'questions': questions}}))
  elif entry.style == 'record':
    for ids in sorted(labels, key=lambda ids: ids[1]):  # (passage, query): keyed by query
      lines.append(json.dumps({'idx': ids[1], 'label': labels[ids]}))
  else:
    lines = [json.dumps({'idx': i, 'label': labels[i]}) for i in sorted(labels)]
  return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------------------------------
# The submission.

def _parse_sizes(benchmark: str, sizes: Optional[Mapping[str, int]]) -> Dict[str, int]:
  names = {e.name: e for e in FILES[benchmark]}
  out = {}
  for name, n in (sizes or {}).items():
    if name not in names:
      raise LeaderboardError(f'--test_sizes: {name!r} is not a {benchmark} file; expected one of '
                             f'{sorted(names)}.')
    if int(n) <= 0:
      raise LeaderboardError(f'--test_sizes: {name}={n} must be positive.')
    out[name] = int(n)
  return out


def build(benchmark: str, predictions: Sequence[str], fmt: str = 'auto', ids_from: str = 'auto',
          tfds_data_dir: Optional[str] = None, test_sizes: Optional[Mapping[str, int]] = None,
          unknown_label: str = 'error') -> Tuple[Dict[str, str], List[str]]:
  """({file name: text} of the whole submission, report lines); raises LeaderboardError.

  Every problem of every file is collected first and reported in one error, so one pass shows all
  that must be fixed.
  """
  if benchmark not in BENCHMARKS:
    raise LeaderboardError(f'--benchmark={benchmark!r}: expected one of {BENCHMARKS}.')
  if ids_from not in IDS_FROM:
    raise LeaderboardError(f'--ids_from={ids_from!r}: expected one of {IDS_FROM}.')
  if unknown_label not in UNKNOWN_LABEL:
    raise LeaderboardError(f'--unknown_label={unknown_label!r}: expected one of {UNKNOWN_LABEL}.')
  sizes = _parse_sizes(benchmark, test_sizes)
  found = find_prediction_files(predictions, fmt)
  entries = FILES[benchmark]
  missing = [e for e in entries if e.task not in found]
  if missing:
    raise LeaderboardError(
        f'{benchmark}: no predictions for {len(missing)} of the {len(entries)} files of a '
        f'submission: ' + ', '.join(f'{e.filename} ({e.task})' for e in missing) +
        f'. Looked for <task>-predict.jsonl[-SSSSS-of-NNNNN] in {", ".join(predictions)}; '
        f'infer every task of the mixture {TEST_MIXTURES[benchmark]} on its test split (the '
        f'diagnostic sets with the {"MNLI" if benchmark == "glue" else "RTE"} model).')
  texts, report, problems = {}, [], []
  for entry in entries:
    rows = read_predictions(found[entry.task], entry)
    expected = None
    if ids_from in ('auto', 'split'):
      expected = split_ids(entry, tfds_data_dir)
      if expected is None and ids_from == 'split':
        problems.append(f'{entry.filename}: the TFDS test split of {entry.task} cannot be read '
                        f'(--tfds_data_dir={tfds_data_dir}); prepare it or pass --ids_from=size.')
        continue
    size = sizes.get(entry.name, entry.test_size)
    keys = [ids for ids, _ in rows]
    file_problems = _check_ids(entry, keys, expected, size)
    if any('have no prediction' in p for p in file_problems) and any(
        _RUNNER_NAME.match(os.path.basename(f)) for f in found[entry.task]):
      file_problems.append('altup_t5x.infer decodes the first MAX_EXAMPLES (64) examples unless '
                           'run with --gin.MAX_EXAMPLES=None')
    labels, label_problems, replaced = _labels(entry, rows, unknown_label)
    file_problems += label_problems
    problems += [f'{entry.filename} ({entry.task}): {p}' for p in file_problems]
    if not file_problems:
      texts[entry.filename] = render(entry, labels)
      checked = 'the TFDS test split' if expected is not None else (
          f'{size} test examples' + (' (--test_sizes)' if entry.name in sizes else ''))
      note = f', {replaced} unknown labels written as the first' if replaced else ''
      num_lines = texts[entry.filename].count('\n')
      report.append(f'{entry.filename}: {len(rows)} predictions, {num_lines} lines (ids checked '
                    f'against {checked}{note})')
  if problems:
    raise LeaderboardError('no submission written:\n  ' + '\n  '.join(problems))
  return texts, report


def _check_output(output: str) -> str:
  """The directory of OUTPUT, after checking the path (before any prediction is read)."""
  if not output.endswith('.zip'):
    raise LeaderboardError(f'--output={output}: expected a .zip path (the file to upload).')
  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):
    raise LeaderboardError(f'--output={output}: the directory {parent} does not exist.')
  if os.path.isdir(output):
    raise LeaderboardError(f'--output={output} is a directory; expected the .zip file to write.')
  return parent


def write_zip(texts: Mapping[str, str], output: str) -> None:
  """Writes the files at the zip's root, atomically: a temp file beside OUTPUT, then a rename."""
  parent = _check_output(output)
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
    for name in sorted(texts):
      info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      z.writestr(info, texts[name].encode('utf-8'))
  fd, tmp = tempfile.mkstemp(dir=parent, prefix='.tmp-', suffix='.zip')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(buf.getvalue())
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, output)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def export(benchmark: str, predictions: Sequence[str], output: str, **kwargs) -> List[str]:
  """Builds the submission (see `build`) and writes it to `output`; returns the report lines."""
  _check_output(output)
  texts, report = build(benchmark, predictions, **kwargs)
  write_zip(texts, output)
  return report + [f'wrote {output} ({len(texts)} files)']


# --------------------------------------------------------------------------------------------------
# Command line.

def _sizes_arg(text: str) -> Dict[str, int]:
  out = {}
  for item in filter(None, text.split(',')):
    name, sep, n = item.partition('=')
    if not sep or not n.strip().isdigit():
      raise argparse.ArgumentTypeError(f'{item!r}: expected NAME=N, e.g. BoolQ=3245')
    out[name.strip()] = int(n)
  return out


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m altup_t5x.leaderboard',
                                   description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__)
  parser.add_argument('--benchmark', required=True, choices=BENCHMARKS)
  parser.add_argument('--predictions', required=True, nargs='+',
                      help='directories (INFER_OUTPUT_DIR; not searched recursively) or files of '
                      'test-split predictions; the diagnostic sets may come from another '
                      'directory (the RTE / MNLI model\'s)')
  parser.add_argument('--output', required=True, help='the .zip to upload')
  parser.add_argument('--format', default='auto', choices=FORMATS,
                      help='t5x: t5x.infer\'s <task>-predict.jsonl-SSSSS-of-NNNNN; runner: '
                      'altup_t5x.infer\'s <task>-predict.jsonl; auto: either, by name')
  parser.add_argument('--ids_from', default='auto', choices=IDS_FROM,
                      help='what the predicted ids are checked against: the TFDS test split '
                      '(split), the published test sizes (size), or the split where it can be '
                      'read and the size elsewhere (auto)')
  parser.add_argument('--tfds_data_dir', default=None,
                      help='where the TFDS test splits are prepared (default: TFDS\'s)')
  parser.add_argument('--test_sizes', type=_sizes_arg, default=None,
                      help='NAME=N,... overriding published test sizes (e.g. for a subset)')
  parser.add_argument('--unknown_label', default='error', choices=UNKNOWN_LABEL,
                      help='a prediction that is not a label of its task: refuse the submission '
                      '(error), or write the task\'s first label, TFDS class 0 (first; STS-B: '
                      'clipped into [0, 5], 0 if not a number)')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  report = export(args.benchmark, args.predictions, args.output, fmt=args.format,
                  ids_from=args.ids_from, tfds_data_dir=args.tfds_data_dir,
                  test_sizes=args.test_sizes, unknown_label=args.unknown_label)
  for line in report:
    print(line, flush=True)
  return report


def console_main():
  try:
    main()
  except LeaderboardError as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == '__main__':
  console_main()
