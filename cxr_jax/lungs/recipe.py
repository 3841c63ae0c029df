"""The lung segmenter's recipe: every field that decides the trained model, documented here.

The stored model is named by a hash of this recipe and the annotation set's content
(`store.version`), so changing a field trains a new one and never reuses a stale one.
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Recipe:
  # Side of the square the segmenter sees (images are resized to it, aspect not kept, as the
  # classifier's preprocessing does); masks are scaled back to each image's own size.
  # Chosen by measurement (validation Dice, Xeon AMX 2 cores): VGG16 encoder at 96 px 0.940
  # after 5 epochs, 0.950 after 10 (211 s), 0.951 after 20; the from-scratch U-Net at 128 px
  # 0.923 after 30 epochs (293 s); the VGG16 encoder at 128 px costs 1.8x the 96 px step.
  image_size: int = 96
  # "vgg16": the first `encoder_blocks` VGG16 blocks with the project's ImageNet weights
  # (TernausNet-style U-Net); "none": the same U-Net with a narrow encoder from scratch.
  encoder: str = "vgg16"
  encoder_blocks: int = 4
  # Encoder blocks 1..frozen_blocks keep their ImageNet weights and cost no backward pass.
  frozen_blocks: int = 1
  # Decoder widths from the deepest level up (one per encoder block).
  decoder_widths: tuple[int, ...] = (128, 64, 32, 16)
  # Encoder widths when encoder="none".
  scratch_widths: tuple[int, ...] = (16, 32, 64, 128)
  epochs: int = 10
  batch_size: int = 8
  learning_rate: float = 1e-3   # Adam, cosine decay to 0 after a 1-epoch warm-up
  weight_decay: float = 1e-4
  dice_weight: float = 1.0      # loss = BCE + dice_weight * soft Dice loss
  # Augmentation (the set is small): affine (scale, rotation in degrees, shift as a share of the
  # side), brightness / contrast / gamma, CLAHE with probability `clahe_p` (the classifier's
  # images arrive CLAHE'd, raw ones do not), Gaussian noise (sd in 0..255 units). A pure
  # function of (seed, epoch, example): a rerun trains the same model.
  scale: float = 0.15
  rotation: float = 10.0
  shift: float = 0.08
  brightness: float = 0.15
  contrast: float = 0.2
  gamma: float = 0.25
  clahe_p: float = 0.5
  noise: float = 4.0
  seed: int = 0
  # Patient-grouped split of the annotation set: shares of the masked images.
  test_fraction: float = 0.2
  val_fraction: float = 0.1

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def key(self) -> str:
    return json.dumps(self.to_json(), sort_keys=True)

  @classmethod
  def from_json(cls, data: dict) -> Recipe:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
      raise ValueError(f"unknown lung recipe field(s) {unknown}; known: {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

  def replace(self, **changes) -> Recipe:
    return dataclasses.replace(self, **changes)
