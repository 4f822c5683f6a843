"""Result tables as CSV files: one reader and one writer for every table this project keeps.

The planner's `benchmarks/pods.csv` (`python -m altup_t5x.plan --csv`) and the measurements of
`scripts/benchmark.py` and `scripts/scaling_benchmark.py` are lists of rows, one dict per row, with
a fixed column list. Reading gives every value back as a string; writing puts the column list in the
header and '' where a row has no value, and leaves out keys that are not columns. A table that
grows (`update`) is rewritten whole, so a file written before a column was added gets the new header
and keeps its rows.
"""
import csv
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

Row = Mapping[str, Any]


def read(path: str, missing_ok: bool = False) -> List[Dict[str, str]]:
  """The rows of the CSV at `path`; `[]` for a missing file if `missing_ok`."""
  if missing_ok and not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def write(path: str, rows: Iterable[Row], columns: Sequence[str], float_format: str = '',
          lineterminator: str = '\r\n') -> None:
  """Writes `rows` as the whole table at `path`.

  Args:
    path: the CSV file; its folder must exist.
    rows: dicts keyed by column (other keys are left out, missing columns are empty).
    columns: the header, in order.
    float_format: a format spec for float values (e.g. '.6g': measurements keep six significant
      digits); '' writes `str(value)`.
    lineterminator: '\r\n' is the csv module's default (RFC 4180); the planner's table uses '\n'.
  """
  fmt = lambda v: format(v, float_format) if float_format and isinstance(v, float) else v
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction='ignore',
                            lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows({k: fmt(v) for k, v in r.items()} for r in rows)


def update(path: str, rows: Iterable[Row], columns: Sequence[str],
           key: Optional[Sequence[str]] = None, lineterminator: str = '\r\n') -> None:
  """Adds `rows` to the table at `path` (created, with its folder, if missing).

  With `key` (column names) a new row replaces every earlier row with the same values in those
  columns (compared as strings), so that re-measuring a case keeps one row for it; without, rows
  are only appended. The file is rewritten with `columns` as its header.
  """
  rows = list(rows)
  old = read(path, missing_ok=True)
  if key is not None:
    of = lambda r: tuple(str(r.get(k, '')) for k in key)
    new_keys = {of(r) for r in rows}
    old = [r for r in old if of(r) not in new_keys]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  write(tmp, old + rows, columns, lineterminator=lineterminator)
  os.replace(tmp, path)
