"""Inference shared by train, evaluate, explain and predict: the one forward pass at inference
(`logits`; `make_outputs_fn` runs it block by block), class probabilities and pooled features for
batches of images."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Variable collections that explanation adds (zero perturbations, sown activations): never inputs
# of a prediction.
EXPLANATION_COLLECTIONS = ("perturbations", "intermediates")


def inference_variables(variables: dict) -> dict:
  """`variables` without the explanation collections: what every inference applies."""
  return {k: v for k, v in variables.items() if k not in EXPLANATION_COLLECTIONS}


def compute_variables(model: nn.Module, variables: dict) -> dict:
  """`variables` with the parameters already in the model's computation dtype, where the model
  rounds every parameter to that dtype on each call anyway (`PARAMS_IN_COMPUTE_DTYPE`: VGG, whose
  Conv and Dense layers promote kernel and bias; not DenseNet, whose BatchNorm keeps float32):
  the same outputs bit for bit, without converting ~15 M parameters on every batch (8 % of a
  bfloat16 forward pass on an AMX Xeon). For a pass over many batches: cast once, outside."""
  dtype = jnp.dtype(getattr(model, "dtype", None) or jnp.float32)
  if dtype == jnp.float32 or not getattr(model, "PARAMS_IN_COMPUTE_DTYPE", False):
    return variables
  return {**variables, "params": _cast_floats(variables["params"], dtype)}


@functools.partial(jax.jit, static_argnums=1)
def _cast_floats(tree, dtype):
  """Every floating leaf of `tree` cast to `dtype`, in one compiled program (not one per array
  shape: a cold start compiles it once, or reads it from the compilation cache)."""
  return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                      tree)


def logits(model: nn.Module, variables, images):
  """The model's outputs at inference (train=False): the forward pass every predict function of
  the package wraps (the trainer's eval step, `make_predict_fn`)."""
  return model.apply(variables, images, train=False)


def make_predict_fn(model: nn.Module):
  """A jitted fn(variables, images [N, H, W, 3]) -> probabilities [N, num_classes] (train=False)."""

  @jax.jit
  def predict(variables, images):
    return jax.nn.softmax(logits(model, variables, images).astype(np.float32), axis=-1)

  return predict


def stage_names(model) -> tuple[str, ...]:
  """The backbone's five blocks (VGG block1..5, DenseNet's stages), in forward order."""
  from cxr_jax.models.densenet import STAGE_NAMES
  from cxr_jax.models.vgg import BLOCK_NAMES

  return STAGE_NAMES if type(model).__name__.startswith("DenseNet") else BLOCK_NAMES


def last_stage(model) -> str:
  """The backbone's last block (VGG block5, DenseNet stage5): what the head reads."""
  return stage_names(model)[-1]


def _pooled(x):
  """A block's output [N, H, W, C] averaged over space, float32 [N, C]."""
  return jax.numpy.mean(x.astype(np.float32), axis=(1, 2))


THUMBNAIL = 16   # side of the input thumbnail the out-of-distribution scores read


def thumbnail(images):
  """The images' first channel (the grey film; the others repeat it) averaged over a THUMBNAIL x
  THUMBNAIL grid of equal cells, float32 [N, THUMBNAIL**2]: the input as acquisition and
  anatomy shape it, before any learnt filter. Sizes that are not a multiple of THUMBNAIL lose
  their last rows and columns (fewer than THUMBNAIL pixels)."""
  n, h, w = images.shape[:3]
  cell_h, cell_w = h // THUMBNAIL, w // THUMBNAIL
  x = images[:, :cell_h * THUMBNAIL, :cell_w * THUMBNAIL, 0].astype(np.float32)
  return x.reshape(n, THUMBNAIL, cell_h, THUMBNAIL, cell_w).mean(axis=(2, 4)).reshape(n, -1)


def make_feature_fn(model: nn.Module):
  """A jitted fn(variables, images) -> [N, C] float32: the last block's output, averaged over
  space (the representation every head starts from, whatever its kind)."""
  stop = last_stage(model)

  @jax.jit
  def features(variables, images):
    return _pooled(model.apply(variables, images, train=False, stop=stop))

  return features


def make_outputs_fn(model: nn.Module, *, head: bool = True):
  """A jitted fn(variables, images) -> {"probs", "logits" [N, num_classes], "features" [N, C],
  "blocks": {block: [N, C_block]}, "input": [N, THUMBNAIL**2]} (train=False): the forward pass of
  `logits` run block by block, so that one pass gives what the out-of-distribution scores read
  (`cxr_jax.evaluate.ood`) with the probabilities: "blocks" holds every block's output averaged
  over space, "features" the last one's (`make_feature_fn`'s), which the head reads, "input" the
  input's `thumbnail`. head=False: the blocks only, without "probs" and "logits" (images of
  another size than the run's, which a flattening head could not read)."""
  names = stage_names(model)

  @jax.jit
  def outputs(variables, images):
    x, start, blocks = images, "input", {}
    for name in names:
      x = model.apply(variables, x, train=False, start=start, stop=name)
      blocks[name], start = _pooled(x), name
    read = {"features": blocks[names[-1]], "blocks": blocks, "input": thumbnail(images)}
    if not head:
      return read
    out = model.apply(variables, x, train=False, start=start).astype(np.float32)
    return {"probs": jax.nn.softmax(out, axis=-1), "logits": out, **read}

  return outputs


def run_batches(fn, batches: Iterable[dict], *, per_device: bool = False):
  """fn's outputs over the real rows of `batches` (dicts with image, label, index, optional mask).

  `fn(images)` gets the batch's images flattened to [B, H, W, C], or as laid out per device
  ([D, B/D, H, W, C], for pmapped functions) with per_device=True; its output's leading axes match
  (an array, or a dict of arrays, each handled alike). Returns (outputs [N, ...] or a dict of them,
  labels [N] int, ids [N] int), padding dropped, in batch order. Padded batches run at full size,
  so there is one compilation per batch shape.
  """
  outputs, labels, ids = [], [], []
  for batch in batches:
    image = np.asarray(batch["image"])
    out = jax.tree.map(np.asarray, fn(image if per_device else
                                      image.reshape((-1,) + image.shape[-3:])))
    out = jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2 if per_device else 1:]), out)
    mask = np.asarray(batch["mask"]).reshape(-1) > 0 if "mask" in batch else slice(None)
    outputs.append(jax.tree.map(lambda o, mask=mask: o[mask], out))
    labels.append(np.asarray(batch["label"]).reshape(-1)[mask])
    ids.append(np.asarray(batch["index"]).reshape(-1)[mask])
  if not outputs:
    raise ValueError("no batches to predict on")
  return (jax.tree.map(lambda *o: np.concatenate(o), *outputs),
          np.concatenate(labels).astype(np.int64), np.concatenate(ids))


def predict_arrays(model: nn.Module, variables, batches: Iterable[dict], *, predict_fn=None):
  """Class probabilities of the model over `batches`: (probs [N, C] float32, labels [N], ids [N])
  over the real rows, in batch order (see `run_batches`)."""
  predict_fn = predict_fn or make_predict_fn(model)
  variables = compute_variables(model, inference_variables(variables))
  probs, labels, ids = run_batches(lambda images: predict_fn(variables, images), batches)
  return probs.astype(np.float32), labels, ids
