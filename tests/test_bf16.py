"""bfloat16 compute: the convolution formulations on bfloat16 data against float32's
lax.conv_general_dilated, and the real VGG16's logits and probabilities against float32's, within
error bounds derived from bfloat16's precision (not fitted to what was observed).

bfloat16 keeps 8 significant bits (7 stored + the implicit one): round to nearest has unit roundoff
U_BF16 = 2^-8; float32's is 2^-24. A sum of K float32 products carries at most K * 2^-24 of the
sum of their absolute values (Higham's gamma_K, first order).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import checkpoint, models, ops, predict
from cxr_jax.ops import fwd, wgrad, winograd

U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24
PADS = ((1, 1), (1, 1))


def _random(shape, seed, relu=False):
  """bfloat16-exact float32 data (the reference then sees the very values bfloat16 computes on)."""
  a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return jnp.asarray(np.maximum(a, 0) if relu else a, jnp.bfloat16).astype(jnp.float32)


def _unit(dtype) -> float:
  return U_BF16 if jnp.dtype(dtype) == jnp.bfloat16 else U_F32


def _ref(x, w, dy):
  """float32 forward, input gradient and weight gradient of lax.conv_general_dilated."""
  y, vjp = jax.vjp(lambda x_, w_: fwd.xla(x_, w_, PADS), x, w)
  return (y, *vjp(dy))


def _abs_winograd(monkeypatch, m: int):
  """The same Winograd algorithm with |B|, |G|, |A|: run on |x|, |w| (in float32) it gives, per
  output, E = |A^T| (sum_c |B^T d B| * |G g G^T|) |A|, the sum of the absolute values of every
  product term the algorithm adds. Rounding the products' operands to unit u moves each term by at
  most 2u of its size, so the products' error is at most 2u E (first order)."""
  monkeypatch.setitem(winograd.MATRICES, m, tuple(
      tuple(tuple(abs(c) for c in row) for row in mat) for mat in winograd.MATRICES[m]))


@pytest.mark.parametrize("name", ["wino2", "wino2_c2", "wino4", "wino4_c2"])
def test_winograd_on_bfloat16_within_its_derived_bound(name, monkeypatch):
  """Forward, input gradient and weight gradient of the Winograd forms on bfloat16 data: error
  <= u_out |ref| + (2 u_products + K 2^-24) E, with u_products bfloat16's for F(2x2) and float32's
  for F(4x4) (`winograd.product_dtype`), K the products' length (plus 32 for the transforms'
  float32 sums) and E the absolute-value run of the same algorithm (`_abs_winograd`)."""
  m = winograd.VARIANTS[name][0]
  x = _random((2, 13, 11, 64), 1, relu=True)
  w = _random((3, 3, 64, 32), 2) * 0.125  # a power of two: still bfloat16-exact
  y, dx_ref, dw_ref = _ref(x, w, dy := _random((2, 13, 11, 32), 3))
  bf = lambda a: a.astype(jnp.bfloat16)
  tw, tpads = fwd.transposed_kernel(w), fwd.transposed_padding(w.shape, PADS)
  got = {"y": fwd.FORMULATIONS[name](bf(x), bf(w), PADS),
         "dx": fwd.FORMULATIONS[name](bf(dy), bf(tw), tpads),
         "dw": wgrad.FORMULATIONS[name](bf(x), bf(dy), w.shape, PADS, jnp.float32)}
  assert got["y"].dtype == got["dx"].dtype == jnp.bfloat16 and got["dw"].dtype == jnp.float32
  u_p = _unit(winograd.product_dtype(jnp.bfloat16, m))
  _abs_winograd(monkeypatch, m)
  tiles = 2 * -(-13 // m) * -(-11 // m)
  checks = {  # name: (reference, E, K, output rounding)
      "y": (y, fwd.FORMULATIONS[name](abs(x), abs(w), PADS), 64, U_BF16),
      "dx": (dx_ref, fwd.FORMULATIONS[name](abs(dy), abs(tw), tpads), 32, U_BF16),
      "dw": (dw_ref, wgrad.FORMULATIONS[name](abs(x), abs(dy), w.shape, PADS, jnp.float32), tiles,
             U_F32)}
  for key, (ref, e, k, u_out) in checks.items():
    err = jnp.abs(got[key].astype(jnp.float32) - ref)
    bound = u_out * jnp.abs(ref) + (2 * u_p + (k + 32) * U_F32) * e
    assert float(jnp.max(err - bound)) <= 0, (key, float(jnp.max(err / (bound + 1e-30))))
    # bfloat16 products leave a visible error; float32 products only the output's rounding.
    assert float(err.max()) > 0


@pytest.mark.parametrize("name", ["rows"])
def test_matrix_product_forward_on_bfloat16_within_its_derived_bound(name):
  """A single bfloat16 product (float32 accumulation) on bfloat16 data: the output's rounding
  u |ref| plus K 2^-24 of the absolute-value convolution S = |x| * |w| (K = 9 C)."""
  x, w = _random((2, 9, 10, 32), 4, relu=True), _random((3, 3, 32, 16), 5)
  y = fwd.xla(x, w, PADS)
  s = fwd.xla(abs(x), abs(w), PADS)
  out = fwd.FORMULATIONS[name](x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), PADS)
  err = jnp.abs(out.astype(jnp.float32) - y)
  assert float(jnp.max(err - (U_BF16 * jnp.abs(y) + 9 * 32 * U_F32 * s))) <= 0


@pytest.mark.parametrize("name", ["im2col", "im2col_t", "shift_t", "band4"])
def test_matrix_product_weight_gradients_on_bfloat16_within_their_derived_bound(name):
  x, dy = _random((2, 9, 10, 32), 6, relu=True), _random((2, 9, 10, 16), 7)
  _, vjp = jax.vjp(lambda w_: fwd.xla(x, w_, PADS), jnp.zeros((3, 3, 32, 16)))
  (dw_ref,) = vjp(dy)
  _, vjp_abs = jax.vjp(lambda w_: fwd.xla(abs(x), w_, PADS), jnp.zeros((3, 3, 32, 16)))
  (s,) = vjp_abs(abs(dy))
  dw = wgrad.FORMULATIONS[name](x.astype(jnp.bfloat16), dy.astype(jnp.bfloat16), (3, 3, 32, 16),
                                PADS, jnp.float32)
  assert float(jnp.max(jnp.abs(dw - dw_ref) - 2 * 9 * 10 * U_F32 * s)) <= 0


