"""LRP: conservation on VGG16 and a small DenseNet, input x weight on a linear model, z^B bounds.

Conservation (Montavon et al. 2019): with all biases (and BatchNorm shifts) zero and epsilon -> 0,
no layer absorbs relevance, so the input relevance sums to the explained logit.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.explain.lrp import input_bounds, lrp, make_lrp_fn
from cxr_jax.models import VGG, DenseNet
from cxr_jax.weights import PREPROCESSING

TINY_EPS = dict(epsilon=1e-9, stabilizer=1e-12)


def images_in_range(key, shape, preprocessing="torchvision"):
  """Normalised images of uniform grey levels in [0, 255] (inside the z^B bounds)."""
  spec = PREPROCESSING[preprocessing]
  u = jax.random.uniform(key, shape, minval=0.0, maxval=255.0)
  return (u * spec["scale"] - jnp.asarray(spec["mean"])) / jnp.asarray(spec["std"])


def zero_shifts(variables):
  """Biases, BatchNorm shifts and running means set to zero (nothing absorbs relevance)."""
  def zero(path, leaf):
    name = getattr(path[-1], "key", "")
    return jnp.zeros_like(leaf) if name in ("bias", "mean") else leaf
  return jax.tree_util.tree_map_with_path(zero, variables)


def assert_conserved(res):
  explained = jnp.take_along_axis(res["logits"], res["targets"][:, None], axis=1)[:, 0]
  total = jnp.sum(res["relevance"], axis=(1, 2, 3))
  err = np.abs(np.asarray(total - explained)) / np.abs(np.asarray(explained))
  assert np.all(err < 1e-3), (total, explained)
  assert np.all(np.abs(np.asarray(explained)) > 1e-3)  # a non-trivial logit was explained


def test_vgg16_conserves_relevance():
  model = VGG(depth=16, hidden=(32,), dropout=0.0, frozen_blocks=3)  # frozen: LRP unfreezes
  x = images_in_range(jax.random.key(0), (2, 48, 48, 3))
  variables = zero_shifts({"params": jax.jit(model.init)(jax.random.key(1), x)["params"]})
  fn = make_lrp_fn(model, "torchvision", **TINY_EPS)
  res = fn(variables, x, jnp.array([-1, 2]))
  assert res["targets"][1] == 2
  assert_conserved(res)
  assert res["cam"].shape == (2, 48, 48)
  assert float(res["cam"].min()) >= 0.0 and float(res["cam"].max()) == pytest.approx(1.0)
  # The forward pass is untouched by the rules.
  np.testing.assert_allclose(res["logits"], jax.jit(model.apply)(variables, x), rtol=1e-5,
                             atol=1e-6)


def test_densenet_conserves_relevance():
  model = DenseNet(block_sizes=(2, 2, 2, 2), growth_rate=8, hidden=(16,), dropout=0.0)
  # 128 px: XLA's CPU convs are very slow on the 1x1-2x2 maps a 32 px input ends in.
  x = images_in_range(jax.random.key(0), (2, 128, 128, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  stats = jax.tree.map(lambda v: jax.random.uniform(jax.random.key(2), v.shape, minval=0.5,
                                                    maxval=2.0), variables["batch_stats"])
  variables = zero_shifts({"params": variables["params"], "batch_stats": stats})
  res = make_lrp_fn(model, "torchvision", **TINY_EPS)(variables, x, jnp.array([0, -1]))
  assert_conserved(res)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def test_linear_model_relevance_is_input_times_weight():
  model = Linear()
  x = jax.random.normal(jax.random.key(0), (3, 4, 5, 3))
  params = model.init(jax.random.key(1), x)["params"]
  params = {"Dense_0": {**params["Dense_0"], "bias": jnp.array([0.5, -0.2, 0.1])}}
  res = lrp(model, {"params": params}, x, jnp.array([0, 1, 2]), epsilon=1e-9)
  kernel = params["Dense_0"]["kernel"]                     # [60, 3]
  want = x.reshape(3, -1) * kernel[:, jnp.array([0, 1, 2])].T
  np.testing.assert_allclose(res["relevance"].reshape(3, -1), want, rtol=1e-4, atol=1e-6)


def test_input_bounds_are_the_preprocessed_extremes():
  low, high = input_bounds("torchvision")
  np.testing.assert_allclose(low, -np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                             rtol=1e-6)
  np.testing.assert_allclose(high, (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225],
                             rtol=1e-6)
  low, high = input_bounds("caffe")
  np.testing.assert_allclose(low, [-103.939, -116.779, -123.68], rtol=1e-6)
  np.testing.assert_allclose(high, 255 - np.array([103.939, 116.779, 123.68]), rtol=1e-6)
  with pytest.raises(ValueError, match="preprocessing"):
    input_bounds("imagenet")
