"""cxr_jax.ops: every weight-gradient formulation equals jax.grad of the plain convolution, the
layers are drop-in nn.Conv, the per-shape choice is cached, and training with the fast path gives
the same parameters as flax's Conv."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cxr_jax import ops
from cxr_jax.ops import amx, fwd, tuning, wgrad

_DN = ("NHWC", "HWIO", "NHWC")

# (x shape, kernel shape, padding): odd and even sizes, 1x1/3x3/5x5, non-square, SAME and VALID.
CASES = [
    ((2, 7, 9, 3), (3, 3, 3, 5), "SAME"),
    ((1, 8, 5, 4), (3, 3, 4, 2), "SAME"),
    ((3, 6, 6, 2), (1, 1, 2, 7), "SAME"),
    ((2, 11, 7, 3), (5, 5, 3, 4), "SAME"),
    ((2, 9, 8, 3), (3, 3, 3, 4), "VALID"),
    ((1, 5, 13, 6), (3, 1, 6, 3), "SAME"),
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  """Each test measures into its own cache, so a choice never leaks between tests."""
  monkeypatch.setenv("CXR_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(tuning, "_MEMO", {})


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _reference_grads(x, w, padding, dy):
  _, vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN),
                   x, w)
  return vjp(dy)


@pytest.mark.parametrize("x_shape,k_shape,padding", CASES)
@pytest.mark.parametrize("name", sorted(wgrad.FORMULATIONS))
def test_formulation_matches_plain_conv_gradient(name, x_shape, k_shape, padding):
  x, w = _random(x_shape, 0), _random(k_shape, 1)
  y = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)
  dy = _random(y.shape, 2)
  dx_ref, dw_ref = _reference_grads(x, w, padding, dy)
  pads = ops.explicit_padding(x_shape, k_shape, padding)

  def f(x, w):
    return jnp.vdot(ops.conv2d(x, w, pads, name), dy)

  out = ops.conv2d(x, w, pads, name)
  dx, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)
  np.testing.assert_array_equal(out, y)  # forward is lax's own
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(dw_ref).max()))


@pytest.mark.parametrize("x_shape,k_shape,padding", CASES)
@pytest.mark.parametrize("name", sorted(fwd.FORMULATIONS))
def test_forward_formulation_matches_plain_conv_and_its_gradients(name, x_shape, k_shape, padding):
  x, w = _random(x_shape, 0), _random(k_shape, 1)
  y = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)
  dy = _random(y.shape, 2)
  dx_ref, dw_ref = _reference_grads(x, w, padding, dy)
  pads = ops.explicit_padding(x_shape, k_shape, padding)
  out = ops.conv2d(x, w, pads, "rule", name)
  dx, dw = jax.jit(jax.grad(lambda x, w: jnp.vdot(ops.conv2d(x, w, pads, "rule", name), dy),
                            argnums=(0, 1)))(x, w)
  if name not in tuning.applicable("fwd", k_shape, x.dtype):
    np.testing.assert_array_equal(out, y)  # e.g. Winograd on a 1x1 kernel: XLA's own conv
  # Winograd's rounding error grows with the output's scale, not with each element.
  np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5 * float(jnp.abs(y).max()))
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(dx_ref).max()))
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(dw_ref).max()))


@pytest.mark.parametrize("name,tol", [("wino2", 2e-6), ("wino4", 4e-5), ("wino4_c2", 4e-5)])
def test_winograd_error_on_wide_layers(name, tol):
  """VGG-like scales (256 channels in, He-initialised kernel, ReLU-like input): the error of the
  Winograd forward and input gradient stays a small fraction of the output's scale, where float32
  direct convolution is ~1e-7; and tiles that do not divide the map are cropped correctly."""
  x = jnp.maximum(_random((2, 13, 11, 256), 8), 0)
  w = _random((3, 3, 256, 64), 9) * np.sqrt(2 / (9 * 256))
  pads = ((1, 1), (1, 1))
  y = fwd.xla(x, w, pads)
  out = fwd.FORMULATIONS[name](x, w, pads)
  assert out.shape == y.shape
  err = float(jnp.abs(out - y).max() / jnp.abs(y).max())
  assert 0 < err < tol
  dy = _random(y.shape, 10)
  dx = fwd.FORMULATIONS[name](dy, fwd.transposed_kernel(w), fwd.transposed_padding(w.shape, pads))
  dx_ref, dw_ref = _reference_grads(x, w, pads, dy)
  assert float(jnp.abs(dx - dx_ref).max() / jnp.abs(dx_ref).max()) < tol
  dw = wgrad.FORMULATIONS[name](x, dy, w.shape, pads, jnp.float32)
  assert float(jnp.abs(dw - dw_ref).max() / jnp.abs(dw_ref).max()) < tol


def test_winograd_only_where_it_applies():
  assert tuning.applicable("fwd", (3, 3, 8, 8), jnp.float32) == (
      "xla", "rows", "wino2", "wino2_c2", "wino4", "wino4_c2")
  assert "wino4_c2" not in tuning.applicable("wgrad", (1, 1, 8, 8), jnp.float32)
  assert tuning.applicable("fwd", (1, 1, 8, 8), jnp.float32) == ("xla", "rows")
  # bfloat16 data: float32 transforms, bf16 products for F(2x2) only (tests/test_bf16.py).
  assert tuning.applicable("fwd", (3, 3, 8, 8), jnp.bfloat16) == tuning.applicable(
      "fwd", (3, 3, 8, 8), jnp.float32)
  assert tuning.applicable("fwd", (3, 3, 8, 8), jnp.float16) == ("xla", "rows")


@pytest.mark.parametrize("impl", ["fast_mm_rule", "fwd_rows"])
def test_bfloat16_compute_stays_close_to_float32(impl):
  """bfloat16 compute (float32 master params): gradients within bfloat16 rounding of float32."""
  x = _random((2, 8, 8, 256), 7)
  kw = dict(features=8, kernel_size=(3, 3), padding="SAME")
  params = nn.Conv(**kw).init(jax.random.PRNGKey(0), x)
  loss = lambda p, m: jnp.sum(m.apply(p, x).astype(jnp.float32) ** 2)
  g_ref = jax.grad(loss)(params, nn.Conv(**kw))
  g = jax.jit(jax.grad(loss), static_argnums=1)(params, ops.conv_module(impl)(**kw, dtype=jnp.bfloat16))
  assert g["params"]["kernel"].dtype == jnp.float32
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02 * float(jnp.abs(b).max())),
               g, g_ref)


@pytest.mark.parametrize("impl", sorted(ops.CONV_IMPLS))
def test_conv_module_is_drop_in_nn_conv(impl):
  x = _random((2, 9, 7, 3), 3)
  kw = dict(features=4, kernel_size=(3, 3), padding="SAME", name="conv1")
  ref, mod = nn.Conv(**kw), ops.conv_module(impl)(**kw)
  params = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, mod.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, params)
  if impl in ("xla", "fast", "fast_rule") or impl.startswith("wgrad_"):
    np.testing.assert_array_equal(mod.apply(params, x), ref.apply(params, x))  # same lax call
  np.testing.assert_allclose(mod.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  loss = lambda p, m: jnp.sum(jnp.tanh(m.apply(p, x)) ** 2)
  g_ref, g = jax.grad(loss)(params, ref), jax.grad(loss)(params, mod)
  # A Winograd forward (~1e-5 of the output's scale) moves tanh's slope, hence the gradient, by as much.
  atol = 5e-5 * max(float(jnp.abs(b).max()) for b in jax.tree.leaves(g_ref)) if "wino" in impl else 1e-5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol), g, g_ref)


@pytest.mark.parametrize("impl", sorted(set(ops.CONV_IMPLS) - {"xla"}))
def test_fused_relu_is_the_conv_then_nn_relu(impl):
  """`relu=True` (VGG's conv + ReLU in one call, `conv.conv2d`'s epilogue) gives nn.relu of the
  layer's output and the same gradients, bit for bit in float32 (the same operations; the ReLU's
  gradient is 0 where the output is 0, as nn.relu's), for covered and uncovered (strided)
  configurations alike; flax's own Conv has no such field."""
  cls = ops.conv_module(impl)
  assert ops.fuses_relu(cls) and not ops.fuses_relu(nn.Conv)
  x = _random((2, 9, 7, 5), 4)
  for kw in (dict(features=6, kernel_size=(3, 3), padding="SAME"),
             dict(features=6, kernel_size=(3, 3), strides=2, padding="SAME")):  # nn.Conv's code
    fused, plain = cls(relu=True, **kw), cls(**kw)
    params = plain.init(jax.random.PRNGKey(0), x)
    loss_fused = lambda p, x_, m=fused: jnp.sum(jnp.tanh(m.apply(p, x_)) ** 2)
    loss_plain = lambda p, x_, m=plain: jnp.sum(jnp.tanh(nn.relu(m.apply(p, x_))) ** 2)
    y = fused.apply(params, x)
    assert float(jnp.mean(y == 0)) > 0.2  # the ReLU cuts a good share: its gradient is exercised
    np.testing.assert_array_equal(y, nn.relu(plain.apply(params, x)))
    jax.tree.map(np.testing.assert_array_equal, jax.grad(loss_fused, (0, 1))(params, x),
                 jax.grad(loss_plain, (0, 1))(params, x))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 9, 7, 4), (1, 5, 5, 2)])
