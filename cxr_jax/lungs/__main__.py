"""python -m cxr_jax.lungs train|evaluate|overlays|all [--out=results/lungs] [--set FIELD=VALUE ...]

train     trains the lung U-Net of the recipe (`cxr_jax.lungs.recipe.Recipe`, fields overridable
          with --set) on the annotation set ($CXR_LUNG_MASKS, default ../shared/data/lung-masks)
          and stores it in $CXR_JAX_WEIGHTS/lungs; a stored model of the same recipe and data is
          reused (--retrain trains again).
evaluate  held-out Dice / IoU per lung and box IoU -> OUT/quality.json, OUT/quality.md.
overlays  predicted masks on images of every cxr3 and cxr-external source -> OUT/overlays.png.
all       the three in order (`make lungs`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import sys

from cxr_jax import machine, paths
from cxr_jax.lungs import annotations as annotations_lib
from cxr_jax.lungs import quality, segment
from cxr_jax.lungs.recipe import Recipe


def parse_overrides(items) -> Recipe:
  """Recipe() with `FIELD=VALUE` overrides (VALUE a Python literal, or a bare string)."""
  fields = {f.name for f in dataclasses.fields(Recipe)}
  changes = {}
  for item in items or ():
    field, sep, value = item.partition("=")
    if not sep or field not in fields:
      raise ValueError(f"--set {item!r}: need FIELD=VALUE with FIELD one of {sorted(fields)}")
    try:
      changes[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      changes[field] = value
  return Recipe().replace(**changes)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cxr_jax.lungs", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("command", choices=("train", "evaluate", "overlays", "all"))
  parser.add_argument("--out", default="results/lungs", help="where results files go")
  parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help="recipe override")
  parser.add_argument("--retrain", action="store_true", help="train even if stored")
  parser.add_argument("--annotations", default=None,
                      help=f"annotation folder (default {paths.default_lung_masks_root()})")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  paths.use_compilation_cache()
  try:
    recipe = parse_overrides(args.set)
    seg = segment.load_or_train(recipe, annotations_root=args.annotations,
                                retrain=args.retrain, log=print)
  except (ValueError, annotations_lib.AnnotationError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"lung segmenter {seg.version}: trained in {seg.meta.get('train_seconds', 0):.0f} s, "
        f"validation Dice {seg.meta.get('best_val_dice', float('nan')):.3f} "
        f"[{machine.summary()}]")
  if args.command in ("evaluate", "all"):
    result = quality.evaluate(seg, annotations_lib.read(args.annotations))
    path = quality.write(result, args.out)
    s = result["summary"]
    print(f"held-out Dice {s['dice']['mean']:.3f} (image-left lung "
          f"{s['dice_image_left']['mean']:.3f}, image-right {s['dice_image_right']['mean']:.3f}), "
          f"IoU {s['iou']['mean']:.3f} -> {path}")
  if args.command in ("overlays", "all"):
    print(f"overlays -> {quality.write_overlays(seg, args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
