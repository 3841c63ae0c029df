"""The package's layers (ARCHITECTURE.md): lower layers never import higher ones, not even inside a
function, so there is no import circle to break with late imports."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cxr_jax"
# Layer of each top-level unit of cxr_jax; a unit may import only units of its layer or below.
LAYERS = {
    "files": 0, "paths": 0, "machine": 0, "config": 0, "cli": 0, "host_memory": 0, "lazy": 0,
    "ops": 1, "models": 1, "weights": 1, "checkpoint": 1, "imaging": 1,
    "data": 2, "lungs": 2,
    "evaluate": 3, "explain": 3,
    "train": 4, "predict": 4,
    "experiments": 5,
    "modes": 6,
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


def module_name(path: Path, package: Path = PACKAGE) -> str:
  parts = list(path.relative_to(package.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
  """Module -> the package's modules it imports anywhere in it (module or function level);
  `from pkg import name` counts as pkg.name where that is a module, else as pkg."""
  modules = {module_name(p, package): p for p in package.rglob("*.py")}
  root = package.name
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
          node.module.split(".")[0] == root):
        edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                  else node.module for a in node.names}
      elif isinstance(node, ast.Import):
        edges |= {a.name for a in node.names if a.name.split(".")[0] == root}
    graph[name] = {e for e in edges if e in modules and e != name}
  return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan): each an import circle."""
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        circles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return circles


def test_no_import_circle_between_modules():
  """Layers are checked between top-level units; a circle inside one unit (data.preprocess ->
  lungs.segment -> lungs.train -> data.preprocess, or models.plan <-> models.factory) needs this."""
  assert import_circles(import_graph()) == []


def test_the_circle_check_sees_a_function_level_circle(tmp_path):
  package = tmp_path / "cxr_jax"
  (package / "a").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "a" / "__init__.py").write_text("from cxr_jax.a.x import f\n")
  (package / "a" / "x.py").write_text("def f():\n  from cxr_jax.a import y\n")
  (package / "a" / "y.py").write_text("from cxr_jax.a import z\n")
  (package / "a" / "z.py").write_text("import cxr_jax.a.x\n")
  (package / "b.py").write_text("from cxr_jax.a import f\n")
  assert import_circles(import_graph(package)) == [["cxr_jax.a.x", "cxr_jax.a.y", "cxr_jax.a.z"]]
