"""Grad-CAM against a direct jax.vjp computation, and on a model with known evidence locations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.explain import gradcam
from cxr_jax.explain.overlay import display_gray, save_overlay
from cxr_jax.models import VGG

SIZE = 32


def _params(model, fill):
  """Params of `model` at SIZE px, each leaf fill(path names, shape) (no slow random init)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  return {"params": jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(fill([p.key for p in path], s.shape), jnp.float32), shapes)}


@pytest.fixture(scope="module")
def random_vgg():
  model = VGG(depth=16, hidden=(8,), frozen_blocks=5)   # FT0: every block behind stop_gradient
  rng = np.random.default_rng(0)

  def he_normal(names, shape):
    if names[-1] == "bias":
      return rng.normal(0, 0.01, shape)
    return rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)

  images = jax.random.normal(jax.random.key(1), (3, SIZE, SIZE, 3))
  return model, _params(model, he_normal), images


def _conv_relu(x, p):
  y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + p["bias"])


def _reference(model, variables, images, targets):
  """Block5/conv3 activations A and d logit[target] / dA, computed without perturbations."""
  params = variables["params"]["block5"]
  x = model.apply(variables, images, stop="block4")
  acts = _conv_relu(_conv_relu(_conv_relu(x, params["conv1"]), params["conv2"]), params["conv3"])

  def head(a):
    pooled = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return model.apply(variables, pooled, start="block5")

  logits, vjp_fn = jax.vjp(head, acts)
  (grads,) = vjp_fn(jax.nn.one_hot(targets, 3))
  return np.asarray(acts), np.asarray(grads), np.asarray(logits)


def _normalised_upsample(raw):
  up = np.asarray(jax.image.resize(jnp.asarray(raw), (raw.shape[0], SIZE, SIZE), "bilinear"))
  peak = up.max(axis=(1, 2), keepdims=True)
  return np.where(peak > 0, up / np.where(peak > 0, peak, 1), 0)


def test_gradcam_equals_direct_vjp(random_vgg):
  model, variables, images = random_vgg
  out = gradcam(model, variables, images)  # targets: predicted classes
  acts, grads, logits = _reference(model.clone(frozen_blocks=0), variables, images,
                                   np.asarray(out["targets"]))
  np.testing.assert_array_equal(out["targets"], logits.argmax(1))
  assert np.abs(grads).max() > 0   # the frozen model's stop_gradient did not zero the map
  raw = np.maximum(np.einsum("nhwc,nc->nhw", acts, grads.mean(axis=(1, 2))), 0)
  np.testing.assert_allclose(out["raw"], raw, rtol=1e-4, atol=1e-6 * raw.max())
  np.testing.assert_allclose(out["cam"], _normalised_upsample(raw), atol=1e-4)
  np.testing.assert_allclose(out["probs"], jax.nn.softmax(logits), rtol=1e-5)


def test_gradcam_plus_plus_equals_closed_form_for_chosen_targets(random_vgg):
  model, variables, images = random_vgg
  targets = np.array([2, 0, 1])
  out = gradcam(model, variables, images, targets, method="gradcam++")
  acts, g, _ = _reference(model, variables, images, targets)
  np.testing.assert_array_equal(out["targets"], targets)
  denom = 2 * g**2 + acts.sum(axis=(1, 2), keepdims=True) * g**3
  alpha = np.divide(g**2, denom, out=np.zeros_like(g), where=denom != 0)
  weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
  raw = np.maximum(np.einsum("nhwc,nc->nhw", acts, weights), 0)
  np.testing.assert_allclose(out["raw"], raw, rtol=1e-4, atol=1e-6 * raw.max())


def _evidence_vgg():
  """VGG16 whose convs pass input channels 0-2 through (identity taps) and whose logit k is the
  maximum of channel k over the image; class 2's logit ignores the image (weight 0)."""
  model = VGG(depth=16, hidden=(8,), dropout=0.0)

  def set_weights(names, shape):
    w = np.zeros(shape, np.float32)
    if names[-1] == "kernel" and len(shape) == 4:     # conv HWIO: centre tap, channel c -> c
      for c in range(3):
        w[1, 1, c, c] = 1.0
    elif names[-1] == "kernel" and names[-2] == "dense1":
      w[0, 0] = w[1, 1] = 1.0                          # hidden j = channel j at the 1x1 output
    elif names[-1] == "kernel" and names[-2] == "logits":
      w[0, 0] = w[1, 1] = 1.0                          # logit k = hidden k for k in 0, 1
    return jnp.asarray(w)

  return model, _params(model, set_weights)


