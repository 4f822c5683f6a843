"""Writes BENCHMARKS.md from the outputs of `scripts/benchmark.py` (speed.csv, t5x.csv, quality.json).

    python scripts/make_benchmarks_md.py benchmarks/     # or: python scripts/benchmark.py report

Target checks are computed from the CSVs; the explanations of missed targets are the analysis
recorded in EXPLANATIONS below (from the HLO / cost-analysis inspection described there).
"""
import csv
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, shape, variant, column, limit, description)
TARGETS = [
    ('AltUp K=2 (wide) train step', 'altup_k2', 'train_ratio', 1.10),
    ('Recycled-AltUp K=2 train step', 'recycled_k2', 'train_ratio', 1.05),
    ('AltUp K=4 (wide) train step', 'altup_k4', 'train_ratio', 1.20),
    ('Recycled-AltUp K=4 train step', 'recycled_k4', 'train_ratio', 1.20),
    ('AltUp K=2 cached decode per token', 'altup_k2', 'decode_ratio', 1.10),
    ('AltUp K=2 peak memory in training', 'altup_k2', 'train_peak_ratio', 1.30),
    ('AltUp K=4 peak memory in training', 'altup_k4', 'train_peak_ratio', 1.30),
    ('Sequence-AltUp stride 2 train step', 'seq_altup_s2', 'train_ratio', 0.75),
]
FLOP_TARGETS = ['altup_k2', 'recycled_k2', 'altup_k4', 'recycled_k4']

EXPLANATIONS_PATH = os.path.join(ROOT, 'benchmarks', 'EXPLANATIONS.md')


def _f(x, nd=2):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return str(x)
  if math.isnan(x):
    return 'n/a'
  return f'{x:.{nd}f}'


