"""Figures of an experiment: a metric against the last grid axis, one line per other cell."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cxr_jax.experiments.grid import value_label  # noqa: E402

_AXIS_LABELS = {"model.trainable_blocks": "fine-tuned blocks (fine-tuning degree)",
                "data.image_size": "image size (px)",
                "data.train_fraction": "fraction of the training patient groups",
                "train.mixup_alpha": "mixup alpha (0 = off)"}


def plot_metric(groups: dict[str, dict], axes: list[str], metric: str, path: Path,
                title: str) -> Path:
  """`metric` (mean with its interval) against the last axis; one line per value of the others.

  Figure 5 of Lee et al. is this with axes (model.arch, model.trainable_blocks) and metric
  'covid/accuracy'.
  """
  x_axis, line_axes = axes[-1], axes[:-1]
  lines: dict[str, list] = {}
  for group in groups.values():
    entry = group["summary"].get(metric, {})
    if entry.get("mean") is None:
      continue
    label = " ".join(value_label(a, group["values"][a]) for a in line_axes) or metric
    lines.setdefault(label, []).append((group["values"][x_axis], entry))
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, points in lines.items():
    points.sort(key=lambda p: p[0])
    xs = [p[0] for p in points]
    ys = [p[1]["mean"] for p in points]
    lows = [p[1]["mean"] - p[1]["low"] if p[1].get("low") is not None else 0 for p in points]
    highs = [p[1]["high"] - p[1]["mean"] if p[1].get("high") is not None else 0 for p in points]
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    positions = xs if numeric else list(range(len(xs)))
    ax.errorbar(positions, ys, yerr=[lows, highs], marker="o", capsize=3, label=label)
    if not numeric:
      ax.set_xticks(positions, [str(x) for x in xs])
  if x_axis == "data.image_size":
    ax.set_xscale("log", base=2)
  ax.set_xlabel(_AXIS_LABELS.get(x_axis, x_axis))
  ax.set_ylabel(metric.replace("/", " "))
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(lines) > 1 or line_axes:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