QUADRANTS = {0: (slice(0, 16), slice(0, 16)), 1: (slice(0, 16), slice(16, 32)),
             2: (slice(16, 32), slice(0, 16)), 3: (slice(16, 32), slice(16, 32))}


@pytest.mark.parametrize("layer,method", [("block5/conv3", "gradcam"), ("block3", "gradcam++")])
def test_cam_peaks_in_the_quadrant_holding_the_class_evidence(layer, method):
  model, variables = _evidence_vgg()
  rng = np.random.default_rng(0)
  images, where = [], []
  for q0, q1 in [(0, 3), (1, 2), (2, 0), (3, 1)]:
    img = rng.uniform(0, 0.2, (SIZE, SIZE, 3)).astype(np.float32)
    r, c = QUADRANTS[q0]
    img[r.start + 4:r.start + 10, c.start + 5:c.start + 11, 0] = 2.0   # covid evidence
    r, c = QUADRANTS[q1]
    img[r.start + 6:r.start + 12, c.start + 3:c.start + 9, 1] = 1.0    # normal evidence
    images.append(img)
    where.append((q0, q1))
  images = np.stack(images)
  for target in (0, 1):
    out = gradcam(model, variables, images, np.full(4, target), layer=layer, method=method)
    for cam, quads in zip(np.asarray(out["cam"]), where, strict=True):
      peak = np.unravel_index(np.argmax(cam), cam.shape)
      r, c = QUADRANTS[quads[target]]
      assert r.start <= peak[0] < r.stop and c.start <= peak[1] < c.stop, (target, quads, peak)
      assert cam.max() == pytest.approx(1.0)
  # No evidence for class 2: the map is all zero, not NaN.
  out = gradcam(model, variables, images, np.full(4, 2), layer=layer, method=method)
  assert np.all(np.asarray(out["cam"]) == 0.0)


def test_unknown_layer_and_method_are_rejected(random_vgg):
  model, variables, images = random_vgg
  with pytest.raises(ValueError, match="block5 has convs"):
    gradcam(model, variables, images, layer="block5/conv9")
  with pytest.raises(ValueError, match="no block"):
    gradcam(model, variables, images, layer="block7")
  with pytest.raises(ValueError, match="method"):
    gradcam(model, variables, images, method="lrp")


def test_overlay_png_and_display_recovers_the_grey_image(tmp_path):
  gray = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE)).astype(np.float32)
  caffe = np.stack([gray - 103.939, gray - 116.779, gray - 123.68], axis=-1)
  expected = (gray - gray.min()) / (gray.max() - gray.min())
  np.testing.assert_allclose(display_gray(caffe), expected, atol=1e-5)
  path = save_overlay(tmp_path / "a" / "x.png", caffe, np.zeros((SIZE, SIZE)), [0.2, 0.5, 0.3],
                      ["covid", "normal", "pneumonia"], heading="test")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _SownBlock(nn.Module):
  """A block whose activation is not a ReLU and which sows it under the perturbation name."""

  @nn.compact
  def __call__(self, x):
    y = jnp.tanh(nn.Conv(4, (3, 3), name="conv1")(x))
    self.sow("intermediates", "conv1_out", y)
    return self.perturb("conv1_out", y)


class _TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False, stop="logits"):
    a = _SownBlock(name="block1")(x)
    if stop == "block1":
      return a
    return nn.Dense(3, name="logits")(jnp.max(a, axis=(1, 2)))


def test_gradcam_uses_a_sown_activation():
  model = _TinyNet()
  images = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  variables = model.init(jax.random.key(3), images)
  out = gradcam(model, variables, images, np.array([1, 2]), layer="block1")
  acts = model.apply(variables, images, stop="block1")
  kernel, bias = variables["params"]["logits"]["kernel"], variables["params"]["logits"]["bias"]
  logits, vjp_fn = jax.vjp(lambda a: jnp.max(a, axis=(1, 2)) @ kernel + bias, acts)
  (grads,) = vjp_fn(jax.nn.one_hot(np.array([1, 2]), 3))
  raw = np.maximum(np.einsum("nhwc,nc->nhw", acts, grads.mean(axis=(1, 2))), 0)
  assert raw.max() > 0
  np.testing.assert_allclose(out["raw"], raw, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out["probs"], jax.nn.softmax(logits), rtol=1e-5)
