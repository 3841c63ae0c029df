"""Strips outputs from notebooks so that they are committed clean (`make notebooks-strip`).

  python notebooks/strip_outputs.py [--check] NOTEBOOK...

Removes code cells' outputs and execution counts, per-cell execution metadata (timings, scroll and
collapse state) and the notebook's kernel-reported language details; keeps sources, cell ids, tags
and the kernelspec. Writes the file as Jupyter does (nbformat: 1-space indent, sorted keys).
With --check nothing is written: exit status 1 and the names of the notebooks that would change.
Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CELL_METADATA_DROPPED = ("execution", "ExecuteTime", "collapsed", "scrolled")


def strip(nb: dict) -> dict:
  """The notebook (nbformat 4 JSON) without outputs; modifies and returns `nb`."""
  for cell in nb.get("cells", []):
    if cell.get("cell_type") == "code":
      cell["outputs"] = []
      cell["execution_count"] = None
    for key in CELL_METADATA_DROPPED:
      cell.get("metadata", {}).pop(key, None)
  meta = nb.setdefault("metadata", {})
  language = meta.get("language_info", {}).get("name")
  meta.pop("widgets", None)
  if language:
    meta["language_info"] = {"name": language}
  return nb


def dumps(nb: dict) -> str:
  return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
  check = "--check" in argv
  files = [Path(a) for a in argv if a != "--check"]
  if not files:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  changed = []
  for path in files:
    text = path.read_text(encoding="utf-8")
    clean = dumps(strip(json.loads(text)))
    if clean != text:
      changed.append(path)
      if not check:
        path.write_text(clean, encoding="utf-8")
  verb = "have outputs or execution metadata (run `make notebooks-strip`)" if check else "stripped"
  for path in changed:
    print(f"{path}: {verb}")
  return 1 if check and changed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
