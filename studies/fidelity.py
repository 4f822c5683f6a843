"""Fidelity study: do the paper's AltUp claims reproduce here, beyond seed noise and learning rate?

Every training run is one (scale, variant, schedule, peak learning rate, seed, steps) and caches its
eval curve in `<out>/fidelity/runs/<name>.json` as soon as it finishes: the study runs in pieces,
a run already present is never repeated, and the report (`report.fidelity_section`) is rebuilt from
whatever runs exist, marking the rest "not yet run".

Plan, in priority order (`plan()`):
  1. `sweep`: peak learning rates LRS (10x span, same schedule shape) for every variant of claims
     (a)-(c), seed 0, SWEEP_STEPS steps;
  2. `a`: baseline and AltUp K=2 at full steps, 3 seeds, K=2 at its own best LR and the baseline's;
  3. `b`, `c`: Recycled K=2, K=4 (3 seeds), then `d`, `g` (2 seeds), then `e`, `f` (2 seeds);
     every variant at the best LR of its family (`lr_family`), (a)-(c) also both at the baseline's;
  4. `ablation`: the quickstart-vs-quality-benchmark gap (schedule x width x steps, 2 seeds; also
     run while workers wait for the sweep).
Compiled train steps go to JAX's persistent compilation cache (next to the corpus cache, unless
JAX_COMPILATION_CACHE_DIR is set), so a variant's later seeds skip compilation.

Data: packed span-corruption examples of the embedded corpus (train split, a fixed pool cycled with
a per-seed, per-epoch order); eval loss on the held-out validation split, which no run trains on.
Seeds set the parameter init and the data order; every variant of one seed sees the same batches.
"""
import glob
import json
import math
import os
import time
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from altup_t5x import csv_tables
from altup_t5x import optimizers
from altup_t5x.config import AltUpConfig
from altup_t5x.models import count_params
from altup_t5x.network import Transformer
from studies.common import (ALL_VARIANTS, COEF_LR_SCALE, FLOAT_FORMAT, init_params,
                            make_config_from, make_eval_sums, make_train_step)

# Model and run shapes. 'study' is the scale of the claims; 'quickstart' and 'quality' reproduce
# the two earlier comparisons for the gap ablation; 'quick' is a smoke test (numbers meaningless).
SCALES = {
    # Chosen to fit a budget of 2 h for the whole study on 2 CPU cores (measured single-core
    # step times, d=64: baseline 0.22 s, K=2 0.25 s, K=4 0.29 s, dense 2d 0.48 s at batch 32, so
    # 37 runs of 1500 steps at batch 32 would take ~2.5 h): 4+4 layers so that K=4 alternation
    # reaches every block in each stack; batch 16 x 64/16.
    'study': dict(model=dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                             num_encoder_layers=4, num_decoder_layers=4),
                  batch=16, inputs=64, targets=16, eval_examples=240, eval_every=100),
    # Claim (e): inputs long enough for a stride-2 encoder to matter.
    'study_long': dict(model=dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                                  num_encoder_layers=4, num_decoder_layers=4),
                       batch=8, inputs=256, targets=16, eval_examples=128, eval_every=100),
    # Twice the width, batch and lengths of 'study', a flag away on an accelerator
    # (`--scale study_d128`).
    'study_d128': dict(model=dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                                  num_encoder_layers=4, num_decoder_layers=4),
                       batch=32, inputs=128, targets=32, eval_examples=256, eval_every=100),
    'study_d128_long': dict(model=dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                                       num_encoder_layers=4, num_decoder_layers=4),
                            batch=16, inputs=512, targets=32, eval_examples=128, eval_every=100),
    'quickstart': dict(model=dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                                  num_encoder_layers=2, num_decoder_layers=2),
                       batch=16, inputs=64, targets=16, eval_examples=64, eval_every=25),
    'quality': dict(model=dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                               num_encoder_layers=2, num_decoder_layers=2),
                    batch=16, inputs=128, targets=32, eval_examples=128, eval_every=25),
    'quick': dict(model=dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                             num_encoder_layers=1, num_decoder_layers=1),
                  batch=4, inputs=32, targets=8, eval_examples=8, eval_every=4),
}
# The second size of the claims (`--scale study_w128`): 'study' and 'study_long' with only the
# width doubled (d=128, head_dim 32, mlp 256); layers, batch, lengths and steps stay.
WIDTH_128 = dict(emb_dim=128, head_dim=32, mlp_dim=256)
for _name in ('study', 'study_long'):
  SCALES[_name.replace('study', 'study_w128')] = dict(
      SCALES[_name], model=dict(SCALES[_name]['model'], **WIDTH_128))
