"""How good the lung segmenter is: held-out Dice / IoU per lung, box IoU, the overlay picture.

  python -m cxr_jax.lungs evaluate --out=results/lungs    # quality.json, quality.md
  python -m cxr_jax.lungs overlays --out=results/lungs    # overlays.png
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from cxr_jax import files, machine, paths
from cxr_jax.lungs import annotations as annotations_lib
from cxr_jax.lungs import masks as masks_lib

LUNGS = ("image_left", "image_right")   # the patient's right lung, then the left one


def score_example(pred: np.ndarray, example) -> dict:
  """Dice / IoU (both lungs, and per lung) and per-lung box IoU of one annotated image."""
  row = dict(stem=example.stem, patient=example.patient, check=masks_lib.check(pred).reason or "ok")
  pred_lungs = masks_lib.split_lungs(pred)
  if example.mask is not None:
    row.update(dice=masks_lib.dice(pred, example.mask), iou=masks_lib.iou(pred, example.mask))
    for side, p, t in zip(LUNGS, pred_lungs, masks_lib.split_lungs(example.mask), strict=True):
      row[f"dice_{side}"] = masks_lib.dice(p, t)
      row[f"iou_{side}"] = masks_lib.iou(p, t)
  if example.boxes is not None:
    for side, p, b in zip(LUNGS, pred_lungs, example.boxes, strict=True):
      row[f"box_iou_{side}"] = masks_lib.box_iou(masks_lib.box(p), b) if p.any() else 0.0
  return row


def _stats(values) -> dict:
  v = np.asarray([x for x in values if x is not None], float)
  if not v.size:
    return dict(n=0)
  return dict(n=int(v.size), mean=float(v.mean()), median=float(np.median(v)),
              min=float(v.min()), p10=float(np.percentile(v, 10)))


def evaluate(segmenter, annotations) -> dict:
  """Scores `segmenter` on the test split of its own recipe's patient-grouped split."""
  recipe = segmenter.recipe
  test = annotations_lib.split(annotations.examples, seed=recipe.seed,
                               test_fraction=recipe.test_fraction,
                               val_fraction=recipe.val_fraction)["test"]
  preds = segmenter.masks([e.image for e in test])
  rows = [score_example(p, e) for p, e in zip(preds, test, strict=True)]
  keys = ["dice", "iou"] + [f"{m}_{s}" for m in ("dice", "iou", "box_iou") for s in LUNGS]
  summary = {k: _stats(r.get(k) for r in rows) for k in keys}
  return dict(
      version=segmenter.version, recipe=recipe.to_json(), machine=machine.describe(),
      train_seconds=segmenter.meta.get("train_seconds"),
      train_machine=segmenter.meta.get("machine"),
      best_val_dice=segmenter.meta.get("best_val_dice"),
      test_images=len(test), test_patients=len({e.patient for e in test}),
      qc_failed=[dict(stem=r["stem"], reason=r["check"]) for r in rows if r["check"] != "ok"],
      data=annotations.summary(), summary=summary, per_image=rows)


