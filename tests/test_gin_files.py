"""Smoke tests for every gin file in gin/ and configs/ (gin/runner/ is tested by the runner's tests).

Without T5X (it is not on PyPI), the architecture layer -- gin/t5_1_1/*.gin and gin/altup/*.gin,
which every config includes -- is parsed, finalized and turned into an `AltUpConfig` and a
`jax.eval_shape`-initialised network; the configs are checked for their layering, includes, task
names and documented commands. With T5X importable, every config is also parsed exactly as
`python -m t5x.train|eval|infer` parses it, and the tiny model is built and checked against T5X's
Adafactor factoring and partitioning rules.
"""
import copy
import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import pytest

from altup_t5x import config as config_lib
from altup_t5x import network
from altup_t5x import partitioning as altup_partitioning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_T5X = importlib.util.find_spec('t5x') is not None
_skip_without_t5x = pytest.mark.skipif(
    not HAS_T5X, reason='T5X is not installed (GitHub-only, see README "Running with T5X"); the '
    'T5X-free layer of these files is checked by the other tests here')


def requires_t5x(fn):
  return pytest.mark.t5x(_skip_without_t5x(fn))


def _rel(pattern):
  return sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, pattern)))


ARCH = 'gin/t5_1_1/arch.gin'
SIZE_FILES = [p for p in _rel('gin/t5_1_1/*.gin') if p != ARCH]
VARIANT_FILES = _rel('gin/altup/*.gin')
MODEL_FILES = _rel('gin/models/*.gin')
CONFIG_FILES = _rel('configs/*/*.gin')
TEST_SPLIT_CONFIGS = _rel('configs/infer/*_test.gin')
OWN_GIN_FILES = [p for p in _rel('gin/**/*.gin') if not p.startswith('gin/runner/')]
RUN_GINS = ('pretrain', 'finetune', 'eval', 'infer')
SCRIPT_OF_RUN = {'pretrain': 'train', 'finetune': 'train', 'eval': 'eval', 'infer': 'infer'}

# What each variant file must set (the rest stays at arch.gin's defaults).
EXPECTED_VARIANTS = {
    'baseline': dict(altup_k=1),
    'k2': dict(altup_k=2),
    'k4': dict(altup_k=4),
    'recycled_k2': dict(altup_k=2, altup_embedding='recycled'),
    'recycled_k4': dict(altup_k=4, altup_embedding='recycled'),
    'same_block_k2': dict(altup_k=2, altup_selection='same'),
    'predicted_input_k2': dict(altup_k=2, altup_layer_input='predicted'),
    'dynamic_k4': dict(altup_k=4, altup_coefficients='dynamic', altup_selection='same',
                       altup_layer_input='predicted'),
    'gemma3n_k4': dict(altup_k=4, altup_selection='same', altup_layer_input='predicted',
                       altup_coefficients='dynamic', altup_correct_router='output',
                       altup_coef_clip=120.0, altup_coef_init='gemma3n',
                       altup_embedding='projected', altup_reduction='unproject'),
    'sequence_s2': dict(sequence_altup_stride=2),
    'stride_skip_s2': dict(sequence_altup_stride=2, sequence_altup_mode='skip'),
    'dynamic_k2': dict(altup_k=2, altup_coefficients='dynamic'),
    'moe_k2': dict(altup_k=2, moe_num_experts=8, moe_every=2, moe_top_k=2),
    'moe_baseline': dict(moe_num_experts=8, moe_every=2, moe_top_k=2),
}
ARCH_DEFAULTS = dict(altup_k=1, altup_selection='alternating', altup_layer_input='input',
                     altup_embedding='wide', altup_reduction='mean', altup_coef_init='identity',
                     altup_coefficients='static', altup_correct_router='input',
                     altup_coef_clip=120.0, altup_fused_updates=True, sequence_altup_stride=1,
                     sequence_altup_mode='predict_correct', moe_num_experts=0, moe_every=2,
                     moe_routing='top_k', moe_top_k=2, moe_capacity_factor=1.25,
                     moe_aux_loss_coef=0.01, moe_z_loss_coef=0.0001,
                     vocab_size=32128, dtype='bfloat16', mlp_activations=('gelu', 'linear'),
                     logits_via_embedding=False)
