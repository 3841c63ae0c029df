"""The unit every reader yields: one image file with its label and patient."""

from __future__ import annotations

import dataclasses

# Class order everywhere in cxr_jax (index 0, 1, 2).
LABELS = ("covid", "normal", "pneumonia")
# Metadata label of an image in none of LABELS (Record.label ""), e.g. an NIH image with only
# Atelectasis: it trains the findings stage but no 3-class split ever takes it.
NO_LABEL = -1


def label_index(label: str) -> int:
  """Index of a Record's label in LABELS, NO_LABEL for ""."""
  return LABELS.index(label) if label else NO_LABEL


@dataclasses.dataclass(frozen=True)
class Record:
  """One source image before decoding.

  Attributes:
    path: absolute path of the image file.
    label: one of LABELS, or "" for an image in none of them (kept for the findings task).
    patient_id: the source's patient id, prefixed with the source.
    patient_group: patients known to be the same person share a group; splits are made on it.
    source: the collection the image comes from (e.g. ieee8023, nih-chestxray14).
    findings: the source's own finding text, "" where unknown; for nih-chestxray14 NIH's
      "Finding Labels" ("Infiltration|Pneumonia", see cxr_jax.data.findings).
  """
  path: str
  label: str
  patient_id: str
  patient_group: str
  source: str
  findings: str = ""


@dataclasses.dataclass(frozen=True)
class Reject:
  """A file left out of the dataset, and why (every left-out file gets one)."""
  file: str
  reason: str

  def to_json(self) -> dict:
    return {"file": self.file, "reason": self.reason}
