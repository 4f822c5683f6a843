"""scripts/install_t5x.sh and the launch scripts, through their --dry_run (nothing is installed).

The pins are read here from t5x_pins.txt with a parser of its own, so a script that dropped or
changed a commit, or installed a project with its dependencies, fails against the file.
"""
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(REPO, 'scripts', 'install_t5x.sh')
TPU_LAUNCH = os.path.join(REPO, 'scripts', 'launch_t5x_tpu.sh')
GPU_LAUNCH = os.path.join(REPO, 'scripts', 'launch_t5x_gpu.sh')


def _pins():
  git, pip, other = [], [], {}
  with open(os.path.join(REPO, 't5x_pins.txt')) as f:
    for line in f:
      fields = line.split()
      if not fields or fields[0].startswith('#'):
        continue
      if fields[0] == 'git':
        git.append(tuple(fields[1:4]))
      elif fields[0] == 'pip':
        pip.append(fields[1])
      else:
        other[fields[0]] = fields[1:]
  return git, pip, other


def _bash(script, *args, home=None, cwd=REPO):
  env = dict(os.environ)
  if home is not None:
    env['HOME'] = str(home)
  return subprocess.run(['bash', script, *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=60)


def test_pins_file_names_the_four_projects_at_full_commits():
  git, pip, other = _pins()
  assert [name for name, _, _ in git] == ['t5x', 'airio', 'jestimator', 'flaxformer']
  for name, url, commit in git:
    assert re.fullmatch(r'[0-9a-f]{40}', commit), name
    assert url == f'https://github.com/{url.split("/")[-2]}/{name}', url
  assert 'grain==0.2.12' in pip
  with open(os.path.join(REPO, 'setup.py')) as f:
    jax = re.search(r'"jax==([0-9.]+)"', f.read()).group(1)
  assert other['tpu'][0] == f'jax[tpu]=={jax}' and other['gpu'][0] == f'jax[cuda12]=={jax}'


def test_install_dry_run_prints_every_pin_and_creates_nothing(tmp_path):
  prefix = tmp_path / 'env'
  proc = _bash(INSTALL, '--dry_run', '--tpu', f'--prefix={prefix}', home=tmp_path)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  git, pip, other = _pins()
  assert lines[0] == f'python3 -m venv {prefix} '
  for name, url, commit in git:
    src = f'{prefix}/src/{name}'
    clone = lines.index(f'git clone --quiet {url} {src} ')
    assert lines[clone + 1] == (f'git -C {src} -c advice.detachedHead=false checkout --quiet '
                                f'{commit} ')
    assert lines[clone + 2] == f'{prefix}/bin/python -m pip install --no-deps -e {src} '
  assert f'{prefix}/bin/python -m pip install -e {REPO} ' in lines
  assert f'{prefix}/bin/python -m pip install {" ".join(pip)} ' in lines
  tpu = other['tpu'][0].replace('[', r'\[').replace(']', r'\]')
  assert f'{prefix}/bin/python -m pip install {tpu} -f {other["tpu"][1]} ' in lines
  assert not any('cuda12' in l for l in lines)
  assert os.listdir(tmp_path) == []  # not even the prefix


def test_install_default_prefix_is_the_launch_scripts_environment(tmp_path):
  proc = _bash(INSTALL, '--dry_run', '--gpu', home=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert f'{tmp_path}/altup-t5x-env/bin/python -m pip install jax\\[cuda12\\]' in proc.stdout
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('args, message', [
    (['--tpu', '--gpu'], '--tpu and --gpu exclude each other'),
    (['--bogus'], "unknown argument '--bogus'"),
])
def test_install_bad_arguments_are_one_clear_error(tmp_path, args, message):
  proc = _bash(INSTALL, '--dry_run', *args, home=tmp_path)
  assert proc.returncode == 2 and message in proc.stderr


def test_install_rejects_a_short_commit_in_the_pins_file(tmp_path):
  os.makedirs(tmp_path / 'repo' / 'scripts')
  shutil.copy(INSTALL, tmp_path / 'repo' / 'scripts')
  (tmp_path / 'repo' / 't5x_pins.txt').write_text(
      'git t5x https://github.com/google-research/t5x cc342d4\n')
  proc = _bash(str(tmp_path / 'repo' / 'scripts' / 'install_t5x.sh'), '--dry_run', home=tmp_path)
  assert proc.returncode == 2
  assert "t5x_pins.txt: 't5x' needs a 40-hex commit, got 'cc342d4'" in proc.stderr


TPU_BASE = ['--tpu=altup-v4-32', '--zone=us-central2-b', '--dry_run']


def test_tpu_sync_and_setup_install_on_every_worker(tmp_path):
  proc = _bash(TPU_LAUNCH, *TPU_BASE, '--sync', '--setup', home=tmp_path)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 3  # copy, unpack, install; no config: nothing is launched
  assert lines[0].startswith('gcloud compute tpus tpu-vm scp ')
  ssh = 'gcloud compute tpus tpu-vm ssh altup-v4-32 --zone=us-central2-b --worker=all --command='
  assert lines[2] == (ssh + r'cd\ ~/altup-t5x\ \&\&\ bash\ scripts/install_t5x.sh\ --tpu\ '
                      r'--prefix\ ~/altup-t5x-env ')


def test_tpu_launch_uses_the_environment_python_by_default(tmp_path):
  config = ['--config=configs/pretrain/c4_base_altup_k2.gin', '--model_dir=gs://b/m',
            '--tfds_data_dir=gs://b/tensorflow_datasets']
  proc = _bash(TPU_LAUNCH, *TPU_BASE, *config, home=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert r'--command=cd\ ~/altup-t5x\ \&\&\ ~/altup-t5x-env/bin/python\ -m\ t5x.train\ ' in (
      proc.stdout)
  assert r'--tfds_data_dir=gs://b/tensorflow_datasets' in proc.stdout
  proc = _bash(TPU_LAUNCH, *TPU_BASE, *config, '--python=python3', home=tmp_path)
  assert r'\&\&\ python3\ -m\ t5x.train' in proc.stdout
  proc = _bash(TPU_LAUNCH, *TPU_BASE, *config, '--env=/opt/env', home=tmp_path)
  assert r'\&\&\ /opt/env/bin/python\ -m\ t5x.train' in proc.stdout


def test_tpu_launch_needs_a_shared_tfds_dir_for_tfds_configs(tmp_path):
  proc = _bash(TPU_LAUNCH, *TPU_BASE, '--config=configs/finetune/glue_base_baseline.gin',
               '--model_dir=gs://b/m', '--initial_checkpoint=gs://b/c', home=tmp_path)
  assert proc.returncode == 2
  assert '--tfds_data_dir is required for configs/finetune/glue_base_baseline.gin' in proc.stderr
  proc = _bash(TPU_LAUNCH, *TPU_BASE, '--config=configs/smoke/tiny_baseline_pretrain.gin',
               '--model_dir=/tmp/m', home=tmp_path)
  assert proc.returncode == 0, proc.stderr


def test_gpu_setup_runs_the_install_script_here_or_on_each_host(tmp_path):
  proc = _bash(GPU_LAUNCH, '--setup', '--dry_run', home=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == f'bash {INSTALL} --gpu --prefix {tmp_path}/altup-t5x-env \n'
  proc = _bash(GPU_LAUNCH, '--setup', '--hosts=node0,node1', '--dry_run', home=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      rf'ssh node{i} cd\ ~/altup-t5x\ \&\&\ bash\ scripts/install_t5x.sh\ --gpu ' for i in (0, 1)]
  proc = _bash(GPU_LAUNCH, '--hosts=node0', '--config=configs/smoke/tiny_baseline_pretrain.gin',
               '--model_dir=/tmp/m', '--dry_run', home=tmp_path)
  assert proc.returncode == 2 and '--hosts is used by --setup only' in proc.stderr


def test_gpu_launch_uses_the_environment_python_by_default(tmp_path):
  args = ['--config=configs/smoke/tiny_baseline_pretrain.gin', '--model_dir=/tmp/m', '--dry_run']
  proc = _bash(GPU_LAUNCH, *args, home=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f'{tmp_path}/altup-t5x-env/bin/python -m t5x.train '
                                '--gin_file=configs/smoke/tiny_baseline_pretrain.gin ')
  proc = _bash(GPU_LAUNCH, *args, '--python=python3', home=tmp_path)
  assert proc.stdout.startswith('python3 -m t5x.train ')
