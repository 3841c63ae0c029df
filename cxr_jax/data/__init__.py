"""Chest X-ray data layer: readers, preprocessing, TFDS builder, splits, input pipeline."""

from cxr_jax.data.build import BuiltDataset, DataBuildError, build_dataset
from cxr_jax.data.findings import FINDINGS, multi_hot
from cxr_jax.data.pipeline import make_dataset
from cxr_jax.data.records import LABELS, NO_LABEL, Record
from cxr_jax.data.splits import held_out_groups, make_findings_splits, make_splits, test_groups

__all__ = ["FINDINGS", "LABELS", "NO_LABEL", "BuiltDataset", "DataBuildError", "Record",
           "build_dataset", "held_out_groups", "make_dataset", "make_findings_splits",
           "make_splits", "multi_hot", "test_groups"]
