"""The unit every reader yields: one image file with its label and patient."""

from __future__ import annotations

import dataclasses

# Class order everywhere in cxr_jax (index 0, 1, 2).
LABELS = ("covid", "normal", "pneumonia")


@dataclasses.dataclass(frozen=True)
class Record:
  """One source image before decoding.

  Attributes:
    path: absolute path of the image file.
    label: one of LABELS.
    patient_id: the source's patient id, prefixed with the source.
    patient_group: patients known to be the same person share a group; splits are made on it.
    source: the collection the image comes from (e.g. ieee8023, nih-chestxray14).
  """
  path: str
  label: str
  patient_id: str
  patient_group: str
  source: str


@dataclasses.dataclass(frozen=True)
class Reject:
  """A file left out of the dataset, and why (every left-out file gets one)."""
  file: str
  reason: str

  def to_json(self) -> dict:
    return {"file": self.file, "reason": self.reason}
