"""The notebooks: committed without outputs, and run top to bottom in small mode, as CI does.

Each notebook runs in its own Jupyter kernel (nbclient) with the notebooks/ folder as working
directory and CXR_NOTEBOOK_WORKDIRS pointing at a temporary folder, so nothing is written into the
repository. explain.ipynb reuses the small run that quickstart.ipynb trained before it.
"""

import importlib.util
import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# (notebook, parameter overrides), in order (explain reuses the quick start's run). The ablation
# notebook renders the committed results/ by default; its second run trains and renders its tiny
# ablation, the path without results.
RUNS = (("quickstart", {}), ("explain", {}), ("ablation", {}),
        ("ablation", {"USE_COMMITTED": "False"}))
ORDER = tuple(dict.fromkeys(name for name, _ in RUNS))
_spec = importlib.util.spec_from_file_location("strip_outputs", NOTEBOOKS / "strip_outputs.py")
strip_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strip_outputs)


def test_every_notebook_is_executed_here():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_committed_notebook_has_no_outputs(name):
  path = NOTEBOOKS / f"{name}.ipynb"
  nb = json.loads(path.read_text())
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, (
          f"{path} has outputs: run `make notebooks-strip` before committing")
  assert strip_outputs.main(["--check", str(path)]) == 0, f"{path}: run `make notebooks-strip`"
  params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
  assert len(params) == 1 and "SMALL = True" in "".join(params[0]["source"]), (
      "one cell tagged 'parameters', with SMALL = True (what CI runs)")


def test_strip_removes_outputs_and_execution_metadata(tmp_path):
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1", id="a")])
  nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                execution_count=3)]
  nb.cells[0].execution_count = 3
  nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
  nb.cells[0].metadata["tags"] = ["parameters"]
  nb.metadata["language_info"] = {"name": "python", "version": "3.11.2"}
  path = tmp_path / "n.ipynb"
  nbformat.write(nb, path)
  assert strip_outputs.main(["--check", str(path)]) == 1
  assert strip_outputs.main([str(path)]) == 0
  clean = json.loads(path.read_text())
  assert clean["cells"][0]["outputs"] == [] and clean["cells"][0]["execution_count"] is None
  assert clean["cells"][0]["metadata"] == {"tags": ["parameters"]}
  assert clean["metadata"]["language_info"] == {"name": "python"}
  assert strip_outputs.main(["--check", str(path)]) == 0


@pytest.fixture(scope="module")
def notebook_workdirs(tmp_path_factory):
  return tmp_path_factory.mktemp("notebook_workdirs")


def _outputs(nb, kind):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


def _override(nb, overrides: dict):
  """Sets `NAME = value` lines of the cell tagged 'parameters' (as papermill would)."""
  cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  for name, value in overrides.items():
    lines = cell.source.split("\n")
    hits = [i for i, line in enumerate(lines) if line.startswith(f"{name} = ")]
    assert len(hits) == 1, f"parameter {name} not in the parameters cell"
    lines[hits[0]] = f"{name} = {value}"
    cell.source = "\n".join(lines)
  return nb


@pytest.mark.slow  # a kernel, then training or heatmaps at 48 px: 0.5-2 min each on 2 cores
@pytest.mark.parametrize(("name", "overrides"), RUNS,
                         ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in RUNS])
def test_notebook_runs_in_small_mode(name, overrides, notebook_workdirs, monkeypatch):
  path = NOTEBOOKS / f"{name}.ipynb"
  nb = _override(nbformat.read(path, as_version=4), overrides)
  monkeypatch.setenv("CXR_NOTEBOOK_WORKDIRS", str(notebook_workdirs))
  start = time.monotonic()
  # A failing cell raises CellExecutionError with the cell and its traceback.
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
  print(f"{name}.ipynb ran in {time.monotonic() - start:.0f} s")
  images = _outputs(nb, "image/png")
  markdown = "".join(o["data"]["text/markdown"] for o in _outputs(nb, "text/markdown"))
  if name == "quickstart":
    assert len(images) >= 4 and "Accuracy" in markdown   # ROC, confusion, overlays, predict
    assert (notebook_workdirs / "notebook_quickstart_small" / "metrics.json").is_file()
  elif name == "explain":
    assert len(images) >= 1 and "| LRP | wrong |" in markdown
  else:
    assert len(images) >= 2 and "| covid |" in markdown     # Figure 5 and the metric panels
    tiny = notebook_workdirs / "notebook_ablation_small" / "table2.csv"
    assert tiny.is_file() == (overrides.get("USE_COMMITTED") == "False" or not any(
        (NOTEBOOKS.parent / "results").glob("*/table2.csv")))
  # What CI ran, stripped, is what is committed (with the same overrides).
  committed = _override(nbformat.read(path, as_version=4), overrides)
  assert (strip_outputs.dumps(strip_outputs.strip(json.loads(nbformat.writes(nb))))
          == strip_outputs.dumps(strip_outputs.strip(json.loads(nbformat.writes(committed)))))
