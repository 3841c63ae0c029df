"""Decoding and preprocessing of one image file, done once at build time (OpenCV, pydicom).

decode -> grayscale uint8 -> lung crop (optional) -> CLAHE (optional) -> square resize. 16-bit
images and DICOM are stretched linearly from their minimum to their maximum onto 0..255 (after DICOM's modality
and VOI LUTs), because their stored range (10, 12 or 16 bits) varies between sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import cv2
import numpy as np

# Bump when the output of `preprocess` changes for the same input, so old builds are not reused.
PREPROCESS_VERSION = 1


class DecodeError(ValueError):
  """The file is not a readable image; the message is the reject reason."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  image_size: int
  clahe: bool = True
  clahe_clip_limit: float = 2.0
  clahe_tile_grid: int = 8
  crop: str = "none"         # "lungs": crop to the predicted lungs' box (+ crop_margin) first
  crop_margin: float = 0.05
  lungs: str = ""            # version of the lung segmenter that cropped (part of the build hash)

  @classmethod
  def from_data_config(cls, data_config) -> PreprocessConfig:
    crop = str(data_config.get("crop", cls.crop))
    if crop not in ("none", "lungs"):
      raise ValueError(f"data.crop must be 'none' or 'lungs', got {crop!r}")
    return cls(int(data_config.image_size), bool(data_config.clahe),
               float(data_config.clahe_clip_limit), int(data_config.clahe_tile_grid),
               crop, float(data_config.get("crop_margin", cls.crop_margin)))

  def with_lungs(self) -> PreprocessConfig:
    """This config with the lung segmenter's version filled in (crop="lungs"; trains the
    segmenter once if it is not stored), so a new segmenter means a new build."""
    if self.crop != "lungs":
      return self
    from cxr_jax.lungs import segment  # Only lung-cropped builds need the segmenter.
    return dataclasses.replace(self, lungs=segment.default_segmenter().version)

  def to_json(self) -> dict:
    out = dict(dataclasses.asdict(self), version=PREPROCESS_VERSION)
    if self.crop == "none":  # builds from before the crop existed keep their hash
      for key in ("crop", "crop_margin", "lungs"):
        out.pop(key)
    return out


@dataclasses.dataclass(frozen=True)
class Processed:
  image: np.ndarray      # uint8 [size, size, 1]
  png: bytes             # the same image, PNG-encoded (what TFDS stores)
  orig_height: int
  orig_width: int
  sha1: str              # of the file's bytes
  lung_fallback: str = ""  # crop="lungs": why the whole image was kept ("" = cropped)


def _is_dicom(data: bytes, path: str) -> bool:
  return data[128:132] == b"DICM" or path.lower().endswith((".dcm", ".dicom"))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Stretches an integer or float image linearly from its min..max onto 0..255."""
  pixels = pixels.astype(np.float64)
  lo, hi = float(pixels.min()), float(pixels.max())
  if hi <= lo:
    return np.zeros(pixels.shape, np.uint8)
  return np.round((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def decode_dicom(data: bytes) -> np.ndarray:
  """DICOM -> uint8 grayscale: modality LUT (rescale), VOI LUT (window), MONOCHROME1 inverted."""
  import pydicom  # Imported here: only DICOM sources need it.
  from pydicom.pixels import apply_modality_lut, apply_voi_lut
  try:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    pixels = ds.pixel_array
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
      pixels = pixels[0]  # Multi-frame: the first frame is the radiograph.
    if pixels.ndim == 3:
      return cv2.cvtColor(to_uint8(pixels), cv2.COLOR_RGB2GRAY)
    pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
  except Exception as e:  # pydicom raises many types for broken or unsupported files.
    raise DecodeError(f"unreadable DICOM ({type(e).__name__}: {e})") from e
  image = to_uint8(pixels)
  return 255 - image if photometric == "MONOCHROME1" else image


def _is_truncated(data: bytes) -> bool:
  """JPEG and PNG files cut short still decode in OpenCV (grey bottom), so check their end."""
  tail = data.rstrip(b"\x00\r\n ")
  if data[:3] == b"\xff\xd8\xff":
    return not tail.endswith(b"\xff\xd9")
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return b"IEND" not in tail[-16:]
  return False


def decode(data: bytes, path: str = "") -> np.ndarray:
  """File bytes -> 2-D uint8 grayscale image. Raises DecodeError with the reason."""
  if not data:
    raise DecodeError("empty file")
  if _is_dicom(data, path):
    return decode_dicom(data)
  if _is_truncated(data):
    raise DecodeError("truncated image file (no end marker)")
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if image is None:
    raise DecodeError("not a decodable image (PNG, JPEG, BMP, TIFF or DICOM)")
  if image.ndim == 3:
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    image = cv2.cvtColor(image, code) if image.shape[2] > 1 else image[..., 0]
  if image.dtype != np.uint8:
    image = to_uint8(image)
  return image


def clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
  return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(image)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes (aspect ratio not kept) to size x size; area averaging when shrinking."""
  if image.shape == (size, size):
    return image
  shrinking = size * size < image.shape[0] * image.shape[1]
  interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
  return cv2.resize(image, (size, size), interpolation=interpolation)


def crop_to_lungs(image: np.ndarray, config: PreprocessConfig, name: str) -> tuple[np.ndarray, str]:
  """(the image cropped to its lungs' box + margin, "") or, when the predicted mask fails its
  quality check, (the whole image, the reason): never a silent crop to nothing."""
  from cxr_jax.lungs import masks, segment
  segmenter = segment.default_segmenter()
  if config.lungs and config.lungs != segmenter.version:
    raise ValueError(f"this build was made with lung segmenter {config.lungs}, the stored one is "
                     f"{segmenter.version}: rebuild (or restore that segmenter)")
  found = segmenter.lungs(image, name=name)
  if not found.check.ok:
    return image, found.check.reason
  top, left, bottom, right = masks.crop_box(found.mask, config.crop_margin)
  return image[top:bottom, left:right], ""


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
  """2-D uint8 image -> uint8 [size, size, 1]."""
  if config.clahe:
    image = clahe(image, config.clahe_clip_limit, config.clahe_tile_grid)
  return resize_square(image, config.image_size)[..., None]


def process_file(path: str, config: PreprocessConfig) -> Processed:
  """Reads, hashes, decodes, preprocesses and PNG-encodes one file. Raises DecodeError/OSError."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    gray = decode(data, path)
    if gray.ndim != 2 or min(gray.shape) < 2:
      raise DecodeError(f"unexpected image shape {gray.shape}")
    orig = gray.shape
    fallback = ""
    if config.crop == "lungs":
      gray, fallback = crop_to_lungs(gray, config, path)
    image = preprocess(gray, config)
  except cv2.error as e:  # OpenCV rejects some decodable but odd images (e.g. huge, 1-pixel)
    raise DecodeError(f"OpenCV cannot process the image ({e.err})") from e
  ok, png = cv2.imencode(".png", image)
  if not ok:
    raise DecodeError("PNG encoding failed")
  return Processed(image, png.tobytes(), int(orig[0]), int(orig[1]),
                   hashlib.sha1(data).hexdigest(), fallback)
