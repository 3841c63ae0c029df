"""PNG plots of an evaluation: ROC and PR curves per class, confusion matrix, reliability curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOT_FILES = dict(roc="roc.png", pr="pr.png", confusion="confusion_matrix.png",
                  reliability="reliability.png", ood="ood.png")


def _save(fig, path: Path) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path.name


def _per_class_axes(names):
  fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
  return fig, axes[0]


def plot_roc(metrics: dict, path: Path) -> str:
  fig, axes = _per_class_axes(metrics["class_names"])
  for ax, name in zip(axes, metrics["class_names"], strict=True):
    m, curves = metrics["per_class"][name], metrics["curves"][name]
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    if curves:
      ax.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], lw=2)
      ax.set_title(f"{name} vs rest: AUC {m['roc_auc']:.3f}")
    else:
      ax.set_title(f"{name}: ROC undefined")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
  return _save(fig, path)


def plot_pr(metrics: dict, path: Path) -> str:
  fig, axes = _per_class_axes(metrics["class_names"])
  for ax, name in zip(axes, metrics["class_names"], strict=True):
    m, curves = metrics["per_class"][name], metrics["curves"][name]
    prevalence = m["positives"] / max(m["positives"] + m["negatives"], 1)
    ax.axhline(prevalence, color="0.7", lw=1, ls="--")  # a random ranking's precision
    if curves:
      ax.step(curves["pr"]["recall"], curves["pr"]["precision"], where="post", lw=2)
      ax.set_title(f"{name} vs rest: AP {m['average_precision']:.3f}")
    else:
      ax.set_title(f"{name}: PR undefined")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
  return _save(fig, path)


def plot_confusion(metrics: dict, path: Path) -> str:
  cm = np.asarray(metrics["confusion_matrix"])
  names = metrics["class_names"]
  fig, ax = plt.subplots(figsize=(4.5, 4))
  ax.imshow(cm, cmap="Blues")
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(j, i, str(cm[i, j]), ha="center", va="center",
              color="white" if cm[i, j] > cm.max() / 2 else "black")
  ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names,
         yticklabels=names, xlabel="predicted", ylabel="true",
         title=f"accuracy {metrics['accuracy']:.3f} (n={metrics['num_examples']})")
  return _save(fig, path)


def plot_reliability(metrics: dict, path: Path) -> str:
  cal = metrics["calibration"]
  bins = [b for b in cal["bins"] if b["count"]]
  fig, ax = plt.subplots(figsize=(4.5, 4))
  ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
  centers = [(b["lower"] + b["upper"]) / 2 for b in cal["bins"]]
  width = cal["bins"][0]["upper"] - cal["bins"][0]["lower"]
  ax.bar(centers, [b["accuracy"] or 0.0 for b in cal["bins"]], width=width * 0.9, alpha=0.5,
         label="accuracy per bin")
  ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="observed")
  ax.set(xlabel="top-class confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
         title=f"reliability: ECE {cal['ece']:.3f}")
  ax.legend(loc="upper left")
  return _save(fig, path)


def plot_ood(metrics: dict, path: Path) -> str:
  """Left: each score's risk-coverage curve (this set, pooled with the test split for another
  set), a dot where its threshold cuts. Right: the share of each source each score flags."""
  o = metrics["ood"]
  name = "this" if o["is_reference"] else "pooled"
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for score, sel in o["selective"][name].items():
    rc = sel["risk_coverage"]
    line, = left.plot(rc["coverage"], rc["risk"], lw=2, label=f"{score}: AURC {rc['aurc']:.3f}")
    if sel["kept"]:
      left.plot([sel["kept"]], [1 - sel["accuracy_kept"]], "o", color=line.get_color())
  left.axhline(rc["risk_all"], color="0.7", lw=1, ls="--", label="keeping every image")
  left.set(xlabel="coverage (share of images kept)", ylabel="error rate of kept images",
           xlim=(0, 1), ylim=(0, None),
           title="risk-coverage" + ("" if o["is_reference"] else ", with the test split"))
  left.legend(loc="upper left", fontsize=8)
  columns = ([] if o["is_reference"] else ["reference"]) + o["sources"]
  width = 0.8 / len(o["flagged"])
  for j, (score, flagged) in enumerate(o["flagged"].items()):
    right.bar(np.arange(len(columns)) + j * width, [flagged[c] for c in columns], width,
              label=score)
  right.axhline(1 - o["fit"]["keep"], color="0.7", lw=1, ls="--", label="validation")
  right.set_xticks(np.arange(len(columns)) + 0.4 - width / 2,
                   ["test split" if c == "reference" else c for c in columns], fontsize=8)
  right.set(ylabel="share flagged", ylim=(0, 1.02),
            title=f"flagged (thresholds keep {100 * o['fit']['keep']:.0f} % of validation)")
  right.legend(fontsize=8)
  return _save(fig, path)


def write_plots(metrics: dict, out_dir: Path) -> dict:
  """Writes all plots into `out_dir`; returns {kind: file name}."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  writers = dict(roc=plot_roc, pr=plot_pr, confusion=plot_confusion, reliability=plot_reliability)
  if (metrics.get("ood") or {}).get("defined"):
    writers["ood"] = plot_ood
  return {kind: fn(metrics, out_dir / PLOT_FILES[kind]) for kind, fn in writers.items()}