def test_without_bf16_units_no_bfloat16_products(monkeypatch, caplog):
  """An AVX2-only CPU emulates bf16 products (slower than float32): there bfloat16 data keep
  float32 products in Winograd, the rules never pick the bf16 "rows" product, and building a
  bfloat16 model says so in the log."""
  from configs import default
  from cxr_jax.ops import amx

  monkeypatch.setattr(amx, "_load", lambda: "no amx_bf16 (as on such a CPU)")
  # Neither native formulation (on a CPU with avx512_bf16 they would come first: see below)
  monkeypatch.setattr(amx, "_library", lambda: "not built (the rules without it)")
  monkeypatch.setattr("cxr_jax.machine.native_bf16", lambda: False)
  assert not ops.bf16_units()
  assert winograd.product_dtype(jnp.bfloat16, 2) == jnp.float32
  assert fwd.rule((2, 6, 6, 256), (3, 3, 256, 4), jnp.bfloat16) == "xla"
  large = ((8, 112, 112, 128), (3, 3, 128, 128), jnp.bfloat16)
  assert (fwd.rule(*large), wgrad.rule(*large)) == ("xla", "wino4_c2")  # float32's choice
  assert (fwd.rule(*large[:2], jnp.float32), wgrad.rule(*large[:2], jnp.float32)) == ("xla", "wino4_c2")
  with caplog.at_level("WARNING"):
    models.create_model(default.get_config().model, dtype=jnp.bfloat16)
  assert "without bf16 units" in caplog.text
  monkeypatch.setattr("cxr_jax.machine.native_bf16", lambda: True)
  assert winograd.product_dtype(jnp.bfloat16, 2) == jnp.bfloat16
  assert winograd.product_dtype(jnp.bfloat16, 4) == winograd.product_dtype(jnp.float32, 2) == jnp.float32
  assert fwd.rule((2, 6, 6, 256), (3, 3, 256, 4), jnp.bfloat16) == "rows"
  assert (fwd.rule(*large), wgrad.rule((8, 224, 224, 64), (3, 3, 64, 64), jnp.bfloat16)) == (
      "wino2_c2", "wino4_c2")


def test_bf16_rules_take_bf16_products_where_float32_takes_winograd_f4(monkeypatch):
  """Where the CPU has bf16 units, bfloat16 layers at 28-56 px take F(2x2)'s bf16 products (AMX
  in one piece; AVX512-BF16 in chunks of 2 images: 1.3-1.7x F(4x4) there) and, on AMX, the
  3-channel first conv the transposed im2col; float32 keeps its rules, so no float32 figure moves
  with this. (Where the native convolutions are built they come first:
  `test_amx_rules_take_the_tiles_where_they_cover`,
  `test_vector_rules_take_native_winograd_then_the_vector_units`.)"""
  from cxr_jax.ops import amx

  monkeypatch.setattr(amx, "_load", lambda: "not built (the rules without it)")
  monkeypatch.setattr(amx, "_library", lambda: "not built (the rules without it)")
  monkeypatch.setattr("cxr_jax.machine.native_bf16", lambda: True)
  mid = ((8, 28, 28, 512), (3, 3, 512, 512))
  first = ((8, 224, 224, 3), (3, 3, 3, 64))
  for level, bf16_choice in (("avx512_bf16", ("wino2_c2", "band4")), ("amx", ("wino2", "im2col_t"))):
    monkeypatch.setattr("cxr_jax.machine.isa_level", lambda level=level: level)
    assert winograd.amx_units() == (level == "amx")
    assert (fwd.rule(*mid, jnp.bfloat16), wgrad.rule(*first, jnp.bfloat16)) == bf16_choice
    assert (fwd.rule(*mid, jnp.float32), wgrad.rule(*first, jnp.float32)) == ("wino4", "band4")


def test_vector_rules_take_native_winograd_then_the_vector_units(monkeypatch):
  """On a CPU with avx512_bf16 and no AMX, where the native library is built, the rules take the
  native F(2x2) (`amx.winograd_rule`) for the forward pass, input and weight gradients of every
  bfloat16 3x3 layer it covers with 128+ output tiles; the vector units' direct sums
  (`amx.vector_rule`) for the other layers they cover, except the 3x3 ones where XLA's Winograd
  bf16 forms measured faster (forward 8-56 px below 128 tiles, weight gradient 8-32 px; VGG16 at
  224 and 128 px, benchmarks/results/conv_layers_{224,128}_bf16_epyc_avx512bf16*.md). float32, a
  layer they do not cover and a CPU where they were not measured (AMX whose tiles are refused)
  keep their rules."""
  from cxr_jax.ops import amx

  monkeypatch.setattr("cxr_jax.machine.native_bf16", lambda: True)
  monkeypatch.setattr("cxr_jax.machine.isa_level", lambda: "avx512_bf16")
  monkeypatch.setattr(amx, "_library", lambda: None)
  monkeypatch.setattr(amx, "_load", lambda: "no amx_bf16")
  v, native = amx.VECTOR_NAME, amx.WINOGRAD_NAME
  layers = {  # (x, kernel): (forward, weight gradient)
      ((8, 224, 224, 3), (3, 3, 3, 64)): (v, v),  # 3 channels: not the native Winograd's
      ((8, 224, 224, 64), (3, 3, 64, 64)): (native, native),
      ((1, 112, 112, 128), (3, 3, 128, 128)): (native, native),
      ((8, 64, 64, 128), (3, 3, 128, 128)): (native, native),
      ((8, 56, 56, 256), (3, 3, 256, 256)): (native, native),
      ((8, 28, 28, 512), (3, 3, 512, 512)): (native, native),
      ((8, 14, 14, 512), (3, 3, 512, 512)): (native, native),  # 392 tiles
      ((1, 28, 28, 512), (3, 3, 512, 512)): (native, native),  # 196
      ((8, 8, 8, 512), (3, 3, 512, 512)): (native, native),  # 128
      ((1, 16, 16, 512), (3, 3, 512, 512)): ("wino2", "wino4"),  # 64
      ((1, 14, 14, 512), (3, 3, 512, 512)): ("wino2", "wino2"),  # 49
      ((4, 8, 8, 512), (3, 3, 512, 512)): ("wino2", "wino2"),  # 64; below float32's Winograd range
      ((8, 4, 4, 512), (3, 3, 512, 512)): (v, v),
      ((8, 28, 28, 64), (3, 3, 64, 128)): (native, native),  # too few channels for XLA's Winograd
      ((8, 28, 28, 64), (3, 3, 64, 48)): ("xla", "im2col_t"),  # 48 outputs: neither native form
      ((8, 28, 28, 128), (1, 1, 128, 64)): (v, v),  # 1x1
  }
  for (x_shape, k_shape), choice in layers.items():
    assert (fwd.rule(x_shape, k_shape, jnp.bfloat16), wgrad.rule(x_shape, k_shape, jnp.bfloat16)) == choice
    assert not {v, native} & {fwd.rule(x_shape, k_shape, jnp.float32), wgrad.rule(x_shape, k_shape, jnp.float32)}
  wide = ((8, 56, 56, 16), (3, 3, 16, 64))  # 144 im2col columns: not covered
  assert (fwd.rule(*wide, jnp.bfloat16), wgrad.rule(*wide, jnp.bfloat16)) == ("xla", "band4")
  monkeypatch.setattr("cxr_jax.machine.isa_level", lambda: "amx")
  assert not {v, native} & {fwd.rule((8, 224, 224, 64), (3, 3, 64, 64), jnp.bfloat16),
                            wgrad.rule((8, 224, 224, 64), (3, 3, 64, 64), jnp.bfloat16)}


