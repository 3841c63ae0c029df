"""One cell of Lee et al.'s fine-tuning ablation: configs/ablation.py:arch=vgg19,ft=3

Arguments (comma separated key=value, all optional): arch (vgg16|vgg19), ft (trainable blocks 0..5),
size (image size), fold.
"""

from configs import default


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
  return c
