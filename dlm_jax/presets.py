"""Where the shipped YAML presets live: model presets, mesh presets and experiment configs.

They are the repository's top-level `configs/{models,meshes,experiments}/` folders. setup.py packs
`configs/` into the wheel as `dlm_jax/configs/`, so an installed package finds them from any
directory; a source checkout or an editable install reads the checkout's `configs/`.
"""

from __future__ import annotations

import pathlib

KINDS = ("models", "meshes", "experiments")
_SUFFIXES = (".yaml", ".yml")


def config_root() -> pathlib.Path:
    """The folder holding `models/`, `meshes/` and `experiments/`: packaged in a wheel, else the checkout's."""
    package = pathlib.Path(__file__).resolve().parent
    packaged = package / "configs"
    return packaged if packaged.is_dir() else package.parent / "configs"


def _folder(kind: str) -> pathlib.Path:
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; expected one of {KINDS}")
    return config_root() / kind


def available(kind: str) -> list[str]:
    """Names of the shipped configs of one kind, e.g. `available("experiments")` -> ['diffugpt_adapt', ...]."""
    return sorted(p.stem for p in _folder(kind).glob("*.yaml"))


def shipped(kind: str, name: str) -> pathlib.Path | None:
    """The shipped `<kind>/<name>.yaml`, or None when there is no such preset."""
    if not name or pathlib.PurePath(name).name != name:
        return None
    candidate = _folder(kind) / f"{name}.yaml"
    return candidate if candidate.is_file() else None


def find_config(kind: str, spec: str | pathlib.Path) -> pathlib.Path | None:
    """Resolve a config given by the user: an existing file, else the shipped config it names.

    `spec` is used as it is when that file exists. Otherwise a bare name (`tiny_mdm`, `tiny_mdm.yaml`)
    or the repository-relative path (`experiments/tiny_mdm.yaml`, `configs/experiments/tiny_mdm.yaml`)
    names the shipped config, so the README's commands run from any directory once the wheel is
    installed. Any other missing path gives None (a typo in a user's own path is never replaced).

    Example:
        >>> find_config("experiments", "configs/experiments/tiny_mdm.yaml").name
        'tiny_mdm.yaml'
    """
    path = pathlib.Path(spec)
    if path.is_file():
        return path
    if path.is_absolute() or path.parts[:-1] not in ((), (kind,), ("configs", kind)):
        return None
    name = path.name
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return shipped(kind, name)
