"""Builds the dataset of a config's `data` section and prints one JSON summary: images per split
and label, patient groups per split, rejected files with reasons.

  python -m cxr_jax.data --source=manifest:../shared/data/cxr3 --config.data.image_size=64
  python -m cxr_jax.data --config.data.data_dir=/tmp/d               # manifest:$CXR_DATA, 224 px
  python -m cxr_jax.data --source=folder:/data/chest_xray --source=ieee8023:/data/covid-chestxray
  python -m cxr_jax.data --config=configs/quickstart.py      # the dataset that run trains on

The configuration is taken as launch.py takes it (cxr_jax.cli): --config=FILE (default the
package's, cxr_jax/config.py, where every data.* field is documented) and --config.data.FIELD=VALUE
overrides. One flag of its own: --source=KIND:PATH (repeatable) appends to config.data.sources;
with no source at all, manifest:$CXR_DATA.

Progress goes to stderr; stdout carries only the JSON. Exit status 1 when the build fails
(too many rejects, an empty class), the JSON then has 'error' and the report's rejects; 2 for a
bad flag.
"""

from __future__ import annotations

import contextlib
import json
import sys

from absl import flags

from cxr_jax import cli

PROG = "python -m cxr_jax.data"


def _define(flag_values):
  flags.DEFINE_multi_string(
      "source", [], "KIND:PATH with KIND manifest|folder|ieee8023|nih|rsna|siim; repeatable; "
      "appended to config.data.sources (no source at all: manifest:$CXR_DATA)",
      flag_values=flag_values)


def parse_args(argv):
  """The config of this command line (`--source`s appended to its data.sources)."""
  parsed = cli.parse(argv, prog=PROG, doc=__doc__, define=_define)
  config = parsed.config
  config.data.sources = tuple(config.data.sources) + tuple(parsed.source)
  return config


def main(argv=None) -> int:
  from cxr_jax import data
  from cxr_jax.data.summary import summarize
  data_config = parse_args(sys.argv[1:] if argv is None else argv).data
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
