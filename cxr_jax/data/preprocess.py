"""Decoding and preprocessing of one image file, done once at build time (OpenCV, pydicom), and the
normalisation of stored uint8 images to the model's input, done per batch (`normalise_images`).

decode -> grayscale uint8 -> lung crop (optional) -> intensity standardisation (optional) ->
CLAHE (optional) -> square resize. 16-bit
images and DICOM are stretched linearly from their minimum to their maximum onto 0..255 (after DICOM's modality
and VOI LUTs), because their stored range (10, 12 or 16 bits) varies between sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import cv2
import numpy as np

from cxr_jax.data import intensity as intensity_lib

# Defined below data and lungs, which both use them (no import circle); used here and imported
# from here by the data package's callers.
from cxr_jax.imaging import (  # noqa: F401
  clahe,
  normalise_images,
  preprocessing_spec,
  resize_square,
  to_uint8,
)

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
  lungs: str = ""            # version of the lung segmenter used (part of the build hash)
  intensity: str = "none"    # "equalize" | "match" (cxr_jax.data.intensity), after the crop
  intensity_in_lungs: bool = False  # the intensity mapping from the lung pixels only

  @classmethod
  def from_data_config(cls, data_config) -> PreprocessConfig:
    crop = str(data_config.get("crop", cls.crop))
    if crop not in ("none", "lungs"):
      raise ValueError(f"data.crop must be 'none' or 'lungs', got {crop!r}")
    method = intensity_lib.check(str(data_config.get("intensity", cls.intensity)))
    # Without a mapping there is nothing to compute in the lungs: no segmenter, same build.
    in_lungs = bool(data_config.get("intensity_in_lungs", False)) and method != "none"
    return cls(int(data_config.image_size), bool(data_config.clahe),
               float(data_config.clahe_clip_limit), int(data_config.clahe_tile_grid),
               crop, float(data_config.get("crop_margin", cls.crop_margin)),
               intensity=method, intensity_in_lungs=in_lungs)

  @property
  def needs_lungs(self) -> bool:
    return self.crop == "lungs" or self.intensity_in_lungs

  def with_lungs(self) -> PreprocessConfig:
    """This config with the lung segmenter's version filled in (crop="lungs" or
    intensity_in_lungs; trains the segmenter once if it is not stored), so a new segmenter means
    a new build."""
    if not self.needs_lungs:
      return self
    from cxr_jax.lungs import segment  # Only builds that use the lungs need the segmenter.
    return dataclasses.replace(self, lungs=segment.default_segmenter().version)

  def to_json(self) -> dict:
    out = dict(dataclasses.asdict(self), version=PREPROCESS_VERSION)
    # Fields left at their defaults are left out: builds from before they existed keep their hash.
    if self.crop == "none":
      del out["crop"], out["crop_margin"]
    if not self.needs_lungs:
      del out["lungs"]
    if self.intensity == "none":
      del out["intensity"], out["intensity_in_lungs"]
    else:
      out["intensity_version"] = intensity_lib.VERSION
    if self.intensity == "match":  # another reference is another build
      out["intensity_reference"] = intensity_lib.REFERENCE_SHAPE
    return out


@dataclasses.dataclass(frozen=True)
class Processed:
  image: np.ndarray      # uint8 [size, size, 1]
  png: bytes             # the same image, PNG-encoded (what TFDS stores)
  orig_height: int
  orig_width: int
  sha1: str              # of the file's bytes
  # crop="lungs" / intensity_in_lungs: why the lung mask was not used, so the whole image was
  # kept and gave the intensity histogram ("" = the lungs were used, or not asked for).
  lung_fallback: str = ""


def _is_dicom(data: bytes, path: str) -> bool:
  return data[128:132] == b"DICM" or path.lower().endswith((".dcm", ".dicom"))


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


def find_lungs(image: np.ndarray, config: PreprocessConfig, name: str
               ) -> tuple[np.ndarray | None, str]:
  """(the predicted lung mask, "") or, when it fails its quality check, (None, the reason):
  callers then use the whole image, never a silent empty mask."""
  from cxr_jax.lungs import segment
  segmenter = segment.default_segmenter()
  if config.lungs and config.lungs != segmenter.version:
    raise ValueError(f"this build was made with lung segmenter {config.lungs}, the stored one is "
                     f"{segmenter.version}: rebuild (or restore that segmenter)")
  found = segmenter.lungs(image, name=name)
  return (found.mask, "") if found.check.ok else (None, found.check.reason)


def apply_lungs(image: np.ndarray, config: PreprocessConfig, name: str
                ) -> tuple[np.ndarray, np.ndarray | None, str]:
  """(image, lung mask, fallback reason) for the steps after decoding: cropped to the lungs'
  box + margin when crop="lungs" (mask cropped alike); segmented once for crop and intensity."""
  if not config.needs_lungs:
    return image, None, ""
  mask, reason = find_lungs(image, config, name)
  if mask is not None and config.crop == "lungs":
    from cxr_jax.lungs import masks
    top, left, bottom, right = masks.crop_box(mask, config.crop_margin)
    image, mask = image[top:bottom, left:right], mask[top:bottom, left:right]
  return image, mask, reason


def preprocess(image: np.ndarray, config: PreprocessConfig,
               lung_mask: np.ndarray | None = None) -> np.ndarray:
  """2-D uint8 image -> uint8 [size, size, 1]. The global histogram is standardised before
  CLAHE, so CLAHE's local contrast works on the same grey-level scale for every source (as it
  did on each source's own before); `lung_mask` (at the image's size) is used only when
  intensity_in_lungs, None = the whole image."""
  mask = lung_mask if config.intensity_in_lungs else None
  image = intensity_lib.standardise(image, config.intensity, mask)
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
    gray, lung_mask, fallback = apply_lungs(gray, config, path)
    image = preprocess(gray, config, lung_mask)
  except cv2.error as e:  # OpenCV rejects some decodable but odd images (e.g. huge, 1-pixel)
    raise DecodeError(f"OpenCV cannot process the image ({e.err})") from e
  ok, png = cv2.imencode(".png", image)
  if not ok:
    raise DecodeError("PNG encoding failed")
  return Processed(image, png.tobytes(), int(orig[0]), int(orig[1]),
                   hashlib.sha1(data).hexdigest(), fallback)
