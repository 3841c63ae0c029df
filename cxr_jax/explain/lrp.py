"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019) for VGG and DenseNet.

Rules (the usual composite for ReLU image classifiers):
  dense layers (hidden, logits)   LRP-epsilon: R_i = a_i w_ij R_j / (z_j + eps sign z_j)
  BatchNorm (DenseNet)            LRP-epsilon on the affine map it is in eval mode,
                                  y = s (x - m) / sqrt(v + e) + b: DenseNet's BN comes before its
                                  conv (BN-ReLU-conv), behind a ReLU that forbids folding it into
                                  that conv, so it is treated as a linear layer of its own; its
                                  shift absorbs relevance as a bias does
  convolutions but the first      LRP-alpha1-beta0 (= z+): R_i = a_i w+_ij R_j / sum_i a_i w+_ij
                                  (their inputs are ReLU outputs, a >= 0)
  first convolution (the input)   z^B with the bounds of the preprocessing (`input_bounds`):
                                  R_i = (x_i w_ij - l_i w+_ij - h_i w-_ij) R_j / z^B_j
  max-pool                        winner-take-all: all relevance to the maximal input (the
                                  gradient's routing; ties go to one input)
  average pool, global average    proportional to the inputs (LRP-0, exactly conservative)
  ReLU, concatenation, reshape    relevance passes unchanged; a tensor used by several layers
                                  (DenseNet's concatenations) gets the sum of their relevances

Implementation: relevance equals input x gradient of the explained logit when every linear layer
z = f(a) is replaced in the backward pass by its rule's forward f_rule, scaled by z / f_rule
(`_with_gradient_of`): then a * d(out)/da = a * f_rule^T(R / f_rule) with R = z * dL/dz, which is
the rule. The forward values are unchanged. Layers are intercepted with `nn.intercept_methods`, so
the model's own forward is used (no second copy of the architecture); the whole is one jitted
vjp over a batch (images are independent in eval mode).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.weights.preprocessing import PREPROCESSING

DEFAULT_EPSILON = 0.01      # dense and BatchNorm layers (relative to activations of order 1)
DEFAULT_STABILIZER = 1e-9   # keeps z+ and z^B denominators away from zero


def input_bounds(preprocessing: str) -> tuple[np.ndarray, np.ndarray]:
  """(low, high) per input channel: where uint8 0 and 255 land after `PREPROCESSING[name]`."""
  if preprocessing not in PREPROCESSING:
    raise ValueError(f"preprocessing must be one of {sorted(PREPROCESSING)}, got {preprocessing!r}")
  spec = PREPROCESSING[preprocessing]
  mean, std = np.asarray(spec["mean"], np.float64), np.asarray(spec["std"], np.float64)
  low, high = (0.0 - mean) / std, (255.0 * spec["scale"] - mean) / std
  return low.astype(np.float32), high.astype(np.float32)


def _stabilize(z, eps: float):
  return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _with_gradient_of(z, z_rule, eps: float):
  """Value `z`; backward pass through `z_rule`, scaled by z / z_rule (see the module doc)."""
  scale = jax.lax.stop_gradient(z / _stabilize(z_rule, eps))
  return jax.lax.stop_gradient(z) + (z_rule - jax.lax.stop_gradient(z_rule)) * scale


class _Rules:
  """The interceptor applying the LRP rules to one traced forward pass.

  `low`/`high` are the z^B bounds, broadcast to the input's shape and differentiated like it.
  """

  def __init__(self, low, high, epsilon: float, stabilizer: float):
    self.low, self.high = low, high
    self.epsilon, self.stabilizer = epsilon, stabilizer
    self.seen_conv = False   # the first conv met is the input layer (z^B)
    self.inner = False       # inside our own conv re-evaluation: no rules there

  def _conv(self, module: nn.Conv, x, kernel):
    """`module`'s convolution of `x` with another kernel and no bias."""
    self.inner = True
    try:
      bare = module.clone(parent=None, use_bias=False)
      return bare.apply({"params": {"kernel": kernel}}, x)
    finally:
      self.inner = False

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if self.inner or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    if isinstance(module, (nn.Dense, nn.BatchNorm)):
      z = next_fun(*args, **kwargs)
      return _with_gradient_of(z, z, self.epsilon)
    if isinstance(module, nn.Conv):
      x = args[0]
      z = next_fun(*args, **kwargs)
      kernel = module.variables["params"]["kernel"]
      plus, minus = jnp.maximum(kernel, 0), jnp.minimum(kernel, 0)
      if not self.seen_conv:
        self.seen_conv = True
        z_rule = (self._conv(module, x, kernel) - self._conv(module, self.low, plus)
                  - self._conv(module, self.high, minus))
      else:
        z_rule = self._conv(module, x, plus)
      return _with_gradient_of(z, z_rule, self.stabilizer)
    return next_fun(*args, **kwargs)


def _explainable(model: nn.Module) -> nn.Module:
  # Frozen blocks hide behind a stop_gradient, and the rules recognise flax's own Conv; the
  # params are the same either way.
  changes = {}
  if getattr(model, "frozen_blocks", 0):
    changes["frozen_blocks"] = 0
  if getattr(model, "conv_impl", "xla") != "xla":
    changes["conv_impl"] = "xla"
  return model.clone(**changes) if changes else model


def make_lrp_fn(model: nn.Module, preprocessing: str = "torchvision", *,
                epsilon: float = DEFAULT_EPSILON, stabilizer: float = DEFAULT_STABILIZER):
  """A jitted fn(variables, images, targets) -> dict(cam, heatmap, relevance, probs, targets,
  logits).

  images [N, H, W, 3] normalised with `PREPROCESSING[preprocessing]` (which sets the z^B bounds);
  targets [N] int class per image, -1 = the predicted class. relevance [N, H, W, 3] per input
  value (sums to the explained logit minus what biases and epsilon absorbed); heatmap [N, H, W]
  its sum over channels; cam [N, H, W] the positive part scaled per image to [0, 1] (as Grad-CAM's,
  for overlays).
  """
  model = _explainable(model)
  low, high = input_bounds(preprocessing)

  def lrp_fn(variables, images, targets):
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    lo = jnp.broadcast_to(jnp.asarray(low, images.dtype), images.shape)
    hi = jnp.broadcast_to(jnp.asarray(high, images.dtype), images.shape)

    def forward(x, lo, hi):
      with nn.intercept_methods(_Rules(lo, hi, epsilon, stabilizer)):
        return model.apply(variables, x, train=False)

    logits, vjp_fn = jax.vjp(forward, images, lo, hi)
    chosen = jnp.where(targets < 0, jnp.argmax(logits, axis=-1), targets)
    gx, glo, ghi = vjp_fn(jax.nn.one_hot(chosen, logits.shape[-1], dtype=logits.dtype))
    # z^B's bound terms land on lo/hi; elsewhere (no conv first) they are zero.
    relevance = images * gx + lo * glo + hi * ghi
    heatmap = jnp.sum(relevance, axis=-1)
    positive = jax.nn.relu(heatmap)
    peak = jnp.max(positive, axis=(1, 2), keepdims=True)
    cam = jnp.where(peak > 0, positive / jnp.where(peak > 0, peak, 1.0), 0.0)
    return dict(cam=cam, heatmap=heatmap, relevance=relevance, logits=logits,
                probs=jax.nn.softmax(logits, axis=-1), targets=chosen)

  return jax.jit(lrp_fn)


@functools.lru_cache(maxsize=8)
def _cached_lrp_fn(model, preprocessing, epsilon, stabilizer):
  return make_lrp_fn(model, preprocessing, epsilon=epsilon, stabilizer=stabilizer)


def lrp(model: nn.Module, variables, images, targets=None, *, preprocessing: str = "torchvision",
        epsilon: float = DEFAULT_EPSILON, stabilizer: float = DEFAULT_STABILIZER) -> dict:
  """LRP of one batch; targets None = each image's predicted class. See make_lrp_fn."""
  images = jnp.asarray(images)
  if targets is None:
    targets = jnp.full((images.shape[0],), -1, jnp.int32)
  fn = _cached_lrp_fn(model, preprocessing, float(epsilon), float(stabilizer))
  return fn(variables, images, jnp.asarray(targets, jnp.int32))
