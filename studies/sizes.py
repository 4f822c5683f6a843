"""The paper's central claims at two model widths, d=64 and d=128: does AltUp's gain grow with size?

    python scripts/benchmark.py sizes --out benchmarks/ --jobs 2  # train what is missing (resumable)
    python scripts/benchmark.py sizes --out benchmarks/ --plan     # list the runs, train nothing

The two sizes are the fidelity study's `study` scale (d=64) and `study_w128` (the same layers,
batch, lengths and steps with the width doubled: d=128, head_dim 32, mlp 256). At each size:

  1. `sweep1500`: every variant at each peak LR of `fidelity.LRS` (10x span), seed 0, for the full
     1500 steps. A 300-step sweep is not enough: at d=64 its optimum (0.1 for AltUp K=2) was worse
     than 0.03 at 1500 steps. The report also reads each sweep's best LR off the same curves at
     steps 300, 600 and 1000, which shows from which step on the choice holds.
  2. `sizes`: the claims (a) AltUp K=2 vs baseline, (b) Recycled-AltUp K=2 vs baseline, (c) AltUp
     K=4 vs K=2 and (h) Gemma 3n's block (K=4) vs static AltUp K=4, 3 seeds, each model at its own
     best LR from its sweep and both at a common LR (the baseline's best at that size).
  3. `remedies`: why Recycled-AltUp gains little. With identity coefficients its K equal blocks get
     equal gradients, so the predictor can only learn p = I + c 1^T
     (studies/recycled_streams.py);
     two changes the paper's description allows break that symmetry: coefficients initialised with
     noise (I + N(0, 0.3)), and the coefficients trained at 10x the LR. 2 seeds at each size, at
     Recycled's own best LR, against Recycled-AltUp itself at the same LR and seeds.

Runs are the fidelity study's (same training loop, data, cache folder `fidelity/runs/` and run
names), so a run both studies need is trained once. Equal wall-clock comparisons use step-time
ratios measured in one process with the variants interleaved (`measure_speed`, `sizes_speed.csv`),
not the training runs' own times, which depend on what else shared the cores.
"""
import math
import os
import time
from typing import Dict, List, Optional

from altup_t5x import csv_tables
from studies import fidelity as fid

SIZES = (('d64', 'study'), ('d128', 'study_w128'))  # (label, fidelity scale)
VARIANTS = ('baseline', 'altup_k2', 'recycled_k2', 'altup_k4', 'gemma3n_k4')
SEEDS = 3
STEPS = fid.FULL_STEPS
CHECK_STEPS = (300, 600, 1000)
# claim id: (statement, variant, reference)
CLAIMS = {
    'a': ('AltUp K=2 (wide) improves on the same-size baseline', 'altup_k2', 'baseline'),
    'b': ('Recycled-AltUp K=2 improves on the same-size baseline', 'recycled_k2', 'baseline'),
    'c': ('the gain grows with K (K=4 better than K=2)', 'altup_k4', 'altup_k2'),
    'h': ("(beyond the paper) Gemma 3n's AltUp block vs static AltUp, K=4", 'gemma3n_k4',
          'altup_k4'),
}
REMEDIES = ('recycled_k2_noise', 'recycled_k2_coef_lr10')
REMEDY_REFERENCE = 'recycled_k2'
REMEDY_SEEDS = 2
PARTS = ('sweep1500', 'sizes', 'remedies')
SPEED_CSV = os.path.join('fidelity', 'sizes_speed.csv')


def scale_of(size: str) -> str:
  return dict(SIZES)[size]


def eval_at(curve, step) -> float:
  """The eval loss recorded at `step` (the study evaluates every 100 steps); nan if absent."""
  for s, _, loss in curve:
    if s == step:
      return loss
  return float('nan')


def sweep_losses(runs, size, variant, step=STEPS) -> Dict[float, Optional[float]]:
  """{peak LR: eval loss at `step`} of a variant's sweep at one size (None: not run yet)."""
  out = {}
  for lr in fid.LRS:
    r = runs.get(fid.run_name(scale_of(size), variant, 'rsqrt', lr, 0, STEPS))
    out[lr] = eval_at(r['eval'], step) if r else None
  return out