def test_fast_max_pool_is_bit_identical_to_flax_with_ties(shape):
  """Small integers make most windows tie: the gradient must go to the first maximum in row-major
  order, as XLA's select-and-scatter does; odd sizes drop the last row/column (VALID)."""
  from cxr_jax.ops import pool

  x = jnp.asarray(np.random.default_rng(0).integers(-2, 3, shape), jnp.float32)
  y_ref, vjp_ref = jax.vjp(lambda x: nn.max_pool(x, (2, 2), (2, 2), "VALID"), x)
  y, vjp = jax.vjp(lambda x: pool.pool_2x2("fast", x), x)
  dy = _random(y_ref.shape, 1)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(dy)[0], vjp_ref(dy)[0])
  with pytest.raises(ValueError, match="pool_impl='nope'"):
    pool.pool_2x2("nope", x)


def test_uncovered_convolutions_fall_back_to_lax():
  """Strided, dilated and bfloat16-kernel-with-float32-input convs still compute nn.Conv's result."""
  x = _random((2, 10, 10, 3), 4)
  for kw in (dict(strides=2), dict(kernel_dilation=2), dict(padding="CIRCULAR")):
    ref = nn.Conv(4, (3, 3), **kw)
    mod = ops.conv_module("fast_rule")(4, (3, 3), **kw)
    p = ref.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(mod.apply(p, x), ref.apply(p, x))
    g = jax.grad(lambda p, m: jnp.sum(m.apply(p, x) ** 2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), g(p, mod), g(p, ref))


