"""Chest X-ray data layer: readers, preprocessing, TFDS builder, splits, input pipeline."""

from cxr_jax.data.build import BuiltDataset, DataBuildError, build_dataset
from cxr_jax.data.pipeline import make_dataset
from cxr_jax.data.records import LABELS, Record
from cxr_jax.data.splits import make_splits

__all__ = ["LABELS", "BuiltDataset", "DataBuildError", "Record", "build_dataset", "make_dataset",
           "make_splits"]
