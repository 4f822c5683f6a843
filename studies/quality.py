"""Quality: eval-loss curves of a few variants on the embedded corpus, seeds interleaved."""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from altup_t5x import csv_tables
from altup_t5x.config import AltUpConfig
from altup_t5x.models import count_params
from altup_t5x.network import Transformer
from studies.common import (FLOAT_FORMAT, VARIANTS, init_params, make_config_from,
                            make_eval_sums, make_optimizer, make_train_step)

# ------------------------------------------------------------------------------------------------
# Quality: loss against steps and wall-clock on the embedded corpus.

# A model small enough for 3 seeds x 4 variants in ~10 minutes on 2 idle cores (the K*d-wide dense
# model alone is ~half of it), with T5.1.1's shape ratios (mlp = 2 emb, heads x head_dim = emb).
QUALITY_MODEL = dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, num_encoder_layers=2,
                     num_decoder_layers=2)
QUALITY_RUN = dict(batch=16, inputs=128, targets=32, steps=200, baseline_steps=300, eval_every=20,
                   eval_examples=128, learning_rate=0.01)
QUICK_QUALITY_MODEL = dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                           num_decoder_layers=1)
QUICK_QUALITY_RUN = dict(batch=4, inputs=64, targets=16, steps=12, baseline_steps=18, eval_every=6,
                         eval_examples=16, learning_rate=0.01)
QUALITY_VARIANTS = ['baseline', 'altup_k2', 'recycled_k2', 'dense_2d']


def quality_config(variant: str, model: dict) -> AltUpConfig:
  base = AltUpConfig(vocab_size=1100, dropout_rate=0.0, **model)  # T5.1.1 pretraining: no dropout
  return make_config_from(base, variant)



def load_corpus_batches(run: dict, num_train: int, out_dir: str):
  """Packed span-corruption examples of the embedded corpus as numpy arrays (cached on disk)."""
  lengths = {'inputs': run['inputs'], 'targets': run['targets']}
  from altup_t5x.data import corpus  # pylint: disable=g-import-not-at-top
  del out_dir  # the arrays are a cache, not a result: they go with the vocabulary's cache
  cache = os.path.join(corpus.cache_dir(), 'benchmark')
  os.makedirs(cache, exist_ok=True)
  path = os.path.join(cache, f'span_corruption_{run["inputs"]}_{run["targets"]}_{num_train}_'
                             f'{run["eval_examples"]}.npz')
  if os.path.exists(path):
    data = np.load(path)
    return ({k[6:]: data[k] for k in data.files if k.startswith('train_')},
            {k[5:]: data[k] for k in data.files if k.startswith('eval_')})
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  import seqio  # pylint: disable=g-import-not-at-top
  import altup_t5x.data.tasks  # pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task('altup_embedded_span_corruption')
  converter = seqio.EncDecFeatureConverter(pack=True)

  def take(split, n):
    ds = task.get_dataset(lengths, split=split, shuffle=split == 'train', seed=0, num_epochs=None)
    ds = converter(ds, lengths)
    rows = list(ds.take(n).as_numpy_iterator())
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  t0 = time.perf_counter()
  train, evals = take('train', num_train), take('validation', run['eval_examples'])
  print(f'  data: {num_train} train + {len(evals["encoder_input_tokens"])} validation packed '
        f'examples in {time.perf_counter() - t0:.0f}s', flush=True)
  tmp = f'{path[:-4]}.tmp{os.getpid()}.npz'  # atomic: parallel workers may build it at once
  np.savez(tmp, **{f'train_{k}': v for k, v in train.items()},
           **{f'eval_{k}': v for k, v in evals.items()})
  os.replace(tmp, path)
  return train, evals


_QUALITY_FNS = {}


