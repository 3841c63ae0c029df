"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018), batched and jitted.

The model convention (cxr_jax.models): every conv layer's ReLU output passes through
`self.perturb(f"{conv}_out", y)` inside its block, so `perturbations[block][f"{conv}_out"]` is a
zero tensor whose gradient is d(logit)/d(activation). The activation itself is taken from
`intermediates[block][f"{conv}_out"]` if the model sows it there, else it is the ReLU of that conv
module's output, captured with `capture_intermediates`.

Layer names: "block5/conv3" (a conv layer), "block5/conv3_out" (the same) or "block5" (its last
conv layer; any block can be chosen).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.evaluate.inference import inference_variables

METHODS = ("gradcam", "gradcam++")
DEFAULT_LAYER = "block5/conv3"


def resolve_layer(perturbations: dict, layer: str) -> tuple[str, str]:
  """(block, perturbation name) of `layer` in the model's perturbation tree."""
  block, _, conv = layer.partition("/")
  if block not in perturbations:
    raise ValueError(f"explain layer {layer!r}: no block {block!r}; blocks: {sorted(perturbations)}")
  names = sorted(perturbations[block], key=lambda n: int("".join(c for c in n if c.isdigit()) or 0))
  if not conv:
    return block, names[-1]
  name = conv if conv.endswith("_out") else f"{conv}_out"
  if name not in perturbations[block]:
    convs = [n.removesuffix("_out") for n in names]
    raise ValueError(f"explain layer {layer!r}: block {block} has convs {convs}")
  return block, name


def _explainable(model: nn.Module) -> nn.Module:
  # Frozen blocks sit behind a stop_gradient, which would zero their gradients; the params are
  # the same with frozen_blocks=0.
  if getattr(model, "frozen_blocks", 0):
    return model.clone(frozen_blocks=0)
  return model


def cam_weights(acts: jax.Array, grads: jax.Array, method: str) -> jax.Array:
  """Channel weights [N, C] from activations and gradients [N, h, w, C]."""
  if method == "gradcam":
    return jnp.mean(grads, axis=(1, 2))
  if method == "gradcam++":
    # Closed form for an exponential of the logit (Chattopadhay et al., eq. 19): the exp factor
    # cancels in alpha and only rescales the weights, which the normalisation removes.
    g2 = grads ** 2
    denom = 2.0 * g2 + jnp.sum(acts, axis=(1, 2), keepdims=True) * g2 * grads
    alpha = jnp.where(denom != 0.0, g2 / jnp.where(denom != 0.0, denom, 1.0), 0.0)
    return jnp.sum(alpha * jax.nn.relu(grads), axis=(1, 2))
  raise ValueError(f"explain method must be one of {METHODS}, got {method!r}")


def cam_from_grads(acts: jax.Array, grads: jax.Array, size: tuple[int, int],
                   method: str = "gradcam") -> tuple[jax.Array, jax.Array]:
  """ReLU(sum_c w_c A_c), upsampled bilinearly to `size` and scaled per image to [0, 1].

  Returns (cam [N, *size] in [0, 1], raw [N, h, w] before upsampling). An all-zero map (no
  positive evidence) stays zero.
  """
  weights = cam_weights(acts, grads, method)
  raw = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", acts, weights))
  up = jax.image.resize(raw, (raw.shape[0], *size), method="bilinear")
  peak = jnp.max(up, axis=(1, 2), keepdims=True)
  cam = jnp.where(peak > 0, up / jnp.where(peak > 0, peak, 1.0), 0.0)
  return jnp.clip(cam, 0.0, 1.0), raw


def _layer_activation(block_intermediates: dict, name: str) -> jax.Array:
  # A model may sow the perturbed activation itself under the perturbation's name; otherwise
  # the VGG convention holds: the activation is the ReLU of the conv module's output.
  if name in block_intermediates:
    return block_intermediates[name][0]
  return jax.nn.relu(block_intermediates[name.removesuffix("_out")]["__call__"][0])


def make_cam_fn(model: nn.Module, layer: str = DEFAULT_LAYER, method: str = "gradcam"):
  """A jitted fn(variables, images, targets) -> dict(cam, raw, probs, targets).

  images [N, H, W, 3] normalised as for training; targets [N] int class per image, -1 = the
  predicted class. cam [N, H, W] in [0, 1]; raw [N, h, w] the map at the layer's resolution;
  probs [N, num_classes]; targets the classes explained.
  """
  if method not in METHODS:
    raise ValueError(f"explain method must be one of {METHODS}, got {method!r}")
  model = _explainable(model)

  def cam_fn(variables, images, targets):
    variables = inference_variables(variables)
    shapes = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, mutable=["perturbations"])[1], variables,
        images)["perturbations"]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    block, name = resolve_layer(zeros, layer)
    conv_path = (block, name.removesuffix("_out"))

    def logits_fn(delta):
      perturbations = {**zeros, block: {**zeros[block], name: delta}}
      logits, state = model.apply(
          {**variables, "perturbations": perturbations}, images, train=False,
          capture_intermediates=lambda mdl, method_name: (
              method_name == "__call__" and tuple(mdl.path) == conv_path),
          mutable=["intermediates"])
      return logits, _layer_activation(state["intermediates"][block], name).astype(jnp.float32)

    logits, vjp_fn, acts = jax.vjp(logits_fn, zeros[block][name], has_aux=True)
    chosen = jnp.where(targets < 0, jnp.argmax(logits, axis=-1), targets)
    # Images are independent (no batch statistics at inference), so one backward pass of the
    # summed chosen logits gives every image's own gradient.
    (grads,) = vjp_fn(jax.nn.one_hot(chosen, logits.shape[-1], dtype=logits.dtype))
    cam, raw = cam_from_grads(acts, grads.astype(jnp.float32), images.shape[1:3], method)
    return dict(cam=cam, raw=raw, probs=jax.nn.softmax(logits, axis=-1), targets=chosen)

  return jax.jit(cam_fn)


@functools.lru_cache(maxsize=8)
def _cached_cam_fn(model, layer, method):
  return make_cam_fn(model, layer, method)


def gradcam(model: nn.Module, variables, images, targets=None, *, layer: str = DEFAULT_LAYER,
            method: str = "gradcam") -> dict:
  """Grad-CAM of one batch; targets None = each image's predicted class. See make_cam_fn."""
  images = jnp.asarray(images)
  if targets is None:
    targets = jnp.full((images.shape[0],), -1, jnp.int32)
  return _cached_cam_fn(model, layer, method)(variables, images, jnp.asarray(targets, jnp.int32))
