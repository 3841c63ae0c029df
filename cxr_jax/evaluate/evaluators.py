"""The evaluators a config can name (`config.eval.evaluators`): name -> the evaluators it makes
from the run's config. The interface is `evaluator.Evaluator`; to add one, write it beside what it
computes and register it here (ARCHITECTURE.md, "Where to add").
"""

from __future__ import annotations

from collections.abc import Callable

from cxr_jax.evaluate.evaluator import Computed, Evaluator
from cxr_jax.evaluate.external import External, external_names
from cxr_jax.evaluate.findings import findings_evaluation
from cxr_jax.evaluate.probes import source_probes
from cxr_jax.evaluate.run import LoadedRun
from cxr_jax.evaluate.shortcuts import heatmap_lung_share, lung_probes, robustness_probes
from cxr_jax.evaluate.workdir import Split

# config.eval.evaluators' names -> the evaluators they make from the run's config.
REGISTRY: dict[str, Callable] = {
    "test": lambda config: [Split("test")],
    "val": lambda config: [Split("val")],
    "held_out": lambda config: [Split("held_out")],
    "external": lambda config: [External(spec, name) for spec, name in
                                external_names(config.eval.get("external", ())).items()],
    "source_probe": lambda config: [Computed("source_probe", source_probes)],
    "lung_probes": lambda config: [Computed("lung_probes", lung_probes)],
    "heatmap_lung_share": lambda config: [Computed("heatmap_lung_share", heatmap_lung_share)],
    "temperature": lambda config: [Computed("temperature", LoadedRun.validation_fit)],
    # the robustness ablation's per-run probes, one file at the top of the run (as before)
    # a findings-task run's (stage 1 of twice transfer) per-finding test AUCs, its metrics.json
    "findings": lambda config: [Computed("", findings_evaluation, "metrics.json")],
    "robustness_probes": lambda config: [Computed("", robustness_probes,
                                                  "robustness_probes.json")],
}


def from_config(config, names=None) -> list[Evaluator]:
  """The evaluators `names` (default config.eval.evaluators) make; an unknown name is an error
  that lists the known ones. `config` may be None for names that read none ("external" does)."""
  names = config.eval.get("evaluators", ("test", "external")) if names is None else names
  unknown = [n for n in names if n not in REGISTRY]
  if unknown:
    raise ValueError(f"config.eval.evaluators: unknown {unknown}; known: {sorted(REGISTRY)}")
  return [ev for n in names for ev in REGISTRY[n](config)]
