"""Where the parser's tables may be cached: only in a private per-user directory, or nowhere.

Lark stores built LALR tables as a pickle, and loading a pickle runs code. Its
default place is the shared temp directory under a predictable name, where
another local user could plant one; einstruct never uses it. The cache lives in
``$XDG_CACHE_HOME/einstruct`` (or ``~/.cache/einstruct``) and is used only if

- the directory is a real directory (not a link) owned by this user with mode
  0700 (created so when missing), in a parent that no other user can rename it
  out of (owned by this user or root, not writable by others unless sticky);
- the cache file, when present, is a regular file owned by this user that no
  one else can write.

Only this user can write there, so only this user's own einstruct runs wrote
the file; lark then checks its header (a SHA-256 of the grammar, options,
lark and Python versions) and rebuilds the tables when it does not match (a
cache from another grammar or a torn write). Otherwise, or with
``EINSTRUCT_PARSER_CACHE=0``, the parser is built without a cache (about 70 ms
more CPU per process).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..private import private_directory, private_file

__all__ = ["private_cache_file"]


def private_cache_file(name: str) -> str | None:
    """A path for cache file ``name`` in the private cache directory, or None if none is safe.

    >>> private_cache_file("../x") is None
    True
    """
    if not _cache_wanted():
        return None
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    getuid = getattr(os, "geteuid", None)
    if getuid is None:  # no owners to check (Windows): build without a cache
        return None
    directory = _cache_directory()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not private_directory(directory, getuid()):
            return None
        file = directory / name
        if os.path.lexists(file) and not private_file(file, getuid()):
            return None
    except (OSError, RuntimeError, ValueError):
        return None
    return str(file)


def _cache_wanted() -> bool:
    """``EINSTRUCT_PARSER_CACHE``: ``0`` builds the parser without a cache, ``1`` (or unset,
    or blank) with one; anything else is an error naming the variable, since a value
    such as ``off`` meant as 0 would otherwise keep the cache silently."""
    value = os.environ.get("EINSTRUCT_PARSER_CACHE", "").strip(" \t")
    if value in ("", "1"):
        return True
    if value == "0":
        return False
    from ..errors import ParameterError

    raise ParameterError(
        f"environment variable EINSTRUCT_PARSER_CACHE={ascii(value)[:60]}: must be 0 (no parser "
        "cache) or 1 (the default, a private cache)",
        hint="set it to 0 or 1, or unset it",
    )


def _cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "einstruct"
