"""Experiments: k-fold cross-validation, the fine-tuning ablation, config sweeps,
leave-one-source-out (`run_loso`), the source-robustness ablation (`run_robustness`) and twice
transfer (`run_twice_transfer`), each a `study.Study` (plan -> run all -> one row per run ->
write) run by `study.run_study` with one failure policy.

`run_experiment(config, workdir, mode)` trains every run (grid cell x fold) in its own workdir
under `<workdir>/runs/`, skipping finished ones, and writes the tables and figures.
"""

from cxr_jax.experiments import experiment, loso, robustness, twice
from cxr_jax.experiments.experiment import MODES, plan, run_experiment
from cxr_jax.experiments.loso import run_loso
from cxr_jax.experiments.robustness import run_robustness
from cxr_jax.experiments.study import ExperimentIncomplete, Study, report_study, run_study
from cxr_jax.experiments.twice import run_twice_transfer

# launch.py's experiment modes -> their studies.
STUDIES: dict[str, Study] = {
    **{mode: experiment.study(mode) for mode in MODES},
    "loso": loso.STUDY, "robustness": robustness.STUDY, "twice_transfer": twice.STUDY}

__all__ = ["MODES", "STUDIES", "ExperimentIncomplete", "Study", "plan", "report_study",
           "run_experiment", "run_loso", "run_robustness", "run_study", "run_twice_transfer"]
