"""The report: BENCHMARKS.md, docs/scaling.md and the README's results block, generated from the
files in `benchmarks/`.

    python scripts/benchmark.py report --out benchmarks/

Every number in them comes from step_cost.csv, speed.csv, t5x.csv, quality.json,
fidelity/runs/*.json, scaling.csv, scaling_profile.csv and meta.json. BENCHMARKS.md opens with
the results (one table: what each variant costs and what it buys), then the measurements behind
them, and ends with how to reproduce them. The hand-written analysis (benchmarks/EXPLANATIONS.md)
is a template: it quotes numbers only through fields such as
`{speed.small.altup_k4.train_ratio:.2f}` (filled in from the CSVs here), or names the run it refers
to. `tests/test_benchmarks_report.py` checks that the committed documents and README block are
exactly what this module produces from the committed files.
"""
import json
import math
import os
import string

from altup_t5x import csv_tables


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



def _f(x, nd=2):
  try:
    x = float(x)
  except (TypeError, ValueError):
    return str(x)
  if math.isnan(x):
    return 'n/a'
  return f'{x:.{nd}f}'


TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'templates')


def _prose(name, **values):
  """The text of templates/<name>.md with its $placeholders filled (`string.Template`).

  The prose of the report lives in those files; the code fills in numbers and tables. A template
  file's final newline is not part of its text.
  """
  with open(os.path.join(TEMPLATES, name + '.md')) as f:
    text = f.read()
  return string.Template(text[:-1] if text.endswith('\n') else text).substitute(values)


def _table(out_dir, name):
  """The rows of `out_dir`/`name`; none for a measurement not made yet."""
  return csv_tables.read(os.path.join(out_dir, name), missing_ok=True)


PROJECT_BATCH = 256  # the paper's pre-training batch size


def projected_ms(r, batch=PROJECT_BATCH):
  """Train step at another batch size, from the measured parts: the Adafactor update costs the same
  at any batch, the rest (forward + backward) grows linearly with it. A projection, not a measurement."""
  opt, train = float(r['optimizer_ms']), float(r['train_ms'])
  return opt + (train - opt) * batch / float(r['batch'])


def projected_ratio(r, rows):
  base = next(b for b in rows if b['shape'] == r['shape'] and b['variant'] == 'baseline')
  return projected_ms(r) / projected_ms(base)


# ------------------------------------------------------------------------------------------------
# The headline: one row per variant, what it costs (step_cost.csv, else the speed benchmarks) and
# what it buys (the fidelity study's verdicts).

# The headline's rows in this order (then any other variant the data has), with their names.
HEADLINE_LABELS = {
    'baseline': 'baseline',
    'altup_k2': 'AltUp K=2',
    'recycled_k2': 'Recycled-AltUp K=2',
    'altup_k4': 'AltUp K=4',
    'recycled_k4': 'Recycled-AltUp K=4',
    'seq_altup_s2': 'Sequence-AltUp, stride 2',
    'seq_skip_s2': 'stride-and-skip, stride 2',
    'altup_k2_dynamic': 'AltUp K=2, dynamic coefficients (one router pass)',
    'altup_k2_predicted': 'AltUp K=2, layer reads the predicted block',
    'altup_k2_same': 'AltUp K=2, same-block selection',
    'moe': 'MoE (4 experts, every 2nd layer)',
    'altup_k2_moe': 'AltUp K=2 + MoE',
    'dense_2d': 'dense 2x-wide T5.1.1 (reference)',
}
# Claims whose variant is a reference model, not AltUp: there "reproduced" means the reference beats
# AltUp, which is never one of AltUp's gains.
REFERENCE_CLAIMS = ('g3',)
# A claim's statement where the study's one-line statement (fidelity.CLAIMS) says too little.
CLAIM_STATEMENTS = {
    'g1': ('(beyond the paper) dynamic coefficients with one router pass per layer '
           '(`altup_correct_router=\'input\'`; not Gemma 3n\'s block, gin/altup/gemma3n_k4.gin) vs '
           'static AltUp'),
    'g3': '(reference, not an AltUp claim) a dense 2x-wide model beats AltUp K=2',
}
FALLBACK_MARKS = ('\u2020', '\u2021')  # dagger: speed.csv; double dagger: the study's speed run


def _step_cost_choice(rows, accelerator):
  """(run, size) of step_cost.csv that the headline reads: on a CPU (accelerator=False) or on an
  accelerator, the run with the most tokens per train batch (size 'small' where a run has it); the
  later run on a tie. None if there is no such run."""
  sizes = {}
  for r in rows:
    if r['device'].startswith('cpu') == accelerator or r['kind'] != 'train':
      continue
    sizes.setdefault(r['run'], {})[r['size']] = int(r['batch']) * (int(r['inputs']) +
                                                                      int(r['targets']))
  if not sizes:
    return None
  pick = {run: ('small' if 'small' in s else next(iter(s))) for run, s in sizes.items()}
  most = max(sizes[run][pick[run]] for run in sizes)
  run = [run for run in sizes if sizes[run][pick[run]] == most][-1]
  return run, pick[run]


def _step_cost_of(rows, choice):
  """{variant: dict(time, flops, mem ratios to the baseline, row)} of one (run, size), option
  `default`, train step."""
  if choice is None:
    return {}
  run, size = choice
  by = {r['variant']: r for r in rows if r['run'] == run and r['size'] == size and
        r['option'] == 'default' and r['kind'] == 'train'}
  base = by.get('baseline')
  if base is None:
    return {}
  ratio = lambda r, col: float(r[col]) / float(base[col])
  return {v: dict(time=ratio(r, 'median_ms'), flops=ratio(r, 'flops'), mem=ratio(r, 'peak_bytes'),
                  row=r) for v, r in by.items()}


def _speed_costs(rows):
  """{variant: ratios} of a speed benchmark's small shape (speed.csv's columns)."""
  return {r['variant']: dict(time=float(r['train_ratio']), flops=float(r['train_flop_ratio']),
                             mem=float(r['train_peak_ratio']), row=r)
          for r in rows if r['shape'] == 'small'}


def _claims_by_variant(rows, fid):
  """{variant: (claim id, 'variant' or 'reference')}: the claim each headline row reports. A claim
  sits on its variant's row; where that row already has one (AltUp K=2: (a)), on its reference's."""
  placed = {}
  for cid, (_, v, ref, _, _) in fid.CLAIMS.items():
    if not any(r['cid'] == cid for r in rows):
      continue
    if v not in placed:
      placed[v] = (cid, 'variant')
    elif ref not in placed:
      placed[ref] = (cid, 'reference')
  return placed


def _verdict_words(r, fid, time=False):
  """A verdict in the claim's own direction. For a reference claim it names the better model."""
  verdict = r['time_short'] if time else r['short']
  if r['cid'] in REFERENCE_CLAIMS:
    _, v, ref, _, _ = fid.CLAIMS[r['cid']]
    return {'reproduced': f'{v} better', 'opposite': f'{ref} better'}.get(verdict, verdict)
  return verdict


def _gain_cell(rows, fid, time=False):
  cells = []
  for r in rows:
    m, se, n = (r['tm'], r['tse'], r['tn']) if time else (r['m'], r['se'], r['n'])
    lrs = f'LR {r["lr"]:g}/{r["ref_lr"]:g}'
    if n < 2:
      cells.append(f'not yet run ({lrs})' if n == 0 else f'1 seed run ({lrs})')
    else:
      cells.append(f'{m:+.4f} +- {se:.4f} {_verdict_words(r, fid, time)} ({lrs})')
  return '<br>'.join(cells) or '-'


def _name(v):
  from studies import common  # pylint: disable=g-import-not-at-top
  return HEADLINE_LABELS.get(v) or common.ALL_VARIANTS.get(v, (v,))[0]


