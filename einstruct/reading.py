"""Reading input einstruct did not write, bounded: specs, manifests, checkpoint indexes, results.

Every file einstruct reads as input goes through :func:`read_bounded`:

- only regular files are opened; a FIFO, device, socket or directory is
  refused before it is opened (opening a FIFO can block forever, reading
  ``/dev/zero`` never ends), with a hint to pipe it to standard input instead;
- at most ``limit`` bytes are read (``EINSTRUCT_MAX_INPUT_BYTES`` for specs):
  a larger file is refused, it is never read to the end.

Standard input (``-``) is read by :func:`read_stream` with the same bound, so an
endless stream stops at the limit with an error instead of filling memory.

    >>> import io
    >>> read_stream(io.BytesIO(b"structure m = monarch(d = 4)"), "<stdin>", 100)
    b'structure m = monarch(d = 4)'
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import EinstructError

__all__ = ["file_kind", "read_bounded", "read_stream", "shown_path"]

_CHUNK = 1 << 16


def shown_path(path: Path | str) -> str:
    """A path for a message, with characters that could break the line escaped."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(path))


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a message: 'a directory', 'a FIFO (named pipe)'..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bounded(
    path: Path | str, limit: int, what: str = "file", variable: str = "", hint: str = "check the path"
) -> bytes:
    """The bytes of the regular file ``path``, if it holds at most ``limit`` of them.

    ``what`` names the file in messages ("spec file", "manifest"); ``variable``
    is the environment variable that raises the limit, if one does; ``hint``
    says what to do when the file cannot be opened.
    """
    shown = shown_path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise EinstructError(
                f"cannot read '{shown}': it is {file_kind(info.st_mode)}, not a regular {what}",
                hint="give a regular file, or pipe the data to standard input (-)",
            )
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise EinstructError(f"cannot read '{shown}': {exc.strerror or exc}", hint=hint) from None
    except ValueError:  # a NUL byte in the path: no file can have that name
        raise EinstructError(
            f"cannot read '{shown}': a path cannot hold a NUL character", hint=hint
        ) from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped between stat and open
            raise EinstructError(f"cannot read '{shown}': not a regular {what}", hint=hint)
        return read_stream(handle, f"{what} '{shown}'", limit, variable)


def read_stream(stream: BinaryIO, name: str, limit: int, variable: str = "") -> bytes:
    """At most ``limit`` bytes from ``stream``; more is an error that names ``name`` and the limit."""
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = stream.read(min(_CHUNK, limit + 1 - size))
        except OSError as exc:
            raise EinstructError(
                f"cannot read {name}: {exc.strerror or exc}", hint="check the input"
            ) from None
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise EinstructError(
                f"{name} is larger than {limit:,} bytes; einstruct stops reading there",
                hint=f"set {variable} to read larger inputs" if variable else "give a smaller file",
            )
