"""The repository speaks to its users: no development notes, machine paths or absent files cited.

Every text file git tracks (binary files and tests/testdata left out) is read. A hit names the file,
the line and what matched; the patterns below are written so that this file does not match itself.
"""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_PREFIXES = ('tests/testdata/',)

PATTERNS = {
    # Documents that are not in the repository (names as they were cited; docs/data.md is one).
    'a file not in the repository': re.compile(r'(?<![/\w])(ALTU[P]|DAT[A]|STYL[E])\.md\b|'
                                               r'\.\./share[d]\b'),
    # Absolute paths of a developer's machine (example commands use /tmp or /path/to).
    'a machine path': re.compile(r'(?<![\w.])/(wor[k]|roo[t]|User[s])/'),
    # Notes about how the code was developed rather than what it does.
    'a development note': re.compile(
        r'\bsessio[n]s?\b(?<!test.session)(?<!test.sessions)|\blen[t]\b|\bissu[e] ?#|'
        r'\(issu[e] |\bthe issu[e]\b|\bissu[e]\'s\b', re.IGNORECASE),
}


def _tracked_text_files():
  names = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True,
                         text=True).stdout.split('\0')
  for name in names:
    if not name or name.startswith(SKIP_PREFIXES):
      continue
    path = os.path.join(ROOT, name)
    if not os.path.isfile(path):  # deleted in the working tree
      continue
    with open(path, 'rb') as f:
      data = f.read()
    if b'\0' in data:
      continue
    try:
      yield name, data.decode('utf-8')
    except UnicodeDecodeError:
      continue


def find_hits(files):
  """'name:line: kind: text' for every line of `files` ((name, text) pairs) a pattern matches."""
  hits = []
  for name, text in files:
    for number, line in enumerate(text.splitlines(), 1):
      for kind, pattern in PATTERNS.items():
        m = pattern.search(line)
        if m:
          hits.append(f'{name}:{number}: {kind}: {m.group(0)!r} in {line.strip()[:120]!r}')
  return hits


def test_the_patterns_catch_what_they_are_for():
  bad = ['see ALTUP' '.md section 5', 'as in DATA' '.md', '(STYLE' '.md)', 'cp ../shar' 'ed/x .',
         'cd /wo' 'rk/main', '/ro' 'ot/.cache', 'no device in this ses' 'sion', "that ses" "sion's run", 'no accelerator was le' 'nt',
         'benchmarks (iss' 'ue 9)', "the iss" "ue's starting scale", 'fixes iss' 'ue #4']
  good = ['Settings for the whole test-ses' 'sion run', 'the step is excellent', '/tmp/out',
          '/path/to/altup-t5x', 'tissue', 'benchmarks/EXPLANATIONS.md', 'see docs/da' 'ta.md']
  assert len(find_hits([('bad', '\n'.join(bad))])) == len(bad)
  assert find_hits([('good', '\n'.join(good))]) == []


def test_tracked_files_carry_no_development_notes_or_machine_paths():
  hits = find_hits(_tracked_text_files())
  assert not hits, '\n'.join(hits)
