"""Whether a directory or file is private to this user: the rule for every cache einstruct reads.

A cache einstruct reads back (the parser's tables, the experiments' teacher
data) is trusted only where no other local user could have written it:

- the directory is a real directory (not a link) owned by this user with no
  permission bits for group or others (mode 0700), in a parent that no other
  user can rename it out of (owned by this user or root, not writable by
  others unless sticky);
- the file is a regular file (not a link) owned by this user that no one else
  can write.

    >>> private_directory(Path("/"), uid=12345)
    False
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["private_directory", "private_file", "make_private_directory"]


def private_directory(directory: Path, uid: int) -> bool:
    """``directory`` is ours alone (0700, not a link), in a parent others cannot rename it out of."""
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        return False
    parent = os.lstat(directory.parent)
    writable_by_others = parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX
    return parent.st_uid in (uid, 0) and not writable_by_others


def private_file(file: Path, uid: int) -> bool:
    """``file`` is a regular file (not a link) owned by ``uid`` that no one else can write."""
    info = os.lstat(file)
    return stat.S_ISREG(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o022


def make_private_directory(directory: Path) -> bool:
    """Create ``directory`` (mode 0700) if missing; whether it is private to this user.

    False where it cannot be made, is not private, or owners cannot be checked (Windows).
    """
    getuid = getattr(os, "geteuid", None)
    if getuid is None:
        return False
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        return private_directory(directory, getuid())
    except (OSError, RuntimeError, ValueError):
        return False
