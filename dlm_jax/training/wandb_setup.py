"""Which wandb mode a run can use: online only with an API key, otherwise offline with a one-line note."""

from __future__ import annotations

import netrc
import os
import pathlib
import sys
from urllib.parse import urlparse


def has_wandb_key() -> bool:
    """True when wandb could authenticate without asking: $WANDB_API_KEY, an identity token, or a netrc entry.

    Reads only the environment and the netrc file (`$NETRC`, else `~/.netrc`) for the wandb host
    (`$WANDB_BASE_URL`, else api.wandb.ai); never touches the network.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = pathlib.Path(os.environ.get("NETRC") or pathlib.Path.home() / ".netrc")
    try:
        return netrc.netrc(str(path)).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str | None = None) -> str:
    """The mode to pass to `wandb.init`: `requested`, else `$WANDB_MODE`, else "online".

    "online" without an API key (see `has_wandb_key`) becomes "offline", with one note on stderr,
    instead of wandb's UsageError: the run is kept locally and can be uploaded later with `wandb sync`.

    A run passes it on: `wandb.init(project="dlm-jax", mode=wandb_mode())`.

    Example:
        >>> wandb_mode("offline"), wandb_mode("disabled")
        ('offline', 'disabled')
    """
    mode = requested or os.environ.get("WANDB_MODE") or "online"
    if mode in ("online", "run") and not has_wandb_key():
        print("wandb: no API key (set WANDB_API_KEY or run `wandb login`); logging offline, "
              "upload later with `wandb sync`", file=sys.stderr)
        return "offline"
    return mode