# Names in T5X's `adafactor.standard_logical_factor_rules()` (t5x/adafactor.py at HEAD), for the
# T5X-free check that every parameter axis has a factoring rule.
T5X_FACTOR_RULE_NAMES = frozenset([
    'vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'relpos_buckets', 'layers', 'stack',
    'q_wi_fused', 'o_wo_fused', 'multiquery_heads', 'kv_fused', 'layer_norm_scale',
    'mlp_activations'])


def _variant_marks(variant, reduction=None):
  del variant, reduction  # every variant and reduction runs under T5X's Adafactor
  return []


@pytest.fixture(autouse=True)
def _fresh_gin():
  gin.clear_config()
  gin.add_config_file_search_path(REPO)
  yield
  gin.clear_config()


def _parse(files, bindings=(), finalize=True):
  gin.parse_config_files_and_bindings([os.path.join(REPO, f) for f in files], list(bindings),
                                      finalize_config=finalize)


def _configured(selector):
  """Evaluates the `@configurable()` bound to `selector`, as gin does when calling its owner."""
  return copy.deepcopy(gin.query_parameter(selector))


def _arch_config(files, bindings=('DROPOUT_RATE = 0.0',)):
  gin.clear_config()
  _parse(files, bindings)
  cfg = _configured('network.Transformer.config')
  assert isinstance(cfg, config_lib.AltUpConfig)
  return cfg


def _init_shapes(cfg):
  module = network.Transformer(cfg)
  enc = jnp.ones((2, 8), jnp.int32)
  dec = jnp.ones((2, 4), jnp.int32)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), enc, dec, dec,
                                            enable_dropout=False))


def _num_params(variables):
  return sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))


def _axis_names(variables):
  names = set()
  for leaf in jax.tree_util.tree_leaves(
      variables['params_axes'], is_leaf=lambda x: hasattr(x, 'names')):
    names.update(leaf.names)
  return names


def _includes(path):
  return re.findall(r"^include '([^']+)'", open(os.path.join(REPO, path)).read(), re.M)


def _macro(path, name):
  m = re.search(rf'^{name} = (.+)$', open(os.path.join(REPO, path)).read(), re.M)
  return m and m.group(1).strip()


def _bound_macro(path, name):
  """The macro's value as gin binds it from `path` and this repository's files it includes: the
  last binding in the text with each include expanded in place (T5X's run gins, which bind no
  task name of ours, are not followed)."""
  value = None
  for line in open(os.path.join(REPO, path)).read().splitlines():
    inc = re.match(r"^include '([^']+)'", line)
    if inc and not inc.group(1).startswith('t5x/'):
      value = _bound_macro(inc.group(1), name) or value
    m = re.match(rf'^{name} = (.+)$', line)
    if m:
      value = m.group(1).strip()
  return value


def _header_commands(path):
  """The shell commands of a config's header, each as its argv (continuation lines joined)."""
  header = open(os.path.join(REPO, path)).read().split('from __gin__')[0]
  commands = []
  for line in header.splitlines():
    if line.startswith('#     ') and commands:
      commands[-1] += ' ' + line[len('#     '):]
    elif line.startswith('#   ') and not line.startswith('#    '):
      commands.append(line[len('#   '):])
  return [shlex.split(c.replace(' \\ ', ' ').rstrip(' \\')) for c in commands]


# ------------------------- The architecture layer (no T5X needed) -------------------------------

def test_file_sets_are_complete():
  assert [os.path.basename(p)[:-4] for p in SIZE_FILES] == sorted(config_lib.SIZES)
  assert sorted(os.path.basename(p)[:-4] for p in VARIANT_FILES) == sorted(EXPECTED_VARIANTS)
  assert MODEL_FILES == ['gin/models/t5x_encoder_decoder.gin',
                         'gin/models/t5x_moe_encoder_decoder.gin']