del _name
VOCAB_SIZE = 1100
FULL_STEPS = 1500
SWEEP_STEPS = 300
LRS = (0.01, 0.03, 0.1)   # peak learning rates: 10x span
WARMUP = 100              # T5X's schedule shape: constant peak for WARMUP steps, then rsqrt decay
DEFAULT_LR = 0.03         # used while the sweep has not decided
TRAIN_POOL = 16384        # packed training examples generated once and cycled
SWEEP_VARIANTS = ('baseline', 'altup_k2', 'recycled_k2', 'altup_k4')

# claim id: (paper statement, variant, reference, seeds, scale, extra check)
CLAIMS = {
    'a': ('AltUp K=2 (wide) improves on the same-size baseline', 'altup_k2', 'baseline', 3, 'study'),
    'b': ('Recycled-AltUp K=2 keeps most of (a)\'s gain at almost no extra cost', 'recycled_k2',
          'baseline', 3, 'study'),
    'c': ('the gain grows with K (K=4 better than K=2)', 'altup_k4', 'altup_k2', 3, 'study'),
    'd': ('alternating block selection beats same-block selection', 'altup_k2', 'altup_k2_same', 2,
          'study'),
    'e': ('Sequence-AltUp beats stride-and-skip at equal FLOPs', 'seq_altup_s2', 'seq_skip_s2', 2,
          'study_long'),
    'f': ('AltUp + MoE improves on MoE alone', 'altup_k2_moe', 'moe', 2, 'study'),
    'g1': ('(beyond the paper) dynamic coefficients vs static AltUp', 'altup_k2_dynamic', 'altup_k2',
           2, 'study'),
    'g2': ('(beyond the paper) layer reads the predicted block vs the raw block', 'altup_k2_predicted',
           'altup_k2', 2, 'study'),
    'g3': ('(reference) dense 2x-wide model vs AltUp K=2', 'dense_2d', 'altup_k2', 2, 'study'),
}

# The quickstart-vs-quality gap: (label, scale, schedule, peak lr, steps). 'rsqrt' is the schedule
# shape above; 'constant' is the quality benchmark's flat learning rate.
ABLATION = [
    ('quickstart before the fix (d=128, peak 0.1 rsqrt, 150 steps)', 'quickstart', 'rsqrt', 0.1, 150),
    ('quickstart, quality benchmark\'s LR (constant 0.01)', 'quickstart', 'constant', 0.01, 150),
    ('quickstart now (peak 0.03 rsqrt)', 'quickstart', 'rsqrt', 0.03, 150),
    ('quickstart, peak 0.01 rsqrt', 'quickstart', 'rsqrt', 0.01, 150),
    ('quality benchmark as run (d=64, constant 0.01, 200 steps)', 'quality', 'constant', 0.01, 200),
    ('quality benchmark, quickstart\'s LR (peak 0.1 rsqrt)', 'quality', 'rsqrt', 0.1, 200),
]
ABLATION_SEEDS = 2


# The scale each role of the plan runs at: 'study' (claims a-d, f, g) and 'study_long' (claim e).
# `use_scale('study_d128')` moves the whole study to that larger scale (for accelerators);
# run names carry the scale, so the two studies' caches never mix.
STUDY = {'study': 'study', 'study_long': 'study_long'}


def use_scale(name):
  if name not in ('study', 'study_d128', 'study_w128'):
    raise ValueError(f'fidelity --scale must be one of study, study_d128, study_w128; got {name!r}')
  STUDY.update(study=name, study_long=name + '_long')


def run_name(scale, variant, schedule, lr, seed, steps):
  return f'{scale}-{variant}-{schedule}{lr:g}-s{seed}-n{steps}'


