"""Both notebooks execute end to end (tiny sizes) and are committed without outputs."""

import json
import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).parents[1] / "notebooks"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that runs this interpreter (the venv), found through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "dlm-jax-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "dlm-jax test", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root) + (os.pathsep + old if old else "")
    os.environ["DLM_JAX_NOTEBOOK_SMOKE"] = "1"
    yield "dlm-jax-test"
    os.environ.pop("DLM_JAX_NOTEBOOK_SMOKE")
    if old is None:
        os.environ.pop("JUPYTER_PATH")
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart.ipynb", pytest.param("train_and_eval.ipynb", marks=pytest.mark.slow)])
def test_notebook_runs_and_is_stripped(name, kernel_name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    NotebookClient(nb, timeout=300, kernel_name=kernel_name, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 1, f"{name}: expected a matplotlib figure"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    if name == "quickstart.ipynb":
        assert "generated:" in text and "chain" in text and "elbo_llada" in text
    else:
        assert "forward_acc" in text and "reverse: mean log p" in text