def test_arch_alone_requires_sizes():
  # T5X parses with finalize_config=True, whose hook names every unset %gin.REQUIRED macro.
  with pytest.raises(ValueError, match='EMBED_DIM.*%gin.REQUIRED'):
    _parse([ARCH])


def test_size_without_dropout_is_an_error():
  # Dropout is a run concern, as in T5X: the run gin (or the config) must bind it.
  with pytest.raises(ValueError, match='DROPOUT_RATE.*%gin.REQUIRED'):
    _parse([SIZE_FILES[0]])


@pytest.mark.parametrize('size_file', SIZE_FILES)
@pytest.mark.parametrize('variant_file', VARIANT_FILES)
def test_size_and_variant_build_the_config(size_file, variant_file):
  size = os.path.basename(size_file)[:-4]
  variant = os.path.basename(variant_file)[:-4]
  cfg = _arch_config([size_file, variant_file])
  expected = dict(ARCH_DEFAULTS, **config_lib.SIZES[size], **EXPECTED_VARIANTS[variant],
                  dropout_rate=0.0)
  assert {k: getattr(cfg, k) for k in expected} == expected


@pytest.mark.parametrize('variant_file', VARIANT_FILES)
def test_variant_files_only_set_altup_macros(variant_file):
  statements = [l for l in open(os.path.join(REPO, variant_file)).read().splitlines()
                if l.strip() and not l.startswith('#')]
  assert statements and all(re.match(r'^(SEQUENCE_ALTUP|ALTUP|MOE)_[A-Z_]+ = \S', l)
                            for l in statements), statements


def test_variant_order_matters_the_later_file_wins():
  assert _arch_config(['gin/t5_1_1/tiny.gin', 'gin/altup/k4.gin',
                       'gin/altup/k2.gin']).altup_k == 2


@pytest.mark.parametrize('variant_file', VARIANT_FILES)
def test_tiny_network_initialises(variant_file):
  variables = _init_shapes(_arch_config(['gin/t5_1_1/tiny.gin', variant_file]))
  assert set(variables) == {'params', 'params_axes'}


def test_tiny_altup_parameter_overhead():
  """Recycled-AltUp adds K^2 + K scalars per layer; wide AltUp also widens the embedding K-fold."""
  tiny = config_lib.SIZES['tiny']
  layers = tiny['num_encoder_layers'] + tiny['num_decoder_layers']
  counts = {v: _num_params(_init_shapes(_arch_config(['gin/t5_1_1/tiny.gin', f'gin/altup/{v}.gin'])))
            for v in ('baseline', 'k2', 'recycled_k2', 'recycled_k4')}
  assert counts['recycled_k2'] - counts['baseline'] == layers * (2 * 2 + 2)
  assert counts['recycled_k4'] - counts['baseline'] == layers * (4 * 4 + 4)
  assert counts['k2'] - counts['recycled_k2'] == 32128 * tiny['emb_dim']


@pytest.mark.parametrize('size_file', [
    p if p.endswith('small.gin') else pytest.param(p, marks=pytest.mark.slow)  # ~5-20 s each
    for p in SIZE_FILES if not p.endswith('tiny.gin')])
def test_size_file_parameter_count_comment(size_file):
  """The 'about N parameters' in each size file's header is what the network has (no allocation)."""
  m = re.search(r'about ([0-9.]+)([MB]) parameters', open(os.path.join(REPO, size_file)).read())
  assert m, f'{size_file} should state its parameter count'
  stated = float(m.group(1)) * {'M': 1e6, 'B': 1e9}[m.group(2)]
  actual = _num_params(_init_shapes(_arch_config([size_file])))
  assert abs(actual - stated) / actual < 0.01, (actual, stated)


@pytest.mark.parametrize('variant,reduction', [
    (v, r) for v in sorted(EXPECTED_VARIANTS) for r in config_lib.REDUCTIONS])
