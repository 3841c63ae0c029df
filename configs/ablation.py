"""Lee et al.'s fine-tuning ablation: the full grid, or one cell of it.

  configs/ablation.py                  the grid: arch in {vgg16, vgg19} x trainable blocks 0..5
                                       (python launch.py --config=configs/ablation.py --mode=ablation)
  configs/ablation.py:arch=vgg19,ft=3  one cell (train it, or --mode=cv for its folds)

Arguments (comma separated key=value, all optional): arch (vgg16|vgg19), ft (trainable blocks 0..5),
size (image size), fold. Without arch and ft the config holds the whole grid.
"""

from configs import default

GRID = "model.arch=vgg16,vgg19;model.trainable_blocks=0,1,2,3,4,5"


def _parse(arg: str) -> dict:
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r}: expected key=value (e.g. arch=vgg19,ft=3)")
    out[key.strip()] = value.strip()
  unknown = set(out) - {"arch", "ft", "size", "fold"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}: use arch, ft, size, fold")
  return out


def get_config(arg: str = ""):
  args = _parse(arg)
  c = default.get_config()
  c.model.arch = args.get("arch", "vgg16")
  c.model.trainable_blocks = int(args.get("ft", 2))
  c.data.image_size = int(args.get("size", c.data.image_size))
  c.data.fold = int(args.get("fold", 0))
  c.data.balance = True
  # A single cell has no grid; the grid's cells set arch and ft themselves.
  c.experiment.grid = "" if {"arch", "ft"} & set(args) else GRID
  return c
