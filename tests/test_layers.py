"""The package's layers (ARCHITECTURE.md): lower layers never import higher ones, not even inside a
function, so there is no import circle to break with late imports."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cxr_jax"
# Layer of each top-level unit of cxr_jax; a unit may import only units of its layer or below.
LAYERS = {
    "files": 0, "paths": 0, "machine": 0, "config": 0, "cli": 0, "host_memory": 0, "lazy": 0,
    "ops": 1, "models": 1, "weights": 1, "checkpoint": 1,
    "data": 2, "lungs": 2,
    "evaluate": 3, "explain": 3,
    "train": 4, "predict": 4,
    "experiments": 5,
}


def imported_units(path: Path) -> set[str]:
  """Top-level cxr_jax units a file imports anywhere in it (module or function level)."""
  units = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cxr_jax":
      parts = node.module.split(".")
      units |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
    elif isinstance(node, ast.Import):
      units |= {a.name.split(".")[1] for a in node.names
                if a.name.startswith("cxr_jax.")}
  return units


def unit_of(path: Path) -> str:
  rel = path.relative_to(PACKAGE)
  return rel.parts[0].removesuffix(".py")


def test_every_unit_has_a_layer():
  units = {unit_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
  assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS (ARCHITECTURE.md)"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
  own = unit_of(path)
  if own not in LAYERS:   # cxr_jax/__init__.py, __main__.py
    return
  above = {u for u in imported_units(path) if LAYERS.get(u, -1) > LAYERS[own]}
  assert not above, f"{path.relative_to(PACKAGE)} ({own}) imports higher layer(s) {sorted(above)}"


def test_the_checker_sees_function_level_imports(tmp_path):
  source = tmp_path / "m.py"
  source.write_text("def f():\n  from cxr_jax import train\n  import cxr_jax.experiments.grid\n")
  assert imported_units(source) == {"train", "experiments"}