def test_every_parameter_axis_has_rules(variant, reduction):
  """T5X's Adafactor raises KeyError for an axis without a factor rule (checked for real below)."""
  cfg = _arch_config(['gin/t5_1_1/tiny.gin', f'gin/altup/{variant}.gin'],
                     ['DROPOUT_RATE = 0.0', f"ALTUP_REDUCTION = '{reduction}'"])
  names = _axis_names(_init_shapes(cfg))
  ours = {**altup_partitioning.ALTUP_FACTOR_RULES, **altup_partitioning.MOE_FACTOR_RULES}
  assert names <= T5X_FACTOR_RULE_NAMES | set(ours)
  new = names - T5X_FACTOR_RULE_NAMES
  assert new <= {n for n, _ in altup_partitioning.t5x_axis_rules()}


def test_model_gin_uses_the_package_rules():
  text = open(os.path.join(REPO, 'gin/models/t5x_encoder_decoder.gin')).read()
  assert 'additional_rules = @altup_partitioning.t5x_axis_rules()' in text
  assert '@altup_partitioning.t5x_factor_rules()' in text


# ------------------------- configs/ (no T5X needed) ---------------------------------------------

def test_configs_are_up_to_date():
  out = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'gen_configs.py'), '--check'],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stdout + out.stderr


def test_there_is_a_config_per_paper_experiment():
  sizes, variants = ('small', 'base', 'large', 'xl'), ('baseline', 'altup_k2', 'altup_k4',
                                                      'recycled_k2')
  for size in sizes:
    for variant in variants:
      assert f'configs/pretrain/c4_{size}_{variant}.gin' in CONFIG_FILES
      for bench in ('glue', 'super_glue', 'squad', 'trivia_qa'):
        for kind in ('finetune', 'eval', 'infer'):
          assert f'configs/{kind}/{bench}_{size}_{variant}.gin' in CONFIG_FILES
  # Test-split inference only where a leaderboard takes the predictions (altup_t5x.leaderboard).
  assert TEST_SPLIT_CONFIGS == sorted(
      f'configs/infer/{bench}_{size}_{variant}_test.gin' for bench in ('glue', 'super_glue')
      for size in sizes for variant in variants)


def _run_gin(path):
  runs = [f for f in _includes(path) if f.startswith('t5x/configs/runs/')]
  assert len(runs) == 1, f'{path} must include exactly one T5X run gin, got {runs}'
  return os.path.basename(runs[0])[:-4]


@pytest.mark.parametrize('path', CONFIG_FILES)
def test_config_layering_and_command(path):
  includes = _includes(path)
  own = [f for f in includes if not f.startswith('t5x/')]
  for f in own:
    assert os.path.exists(os.path.join(REPO, f)), f'{path}: missing include {f}'
  run = _run_gin(path)
  assert run in RUN_GINS
  kind = path.split('/')[1]
  if kind != 'smoke':
    assert run == kind
  # size -> variant -> model -> ... -> run gin, as T5X layers its own examples.
  order = [next(i for i, f in enumerate(includes) if f.startswith(prefix))
           for prefix in ('gin/t5_1_1/', 'gin/altup/', 'gin/models/', 't5x/configs/runs/')]
  assert order == sorted(order), includes
  header = open(os.path.join(REPO, path)).read().split('from __gin__')[0]
  assert f'python -m t5x.{SCRIPT_OF_RUN[run]}' in header
  assert f'--gin_file={path}' in header
  if run == 'finetune':
    assert _macro(path, 'INITIAL_CHECKPOINT_PATH') == '%gin.REQUIRED'


@pytest.mark.parametrize('path', CONFIG_FILES)
def test_config_architecture_layer_builds(path):
  """The T5X-free includes (size, variant) plus the config's own architecture macros."""
  arch_files = [f for f in _includes(path) if f.startswith(('gin/t5_1_1/', 'gin/altup/'))]
  bindings = ['DROPOUT_RATE = 0.0']
  dtype = _macro(path, 'ACTIVATION_DTYPE')
  if dtype:
    bindings.append(f'ACTIVATION_DTYPE = {dtype}')
  cfg = _arch_config(arch_files, bindings)
  size = re.search(r'gin/t5_1_1/(\w+)\.gin', ' '.join(arch_files)).group(1)
  assert cfg.emb_dim == config_lib.SIZES[size]['emb_dim']