def test_conv_module_names():
  assert ops.conv_module("xla") is nn.Conv
  assert ops.conv_module("fast") is ops.FastConv
  with pytest.raises(ValueError, match="conv_impl='nope'"):
    ops.conv_module("nope")
  x, w, pads = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), ((1, 1), (1, 1))
  with pytest.raises(ValueError, match="unknown wgrad formulation 'nope'"):
    ops.conv2d(x, w, pads, "nope")
  with pytest.raises(ValueError, match="unknown fwd formulation 'nope'"):
    ops.conv2d(x, w, pads, "rule", "nope")


def test_choice_is_measured_once_and_cached():
  x, w = _random((2, 6, 6, 3), 5), _random((3, 3, 3, 4), 6)
  pads = ((1, 1), (1, 1))
  jax.grad(lambda w: jnp.sum(ops.conv2d(x, w, pads, "auto") ** 2))(w)
  table = json.loads(tuning.cache_path().read_text())
  (entry,) = table.values()
  assert entry["choice"] in wgrad.FORMULATIONS
  # Every formulation but the native library's bfloat16-only ones (float32 data here).
  assert set(entry["seconds"]) == set(wgrad.FORMULATIONS) - set(amx.NATIVE)
  assert entry["choice"] == min(entry["seconds"], key=entry["seconds"].get)
  # A hand-edited choice is honoured by a fresh process (memo cleared): nothing is re-measured.
  key = next(iter(table))
  table[key]["choice"] = "shift_t"
  tuning.cache_path().write_text(json.dumps(table))
  tuning._MEMO.clear()
  assert tuning.choose(x.shape, w.shape, pads, jnp.float32) == "shift_t"
  # The forward choice has its own entry and candidates.
  assert tuning.choose(x.shape, w.shape, pads, jnp.bfloat16, op="fwd") in fwd.FORMULATIONS
  assert len(json.loads(tuning.cache_path().read_text())) == 2