# ------------------------------------------------------------------ the real VGG16 on real images

SIZE = 224
# Weight layers of VGG16 + the quick-start head: 13 convolutions, dense1 and logits.
LAYERS = 15


def logit_tolerance() -> float:
  """Norm-wise relative error of bfloat16 logits, first order, layers of gain <= 1: each layer
  rounds its weights and its output to bfloat16 (2u), the image is rounded once (u), and float32
  accumulation over K = 25088 (dense1's inputs, the longest sum) adds K 2^-24 per layer; bfloat16
  Winograd F(2x2) layers add 2u E/|y| more, bounded by the same 2u times its amplification, taken
  here as 2 (|B^T| and |G|'s row sums are 2 and 1.5, |A|'s 2: E <= ~2x the direct form's
  absolute sum on the ReLU inputs of VGG's maps). Summed over the layers:
  u (1 + LAYERS (2 + 2 * 2)) + LAYERS * 25088 * 2^-24 ~= 0.38."""
  return U_BF16 * (1 + LAYERS * (2 + 2 * 2)) + LAYERS * 25088 * U_F32


@pytest.fixture(scope="module")
def vgg16_run(tmp_path_factory):
  """A run of the real ImageNet VGG16 (stored torchvision weights, see test_weights_real) with a
  seeded He-normal quick-start head, saved without training, at 224 px."""
  from configs import quickstart
  from cxr_jax.weights import load_pretrained

  pretrained = load_pretrained("vgg16")
  config = quickstart.get_config()
  config.data.image_size = SIZE
  model = models.create_model(config.model)
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1, SIZE, SIZE, 3)))["params"])(
      jax.random.key(0))
  params = dict(params, **{b: pretrained.params[b] for b in pretrained.params})
  path = tmp_path_factory.mktemp("vgg16_run")
  checkpoint.save_trained(path, config, {"params": params}, pretrained.preprocessing)
  return path


@pytest.fixture(scope="module")
def cxr3_images(cxr3_root):
  """Two cxr3 images per class."""
  return [str(p) for label in ("covid", "normal", "pneumonia")
          for p in sorted((cxr3_root / label).glob("*.jpg"))[:2]]


def test_vgg16_bfloat16_logits_and_probabilities_within_the_derived_tolerance(vgg16_run, cxr3_images):
  """Real ImageNet VGG16 on real chest X-rays: bfloat16 logits within `logit_tolerance` of
  float32's (norm-wise, relative to the largest logit), and `predict --dtype=bfloat16`
  probabilities within half of that logit error (softmax's Jacobian has infinity norm
  2 p (1 - p) <= 1/2)."""
  trained = {dt: checkpoint.load_trained(vgg16_run, dtype=dt) for dt in ("float32", "bfloat16")}
  assert trained["bfloat16"].model.dtype == jnp.bfloat16
  images, _ = predict.load_images(cxr3_images, trained["float32"].config.data)
  from cxr_jax.data.preprocess import normalise_images

  x = normalise_images(np.stack([images[k] for k in range(len(cxr3_images))]),
                       trained["float32"].preprocessing)
  logits = {dt: np.asarray(jax.jit(t.model.apply)(t.variables, x)) for dt, t in trained.items()}
  assert logits["bfloat16"].dtype == np.float32
  scale = np.abs(logits["float32"]).max()
  err = np.abs(logits["bfloat16"] - logits["float32"]).max()
  print(f"bf16 vs fp32 logits: max error {err:.4g} = {err / scale:.3g} of the largest logit "
        f"(tolerance {logit_tolerance():.3g})")
  assert 0 < err <= logit_tolerance() * scale
  probs = {dt: np.array([list(r["probs"].values()) for r in
                         predict.predict_files(vgg16_run, cxr3_images, batch_size=8, dtype=dt)])
           for dt in ("float32", "bfloat16")}
  np.testing.assert_allclose(probs["float32"], np.asarray(jax.nn.softmax(logits["float32"])),
                             atol=1e-5)
  assert np.abs(probs["bfloat16"] - probs["float32"]).max() <= 0.5 * logit_tolerance() * scale


