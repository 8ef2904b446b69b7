"""Model output folders: refused when unsafe, written atomically, marked as ours, and made with the umask.

Every folder written here gets a manifest (`dlm_jax_manifest.json`) listing the files it holds.
`--overwrite` replaces a folder only when it has that manifest and nothing else beside the listed
files, so a user's own files are never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

MANIFEST = "dlm_jax_manifest.json"


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _files(folder: pathlib.Path) -> list[str]:
    """Every file (and link or empty folder) under `folder`, as sorted relative POSIX paths."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = pathlib.Path(root).relative_to(folder)
        out.extend((rel / name).as_posix() for name in files)
        out.extend((rel / name).as_posix() for name in dirs if (pathlib.Path(root) / name).is_symlink())
        if not dirs and not files and rel != pathlib.Path("."):
            out.append(rel.as_posix() + "/")
    return sorted(out)


def _named(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _foreign_files(folder: pathlib.Path) -> list[str]:
    """Files in `folder` that no dlm-jax manifest there accounts for (all of them when there is none)."""
    present = _files(folder)
    try:
        listed = set(json.loads((folder / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return present
    return [name for name in present if name != MANIFEST and name not in listed]


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(
    out_dir: str | pathlib.Path, overwrite: bool = False, source: str | pathlib.Path | None = None
) -> None:
    """Refuse an output folder before any work is done: the source itself, a file, or a folder we may not replace.

    A non-empty folder is replaced (with `--overwrite`) only when dlm-jax wrote it and it holds
    nothing else; otherwise the error names the files that would be lost.
    """
    out_dir = pathlib.Path(out_dir)
    if source is not None:
        dst, src = out_dir.resolve(), pathlib.Path(source).resolve()
        if _inside(dst, src):
            raise ValueError(f"--dst {out_dir} is the source folder --src {source} or inside it; choose another folder")
        if _inside(src, dst):
            raise ValueError(f"--dst {out_dir} contains the source folder --src {source}; choose another folder")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise FileExistsError(f"--dst {out_dir} exists and is not a folder; choose another output folder")
    if not any(out_dir.iterdir()):
        return
    foreign = _foreign_files(out_dir)
    if foreign:
        raise FileExistsError(
            f"{out_dir} already exists and holds files dlm-jax did not write ({_named(foreign)}); "
            "choose another output folder (--overwrite only replaces a model folder written by dlm-jax)"
        )
    if not overwrite:
        raise FileExistsError(f"{out_dir} already exists (a model written by dlm-jax); pass --overwrite to replace it")


def _apply_umask(folder: pathlib.Path) -> None:
    """Give `folder` and everything in it the modes a plain mkdir/open would (mkdtemp makes 0700)."""
    mask = current_umask()
    folder.chmod(0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            (pathlib.Path(root) / name).chmod(0o777 & ~mask)
        for name in files:
            path = pathlib.Path(root) / name
            if not path.is_symlink():
                path.chmod(0o666 & ~mask)


def _make_parents(folder: pathlib.Path) -> list[pathlib.Path]:
    """mkdir -p `folder`; return the folders it created, deepest first (to undo on failure)."""
    created = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        created.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return created


@contextlib.contextmanager
def atomic_output_dir(
    out_dir: str | pathlib.Path, overwrite: bool = False, source: str | pathlib.Path | None = None
) -> Iterator[pathlib.Path]:
    """Yield a temp folder next to `out_dir`; move it into place (with a manifest) only if the block succeeds.

    A failure removes the temp folder and any parent folders this call created, so nothing is left behind.
    """
    out_dir = pathlib.Path(out_dir)
    check_output_dir(out_dir, overwrite=overwrite, source=source)
    created = _make_parents(out_dir.parent)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        files = [name for name in _files(tmp) if name != MANIFEST]
        (tmp / MANIFEST).write_text(json.dumps({"written_by": "dlm-jax", "files": files}, indent=1))
        _apply_umask(tmp)
        check_output_dir(out_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
