"""Setup for the whole run (tests/ and the docstring examples of `pytest --doctest-modules dlm_jax`).

One persistent compilation cache serves the run: the controller, its xdist workers and every
`dlm-jax` subprocess a test starts compile the same tiny programs again and again (compiling costs
far more than running them), so each program is compiled once. The cache lives in a temporary
folder made by the controller before the workers start (they and the subprocesses inherit it through
the environment) and removed when the run ends; a JAX_COMPILATION_CACHE_DIR set by the user wins.

Each docstring example runs in a fresh empty working directory, so an example that writes files (a
JSONL, a saved model) writes them there, and XLA skips its expensive optimisations for it. The
in-memory caches are cleared after each example when tests run in the same session, so no executable
compiled that way is reused by a test (the persistent cache keys include the optimisation level).
"""

import os
import shutil
import tempfile

# Must be set before jax starts a backend: the mesh examples use 8 virtual CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:  # only the controller gets here: xdist workers inherit its folder
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlm_jax_test_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from _pytest.doctest import DoctestItem  # noqa: E402


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def _session_has_tests(request: pytest.FixtureRequest) -> bool:
    return any(not isinstance(item, DoctestItem) for item in request.session.items)


@pytest.fixture(autouse=True)
def _doctest_setup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """For docstring examples only: an empty working directory and fast compilation."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    monkeypatch.chdir(request.getfixturevalue("tmp_path"))
    clear_after = request.getfixturevalue("_session_has_tests")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)
    if clear_after:
        jax.clear_caches()
