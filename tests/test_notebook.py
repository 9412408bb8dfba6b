"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a real Jupyter kernel), with
LMTRANSFER_NOTEBOOK_FAST=1: few steps, the same code paths."""

import os
import re

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTRANSFER_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("LMTRANSFER_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device, as a user's kernel has
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline
    nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert "dev accuracy:" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells
               for o in c.get("outputs", []))  # the training-curve figure was drawn
    for word in ("wonderful", "terrible", "sunshine", "disaster"):  # the pipeline's labels
        assert re.search(rf"^{word} +(positive|negative) +[01]\.\d{{3}}$", text, re.M), text
    assert "'the queen' ->" in text
    assert os.path.exists(tmp_path / "runs" / "minilm" / "hf" / "model.safetensors")
