from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "analysis" / "notebooks" / "sweep_report.ipynb"


def test_sweep_report_notebook_executes(store_url, tmp_path, monkeypatch):
    repo_root = NOTEBOOK.parents[2]
    # the kernel is a child process: it inherits these, which is how the notebook takes its parameters
    monkeypatch.setenv("CRAM_STORE", store_url)
    monkeypatch.setenv("CRAM_SWEEP", "group_ablation")
    monkeypatch.setenv("CRAM_PLOTS", str(tmp_path / "plots"))
    monkeypatch.setenv("PYTHONPATH", str(repo_root))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    texts = "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| architecture |" in texts and "sweep 'group_ablation'" in texts
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "plots" / "group_ablation" / "loss_vs_tokens.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "group_ablation" / "loss_vs_seconds.svg").stat().st_size > 1000