def read_csv(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(csv.DictReader(f))


PROJECT_BATCH = 256  # the paper's pre-training batch size


def projected_ms(r, batch=PROJECT_BATCH):
  """Train step at another batch size, from the measured parts: the Adafactor update costs the same
  at any batch, the rest (forward + backward) grows linearly with it. A projection, not a measurement."""
  opt, train = float(r['optimizer_ms']), float(r['train_ms'])
  return opt + (train - opt) * batch / float(r['batch'])


def projected_ratio(r, rows):
  base = next(b for b in rows if b['shape'] == r['shape'] and b['variant'] == 'baseline')
  return projected_ms(r) / projected_ms(base)


def speed_section(rows, meta):
  out = []
  for shape in dict.fromkeys(r['shape'] for r in rows):
    rs = [r for r in rows if r['shape'] == shape]
    r0 = rs[0]
    out.append(f'### Shape `{shape}` (batch {r0["batch"]}, inputs {r0["inputs"]}, targets '
               f'{r0["targets"]}; {r0["train_n"]} timed train/forward calls and {r0["decode_n"]} '
               f'decode steps per variant{"" if int(r0["train_n"]) >= 20 else ", FEWER than the default 20: a reduced run"})\n')
    out.append('| variant | params | train step ms | x base | XLA FLOP x | XLA bytes x | forward ms | x base | '
               'decode ms/token | x base | train peak MB | x base | Adafactor update ms | '
               f'train x base projected to batch {PROJECT_BATCH} |')
    out.append('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    base = next(b for b in rs if b['variant'] == 'baseline')
    bytes_x = lambda r: float(r['train_gbytes']) / float(base['train_gbytes'])
    for r in rs:
      out.append(
          f'| {r["variant"]} | {float(r["params"]) / 1e6:.2f}M | {_f(r["train_ms"], 1)} '
          f'({_f(r["train_ms_lo"], 1)}-{_f(r["train_ms_hi"], 1)}) | **{_f(r["train_ratio"])}** | '
          f'{_f(r["train_flop_ratio"])} | {_f(bytes_x(r))} | {_f(r["forward_ms"], 1)} | {_f(r["forward_ratio"])} | '
          f'{_f(r["decode_ms"], 2)} | {_f(r["decode_ratio"])} | {_f(r["train_peak_mb"], 0)} | '
          f'{_f(r["train_peak_ratio"])} | {_f(r.get("optimizer_ms"), 1)} | '
          f'{_f(projected_ratio(r, rows))} |')
    out.append('')
    out.append('GFLOPs per call (XLA cost analysis): ' + ', '.join(
        f'{r["variant"]} train {_f(r["train_gflops"], 1)} / forward {_f(r["forward_gflops"], 1)}'
        f' / decode {_f(r["decode_gflops"], 3)}' for r in rs) + '.\n')
    out.append('Compile seconds (train step): ' + ', '.join(
        f'{r["variant"]} {_f(r["train_compile_s"], 0)}' for r in rs) + '.\n')
  return '\n'.join(out)


def target_section(rows, t5x_rows):
  out = ['| target | shape | measured | limit | status |', '|---|---|---:|---:|---|']
  for shape in dict.fromkeys(r['shape'] for r in rows):
    by = {r['variant']: r for r in rows if r['shape'] == shape}
    for name, variant, col, limit in TARGETS:
      if variant not in by:
        continue
      x = float(by[variant][col])
      status = 'met' if x <= limit else '**missed**'
      if col == 'train_ratio':
        p = projected_ratio(by[variant], rows)
        status += f' (projected to batch {PROJECT_BATCH}: {p:.3f}, {"met" if p <= limit else "missed"})'
      out.append(f'| {name} | {shape} | {x:.3f} | <= {limit:.2f} | {status} |')
    for variant in FLOP_TARGETS:
      if variant not in by:
        continue
      t, fl = float(by[variant]['train_ratio']), float(by[variant]['train_flop_ratio'])
      dev = t / fl - 1
      out.append(f'| {variant} train step within 5% of its FLOP ratio ({fl:.3f}) | {shape} | '
                 f'{100 * dev:+.1f}% | +-5% | {"met" if abs(dev) <= 0.05 else "**missed**"} |')
  for r in t5x_rows:
    if r['network'] == 'altup_t5x':
      x = float(r['train_ratio'])
      out.append(f'| K=1 train step vs T5X `t5x.examples.t5.network` | {r["shape"]} | {x:.3f} | '
                 f'<= 1.00 (+noise) | {"met" if x <= 1.03 else "**missed**"} |')
  return '\n'.join(out)


def t5x_section(rows):
  if not rows:
    return '(not run: needs T5X\'s environment, see the command above)\n'
  out = ['| shape | network | params | train step ms | x T5X | forward ms | x T5X | train GFLOP |',
         '|---|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    out.append(f'| {r["shape"]} | {r["network"]} | {float(r["params"]) / 1e6:.3f}M | '
               f'{_f(r["train_ms"], 1)} ({_f(r["train_ms_lo"], 1)}-{_f(r["train_ms_hi"], 1)}) | '
               f'{_f(r["train_ratio"], 3)} | {_f(r["forward_ms"], 1)} | {_f(r["forward_ratio"], 3)}'
               f' | {_f(r["train_gflops"], 2)} |')
  return '\n'.join(out) + '\n'


def quality_section(q):
  if not q:
    return '(not run)\n'
  run, model, summary = q['run'], q['model'], q['summary']
  out = [f'Model: {model}, vocabulary 1100 (embedded KJV SentencePiece), batch {run["batch"]} x '
         f'(inputs {run["inputs"]}, targets {run["targets"]}) packed, Adafactor (T5X defaults) at '
         f'lr {run["learning_rate"]} (T5X\'s rsqrt schedule during its 10k warm-up steps), no '
         f'dropout, {len(q["seeds"])} seeds (init and data order), {run["steps"]} steps '
         f'(baseline {run["baseline_steps"]}, so that it can reach the others\' final loss). '
         f'Eval loss: token-weighted cross-entropy on {run["eval_examples"]} packed validation '
         f'examples, every {run["eval_every"]} steps. Wall-clock: the summed step times (variants '
         f'interleaved step by step in one process), without evaluation and compilation. '
         f'Total {q.get("seconds", 0) / 60:.1f} min.'
         + ('' if run['steps'] >= 200 and len(q['seeds']) >= 3 else
            ' **A reduced run (the default is 200 steps x 3 seeds): too short to judge AltUp.**')
         + '\n',
         f'| variant | params | eval loss at step {run["steps"]} (mean +- std) | min-max | '
         f'per seed | ms/step | baseline steps to reach | baseline s to reach | own s |',
         '|---|---:|---:|---:|---|---:|---:|---:|---:|']
  for v, s in summary.items():
    reached = s['baseline_steps_reached']
    n = len(s['finals'])
    steps_txt = (f'{s["baseline_steps_to_reach"]:.0f}' if reached == n else
                 f'not reached in {run["baseline_steps"]} ({reached}/{n} seeds)')
    secs_txt = f'{s["baseline_seconds_to_reach"]:.1f}' if reached == n else 'n/a'
    out.append(f'| {v} | {s["params"] / 1e6:.3f}M | {s["final_eval_loss"]:.4f} +- '
               f'{s["final_eval_loss_std"]:.4f} | {s["final_eval_loss_min"]:.4f}-'
               f'{s["final_eval_loss_max"]:.4f} | {" ".join(f"{x:.3f}" for x in s["finals"])} | '
               f'{s["step_ms"]:.1f} | {steps_txt} | {secs_txt} | {s["seconds"]:.1f} |')
  out.append('')
  base = summary['baseline']
  for v, s in summary.items():
    if v == 'baseline':
      continue
    diffs = [b - a for a, b in zip(s['finals'], base['finals'])]
    mean = sum(diffs) / len(diffs)
    spread = max(base['final_eval_loss_std'], s['final_eval_loss_std'])
    verdict = ('larger than' if abs(mean) > 2 * spread else 'within twice')
    out.append(f'- {v}: baseline minus {v} eval loss at step {run["steps"]} = {mean:+.4f} '
               f'(paired by seed: {", ".join(f"{d:+.4f}" for d in diffs)}), {verdict} the '
               f'seed-to-seed std ({spread:.4f}); positive = {v} is better.')
  return '\n'.join(out) + '\n'


def auto_summary(rows, t5x_rows, q):
  """A few lines for the README, from the numbers."""
  lines = ['## Summary (paste-able into the README)', '']
  small = {r['variant']: r for r in rows if r['shape'] == 'small'} or {
      r['variant']: r for r in rows}
  if small:
    def tr(v):
      r = small.get(v)
      return 'n/a' if r is None else (f'{float(r["train_ratio"]):.2f}x step '
                                       f'({float(r["train_flop_ratio"]):.2f}x FLOPs)')
    shape = next(iter(small.values()))['shape']
    lines.append(f'- CPU float32, T5.1.1-{shape} shapes, ratios to the baseline in one process: '
                 f'AltUp K=2 {tr("altup_k2")}, Recycled K=2 {tr("recycled_k2")}, AltUp K=4 '
                 f'{tr("altup_k4")}, Recycled K=4 {tr("recycled_k4")}, dense 2d {tr("dense_2d")}, '
                 f'Sequence-AltUp stride 2 {tr("seq_altup_s2")}.')
    if 'altup_k2' in small:
      r = small['altup_k2']
      lines.append(f'- AltUp K=2: cached decode {float(r["decode_ratio"]):.2f}x per token, training '
                   f'peak memory {float(r["train_peak_ratio"]):.2f}x, forward '
                   f'{float(r["forward_ratio"]):.2f}x; projected to batch {PROJECT_BATCH} the train '
                   f'step is {projected_ratio(r, rows):.2f}x (the Adafactor update, a per-parameter '
                   'cost, dominates the small CPU batch).')
  for r in t5x_rows:
    if r['network'] == 'altup_t5x':
      lines.append(f'- Our K=1 network vs T5X\'s `t5x.examples.t5.network` ({r["shape"]}): train '
                   f'step {float(r["train_ratio"]):.3f}x, forward {float(r["forward_ratio"]):.3f}x.')
  if q:
    sm = q['summary']
    base = sm['baseline']
    parts = []
    for v in ('altup_k2', 'recycled_k2', 'dense_2d'):
      if v in sm:
        s = sm[v]
        parts.append(f'{v} {s["final_eval_loss"]:.3f} +- {s["final_eval_loss_std"]:.3f}')
    lines.append(f'- Quality (embedded corpus, d={q["model"]["emb_dim"]}, {q["run"]["steps"]} steps, '
                 f'{len(q["seeds"])} seeds, validation loss): baseline '
                 f'{base["final_eval_loss"]:.3f} +- {base["final_eval_loss_std"]:.3f}, '
                 + ', '.join(parts) + '.')
  lines.append('- No GPU/TPU numbers yet (no device in this session).')
  return '\n'.join(lines) + '\n'


def write(out_dir, path):
  rows = read_csv(os.path.join(out_dir, 'speed.csv'))
  t5x_rows = read_csv(os.path.join(out_dir, 't5x.csv'))
  qpath = os.path.join(out_dir, 'quality.json')
  q = json.load(open(qpath)) if os.path.exists(qpath) else None
  meta_path = os.path.join(out_dir, 'meta.json')
  meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
  rel = os.path.relpath(out_dir, os.path.dirname(path))
  expl_path = os.path.join(out_dir, 'EXPLANATIONS.md')
  explanations = open(expl_path).read() if os.path.exists(expl_path) else ''
  summary = auto_summary(rows, t5x_rows, q)
  measured = '; '.join(f'{k}: {v["date"]}, {v["cpus"]} CPUs ({v["machine"]}), JAX {v["jax"]} '
                       f'{v["backend"]}, load average at the end {v["loadavg"]:.1f}'
                       for k, v in meta.items())
  text = f"""# Benchmarks

Regenerate everything (about 25 minutes on 2 idle CPU cores):

    python scripts/benchmark.py all --out benchmarks/

Parts: `speed`, `t5x` (run with `/work/scratch/t5xenv/bin/python`, where T5X is installed), `quality`,
`report` (this file only). Method, measured quantities and defaults are in the docstring of
`scripts/benchmark.py`. Raw numbers: `{rel}/speed.csv`, `{rel}/t5x.csv`, `{rel}/quality.csv`,
`{rel}/quality_curves.csv`.

Measured: {measured or 'n/a'}.
**No GPU or TPU was available**: every number here is float32 on CPU. The GPU bfloat16 small/base
run is left for a session with a device (`python scripts/benchmark.py speed` runs unchanged there).

{summary}
## Targets

Ratios are to the baseline of the same `emb_dim`, measured in one process (variants interleaved
round-robin). Peak memory is XLA's planned buffer size for one call (arguments + outputs + temporaries
- aliased/donated; `compiled.memory_analysis()`), not a measured resident set size.

{target_section(rows, t5x_rows)}

{explanations}
## Speed

Times are medians of all timed calls (by default 4 rounds x 5 = 20 per variant, after a warm-up
call in every round);
brackets: min-max of the per-round medians. Train step = forward + backward + Adafactor update
(T5X's defaults), parameters and optimizer state donated. Decode = one cached decoder step for the
whole batch (T5X-style cache, `decode=True`), median over the target length. "Adafactor update ms"
times the optimizer update alone on gradients of the parameters' shapes.

{speed_section(rows, meta)}

![speed ratios]({rel}/speed_ratios.png)

## Our K=1 network against T5X's

Same T5.1.1 config, same train step function, one process (T5X's environment), interleaved.

{t5x_section(t5x_rows)}
## Quality on the embedded corpus

{quality_section(q)}
![loss vs steps]({rel}/quality_loss_vs_steps.png)

![loss vs time]({rel}/quality_loss_vs_time.png)

![baseline to reach]({rel}/quality_baseline_to_reach.png)
"""
  with open(path, 'w') as f:
    f.write(text)
  return path


if __name__ == '__main__':
  out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, 'benchmarks')
  print(write(out_dir, os.path.join(ROOT, 'BENCHMARKS.md')))
