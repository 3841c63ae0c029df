"""Starting a run from another run: twice transfer and output neuron keeping (Bassi & Attux 2022).

`config.model.init_from` names a trainer workdir (e.g. stage 1 of twice transfer, trained on NIH
findings); its kept (best) backbone, and BatchNorm statistics, replace the ImageNet ones. The head
is new, unless `config.model.keep_neurons` lists "new:old" class pairs: those output neurons (and
the hidden head layers feeding them) keep the old run's weights.
"""

from __future__ import annotations

from pathlib import Path

from cxr_jax import weights
from cxr_jax.data.records import LABELS
from cxr_jax.models import neuron_keeping

TASKS = ("classes", "findings")


def task_of(config) -> str:
  task = config.data.get("task", "classes")
  if task not in TASKS:
    raise ValueError(f"config.data.task={task!r}: use one of {TASKS}")
  return task


def class_names(config) -> tuple[str, ...]:
  """The names of a config's outputs, in order."""
  if task_of(config) == "findings":
    from cxr_jax.data.findings import FINDINGS

    return tuple(FINDINGS)
  return LABELS


def transferred_variables(params: dict, batch_stats: dict, config):
  """(params, batch_stats, preprocessing, version) initialised from config.model.init_from."""
  from cxr_jax import checkpoint  # checkpoint imports the models; keep this module light

  source = Path(config.model.init_from)
  previous = checkpoint.load_trained(source, "best")
  if previous.config.model.arch != config.model.arch:
    raise ValueError(f"config.model.init_from={source}: that run trained "
                     f"{previous.config.model.arch}, this one is {config.model.arch}")
  old = previous.variables
  backbone = {k: v for k, v in old["params"].items() if k != "head"}
  new_params = weights.merge_pretrained(params, backbone)
  pairs = tuple(config.model.get("keep_neurons", ()))
  if pairs:
    mapping = neuron_keeping.neuron_mapping(pairs, class_names(config),
                                            class_names(previous.config))
    new_params = dict(new_params, head=neuron_keeping.keep_output_neurons(
        params["head"], old["params"]["head"], mapping))
  if batch_stats:
    batch_stats = weights.merge_pretrained(batch_stats, old.get("batch_stats", {}))
  kept = f" keeping {', '.join(pairs)}" if pairs else ""
  version = f"{previous.versions.get('weights', '?')} -> {source.name}{kept}"
  return new_params, batch_stats, previous.preprocessing, version
