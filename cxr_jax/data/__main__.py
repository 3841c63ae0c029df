"""Builds the dataset and prints one JSON summary: images per split and label, patient groups
per split, rejected files with reasons.

  python -m cxr_jax.data --source=manifest:../shared/data/cxr3 --image_size=64 --data_dir=/tmp/d
  python -m cxr_jax.data --source=folder:/data/chest_xray --source=ieee8023:/data/covid-chestxray

Progress goes to stderr; stdout carries only the JSON. Exit status 1 when the build fails
(too many rejects, an empty class); the JSON then has 'error' and the report's rejects.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


def _default_data_config():
  """configs/default.py's data section (the repository root holds configs/)."""
  try:
    from configs.default import get_config
  except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from configs.default import get_config
  return get_config().data


def parse_args(argv):
  d = _default_data_config()
  p = argparse.ArgumentParser(prog="python -m cxr_jax.data", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", action="append", default=[],
                 help="KIND:PATH with KIND manifest|folder|ieee8023|nih; repeatable "
                      "(default manifest:$CXR_DATA)")
  p.add_argument("--image_size", type=int, default=d.image_size)
  p.add_argument("--data_dir", default=d.data_dir, help="TFDS data dir")
  p.add_argument("--clahe", action=argparse.BooleanOptionalAction, default=d.clahe)
  p.add_argument("--clahe_clip_limit", type=float, default=d.clahe_clip_limit)
  p.add_argument("--clahe_tile_grid", type=int, default=d.clahe_tile_grid)
  p.add_argument("--max_reject_fraction", type=float, default=d.max_reject_fraction)
  p.add_argument("--test_fraction", type=float, default=d.test_fraction)
  p.add_argument("--num_folds", type=int, default=d.num_folds)
  p.add_argument("--fold", type=int, default=d.fold)
  p.add_argument("--split_seed", type=int, default=d.split_seed)
  p.add_argument("--train_fraction", type=float, default=d.train_fraction)
  p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=d.balance)
  return p.parse_args(argv)


def data_config_from_args(args):
  d = _default_data_config()
  for key, value in vars(args).items():
    if key == "source":
      d.sources = tuple(value)
    else:
      setattr(d, key, value)
  return d


def main(argv=None) -> int:
  from cxr_jax import data
  from cxr_jax.data.summary import summarize
  data_config = data_config_from_args(parse_args(sys.argv[1:] if argv is None else argv))
  try:
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress to stdout.
      built = data.build_dataset(data_config)
      splits = data.make_splits(built.metadata, data_config)
  except (data.DataBuildError, FileNotFoundError, ValueError) as e:  # bad sources or settings
    report_path = getattr(e, "report_path", None)
    report = json.loads(report_path.read_text()) if report_path else {}
    print(json.dumps(dict(error=str(e), report=str(report_path or ""),
                          rejected=report.get("rejects", [])), indent=1))
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(summarize(built, splits, data_config), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