def best_lr(runs, size, variant, step=STEPS) -> Optional[float]:
  """The sweep's best peak LR (lowest eval loss at `step`; a diverged run counts as worst), None
  until every LR ran."""
  losses = sweep_losses(runs, size, variant, step)
  if any(x is None for x in losses.values()):
    return None
  return min(losses, key=lambda lr: losses[lr] if math.isfinite(losses[lr]) else math.inf)


def claim_pairs(runs, size, cid) -> List[tuple]:
  """(variant LR, reference LR, kind): each at its own best, then both at the baseline's best.
  Before a sweep is complete its LR is fid.DEFAULT_LR (the runs are then not ready)."""
  _, v, ref = CLAIMS[cid]
  own = lambda x: best_lr(runs, size, x) or fid.DEFAULT_LR
  common = own('baseline')
  pairs = [(own(v), own(ref), 'own')]
  if (common, common) != pairs[0][:2]:
    pairs.append((common, common, 'common'))
  return pairs


def _swept(runs, size, *variants) -> bool:
  return all(best_lr(runs, size, v) is not None for v in variants)


def plan(runs, quick=False) -> List[dict]:
  """Every run in priority order, each with `ready` (False while the sweep it needs is missing)."""
  del quick  # the smoke test of the study is fidelity's `--quick`
  out = []
  for size, scale in reversed(SIZES):  # d=128 first: its runs are the longest
    for v in VARIANTS:
      for lr in fid.LRS:
        out.append(dict(fid.spec(scale, v, 'rsqrt', lr, 0, STEPS, 'sweep1500'), ready=True))
  for size, scale in reversed(SIZES):
    for cid, (_, v, ref) in CLAIMS.items():
      ready = _swept(runs, size, v, ref, 'baseline')
      for seed in range(SEEDS):
        for v_lr, ref_lr, _ in claim_pairs(runs, size, cid):
          out.append(dict(fid.spec(scale, ref, 'rsqrt', ref_lr, seed, STEPS, 'sizes'), ready=ready))
          out.append(dict(fid.spec(scale, v, 'rsqrt', v_lr, seed, STEPS, 'sizes'), ready=ready))
  for size, scale in SIZES:
    ready = _swept(runs, size, REMEDY_REFERENCE)
    lr = best_lr(runs, size, REMEDY_REFERENCE) or fid.DEFAULT_LR
    for seed in range(REMEDY_SEEDS):
      for v in (REMEDY_REFERENCE,) + REMEDIES:
        out.append(dict(fid.spec(scale, v, 'rsqrt', lr, seed, STEPS, 'remedies'), ready=ready))
  return fid.unique_by_name(out)


def run(out, parts=None, max_minutes=None, log=print) -> List[str]:
  """Trains the missing runs of the plan (only `parts`, if given), several workers per cache."""
  return fid.run_study(out, parts, max_minutes, log=log, plan_fn=plan,
                       ready_fn=lambda s, full_plan, runs: s['ready'])


# ------------------------------------------------------------------------------------------------
# Step-time ratios for the equal wall-clock comparisons.

SPEED_COLUMNS = ['size', 'scale', 'variant', 'train_ms', 'train_ratio', 'calls', 'backend', 'date',
                 'loadavg']


def measure_speed(out, rounds=5, calls=4, log=print) -> List[dict]:
  """Median train-step time of every variant (and remedy) at both sizes, in one process, the
  variants of a size interleaved round-robin, on one core (as each `--jobs N` worker trains);
  writes `sizes_speed.csv` under `out`."""
  cores = os.sched_getaffinity(0) if hasattr(os, 'sched_setaffinity') else None
  if cores:  # one core, as each training worker of `--jobs N` has
    os.sched_setaffinity(0, {min(cores)})
  try:
    rows = _measure(out, rounds, calls, log)
  finally:
    if cores:
      os.sched_setaffinity(0, cores)
  os.makedirs(os.path.dirname(os.path.join(out, SPEED_CSV)), exist_ok=True)
  csv_tables.write(os.path.join(out, SPEED_CSV), rows, SPEED_COLUMNS,
                   float_format=fid.FLOAT_FORMAT)
  return rows