def test_inference_rounds_vgg_parameters_once_for_the_same_logits(vgg16_run):
  """VGG rounds every parameter to its computation dtype on each call: rounding them once before
  a pass over many batches (`compute_variables`) gives the same logits bit for bit; float32
  models and DenseNet (BatchNorm keeps float32 parameters) are left as they are. Compiled without
  XLA's excess precision: on a CPU without bf16 units XLA computes bf16 products in float32 and,
  by default, drops the float32 -> bf16 -> float32 round trip of a float32 parameter, so there the
  per-call rounding never happens (on an AVX2 EPYC the logits then differ from those of the
  parameters rounded once by up to 2 %, both within bf16's tolerance of float32's: the test
  above)."""
  from cxr_jax.evaluate.inference import compute_variables
  from cxr_jax.models.densenet import DenseNet

  t = checkpoint.load_trained(vgg16_run, dtype="bfloat16")
  once = compute_variables(t.model, t.variables)
  assert {p.dtype for p in jax.tree.leaves(once["params"])} == {jnp.dtype(jnp.bfloat16)}
  assert {p.dtype for p in jax.tree.leaves(t.variables["params"])} == {jnp.dtype(jnp.float32)}
  x = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3), jnp.float32)
  apply = jax.jit(t.model.apply, compiler_options={"xla_allow_excess_precision": False})
  np.testing.assert_array_equal(apply(once, x), apply(t.variables, x))
  f32 = checkpoint.load_trained(vgg16_run)
  assert compute_variables(f32.model, f32.variables) is f32.variables
  densenet = DenseNet(dtype=jnp.bfloat16)
  assert compute_variables(densenet, t.variables) is t.variables


def test_predict_dtype_flag_overrides_the_runs_dtype(vgg16_run):
  assert checkpoint.load_trained(vgg16_run).model.dtype == jnp.float32
  assert checkpoint.load_trained(vgg16_run, dtype="bfloat16").model.dtype == jnp.bfloat16


def test_amx_rules_take_the_tiles_where_they_cover(monkeypatch):
  """Where the AMX convolution is built, every bfloat16 layer it covers takes it for the forward
  pass, the input gradient and the weight gradient (the 3-channel first conv on im2col rows);
  float32 and a bfloat16 layer too wide for im2col rows keep their rules."""
  from cxr_jax.ops import amx

  monkeypatch.setattr("cxr_jax.machine.native_bf16", lambda: True)
  monkeypatch.setattr("cxr_jax.machine.isa_level", lambda: "amx")
  monkeypatch.setattr(amx, "_load", lambda: None)
  for x_shape, k_shape in (((8, 224, 224, 64), (3, 3, 64, 64)), ((8, 28, 28, 512), (3, 3, 512, 512)),
                           ((8, 112, 112, 128), (3, 3, 128, 64))):
    assert fwd.rule(x_shape, k_shape, jnp.bfloat16) == wgrad.rule(x_shape, k_shape, jnp.bfloat16) == "amx"
    assert "amx" not in (fwd.rule(x_shape, k_shape, jnp.float32), wgrad.rule(x_shape, k_shape, jnp.float32))
  first = ((8, 224, 224, 3), (3, 3, 3, 64))
  assert (fwd.rule(*first, jnp.bfloat16), wgrad.rule(*first, jnp.bfloat16)) == ("amx", "amx")
  wide = ((8, 56, 56, 16), (3, 3, 16, 64))  # 144 im2col columns
  assert (fwd.rule(*wide, jnp.bfloat16), wgrad.rule(*wide, jnp.bfloat16)) == ("xla", "im2col_t")


AMX_CASES = [  # (x shape, kernel shape, padding): flat rows not a multiple of 32, non-square,
    ((2, 9, 10, 32), (3, 3, 32, 64), PADS),  # asymmetric padding, 1x1 and 3x1 kernels, VALID
    ((1, 7, 5, 64), (3, 3, 64, 32), ((0, 2), (1, 0))),
    ((3, 6, 6, 32), (1, 1, 32, 32), ((0, 0), (0, 0))),
    ((2, 8, 11, 64), (3, 1, 64, 96), ((1, 1), (0, 0))),
    ((2, 9, 10, 3), (3, 3, 3, 32), PADS),  # an image's 3 channels: im2col rows (27 of 32 columns)
    ((1, 7, 5, 5), (2, 3, 5, 64), ((0, 2), (1, 0))),
]


# amx.UNITS: the kernel's products on the tiles / the tiles' code emulated (any avx512_bf16 CPU) /
# the vector units
UNITS = ["amx", "amx_emulated", "avx512bf16"]


def _amx_or_skip(units="amx"):
  from cxr_jax.ops import amx

  if not amx.available(units):
    pytest.skip(f"the {units} convolution is not available here: {amx.unavailable_reason(units)}")
  return amx


