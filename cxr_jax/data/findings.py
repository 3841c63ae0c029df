"""NIH ChestX-ray14 findings: the 14 findings plus "No Finding", as multi-hot targets.

NIH's "Finding Labels" strings join the findings of one image with "|"
("Infiltration|Pneumonia"), or are "No Finding". These are the targets of the intermediate,
multi-label stage of twice transfer (ImageNet -> ChestX-ray14 findings -> the 3 classes).
"""

from __future__ import annotations

import numpy as np

NO_FINDING = "No Finding"

# NIH's canonical order, then "No Finding": output k of a findings head is FINDINGS[k].
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia", NO_FINDING,
)

_INDEX = {name: k for k, name in enumerate(FINDINGS)}


def parse_findings(text: str, where: str = "findings") -> list[str]:
  """The finding names of one '|'-joined string, checked; `where` names it in errors."""
  names = [part.strip() for part in str(text).split("|")]
  if not any(names):
    raise ValueError(f"{where}: empty findings string; expected '|'-joined names from "
                     f"{', '.join(FINDINGS)} ({NO_FINDING!r} for an image without findings).")
  for name in names:
    if name not in _INDEX:
      raise ValueError(f"{where}: unknown finding {name!r} in {text!r}; allowed (case and "
                       f"underscores as NIH writes them): {', '.join(FINDINGS)}.")
  # NIH never combines them; a string that does is corrupt, not a label to learn.
  if NO_FINDING in names and len(set(names)) > 1:
    raise ValueError(f"{where}: {NO_FINDING!r} combined with findings in {text!r}.")
  return names


def multi_hot(texts, where=None) -> np.ndarray:
  """float32 [N, len(FINDINGS)] targets of N '|'-joined finding strings.

  Args:
    texts: a sequence (list, numpy array) of strings such as "Effusion|Pneumonia".
    where: optional, one description per text used in errors (e.g. example ids or files);
      by default the error gives the text's position.
  Raises:
    ValueError naming the text and the allowed names, for an unknown or empty finding.
  """
  if isinstance(texts, str | bytes):
    raise TypeError("multi_hot takes a sequence of finding strings, not one string.")
  texts = list(texts)
  out = np.zeros((len(texts), len(FINDINGS)), np.float32)
  for i, text in enumerate(texts):
    label = f"text {i}" if where is None else str(where[i])
    for name in parse_findings(text, label):
      out[i, _INDEX[name]] = 1.0
  return out
