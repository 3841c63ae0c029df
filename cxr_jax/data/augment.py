"""Acquisition augmentation: vary how an X-ray was taken, stored and passed on, not what it shows.

Public COVID collections confound label with source, so a model can score by recognising a
collection's acquisition and appearance (detector resolution, sharpness, noise, windowing,
JPEG history, framing). These ops randomise exactly those traits on the uint8 image before
normalisation: random resized crop and small rotation (one warp), down-then-up resampling,
blur or sharpening, Gaussian noise, gamma / contrast / brightness, JPEG re-encoding.

Every draw is a TensorFlow stateless random op keyed by `key` (the pipeline derives it from
(seed, epoch, example)), so an image's augmentation is a pure function of that key and a resumed
epoch repeats it bit for bit. No horizontal flip: it moves the heart to the right (see
cxr_jax/config.py, data.acquisition).

The ops with explicit parameters (`warp`, `resample`, `blur`, `sharpen`, `add_noise`,
`adjust_intensity`, `jpeg`) work on float32 [H, W, 1] in 0..255; `acquire` draws their parameters.
"""

from __future__ import annotations

import math

import tensorflow as tf

APPLY_PROBABILITY = 0.5   # each op independently; ~4 of 9 per image
# Ranges at strength 1 (data.acquisition_strength scales each one's distance from "no change").
MIN_CROP_AREA = 0.8       # random resized crop keeps 80-100% of the area ...
MAX_ASPECT = 1.1          # ... with aspect ratio in [1/1.1, 1.1]
MAX_DEGREES = 7.0         # rotation in [-7, 7] degrees (patient positioning)
MIN_RESAMPLE = 0.5        # down-then-up by a factor in [0.5, 1] (detector / stored resolution)
MAX_BLUR_SIGMA = 1.2      # Gaussian blur sigma in [0.3, 1.2] px of the output size
MAX_SHARPEN = 1.0         # unsharp-mask amount in [0, 1] (sigma 1 px)
MAX_NOISE_STD = 8.0       # Gaussian noise std in [0, 8] grey levels
MAX_LOG_GAMMA = 0.25      # gamma in [e^-0.25, e^0.25] = [0.78, 1.28]
MAX_CONTRAST = 0.2        # contrast factor in [0.8, 1.2] around the image mean
MAX_BRIGHTNESS = 20.0     # brightness shift in [-20, 20] grey levels
MIN_JPEG_QUALITY = 30     # JPEG quality in [30, 95]
MAX_JPEG_QUALITY = 95
_BLUR_RADIUS = 3          # Gaussian kernel taps: 2 * radius + 1 (covers sigma <= 1.2 well)
_NUM_OPS = 9


def acquire(image: tf.Tensor, key: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
  """uint8 [H, W, 1] -> uint8 [H, W, 1]: each op applied with APPLY_PROBABILITY, a pure
  function of the stateless key (shape [2], int32/int64) and strength."""
  keys = tf.unstack(tf.random.experimental.stateless_split(key, 2 * _NUM_OPS))
  on = [_coin(k) for k in keys[:_NUM_OPS]]
  k = keys[_NUM_OPS:]
  s = float(strength)
  x = tf.cast(image, tf.float32)
  # Geometry first (positioning), then the detector (resolution, sharpness, noise), then the
  # display mapping, and the JPEG of whoever published the image last.
  x = _maybe(on[0] | on[1], lambda x: warp(x, _geometry(tf.shape(x), k[0], k[1], on[0], on[1], s)), x)
  x = _maybe(on[2], lambda x: resample(x, _uniform(k[2], 1.0 - (1.0 - MIN_RESAMPLE) * s, 1.0)), x)
  x = _maybe(on[3], lambda x: _blur_or_sharpen(x, k[3], s), x)
  x = _maybe(on[4], lambda x: add_noise(x, _uniform(k[4], 0.0, MAX_NOISE_STD * s), k[4]), x)
  gamma = tf.exp(_uniform(k[5], -MAX_LOG_GAMMA * s, MAX_LOG_GAMMA * s))
  contrast = _uniform(k[6], 1.0 - MAX_CONTRAST * s, 1.0 + MAX_CONTRAST * s)
  brightness = _uniform(k[7], -MAX_BRIGHTNESS * s, MAX_BRIGHTNESS * s)
  x = adjust_intensity(x, tf.where(on[5], gamma, 1.0), tf.where(on[6], contrast, 1.0),
                       tf.where(on[7], brightness, 0.0))
  low = max(1, round(MAX_JPEG_QUALITY - (MAX_JPEG_QUALITY - MIN_JPEG_QUALITY) * s))
  quality = tf.random.stateless_uniform([], k[8], low, MAX_JPEG_QUALITY + 1, tf.int32)
  x = _maybe(on[8], lambda x: jpeg(x, quality), x)
  return tf.ensure_shape(_to_uint8(x), image.shape)


# ------------------------------------------------------------------ random draws


def _coin(key) -> tf.Tensor:
  return tf.random.stateless_uniform([], key) < APPLY_PROBABILITY


def _uniform(key, low, high) -> tf.Tensor:
  return tf.random.stateless_uniform([], key, low, high)


def _maybe(apply, op, x) -> tf.Tensor:
  """op(x) when apply, else x untouched (tf.cond: an op not drawn costs nothing)."""
  return tf.cond(apply, lambda: op(x), lambda: x)


def _geometry(shape, crop_key, rotation_key, crop_on, rotation_on, s) -> tf.Tensor:
  """One output->input matrix for crop and rotation, so the image is resampled only once."""
  area = _uniform(crop_key, 1.0 - (1.0 - MIN_CROP_AREA) * s, 1.0)
  log_aspect = math.log(1.0 + (MAX_ASPECT - 1.0) * s)
  aspect = tf.exp(_uniform(tf.random.experimental.stateless_fold_in(crop_key, 1),
                           -log_aspect, log_aspect))
  offset = tf.random.stateless_uniform([2], tf.random.experimental.stateless_fold_in(crop_key, 2))
  crop = crop_matrix(shape, tf.where(crop_on, area, 1.0), tf.where(crop_on, aspect, 1.0), offset)
  degrees = _uniform(rotation_key, -MAX_DEGREES * s, MAX_DEGREES * s)
  return crop @ rotation_matrix(shape, tf.where(rotation_on, degrees, 0.0))


def _blur_or_sharpen(x, key, s) -> tf.Tensor:
  """Half the time a Gaussian blur, else an unsharp mask (scanners and viewers do both)."""
  choose, amount = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  sigma = _uniform(amount, 0.3, 0.3 + (MAX_BLUR_SIGMA - 0.3) * s)
  return tf.cond(_coin(choose), lambda: blur(x, sigma),
                 lambda: sharpen(x, _uniform(amount, 0.0, MAX_SHARPEN * s)))


# ------------------------------------------------------------------ ops with explicit parameters


def crop_matrix(shape, area, aspect, offset) -> tf.Tensor:
  """3x3 output->input pixel map of a crop of `area` (share of the image) and `aspect` (w/h)
  at relative `offset` (2 numbers in [0, 1]: where in the free room), resized to the full size."""
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  sx = tf.minimum(tf.sqrt(area * aspect), 1.0)   # crop side / image side
  sy = tf.minimum(tf.sqrt(area / aspect), 1.0)
  x0 = offset[0] * (1.0 - sx) * w
  y0 = offset[1] * (1.0 - sy) * h
  # Pixel centres: output x maps to input x0 + (x + 0.5) * sx - 0.5.
  return tf.stack([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5],
                   [0.0, 0.0, 1.0]])