@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("small_units", [False, True])
@pytest.mark.parametrize("x_shape,k_shape,pads", AMX_CASES)
def test_amx_convolution_within_the_bound_of_one_bfloat16_product(x_shape, k_shape, pads,
                                                                   small_units, units, monkeypatch):
  """Forward, input gradient (the forward applied to dy and the flipped kernel, as conv.py does),
  weight and bias gradients on AMX tiles against float32's lax convolution of the same
  bfloat16-exact data: bf16 operands are exact, so only the float32 accumulation (K terms: K 2^-24
  of the absolute-value sum S) and, for bf16 outputs, the output's rounding (u |ref|) remain.
  small_units: 32-64-row work units, so panels meet image edges and padding mid-unit, the halo
  spans units and every worker adds its own weight-gradient sums (the default units hold these
  small problems whole). units: on the AMX tiles, their code emulated, and on AVX512-BF16's vector
  units (the same bound: any order of the float32 sums)."""
  amx = _amx_or_skip(units)
  if small_units:
    monkeypatch.setattr(amx, "FORWARD_PANEL_BYTES", 1)
    monkeypatch.setattr(amx, "WGRAD_PANEL_BYTES", 1)
  x, w = _random(x_shape, 11, relu=True), _random(k_shape, 12)
  y, vjp = jax.vjp(lambda x_, w_: fwd.xla(x_, w_, pads), x, w)
  dy = _random(y.shape, 13)
  dx_ref, dw_ref = vjp(dy)
  s_y = fwd.xla(abs(x), abs(w), pads)
  _, vjp_abs = jax.vjp(lambda x_, w_: fwd.xla(x_, w_, pads), abs(x), abs(w))
  s_dx, s_dw = vjp_abs(abs(dy))
  bf = lambda a: a.astype(jnp.bfloat16)
  tw, tpads = fwd.transposed_kernel(w), fwd.transposed_padding(w.shape, pads)
  kh, kw, c, o = k_shape
  got_y = amx.forward(bf(x), bf(w), pads, units=units)
  # The input gradient of a few-channel layer has too few outputs for the tiles (nor does the
  # image's need computing): the other formulations take it.
  dx_covered = amx.covers(units, tw.shape, jnp.bfloat16)
  got_dx = amx.forward(bf(dy), bf(tw), tpads, units=units) if dx_covered else dx_ref.astype(jnp.bfloat16)
  if dx_covered and units in fwd.FORMULATIONS:  # the kernel's own flip and swap of w: the same
    # products in the same order
    np.testing.assert_array_equal(fwd.on_transposed_kernel(units, bf(dy), bf(w), tpads), got_dx)
  got_dw, got_db = amx.weight_and_bias_grad(bf(x), bf(dy), k_shape, pads, jnp.float32, jnp.float32,
                                            units=units)
  assert got_y.dtype == got_dx.dtype == jnp.bfloat16 and got_dw.dtype == got_db.dtype == jnp.float32
  np.testing.assert_array_equal(amx.weight_grad(bf(x), bf(dy), k_shape, pads, jnp.float32, units=units),
                                got_dw)
  rows = int(np.prod(dy.shape[:3]))
  checks = {"y": (got_y, y, s_y, kh * kw * c, U_BF16), "dx": (got_dx, dx_ref, s_dx, kh * kw * o, U_BF16),
            "dw": (got_dw, dw_ref, s_dw, rows, 0.0),
            "db": (got_db, dy.sum((0, 1, 2)), abs(dy).sum((0, 1, 2)), rows, 0.0)}
  for key, (got, ref, s, k, u_out) in checks.items():
    assert got.shape == ref.shape, key
    err = jnp.abs(got.astype(jnp.float32) - ref)
    bound = u_out * jnp.abs(ref) + k * U_F32 * s
    assert float(jnp.max(err - bound)) <= 0, (key, float(jnp.max(err / (bound + 1e-30))))


@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("x_shape,k_shape,pads", AMX_CASES)
def test_amx_forward_adds_bias_and_relu_to_its_float32_sums(x_shape, k_shape, pads, units):
  """The fused epilogue: the bias added to the float32 sums, max(0, .) taken, then the one rounding
  to bfloat16: within u |ref| + (K + 1) 2^-24 (S + |b|) of float32's max(0, conv + b) (one more
  float32 addition; the ReLU is exact and 1-Lipschitz), negative outputs kept without `relu`; a
  NaN in the input stays NaN through the ReLU wherever its window reaches (never a silent 0)."""
  amx = _amx_or_skip(units)
  x, w, b = _random(x_shape, 31, relu=True), _random(k_shape, 32), _random(k_shape[3:], 33)
  bf = lambda a: a.astype(jnp.bfloat16)
  linear = fwd.xla(x, w, pads) + b
  s = fwd.xla(abs(x), abs(w), pads) + abs(b)
  k = int(np.prod(k_shape[:3])) + 1
  for relu, ref in ((True, jnp.maximum(linear, 0)), (False, linear)):
    got = amx.forward(bf(x), bf(w), pads, bias=b, relu=relu, units=units)
    assert got.dtype == jnp.bfloat16
    err = jnp.abs(got.astype(jnp.float32) - ref)
    bound = U_BF16 * jnp.abs(ref) + k * U_F32 * s
    assert float(jnp.max(err - bound)) <= 0, (relu, float(jnp.max(err / (bound + 1e-30))))
    assert bool(jnp.any(got < 0)) != relu
  x_nan = x.at[0, x_shape[1] // 2, x_shape[2] // 2, 0].set(jnp.nan)
  reached = jnp.isnan(fwd.xla(x_nan, w, pads))
  got = amx.forward(bf(x_nan), bf(w), pads, bias=b, relu=True, units=units)
  assert bool(reached.any())
  np.testing.assert_array_equal(jnp.isnan(got), reached)


def _mask_with_specials(shape, seed):
  """A ReLU output to mask dy with, bfloat16: about half of it +0, -0, +inf, -inf, NaN, -1 or 2,
  the rest normal values (seeds `seed` and `seed` + 1)."""
  specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, 2.0], np.float32)
  y = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  picks = np.random.default_rng(seed + 1).integers(0, 2 * len(specials), shape)  # ~half special
  return jnp.asarray(np.where(picks < len(specials), specials[np.minimum(picks, len(specials) - 1)], y),
                     jnp.bfloat16)