def _measure(out, rounds, calls, log):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from altup_t5x.config import AltUpConfig  # pylint: disable=g-import-not-at-top
  from altup_t5x.network import Transformer  # pylint: disable=g-import-not-at-top
  from studies.common import (init_params, make_config_from,  # pylint: disable=g-import-not-at-top
                              make_train_step)
  rows = []
  for size, scale in SIZES:
    sc = fid.SCALES[scale]
    train, _ = fid._data(scale, out)  # pylint: disable=protected-access
    batch = {k: jnp.asarray(v[:sc['batch']]) for k, v in train.items()}
    steps = {}
    for v in VARIANTS + REMEDIES:
      cfg = make_config_from(AltUpConfig(vocab_size=fid.VOCAB_SIZE, dropout_rate=0.0,
                                         **sc['model']), v)
      module = Transformer(config=cfg)
      opt = fid.study_optimizer(v, 'rsqrt', fid.DEFAULT_LR)
      params = init_params(module, jax.random.PRNGKey(0), batch)
      step = jax.jit(make_train_step(module, opt), donate_argnums=(0, 1))
      state = [params, opt.init(params), jax.random.PRNGKey(1)]
      for _ in range(2):  # compile and warm up
        state[0], state[1], loss, state[2] = step(state[0], state[1], batch, state[2])
      jax.block_until_ready(loss)
      steps[v] = (step, state, [])
    for _ in range(rounds):
      for v, (step, state, times) in steps.items():
        for _ in range(calls):
          t0 = time.perf_counter()
          state[0], state[1], loss, state[2] = step(state[0], state[1], batch, state[2])
          jax.block_until_ready(loss)
          times.append(time.perf_counter() - t0)
    base = float(np.median(steps['baseline'][2]))
    for v, (_, _, times) in steps.items():
      ms = 1e3 * float(np.median(times))
      rows.append(dict(size=size, scale=scale, variant=v, train_ms=ms, train_ratio=ms / 1e3 / base,
                       calls=len(times), backend=jax.default_backend(),
                       date=time.strftime('%Y-%m-%d %H:%M'),
                       loadavg=os.getloadavg()[0]))
      log(f'sizes speed: {size} {v}: {ms:.1f} ms/step ({rows[-1]["train_ratio"]:.3f}x)')
  return rows


def speed_ratios(out) -> Dict[tuple, float]:
  """{(size, variant): train-step ratio to the baseline} from `sizes_speed.csv` ({} if absent)."""
  rows = csv_tables.read(os.path.join(out, SPEED_CSV), missing_ok=True)
  return {(r['size'], r['variant']): float(r['train_ratio']) for r in rows}


# ------------------------------------------------------------------------------------------------
# Results (BENCHMARKS.md, section "Two model sizes"; the README's line), from the cached runs.

def _final(runs, scale, variant, lr, seed):
  r = runs.get(fid.run_name(scale, variant, 'rsqrt', lr, seed, STEPS))
  return None if r is None else r['eval'][-1][2], r


def claim_rows(runs, ratios) -> List[dict]:
  """Every (claim, LR kind, size): paired gains at equal steps and equal wall-clock, verdicts."""
  from studies import report  # pylint: disable=g-import-not-at-top
  verdict_of, short = report._verdict, report._short  # pylint: disable=protected-access
  rows = []
  for cid, (statement, v, ref) in CLAIMS.items():
    for size, scale in SIZES:
      for v_lr, ref_lr, kind in claim_pairs(runs, size, cid):
        d_eq, d_time = [], []
        for seed in range(SEEDS):
          lv, rv = _final(runs, scale, v, v_lr, seed)
          lr_, rr = _final(runs, scale, ref, ref_lr, seed)
          if lv is None or lr_ is None:
            continue
          d_eq.append(lr_ - lv)
          if (size, v) in ratios and (size, ref) in ratios:
            d_time.append(report.wall_clock_gain(rv, rr, ratios[(size, v)] / ratios[(size, ref)],
                                                 STEPS))
        verdict, m, se = verdict_of(d_eq)
        tverdict, tm, tse = verdict_of(d_time)
        rows.append(dict(cid=cid, statement=statement, v=v, ref=ref, size=size, kind=kind,
                         lr=v_lr, ref_lr=ref_lr, d=d_eq, m=m, se=se, n=len(d_eq),
                         short=short(verdict), tm=tm, tse=tse, time_short=short(tverdict),
                         tn=len(d_time)))
  return rows