def _quality_fns(cfg, run):
  """(module, optimizer, jitted train step, jitted eval sums) per config, shared by all seeds."""
  key = (cfg, run['learning_rate'])
  if key in _QUALITY_FNS:
    return _QUALITY_FNS[key]
  module = Transformer(config=cfg)
  optimizer = make_optimizer(run['learning_rate'])
  train_step = jax.jit(make_train_step(module, optimizer), donate_argnums=(0, 1))

  _QUALITY_FNS[key] = (module, optimizer, train_step, make_eval_sums(module))
  return _QUALITY_FNS[key]


class QualityRun:
  """One variant and seed: params, optimizer state, the shared jitted train step and eval loss."""

  def __init__(self, variant, cfg, seed, run, example_batch):
    self.variant, self.seed, self.cfg = variant, seed, cfg
    module, optimizer, self.train_step, self.eval_sums = _quality_fns(cfg, run)
    self.params = init_params(module, jax.random.PRNGKey(seed), example_batch)
    self.n_params = count_params(self.params)
    self.opt_state = optimizer.init(self.params)
    self.rng = jax.random.PRNGKey(1000 + seed)

    self.train_curve, self.eval_curve = [], []  # (step, seconds, loss)
    self.seconds = 0.0

  def warm_up(self, batch, eval_batch):
    """Compiles both functions; the state is copied, so this trains nothing."""
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
    jax.block_until_ready(self.train_step(copy(self.params), copy(self.opt_state), batch, self.rng))
    jax.block_until_ready(self.eval_sums(self.params, eval_batch))

  def step(self, batch):
    t0 = time.perf_counter()
    self.params, self.opt_state, loss, self.rng = self.train_step(self.params, self.opt_state,
                                                                  batch, self.rng)
    loss = float(loss)  # blocks
    dt = time.perf_counter() - t0
    return loss, dt

  def evaluate(self, eval_batches):
    total, count = 0.0, 0.0
    for b in eval_batches:
      s, n = self.eval_sums(self.params, b)
      total, count = total + float(s), count + float(n)
    return total / count


def run_quality(args) -> dict:
  model = QUICK_QUALITY_MODEL if args.quick else QUALITY_MODEL
  run = dict(QUICK_QUALITY_RUN if args.quick else QUALITY_RUN)
  if args.train_steps:
    run['baseline_steps'] = int(round(args.train_steps * run['baseline_steps'] / run['steps']))
    run['steps'] = args.train_steps
  seeds = list(range(args.seeds))
  num_train = run['baseline_steps'] * run['batch']
  print(f'\n== quality: model {model}, run {run}, seeds {seeds}', flush=True)
  train, evals = load_corpus_batches(run, num_train, args.out)
  b = run['batch']
  eval_batches = [{k: jnp.asarray(v[i:i + b]) for k, v in evals.items()}
                  for i in range(0, len(evals['encoder_input_tokens']) - b + 1, b)]
  results = {'model': model, 'run': run, 'seeds': seeds, 'variants': {}}
  t_total = time.perf_counter()
  for seed in seeds:
    # Data order depends on the seed; every variant of a seed sees the same batches.
    order = np.random.RandomState(seed).permutation(num_train)
    batch_at = lambda step: {k: jnp.asarray(v[order[step * b:(step + 1) * b]])
                             for k, v in train.items()}
    runs = {}
    for v in QUALITY_VARIANTS:
      t0 = time.perf_counter()
      runs[v] = QualityRun(v, quality_config(v, model), seed, run, batch_at(0))
      runs[v].warm_up(batch_at(0), eval_batches[0])
      print(f'  seed {seed} {v:12s} params {runs[v].n_params / 1e6:.3f}M  '
            f'compile {time.perf_counter() - t0:.0f}s', flush=True)
    for step in range(run['baseline_steps']):
      batch = batch_at(step)
      # Round-robin over the variants at every step: load changes hit all of them alike.
      for v, r in runs.items():
        limit = run['baseline_steps'] if v == 'baseline' else run['steps']
        if step >= limit:
          continue
        loss, dt = r.step(batch)
        r.seconds += dt
        r.train_curve.append((step + 1, r.seconds, loss))
        if (step + 1) % run['eval_every'] == 0 or step + 1 == limit:
          r.eval_curve.append((step + 1, r.seconds, r.evaluate(eval_batches)))
      if (step + 1) % run['eval_every'] == 0:
        print(f'  seed {seed} step {step + 1:4d}: ' + '  '.join(
            f'{v} {r.eval_curve[-1][2]:.3f}' for v, r in runs.items() if r.eval_curve) +
              f'  ({time.perf_counter() - t_total:.0f}s)', flush=True)
    for v, r in runs.items():
      entry = results['variants'].setdefault(v, {'description': VARIANTS[v][0],
                                                 'params': r.n_params, 'seeds': {}})
      entry['seeds'][str(seed)] = {'train': r.train_curve, 'eval': r.eval_curve}
  results['seconds'] = time.perf_counter() - t_total
  summarize_quality(results)
  return results