def test_entry_measured_before_a_new_formulation_is_measured_again():
  x, w = _random((2, 6, 6, 3), 5), _random((3, 3, 3, 4), 6)
  pads = ((1, 1), (1, 1))
  k = tuning.key("wgrad", x.shape, w.shape, pads, jnp.float32)
  old = {"choice": "xla", "seconds": {"xla": 1.0, "im2col": 2.0}}   # no band* yet
  kept = {"choice": "shift_t"}                                         # hand-written, no seconds
  other = tuning.key("wgrad", (2, 5, 5, 3), w.shape, pads, jnp.float32)
  tuning.cache_path().parent.mkdir(parents=True)
  tuning.cache_path().write_text(json.dumps({k: old, other: kept}))
  tuning.choose(x.shape, w.shape, pads, jnp.float32)
  table = json.loads(tuning.cache_path().read_text())
  assert set(table[k]["seconds"]) == set(wgrad.FORMULATIONS) - set(amx.NATIVE)
  assert tuning.choose((2, 5, 5, 3), w.shape, pads, jnp.float32) == "shift_t"


def test_rule_when_measuring_is_off(monkeypatch):
  monkeypatch.setenv("CXR_JAX_WGRAD_TUNE", "0")
  assert tuning.choose((2, 6, 6, 3), (3, 3, 3, 4), ((1, 1), (1, 1)), jnp.float32) == wgrad.rule(
      (2, 6, 6, 3), (3, 3, 3, 4), jnp.float32)
  assert tuning.choose((2, 28, 28, 256), (3, 3, 256, 8), ((1, 1), (1, 1)), jnp.float32) == "wino4"
  assert tuning.choose((2, 28, 28, 256), (3, 3, 256, 8), ((1, 1), (1, 1)), jnp.float32,
                       op="fwd") == "wino4"
  # bf16 products only where the CPU has bf16 units, else XLA's conv (test_bf16.py).
  assert tuning.choose((2, 6, 6, 256), (3, 3, 256, 4), ((1, 1), (1, 1)), jnp.bfloat16,
                       op="fwd") == ("rows" if ops.bf16_units() else "xla")
  assert not tuning.cache_path().exists()


def test_corrupt_cache_is_a_clear_error():
  tuning.cache_path().parent.mkdir(parents=True)
  tuning.cache_path().write_text("{not json")
  with pytest.raises(RuntimeError, match="wgrad_choices.json.*delete it"):
    tuning.choose((1, 4, 4, 1), (3, 3, 1, 1), ((1, 1), (1, 1)), jnp.float32)