@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("small_units", [False, True])
@pytest.mark.parametrize("x_shape,k_shape,pads", AMX_CASES)
def test_amx_kernels_mask_dy_exactly_as_the_relu_gradient(x_shape, k_shape, pads, small_units,
                                                          units, monkeypatch):
  """The ReLU's gradient applied by the kernels as they read dy (`mask`, the layer's output) gives
  bit for bit what they give on jnp.where(y > 0, dy, 0): the same values reach the same products in
  the same order. The mask holds positives, negatives, +0, -0, +inf, -inf and NaN (only the
  positives and +inf keep dy: NaN > 0 is false); so does conv2d(relu=True)'s backward pass, on
  bfloat16 through the AMX formulations, against the masked dy's formulations called by hand."""
  from cxr_jax.ops import conv

  amx = _amx_or_skip(units)
  if small_units:
    monkeypatch.setattr(amx, "FORWARD_PANEL_BYTES", 1)
    monkeypatch.setattr(amx, "WGRAD_PANEL_BYTES", 1)
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)
  x, w, b = bf(_random(x_shape, 41, relu=True)), bf(_random(k_shape, 42)), bf(_random(k_shape[3:], 43))
  y_shape = fwd.xla(x, w, pads).shape
  dy = bf(_random(y_shape, 44))
  y = _mask_with_specials(y_shape, 45)
  masked = amx.relu_masked(dy, y)
  assert 0.2 < float(jnp.mean(masked == 0)) < 0.9
  got = amx.weight_and_bias_grad(x, dy, k_shape, pads, jnp.float32, jnp.float32, mask=y, units=units)
  want = amx.weight_and_bias_grad(x, masked, k_shape, pads, jnp.float32, jnp.float32, units=units)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  tpads = fwd.transposed_padding(k_shape, pads)
  dx_covered = tpads is not None and amx.covers(units, fwd.transposed_kernel(w).shape, jnp.bfloat16)
  if dx_covered:
    np.testing.assert_array_equal(amx.forward(dy, w, tpads, flip=True, mask=y, units=units),
                                  amx.forward(masked, w, tpads, flip=True, units=units))
  if units not in fwd.FORMULATIONS:  # the emulated tiles: no formulation for conv2d to take
    return
  # conv2d's backward with the fused ReLU: its y is the layer's (nonnegative) output.
  y_out, vjp = jax.vjp(lambda x_, w_, b_: conv.conv2d(x_, w_, pads, units, units, b_, relu=True),
                       x, w, b)
  dx, dw, db = vjp(dy)
  keep = amx.relu_masked(dy, y_out)
  want_dw, want_db = amx.weight_and_bias_grad(x, keep, k_shape, pads, w.dtype, b.dtype, units=units)
  np.testing.assert_array_equal(dw, want_dw)
  np.testing.assert_array_equal(db, want_db)
  if dx_covered:
    np.testing.assert_array_equal(dx, amx.forward(keep, w, tpads, flip=True, units=units))


def _winograd_formulation(units):
  """The native Winograd formulation on `units` (amx.WINOGRAD), or None (the emulated tiles)."""
  from cxr_jax.ops import amx

  return {u: name for name, u in amx.WINOGRAD.items()}.get(units)


WINOGRAD_CASES = [  # (x shape, kernel shape, padding): odd maps (partial 2x2 tiles), asymmetric
    ((2, 13, 11, 64), (3, 3, 64, 32), PADS),  # and wider padding, VALID, three images, 96 outputs
    ((1, 7, 5, 32), (3, 3, 32, 64), ((0, 2), (1, 0))),
    ((3, 6, 7, 32), (3, 3, 32, 96), ((0, 0), (0, 0))),
    ((2, 9, 10, 64), (3, 3, 64, 64), ((2, 1), (1, 2))),
]


