"""The main command prints only its own lines: none of TensorFlow's or XLA's start-up logging.

TensorFlow only reads the data here, yet on import it announces its oneDNN kernels, its CPU
instructions and, in its CUDA build, the missing driver. `python -m altup_t5x.quickstart` (what
scripts/quickstart.sh runs) must keep all of that out of its output, in a caller's environment
that sets none of TensorFlow's variables.
"""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines of TensorFlow's / XLA's C++ logging (glog's 'I0000 00:00:...' prefix), and what they say.
NOISE = re.compile(r'^[IWEF]\d{4} |oneDNN|cuda|cuInit|TensorFlow binary is optimized|'
                   r'absl::InitializeLog', re.IGNORECASE)


def _user_env():
  env = dict(os.environ)
  for name in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS'):
    env.pop(name, None)
  return env


def _noise(output):
  return [line for line in output.splitlines() if NOISE.search(line)]


def test_noise_pattern_matches_tensorflows_start_up_lines():
  lines = [
      'I0000 00:00:1796136660.144636   14948 port.cc:153] oneDNN custom operations are on.',
      'W0000 00:00:1.2 3 cuda_platform.cc:51] failed call to cuInit: INTERNAL',
      'E0000 00:00:1.2 3 cuda_dnn.cc:8310] Unable to register cuDNN factory',
      'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
      'This TensorFlow binary is optimized to use available CPU instructions',
  ]
  assert _noise('\n'.join(lines)) == lines
  assert _noise('[train] step 20/20 loss=1032.2429 acc=0.2500\n| baseline  | 1,083,136 |') == []


def test_quickstart_entry_imports_tensorflow_silently():
  # What quickstart.main does before training, and every module the run imports.
  code = ('from altup_t5x import quickstart\n'
          'quickstart.quiet_tensorflow()\n'
          'from altup_t5x import cli, eval, train\n'
          'from altup_t5x.data import tasks\n'
          'import jax, tensorflow as tf\n'
          'print(len(jax.devices()), tf.__version__)\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=_user_env(),
                       capture_output=True, text=True, check=True, timeout=300)
  assert _noise(out.stdout + out.stderr) == []
  assert out.stderr == ''


@pytest.mark.slow
def test_quickstart_run_prints_only_its_own_lines(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'altup_t5x.quickstart', '--steps', '2', '--examples', '1',
       '--workdir', str(tmp_path)], cwd=REPO, env=_user_env(), capture_output=True, text=True,
      check=True, timeout=900)
  text = out.stdout + out.stderr
  assert _noise(text) == []
  assert '| baseline  |' in out.stdout and '| altup_k2  |' in out.stdout