@functools.cache
def _trainer(conv_impl: str, trainable_blocks: int, steps: int = 2):
  """The trainer's own pmapped step on a 48 px VGG16 (3x3 maps in block 5: XLA's CPU conv is slow
  on 2x2), its initial state and `steps` batches; built once per variant, so runs share compiles."""
  from configs import default
  from cxr_jax import models
  from cxr_jax.train import optim, step

  config = default.get_config()
  config.model.conv_impl = conv_impl
  config.model.trainable_blocks = trainable_blocks
  # SGD: an update is -lr * gradient, so update differences are gradient differences (RMSprop's
  # g/sqrt(v) turns rounding in a ~0 gradient into a full step).
  config.train.optimizer = "sgd"
  config.train.learning_rate = 1e-2
  model = models.create_model(config.model)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((steps, 1, 4, 48, 48, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (steps, 1, 4)).astype(np.int32)
  batches = [{"image": images[i], "label": labels[i], "weight": np.ones((1, 4), np.float32)}
             for i in range(steps)]
  # Every conv_impl has nn.Conv's parameters (test_conv_module_is_drop_in_nn_conv): one jitted init.
  params = jax.jit(models.create_model(default.get_config().model).init)(
      jax.random.PRNGKey(0), jnp.asarray(images[0, 0]))["params"]
  tx = optim.make_optimizer(params, models.fine_tuning_plan(config.model), config.train)
  state = step.TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params),
                          plateau_state=optim.make_plateau(config.train).init({}),
                          rng=jax.random.PRNGKey(1))
  state = jax.device_get(jax.tree.map(lambda a: jnp.asarray(a)[None], state))  # one device's replica
  p_train, _ = step.make_pmapped_steps(model, tx, config.model.num_classes)
  return p_train, state, batches


def _steps(conv_impl: str, trainable_blocks: int, starts=None):
  """One step per batch, from `starts[i]` when given, else chained from the initial state.
  Returns the (host) states before and after each step."""
  p_train, state, batches = _trainer(conv_impl, trainable_blocks)
  before, after = [], []
  for i, batch in enumerate(batches):
    state = starts[i] if starts else state
    before.append(jax.device_get(state))  # host copies: the step donates its input state
    state, _ = p_train(state, batch)
    after.append(jax.device_get(state))
  return before, after


def _perturbed(state, rel: float, seed: int):
  """The state with every parameter multiplied by (1 + rel * N(0, 1)), rounded to float32."""
  rng = np.random.default_rng(seed)
  return state.replace(params=jax.tree.map(
      lambda a: (a * (1 + rel * rng.standard_normal(a.shape))).astype(a.dtype), state.params))


def _flat(state) -> dict:
  """{parameter path: device 0's replica in float64} (differences of float32 values are exact)."""
  return {jax.tree_util.keystr(p): np.asarray(a[0], np.float64)
          for p, a in jax.tree_util.tree_flatten_with_path(state.params)[0]}


def _updates(before, after):
  """Per step, {parameter path: update}."""
  updates = []
  for b, a in zip(before, after, strict=True):
    start = _flat(b)
    updates.append({k: v - start[k] for k, v in _flat(a).items()})
  return updates


# Forward-changing formulations and their error relative to each layer's output scale (the tests
# above: one matrix product rounds like float32, Winograd ~1e-5).
FORWARD_PRECISION = {"fwd_rows": 1e-6, "fwd_wino4": 1e-5}


@functools.cache
def _reference(trainable_blocks: int, noise: float | None):
  """flax Conv's states and updates; with `noise`, also its updates from two copies of each state
  with every parameter perturbed by that relative amount (seeds 0 and 1)."""
  before, after = _steps("xla", trainable_blocks)
  noisy = []
  for seed in (0, 1) if noise else ():
    noisy_before = [_perturbed(s, noise, seed=10 * seed + i) for i, s in enumerate(before)]
    noisy.append(_updates(noisy_before, _steps("xla", trainable_blocks, starts=noisy_before)[1]))
  return before, after, _updates(before, after), noisy


