"""Experiments: k-fold cross-validation, the fine-tuning ablation, config sweeps,
leave-one-source-out (`run_loso`), the source-robustness ablation (`run_robustness`) and twice
transfer (`run_twice_transfer`).

`run_experiment(config, workdir, mode)` trains every run (grid cell x fold) in its own workdir
under `<workdir>/runs/`, skipping finished ones, and writes the tables and figures.
"""

from cxr_jax.experiments.experiment import MODES, ExperimentIncomplete, plan, run_experiment
from cxr_jax.experiments.loso import run_loso
from cxr_jax.experiments.robustness import run_robustness
from cxr_jax.experiments.twice import run_twice_transfer

__all__ = ["MODES", "ExperimentIncomplete", "plan", "run_experiment", "run_loso",
           "run_robustness", "run_twice_transfer"]
