"""The evaluators a config can name (`config.eval.evaluators`): name -> the evaluators it makes
from the run's config. The interface is `evaluator.Evaluator`; to add one, write it beside what it
computes and register it here (ARCHITECTURE.md, "Where to add").
"""

from __future__ import annotations

from collections.abc import Callable

from cxr_jax.evaluate.evaluator import Evaluator, run_evaluators  # noqa: F401 (one import site)
from cxr_jax.evaluate.external import External, external_names
from cxr_jax.evaluate.probes import SourceProbe
from cxr_jax.evaluate.shortcuts import HeatmapLungShare, LungProbes, RobustnessProbes
from cxr_jax.evaluate.workdir import Split, TemperatureFit

# config.eval.evaluators' names -> the evaluators they make from the run's config.
REGISTRY: dict[str, Callable] = {
    "test": lambda config: [Split("test")],
    "val": lambda config: [Split("val")],
    "held_out": lambda config: [Split("held_out")],
    "external": lambda config: [External(spec, name) for spec, name in
                                external_names(config.eval.get("external", ())).items()],
    "source_probe": lambda config: [SourceProbe()],
    "lung_probes": lambda config: [LungProbes()],
    "heatmap_lung_share": lambda config: [HeatmapLungShare()],
    "temperature": lambda config: [TemperatureFit()],
    "robustness_probes": lambda config: [RobustnessProbes()],
}


def from_config(config, names=None) -> list[Evaluator]:
  """The evaluators `names` (default config.eval.evaluators) make; an unknown name is an error
  that lists the known ones."""
  names = config.eval.get("evaluators", ("test", "external")) if names is None else names
  unknown = [n for n in names if n not in REGISTRY]
  if unknown:
    raise ValueError(f"config.eval.evaluators: unknown {unknown}; known: {sorted(REGISTRY)}")
  return [ev for n in names for ev in REGISTRY[n](config)]
