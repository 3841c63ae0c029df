"""Training the lung U-Net on the annotation set: augmentation, loss, loop (single device, jit).

Augmentation is a pure function of (seed, epoch, example index), so a rerun of a recipe trains
the same model; the kept params are those of the epoch with the best validation Dice.
"""

from __future__ import annotations

import logging
import time

import cv2
import jax
import numpy as np
import optax

from cxr_jax import imaging
from cxr_jax.lungs import unet


def to_input(images: np.ndarray, preprocessing: str) -> np.ndarray:
  """uint8 [N, S, S] grayscale -> float32 [N, S, S, 3], normalised as the classifier's batches."""
  return imaging.normalise_images(images[..., None], preprocessing)


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: int):
  """(uint8 [S, S], float32 [S, S] soft mask or None): area-averaged, so the target keeps the
  boundary's sub-pixel position."""
  small = imaging.resize_square(image, size)
  if mask is None:
    return small, None
  soft = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
  return small, soft


def augment(image: np.ndarray, mask: np.ndarray, recipe, rng: np.random.Generator):
  """One random acquisition-like variant of (uint8 image [S, S], float mask [S, S])."""
  size = image.shape[0]
  scale = 1.0 + rng.uniform(-recipe.scale, recipe.scale)
  angle = rng.uniform(-recipe.rotation, recipe.rotation)
  shift = rng.uniform(-recipe.shift, recipe.shift, size=2) * size
  matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
  matrix[:, 2] += shift
  warp = dict(dsize=(size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  image = cv2.warpAffine(image, matrix, flags=cv2.INTER_LINEAR, **warp)
  mask = cv2.warpAffine(mask, matrix, flags=cv2.INTER_LINEAR, **warp)
  if rng.uniform() < recipe.clahe_p:
    image = imaging.clahe(image, 2.0, 8)
  x = image.astype(np.float32) / 255.0
  x = x ** np.exp(rng.uniform(-recipe.gamma, recipe.gamma))
  x = (x - 0.5) * (1.0 + rng.uniform(-recipe.contrast, recipe.contrast)) + 0.5
  x = x + rng.uniform(-recipe.brightness, recipe.brightness)
  x = x * 255.0 + rng.normal(0.0, recipe.noise, x.shape)
  return np.clip(np.round(x), 0, 255).astype(np.uint8), mask


def batch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, epoch, index])


def loss_fn(logits, target, dice_weight: float):
  """Mean pixel BCE + dice_weight * (1 - soft Dice per image, averaged)."""
  bce = optax.sigmoid_binary_cross_entropy(logits, target).mean()
  prob = jax.nn.sigmoid(logits)
  inter = (prob * target).sum(axis=(1, 2))
  dice = (2 * inter + 1.0) / (prob.sum(axis=(1, 2)) + target.sum(axis=(1, 2)) + 1.0)
  return bce + dice_weight * (1.0 - dice.mean())


def make_optimizer(recipe, steps: int, frozen: tuple[str, ...]):
  warmup = max(1, steps // max(recipe.epochs, 1))
  schedule = optax.warmup_cosine_decay_schedule(0.0, recipe.learning_rate, warmup, max(steps, warmup + 1))
  opt = optax.adamw(schedule, weight_decay=recipe.weight_decay)
  # Frozen encoder blocks get no update (their gradient is zero; weight decay must not move them).
  labels = lambda params: {k: ("frozen" if k in frozen else "train") for k in params}  # noqa: E731
  return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)


def frozen_blocks(recipe) -> tuple[str, ...]:
  return tuple(f"block{i + 1}" for i in range(recipe.frozen_blocks))


def make_steps(model, recipe, optimizer):
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn(model.apply({"params": p}, x), y, recipe.dice_weight))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def predict(params, x):
    return model.apply({"params": params}, x)

  return jax.jit(train_step), jax.jit(predict)


def predict_logits(predict, params, images: np.ndarray, preprocessing: str, batch: int):
  """Logits [N, S, S] for uint8 [N, S, S] images, in fixed-size batches (one compilation); fewer
  images than a batch run as the next power of two (as prediction does), so the dataset build,
  which segments one image per call, runs a forward pass of one, not of `batch` (8x the work)."""
  out = []
  batch = min(batch, 1 << max(len(images) - 1, 0).bit_length())
  for i in range(0, len(images), batch):
    chunk = images[i:i + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(predict(params, to_input(padded, preprocessing)))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.float32)


def _mean_dice(logits: np.ndarray, targets: np.ndarray) -> float:
  pred, true = logits > 0, targets > 0.5
  inter = (pred & true).sum(axis=(1, 2))
  return float(np.mean(2 * inter / np.maximum(pred.sum(axis=(1, 2)) + true.sum(axis=(1, 2)), 1)))


def train(recipe, train_examples, val_examples, *, log=logging.info, epochs: int | None = None):
  """Trains a U-Net of `recipe`; returns (params, info) with the history and timings.

  `epochs` overrides recipe.epochs for short runs (tests); the schedule follows it.
  """
  epochs = recipe.epochs if epochs is None else epochs
  recipe = recipe.replace(epochs=epochs)
  size = recipe.image_size
  pairs = [resize_pair(e.image, e.mask, size) for e in train_examples if e.mask is not None]
  val = [resize_pair(e.image, e.mask, size) for e in val_examples if e.mask is not None]
  if not pairs:
    raise ValueError("no training images with masks")
  images = np.stack([p[0] for p in pairs])
  targets = np.stack([p[1] for p in pairs])
  val_images = np.stack([p[0] for p in val]) if val else images[:0]
  val_targets = np.stack([p[1] for p in val]) if val else targets[:0]

  model = unet.create(recipe)
  params, encoder_version, preprocessing = unet.init_params(
      model, recipe, jax.random.PRNGKey(recipe.seed))
  steps_per_epoch = len(images) // recipe.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(images)} training masks is fewer than a batch ({recipe.batch_size})")
  optimizer = make_optimizer(recipe, epochs * steps_per_epoch, frozen_blocks(recipe))
  opt_state = optimizer.init(params)
  train_step, predict = make_steps(model, recipe, optimizer)

  history, best, best_params = [], -1.0, params
  start = time.perf_counter()
  for epoch in range(epochs):
    order = np.random.default_rng([recipe.seed, epoch]).permutation(len(images))
    losses = []
    for s in range(steps_per_epoch):
      idx = order[s * recipe.batch_size:(s + 1) * recipe.batch_size]
      batch = [augment(images[i], targets[i], recipe, batch_rng(recipe.seed, epoch, int(i)))
               for i in idx]
      x = to_input(np.stack([b[0] for b in batch]), preprocessing)
      y = np.stack([b[1] for b in batch]).astype(np.float32)
      params, opt_state, loss = train_step(params, opt_state, x, y)
      losses.append(float(loss))
    val_dice = (_mean_dice(predict_logits(predict, params, val_images, preprocessing,
                                          recipe.batch_size), val_targets)
                if len(val_images) else float("nan"))
    history.append(dict(epoch=epoch + 1, loss=float(np.mean(losses)), val_dice=val_dice,
                        seconds=time.perf_counter() - start))
    log(f"lungs epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, val Dice {val_dice:.4f} "
        f"({time.perf_counter() - start:.0f} s)")
    if not len(val_images) or val_dice > best:
      best, best_params = val_dice, jax.tree.map(np.asarray, params)
  info = dict(history=history, best_val_dice=best, train_seconds=time.perf_counter() - start,
              train_masks=len(images), val_masks=len(val_images),
              encoder_weights=encoder_version, preprocessing=preprocessing)
  return best_params, info
