"""Evaluation of a trained model: metrics with patient-group bootstrap CIs, per-source breakdown,
plots and report.md.

`compute_metrics` is pure (arrays in, JSON-serialisable dict out); `evaluate_workdir` runs a saved
model over a split and writes metrics.json, the plots and report.md. `findings_metrics` scores the
multi-label findings stage of twice transfer (per-finding AUC). `evaluate_external` scores the
kept model on collections outside the run's data (`cxr_jax.evaluate.external`). Each evaluation
of a saved run is an evaluator (`evaluator.Evaluator`) that receives the run loaded once
(`run.LoadedRun`); `config.eval.evaluators` names the trainer's (`evaluators.REGISTRY`).

The names below load their module on first use (`cxr_jax.lazy`): prediction needs
`make_predict_fn` alone, not scikit-learn and SciPy (about 1 s of a cold start).
"""

from cxr_jax import lazy

_HOMES = {
    "audit_workdir": "audit",
    "Evaluator": "evaluator", "run_evaluators": "evaluator", "run_one": "evaluator", "from_config": "evaluators",
    "External": "external", "evaluate_external": "external", "format_headline": "external",
    "findings_metrics": "findings",
    "compute_variables": "inference", "make_outputs_fn": "inference", "make_predict_fn": "inference",
    "predict_arrays": "inference",
    "compute_metrics": "summary",
    "LoadedRun": "run", "LoadedSplit": "run", "evaluate_split": "workdir", "evaluate_workdir": "workdir",
    "Split": "workdir",
}

__getattr__, __dir__, __all__ = lazy.attach(__name__, _HOMES)
