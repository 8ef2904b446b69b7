"""Setup for the docstring examples (`pytest --doctest-modules dlm_jax`); tests/ has its own conftest.

Each example runs in a fresh empty working directory, so an example that writes files (a JSONL,
a saved model) writes them there. The examples build the same tiny models again and again; a
persistent compilation cache shared by the whole run compiles each program once, and XLA skips
its expensive optimisations (compiling costs far more than running these tiny programs). The
in-memory caches are cleared after each example when tests run in the same session, so no such
executable is reused by a test.
"""

import os

# Must be set before jax starts a backend: the mesh examples use 8 virtual CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from _pytest.doctest import DoctestItem  # noqa: E402

_CONFIG_KEYS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
    "jax_disable_most_optimizations",
)


@pytest.fixture(scope="session")
def _doctest_compile_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("doctest_xla_cache"))


@pytest.fixture(scope="session")
def _session_has_tests(request: pytest.FixtureRequest) -> bool:
    return any(not isinstance(item, DoctestItem) for item in request.session.items)


@pytest.fixture(autouse=True)
def _doctest_setup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """For docstring examples only: an empty working directory and fast, cached compilation."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    monkeypatch.chdir(request.getfixturevalue("tmp_path"))
    clear_after = request.getfixturevalue("_session_has_tests")
    old = {key: jax.config.values[key] for key in _CONFIG_KEYS}
    jax.config.update("jax_compilation_cache_dir", request.getfixturevalue("_doctest_compile_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    for key, value in old.items():
        jax.config.update(key, value)
    if clear_after:
        jax.clear_caches()
