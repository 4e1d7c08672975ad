"""Executes notebooks/quickstart.ipynb top to bottom on CPU (nbclient); checks its install cell."""

import ast
import importlib.util
import json
import os
import shutil
import sys

import nbclient
import nbformat
import pytest

_NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks", "quickstart.ipynb")
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache",
                      "jax")
_KERNEL = "rlvr_jax_test"


def _outputs(cell, output_type):
  return [o for o in cell.get("outputs", []) if o["output_type"] == output_type]


def _text(cell):
  return "".join(o.get("text", "") for o in _outputs(cell, "stream"))


def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  # A kernel spec for this interpreter, so the kernel runs the venv's Python
  # whatever `python` is on PATH.
  spec_dir = tmp_path / "jupyter" / "kernels" / _KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "rlvr_jax test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  # One CPU device, as on a Colab CPU runtime (conftest.py simulates 8).
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", _CACHE)
  work = tmp_path / "work"
  work.mkdir()

  nb = nbformat.read(_NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name=_KERNEL,
                                   resources={"metadata": {"path": str(work)}})
  client.execute()  # raises CellExecutionError on the first failing cell

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not _outputs(c, "error") for c in code)
  assert all(c.get("execution_count") for c in code)
  # The run wrote 4 metric rows and its checkpoints into the working directory.
  with open(work / "runs" / "quickstart" / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [1, 2, 3, 4]
  assert os.path.isdir(work / "runs" / "quickstart" / "checkpoints" / "4")
  # The reward plot.
  images = [o for c in code for o in _outputs(c, "display_data") if "image/png" in o["data"]]
  assert len(images) == 1
  # The token table and the colored rendering of the DelTA coefficients.
  tables = [c for c in code if "lowest DelTA coefficients" in _text(c)]
  assert len(tables) == 1
  table = _text(tables[0])
  assert "highest DelTA coefficients" in table and "advantages:" in table
  html = [o["data"]["text/html"] for c in code for o in _outputs(c, "display_data")
          if "text/html" in o["data"]]
  assert len(html) == 1 and html[0].count("<span title=\"c~ = ") >= 4


def _install_functions():
  """The functions of the notebook's install cell (its imports and defs only, nothing run)."""
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  [cell] = [c for c in nb.cells if c.cell_type == "code" and "pip_install(" in c.source]
  tree = ast.parse(cell.source)
  tree.body = [n for n in tree.body
               if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
  namespace = {}
  exec(compile(tree, _NOTEBOOK, "exec"), namespace)  # pylint: disable=exec-used
  return namespace


@pytest.mark.parametrize("modules, nvidia_smi, env, devices, kind", [
    ((), False, {}, (), "cpu"),
    (("jax_cuda12_plugin",), False, {}, (), "gpu"),  # Colab GPU: CUDA JAX preinstalled
    ((), True, {}, (), "gpu"),  # a GPU without JAX yet
    (("libtpu",), False, {}, (), "tpu"),  # Colab TPU: libtpu preinstalled
    ((), False, {"COLAB_TPU_ADDR": "10.0.0.2:8470"}, (), "tpu"),
    ((), False, {}, ("/dev/accel0",), "tpu"),
])
def test_install_cell_keeps_the_accelerator_build_of_jax(monkeypatch, modules, nvidia_smi, env,
                                                         devices, kind):
  """On a GPU/TPU runtime the package is installed with the extra of its JAX build.

  Without it `pip install -e <clone>` may upgrade `jax` to the CPU-only jaxlib.
  """
  functions = _install_functions()
  real_find_spec = importlib.util.find_spec
  hidden = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin")
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      object() if name in modules else None if name in hidden else real_find_spec(name, *a)))
  monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi"
                      if nvidia_smi and name == "nvidia-smi" else None)
  real_exists = os.path.exists
  monkeypatch.setattr(os.path, "exists", lambda path: path in devices or (
      path != "/dev/accel0" and real_exists(path)))
  monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  assert functions["accelerator"]() == kind
  extra = {"cpu": "", "gpu": "[gpu]", "tpu": "[tpu]"}[kind]
  assert functions["requirement"]("/src/rlvr_jax", kind) == "/src/rlvr_jax" + extra


def test_notebook_says_which_runtime_it_was_checked_on():
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  text = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
  assert "**Checked on:** a CPU runtime only" in text
  assert "has not been run on a real GPU or TPU runtime" in text