def render(result: dict) -> str:
  s = result["summary"]
  fmt = lambda k: (f"{s[k]['mean']:.3f} (median {s[k]['median']:.3f}, 10th pct "  # noqa: E731
                   f"{s[k]['p10']:.3f}, min {s[k]['min']:.3f}; n={s[k]['n']})"
                   if s[k].get("n") else "n/a")
  data = result["data"]
  lines = [
      "# Lung segmenter: held-out quality", "",
      f"Model `{result['version']}` (recipe: {result['recipe']['encoder']} encoder, "
      f"{result['recipe']['image_size']} px, {result['recipe']['epochs']} epochs); "
      f"trained in {result['train_seconds'] or float('nan'):.0f} s on "
      f"{(result.get('train_machine') or {}).get('cpu', '?')} "
      f"({' '.join((result.get('train_machine') or {}).get('isa', []))}).",
      "",
      f"Annotation set: {data['images']} images, {data['masks']} masks, {data['boxes']} with "
      f"boxes, {data['patients']} patients, {data['rejected']} rejected. Test split: "
      f"{result['test_images']} images of {result['test_patients']} patients never trained on "
      "(patient-grouped). Masks are scored at each image's stored size.", "",
      "| measure | both lungs | image-left (patient's right) | image-right (patient's left) |",
      "| --- | --- | --- | --- |",
      f"| Dice | {fmt('dice')} | {fmt('dice_image_left')} | {fmt('dice_image_right')} |",
      f"| IoU | {fmt('iou')} | {fmt('iou_image_left')} | {fmt('iou_image_right')} |",
      f"| box IoU vs annotated boxes | | {fmt('box_iou_image_left')} | "
      f"{fmt('box_iou_image_right')} |", "",
      f"Quality check failed on {len(result['qc_failed'])} of {result['test_images']} test "
      "images (these fall back to the whole image at use):", "",
  ]
  lines += [f"- `{f['stem']}`: {f['reason']}" for f in result["qc_failed"]] or ["- none"]
  lines += ["", "The masks are lungVAE model outputs (Selvan et al. 2020), not hand drawn, so "
            "Dice against them measures agreement with that model; the boxes are hand drawn.",
            "", f"Evaluated on {result['machine']['cpu']} "
            f"({' '.join(result['machine']['isa'])})."]
  return "\n".join(lines) + "\n"


def write(result: dict, out) -> Path:
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  files.write_json(out / "quality.json", result, indent=1)
  files.write_atomic(out / "quality.md", render(result))
  return out / "quality.md"


def overlay_samples(per_source: int = 3, seed: int = 0) -> list[tuple[str, Path]]:
  """(source, image path) for `per_source` images of every source of cxr3 and cxr-external."""
  data = paths.default_data_root()
  samples = []
  for root in (data, data.parent / "cxr-external"):
    manifest = root / "manifest.csv"
    if not manifest.is_file():
      continue
    with open(manifest, newline="") as f:
      rows = list(csv.DictReader(f))
    by_source: dict[str, list] = {}
    for row in rows:
      by_source.setdefault(row["source"], []).append(row)
    rng = np.random.default_rng(seed)
    for source in sorted(by_source):
      picks = rng.choice(len(by_source[source]), min(per_source, len(by_source[source])),
                         replace=False)
      samples += [(source, root / by_source[source][int(i)]["file"]) for i in sorted(picks)]
  return samples


def write_overlays(segmenter, out, *, per_source: int = 3) -> Path:
  """`out/overlays.png`: predicted lungs (red outline: failed the check) on sample images."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  samples = overlay_samples(per_source)
  if not samples:
    raise FileNotFoundError(f"no cxr3 / cxr-external manifest under {paths.default_data_root()}")
  images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for _, p in samples]
  found = segmenter.lungs_many(images, names=[str(p) for _, p in samples])
  raw = segmenter.masks(images)
  sources = sorted({s for s, _ in samples})
  fig, axes = plt.subplots(len(sources), per_source, figsize=(3 * per_source, 3 * len(sources)))
  axes = np.atleast_2d(axes)
  for ax in axes.ravel():
    ax.axis("off")
  col = {s: 0 for s in sources}
  for (source, path), image, f, mask in zip(samples, images, found, raw, strict=True):
    ax = axes[sources.index(source), col[source]]
    col[source] += 1
    ax.imshow(image, cmap="gray")
    if mask.any():
      ax.contour(mask, levels=[0.5], colors=["lime" if f.check.ok else "red"], linewidths=1.2)
    verdict = "ok" if f.check.ok else f"QC: {f.check.reason[:32]}"
    ax.set_title(f"{source}\n{path.name[:28]}\n{verdict}", fontsize=7)
  fig.suptitle(f"Lung segmenter {segmenter.version}: green = passed the check, red = failed "
               "(whole image used)", fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.98))
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  target = out / "overlays.png"
  tmp = target.with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=70)
  plt.close(fig)
  files.write_atomic(target, tmp.read_bytes())
  tmp.unlink()
  return target
