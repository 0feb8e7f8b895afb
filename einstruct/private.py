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

__all__ = ["private_directory", "private_file", "make_private_directory", "safe_parent", "private_group"]


def private_directory(directory: Path, uid: int) -> bool:
    """``directory`` is ours alone (0700, not a link), in a parent others cannot rename it out of."""
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        return False
    return safe_parent(directory, uid)


def safe_parent(entry: Path | str, uid: int) -> bool:
    """Whether no user but ``uid`` (and root) can rename ``entry`` out of its directory: that
    directory (followed if it is reached through a link, as a linked ``~/.cache`` is) is
    owned by ``uid`` or root, and writable by no one else, unless sticky (``/tmp``) or
    writable only by ``uid``'s private group (umask 002 systems, Ubuntu's default)."""
    parent = os.stat(os.path.dirname(os.path.abspath(entry)) or os.sep)
    if parent.st_uid not in (uid, 0):  # its owner could rename anything in it
        return False
    if parent.st_mode & stat.S_ISVTX:  # others may rename only their own entries
        return True
    if parent.st_mode & 0o002:
        return False
    return not parent.st_mode & 0o020 or private_group(parent.st_gid)


def private_group(gid: int) -> bool:
    """Whether ``gid`` is this user's own group with no other members (a user private
    group: umask 002 systems, Ubuntu's default, make files group-writable in it)."""
    try:
        import grp
        import pwd

        group, user = grp.getgrgid(gid), pwd.getpwuid(os.geteuid())
    except (ImportError, KeyError, OSError):
        return False
    return gid == user.pw_gid and group.gr_name == user.pw_name and not set(group.gr_mem) - {user.pw_name}


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
