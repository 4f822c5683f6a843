"""The two-size study (studies/sizes.py): its plan, LR choice, verdicts, trend and speed ratios."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from studies import fidelity, sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _curve(final, steps=sizes.STEPS, every=100, start=7.0):
  """An eval curve falling linearly from `start` to `final` (recorded every `every` steps)."""
  pts = list(range(0, steps + 1, every))
  return [[s, s * 0.1, start + (final - start) * s / steps] for s in pts]


def _record(scale, variant, lr, seed, final, seconds=100.0):
  s = fidelity.spec(scale, variant, 'rsqrt', lr, seed, sizes.STEPS, 'sizes')
  return dict(s, eval=_curve(final), train_seconds=seconds, wall_seconds=seconds + 5,
              compile_s=3.0, loadavg=2.0, date='2026-01-01 00:00')


def _write(out, records):
  os.makedirs(fidelity.runs_dir(out), exist_ok=True)
  for r in records:
    with open(os.path.join(fidelity.runs_dir(out), r['name'] + '.json'), 'w') as f:
      json.dump(r, f)


# Final eval loss of each (variant, peak LR) in the synthetic sweeps: best LRs differ by variant.
SWEEP = {'baseline': {0.01: 3.50, 0.03: 3.40, 0.1: 3.60},
         'altup_k2': {0.01: 3.45, 0.03: 3.38, 0.1: 3.39},
         'recycled_k2': {0.01: 3.50, 0.03: 3.45, 0.1: 3.42},
         'altup_k4': {0.01: 3.44, 0.03: 3.37, 0.1: float('nan')},
         'gemma3n_k4': {0.01: 3.36, 0.03: 3.37, 0.1: 3.50}}


def _sweep(scale):
  return [_record(scale, v, lr, 0, x) for v, by in SWEEP.items() for lr, x in by.items()]


def test_plan_sweeps_first_and_claims_wait_for_their_size():
  todo = sizes.plan({})
  n_sweep = len(sizes.SIZES) * len(sizes.VARIANTS) * len(fidelity.LRS)
  assert [s['part'] for s in todo[:n_sweep]] == ['sweep1500'] * n_sweep
  assert all(s['ready'] for s in todo[:n_sweep])
  assert not any(s['ready'] for s in todo[n_sweep:])
  assert len({s['name'] for s in todo}) == len(todo)
  assert all(s['steps'] == fidelity.FULL_STEPS for s in todo)
  # The names are the fidelity study's: a run both need is trained once.
  assert all(s['name'] == fidelity.run_name(s['scale'], s['variant'], 'rsqrt', s['lr'], s['seed'],
                                            s['steps']) for s in todo)


def test_best_lr_is_the_lowest_finite_loss_and_claims_use_it(tmp_path):
  runs = {r['name']: r for r in _sweep('study_w128')}
  assert sizes.best_lr(runs, 'd128', 'baseline') == 0.03
  assert sizes.best_lr(runs, 'd128', 'recycled_k2') == 0.1
  assert sizes.best_lr(runs, 'd128', 'altup_k4') == 0.03  # nan (diverged) counts as worst
  assert sizes.best_lr(runs, 'd128', 'gemma3n_k4') == 0.01
  assert sizes.best_lr(runs, 'd64', 'baseline') is None  # the other size is not swept
  assert sizes.claim_pairs(runs, 'd128', 'b') == [(0.1, 0.03, 'own'), (0.03, 0.03, 'common')]
  assert sizes.claim_pairs(runs, 'd128', 'a') == [(0.03, 0.03, 'own')]
  assert sizes.claim_pairs(runs, 'd128', 'h') == [(0.01, 0.03, 'own'), (0.03, 0.03, 'common')]
  planned = sizes.plan(runs)
  d128 = [s for s in planned if s['scale'] == 'study_w128' and s['part'] == 'sizes']
  d64 = [s for s in planned if s['scale'] == 'study' and s['part'] == 'sizes']
  assert d128 and all(s['ready'] for s in d128) and not any(s['ready'] for s in d64)
  names = {s['name'] for s in planned}
  for seed in range(sizes.SEEDS):
    assert fidelity.run_name('study_w128', 'recycled_k2', 'rsqrt', 0.1, seed, 1500) in names
    assert fidelity.run_name('study_w128', 'recycled_k2', 'rsqrt', 0.03, seed, 1500) in names
    assert fidelity.run_name('study_w128', 'gemma3n_k4', 'rsqrt', 0.01, seed, 1500) in names
  remedies = [s for s in planned if s['part'] == 'remedies' and s['scale'] == 'study_w128']
  assert {s['lr'] for s in remedies} == {0.1} and all(s['ready'] for s in remedies)
  assert {s['variant'] for s in remedies} == set(sizes.REMEDIES)
  for seed in range(sizes.REMEDY_SEEDS):  # the reference: Recycled at the same LR and seeds
    assert fidelity.run_name('study_w128', 'recycled_k2', 'rsqrt', 0.1, seed, 1500) in names
  # The best LR read at an earlier step comes from the same curves.
  assert sizes.best_lr(runs, 'd128', 'baseline', step=300) == 0.03


def test_verdicts_and_trend_equal_a_numpy_paired_test(tmp_path):
  """Claim (a) at both sizes from synthetic seeds: gain = mean paired difference, SE = std /
  sqrt(n), change = difference of gains with the SEs combined."""
  out = str(tmp_path)
  rng = np.random.RandomState(0)
  records = _sweep('study') + _sweep('study_w128')
  gains = {'study': rng.normal(0.02, 0.002, 3), 'study_w128': rng.normal(0.05, 0.003, 3)}
  base = {scale: 3.4 + rng.normal(0, 0.01, 3) for scale in gains}
  for scale in gains:
    for seed in range(1, 3):
      records.append(_record(scale, 'baseline', 0.03, seed, base[scale][seed]))
      records.append(_record(scale, 'altup_k2', 0.03, seed, base[scale][seed] - gains[scale][seed]))
  # Seed 0 of the sweep has its own finals; make the seed-0 gain the synthetic one too.
  for r in records:
    if r['seed'] == 0 and r['lr'] == 0.03 and r['variant'] in ('baseline', 'altup_k2'):
      final = base[r['scale']][0] - (gains[r['scale']][0] if r['variant'] == 'altup_k2' else 0)
      r['eval'] = _curve(final)
  _write(out, records)
  runs = fidelity.load_runs(out)
  rows = sizes.claim_rows(runs, {('d64', 'baseline'): 1.0, ('d64', 'altup_k2'): 1.25,
                                 ('d128', 'baseline'): 1.0, ('d128', 'altup_k2'): 1.25})
  a = {r['size']: r for r in rows if r['cid'] == 'a' and r['kind'] == 'own'}
  for size, scale in sizes.SIZES:
    g = gains[scale]
    assert a[size]['n'] == 3
    np.testing.assert_allclose(a[size]['m'], g.mean(), atol=1e-9)
    np.testing.assert_allclose(a[size]['se'], g.std(ddof=1) / math.sqrt(3), atol=1e-9)
    assert a[size]['short'] == 'reproduced'
    # Equal wall-clock: AltUp (1.25x slower) at step 1500 / 1.25 = 1200 of its linear curve.
    at = base[scale] - g
    want = base[scale] - (7.0 + (at - 7.0) * 1200 / 1500)
    np.testing.assert_allclose(a[size]['tm'], want.mean(), atol=1e-9)
  t = sizes.trend(rows, 'a', 'own')
  np.testing.assert_allclose(t['change'], gains['study_w128'].mean() - gains['study'].mean(),
                             atol=1e-9)
  np.testing.assert_allclose(t['se'], math.hypot(a['d64']['se'], a['d128']['se']), atol=1e-9)
  assert t['word'] == 'grows'
  text = sizes.section(out, '.')
  assert '| (a) AltUp K=2 (wide) improves on the same-size baseline | own = common |' in text
  assert '| (b) Recycled-AltUp K=2 improves on the same-size baseline | common |' in text
  assert f'{t["change"]:+.4f} +- {t["se"]:.4f} | grows |' in text
  assert 'not yet run' in text  # the other claims' seeds are missing
  assert '(a) ' in sizes.summary_line(out) and '(grows)' in sizes.summary_line(out)


def test_coefficient_lr_scale_multiplies_only_altup_updates():
  """recycled_k2_coef_lr10's optimizer: AltUp coefficient updates are 10x Adafactor's, the others
  equal to it."""
  params = {'encoder': {'altup_0': {'predict': jnp.eye(2) + 0.1, 'correct': jnp.ones(2)},
                        'layers_0': {'mlp': {'kernel': jnp.ones((4, 3)) * 0.5}}}}
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3) + p * 0.01, params)
  plain = fidelity.study_optimizer('recycled_k2', 'rsqrt', 0.03)
  scaled = fidelity.study_optimizer('recycled_k2_coef_lr10', 'rsqrt', 0.03)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_scaled, _ = scaled.update(grads, scaled.init(params), params)
  for key in ('predict', 'correct'):
    np.testing.assert_allclose(u_scaled['encoder']['altup_0'][key],
                               10 * np.asarray(u_plain['encoder']['altup_0'][key]), rtol=1e-6)
  np.testing.assert_array_equal(u_scaled['encoder']['layers_0']['mlp']['kernel'],
                                u_plain['encoder']['layers_0']['mlp']['kernel'])
  assert float(jnp.abs(u_plain['encoder']['altup_0']['predict']).max()) > 0


def test_speed_ratios_are_measured_in_one_process(tmp_path, monkeypatch):
  """measure_speed at a tiny scale: one row per (size, variant), the baseline's ratio exactly 1,
  read back by speed_ratios; the process's CPU affinity is restored."""
  monkeypatch.setattr(sizes, 'SIZES', (('q', 'quick'),))
  monkeypatch.setattr(sizes, 'VARIANTS', ('baseline',))
  monkeypatch.setattr(sizes, 'REMEDIES', ('recycled_k2_coef_lr10',))
  sc = fidelity.SCALES['quick']
  rng = np.random.RandomState(0)
  b, li, lt = sc['batch'], sc['inputs'], sc['targets']
  batch = dict(encoder_input_tokens=rng.randint(2, 100, (b, li)).astype(np.int32),
               decoder_input_tokens=rng.randint(2, 100, (b, lt)).astype(np.int32),
               decoder_target_tokens=rng.randint(2, 100, (b, lt)).astype(np.int32))
  monkeypatch.setattr(fidelity, '_data', lambda scale, out: (batch, batch))
  before = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else None
  rows = sizes.measure_speed(str(tmp_path), rounds=1, calls=2, log=lambda m: None)
  assert [(r['size'], r['variant']) for r in rows] == [('q', 'baseline'),
                                                       ('q', 'recycled_k2_coef_lr10')]
  ratios = sizes.speed_ratios(str(tmp_path))
  assert ratios[('q', 'baseline')] == 1.0
  assert all(r > 0 and math.isfinite(r) for r in ratios.values())
  if before is not None:
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize('args,message', [
    (['--parts', 'sweep1500,bogus'], "unknown part(s) ['bogus']"),
    (['--quick'], 'has no --quick mode'),
])
def test_sizes_command_rejects_bad_flags(tmp_path, args, message):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'), 'sizes',
                         '--out', str(tmp_path)] + args, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr
  assert not os.listdir(tmp_path)  # nothing measured or written
