"""altup_t5x.csv_tables: the one reader and writer of the result tables, against the csv module."""
import csv

import pytest

from altup_t5x import csv_tables

COLUMNS = ['config', 'devices', 'mode', 'value']


def _parse(path):
  with open(path, newline='') as f:
    return list(csv.reader(f))


def test_write_puts_the_columns_in_the_header_and_formats_floats(tmp_path):
  path = str(tmp_path / 't.csv')
  csv_tables.write(path, [dict(config='a', devices=8, value=1 / 3, extra='left out')], COLUMNS,
                   float_format='.6g')
  assert _parse(path) == [COLUMNS, ['a', '8', '', '0.333333']]
  assert open(path, newline='').read().endswith('\r\n')  # the csv module's default
  csv_tables.write(path, [dict(config='a', value=1 / 3)], COLUMNS, lineterminator='\n')
  assert open(path, newline='').read() == 'config,devices,mode,value\na,,,0.3333333333333333\n'
  assert csv_tables.read(path) == [dict(config='a', devices='', mode='', value='0.3333333333333333')]


def test_read_of_a_missing_table(tmp_path):
  path = str(tmp_path / 'missing.csv')
  assert csv_tables.read(path, missing_ok=True) == []
  with pytest.raises(FileNotFoundError):
    csv_tables.read(path)


def test_update_appends_or_replaces_rows_by_key(tmp_path):
  path = str(tmp_path / 'sub' / 't.csv')  # the folder is created
  csv_tables.update(path, [dict(config='a', devices=8, mode='x', value=1),
                           dict(config='b', devices=8, mode='x', value=2)], COLUMNS)
  csv_tables.update(path, [dict(config='a', devices=8, mode='x', value=3)], COLUMNS)
  assert [r['value'] for r in csv_tables.read(path)] == ['1', '2', '3']  # no key: appended
  csv_tables.update(path, [dict(config='a', devices=8, mode='x', value=4)], COLUMNS,
                    key=('config', 'devices', 'mode'))
  assert [(r['config'], r['value']) for r in csv_tables.read(path)] == [('b', '2'), ('a', '4')]
  csv_tables.update(path, [dict(config='a', devices=16, mode='x', value=5)], COLUMNS,
                    key=('config', 'devices', 'mode'))  # another key: kept apart
  assert [(r['config'], r['devices']) for r in csv_tables.read(path)] == [
      ('b', '8'), ('a', '8'), ('a', '16')]


def test_update_gives_an_older_table_the_new_header(tmp_path):
  path = str(tmp_path / 't.csv')
  with open(path, 'w', newline='') as f:
    f.write('config,value\r\nold,"1,5"\r\n')
  csv_tables.update(path, [dict(config='new', mode='m', value=2)], COLUMNS)
  assert _parse(path) == [COLUMNS, ['old', '', '', '1,5'], ['new', '', 'm', '2']]
