"""Adds held-out runs trained in another --mode=loso workdir (e.g. on another machine, after the
first workdir was lost) to this folder's table, and rewrites loso.md / .csv / .json / .png with
cxr_jax's own LOSO functions (`experiments.loso.table_row`, `write`).

  python results/loso_multisource_128px/add_runs.py LOSO_WORKDIR

The committed rows stay as they are. The "seen" figures of every row come from the all-sources
run's test split, stored in `results/audit_multisource_128px/audit.json` (`internal`): the same
run as this table's reference (test accuracy 0.849 on 979 images, and every committed row's seen
figures equal to its `within_source`), so a row added later reads its seen figure from there.
Each added run's held-out evaluation is copied to without_<source>/ as the others are.
"""

import json
import shutil
import sys
from pathlib import Path

import ml_collections

from cxr_jax.experiments import grid, loso, runner

HERE = Path(__file__).resolve().parent
AUDIT = HERE.parent / "audit_multisource_128px" / "audit.json"


def reference_row(committed: dict) -> dict:
  """The reference run's row: its headline as committed, its per-source figures from the audit."""
  internal = json.loads(AUDIT.read_text())["internal"]
  if internal["accuracy"] != committed["test_accuracy"]:
    raise SystemExit(f"{AUDIT} is not this table's reference run")
  return {loso.REFERENCE: True, "fold": 0, **committed, "within_source": internal["within_source"]}


def main(workdir: Path) -> None:
  doc = json.loads((HERE / "loso.json").read_text())
  rows = {f"without_{r['held_out_source']}_fold{r['fold']}": r for r in doc["rows"]}
  status = dict(doc["status"])
  for directory in sorted((workdir / runner.RUNS_DIR).glob("without_*_fold*")):
    if not runner.is_finished(directory):
      continue
    config = ml_collections.ConfigDict(json.loads((directory / "config.json").read_text()))
    run = grid.Run(cell=directory.name.rsplit("_fold", 1)[0], fold=int(config.data.fold),
                   values=(), config=config)
    held = json.loads((directory / "eval_held_out" / "metrics.json").read_text())
    internal = json.loads((directory / runner.METRICS_FILE).read_text())
    rows[run.name] = loso.table_row(run, held, internal)
    status[run.name] = json.loads((workdir / "loso.json").read_text())["status"].get(run.name,
                                                                                   "trained")
    out = HERE / f"without_{config.data.held_out_source}"
    out.mkdir(exist_ok=True)
    shutil.copy(directory / "eval_held_out" / "metrics.json", out / "held_out_metrics.json")
    shutil.copy(directory / "eval_held_out" / "report.md", out / "held_out_report.md")
  rows["all_sources_fold0"] = reference_row(doc["reference"]["0"])
  loso.write(HERE, [], rows, status, None)


if __name__ == "__main__":
  main(Path(sys.argv[1]))