def _interp_reach(curve, target):
  """First (step, seconds) at which a piecewise-linear eval curve reaches `target`, or None."""
  prev = None
  for step, sec, loss in curve:
    if loss <= target:
      if prev is None:
        return step, sec
      (s0, t0, l0) = prev
      f = (l0 - target) / max(l0 - loss, 1e-12)
      return s0 + f * (step - s0), t0 + f * (sec - t0)
    prev = (step, sec, loss)
  return None


def summarize_quality(results):
  """Final eval loss (mean, std, min-max over seeds) and the baseline's steps/seconds to reach it."""
  run = results['run']
  summary = {}
  base = results['variants']['baseline']['seeds']
  for v, entry in results['variants'].items():
    finals, secs, reach_steps, reach_secs = [], [], [], []
    for seed, curves in entry['seeds'].items():
      at = [e for e in curves['eval'] if e[0] == run['steps']][0]  # compare at the same step
      finals.append(at[2])
      secs.append(at[1])
      reach = _interp_reach(base[seed]['eval'], at[2])
      reach_steps.append(reach[0] if reach else float('nan'))
      reach_secs.append(reach[1] if reach else float('nan'))
    summary[v] = dict(
        final_eval_loss=float(np.mean(finals)),
        final_eval_loss_std=float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
        final_eval_loss_min=float(np.min(finals)), final_eval_loss_max=float(np.max(finals)),
        seconds=float(np.mean(secs)), step_ms=1e3 * float(np.mean(secs)) / run['steps'],
        baseline_steps_to_reach=float(np.mean(reach_steps)),
        baseline_steps_reached=int(np.sum(np.isfinite(reach_steps))),
        baseline_seconds_to_reach=float(np.mean(reach_secs)),
        finals=[float(x) for x in finals], params=entry['params'])
  results['summary'] = summary
  print(f'\n{"variant":12s} {"params":>8s} {"eval loss":>10s} {"std":>6s} {"ms/step":>8s} '
        f'{"base steps to reach":>20s} {"base s to reach":>16s} {"own s":>7s}')
  for v, s in summary.items():
    print(f'{v:12s} {s["params"]/1e6:7.3f}M {s["final_eval_loss"]:10.4f} '
          f'{s["final_eval_loss_std"]:6.4f} {s["step_ms"]:8.1f} '
          f'{s["baseline_steps_to_reach"]:14.0f} ({s["baseline_steps_reached"]}/'
          f'{len(s["finals"])}) {s["baseline_seconds_to_reach"]:16.1f} {s["seconds"]:7.1f}',
          flush=True)



def write_quality_csv(path, results):
  rows = []
  for v, s in results['summary'].items():
    rows.append(dict(variant=v, description=VARIANTS[v][0], **{
        k: val for k, val in s.items() if not isinstance(val, list)},
                     finals=' '.join(f'{x:.4f}' for x in s['finals'])))
  csv_tables.write(path, rows, list(rows[0]), float_format=FLOAT_FORMAT)
  curve_rows = []
  for v, entry in results['variants'].items():
    for seed, curves in entry['seeds'].items():
      for kind in ('train', 'eval'):
        for step, sec, loss in curves[kind]:
          curve_rows.append(dict(variant=v, seed=seed, kind=kind, step=step, seconds=sec, loss=loss))
  csv_tables.write(path.replace('.csv', '_curves.csv'), curve_rows, list(curve_rows[0]),
                   float_format=FLOAT_FORMAT)


