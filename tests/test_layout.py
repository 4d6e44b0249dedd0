"""The package's layout: no import cycles, and the networks free of platform speed work.

Imports are read from the source (module level and inside functions alike), so a cycle hidden in
a function-level import counts as one.
"""

from __future__ import annotations

import ast
import pathlib

import byol_jax

PACKAGE = pathlib.Path(byol_jax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, modules: set[str]) -> set[str]:
  """The package's modules that the code ``source`` imports anywhere."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # "from byol_jax.data import sources" imports the module byol_jax.data.sources; a name
      # that is not a module comes from the package's own __init__.
      submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
      found.update(submodules or {node.module} & modules)
  return found


def _import_graph() -> dict[str, set[str]]:
  paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  return {name: _imports(path.read_text(), set(paths)) - {name} for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle through each module that lies on one (depth-first search)."""
  cycles, done = [], set()

  def visit(node: str, path: list[str]) -> None:
    if node in path:
      cycles.append([*path[path.index(node) :], node])
      return
    if node in done:
      return
    for nxt in sorted(graph[node]):
      visit(nxt, [*path, node])
    done.add(node)

  for node in sorted(graph):
    visit(node, [])
  return cycles


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c", "a"]]
  source = "def f():\n  from byol_jax import train\n"
  assert _imports(source, {"byol_jax.train"}) == {"byol_jax.train"}


def test_the_package_has_no_import_cycles():
  graph = _import_graph()
  assert "byol_jax.train" in graph
  assert "byol_jax.data.sources" in graph["byol_jax.run_data"]
  assert _cycles(graph) == []


def test_the_networks_know_nothing_of_the_cpu_lowering():
  graph = _import_graph()
  assert not any(m.startswith("byol_jax.cpu_ops") for m in graph["byol_jax.models"])
  tree = ast.parse((PACKAGE / "models.py").read_text())
  names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
  names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
  assert not names & {"conv_general_dilated", "intercept_methods", "slice_in_dim", "conv_impl"}
