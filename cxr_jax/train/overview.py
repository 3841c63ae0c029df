"""Start-of-run summary of what trains and what stays frozen, per block."""

from __future__ import annotations

import logging

import jax
import numpy as np
from clu import parameter_overview

from cxr_jax.models.plan import FROZEN, TRAINABLE, FineTuningPlan


def block_counts(params, plan: FineTuningPlan) -> dict[str, dict[str, int]]:
  """{top-level module: {'trainable': n, 'frozen': n}} parameter counts."""
  labels = plan.param_labels(params)
  counts = {}
  for name in params:
    sizes = jax.tree.leaves(jax.tree.map(np.size, params[name]))
    kinds = jax.tree.leaves(labels[name])
    row = counts.setdefault(name, {TRAINABLE: 0, FROZEN: 0})
    for size, kind in zip(sizes, kinds, strict=True):
      row[kind] += int(size)
  return counts


def log_overview(params, plan: FineTuningPlan) -> dict:
  parameter_overview.log_parameter_overview(params)
  counts = block_counts(params, plan)
  lines = [f"{'module':<10}{'trainable':>14}{'frozen':>14}"]
  for name, row in counts.items():
    lines.append(f"{name:<10}{row[TRAINABLE]:>14,}{row[FROZEN]:>14,}")
  total_t = sum(r[TRAINABLE] for r in counts.values())
  total_f = sum(r[FROZEN] for r in counts.values())
  lines.append(f"{'total':<10}{total_t:>14,}{total_f:>14,}")
  logging.info("Fine-tuning degree FT%d:\n%s", plan.trainable_blocks, "\n".join(lines))
  return counts