def headline_section(out_dir, speed_rows, rel):
  """The opening table of BENCHMARKS.md and the lines under it; '' without any measurement."""
  from studies import fidelity as fid  # pylint: disable=g-import-not-at-top
  sc = _table(out_dir, 'step_cost.csv')
  cpu_choice, acc_choice = _step_cost_choice(sc, False), _step_cost_choice(sc, True)
  cpu, acc = _step_cost_of(sc, cpu_choice), _step_cost_of(sc, acc_choice)
  fallbacks = [_speed_costs(speed_rows),
               _speed_costs(_table(os.path.join(out_dir, 'fidelity', 'speed'), 'speed.csv'))]
  runs = fid.load_runs(out_dir)
  claim_rows = _claim_rows(runs, fid, _study_speed_rows(out_dir, speed_rows))
  claims = _claims_by_variant(claim_rows, fid)
  variants = list(dict.fromkeys(
      [v for v in HEADLINE_LABELS] + list(cpu) + [v for f in fallbacks for v in f]))
  variants = [v for v in variants if v in cpu or v in claims or any(v in f for f in fallbacks) or
              any(v == fid.CLAIMS[r['cid']][2] for r in claim_rows)]
  if not variants:
    return ''
  used = set()

  def cost(v, key):
    if v in cpu:
      return f'{cpu[v][key]:.3f}x'
    for mark, f in zip(FALLBACK_MARKS, fallbacks):
      if v in f:
        used.add(mark)
        return f'{f[v][key]:.3f}x{mark}'
    return 'not measured'

  dtype = cpu['baseline']['row']['dtype'] if cpu else 'float32'
  out = ['| model | train FLOPs | train step time, CPU ' + dtype + ' | train step time, GPU/TPU | '
         'peak memory | quality claim | eval-loss gain at equal steps | at equal wall-clock |',
         '|---|---:|---:|---:|---:|---|---|---|']
  for v in variants:
    placed = claims.get(v)
    if placed:
      cid, role = placed
      _, cv, ref, _, _ = fid.CLAIMS[cid]
      rs = [r for r in claim_rows if r['cid'] == cid]
      claim = (f'({cid}) vs {_name(ref)}' if role == 'variant' else f'({cid}) {_name(cv)} vs this')
      eq, tm = _gain_cell(rs, fid), _gain_cell(rs, fid, time=True)
    else:
      refs = [cid for cid, c in fid.CLAIMS.items() if c[2] == v and
              any(r['cid'] == cid for r in claim_rows)]
      claim = ('reference of ' + ', '.join(f'({c})' for c in refs)) if refs else 'not in the study'
      eq = tm = '-'
    gpu = f'{acc[v]["time"]:.3f}x' if v in acc else 'not measured'
    out.append(f'| {_name(v)} (`{v}`) | {cost(v, "flops")} | {cost(v, "time")} | {gpu} | '
               f'{cost(v, "mem")} | {claim} | {eq} | {tm} |')

  # Where the costs come from.
  notes = []
  if cpu:
    r0 = cpu['baseline']['row']
    notes.append(f'unmarked: `{rel}/step_cost.csv`, run `{cpu_choice[0]}` ({r0["date"]}, '
                 f'CPU, {r0["dtype"]}, T5.1.1-{r0["size"]} at batch {r0["batch"]} x '
                 f'{r0["inputs"]}/{r0["targets"]}, option `default`, malloc '
                 f'{r0.get("allocator") or "glibc"})')
  if acc:
    r0 = acc['baseline']['row']
    notes.append(f'GPU/TPU: run `{acc_choice[0]}` ({r0["date"]}, {r0["device"]}, {r0["dtype"]}, '
                 f'T5.1.1-{r0["size"]} at batch {r0["batch"]} x {r0["inputs"]}/{r0["targets"]})')
  for i, (mark, path) in enumerate(zip(FALLBACK_MARKS, ('meta.json', os.path.join(
      'fidelity', 'speed', 'meta.json')))):
    if mark not in used:
      continue
    mpath = os.path.join(out_dir, path)
    meta = json.load(open(mpath)).get('speed', {}) if os.path.exists(mpath) else {}
    r0 = next(iter(fallbacks[i].values()))['row']
    src = (f'`{rel}/speed.csv`' if i == 0 else
           f'`{rel}/fidelity/speed/speed.csv` (the speed benchmark over the study\'s variants)')
    notes.append(f'{mark} {src}, T5.1.1-small at batch {r0["batch"]} x {r0["inputs"]}/'
                 f'{r0["targets"]}, speed run of {meta.get("date", "unknown date")}')
  if cpu and used:
    notes.insert(1, 'marked: models that run has not measured')
  # The scale, and what has not been measured.
  study = fid.SCALES['study']
  seeds = {}
  for r in claim_rows:
    seeds[r['cid']] = max(seeds.get(r['cid'], 0), r['n'])
  by_n = {}
  for cid, n in seeds.items():
    by_n.setdefault(n, []).append(f'({cid})')
  m = study['model']
  scale = (f'**Scale.** Step costs: T5.1.1-{cpu["baseline"]["row"]["size"]} '
           f'({float(cpu["baseline"]["row"]["params"]) / 1e6:.1f}M parameters in the baseline). '
           if cpu else '**Scale.** ')
  scale += (f'Quality: the fidelity study\'s `study` scale, d={m["emb_dim"]}, '
            f'{m["num_encoder_layers"]}+{m["num_decoder_layers"]} layers, vocabulary '
            f'{fid.VOCAB_SIZE}, batch {study["batch"]} x {study["inputs"]}/{study["targets"]}, '
            f'{fid.FULL_STEPS} steps, '
            + '; '.join(f'{n} seed{"s" if n > 1 else ""} for {", ".join(c)}' if n else
                        f'not yet run: {", ".join(c)}'
                        for n, c in sorted(by_n.items(), reverse=True))
            + f' ((e) at inputs {fid.SCALES["study_long"]["inputs"]}).')
  missing = []
  if not acc:
    missing.append('step time on a GPU or TPU (every step cost is a CPU measurement)')
  from studies import sizes  # pylint: disable=g-import-not-at-top
  size_rows = [r for r in sizes.claim_rows(runs, sizes.speed_ratios(out_dir)) if r['n'] >= 2]
  if not {r['size'] for r in size_rows} >= {s for s, _ in sizes.SIZES}:
    missing.append('quality at a second model size (section "Two model sizes": not yet run)')
  else:
    trends = [(cid, sizes.trend(size_rows, cid, 'own')) for cid in sizes.CLAIMS]
    d0, d1 = (fid.SCALES[scale_name]['model']['emb_dim'] for _, scale_name in sizes.SIZES)
    scale += (' A second size (section "Two model sizes"): gain of each claim at equal steps, '
              'own LRs, ' + '; '.join(
                  f'({cid}) {t["first"]["m"]:+.4f} at d={d0} -> {t["second"]["m"]:+.4f} at '
                  f'd={d1} ({t["word"]})' for cid, t in trends if t) + '.')
  if not any('gemma3n' in r['variant'] for r in runs.values()):
    missing.append('the quality of Gemma 3n\'s block (gin/altup/gemma3n_k4.gin)')
  unmeasured = ('**Not measured:** ' + '; '.join(missing) + '.') if missing else ''
  return _prose('headline', table='\n'.join(out), sources='; '.join(notes) + '.', scale=scale,
                unmeasured=unmeasured, steps=fid.FULL_STEPS)


AFFIX = {'altup_k2': 'AltUp K=2', 'recycled_k2': 'Recycled K=2', 'altup_k4': 'AltUp K=4',
         'recycled_k4': 'Recycled K=4', 'seq_altup_s2': 'Sequence-AltUp stride 2'}