def rotation_matrix(shape, degrees) -> tf.Tensor:
  """3x3 output->input pixel map of a rotation by `degrees` about the image centre."""
  cy = (tf.cast(shape[0], tf.float32) - 1.0) / 2.0
  cx = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
  t = degrees * (math.pi / 180.0)
  c, s = tf.cos(t), tf.sin(t)
  return tf.stack([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0.0, 0.0, 1.0]])


def warp(x, matrix) -> tf.Tensor:
  """Bilinear resampling through a 3x3 output->input map; outside pixels mirror the image."""
  transform = tf.reshape(matrix, [-1])[:8][None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=transform, output_shape=tf.shape(x)[:2], fill_value=0.0,
      interpolation="BILINEAR", fill_mode="REFLECT")
  return tf.ensure_shape(out[0], x.shape)


def resample(x, factor) -> tf.Tensor:
  """Down to `factor` of the side (area average) and back up (bilinear): lost fine detail, as
  from a lower-resolution detector or a smaller stored copy."""
  size = tf.shape(x)[:2]
  small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 1)
  down = tf.image.resize(x, small, method="area")
  return tf.ensure_shape(tf.image.resize(down, size, method="bilinear"), x.shape)


def _gaussian_taps(sigma) -> tf.Tensor:
  r = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
  taps = tf.exp(-0.5 * tf.square(r / sigma))
  return taps / tf.reduce_sum(taps)


def blur(x, sigma) -> tf.Tensor:
  """Separable Gaussian blur, borders mirrored (no dark frame)."""
  taps = _gaussian_taps(sigma)
  r = _BLUR_RADIUS
  padded = tf.pad(x[None], [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
  out = tf.nn.conv2d(padded, tf.reshape(taps, [-1, 1, 1, 1]), 1, "VALID")
  out = tf.nn.conv2d(out, tf.reshape(taps, [1, -1, 1, 1]), 1, "VALID")
  return tf.ensure_shape(out[0], x.shape)


def sharpen(x, amount) -> tf.Tensor:
  """Unsharp mask: x + amount * (x - blur(x, 1 px))."""
  return x + amount * (x - blur(x, 1.0))


def add_noise(x, std, key) -> tf.Tensor:
  """Additive Gaussian noise of `std` grey levels (quantum and electronic noise)."""
  return x + std * tf.random.stateless_normal(tf.shape(x), tf.random.experimental.stateless_fold_in(key, 1))


def adjust_intensity(x, gamma, contrast, brightness) -> tf.Tensor:
  """Gamma on 0..1, then contrast about the mean, then a brightness shift (windowing / LUTs)."""
  x = 255.0 * tf.pow(tf.clip_by_value(x, 0.0, 255.0) / 255.0, gamma)
  mean = tf.reduce_mean(x)
  return (x - mean) * contrast + mean + brightness


def jpeg(x, quality) -> tf.Tensor:
  """Encode to JPEG at `quality` and decode (integer DCT: deterministic)."""
  return tf.cast(tf.image.adjust_jpeg_quality(_to_uint8(x), quality), tf.float32)


def _to_uint8(x) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
