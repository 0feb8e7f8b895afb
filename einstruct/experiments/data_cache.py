"""The sweep's cache of teacher data (``<results>.data/``): used only where it is private.

Each seed's training stream and held-out set (:func:`.scaling.make_data`) are
saved once and read back by every run of that seed. A forged file would give
forged losses and a torn one would break every later run, so the cache is

- used only in a directory private to this user (:mod:`einstruct.private`:
  created with mode 0700, owned by this user, no bits for group or others, in
  a parent others cannot rename it out of), each file a regular file owned by
  this user that no one else can write; otherwise the data is computed in
  memory and nothing is cached;
- read with ``torch.load(weights_only=True)`` (tensors and plain data only, no
  code) and validated completely: exactly the expected keys, the same task,
  float32 tensors of the expected shapes, every value finite; anything else is
  recomputed and rewritten;
- written atomically: a new file (mode 0600) in the same directory, then
  renamed over the old one, so a run killed while writing leaves no torn file.

    >>> directory = cache_directory(Path("scaling.jsonl"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..files import temporary_prefix
from ..private import make_private_directory, private_file
from .scaling import Task, data_shapes

__all__ = ["cache_directory", "data_path", "valid_data", "load_data", "save_data"]


def cache_directory(results: Path) -> Path | None:
    """``<results>.data`` (created with mode 0700 when missing) if it is private to this user, else None."""
    directory = results.parent / f"{results.name}.data"
    return directory if make_private_directory(directory) else None


def data_path(directory: Path, task: Task, seed: int) -> Path:
    """The cache file of ``seed``'s data for ``task`` in ``directory``."""
    digest = hashlib.sha256(json.dumps(asdict(task), sort_keys=True).encode()).hexdigest()[:12]
    return directory / f"seed{seed}-{digest}.pt"


def valid_data(data: Any, task: Task) -> bool:
    """Whether ``data`` is exactly what :func:`.scaling.make_data` returns for ``task``."""
    import torch

    shapes = data_shapes(task)
    if not isinstance(data, dict) or set(data) != {"task", *shapes} or data["task"] != asdict(task):
        return False
    for name, shape in shapes.items():
        tensor = data[name]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            return False
        if tensor.dtype != torch.float32 or not bool(torch.isfinite(tensor).all()):
            return False
    return True


def load_data(path: Path, task: Task) -> dict[str, Any] | None:
    """The cached data at ``path`` if the file is private and valid for ``task``; None otherwise."""
    import torch

    getuid = getattr(os, "geteuid", None)
    try:
        if getuid is None or not private_file(path, getuid()):
            return None
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # a missing, torn or foreign file: recompute
        return None
    return data if valid_data(data, task) else None


def save_data(data: dict[str, Any], path: Path) -> bool:
    """Write ``data`` to ``path`` atomically (mode 0600); whether it was written."""
    import torch

    try:
        handle, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError:
        return False
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            torch.save(data, out)
        os.replace(tmp, path)
    except Exception:  # a full disk: the data stays in memory
        Path(tmp).unlink(missing_ok=True)
        return False
    return True
