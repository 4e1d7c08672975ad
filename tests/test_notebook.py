"""Executes notebooks/quickstart.ipynb top to bottom on CPU (nbclient)."""

import json
import os
import sys

import nbclient
import nbformat

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