def test_config_task_names_are_registered():
  seqio = pytest.importorskip('seqio')
  import altup_t5x.data.tasks  # pylint: disable=g-import-not-at-top,unused-import
  names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  used = {p: _bound_macro(p, 'MIXTURE_OR_TASK_NAME') for p in CONFIG_FILES}
  assert all(used.values()), [p for p, v in used.items() if not v]
  used = {eval(v) for v in used.values()}  # pylint: disable=eval-used
  assert used and used <= names, used - names


@pytest.mark.parametrize('path', TEST_SPLIT_CONFIGS)
def test_test_split_config_layers_on_its_validation_config(path):
  """A test-split config is its validation config with the benchmark's test gin after the run gin
  (so that the test gin's split and mixture win) and no split or mixture of its own; its header
  runs t5x.infer, copies INFER_OUTPUT_DIR out of the bucket and exports that copy for the
  benchmark's leaderboard, with flags altup_t5x.leaderboard's own parser accepts."""
  from altup_t5x import leaderboard as lb  # pylint: disable=g-import-not-at-top
  name = os.path.basename(path)[:-len('_test.gin')]
  bench = next(b for b in ('super_glue', 'glue') if name.startswith(b + '_'))
  validation = f'configs/infer/{name}.gin'
  includes = _includes(path)
  assert includes == _includes(validation) + [lb.TEST_GINS[bench]]
  text = open(os.path.join(REPO, path)).read()
  assert 'MIXTURE_OR_TASK_NAME' not in text.split('from __gin__')[1]
  assert 'DatasetConfig.split' not in text
  assert eval(_bound_macro(path, 'MIXTURE_OR_TASK_NAME')) == lb.TEST_MIXTURES[bench]  # pylint: disable=eval-used
  for macro in ('TASK_FEATURE_LENGTHS', 'DROPOUT_RATE', 'SCAN_LAYERS', 'REMAT_POLICY'):
    assert _macro(path, macro) == _macro(validation, macro), macro
  assert (re.findall(r'^partitioning\..*$', text, re.M)
          == re.findall(r'^partitioning\..*$', open(os.path.join(REPO, validation)).read(), re.M))
  infer, copy_cmd, export = _header_commands(path)
  assert infer[:3] == ['python', '-m', 't5x.infer']
  out_dir = next(a.split('=', 1)[1] for a in infer if a.startswith('--gin.INFER_OUTPUT_DIR='))
  out_dir = out_dir.strip("'")
  assert out_dir == f'gs://${{BUCKET}}/altup/infer_test/{name}'
  assert copy_cmd == ['gsutil', '-m', 'cp', '-r', out_dir, '.']
  assert export[:3] == ['python', '-m', 'altup_t5x.leaderboard']
  args = lb._parser().parse_args(export[3:])  # pylint: disable=protected-access
  assert args.benchmark == bench
  assert args.predictions == [os.path.basename(out_dir)]  # the directory gsutil copied here
  assert args.output == f'{name}.zip'


# ------------------------- Under T5X ------------------------------------------------------------

def _parse_like_t5x(path, monkeypatch, bindings=()):
  """Parses `path` as `python -m t5x.<script> --gin_file=path` does (search paths included)."""
  import t5x  # pylint: disable=g-import-not-at-top
  script = importlib.import_module(f't5x.{SCRIPT_OF_RUN[_run_gin(path)]}')
  # The run gins bind `__main__.<fn>`; under pytest __main__ is pytest, so stand in the script.
  monkeypatch.setitem(sys.modules, '__main__', script)
  t5x_root = os.path.dirname(os.path.dirname(os.path.abspath(t5x.__file__)))
  gin.add_config_file_search_path(t5x_root)
  gin.parse_config_files_and_bindings([path], list(bindings), finalize_config=True)


