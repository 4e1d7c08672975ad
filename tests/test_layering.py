"""Imports only go down the layers of docs/CONVENTIONS.md ("Layers").

Every module under rlvr_jax/ is parsed (never imported) and each of its
rlvr_jax imports, at module level or inside a function, is mapped to a layer.
The check fails naming the module, the line and the import when
- a module imports a higher layer;
- the pure core (algorithms/, rewards/) imports anything of ours outside
  itself, or a plotting, checkpoint or model library;
- a package is in no layer (a new package must be placed in the table);
- packages import each other in a cycle (also within one layer).
"""

from __future__ import annotations

import ast
import pathlib

_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Bottom to top; a module may import its own layer and the layers below.
# Keep in step with docs/CONVENTIONS.md.
LAYERS = (
    ("foundation", ("rlvr_jax.sharding", "rlvr_jax.checkpoints", "rlvr_jax.storage")),
    ("pure core", ("rlvr_jax.algorithms", "rlvr_jax.rewards")),
    ("models", ("rlvr_jax.models",)),
    ("sampling", ("rlvr_jax.sampling",)),
    ("data", ("rlvr_jax.data",)),
    ("envs", ("rlvr_jax.envs",)),
    ("evaluation", ("rlvr_jax.evaluation",)),
    ("relex", ("rlvr_jax.relex",)),
    ("training", ("rlvr_jax.training",)),
    ("tools", ("rlvr_jax.tools",)),
    ("binaries", ("experiments", "benchmarks")),
)
_PURE = ("rlvr_jax.algorithms", "rlvr_jax.rewards")
# Third-party libraries the pure core must not import: no plots, no files of
# checkpoints or logs, no model or data pipeline (DESIGN.md).
_PURE_FORBIDDEN = ("matplotlib", "orbax", "tensorboardX", "flax", "transformers",
                   "tensorflow", "tensorflow_datasets", "grain")


def _package(name: str) -> str | None:
  """The LAYERS entry `name` (a dotted module path) belongs to, or None."""
  for _, packages in LAYERS:
    for package in packages:
      if name == package or name.startswith(package + "."):
        return package
  return None


def _rank(package: str) -> tuple[int, str]:
  for rank, (layer, packages) in enumerate(LAYERS):
    if package in packages:
      return rank, layer
  raise KeyError(package)


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, dotted name) of every absolute import in a file; `from a import b` gives a.b."""
  found = []
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
  return found


def check_layers(root: pathlib.Path) -> list[str]:
  """Layering violations of the package tree under root/rlvr_jax, one line each."""
  problems = []
  edges: dict[str, dict[str, str]] = {}  # package -> imported package -> first example.
  for path in sorted((root / "rlvr_jax").rglob("*.py")):
    relative = path.relative_to(root).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    module = ".".join(parts)
    if module == "rlvr_jax":
      continue
    package = _package(module)
    if package is None:
      problems.append(f"{module}: in no layer; add its package to LAYERS and CONVENTIONS.md")
      continue
    rank, layer = _rank(package)
    for line, name in _imports(path):
      where = f"{relative}.py:{line} `{name}`"
      top = name.split(".")[0]
      if package in _PURE and top in _PURE_FORBIDDEN:
        problems.append(f"{module} ({layer}) imports {top}, not allowed in the pure core: {where}")
      if top not in ("rlvr_jax", "experiments", "benchmarks"):
        continue
      target = _package(name)
      if target is None:
        problems.append(f"{module} imports a module in no layer: {where}")
        continue
      target_rank, target_layer = _rank(target)
      if target_rank > rank:
        problems.append(f"{module} ({layer}) imports the higher layer {target_layer}: {where}")
      elif package in _PURE and target not in _PURE:
        problems.append(f"{module} (pure core) imports {target} outside the core: {where}")
      if target != package:
        edges.setdefault(package, {}).setdefault(target, where)
  problems += _cycles(edges)
  return problems


def _cycles(edges: dict[str, dict[str, str]]) -> list[str]:
  """One line per package cycle (a strongly connected set), with one import per edge."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  components = []

  def visit(node: str) -> None:  # Tarjan's strongly connected components.
    index[node] = low[node] = len(index)
    stack.append(node)
    for nxt in edges.get(node, {}):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        components.append(sorted(component))

  for node in sorted(edges):
    if node not in index:
      visit(node)
  lines = []
  for component in components:
    via = "; ".join(f"{a} -> {b} at {edges[a][b]}" for a in component
                    for b in sorted(edges.get(a, {})) if b in component)
    lines.append(f"import cycle between {', '.join(component)}: {via}")
  return lines


def test_the_package_imports_only_go_down():
  assert check_layers(_ROOT) == []


def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  for name, text in files.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return tmp_path


def test_an_upward_import_is_named(tmp_path):
  root = _tree(tmp_path, {
      "rlvr_jax/evaluation/evaluate.py": "import os\n\nfrom rlvr_jax.training import loop\n",
      "rlvr_jax/training/loop.py": "from rlvr_jax.evaluation import evaluate\n",
      "rlvr_jax/algorithms/delta.py": ("def f():\n"
                                       "  from matplotlib import figure\n"
                                       "  from rlvr_jax import sharding\n"),
      "rlvr_jax/data/tasks.py": "import experiments.train\n",
  })
  assert check_layers(root) == [
      "rlvr_jax.algorithms.delta (pure core) imports matplotlib, not allowed in the pure "
      "core: rlvr_jax/algorithms/delta.py:2 `matplotlib.figure`",
      "rlvr_jax.algorithms.delta (pure core) imports rlvr_jax.sharding outside the core: "
      "rlvr_jax/algorithms/delta.py:3 `rlvr_jax.sharding`",
      "rlvr_jax.data.tasks (data) imports the higher layer binaries: "
      "rlvr_jax/data/tasks.py:1 `experiments.train`",
      "rlvr_jax.evaluation.evaluate (evaluation) imports the higher layer training: "
      "rlvr_jax/evaluation/evaluate.py:3 `rlvr_jax.training.loop`",
      "import cycle between rlvr_jax.evaluation, rlvr_jax.training: "
      "rlvr_jax.evaluation -> rlvr_jax.training at rlvr_jax/evaluation/evaluate.py:3 "
      "`rlvr_jax.training.loop`; rlvr_jax.training -> rlvr_jax.evaluation at "
      "rlvr_jax/training/loop.py:1 `rlvr_jax.evaluation.evaluate`",
  ]


def test_a_cycle_within_one_layer_and_an_unplaced_package_are_named(tmp_path):
  root = _tree(tmp_path, {
      "rlvr_jax/algorithms/losses.py": "from rlvr_jax.rewards import answers\n",
      "rlvr_jax/rewards/answers.py": "import rlvr_jax.algorithms.losses\n",
      "rlvr_jax/newthing/__init__.py": "",
  })
  problems = check_layers(root)
  assert problems == [
      "rlvr_jax.newthing: in no layer; add its package to LAYERS and CONVENTIONS.md",
      "import cycle between rlvr_jax.algorithms, rlvr_jax.rewards: rlvr_jax.algorithms -> "
      "rlvr_jax.rewards at rlvr_jax/algorithms/losses.py:1 `rlvr_jax.rewards.answers`; "
      "rlvr_jax.rewards -> rlvr_jax.algorithms at rlvr_jax/rewards/answers.py:1 "
      "`rlvr_jax.algorithms.losses`",
  ]