@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("small_units", [False, True])
@pytest.mark.parametrize("x_shape,k_shape,pads", WINOGRAD_CASES)
def test_native_winograd_within_its_derived_bound(x_shape, k_shape, pads, small_units, units,
                                                  monkeypatch):
  """The native F(2x2) (`amx.winograd_forward` / `winograd_weight_and_bias_grad`: transforms in
  the kernel, products on the tiles, their code emulated, or the vector units) on bfloat16-exact
  data, forward, input gradient and weight gradient, with bias and ReLU in its epilogue and the
  bias gradient beside dw: within the bound XLA's F(2x2) bf16 form is held to
  (`test_winograd_on_bfloat16_within_its_derived_bound`: the same rounded operands, any order of
  float32 sums), plus one float32 addition of |b|; and a units' formulation (amx.WINOGRAD) gives
  the same bits through fwd / wgrad as conv.py calls them. small_units: units of 8 tiles (32 on
  the tiles and for the weight gradient, in 3 groups), so they cross images and a last strip is
  partly empty."""
  from cxr_jax.ops import amx

  _amx_or_skip(units)
  if small_units:  # and as on 12 cores: the weight gradient's panels in 3 groups, own sums each
    monkeypatch.setattr(amx, "WINOGRAD_PANEL_BYTES", 1)
    monkeypatch.setattr(amx.os, "cpu_count", lambda: 12)
  x, w, b = _random(x_shape, 51, relu=True), _random(k_shape, 52) * 0.125, _random(k_shape[3:], 53)
  y, vjp = jax.vjp(lambda x_, w_: fwd.xla(x_, w_, pads), x, w)
  dy = _random(y.shape, 54)
  dx_ref, dw_ref = vjp(dy)
  bf = lambda a: a.astype(jnp.bfloat16)
  tw, tpads = fwd.transposed_kernel(w), fwd.transposed_padding(w.shape, pads)
  got = {"y": amx.winograd_forward(bf(x), bf(w), pads, units=units),
         "yb": amx.winograd_forward(bf(x), bf(w), pads, bias=b, relu=True, units=units),
         "dx": amx.winograd_forward(bf(dy), bf(w), tpads, flip=True, units=units)}
  assert all(v.dtype == jnp.bfloat16 for v in got.values())
  got["dw"], got["db"] = amx.winograd_weight_and_bias_grad(bf(x), bf(dy), k_shape, pads, jnp.float32,
                                                           jnp.float32, units=units)
  name = _winograd_formulation(units)
  if name is not None:
    np.testing.assert_array_equal(fwd.FORMULATIONS[name](bf(x), bf(w), pads), got["y"])
    np.testing.assert_array_equal(fwd.with_epilogue(name, bf(x), bf(w), pads, bias=b, relu=True),
                                  got["yb"])
    np.testing.assert_array_equal(fwd.on_transposed_kernel(name, bf(dy), bf(w), tpads), got["dx"])
    jax.tree.map(np.testing.assert_array_equal,
                 wgrad.weight_and_bias_grad(name, bf(x), bf(dy), k_shape, pads, jnp.float32,
                                            jnp.float32), (got["dw"], got["db"]))
    np.testing.assert_array_equal(wgrad.FORMULATIONS[name](bf(x), bf(dy), k_shape, pads, jnp.float32),
                                  got["dw"])
  _abs_winograd(monkeypatch, 2)
  e_y = fwd.FORMULATIONS["wino2"](abs(x), abs(w), pads)
  tiles = x_shape[0] * -(-y.shape[1] // 2) * -(-y.shape[2] // 2)
  rows = int(np.prod(dy.shape[:3]))
  checks = {  # name: (reference, E, K, output rounding)
      "y": (y, e_y, k_shape[2], U_BF16),
      "yb": (jnp.maximum(y + b, 0), e_y + abs(b), k_shape[2] + 1, U_BF16),
      "dx": (dx_ref, fwd.FORMULATIONS["wino2"](abs(dy), abs(tw), tpads), k_shape[3], U_BF16),
      "dw": (dw_ref, wgrad.FORMULATIONS["wino2"](abs(x), abs(dy), k_shape, pads, jnp.float32), tiles,
             U_F32)}
  for key, (ref, e, k, u_out) in checks.items():
    assert got[key].shape == ref.shape, key
    err = jnp.abs(got[key].astype(jnp.float32) - ref)
    bound = u_out * jnp.abs(ref) + (2 * U_BF16 + (k + 32) * U_F32) * e
    assert float(jnp.max(err - bound)) <= 0, (key, float(jnp.max(err / (bound + 1e-30))))
  # db: a float32 sum of dy's (bfloat16-exact) values, no products
  err = jnp.abs(got["db"] - dy.sum((0, 1, 2)))
  assert float(jnp.max(err - rows * U_F32 * abs(dy).sum((0, 1, 2)))) <= 0
  assert bool(jnp.any(got["y"] < 0)) and not bool(jnp.any(got["yb"] < 0))


@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("small_units", [False, True])
def test_native_winograd_masks_dy_exactly_and_keeps_nan(small_units, units, monkeypatch):
  """The input, weight and bias gradients with the ReLU's mask read in the kernel are bit for bit
  those on jnp.where(y > 0, dy, 0) (mask with +-0, +-inf and NaN); a NaN in the input stays NaN
  through the fused ReLU at every output its 3x3 window reaches (never a silent 0); a shape it does
  not cover is refused, not misread; on every units, and through conv2d for a units' formulation."""
  from cxr_jax.ops import amx

  _amx_or_skip(units)
  if small_units:
    monkeypatch.setattr(amx, "WINOGRAD_PANEL_BYTES", 1)
  x_shape, k_shape, pads = (2, 9, 7, 64), (3, 3, 64, 32), PADS
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)
  w = bf(_random(k_shape, 62))
  dy = bf(_random((2, 9, 7, 32), 63))
  y = _mask_with_specials(dy.shape, 64)
  np.testing.assert_array_equal(
      amx.winograd_forward(dy, w, pads, flip=True, mask=y, units=units),
      amx.winograd_forward(amx.relu_masked(dy, y), w, pads, flip=True, units=units))
  x = bf(_random(x_shape, 61, relu=True))
  grads = functools.partial(amx.winograd_weight_and_bias_grad, kernel_shape=k_shape, padding=pads,
                            dtype=jnp.float32, bias_dtype=jnp.float32, units=units)
  jax.tree.map(np.testing.assert_array_equal, grads(x, dy, mask=y), grads(x, amx.relu_masked(dy, y)))
  name = _winograd_formulation(units)
  if name is not None:
    # conv2d's backward with the fused ReLU on the native Winograd: each gradient as called by
    # hand on the masked dy (its y is the layer's nonnegative output).
    from cxr_jax.ops import conv

    b = bf(_random((32,), 66))
    y_out, vjp = jax.vjp(lambda x_, w_, b_: conv.conv2d(x_, w_, pads, name, name, b_, relu=True),
                         x, w, b)
    dx, dw, db = vjp(dy)
    keep = amx.relu_masked(dy, y_out)
    assert 0.2 < float(jnp.mean(keep == 0)) < 0.9
    np.testing.assert_array_equal(dx, fwd.on_transposed_kernel(name, keep, w, pads))
    want_dw, want_db = amx.winograd_weight_and_bias_grad(x, keep, k_shape, pads, w.dtype, b.dtype,
                                                         units=units)
    np.testing.assert_array_equal(dw, want_dw)
    np.testing.assert_array_equal(db, want_db)
  x = x.at[1, 4, 3, 0].set(jnp.nan)
  reached = jnp.isnan(fwd.xla(x.astype(jnp.float32), w.astype(jnp.float32), pads))
  got = jnp.isnan(amx.winograd_forward(x, w, pads, bias=jnp.zeros(32), relu=True, units=units))
  assert bool(reached.any()) and not bool(jnp.any(reached & ~got))
  assert not bool(got[0].any())  # the other image's tiles never see it
  for bad_w, bad_x in ((jnp.zeros((3, 3, 64, 48), jnp.bfloat16), x),  # 48 outputs
                       (jnp.zeros((1, 1, 64, 32), jnp.bfloat16), x),  # not 3x3
                       (w.astype(jnp.float32), x.astype(jnp.float32))):
    with pytest.raises(ValueError, match="does not cover"):
      amx.winograd_forward(bad_x, bad_w, pads, units=units)
    with pytest.raises(ValueError, match="does not cover"):
      amx.winograd_weight_and_bias_grad(bad_x, dy, bad_w.shape, pads, jnp.float32, jnp.float32,
                                        units=units)