def step_cost_section(out_dir):
  """step_cost.csv in full (studies.step_cost.markdown: one table per run) and, per run, the fused
  (shipped) and unfused (textbook) predict/correct of each AltUp variant against the baseline."""
  from studies import step_cost  # pylint: disable=g-import-not-at-top
  rows = _table(out_dir, 'step_cost.csv')
  if not rows:
    return 'Not measured yet (`python -m studies.step_cost`).\n'
  out = [_prose('step_cost_intro'), '', step_cost.markdown(rows)]
  lines = []
  for run in dict.fromkeys(r['run'] for r in rows):
    by = {(r['size'], r['variant'], r['option']): r for r in rows
          if r['run'] == run and r['kind'] == 'train'}
    parts = []
    for (size, v, option), r in by.items():
      if option != 'unfused' or (size, v, 'default') not in by or (size, 'baseline', 'default') \
          not in by:
        continue
      base = float(by[(size, 'baseline', 'default')]['median_ms'])
      fused = float(by[(size, v, 'default')]['median_ms'])
      unfused = float(r['median_ms'])
      parts.append(f'{AFFIX.get(v, v)}{"" if len({k[0] for k in by}) == 1 else f" ({size})"}: '
                   f'fused {fused / base:.3f}x, unfused {unfused / base:.3f}x the baseline '
                   f'(fused / unfused {fused / unfused:.3f})')
    if parts:
      lines.append(f'- run `{run}`: ' + '; '.join(parts) + '.')
  if lines:
    out += ['The train step with fused updates (`default`, shipped) and in the textbook order '
            '(`unfused`), each against the baseline\'s `default` step of its run:', ''] + lines + ['']
  lines = []
  for run in dict.fromkeys(r['run'] for r in rows):
    by = {(r['size'], r['variant'], r['kind']): float(r['median_ms']) for r in rows
          if r['run'] == run and r['option'] == 'default'}
    for size in dict.fromkeys(k[0] for k in by):
      if (size, 'baseline', 'optimizer') not in by or (size, 'baseline', 'train') not in by:
        continue
      rest = lambda v: by[(size, v, 'train')] - by[(size, v, 'optimizer')]
      b_train, b_opt = by[(size, 'baseline', 'train')], by[(size, 'baseline', 'optimizer')]
      parts = [f'{AFFIX.get(v, v)}: train step {by[(sz, v, kind)] / b_train:.3f}x, optimizer '
               f'update {by[(sz, v, "optimizer")] / b_opt:.3f}x, the rest '
               f'{rest(v) / rest("baseline"):.3f}x'
               for (sz, v, kind) in by if sz == size and kind == 'train' and v != 'baseline'
               and (sz, v, 'optimizer') in by]
      if parts:
        lines.append(f'- run `{run}`{"" if len({k[0] for k in by}) == 1 else f" ({size})"} (the '
                     f'baseline\'s optimizer update {b_opt:.1f} ms of its {b_train:.1f} ms step, '
                     f'{b_opt / b_train:.0%}): ' + '; '.join(parts) + '.')
  if lines:
    out += ['Where the optimizer update alone was timed: the train step split into the optimizer '
            'update (a per-parameter cost) and the rest (train ms minus optimizer ms), each '
            'against the baseline\'s:', ''] + lines + ['']
  out.append(update_layout_section(out_dir))
  return '\n'.join(out)


def update_layout_section(out_dir):
  """update_layout.csv (studies.update_layout): AltUp's update alone in each stream layout."""
  rows = _table(out_dir, 'update_layout.csv')
  if not rows:
    return ''
  out = ['### The AltUp update alone, by stream layout', '',
         'N layers\' predict / compute / correct around a stand-in layer on the active block '
         '(`prenorm_residual`: x + tanh(rmsnorm(x) W), a T5.1.1 layer\'s shape; `tanh`: the bare '
         'tanh(x W)), forward + backward, every layout checked equal to `unfused` first '
         '(`python -m studies.update_layout`; layouts in its docstring). `fused_vjp`: `fused` '
         'with its hand-written backward pass (`altup.stacked_deferred_step`); `blocks`: the K '
         'blocks as K separate arrays; `blocks_stacked_io`: the same between one unstack and one '
         'stack.',
         '']
  for run in dict.fromkeys(r['run'] for r in rows):
    rs = [r for r in rows if r['run'] == run]
    r0 = rs[0]
    malloc = f', malloc {r0["allocator"]}' if r0.get('allocator') else ''
    malloc += f', stand-in layer `{r0["layer"]}`' if r0.get('layer') else ''
    out += [f'Run `{run}` ({r0["date"]}, {r0["device"]}{malloc}, load average '
            f'{float(r0["loadavg"]):.1f}, '
            f'{r0["batch"]} x {r0["length"]} x {r0["width"]}, {r0["layers"]} layers, '
            f'{r0["calls"]} calls per layout):', '',
            '| K | layout | median ms | spread ms | / unfused | / fused | GFLOPs | MB accessed |',
            '|---:|---|---:|---:|---:|---:|---:|---:|']
    for r in rs:
      out.append(f'| {r["k"]} | {r["layout"]} | {float(r["median_ms"]):.1f} | '
                 f'{float(r["spread_ms"]):.1f} | {float(r["ratio_unfused"]):.3f} | '
                 f'{float(r["ratio_fused"]):.3f} | {float(r["flops"]) / 1e9:.2f} | '
                 f'{float(r["bytes_accessed"]) / 1e6:.0f} |')
    out.append('')
  return '\n'.join(out)


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
  reduced = ('' if run['steps'] >= 200 and len(q['seeds']) >= 3 else
             ' **A reduced run (the default is 200 steps x 3 seeds): too short to judge AltUp.**')
  out = [_prose('quality_intro', model=model, batch=run['batch'], inputs=run['inputs'],
                targets=run['targets'], learning_rate=run['learning_rate'],
                seeds=len(q['seeds']), steps=run['steps'], baseline_steps=run['baseline_steps'],
                eval_examples=run['eval_examples'], eval_every=run['eval_every'],
                minutes=f'{q.get("seconds", 0) / 60:.1f}', reduced=reduced)]
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