@pytest.mark.slow
@pytest.mark.parametrize("conv_impl,trainable_blocks",
                         [("fast_rule", 5), ("wgrad_band4", 5), ("fwd_rows", 2), ("fwd_wino4", 5)])
def test_training_with_fast_conv_gives_the_same_updates(conv_impl, trainable_blocks):
  """Each step of the fast path, started from the state the reference (flax Conv) run was in,
  makes the reference's update. Steps are compared one at a time: chained, step 1's rounding
  moves step 2's inputs across ReLU kinks, a difference that depends on the CPU's rounding (it
  failed on an AVX2-only EPYC) rather than on the implementation.

  Where the forward is XLA's own (weight-gradient formulations), activations and ReLU masks are
  bitwise the reference's and the updates differ by summation order only: held to the per-layer
  bound above. Where the forward rounds differently, a unit within rounding of its kink may flip
  (measured here: one unit moves a whole step's update by 3e-3): held to what the reference's own
  update moves under parameter noise 10x the formulation's error, the larger of two draws, x2."""
  noise = 10 * FORWARD_PRECISION[conv_impl] if conv_impl in FORWARD_PRECISION else None
  before, after, ref, noisy = _reference(trainable_blocks, noise)
  _, fast_after = _steps(conv_impl, trainable_blocks, starts=before)
  fast = _updates(before, fast_after)
  assert np.any(ref[0]["['block5']['conv3']['kernel']"]) and np.any(ref[0]["['head']['logits']['kernel']"])
  assert np.any(ref[0]["['block1']['conv1']['kernel']"]) == (trainable_blocks == 5)
  for i, (r, f) in enumerate(zip(ref, fast, strict=True)):
    new_params = _flat(after[i])
    for path, du_ref in r.items():
      where = f"step {i + 1}, {path}"
      if not np.any(du_ref):  # frozen: must not move at all
        np.testing.assert_array_equal(f[path], 0, err_msg=f"{where}: frozen, moved")
      elif noise is None:
        # 1e-4 of the update's scale (test_formulation_matches_plain_conv_gradient's bound; an
        # SGD update is -lr * gradient) plus one float32 spacing of the new parameter, since both
        # sides round p - lr * g to float32.
        bound = 1e-4 * np.abs(du_ref).max() + np.spacing(np.abs(new_params[path]).astype(np.float32))
        worst = np.unravel_index(np.argmax(np.abs(f[path] - du_ref) - bound), du_ref.shape)
        assert np.all(np.abs(f[path] - du_ref) <= bound), (
            f"{where}{list(worst)}: update {f[path][worst]:.4e}, reference {du_ref[worst]:.4e}, "
            f"bound {bound[worst]:.1e}")
      else:
        err, scale = np.linalg.norm(f[path] - du_ref), np.linalg.norm(du_ref)
        allowed = 2 * max(np.linalg.norm(n[i][path] - du_ref) for n in noisy)
        assert err <= allowed, (f"{where}: relative update difference {err / scale:.2e}, reference's "
                                f"own under {noise:.0e} parameter noise up to {allowed / 2 / scale:.2e}")


def test_auto_is_the_cpu_rules_on_cpu_and_xla_elsewhere(monkeypatch):
  """The default conv_impl: the fast fixed rules on CPU, nothing measured on first use; XLA's own
  convolution on GPU/TPU, where these CPU formulations would only slow it down."""
  assert ops.resolve("auto") == "fast_mm_rule" and ops.resolve("xla") == "xla"
  assert ops.conv_module("auto") is ops.conv_module("fast_mm_rule")
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert ops.resolve("auto") == "xla" and ops.conv_module("auto") is nn.Conv
