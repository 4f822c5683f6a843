"""studies/update_layout.py: its layouts of the AltUp update compute one function.

The timed layouts (stacked unfused, stacked fused, per-block tuple, per-block between one unstack
and one stack) must give the same loss and gradients; 'unfused' itself is held to a float64 NumPy
loop written from the equations (loss, and central differences for a few gradient entries), and
the comparison is shown to catch a wrong gradient. No timing.
"""
import numpy as np
import pytest

from studies import update_layout

SHAPE = update_layout.CHECK_SHAPE  # 2 x 16 x 32
LAYERS = 4


def np_loss(x, params):
  """mean(y^2) of the output of predict / x + tanh(rmsnorm(x) W) on x_{j*} / correct per layer,
  float64, per block."""
  x = np.asarray(x, np.float64)
  k = x.shape[-2]
  blocks = [x[..., j, :] for j in range(k)]
  for i, lp in enumerate(params):
    p, g, w = (np.asarray(lp[name], np.float64) for name in ('p', 'g', 'w'))
    block = i % k
    xhat = [sum(p[r, j] * blocks[j] for j in range(k)) for r in range(k)]
    x_in = blocks[block]  # the layer reads the block before the predictor
    normed = x_in / np.sqrt(np.mean(np.square(x_in), axis=-1, keepdims=True) + 1e-6)
    out = x_in + np.tanh(normed @ w)
    blocks = [xhat[r] + g[r] * (out - xhat[block]) for r in range(k)]
  return float(np.mean(np.square(np.stack(blocks, axis=-2))))


@pytest.mark.parametrize('k', [1, 2, 3, 4])
def test_every_layout_matches_unfused(k):
  assert update_layout.check_equivalence(k, SHAPE, LAYERS) == []


@pytest.mark.parametrize('k', [2, 3])
def test_unfused_matches_a_numpy_loop(k):
  x, params = update_layout.make_problem(k, SHAPE, LAYERS)
  x = np.asarray(x, np.float64)
  params = [{n: np.asarray(v, np.float64) for n, v in lp.items()} for lp in params]
  got = update_layout.layout_results(k, SHAPE, LAYERS, layouts=('unfused',))['unfused']
  want = np_loss(x, params)
  assert abs(float(got['loss']) - want) <= 1e-5 * abs(want)

  # Central differences of the float64 loss at one entry of each kind of input.
  h = 1e-5
  entries = [('d/dx', None, (1, 3, k - 1, 5)), ('d/dp[layer 1]', ('p', 1), (k - 1, 0)),
             ('d/dg[layer 2]', ('g', 2), (k - 1,)), ('d/dw[layer 3]', ('w', 3), (4, 7))]
  for name, where, index in entries:
    def shifted(step):
      xs = x.copy()
      ps = [{n: v.copy() for n, v in lp.items()} for lp in params]
      target = xs if where is None else ps[where[1]][where[0]]
      target[index] += step
      return np_loss(xs, ps)

    numeric = (shifted(h) - shifted(-h)) / (2 * h)
    scale = np.max(np.abs(got[name]))
    assert scale > 0, name
    assert abs(float(got[name][index]) - numeric) <= 1e-4 * scale, (name, got[name][index], numeric)


def test_the_comparison_catches_wrong_results():
  rng = np.random.default_rng(0)
  want = {'loss': np.float32(2.0), 'd/dx': rng.normal(size=(2, 3, 2, 4)).astype(np.float32)}
  close = {'loss': want['loss'] * np.float32(1 + 1e-7), 'd/dx': want['d/dx'] * np.float32(1 + 1e-7)}
  off = dict(want, **{'d/dx': want['d/dx'].copy()})
  off['d/dx'][1, 2, 0, 3] += 1e-3 * np.max(np.abs(want['d/dx']))
  nan = dict(want, loss=np.float32('nan'))
  swapped = dict(want, **{'d/dx': np.swapaxes(want['d/dx'], -1, -2)})
  results = {'unfused': want, 'close': close, 'off': off, 'nan': nan, 'swapped': swapped}
  errors = update_layout.mismatches(results, 'unfused', 1e-5)
  assert [e.split(' ')[:2] for e in errors] == [['off', 'd/dx:'], ['nan', 'loss:'],
                                                ['swapped', 'd/dx:']]


@pytest.mark.parametrize('argv, setting', [
    (['--layouts', 'fused,stacked'], '--layouts stacked'),
    (['--ks', '2,0'], '--ks'),
    (['--shape', '8,512'], '--shape'),
    (['--repeats', '0'], '--repeats'),
])
def test_bad_arguments_stop_before_anything_is_compiled(argv, setting, capsys):
  with pytest.raises(SystemExit) as e:
    update_layout.main(argv)
  assert e.value.code == 2
  assert setting in capsys.readouterr().err
