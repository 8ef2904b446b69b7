"""The package's layers point one way: each part of `dlm_jax` imports only the parts below it (read from `ast`)."""

import ast
import graphlib
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dlm_jax"

# The direction table: each part of the package and the parts it may import (a DAG, lowest first).
# config (presets, models/config) -> models -> (diffusion | sampling) -> training / evaluation -> cli.
ALLOWED: dict[str, set[str]] = {
    "presets": set(),
    "ops": set(),
    "models": {"presets", "ops"},
    "diffusion": {"models", "ops"},
    "sampling": {"models", "ops", "diffusion"},
    "data": set(),
    "parallel": {"models"},
    "output_dir": set(),
    "checkpoint_io": {"models", "output_dir"},
    "conversion": {"models", "checkpoint_io", "output_dir"},
    "api": {"presets", "ops", "models", "sampling", "parallel", "checkpoint_io", "conversion", "output_dir"},
    "training": {"presets", "ops", "models", "diffusion", "data", "parallel", "checkpoint_io", "output_dir", "api"},
    "evaluation": {"presets", "ops", "models", "diffusion", "sampling", "data", "checkpoint_io", "output_dir", "api",
                   "training"},
    "experiments": {"presets", "models", "data", "api", "training", "evaluation"},
    "commands": {"presets", "ops", "models", "diffusion", "sampling", "data", "parallel", "checkpoint_io", "conversion",
                 "output_dir", "api", "training", "evaluation", "experiments"},
    "cli": {"commands"},
    "__init__": {"models", "api"},
}
# Imports that break the table today, each named (file, imported part); none may be added.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def part_of(module: str) -> str | None:
    """The part of `dlm_jax` a dotted module name belongs to, else None."""
    parts = module.split(".")
    if parts[0] != "dlm_jax" or len(parts) == 1:
        return None  # another package, or the package root (loaded before any module of it: no dependency)
    return parts[1]


def imported_modules(tree: ast.AST) -> list[str]:
    """Every absolute module an AST imports, at any depth (a lazy import inside a function counts too)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from dlm_jax import presets` imports the module dlm_jax.presets, not the package's __init__.
            out += [f"dlm_jax.{a.name}" for a in node.names] if node.module == "dlm_jax" else [node.module]
    return out


def violations(package: pathlib.Path = PACKAGE) -> list[tuple[str, str]]:
    """(file, imported part) for each import of a part that the importing file's part may not import."""
    found = set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        own = part_of(".".join(rel.parts))
        for module in imported_modules(ast.parse(path.read_text())):
            target = part_of(module)
            if target is not None and target != own and target not in ALLOWED.get(own, set()):
                found.add((str(rel.with_suffix(".py")), target))
    return sorted(found)


def test_the_direction_table_has_no_circle():
    order = list(graphlib.TopologicalSorter(ALLOWED).static_order())
    assert set(order) == set(ALLOWED)


def test_every_part_of_the_package_is_in_the_table():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file()}
    assert parts == set(ALLOWED)


def test_no_import_points_up_or_sideways():
    assert set(violations()) <= KNOWN_EXCEPTIONS, "\n".join(f"{f} imports {t}" for f, t in violations())


def test_the_check_sees_an_upward_import(tmp_path):
    package = tmp_path / "dlm_jax"
    (package / "data").mkdir(parents=True)
    (package / "data" / "pipeline.py").write_text("def f():\n    from dlm_jax.training.config import TrainConfig\n")
    (package / "models").mkdir()
    (package / "models" / "config.py").write_text("from dlm_jax import presets\nimport numpy\n")
    assert violations(package) == [("dlm_jax/data/pipeline.py", "training")]
