"""VGG model: parameter tree, block outputs, start/stop, frozen blocks, head, config mapping."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config
from cxr_jax.models import BLOCK_NAMES, VGG, conv_class, create_model
from cxr_jax.weights.porters import expected_layers

SMALL = dict(hidden=(8,), dropout=0.5)


def random_params(model, x, **kwargs):
  """He-scaled random params of `model` for input `x`, drawn with numpy (jax's threefry init of
  VGG's 15M weights is slow on a small CPU)."""
  shapes = jax.eval_shape(lambda k: model.init(k, x, **kwargs), jax.random.key(0))["params"]
  rng = np.random.default_rng(0)
  def draw(s):
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    return (rng.standard_normal(s.shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(s.dtype)
  return jax.tree.map(draw, shapes)


@pytest.fixture(scope="module")
def vgg16_32():
  """A VGG16 with a tiny head at 32x48 px (block5 output 1x1)."""
  model = VGG(depth=16, **SMALL)
  x = jax.random.normal(jax.random.key(1), (2, 32, 48, 3))
  return model, random_params(model, x), x


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_param_tree_is_blocks_of_hwio_convs(arch):
  model = VGG(depth=int(arch[3:]), **SMALL)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  assert list(shapes) == list(BLOCK_NAMES) + ["head"]
  expected = {(b, c): (k, bias) for b, c, k, bias in expected_layers(arch)}
  got = {(b, c): (s["kernel"].shape, s["bias"].shape)
         for b in BLOCK_NAMES for c, s in shapes[b].items()}
  assert got == expected
  assert len(got) == {"vgg16": 13, "vgg19": 16}[arch]
  # 64 px -> 2x2x512 after five pools; flatten head sees H*W*C inputs.
  assert shapes["head"]["dense1"]["kernel"].shape == (2 * 2 * 512, 8)
  assert shapes["head"]["logits"]["kernel"].shape == (8, 3)


def test_block_outputs_sown_and_stop_start_agree(vgg16_32):
  model, params, x = vgg16_32
  logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
  sown = state["intermediates"]
  h, w = 32, 48
  for i, block in enumerate(BLOCK_NAMES):
    (out,) = sown[block]["output"]
    assert out.shape == (2, h >> (i + 1), w >> (i + 1), (64, 128, 256, 512, 512)[i])
    np.testing.assert_allclose(model.apply({"params": params}, x, stop=block), out, rtol=1e-5)
  # Resuming from a cached block output gives the same logits (frozen-feature cache).
  block3 = sown["block3"]["output"][0]
  resumed = model.apply({"params": params}, block3, start="block3")
  np.testing.assert_allclose(resumed, logits, rtol=1e-5, atol=1e-6)
  mid = model.apply({"params": params}, block3, start="block3", stop="block4")
  np.testing.assert_allclose(mid, sown["block4"]["output"][0], rtol=1e-5, atol=1e-6)


def test_bad_start_stop_raise(vgg16_32):
  model, params, x = vgg16_32
  with pytest.raises(ValueError, match="stop"):
    model.apply({"params": params}, x, stop="block9")
  with pytest.raises(ValueError, match="before"):
    model.apply({"params": params}, x, start="block4", stop="block2")


@pytest.mark.parametrize("frozen,start", [(3, "input"), (5, "block3")])
def test_frozen_blocks_get_no_gradient(vgg16_32, frozen, start):
  model, params, x = vgg16_32
  model = model.clone(frozen_blocks=frozen)
  if start != "input":
    x = model.apply({"params": params}, x, stop=start)
  loss = lambda p: jnp.sum(model.apply({"params": p}, x, start=start) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  first = BLOCK_NAMES.index(start) + 1 if start != "input" else 0
  for i, block in enumerate(BLOCK_NAMES[first:], start=first):
    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[block]))
    assert (norm == 0.0) == (i < frozen), (block, norm)
  assert float(jnp.abs(grads["head"]["logits"]["kernel"]).sum()) > 0


def test_perturbations_give_activation_gradients(vgg16_32):
  """Grad-CAM's hook: d logit / d perturbations[block5][conv3_out] is the activation gradient."""
  model, params, x = vgg16_32
  x4 = model.apply({"params": params}, x, stop="block4")
  _, state = model.apply({"params": params}, x4, start="block4", mutable=["perturbations"])
  perts = state["perturbations"]
  assert list(perts) == ["block5"]  # only the layers that ran
  assert set(perts["block5"]) == {"conv1_out", "conv2_out", "conv3_out"}
  f = lambda p: model.apply({"params": params, "perturbations": p}, x4, start="block4")[:, 0].sum()
  g = jax.jit(jax.grad(f))(perts)["block5"]["conv3_out"]
  assert g.shape == (2, 2, 3, 512) and float(jnp.abs(g).sum()) > 0
  # The 2x2 VALID max-pool drops column 2 of block5's 2x3 map and passes one input per window.
  np.testing.assert_array_equal(g[:, :, 2], 0.0)
  assert int(jnp.max(jnp.sum(g[:, :, :2] != 0, axis=(1, 2)))) == 1


def test_dropout_only_when_training(vgg16_32):
  model, params, x = vgg16_32
  feats = model.apply({"params": params}, x, stop="block5")
  apply = lambda **kw: model.apply({"params": params}, feats, start="block5", **kw)
  np.testing.assert_array_equal(apply(), apply())
  a = apply(train=True, rngs={"dropout": jax.random.key(1)})
  b = apply(train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)
  with pytest.raises(Exception, match="dropout"):
    apply(train=True)


def test_gap_head_is_size_independent():
  model = VGG(depth=16, head="gap", hidden=(4, 5))
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  assert params["head"]["dense1"]["kernel"].shape == (512, 4)
  assert params["head"]["dense2"]["kernel"].shape == (4, 5)
  assert params["head"]["logits"]["kernel"].shape == (5, 3)


def test_flatten_is_row_major_hwc():
  """Keras Flatten order: dense1's input index is (h * W + w) * C + c."""
  feats = jnp.zeros((1, 2, 3, 512)).at[0, 1, 2, 7].set(1.0)
  head = VGG(depth=16, hidden=(), dropout=0.0)
  params = jax.eval_shape(head.init, jax.random.key(0), jnp.zeros((1, 64, 96, 3)))["params"]
  kernel = jnp.zeros(params["head"]["logits"]["kernel"].shape).at[(1 * 3 + 2) * 512 + 7, 1].set(1)
  params = {"head": {"logits": {"kernel": kernel, "bias": jnp.zeros(3)}}}
  out = head.apply({"params": params}, feats, start="block5")
  np.testing.assert_array_equal(out, [[0.0, 1.0, 0.0]])


def test_create_model_from_config():
  config = get_config().model
  config.arch, config.trainable_blocks, config.hidden, config.head = "vgg19", 2, (16, 4), "gap"
  model = create_model(config)
  assert (model.depth, model.frozen_blocks, tuple(model.hidden), model.head) == (19, 3, (16, 4), "gap")
  assert model.num_classes == 3 and model.conv_impl == "fast_mm_rule"  # "auto" on CPU
  config.arch = "resnet50"
  with pytest.raises(ValueError, match="model.arch"):
    create_model(config)
  config.arch, config.trainable_blocks = "vgg16", 6
  with pytest.raises(ValueError, match="trainable_blocks"):
    create_model(config)


def test_conv_impl_xla_is_flax_conv_and_unknown_is_refused():
  assert conv_class("xla") is nn.Conv
  with pytest.raises(ValueError, match="conv_impl"):
    conv_class("no-such-conv")


def test_other_conv_impls_share_params_and_outputs():
  """Ported weights fit every conv implementation: same tree, same outputs and gradients."""
  ops = pytest.importorskip("cxr_jax.ops")
  x = jax.random.normal(jax.random.key(3), (2, 16, 24, 3))
  xla = VGG(depth=16, conv_impl="xla")
  params = random_params(xla, x, stop="block2")
  loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x, stop="block2") ** 2)
  want_out, want_grad = jax.jit(jax.value_and_grad(loss(xla)))(params)
  for impl in sorted(set(ops.CONV_IMPLS) & {"fast_rule"}):
    model = xla.clone(conv_impl=impl)
    init = functools.partial(model.init, stop="block2")
    shapes = jax.eval_shape(init, jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
    out, grad = jax.jit(jax.value_and_grad(loss(model)))(params)
    np.testing.assert_allclose(out, want_out, rtol=1e-4)
    for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad), strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3 * float(jnp.abs(w).max()))
