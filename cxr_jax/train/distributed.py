"""Multi-process (multi-host) start-up."""

from __future__ import annotations

import jax
import ml_collections


def initialize(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize` from the config, or auto-detected (TPU pods, SLURM, ...).

  On CPU the cross-process collectives go through gloo; GPUs and TPUs use their own.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if config.coordinator_address:
    if config.num_processes < 1 or not 0 <= config.process_id < config.num_processes:
      raise ValueError(
          f"config.coordinator_address is set, so config.num_processes (got "
          f"{config.num_processes}) and config.process_id (got {config.process_id}) must be "
          "set too, with 0 <= process_id < num_processes")
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes, process_id=config.process_id)
  else:
    jax.distributed.initialize()