COLORS = {'baseline': 'black', 'altup_k2': 'tab:blue', 'recycled_k2': 'tab:green',
          'dense_2d': 'tab:red'}


def _mean_curve(entry, kind, x_index, smooth=1):
  """Mean and min/max over seeds of a curve; x is the step or the (mean) seconds."""
  curves = [np.array(c[kind], dtype=float) for c in entry['seeds'].values()]
  n = min(len(c) for c in curves)
  ys = np.stack([c[:n, 2] for c in curves])
  if smooth > 1:
    kernel = np.ones(smooth) / smooth
    ys = np.stack([np.convolve(np.pad(y, (smooth - 1, 0), mode='edge'), kernel, 'valid')
                   for y in ys])
  xs = np.mean(np.stack([c[:n, x_index] for c in curves]), axis=0)
  return xs, ys.mean(0), ys.min(0), ys.max(0)


def plot_quality(results, out):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n_seeds = len(results['seeds'])
  for x_index, xlabel, name in ((0, 'training step', 'steps'),
                                (1, 'training wall-clock (s, step time only)', 'time')):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind, smooth in ((axes[0], 'train', 10), (axes[1], 'eval', 1)):
      for v, entry in results['variants'].items():
        xs, mean, lo, hi = _mean_curve(entry, kind, x_index, smooth)
        ax.plot(xs, mean, color=COLORS.get(v), label=f'{v} ({entry["params"] / 1e6:.2f}M)')
        ax.fill_between(xs, lo, hi, color=COLORS.get(v), alpha=0.15)
      ax.set_xlabel(xlabel)
      ax.set_ylabel(f'{kind} loss' + (' (10-step mean)' if smooth > 1 else ' (validation split)'))
      ax.grid(alpha=0.3)
      if kind == 'eval':
        last = [_mean_curve(e, 'eval', x_index)[1][-1] for e in results['variants'].values()]
        first = [_mean_curve(e, 'eval', x_index)[1][min(2, len(e['seeds']['0']['eval']) - 1)]
                 for e in results['variants'].values()]
        ax.set_ylim(min(last) - 0.1, max(first) + 0.1)
    axes[0].legend()
    fig.suptitle(f'Embedded-corpus span corruption, mean of {n_seeds} seeds (band: min-max)')
    fig.tight_layout()
    fig.savefig(os.path.join(out, f'quality_loss_vs_{name}.png'), dpi=100)
    plt.close(fig)
  # The paper's kind of figure: what the baseline needs to match each variant's final loss.
  summary = results['summary']
  steps = results['run']['steps']
  names = [v for v in summary if v != 'baseline']
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, own, label in ((axes[0], 'baseline_steps_to_reach', None, 'steps'),
                              (axes[1], 'baseline_seconds_to_reach', 'seconds', 'seconds')):
    base_need = [summary[v][key] for v in names]
    own_cost = [steps if own is None else summary[v][own] for v in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, own_cost, 0.4, label='variant', color=[COLORS.get(v) for v in names])
    ax.bar(x + 0.2, [b if np.isfinite(b) else 0 for b in base_need], 0.4, color='grey',
           label='baseline to reach the same eval loss')
    for xi, b in zip(x, base_need):
      if not np.isfinite(b):
        ax.text(xi + 0.2, 0, 'not\nreached', ha='center', va='bottom', fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel(label)
    ax.legend(fontsize=8)
  fig.suptitle(f'Baseline {label} needed to reach each variant\'s final eval loss (mean of seeds)')
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'quality_baseline_to_reach.png'), dpi=100)
  plt.close(fig)