def spec(scale, variant, schedule, lr, seed, steps, part):
  return dict(scale=scale, variant=variant, schedule=schedule, lr=float(lr), seed=int(seed),
              steps=int(steps), part=part,
              name=run_name(scale, variant, schedule, lr, seed, steps))


def runs_dir(out):
  return os.path.join(out, 'fidelity', 'runs')


def load_runs(out) -> Dict[str, dict]:
  runs = {}
  for path in sorted(glob.glob(os.path.join(runs_dir(out), '*.json'))):
    with open(path) as f:
      r = json.load(f)
    runs[r['name']] = r
  return runs


def best_lr(runs, variant, scale=None) -> Optional[float]:
  """The sweep's best peak LR for a variant (lowest final eval loss), None until all LRs ran."""
  scale = scale or STUDY['study']
  finals = {}
  for lr in LRS:
    r = runs.get(run_name(scale, variant, 'rsqrt', lr, 0, SWEEP_STEPS))
    if r is None:
      return None
    finals[lr] = r['eval'][-1][2]
  return min(finals, key=finals.get)


def lr_family(variant) -> str:
  """The swept variant whose best LR a variant uses: itself if swept, else AltUp K=2 for the
  AltUp variants (K > 1), else the baseline (K=1: MoE, Sequence-AltUp, stride-and-skip, dense 2d)."""
  if variant in SWEEP_VARIANTS:
    return variant
  overrides = ALL_VARIANTS[variant][1]
  return 'altup_k2' if isinstance(overrides, dict) and overrides.get('altup_k', 1) > 1 else 'baseline'


def claim_pairs(runs, cid, quick=False) -> List[tuple]:
  """(variant LR, reference LR) pairs of a claim: each at the best LR of its family (`lr_family`,
  from the 300-step sweep), then both at the baseline's best LR. For (a)-(c) the second pair is
  part of the claim (one shared LR); for (d)-(g) it is the `lr_check` part: the 300-step
  sweep's AltUp optimum turned out worse than the baseline's at 1500 steps, so every claim is
  also shown at the LR that worked there (`LR_CHECK_PART`)."""
  lr_of = lambda v: (DEFAULT_LR if quick else (best_lr(runs, lr_family(v)) or DEFAULT_LR))
  _, v, ref, _, _ = CLAIMS[cid]
  pairs = [(lr_of(v), lr_of(ref))]
  base = lr_of('baseline')
  if (base, base) not in pairs:
    pairs.append((base, base))
  return pairs


# Runs of the (d)-(g) claims at the baseline's best LR: reported beside the claims, counted apart
# from the study's budget (sweep + claims), like the ablation.
LR_CHECK_PART = 'lr_check'


def claim_runs(runs, cid, quick=False) -> List[dict]:
  """The runs of one claim, per seed: the reference and the variant at each pair of LRs."""
  full = 24 if quick else FULL_STEPS
  scale_of = lambda s: 'quick' if quick else STUDY.get(s, s)
  _, v, ref, n_seeds, scale = CLAIMS[cid]
  rs = []
  for seed in range(n_seeds):
    for i, (v_lr, ref_lr) in enumerate(claim_pairs(runs, cid, quick)):
      part = LR_CHECK_PART if i and cid not in ('a', 'b', 'c') else cid
      rs.append(spec(scale_of(scale), ref, 'rsqrt', ref_lr, seed, full, part))
      rs.append(spec(scale_of(scale), v, 'rsqrt', v_lr, seed, full, part))
  return rs


def plan(runs, quick=False) -> List[dict]:
  """Every run of the study in priority order (present ones included; the runner skips them)."""
  sweep = 12 if quick else SWEEP_STEPS
  scale_of = lambda s: 'quick' if quick else STUDY.get(s, s)
  out = []
  for v in SWEEP_VARIANTS:
    for lr in LRS:
      out.append(spec(scale_of('study'), v, 'rsqrt', lr, 0, sweep, 'sweep'))
  claim = lambda cid: claim_runs(runs, cid, quick)
  out += claim('a')
  later = []  # (b), (c) at the baseline's best LR, after the other claims
  for cid in ('b', 'c', 'd', 'g1', 'g2', 'g3', 'e', 'f'):
    v_lr, ref_lr = claim_pairs(runs, cid, quick)[0]
    _, v, ref, _, _ = CLAIMS[cid]
    for s in claim(cid):
      own = (s['variant'], s['lr']) in ((v, v_lr), (ref, ref_lr))
      (out if own else later).append(s)
  out += [s for s in later if s['part'] != LR_CHECK_PART]
  for seed in range(ABLATION_SEEDS):  # every setting's seed 0 first: a first answer sooner
    for label, scale, schedule, lr, steps in ABLATION:
      for v in ('baseline', 'altup_k2'):
        out.append(spec(scale_of(scale), v, schedule, lr, seed, steps if not quick else 12,
                        'ablation'))
  out += [s for s in later if s['part'] == LR_CHECK_PART]
  return unique_by_name(out)


