"""Evaluation of a trained model: metrics with patient-group bootstrap CIs, per-source breakdown,
plots and report.md.

`compute_metrics` is pure (arrays in, JSON-serialisable dict out); `evaluate_workdir` runs a saved
model over a split and writes metrics.json, the plots and report.md. `findings_metrics` scores the
multi-label findings stage of twice transfer (per-finding AUC). `evaluate_external` scores the
kept model on collections outside the run's data (`cxr_jax.evaluate.external`).
"""

from cxr_jax.evaluate.audit import audit_workdir
from cxr_jax.evaluate.external import evaluate_external, format_headline
from cxr_jax.evaluate.findings import findings_metrics
from cxr_jax.evaluate.inference import make_predict_fn, predict_arrays
from cxr_jax.evaluate.summary import compute_metrics
from cxr_jax.evaluate.workdir import LoadedSplit, evaluate_split, evaluate_workdir

__all__ = ["LoadedSplit", "audit_workdir", "compute_metrics", "evaluate_external", "evaluate_split",
           "evaluate_workdir", "format_headline", "findings_metrics", "make_predict_fn",
           "predict_arrays"]