def trend(rows, cid, kind) -> Optional[dict]:
  """The gain's change from the first size to the second (gain(d128) - gain(d64), SE combined):
  'grows' / 'shrinks' beyond 2 SE, else 'no significant change'; None before both have 2 seeds."""
  by = {r['size']: r for r in rows if r['cid'] == cid and r['kind'] == kind}
  (s0, _), (s1, _) = SIZES
  if s0 not in by or s1 not in by or by[s0]['n'] < 2 or by[s1]['n'] < 2:
    return None
  change = by[s1]['m'] - by[s0]['m']
  se = math.sqrt(by[s0]['se'] ** 2 + by[s1]['se'] ** 2)
  word = 'grows' if change > 2 * se else ('shrinks' if change < -2 * se else
                                          'no significant change')
  return dict(change=change, se=se, word=word, first=by[s0], second=by[s1])


def _cell(r):
  if r['n'] == 0:
    return 'not yet run'
  if r['n'] < 2:
    return '1 seed run'
  return (f'{r["m"]:+.4f} +- {r["se"]:.4f} {r["short"]}'
          + (f' ({r["n"]}/{SEEDS} seeds)' if r['n'] < SEEDS else ''))


def _time_cell(r):
  if r['tn'] < 2:
    return 'n/a'
  return f'{r["tm"]:+.4f} +- {r["tse"]:.4f} {r["time_short"]}'