def test_amx_work_units_keep_every_core_busy_within_the_cache_bound(monkeypatch):
  """Units are whole tiles of at most the cache bound, and the busiest core (units taken in turn)
  does at most its share of the rows plus one tile per unit it takes: 5 units of 416 rows on 2
  cores (2,048 rows, the 512-channel layers at 14 px) would leave one core idle for a third of the
  time."""
  from cxr_jax.ops import amx

  for cores in (1, 2, 3, 8):
    monkeypatch.setattr(amx.os, "cpu_count", lambda cores=cores: cores)
    for rows in (1, 31, 33, 100, 330, 2048, 408_608):
      for most in (1, 32, 100, 480, 4096, 10**6):
        panel = int(amx._panel(rows, most))
        units = -(-rows // panel)
        per_core = -(-units // cores)
        assert panel % 32 == 0 and panel <= max(32, -(-most // 32) * 32), (cores, rows, most)
        assert per_core * panel <= rows / cores + 32 * (per_core + 1), (cores, rows, most, panel)


def test_bias_gradient_comes_with_the_weight_gradient_for_every_formulation(monkeypatch):
  """conv2d's bias: the forward adds it as nn.Conv does; db = the sum of dy in float32 whichever
  weight-gradient formulation runs (the AMX one sums it in its own pass: same within float32
  accumulation), and dw is the formulation's own."""
  from cxr_jax.ops import amx, conv

  x, w, b = _random((2, 9, 10, 32), 21, relu=True), _random((3, 3, 32, 64), 22), _random((64,), 23)
  dy = _random((2, 9, 10, 64), 24)
  bf = lambda a: a.astype(jnp.bfloat16)
  names = ["xla", "im2col_t"] + [n for n in amx.NATIVE if amx.covers(n, w.shape, jnp.bfloat16)]
  for name in names:
    y, vjp = jax.vjp(lambda x_, w_, b_, name=name: conv.conv2d(x_, w_, PADS, name, "xla", bias=b_),
                     bf(x), bf(w), bf(b))
    np.testing.assert_array_equal(y, fwd.xla(bf(x), bf(w), PADS) + bf(b))
    _, dw, db = vjp(bf(dy))
    assert db.dtype == jnp.bfloat16
    ref = dy.sum((0, 1, 2))
    bound = U_BF16 * abs(ref) + dy[..., 0].size * U_F32 * abs(dy).sum((0, 1, 2))
    assert float(jnp.max(jnp.abs(db.astype(jnp.float32) - ref) - bound)) <= 0, name
    np.testing.assert_array_equal(dw, wgrad.FORMULATIONS[name](bf(x), bf(dy), w.shape, PADS, jnp.bfloat16))


def test_amx_formulation_only_where_it_covers(monkeypatch):
  """bfloat16 with 32-channel multiples (or few enough for im2col rows) only, on either units (the
  native Winograd: 3x3, both counts multiples of 32); float32 data or wide non-multiples keep the
  other formulations; a direct call outside that is refused (the native code would misread it);
  and CXR_JAX_AMX=0 turns every native one off with the reason."""
  from cxr_jax.ops import amx, tuning

  monkeypatch.setattr(amx, "_load", lambda: None)  # as where the tiles are usable
  monkeypatch.setattr(amx, "_library", lambda: None)  # and AVX512-BF16 (any AMX CPU has it)
  for units in amx.NAMES:
    assert units in tuning.applicable("fwd", (3, 3, 64, 32), jnp.bfloat16)
    assert units in tuning.applicable("wgrad", (3, 3, 64, 32), jnp.bfloat16)
    assert units in tuning.applicable("fwd", (3, 3, 3, 64), jnp.bfloat16)  # im2col rows, 27 columns
    for k_shape, dtype in (((3, 3, 64, 32), jnp.float32), ((3, 3, 16, 64), jnp.bfloat16),
                           ((3, 3, 64, 48), jnp.bfloat16)):
      assert units not in tuning.applicable("fwd", k_shape, dtype)
      assert units not in tuning.applicable("wgrad", k_shape, dtype)
  # The native Winograd (either units): 3x3 bfloat16 kernels with both channel counts in multiples
  # of 32.
  for op, name in itertools.product(("fwd", "wgrad"), amx.WINOGRAD):
    assert name in tuning.applicable(op, (3, 3, 64, 32), jnp.bfloat16)
    for k_shape, dtype in (((3, 3, 64, 32), jnp.float32), ((3, 3, 3, 64), jnp.bfloat16),
                           ((3, 3, 64, 48), jnp.bfloat16), ((1, 1, 64, 32), jnp.bfloat16),
                           ((3, 1, 64, 32), jnp.bfloat16)):
      assert name not in tuning.applicable(op, k_shape, dtype), (op, name, k_shape)
  with pytest.raises(ValueError, match="does not cover"):
    amx.forward(jnp.zeros((1, 4, 4, 64)), jnp.zeros((3, 3, 64, 32)), PADS)
  # The input gradient of a 3-channel layer (its kernel 3x3x32x3 flipped): im2col rows, which the
  # native flip does not read; fwd.on_transposed_kernel transposes it first instead.
  assert not amx.flips((3, 3, 32, 3)) and amx.flips((3, 3, 3, 64))
  with pytest.raises(ValueError, match="flips whole"):
    amx.forward(jnp.zeros((1, 4, 4, 3), jnp.bfloat16), jnp.zeros((3, 3, 32, 3), jnp.bfloat16), PADS,
                flip=True)
  monkeypatch.undo()
  monkeypatch.setenv("CXR_JAX_AMX", "0")
  amx._library.cache_clear()
  amx._load.cache_clear()
  try:
    for units in (*amx.UNITS, *amx.WINOGRAD):
      assert amx.unavailable_reason(units) == "CXR_JAX_AMX=0"
    for name in amx.NATIVE:
      assert name not in tuning.applicable("fwd", (3, 3, 64, 32), jnp.bfloat16)
      assert name not in tuning.applicable("wgrad", (3, 3, 64, 32), jnp.bfloat16)
  finally:
    monkeypatch.delenv("CXR_JAX_AMX")
    amx._library.cache_clear()
    amx._load.cache_clear()


def test_amx_library_builds_and_exports_its_handlers(tmp_path, monkeypatch):
  """The native source compiles with this machine's compiler against jaxlib's FFI headers (any
  x86 CPU: compiling does not run AMX code) and exports what amx.py registers; the library path
  changes with the source."""
  import ctypes

  from cxr_jax.ops import amx

  compiler = amx._compiler()
  if compiler is None:
    pytest.skip("no C++ compiler here: the AMX convolution is then never built (amx.covers)")
  target = tmp_path / "amx_conv.so"
  amx._build(compiler, target)
  lib = ctypes.cdll.LoadLibrary(str(target))
  for _, symbol in amx.TARGETS.values():
    assert getattr(lib, symbol) is not None
  assert lib.cxr_amx_enable is not None
  edited = tmp_path / "amx_conv.cc"
  edited.write_text(amx.SOURCE.read_text() + "\n// edited\n")
  before = amx.library_path(compiler)
  monkeypatch.setattr(amx, "SOURCE", edited)
  assert amx.library_path(compiler) != before  # an edited source is built anew, never a stale .so
