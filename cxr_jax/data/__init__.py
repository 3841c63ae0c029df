"""Chest X-ray data layer: readers, preprocessing, TFDS builder, splits, input pipeline.

The names below load their module on first use (PEP 562): the builder and the input pipeline
import TensorFlow (about 6 s), which loading a trained model and predicting never need, so
`from cxr_jax.data.records import LABELS` or `cxr_jax.data.preprocess` stay TensorFlow-free.
"""

import importlib

_HOMES = {
    "BuiltDataset": "build", "DataBuildError": "build", "build_dataset": "build",
    "FINDINGS": "findings", "multi_hot": "findings",
    "make_dataset": "pipeline",
    "LABELS": "records", "NO_LABEL": "records", "Record": "records",
    "held_out_groups": "splits", "make_findings_splits": "splits", "make_splits": "splits",
    "test_groups": "splits",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
  if name not in _HOMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
  globals()[name] = value   # later look-ups skip this function
  return value


def __dir__():
  return sorted(set(globals()) | set(_HOMES))