def plan_cost(runs, planned) -> dict:
  """Worker time of the runs this study planned (training, evaluation, compilation)."""
  done = [runs[s['name']] for s in planned if s['name'] in runs]
  cost = lambda r: r.get('wall_seconds', r['train_seconds']) + r['compile_s']
  busy = sum(map(cost, done))
  # What is left, at the measured cost of done runs of the same scale and variant (else scale).
  left = 0.0
  todo = [s for s in planned if s['name'] not in runs]
  for s in todo:
    same = sorted(cost(r) for r in done if (r['scale'], r['variant']) == (s['scale'], s['variant']))
    same = same or sorted(cost(r) for r in done if r['scale'] == s['scale']) or [0.0]
    left += same[len(same) // 2]
  return dict(done=len(done), planned=len(planned), hours=busy / 3600,
              loads=[r['loadavg'] for r in done], todo=len(todo), left_hours=left / 3600)


def section(out, rel) -> str:
  """The BENCHMARKS.md section of the two-size study."""
  from studies import report  # pylint: disable=g-import-not-at-top
  verdict_of, short = report._verdict, report._short  # pylint: disable=protected-access
  runs = fid.load_runs(out)
  planned = plan(runs)
  ratios = speed_ratios(out)
  (s0, sc0), (s1, sc1) = SIZES
  m0, m1 = fid.SCALES[sc0]['model'], fid.SCALES[sc1]['model']
  cost = plan_cost(runs, planned)
  speed_rows = csv_tables.read(os.path.join(out, SPEED_CSV), missing_ok=True)
  speed_run = (f'{speed_rows[0]["date"]}, load average {float(speed_rows[-1]["loadavg"]):.1f}'
               if speed_rows else 'not measured yet')
  out_lines = [report._prose(  # pylint: disable=protected-access
      'sizes_intro', steps=STEPS, seeds=SEEDS, lrs=', '.join(f'{lr:g}' for lr in fid.LRS),
      d0=m0['emb_dim'], d1=m1['emb_dim'], s0=sc0, s1=sc1, head0=m0['head_dim'],
      head1=m1['head_dim'], mlp0=m0['mlp_dim'], mlp1=m1['mlp_dim'],
      batch=fid.SCALES[sc0]['batch'], inputs=fid.SCALES[sc0]['inputs'],
      targets=fid.SCALES[sc0]['targets'], speed_csv=f'{rel}/{SPEED_CSV}', speed_run=speed_run,
      done=cost['done'], planned=cost['planned'], hours=f'{cost["hours"]:.2f}',
      left=(f'; left: {cost["todo"]} runs, about {cost["left_hours"]:.2f} h of worker time at the '
            'measured cost of the same scale and variant' if cost['todo'] else ''),
      loads=(f'{min(cost["loads"]):.1f}-{max(cost["loads"]):.1f}' if cost['loads'] else 'n/a')),
      '']

  # The sweep.
  out_lines += [f'### Learning-rate sweep ({STEPS} steps, seed 0)', '',
                '| size | variant | ' + ' | '.join(f'peak {lr:g}' for lr in fid.LRS) +
                f' | best at {STEPS} | best at step ' + ' / '.join(map(str, CHECK_STEPS)) + ' |',
                '|---|---|' + '---:|' * len(fid.LRS) + '---:|---:|']
  held, total, early = 0, 0, 0
  for size, _ in SIZES:
    for v in VARIANTS:
      losses = sweep_losses(runs, size, v)
      best = best_lr(runs, size, v)
      cells = ' | '.join('not yet run' if x is None else (f'{x:.4f}' if math.isfinite(x) else
                                                          'diverged') for x in losses.values())
      checks = [best_lr(runs, size, v, step) for step in CHECK_STEPS]
      if best is not None:
        total += 1
        held += checks[-1] == best
        early += checks[0] == best
      out_lines.append(f'| {size} | {v} | {cells} | {"n/a" if best is None else f"{best:g}"} | '
                       + ' / '.join('n/a' if c is None else f'{c:g}' for c in checks) + ' |')
  out_lines.append('')
  if total:
    out_lines += [f'Read off the same curves, the LR that is best at step {STEPS} is already best '
                  f'at step {CHECK_STEPS[-1]} for {held} of {total} (size, variant) pairs and at '
                  f'step {CHECK_STEPS[0]} (a {CHECK_STEPS[0]}-step sweep) for {early} of '
                  f'{total}.', '']

  # Verdicts and trends.
  rows = claim_rows(runs, ratios)
  out_lines += ['### Verdicts at both sizes', '',
                f'Gain: reference minus variant eval loss at step {STEPS}, paired by seed, mean '
                '+- SE (positive: the claim holds). Own: each model at its own best LR at that '
                'size; common: both at the baseline\'s best. Change: gain at '
                f'd={m1["emb_dim"]} minus gain at d={m0["emb_dim"]}, SEs combined; *grows* / '
                '*shrinks* beyond 2 SE.', '',
                f'| claim | LRs | d={m0["emb_dim"]}: LR, gain | equal wall-clock | '
                f'd={m1["emb_dim"]}: LR, gain | equal wall-clock | change | trend |',
                '|---|---|---|---|---|---|---:|---|']
  for cid, (statement, v, ref) in CLAIMS.items():
    for kind in ('own', 'common'):
      rs = {r['size']: r for r in rows if r['cid'] == cid and r['kind'] == kind}
      if not rs:
        continue
      cells = []
      for size, _ in SIZES:
        r = rs.get(size)
        cells += ['-', '-'] if r is None else [
            f'{v} {r["lr"]:g} vs {ref} {r["ref_lr"]:g}: {_cell(r)}', _time_cell(r)]
      t = trend(rows, cid, kind)
      label = kind
      if kind == 'own' and not any(r['cid'] == cid and r['kind'] == 'common' for r in rows):
        label = 'own = common'  # every model's best LR is the baseline's at both sizes
      out_lines.append(f'| ({cid}) {statement} | {label} | {" | ".join(cells)} | '
                       + (f'{t["change"]:+.4f} +- {t["se"]:.4f} | {t["word"]}' if t else
                          'n/a | n/a') + ' |')
  out_lines.append('')
  if ratios:
    out_lines += ['Train-step ratios to the baseline behind the equal wall-clock columns '
                  f'(`{rel}/{SPEED_CSV}`, {speed_rows[0].get("backend", "cpu")} float32'
                  + (', one core' if speed_rows[0].get('backend', 'cpu') == 'cpu' else '') + '): '
                  + '; '.join(
                      f'd={fid.SCALES[scale]["model"]["emb_dim"]} ' + ', '.join(
                          f'{v} {ratios[(size, v)]:.3f}x' for v in VARIANTS[1:]
                          if (size, v) in ratios) for size, scale in SIZES) +
                  '. At these widths the per-layer AltUp updates weigh more than at T5.1.1-small '
                  '("What a step costs"), so the equal wall-clock verdicts are about this '
                  'machine and these sizes.', '']

  # Recycled-AltUp remedies.
  out_lines += ['### Recycled-AltUp: remedies for its equal blocks', '',
                f'Paired by seed against Recycled-AltUp K=2 at the same LR (its own best); '
                'positive: the remedy is better; verdict by the 2-SE rule over the seeds. Last '
                'column: against the baseline at its best LR (claim (b) with the remedy).', '',
                '| size | variant | LR | eval loss by seed | vs Recycled K=2 | verdict | '
                'vs baseline |',
                '|---|---|---:|---|---:|---|---:|']
  for size, scale in SIZES:
    lr = best_lr(runs, size, REMEDY_REFERENCE)
    base_lr = best_lr(runs, size, 'baseline')
    if lr is None:
      out_lines.append(f'| {size} | - | - | sweep not complete | - | - | - |')
      continue
    for v in (REMEDY_REFERENCE,) + REMEDIES:
      finals, d_ref, d_base = [], [], []
      for seed in range(REMEDY_SEEDS):
        x, _ = _final(runs, scale, v, lr, seed)
        xr, _ = _final(runs, scale, REMEDY_REFERENCE, lr, seed)
        xb, _ = _final(runs, scale, 'baseline', base_lr, seed) if base_lr else (None, None)
        if x is None:
          continue
        finals.append(x)
        if xr is not None:
          d_ref.append(xr - x)
        if xb is not None:
          d_base.append(xb - x)
      fmt = lambda ds: ('-' if not ds else ' '.join(f'{d:+.4f}' for d in ds) + (
          f' (mean {sum(ds) / len(ds):+.4f})' if len(ds) > 1 else ''))
      verdict = '-'
      if v != REMEDY_REFERENCE and d_ref:
        verdict = {'reproduced': 'better', 'opposite': 'worse'}.get(
            short(verdict_of(d_ref)[0]), 'inconclusive')
      out_lines.append(f'| {size} | {v} | {lr:g} | '
                       + (' '.join(f'{x:.4f}' for x in finals) or 'not yet run') + ' | '
                       + ('-' if v == REMEDY_REFERENCE else fmt(d_ref)) + f' | {verdict} | '
                       + fmt(d_base) + ' |')
  out_lines.append('')
  streams = csv_tables.read(os.path.join(out, 'recycled_streams.csv'), missing_ok=True)
  if streams:
    out_lines.append(_streams_reading(streams))
    out_lines.append('')
  return '\n'.join(out_lines)


# A block whose non-proportional part is below this counts as a multiple of the other.
PROPORTIONAL = 0.16


def _streams_reading(rows) -> str:
  """One generated paragraph from recycled_streams.csv: do the blocks stay proportional?"""
  probes = {}  # (scale, coef_init, noise, coef LR scale, lr, seed) -> its rows by step
  for r in rows:
    key = (r.get('scale') or 'study', r['coef_init'], r['coef_init_scale'],
           float(r.get('coef_lr_scale') or 1), r['lr'], r['seed'])
    probes.setdefault(key, []).append(r)
  probes = {k: sorted(rs, key=lambda r: int(r['step'])) for k, rs in probes.items()}
  emb = lambda key: fid.SCALES[key[0]]['model']['emb_dim']
  coefs = lambda key: (f'coefficients `{key[1]}`'
                       + (f' (noise {float(key[2]):g})' if key[1] == 'normal' else '')
                       + (f' at {key[3]:g}x the LR' if key[3] != 1 else ''))
  parts = []
  for key, rs in probes.items():
    first, last = rs[0], rs[-1]
    parts.append(
        f'd={emb(key)}, peak LR {float(key[4]):g}, seed {key[5]}, {coefs(key)}: '
        f'|x1 - x2| / |x1| {float(first["diff"]):.3f} at step {first["step"]} -> '
        f'{float(last["diff"]):.3f} at step {last["step"]}, the part of x2 not proportional to '
        f'x1 {float(first["non_prop"]):.3f} -> {float(last["non_prop"]):.3f}, largest '
        f'off-diagonal |p| {float(last["p_offdiag_max"]):.3f}'
        + (f', eval loss {float(last["eval_loss"]):.4f}' if last.get('eval_loss') else ''))
  last = {k: rs[-1] for k, rs in probes.items()}
  low = [k for k, r in last.items() if float(r['non_prop']) < PROPORTIONAL]
  text = ('How far Recycled-AltUp\'s two blocks drift apart (`benchmarks/recycled_streams.csv`, '
          '`python -m studies.recycled_streams`; the encoder\'s blocks entering the reduction, '
          'on 8 validation rows): ' + '; '.join(parts) + '. ')
  text += (f'Reading: in {len(low)} of {len(last)} probes the part of x2 not proportional to x1 '
           f'ends below {PROPORTIONAL:g}: the blocks carry about one direction up to scale, and '
           'Recycled-AltUp then acts much like the baseline with a rescaled residual stream.')
  for k in (k for k in last if k not in low):
    same = [r for q, r in last.items() if q[0] == k[0] and q[1] == 'identity' and q[3] == 1 and
            r.get('eval_loss')]
    r = last[k]
    if same and r.get('eval_loss'):
      better = float(r['eval_loss']) < float(same[0]['eval_loss'])
      text += (f' The probe that keeps them further apart at d={emb(k)} '
               f'({float(r["non_prop"]):.3f}; {coefs(k)}) ends '
               f'{"below" if better else "above"} the identity probe\'s eval loss '
               f'({float(r["eval_loss"]):.4f} vs {float(same[0]["eval_loss"]):.4f}).')
  return text


def summary_line(out) -> str:
  """The README's line on the two-size study."""
  runs = fid.load_runs(out)
  planned = plan(runs)
  rows = claim_rows(runs, speed_ratios(out))
  cost = plan_cost(runs, planned)
  (s0, sc0), (s1, sc1) = SIZES
  d0, d1 = fid.SCALES[sc0]['model']['emb_dim'], fid.SCALES[sc1]['model']['emb_dim']
  parts = []
  for cid in CLAIMS:
    by = {r['size']: r for r in rows if r['cid'] == cid and r['kind'] == 'own'}
    if s0 in by and s1 in by and by[s0]['n'] >= 2 and by[s1]['n'] >= 2:
      t = trend(rows, cid, 'own')
      parts.append(f'({cid}) {by[s0]["m"]:+.4f} -> {by[s1]["m"]:+.4f}'
                   + (f' ({t["word"]})' if t else ''))
  return (f'- Two sizes (d={d0} and d={d1}, 4+4 layers, {STEPS} steps, {SEEDS} seeds, each model '
          f'at its own best LR from a {STEPS}-step sweep): {cost["done"]} of {cost["planned"]} '
          f'runs done. Gain at equal steps, d={d0} -> d={d1}: '
          + ('; '.join(parts) or 'not yet run') + '. BENCHMARKS.md, "Two model sizes".')