def auto_summary(rows, t5x_rows, q, out_dir=None):
  """The README's results lines (before the fidelity study's), from the numbers."""
  lines = []
  sc = _table(out_dir, 'step_cost.csv') if out_dir else []
  for accelerator in (False, True):
    choice = _step_cost_choice(sc, accelerator)
    cost = _step_cost_of(sc, choice)
    if not cost:
      continue
    r0 = cost['baseline']['row']
    lines.append(
        f'- Train step, {"CPU" if r0["device"].startswith("cpu") else r0["device"]} '
        f'{r0["dtype"]}, T5.1.1-{r0["size"]} at batch {r0["batch"]} x '
        f'{r0["inputs"]}/{r0["targets"]} (`benchmarks/step_cost.csv`, run `{choice[0]}`'
        + (f', malloc {r0.get("allocator") or "glibc"}' if r0['device'].startswith('cpu') else '')
        + '), time / '
        'FLOPs / peak memory against the baseline: ' + ', '.join(
            f'{AFFIX.get(v, _name(v))} {c["time"]:.2f}x / {c["flops"]:.2f}x / {c["mem"]:.2f}x'
            for v, c in cost.items() if v != 'baseline') + '.')
  small = {r['variant']: r for r in rows if r['shape'] == 'small'} or {
      r['variant']: r for r in rows}
  if small:
    def tr(v):
      r = small.get(v)
      return 'n/a' if r is None else (f'{float(r["train_ratio"]):.2f}x step '
                                       f'({float(r["train_flop_ratio"]):.2f}x FLOPs)')
    r0 = next(iter(small.values()))
    lines.append(f'- CPU float32, T5.1.1-{r0["shape"]} at batch {r0["batch"]} x {r0["inputs"]}/'
                 f'{r0["targets"]} (`benchmarks/speed.csv`), ratios to the baseline in one '
                 'process: '
                 f'AltUp K=2 {tr("altup_k2")}, Recycled K=2 {tr("recycled_k2")}, AltUp K=4 '
                 f'{tr("altup_k4")}, Recycled K=4 {tr("recycled_k4")}, dense 2d {tr("dense_2d")}, '
                 f'Sequence-AltUp stride 2 {tr("seq_altup_s2")}.')
    if 'altup_k2' in small:
      r = small['altup_k2']
      lines.append(f'- AltUp K=2 at that batch: cached decode {float(r["decode_ratio"]):.2f}x per '
                   f'token, training peak memory {float(r["train_peak_ratio"]):.2f}x, forward '
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
  if not _step_cost_choice(sc, True):
    lines.append('- No GPU/TPU numbers yet: every number is float32 on CPU.')
  return '\n'.join(lines) + '\n'


SCALING_DOC = os.path.join('docs', 'scaling.md')


def render(out_dir, path):
  """The text of BENCHMARKS.md (to be written at `path`) from the files in `out_dir`."""
  rows = _table(out_dir, 'speed.csv')
  t5x_rows = _table(out_dir, 't5x.csv')
  qpath = os.path.join(out_dir, 'quality.json')
  q = json.load(open(qpath)) if os.path.exists(qpath) else None
  meta_path = os.path.join(out_dir, 'meta.json')
  meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
  rel = os.path.relpath(out_dir, os.path.dirname(path))
  expl_path = os.path.join(out_dir, 'EXPLANATIONS.md')
  explanations = open(expl_path).read() if os.path.exists(expl_path) else ''
  explanations = fill_template(explanations, rows, t5x_rows, meta)
  measured = '; '.join(f'{k}: {v["date"]}, {v["cpus"]} CPUs ({v["machine"]}), JAX {v["jax"]} '
                       f'{v["backend"]}, load average at the end {v["loadavg"]:.1f}'
                       for k, v in meta.items())
  return _prose('benchmarks', rel=rel, measured=measured or 'n/a',
                headline=headline_section(out_dir, rows, rel), scaling_doc=SCALING_DOC,
                step_cost=step_cost_section(out_dir), targets=target_section(rows, t5x_rows),
                explanations=explanations, speed=speed_section(rows, meta),
                t5x=t5x_section(t5x_rows), quality=quality_section(q),
                fidelity=fidelity_section(out_dir, rows, rel), sizes=_sizes_section(out_dir, rel))


def _sizes_section(out_dir, rel):
  from studies import sizes  # pylint: disable=g-import-not-at-top
  return sizes.section(out_dir, rel)


def render_scaling(out_dir, root):
  """The text of docs/scaling.md (under the repository root `root`) from the files in `out_dir`."""
  path = os.path.join(root, SCALING_DOC)
  return _prose('scaling', rel=os.path.relpath(out_dir, root),
                benchmarks=os.path.relpath(os.path.join(root, 'BENCHMARKS.md'),
                                           os.path.dirname(path)),
                pods=os.path.relpath(os.path.join(root, 'PODS.md'), os.path.dirname(path)),
                body=scaling_section(out_dir).rstrip('\n'))


def _step_runs(steps):
  """(run number, the run's unrolled reference row, row) for the `step` rows of scaling.csv. A run
  is one process: its rows start with the unrolled reference of each variant."""
  out = []
  run, ref, seen, run_shape, process = 1, None, set(), None, None
  for r in steps:
    if (r['scan_layers'], r['remat_policy'], r['one_hot_embedding']) == ('False', 'none', 'False'):
      ref = r
      shape = (r['batch'], r['inputs'], r['targets'])
      if r.get('process') or process:  # rows that name their process
        if seen and r.get('process') != process:
          run, seen = run + 1, set()
      # Older rows: a new process is a variant again, another shape, or T5X's network.
      elif seen and (r['variant'] in seen or shape != run_shape or r['variant'] == 'scalable_t5'):
        run, seen = run + 1, set()
      run_shape, process = shape, r.get('process')
      seen.add(r['variant'])
    out.append((run, ref, r))
  return out


def scaling_section(out_dir):
  """scan_layers / remat_policy: compile time and XLA temporaries, step time and where a scanned
  step's time goes (scripts/scaling_benchmark.py); the body of docs/scaling.md."""
  table = _table(out_dir, 'scaling.csv')
  rows = [r for r in table if r['part'] == 'sweep']
  out = ['## Compile time and XLA temporaries', '']
  if not rows:
    out.append('Not measured yet (`python scripts/scaling_benchmark.py sweep`).')
  else:
    r0 = rows[0]
    out += [_prose('scaling_sweep', batch=r0['batch'], inputs=r0['inputs'],
                   targets=r0['targets']), '']
  by = {(r['size'], r['scan_layers'] == 'True', r['remat_policy']): r for r in rows}
  gib = lambda r: float(r['temp_bytes']) / 2**30
  secs = lambda r: float(r['lower_s']) + float(r['compile_s'])
  sizes = [s for s in ('small', 'base', 'large', 'xl', 'xxl') if any(k[0] == s for k in by)]
  if rows:
    out += ['| size | remat | lower+compile unrolled (s) | scanned (s) | scanned / unrolled '
            '| XLA temp unrolled (GiB) | scanned (GiB) |', '|---|---|---:|---:|---:|---:|---:|']
  for size in sizes:
    for remat in ('none', 'minimal', 'full'):
      u, sc = by.get((size, False, remat)), by.get((size, True, remat))
      if not u and not sc:
        continue
      ratio = _f(secs(sc) / secs(u)) + 'x' if u and sc else 'n/a'
      out.append(f'| {size} | {remat} | {_f(secs(u), 1) if u else "not measured"} '
                 f'| {_f(secs(sc), 1) if sc else "not measured"} | {ratio} '
                 f'| {_f(gib(u)) if u else "not measured"} | {_f(gib(sc)) if sc else "not measured"} |')
  # Why the ratio rises at XL: the step's temporaries include the gradients (one float32 per
  # parameter; parameter counts from the planner's benchmarks/pods.csv), which no remat removes.
  params = {r['size']: float(r['params']) for r in _table(out_dir, 'pods.csv')
            if r['variant'] == 'baseline'}
  if sizes:
    out += ['', 'Temporaries with remat `full` over none, and (scanned) the same ratio without the '
            'gradients, which every policy keeps (float32, one per parameter; parameter counts '
            'from `pods.csv`):', '',
            '| size | temp full / none, unrolled | temp full / none, scanned | gradients (GiB) | '
            'scanned, (full - gradients) / (none - gradients) |', '|---|---:|---:|---:|---:|']
  for size in sizes:
    cells = []
    for scan in (False, True):
      full, none = by.get((size, scan, 'full')), by.get((size, scan, 'none'))
      cells.append(_f(gib(full) / gib(none)) + 'x' if full and none else 'not measured')
    full, none = by.get((size, True, 'full')), by.get((size, True, 'none'))
    if full and none and size in params:
      g = 4 * params[size] / 2**30
      cells += [_f(g), _f((gib(full) - g) / (gib(none) - g)) + 'x']
    else:
      cells += ['n/a', 'n/a']
    out.append(f'| {size} | ' + ' | '.join(cells) + ' |')
  steps = [r for r in table if r['part'] == 'step']
  t5x_step_runs = []
  if steps:
    name = lambda r: ('scanned' + (', param_scan_axis 0' if r.get('param_scan_axis') == '0' else '')
                      if r['scan_layers'] == 'True' else 'unrolled') + (
        f', remat {r["remat_policy"]}' if r['remat_policy'] != 'none' else '') + (
            ', one-hot embedding' if r['one_hot_embedding'] == 'True' else '') + (
                f', {malloc(r.get("allocator"))}' if malloc(r.get('allocator')) != 'glibc' else '')
    out += ['', '## Train step time', '', _prose('scaling_steps')]
    for run, ref, r in _step_runs(steps):
      if r['variant'] == 'scalable_t5' and str(run) not in t5x_step_runs:
        t5x_step_runs.append(str(run))
      out.append(f'| {run} | {r["variant"]} | {r["batch"]} x {r["inputs"]}/{r["targets"]} | '
                 f'{name(r)} | {_f(float(r["step_ms"]), 1)} | '
                 f'{_f(float(r["step_ms_min"]), 1)}-{_f(float(r["step_ms_max"]), 1)} | '
                 f'{_f(float(r["step_ms"]) / float(ref["step_ms"]), 3)}x |')
  profile = scaling_profile_section(out_dir, t5x_step_runs)
  if profile:
    out += ['', '## Where the scanned step\'s extra time goes', '', profile]
  return '\n'.join(out) + '\n'


def malloc(allocator):
  """'jemalloc retain:true,...' -> 'jemalloc (retain)': the allocator a CPU step ran with."""
  if not allocator:
    return 'glibc'
  return allocator.split()[0] + (' (retain)' if 'retain:true' in allocator else '')


PROFILE_CASES = (('unrolled', 'unrolled'), ('scanned', 'scanned'),
                 ('scanned_axis0', 'scanned, param_scan_axis 0'))


def scaling_profile_section(out_dir, t5x_step_runs=()):
  """Where a scanned step's extra time goes on CPU (`scaling_benchmark.py profile`), one table
  per profiled process; '' when nothing was profiled. `t5x_step_runs`: the step runs (numbers)
  of T5X's scalable_t5, which the text compares with."""
  from studies import xla_profile  # pylint: disable=g-import-not-at-top
  rows = _table(out_dir, 'scaling_profile.csv')
  if not rows:
    return ''
  runs = []
  for r in rows:
    if not runs or runs[-1][0] != r['process']:
      runs.append((r['process'], []))
    runs[-1][1].append(r)
  t5x_step = (f' (step run {", ".join(t5x_step_runs)} above)' if t5x_step_runs else '')
  out = [_prose('scaling_profile', t5x_step=t5x_step)]
  t5x_runs = [str(i) for i, (_, rs) in enumerate(runs, 1) if rs[0]['variant'] == 'scalable_t5']
  if t5x_runs:
    out[0] += (f' Profile run {", ".join(t5x_runs)} profiles T5X\'s scalable_t5 network itself '
               '(`--variants scalable_t5`, with T5X\'s Python): the same kinds of extra work.')
  readings = []
  for i, (process, rs) in enumerate(runs, 1):
    by = {}
    for r in rs:
      by.setdefault(r['case'], {})[r['category']] = float(r['core_ms'])
    first = rs[0]
    cases = [(c, label) for c, label in PROFILE_CASES if c in by]
    head = '| kind of instruction | ' + ' | '.join(
        label + (' (core-ms)' if c == 'unrolled' else f' | {label} - unrolled')
        for c, label in cases) + ' |'
    out += ['', f'Profile run {i}: variant {first["variant"]}, batch {first["batch"]} x '
            f'{first["inputs"]}/{first["targets"]}, malloc {malloc(first["allocator"])}, '
            f'{first["rounds"]} round-robin rounds of {first["calls"]} untraced steps, then '
            f'{first["calls"]} traced steps per case:', '', head,
            '|---|' + '|'.join('---:' if c == 'unrolled' else '---:|---:' for c, _ in cases) + '|']
    base = by.get('unrolled', {})
    for cat in xla_profile.ORDER + ['all instructions']:
      cells = []
      for c, _ in cases:
        val = (sum(by[c].values()) if cat == 'all instructions' else by[c].get(cat, 0.0))
        ref = sum(base.values()) if cat == 'all instructions' else base.get(cat, 0.0)
        cells.append(_f(val, 1) if c == 'unrolled' else f'{_f(val, 1)} | {val - ref:+.1f}')
      out.append(f'| {cat} | ' + ' | '.join(cells) + ' |')
    u = next((x for x in rs if x['case'] == 'unrolled'), None)
    for key, label in (('step_ms', 'step, wall ms (untraced, round-robin median)'),
                       ('traced_ms', 'step, wall ms (traced, mean)'),
                       ('minor_faults', 'minor page faults per untraced step')):
      cells = []
      for c, _ in cases:
        val = float(next(x for x in rs if x['case'] == c)[key])
        if c == 'unrolled' or u is None:
          cells.append(_f(val, 0 if key == 'minor_faults' else 1))
        elif key == 'minor_faults':  # a difference: the reference may have none
          cells.append(f'{_f(val, 0)} | {val - float(u[key]):+.0f}')
        else:
          cells.append(f'{_f(val, 1)} | {_f(val / float(u[key]), 3)}x')
      out.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    added = [k for k in xla_profile.ORDER if k not in ('matmul', xla_profile.OTHER)]
    for c, label in cases:
      if c == 'unrolled' or not base:
        continue
      extra = {k: by[c].get(k, 0.0) - base.get(k, 0.0) for k in xla_profile.ORDER}
      readings.append(
          f'| {i} | {label} | {sum(extra[k] for k in added):+.1f} | '
          f'{extra["matmul"] + extra[xla_profile.OTHER]:+.1f} | {sum(extra.values()):+.1f} |')
  if readings:
    out += ['', _prose('scaling_profile_reading'), '',
            '| profile run | case | kinds a scan adds or enlarges (all but matmul and other ops) | '
            'matmul and other ops | all instructions |', '|---:|---|---:|---:|---:|'] + readings
  return '\n'.join(out)


README_BEGIN = '<!-- results: generated by `python scripts/benchmark.py report`; do not edit -->'
README_END = '<!-- end of generated results -->'


def render_readme(out_dir, readme_text):
  """The README with its generated results block replaced (unchanged if it has no markers)."""
  if README_BEGIN not in readme_text or README_END not in readme_text:
    return readme_text
  rows = _table(out_dir, 'speed.csv')
  t5x_rows = _table(out_dir, 't5x.csv')
  qpath = os.path.join(out_dir, 'quality.json')
  q = json.load(open(qpath)) if os.path.exists(qpath) else None
  block = auto_summary(rows, t5x_rows, q, out_dir).rstrip('\n')
  block += '\n' + fidelity_summary(out_dir)
  from studies import sizes  # pylint: disable=g-import-not-at-top
  block += '\n' + sizes.summary_line(out_dir)
  head, rest = readme_text.split(README_BEGIN, 1)
  _, tail = rest.split(README_END, 1)
  return f'{head}{README_BEGIN}\n{block}\n{README_END}{tail}'


def write_all(out_dir, root):
  """Writes BENCHMARKS.md, docs/scaling.md and the README's results block; returns the paths
  written."""
  written = []
  for path, text in ((os.path.join(root, 'BENCHMARKS.md'), lambda p: render(out_dir, p)),
                     (os.path.join(root, SCALING_DOC), lambda p: render_scaling(out_dir, root))):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    content = text(path)
    with open(path, 'w') as f:
      f.write(content)
    written.append(path)
  readme = os.path.join(root, 'README.md')
  if os.path.exists(readme):
    old = open(readme).read()
    new = render_readme(out_dir, old)
    if new != old:
      with open(readme, 'w') as f:
        f.write(new)
      written.append(readme)
  return written


# ------------------------------------------------------------------------------------------------
# The analysis template: `{speed.small.altup_k4.train_ratio:.2f}`-style fields.

class _Fields:
  """Attribute access into nested dicts; leaves are floats where they parse as numbers."""

  def __init__(self, d, path):
    self._d, self._path = d, path

  def __getattr__(self, name):
    if name.startswith('_'):
      raise AttributeError(name)
    if name not in self._d:
      raise KeyError(f'benchmarks/EXPLANATIONS.md: no field {self._path}.{name} in the CSVs '
                     f'(have: {", ".join(sorted(self._d))})')
    v = self._d[name]
    if isinstance(v, dict):
      return _Fields(v, f'{self._path}.{name}')
    try:
      return float(v)
    except (TypeError, ValueError):
      return v


def _speed_fields(rows):
  out = {}
  for r in rows:
    d = dict(r)
    base = next(b for b in rows if b['shape'] == r['shape'] and b['variant'] == 'baseline')
    d['tokens'] = int(r['inputs']) + int(r['targets'])
    d['flop_dev_pct'] = 100 * (float(r['train_ratio']) / float(r['train_flop_ratio']) - 1)
    d['params_delta_m'] = (float(r['params']) - float(base['params'])) / 1e6
    d['params_delta_pct'] = 100 * (float(r['params']) / float(base['params']) - 1)
    d['projected_ratio'] = projected_ratio(r, rows)
    d['optimizer_share_pct'] = 100 * float(r['optimizer_ms']) / float(r['train_ms'])
    out.setdefault(r['shape'], {})[r['variant']] = d
  return out


def fill_template(text, rows, t5x_rows, meta):
  t5x = {}
  for r in t5x_rows:
    t5x.setdefault(r['shape'], {})[r['network']] = r
  fields = dict(speed=_Fields(_speed_fields(rows), 'speed'), t5x=_Fields(t5x, 't5x'),
                meta=_Fields(meta, 'meta'))
  return text.format(**fields)





# ------------------------------------------------------------------------------------------------
# Fidelity study (studies.fidelity): verdicts from the cached runs.

def _interp(curve, step):
  """Eval loss at `step` by linear interpolation of an eval curve [(step, seconds, loss)]."""
  xs = [c[0] for c in curve]
  if step > xs[-1] or step < xs[0]:
    return float('nan')
  for (s0, _, l0), (s1, _, l1) in zip(curve, curve[1:]):
    if s0 <= step <= s1:
      return l0 + (l1 - l0) * (step - s0) / max(s1 - s0, 1e-12)
  return curve[-1][2]


def _reach(curve, target):
  prev = None
  for step, _, loss in curve:
    if loss <= target:
      if prev is None:
        return step
      s0, l0 = prev
      return s0 + (l0 - target) / max(l0 - loss, 1e-12) * (step - s0)
    prev = (step, loss)
  return None


def wall_clock_gain(rv, rr, q, steps):
  """Reference minus variant eval loss at equal training time: the variant's step is q times the
  reference's, so the slower of the two is read at proportionally fewer steps than `steps`."""
  if q >= 1:
    return rr['eval'][-1][2] - _interp(rv['eval'], steps / q)
  return _interp(rr['eval'], steps * q) - rv['eval'][-1][2]


def _mean_std(xs):
  xs = [x for x in xs if math.isfinite(x)]
  if not xs:
    return float('nan'), float('nan')
  m = sum(xs) / len(xs)
  sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float('nan')
  return m, sd


def _verdict(diffs):
  """Paired differences (reference minus variant; > 0: the variant is better) -> verdict text."""
  if len(diffs) < 2:
    return 'not yet run' if not diffs else f'inconclusive (1 seed)', float('nan'), float('nan')
  m, sd = _mean_std(diffs)
  se = sd / math.sqrt(len(diffs))
  if m > 2 * se:
    return 'reproduced', m, se
  if m < -2 * se:
    return '**not reproduced** (opposite)', m, se
  return 'inconclusive', m, se


def _speed_ratio(rows, variant):
  r = next((r for r in rows if r['shape'] == 'small' and r['variant'] == variant), None)
  return float(r['train_ratio']) if r else None


def _study_speed_rows(out_dir, speed_rows):
  """Equal wall-clock: step-time ratios of one speed run over the study's variants (small shape),
  where it exists; the main speed benchmark's otherwise."""
  study_speed = os.path.join(out_dir, 'fidelity', 'speed', 'speed.csv')
  if os.path.exists(study_speed):
    own = csv_tables.read(study_speed, missing_ok=True)
    speed_rows = own + [r for r in speed_rows if not any(o['variant'] == r['variant'] for o in own)]
  return speed_rows


def _short(verdict):
  """'reproduced', 'opposite', 'inconclusive', 'not reproduced' (claim (b)'s extra check) or
  'not yet run', from a verdict text of `_verdict`."""
  if 'opposite' in verdict:
    return 'opposite'
  return verdict.split(' (')[0].strip('*')


def _claim_rows(runs, fid, speed_rows):
  """Every claim x LR pair of the fidelity study: paired differences, verdicts, table line."""
  gains, rows = {}, []
  for cid, (statement, v, ref, n_seeds, scale) in fid.CLAIMS.items():
    statement = CLAIM_STATEMENTS.get(cid, statement)
    for pair_index, (lr, ref_lr) in enumerate(fid.claim_pairs(runs, cid)):
      d_eq, d_time, vl, rl = [], [], [], []
      for seed in range(n_seeds):
        rv = runs.get(fid.run_name(scale, v, 'rsqrt', lr, seed, fid.FULL_STEPS))
        rr = runs.get(fid.run_name(scale, ref, 'rsqrt', ref_lr, seed, fid.FULL_STEPS))
        if not (rv and rr):
          continue
        n = fid.FULL_STEPS
        lv, lr_ = rv['eval'][-1][2], rr['eval'][-1][2]
        vl.append(lv)
        rl.append(lr_)
        d_eq.append(lr_ - lv)
        rv_s, rr_s = _speed_ratio(speed_rows, v), _speed_ratio(speed_rows, ref)
        if rv_s and rr_s:
          d_time.append(wall_clock_gain(rv, rr, rv_s / rr_s, n))
      verdict, m, se = _verdict(d_eq)
      if cid == 'b' and verdict == 'reproduced':
        ga = gains.get(pair_index)
        ratio = _speed_ratio(speed_rows, v)
        if ga is None or not math.isfinite(ga) or m < 0.5 * ga or (ratio or 9) > 1.05:
          verdict = (f'**not reproduced** (gain {m:.4f} vs K=2\'s '
                     f'{ga if ga is not None else float("nan"):.4f}, step {ratio}x)')
      if cid == 'a':
        gains[pair_index] = m
      tv, mt, tse = _verdict(d_time)
      vm, vs = _mean_std(vl)
      rm, rs = _mean_std(rl)
      row = dict(cid=cid, v=v, ref=ref, lr=lr, ref_lr=ref_lr, m=m, se=se, n=len(d_eq),
                 verdict=verdict.split(' (')[0].strip('*'), short=_short(verdict),
                 time_verdict=_short(tv), time_short=_short(tv), tm=mt, tse=tse, tn=len(d_time))
      shown, shown_time = verdict, tv
      if cid in REFERENCE_CLAIMS:  # which model is better, never "reproduced"
        shown = _verdict_words(row, fid) + (' (a reference model, not an AltUp gain)'
                                            if row['short'] == 'reproduced' else '')
        shown_time = _verdict_words(row, fid, time=True)
      row['line'] = (
          f'| ({cid}) | {statement} | {v} ({lr:g}) vs {ref} ({ref_lr:g}) | eval loss at step '
          f'{fid.FULL_STEPS} | {vm:.4f} +- {vs:.4f} | {rm:.4f} +- {rs:.4f} | '
          f'{" ".join(f"{d:+.4f}" for d in d_eq) or "-"} | '
          f'{m:+.4f} +- {se:.4f} | {mt:+.4f} +- {tse:.4f} ({shown_time}) | {shown}'
          f'{"" if len(d_eq) >= n_seeds else f" ({len(d_eq)}/{n_seeds} seeds run)"} |'
          .replace('+nan +- nan', 'n/a').replace('nan +- nan', 'not yet run').replace(
              '+nan', 'n/a'))
      rows.append(row)
  return rows


def fidelity_section(out_dir, speed_rows, rel):
  from studies import fidelity as fid  # pylint: disable=g-import-not-at-top
  runs = fid.load_runs(out_dir)
  planned = fid.plan(runs)
  speed_rows = _study_speed_rows(out_dir, speed_rows)
  done = [s for s in planned if s['name'] in runs]
  st, big = fid.SCALES['study'], fid.SCALES['study_d128']
  out = [_prose('fidelity_intro', model=st['model'], vocab_size=fid.VOCAB_SIZE, batch=st['batch'],
                inputs=st['inputs'], targets=st['targets'], steps=fid.FULL_STEPS,
                warmup=fid.WARMUP, eval_examples=st['eval_examples'],
                long_inputs=fid.SCALES['study_long']['inputs'],
                big_emb_dim=big['model']['emb_dim'], big_batch=big['batch'],
                big_inputs=big['inputs'], big_targets=big['targets']), '']
  total = sum(runs[s['name']]['train_seconds'] for s in done)
  out.append(f'**Status: {len(done)} of {len(planned)} planned runs done** '
             f'({total / 60:.0f} min of measured training time; '
             + ', '.join(f'{p}: {sum(1 for s in done if s["part"] == p)}/'
                         f'{sum(1 for s in planned if s["part"] == p)}'
                         for p in dict.fromkeys(s['part'] for s in planned)) + ').')
  timed = lambda parts: [runs[s['name']] for s in done if s['part'] in parts and
                         'date' in runs[s['name']] and 'wall_seconds' in runs[s['name']]]
  study = timed({s['part'] for s in planned} - {'ablation', fid.LR_CHECK_PART})
  if study:
    import calendar  # pylint: disable=g-import-not-at-top
    import time as time_lib  # pylint: disable=g-import-not-at-top
    end = lambda r: calendar.timegm(time_lib.strptime(r['date'], '%Y-%m-%d %H:%M'))
    span = max(map(end, study)) - min(end(r) - r['wall_seconds'] - r['compile_s'] for r in study)
    busy = sum(r['wall_seconds'] + r['compile_s'] for r in study)
    out.append(f'Measured cost of the study (sweep and claims; the ablation and `lr_check` '
               f'excluded): {busy / 3600:.2f} h of worker time (training, evaluation, '
               f'compilation), {span / 3600:.2f} h from the first start to the last finish (minute '
               f'resolution) with `--jobs 2` on 2 CPU cores, while other jobs shared the cores.')
    check = timed({fid.LR_CHECK_PART})
    if check:
      out.append(f'The `lr_check` part ((d)-(g) again at the baseline\'s best LR, added after the '
                 f'study): {sum(r["wall_seconds"] + r["compile_s"] for r in check) / 3600:.2f} h of '
                 f'worker time for {len(check)} runs.')
    out.append('')

  # LR sweep.
  out.append(f'### Learning-rate sweep (claims a-c; seed 0, {fid.SWEEP_STEPS} steps, peak LR)')
  out.append('')
  out.append('| variant | ' + ' | '.join(f'peak {lr:g}' for lr in fid.LRS) +
             ' | best | sensitivity (worst - best) |')
  out.append('|---|' + '---:|' * (len(fid.LRS) + 2))
  for v in fid.SWEEP_VARIANTS:
    vals = []
    for lr in fid.LRS:
      r = runs.get(fid.run_name('study', v, 'rsqrt', lr, 0, fid.SWEEP_STEPS))
      vals.append(r['eval'][-1][2] if r else None)
    got = [x for x in vals if x is not None]
    best = fid.best_lr(runs, v)
    cells = ' | '.join('not yet run' if x is None else f'{x:.4f}' for x in vals)
    if best is None:
      out.append(f'| {v} | {cells} | n/a | n/a |')
    else:
      out.append(f'| {v} | {cells} | {best:g} | {max(got) - min(got):.4f} |')
  out.append('')
  base_lr = fid.best_lr(runs, 'baseline')
  k2_lr = fid.best_lr(runs, 'altup_k2')
  out.append('Claims run each model at the best peak LR of its family in this sweep (swept '
             'variants: their own; the other AltUp variants: AltUp K=2\'s, '
             f'{k2_lr if k2_lr is not None else "not yet swept"}; K=1 models (MoE, Sequence-AltUp, '
             f'stride-and-skip, dense 2d): the baseline\'s, '
             f'{base_lr if base_lr is not None else f"sweep incomplete: {fid.DEFAULT_LR} assumed"}) '
             'and also both models at the baseline\'s best (for (d)-(g) the `lr_check` part). '
             'The sweep is '
             f'{fid.SWEEP_STEPS} steps long: at {fid.FULL_STEPS} steps the best LR can differ (the '
             'verdict table shows both).')
  out.append('')

  # Claims.
  out.append('### Verdicts')
  out.append('')
  out.append('| claim | paper statement | variant (LR) vs reference | metric | variant mean +- std | '
             'reference mean +- std | paired d by seed | mean d +- SE | equal wall-clock mean d | '
             'verdict |')
  out.append('|---|---|---|---|---:|---:|---|---:|---:|---|')
  rows = _claim_rows(runs, fid, speed_rows)
  out += [r['line'] for r in rows]
  out.append('')
  if rows:
    out.append(_fidelity_reading([r for r in rows if r['n']], runs, fid))
    out.append('')

  # (a) in the paper's framing.
  framing = []
  for v_lr, b_lr in fid.claim_pairs(runs, 'a'):
    reach = []
    for seed in range(fid.CLAIMS['a'][3]):
      rv = runs.get(fid.run_name('study', 'altup_k2', 'rsqrt', v_lr, seed, fid.FULL_STEPS))
      rb = runs.get(fid.run_name('study', 'baseline', 'rsqrt', b_lr, seed, fid.FULL_STEPS))
      if rv and rb:
        reach.append(_reach(rb['eval'], rv['eval'][-1][2]))
    if reach:
      framing.append(f'AltUp K=2 at {v_lr:g}, baseline at {b_lr:g}: ' + ', '.join(
          'not reached in %d' % fid.FULL_STEPS if x is None else f'{x:.0f}' for x in reach))
  if framing:
    out.append('(a), the paper\'s speed-up framing: baseline steps to reach AltUp K=2\'s final loss '
               '(eval every 100 steps, interpolated), by seed: ' + '; '.join(framing) + '.')
    out.append('')

  out.append(ablation_section(runs, fid))
  out.append(seed_anomaly_section(out_dir))
  out.append('### Measured cost per run (for planning the rest)')
  out.append('')
  out.append('| scale | variant | steps | runs | ms/step (median) | compile s | load average |')
  out.append('|---|---|---:|---:|---:|---:|---:|')
  groups = {}
  for r in runs.values():
    groups.setdefault((r['scale'], r['variant'], r['steps']), []).append(r)
  for (scale, v, steps), rs in sorted(groups.items()):
    ms = sorted(1e3 * r['train_seconds'] / r['steps'] for r in rs)
    out.append(f'| {scale} | {v} | {steps} | {len(rs)} | {ms[len(ms) // 2]:.0f} | '
               f'{sorted(r["compile_s"] for r in rs)[len(rs) // 2]:.0f} | '
               f'{max(r["loadavg"] for r in rs):.1f} |')
  out.append('')
  out.append(f'Raw numbers: `{rel}/fidelity.csv` (claim, variant, seed, step, eval_loss, '
             f'train_seconds, lr, schedule, scale, run); curves: `{rel}/fidelity_curves.png`.')
  out.append('')
  out.append(f'![fidelity curves]({rel}/fidelity_curves.png)')
  out.append('')
  return '\n'.join(out)


def ablation_section(runs, fid):
  out = [_prose('ablation_intro', seeds=fid.ABLATION_SEEDS)]
  rows = []
  for label, scale, schedule, lr, steps in fid.ABLATION:
    bl, al, d, bmin, amin = [], [], [], [], []
    for seed in range(fid.ABLATION_SEEDS):
      rb = runs.get(fid.run_name(scale, 'baseline', schedule, lr, seed, steps))
      ra = runs.get(fid.run_name(scale, 'altup_k2', schedule, lr, seed, steps))
      if rb and ra:
        bl.append(rb['eval'][-1][2])
        al.append(ra['eval'][-1][2])
        d.append(bl[-1] - al[-1])
        bmin.append(min(e[2] for e in rb['eval']))
        amin.append(min(e[2] for e in ra['eval']))
    if not d:
      out.append(f'| {label} | not yet run | not yet run | - | - | - | - |')
      continue
    out.append(f'| {label} | {_mean_std(bl)[0]:.4f} | {_mean_std(al)[0]:.4f} | '
               f'{" ".join(f"{x:+.4f}" for x in d)} | {_mean_std(d)[0]:+.4f} | '
               f'{_mean_std(bmin)[0]:.4f} | {_mean_std(amin)[0]:.4f} |')
    rows.append(dict(label=label, scale=scale, base=_mean_std(bl)[0], d=_mean_std(d)[0],
                     bmin=_mean_std(bmin)[0], n=len(d)))
  out.append('')
  qs = [r for r in rows if r['scale'] == 'quickstart']
  if len(qs) >= 2 and qs[0]['label'] == fid.ABLATION[0][0]:
    as_run, best = qs[0], min(qs, key=lambda r: r['base'])
    out.append(
        f'Reading (generated from the rows above, seeds per row as listed): in the quickstart before '
        f'the fix the baseline ends {as_run["base"] - as_run["bmin"]:.3f} above the lowest eval loss it '
        f'had reached during the run'
        + (', i.e. it trains unstably at that learning rate' if as_run['base'] - as_run['bmin'] > 0.05
           else '') + f', and AltUp K=2 '
        f'leads by {as_run["d"]:+.3f}. With the baseline at its best learning rate of those tried '
        f'at the same size ("{best["label"]}": baseline {best["base"]:.4f} vs {as_run["base"]:.4f} '
        f'before), AltUp\'s lead is {best["d"]:+.4f}. The quickstart\'s large gain is the '
        f'baseline\'s learning rate, not AltUp; the quickstart now trains both models at the '
        f'baseline\'s best (gin/runner/quickstart.gin).' if best is not as_run else
        'Reading: the quickstart\'s learning rate is also the baseline\'s best here.')
    out.append('')
  return '\n'.join(out)


def seed_anomaly_section(out_dir):
  """dense_2d's seeds agreed to 3e-4 at the quality run's last step: is that the seed or chance?"""
  qpath = os.path.join(out_dir, 'quality.json')
  if not os.path.exists(qpath):
    return ''
  q = json.load(open(qpath))
  out = ['### The dense_2d seed anomaly of the quality run', '',
         'Std over seeds of the eval loss at each of the last five eval steps of `quality.json` '
         '(each seed has its own init and data order in every variant):', '',
         '| variant | ' + ' | '.join(f'step {e[0]}' for e in
                                   q['variants']['baseline']['seeds']['0']['eval'][-15:][-5:]) +
         ' |', '|---|' + '---:|' * 5]
  steps = None
  for v, entry in q['variants'].items():
    curves = [c['eval'] for c in entry['seeds'].values()]
    last = q['run']['steps']
    idx = [i for i, e in enumerate(curves[0]) if e[0] <= last][-5:]
    steps = [curves[0][i][0] for i in idx]
    stds = [_mean_std([c[i][2] for c in curves])[1] for i in idx]
    out.append(f'| {v} | ' + ' | '.join(f'{x:.4f}' for x in stds) + ' |')
  out[4] = '| variant | ' + ' | '.join(f'step {s}' for s in steps) + ' |'
  dense = [r for r in out[6:] if r.startswith('| dense_2d |')]
  if dense:
    stds = [float(x) for x in dense[0].strip('| ').split(' | ')[1:]]
    if stds[-1] < 0.25 * min(stds[:-1]):
      out += ['', _prose('seed_anomaly_reading', low=f'{min(stds[:-1]):.4f}',
                         high=f'{max(stds[:-1]):.4f}')]
  out.append('')
  return '\n'.join(out)


def _claim_lists(rows, fid, pair, list_inconclusive=True):
  """The study's outcome as text: `pair(r)` names one claim x LR pair. AltUp's claims by verdict
  (each reproduced one with its equal wall-clock verdict), then the reference models against
  AltUp, by which model is better."""
  altup = [r for r in rows if r['cid'] not in REFERENCE_CLAIMS]
  said = lambda rs: '; '.join(map(pair, rs)) or 'none'
  wall = lambda r: (f'{pair(r)}, at equal wall-clock {r["tm"]:+.4f} +- {r["tse"]:.4f}: '
                    f'{r["time_short"]}')
  text = (f'AltUp\'s claims reproduced at equal steps (paired eval-loss gain > 2 SE): '
          f'{"; ".join(map(wall, [r for r in altup if r["short"] == "reproduced"])) or "none"}. '
          f'The opposite significant: {said([r for r in altup if r["short"] == "opposite"])}. '
          'Inconclusive: ')
  unsure = [r for r in altup if r['short'] not in ('reproduced', 'opposite')]
  if list_inconclusive:
    text += (', '.join(f'({r["cid"]}) at {r["lr"]:g}/{r["ref_lr"]:g}' for r in unsure)
             or 'none') + '.'
  else:
    text += f'{len(unsure)} of {len(altup)} claim x LR pairs.'
  for cid in REFERENCE_CLAIMS:
    rs = [r for r in rows if r['cid'] == cid]
    if rs:
      text += (' Reference model against AltUp: ' + '; '.join(
          f'{pair(r)}: {_verdict_words(r, fid)}; at equal wall-clock {r["tm"]:+.4f} +- '
          f'{r["tse"]:.4f}: {_verdict_words(r, fid, time=True)}' for r in rs) + '.')
  return text


def _fidelity_reading(rows, runs, fid):
  """One generated paragraph: which claims reproduced at which LRs, and what was tried."""
  pair = lambda r: (f'({r["cid"]}) {r["v"]} {r["lr"]:g} vs {r["ref"]} {r["ref_lr"]:g}: '
                    f'{r["m"]:+.4f}')
  text = '**Reading** (generated from the table): ' + _claim_lists(rows, fid, pair)
  k2 = {lr: [runs[n]['eval'][-1][2] for n in
             (fid.run_name('study', 'altup_k2', 'rsqrt', lr, s, fid.FULL_STEPS) for s in range(3))
             if n in runs] for lr in fid.LRS}
  k2 = {lr: sum(v) / len(v) for lr, v in k2.items() if v}
  if len(k2) >= 2:
    text += (' AltUp K=2 at 1500 steps (mean over seeds), by peak LR: '
             + ', '.join(f'{lr:g}: {x:.4f}' for lr, x in sorted(k2.items())) +
             '; the 300-step sweep\'s optimum is not the 1500-step one, which is why every claim '
             'is also shown with both models at the baseline\'s best LR.')
  text += ' ' + _prose('fidelity_tried', steps=fid.FULL_STEPS)
  return text


def fidelity_summary(out_dir):
  """One README line on the fidelity study, from the cached runs."""
  from studies import fidelity as fid  # pylint: disable=g-import-not-at-top
  runs = fid.load_runs(out_dir)
  planned = fid.plan(runs)
  n = sum(1 for s in planned if s['name'] in runs)
  rows = [r for r in _claim_rows(runs, fid, _study_speed_rows(
      out_dir, _table(out_dir, 'speed.csv'))) if r['n']]
  return summary_line(rows, fid, n, len(planned),
                      any('gemma3n' in r['variant'] for r in runs.values()))


def summary_line(rows, fid, done, planned, gemma3n_measured=False):
  """The README's fidelity line from claim rows (`_claim_rows`) and the count of runs done."""
  head = (f'- Fidelity study (the paper\'s claims, seeds, LR sweep, d=64 4+4 layers, '
          f'{fid.FULL_STEPS} steps): {done} of {planned} planned runs done. ')
  if not rows:
    return head + 'Verdicts and the quickstart-gap ablation in BENCHMARKS.md, "Fidelity".'
  pair = lambda r: (f'({r["cid"]}) {r["v"]} vs {r["ref"]} at peak LR {r["lr"]:g}/{r["ref_lr"]:g} '
                    f'{r["m"]:+.4f} +- {r["se"]:.4f} nats ({r["n"]} seeds)')
  notes = (' (g1)\'s variant is the dynamic-coefficient one with one router pass per layer '
           '(`altup_correct_router=\'input\'`: the corrector reuses the predictor\'s router '
           'output), not Gemma 3n\'s block (gin/altup/gemma3n_k4.gin'
           + (', not in the study yet' if not gemma3n_measured else '') + ').'
           if any(r['cid'] == 'g1' for r in rows) else '')
  return (head + _claim_lists(rows, fid, pair, list_inconclusive=False) + notes +
          ' Table, rule and the quickstart-gap ablation: BENCHMARKS.md, "Fidelity".')
