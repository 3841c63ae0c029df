"""Chest X-ray data layer: readers, preprocessing, TFDS builder, splits, input pipeline.

The names below load their module on first use (PEP 562): the builder and the input pipeline
import TensorFlow (about 6 s), which loading a trained model and predicting never need, so
`from cxr_jax.data.records import LABELS` or `cxr_jax.data.preprocess` stay TensorFlow-free.
"""

from cxr_jax import lazy

_HOMES = {
    "BuiltDataset": "build", "DataBuildError": "build", "build_dataset": "build",
    "FINDINGS": "findings", "multi_hot": "findings",
    "make_dataset": "pipeline",
    "LABELS": "records", "NO_LABEL": "records", "Record": "records",
    "cell_table": "splits", "check_within": "splits", "held_out_groups": "splits",
    "missing_cells": "splits", "make_findings_splits": "splits", "make_splits": "splits",
    "test_groups": "splits",
}

__getattr__, __dir__, __all__ = lazy.attach(__name__, _HOMES)