def _required_bindings(path):
  text = open(os.path.join(REPO, path)).read()
  out = []
  for macro in ('MODEL_DIR', 'INITIAL_CHECKPOINT_PATH', 'CHECKPOINT_PATH', 'EVAL_OUTPUT_DIR',
                'INFER_OUTPUT_DIR'):
    if f'--gin.{macro}=' in text:
      out.append(f"{macro} = '/tmp/unused'")
  return out


@requires_t5x
@pytest.mark.parametrize('path', CONFIG_FILES)
def test_config_parses_under_t5x(path, monkeypatch):
  monkeypatch.chdir(REPO)
  _parse_like_t5x(path, monkeypatch, _required_bindings(path))
  cfg = _configured('network.Transformer.config')
  assert isinstance(cfg, config_lib.AltUpConfig)
  rules = _configured('adafactor.Adafactor.logical_factor_rules')
  assert set(altup_partitioning.ALTUP_FACTOR_RULES) <= set(rules)
  assert 'vocab' in rules  # T5X's standard rules are kept, not replaced


@requires_t5x
@pytest.mark.parametrize('path', TEST_SPLIT_CONFIGS)
def test_test_split_config_parses_under_t5x_for_the_leaderboard(path, monkeypatch):
  """As t5x.infer parses it: the test split, the benchmark's test mixture and T5X's writer told to
  keep the example ids that altup_t5x.leaderboard reads."""
  from altup_t5x import leaderboard as lb  # pylint: disable=g-import-not-at-top
  bench = 'super_glue' if os.path.basename(path).startswith('super_glue_') else 'glue'
  monkeypatch.chdir(REPO)
  _parse_like_t5x(path, monkeypatch, _required_bindings(path))
  assert gin.query_parameter('utils.DatasetConfig.split') == 'test'
  assert gin.query_parameter('MIXTURE_OR_TASK_NAME/macro.value') == lb.TEST_MIXTURES[bench]
  fields = gin.query_parameter('write_inferences_to_file.input_fields_to_include')
  assert set(lb.MULTIRC_IDS + lb.RECORD_IDS + ('idx',)) <= set(fields)
  assert gin.query_parameter('infer.write_fn').selector == 'infer_script.write_inferences_to_file'


@requires_t5x
@pytest.mark.parametrize('variant,reduction', [
    pytest.param(v, r, marks=_variant_marks(v, r))
    for v in sorted(EXPECTED_VARIANTS) for r in config_lib.REDUCTIONS])
def test_tiny_model_under_t5x_adafactor_and_partitioner(variant, reduction):
  """Builds T5X's EncoderDecoderModel pieces from the gin files and runs T5X's own Adafactor
  factoring (KeyError for a missing rule, ValueError for a bad one) on the parameters' axis names,
  as `t5x.train_state` does, and checks every name has a partitioning rule."""
  from flax.linen import partitioning as flax_partitioning  # pylint: disable=g-import-not-at-top
  _parse(['gin/t5_1_1/tiny.gin', f'gin/altup/{variant}.gin', 'gin/models/t5x_encoder_decoder.gin',
          'gin/vocab/embedded.gin'],
         ['DROPOUT_RATE = 0.0', "ACTIVATION_DTYPE = 'float32'", f"ALTUP_REDUCTION = '{reduction}'",
          'P = @partitioning.standard_logical_axis_rules()'])
  module = _configured('models.EncoderDecoderModel.module')
  assert isinstance(module, network.Transformer)
  optimizer_def = _configured('%OPTIMIZER')
  axis_rules = _configured('%P')
  variables = _init_shapes(module.config)
  param_axes = flax_partitioning.get_axis_names(variables['params_axes'])
  names = {n for axes in jax.tree_util.tree_leaves(param_axes, is_leaf=lambda x: isinstance(x, tuple))
           for n in axes}
  assert names >= {'embed', 'vocab'}
  if module.config.altup_k > 1:
    assert 'altup_blocks' in names
  optimizer_def.set_param_axes(param_axes)  # what t5x.train_state does
  factored = optimizer_def.hyper_params.factor_map
  assert len(factored) == len(jax.tree_util.tree_leaves(variables['params']))
  assert names <= {name for name, _ in axis_rules}