def unique_by_name(specs) -> List[dict]:
  """The specs with each run name once, at its first (highest-priority) place."""
  seen, unique = set(), []
  for s in specs:
    if s['name'] not in seen:
      seen.add(s['name'])
      unique.append(s)
  return unique


# ------------------------------------------------------------------------------------------------
# Training one run.

def _schedule(schedule, lr):
  if schedule == 'constant':
    return lr
  # T5X's 'constant * rsqrt_decay': base / sqrt(max(step, warmup)); peak = base / sqrt(warmup).
  return optimizers.learning_rate_schedule('constant * rsqrt_decay',
                                           base_learning_rate=lr * math.sqrt(WARMUP),
                                           warmup_steps=WARMUP)


def _is_coefficient(path) -> bool:
  """AltUp's own parameters (predictor, corrector, routers, stream maps): modules named altup_*."""
  return any(str(getattr(k, 'key', '')).startswith('altup_') for k in path)


def study_optimizer(variant, schedule, lr, coef_lr_scale=None):
  """Adafactor (T5X's defaults) at the schedule; a variant in common.COEF_LR_SCALE (or any, with
  `coef_lr_scale`) trains its AltUp coefficients at that multiple of the LR (Adafactor's update
  scaled for those parameters)."""
  import optax  # pylint: disable=g-import-not-at-top
  optimizer = optimizers.adafactor(_schedule(schedule, lr))
  factor = COEF_LR_SCALE.get(variant, 1.0) if coef_lr_scale is None else float(coef_lr_scale)
  if factor == 1.0:
    return optimizer

  def update(grads, state, params=None):
    updates, state = optimizer.update(grads, state, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * factor if _is_coefficient(path) else u, updates), state

  return optax.GradientTransformation(optimizer.init, update)


_DATA = {}


def _data(scale_name, out):
  if scale_name not in _DATA:
    from studies.quality import load_corpus_batches  # pylint: disable=g-import-not-at-top
    sc = SCALES[scale_name]
    pool = 64 if scale_name == 'quick' else TRAIN_POOL
    _DATA[scale_name] = load_corpus_batches(sc, pool, out)
  return _DATA[scale_name]


def train_run(s, out, log=print) -> dict:
  """Trains one run (from scratch) and returns its record; the caller caches it."""
  if not jax.config.jax_compilation_cache_dir:
    from altup_t5x.data import corpus  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', os.path.join(corpus.cache_dir(), 'jax_cache'))
  sc = SCALES[s['scale']]
  train, evals = _data(s['scale'], out)
  cfg = make_config_from(AltUpConfig(vocab_size=VOCAB_SIZE, dropout_rate=0.0, **sc['model']),
                         s['variant'])
  module = Transformer(config=cfg)
  optimizer = study_optimizer(s['variant'], s['schedule'], s['lr'])
  train_step = jax.jit(make_train_step(module, optimizer), donate_argnums=(0, 1))

  eval_sums = make_eval_sums(module)
  b = sc['batch']
  n = len(train['encoder_input_tokens'])
  rs = np.random.RandomState(s['seed'])
  order = np.concatenate([rs.permutation(n) for _ in range(-(-s['steps'] * b // n))])
  batch_at = lambda step: {k: jnp.asarray(v[order[step * b:(step + 1) * b]])
                           for k, v in train.items()}
  eval_batches = [{k: jnp.asarray(v[i:i + b]) for k, v in evals.items()}
                  for i in range(0, len(evals['encoder_input_tokens']) - b + 1, b)]

  def evaluate(params):
    tot, cnt = 0.0, 0.0
    for eb in eval_batches:
      a, c = eval_sums(params, eb)
      tot, cnt = tot + float(a), cnt + float(c)
    return tot / cnt

  params = init_params(module, jax.random.PRNGKey(s['seed']), batch_at(0))
  opt_state = optimizer.init(params)
  rng = jax.random.PRNGKey(1000 + s['seed'])
  t_compile = time.perf_counter()
  copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
  jax.block_until_ready(train_step(copy(params), copy(opt_state), batch_at(0), rng))
  evaluate(params)
  compile_s = time.perf_counter() - t_compile
  seconds, train_curve, eval_curve = 0.0, [], [(0, 0.0, evaluate(params))]
  t_wall = time.perf_counter()
  for step in range(s['steps']):
    t0 = time.perf_counter()
    params, opt_state, loss, rng = train_step(params, opt_state, batch_at(step), rng)
    loss = float(loss)
    seconds += time.perf_counter() - t0
    train_curve.append((step + 1, seconds, loss))
    if (step + 1) % sc['eval_every'] == 0 or step + 1 == s['steps']:
      eval_curve.append((step + 1, seconds, evaluate(params)))
      log(f'    {s["name"]}: step {step + 1}/{s["steps"]} eval {eval_curve[-1][2]:.4f} '
          f'({seconds / (step + 1) * 1e3:.0f} ms/step)')
  if not all(math.isfinite(e[2]) for e in eval_curve):
    log(f'    {s["name"]}: diverged (non-finite eval loss)')
  return dict(s, params=count_params(params), compile_s=compile_s, train_seconds=seconds,
              wall_seconds=time.perf_counter() - t_wall, eval=eval_curve,
              train=train_curve[::max(1, s['steps'] // 100)], backend=jax.default_backend(),
              loadavg=os.getloadavg()[0], date=time.strftime('%Y-%m-%d %H:%M'))


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _try_lock(path) -> bool:
  """Claims a run for this process (several workers share one cache); a dead owner's lock is taken."""
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        with open(path) as f:
          pid = int(f.read().strip() or 0)
      except (OSError, ValueError):
        return False
      if pid and _pid_alive(pid):
        return False
      try:
        os.remove(path)  # stale: its worker died (the run's result was never written)
      except FileNotFoundError:
        pass
      continue
    with os.fdopen(fd, 'w') as f:
      f.write(str(os.getpid()))
    return True
  return False


def _live_locks(out):
  live = []
  for path in glob.glob(os.path.join(runs_dir(out), '*.lock')):
    try:
      with open(path) as f:
        pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
      continue
    if pid and _pid_alive(pid) and pid != os.getpid():
      live.append(path)
  return live


def _sweep_gate(s, full_plan, runs) -> bool:
  """This study's readiness: claim runs wait for the whole learning-rate sweep."""
  sweep_left = [p for p in full_plan if p['part'] == 'sweep' and p['name'] not in runs]
  return not sweep_left or s['part'] in ('sweep', 'ablation')


def run_study(out, parts=None, max_minutes=None, quick=False, log=print, plan_fn=None,
              ready_fn=None) -> List[str]:
  """Runs the missing runs of the plan (only `parts`, if given) in priority order, caching each.

  Several workers may run at once on one cache (`--jobs N`): each claims a run with a lock file.
  Claim runs wait for the learning-rate sweep (their LR depends on it); meanwhile a worker takes
  sweep or ablation runs, or waits for the other workers' sweep runs to finish. `plan_fn(runs,
  quick)` and `ready_fn(spec, plan, runs)` replace this study's plan and readiness rule (the
  two-size study, `studies.sizes`, runs through here).
  """
  plan_fn = plan_fn or plan
  ready_fn = ready_fn or _sweep_gate
  os.makedirs(runs_dir(out), exist_ok=True)
  t0 = time.time()
  done = []
  while True:
    runs = load_runs(out)
    full_plan = plan_fn(runs, quick)
    todo = [s for s in full_plan if s['name'] not in runs and (not parts or s['part'] in parts)]
    if not todo:
      log('fidelity: nothing left to run' + (f' in parts {parts}' if parts else ''))
      break
    if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
      log(f'fidelity: time budget of {max_minutes} min spent; {len(todo)} runs left')
      break
    ready = [s for s in todo if ready_fn(s, full_plan, runs)]
    lock_of = lambda s: os.path.join(runs_dir(out), s['name'] + '.lock')
    s = next((s for s in ready if _try_lock(lock_of(s))), None)
    if s is None:
      if not _live_locks(out):
        log('fidelity: the claim runs wait for the learning-rate sweep, which no worker is running: '
            'add `sweep` (sizes: `sweep1500`) to --parts')
        break
      time.sleep(10)  # other workers hold every ready run (e.g. the last sweep runs)
      continue
    try:
      if s['name'] in load_runs(out):  # finished by another worker since we listed
        continue
      log(f'fidelity: run {s["name"]} (part {s["part"]}; {len(todo)} left in this selection)')
      rec = train_run({k: v for k, v in s.items() if k != 'ready'}, out, log)
      path = os.path.join(runs_dir(out), s['name'] + '.json')
      with open(path + '.tmp', 'w') as f:
        json.dump(rec, f)
      os.replace(path + '.tmp', path)  # atomic: an interrupted run leaves no half record
    finally:
      os.remove(lock_of(s))
    log(f'fidelity: {s["name"]} done: {rec["train_seconds"]:.0f}s training '
        f'({1e3 * rec["train_seconds"] / s["steps"]:.0f} ms/step), compile {rec["compile_s"]:.0f}s, '
        f'final eval {rec["eval"][-1][2]:.4f}')
    done.append(s['name'])
    write_outputs(out)
  return done


# ------------------------------------------------------------------------------------------------
# Outputs: fidelity.csv and plots (the BENCHMARKS.md section is in `report`).

CSV_COLUMNS = ['claim', 'variant', 'seed', 'step', 'eval_loss', 'train_seconds', 'lr', 'schedule',
               'scale', 'run']


def csv_rows(runs) -> List[dict]:
  rows = []
  for r in sorted(runs.values(), key=lambda r: (r['part'], r['variant'], r['lr'], r['seed'])):
    claims = [r['part']]
    if r['part'] == 'sizes':  # the two-size study's claims (studies.sizes)
      from studies import sizes  # pylint: disable=g-import-not-at-top
      claims = [f'sizes:{c}' for c, (_, v, ref) in sizes.CLAIMS.items()
                if r['variant'] in (v, ref)] or claims
    elif r['part'] not in ('sweep', 'ablation', 'sweep1500', 'remedies'):  # several claims
      claims = [c for c, (_, v, ref, _, _) in CLAIMS.items() if r['variant'] in (v, ref)] or claims
    for claim in claims:
      for step, sec, loss in r['eval']:
        rows.append(dict(claim=claim, variant=r['variant'], seed=r['seed'], step=step,
                         eval_loss=round(loss, 5), train_seconds=round(sec, 2), lr=r['lr'],
                         schedule=r['schedule'], scale=r['scale'], run=r['name']))
  return rows


def write_outputs(out):
  runs = load_runs(out)
  csv_tables.write(os.path.join(out, 'fidelity.csv'), csv_rows(runs), CSV_COLUMNS,
                   float_format=FLOAT_FORMAT)
  try:
    plot(runs, out)
  except ImportError:
    pass


def plot(runs, out):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  groups = {}
  for r in runs.values():
    groups.setdefault((r['part'] if r['part'] in ('sweep', 'ablation') else 'claims', r['scale'],
                       r['steps']), []).append(r)
  if not groups:
    return
  fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
  for ax, (key, rs) in zip(axes[0], sorted(groups.items())):
    for r in sorted(rs, key=lambda r: r['name']):
      e = np.array(r['eval'], dtype=float)
      ax.plot(e[1:, 0], e[1:, 2], label=f'{r["variant"]} {r["schedule"]} {r["lr"]:g} s{r["seed"]}',
              lw=1)
    ax.set_title(f'{key[0]}: scale {key[1]}, {key[2]} steps')
    ax.set_xlabel('step')
    ax.set_ylabel('validation loss')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'fidelity_curves.png'), dpi=90)
  plt.close(fig)
