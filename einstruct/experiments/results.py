"""The sweep's results file (``--results``): checked, validated whole, then read, repaired, appended to.

The results file decides what a sweep trains (a run whose key is in it is
skipped) and what its report says (its losses are the report's), so it is
read as input someone else could have written:

- **What it may be.** A regular file, not a link (a link is refused: give the
  file itself, as every output of einstruct is never written through a link),
  not a directory, FIFO, device or socket; owned by this user and writable by
  no one else (the rule of the teacher-data cache, :mod:`einstruct.private`):
  a file another user owns or could write is refused, never trusted, since a
  forged loss would be reported as measured. Opened without following a link
  and without blocking, and checked again on the open file.
- **Its size.** At most :data:`MAX_RESULTS_BYTES` are read; a larger file is
  refused, never read to the end.
- **Its rows.** Every complete line (ending in a newline) must be one run's
  row as :func:`.scaling.train_run` writes it: every field present with its
  type and range (:func:`row_problem`), its key naming its own structure,
  width, learning rate, seed and rule, its curve agreeing with its steps,
  FLOPs and final loss. Blank lines are skipped. A row of an
  older einstruct (valid, but without some of :data:`LATER_FIELDS`) matches no
  run of this version: it is skipped and left in the file, with one warning
  line counting such rows. Anything else is refused with ``FILE:LINE`` and the
  file is left exactly as it was.
- **A torn last line.** Only a file whose every complete line is a valid row
  is repaired: a last line without its newline (a process killed while
  writing it) that is a whole row gets its newline; one that is the start of
  a row (ASCII text beginning with ``{``) is cut off, and that run is trained
  again. Any other unterminated last line is refused like a bad row.
- **Only read unless runs are left.** A sweep whose every run is in the file
  only reads it (:func:`read_results`: no lock, no repair), so a read-only
  file reprints its summary. One that has runs left opens it to append
  (:func:`open_results_for_append`): a file without its owner's write
  permission is refused before any training, and an exclusive advisory lock
  (``flock``) is held from the repair to the last row appended, so a second
  sweep on the same file is refused at once instead of cutting the first
  one's half-written row (no lock where there is no ``fcntl``).

    >>> read_results(Path("no-such-results.jsonl"))
    []
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

from ..capacity import MAX_SEED
from ..errors import OutputError, ParameterError
from ..private import private_group
from ..reading import file_kind, shown_path

__all__ = [
    "MAX_RESULTS_BYTES",
    "ROW_FIELDS",
    "LATER_FIELDS",
    "row_problem",
    "check_results_file",
    "read_results",
    "repair_results",
    "make_results_folder",
    "open_results_for_append",
]

#: The largest results file read: about 250,000 runs (a row is about 1 KiB).
MAX_RESULTS_BYTES = 2**28

_REFUSED = "give --results a file this tool wrote for you (or a new file name)"


def _whole(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
    )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _curve(v: Any) -> bool:
    """``[[step, training FLOPs so far, held-out loss], ...]``: whole steps and FLOPs, finite losses."""
    return isinstance(v, list) and all(
        isinstance(p, list)
        and len(p) == 3
        and _whole(1)(p[0])
        and _whole(0)(p[1])
        and _number(p[2])
        and p[2] >= 0
        for p in v
    )


#: Every field of a row: what it must be, and the test.
ROW_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "key": ("text", lambda v: isinstance(v, str) and bool(v)),
    "structure": ("a name", lambda v: isinstance(v, str) and bool(v)),
    "width": ("a whole number of at least 1", _whole(1)),
    "lr": ("a number above 0", lambda v: _number(v) and v > 0),
    "seed": (f"a whole number from 0 to {MAX_SEED:,}", _whole(0, MAX_SEED)),
    "params_rule": ('"mup" or "global"', lambda v: v in ("mup", "global")),
    "steps": ("a whole number of at least 1", _whole(1)),
    "batch": ("a whole number of at least 1", _whole(1)),
    "params": ("a whole number", _whole(0)),
    "train_flops_per_sample": ("a whole number", _whole(0)),
    "train_flops": ("a whole number", _whole(0)),
    "eval_loss": ("null or a finite number of at least 0", lambda v: v is None or (_number(v) and v >= 0)),
    "curve": ("a list of [step, FLOPs, loss] triples", _curve),
    "train_loss_ema": ("null or a finite number", lambda v: v is None or _number(v)),
    "diverged": ("true or false", lambda v: isinstance(v, bool)),
    "seconds": ("a number of at least 0", lambda v: _number(v) and v >= 0),
    "cpu_seconds": ("a number of at least 0", lambda v: _number(v) and v >= 0),
}


#: The fields rows gained after the lab's first version (the lr rule, the loss curve and the CPU
#: time came with lr-transfer and the fitted laws): a row without some of them, and otherwise valid,
#: was written by an older einstruct. Its runs were trained with another setup, so it matches no
#: planned run: it is skipped, never refused and never reported.
LATER_FIELDS = ("params_rule", "curve", "cpu_seconds")


def row_problem(row: Any, may_lack: Collection[str] = ()) -> str | None:
    """What is wrong with ``row`` as a row of a results file; None if it is one.

    Fields named in ``may_lack`` may be missing (``LATER_FIELDS``: a row of an
    older einstruct); those present are checked as ever.
    """
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not a run's row (an object)"
    missing = [name for name in ROW_FIELDS if name not in row and name not in may_lack]
    if missing:
        return f"no field {', '.join(repr(m) for m in missing)}"
    unknown = sorted(set(row) - set(ROW_FIELDS))
    if unknown:
        return f"unknown field {', '.join(repr(u) for u in unknown)}"
    for name, (what, valid) in ROW_FIELDS.items():
        if name in row and not valid(row[name]):
            return f"field {name!r} must be {what}, got {json.dumps(row[name])[:40]}"
    own = f"{row['structure']}|{row['width']}|{row['lr']!r}|{row['seed']}|"
    rule = row["key"].endswith("|global")
    if not row["key"].startswith(own) or rule != (row.get("params_rule", "mup") == "global"):
        return f"its key {row['key']!r} is not the key of its own structure, width, lr, seed and rule"
    if row["train_flops"] != row["train_flops_per_sample"] * row["batch"] * row["steps"]:
        return "'train_flops' is not 'train_flops_per_sample' x 'batch' x 'steps'"
    if row["eval_loss"] is not None and (row["diverged"] or ("curve" in row and not row["curve"])):
        return "a final loss for a run that diverged or has no curve"
    return _curve_problem(row) if "curve" in row else None


def _curve_problem(row: dict[str, Any]) -> str | None:
    """What contradicts the rest of ``row`` in its curve (the frontier is read from the curve, the
    best learning rate from ``eval_loss``: they must be the same run's); None if nothing does."""
    curve, per_step = row["curve"], row["train_flops_per_sample"] * row["batch"]
    steps = [point[0] for point in curve]
    if any(a >= b for a, b in zip(steps, steps[1:])) or any(step > row["steps"] for step in steps):
        return "'curve' steps must increase and end at most at 'steps'"
    for step, flops, _ in curve:
        if flops != per_step * step:
            return f"'curve' FLOPs at step {step} are not 'train_flops_per_sample' x 'batch' x the step"
    if row["eval_loss"] is not None and curve[-1] != [row["steps"], row["train_flops"], row["eval_loss"]]:
        return "'eval_loss' is not the held-out loss of the curve's last point, after the last step"
    return None


def _line(line: bytes) -> tuple[str, Any]:
    """What a line of a results file is: ``("row", row)`` (of this version), ``("old", row)`` (a
    valid row of an older einstruct, lacking only some of :data:`LATER_FIELDS`), ``("bad", what is
    wrong)`` (JSON, not a row) or ``("text", what is wrong)`` (not JSON)."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deep for json
        return "text", "not a JSON line"
    problem = row_problem(row, may_lack=LATER_FIELDS)
    if problem is not None:
        return "bad", problem
    return ("row" if all(name in row for name in LATER_FIELDS) else "old"), row


def _check_status(path: Path, info: os.stat_result, writing: bool = False) -> None:
    """Refuse what is not a regular file of this user's that no one else can write (nor, when
    ``writing``, a file its owner made read-only)."""
    shown = shown_path(path)
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(
            f"--results {shown} is a link; the results file is never read or written through a link",
            hint="give the path of the file itself",
        )
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(
            f"--results {shown} is {file_kind(info.st_mode)}, not a results file", hint=_REFUSED
        )
    getuid = getattr(os, "geteuid", None)
    if getuid is not None and info.st_uid != getuid():
        raise OutputError(
            f"--results {shown} is owned by another user (uid {info.st_uid}): its rows would be "
            "reported as your measurements",
            hint="copy it to a file of your own if you trust its contents, or give --results another file",
        )
    if info.st_mode & 0o002 or (info.st_mode & 0o020 and not private_group(info.st_gid)):
        raise OutputError(
            f"--results {shown} can be written by others (mode {stat.filemode(info.st_mode)}): its "
            "rows could be forged",
            hint=f"chmod go-w {shown} if you trust its contents, or give --results another file",
        )
    if writing and not info.st_mode & stat.S_IWUSR:
        raise _read_only(path, f"mode {stat.filemode(info.st_mode)}")


def _read_only(path: Path, why: str) -> OutputError:
    """The error of a results file that cannot be appended to while runs are left to train."""
    shown = shown_path(path)
    return OutputError(
        f"--results {shown} is read-only ({why}): runs are left to train and their rows could not "
        "be saved; nothing was trained",
        hint=f"chmod u+w {shown} to resume the sweep in it, or give --results another file (a results "
        "file that holds every planned run is only read)",
    )


def _open(path: Path, flags: int, mode: int = 0o644) -> int | None:
    """A descriptor of ``path`` (never through a link, never blocking); None where it does not exist
    and ``flags`` do not create it."""
    shown = shown_path(path)
    try:
        info: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            return None
        info = None
    except OSError as exc:
        raise OutputError(
            f"cannot use --results {shown}: {exc.strerror or exc}", hint="give --results a path you can write"
        ) from None
    writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
    if info is not None:
        _check_status(path, info, writing)
    extra = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags | extra | getattr(os, "O_NOCTTY", 0), mode)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            return None
        raise OutputError(
            f"cannot create --results {shown}: No such file or directory",
            hint="give --results a path in a folder you can write",
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link put there since the check: refused as a link
            raise OutputError(
                f"--results {shown} is a link; the results file is never read or written through a link",
                hint="give the path of the file itself",
            ) from None
        if writing and info is not None and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _read_only(path, exc.strerror or str(exc)) from None
        raise OutputError(
            f"cannot open --results {shown}: {exc.strerror or exc}",
            hint="give --results a file in a folder you can write",
        ) from None
    try:
        _check_status(path, os.fstat(descriptor), writing)  # the file opened is the file checked
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _read(descriptor: int, path: Path) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size <= MAX_RESULTS_BYTES:
        chunk = os.read(descriptor, 1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
    raise ParameterError(
        f"--results {shown_path(path)} is larger than {MAX_RESULTS_BYTES // 2**20} MiB: no results file "
        "of a sweep is that large",
        hint=_REFUSED,
    )


def _parse(data: bytes, path: Path) -> tuple[list[dict[str, Any]], str, int]:
    """The rows of ``data``, what its last line is: "" (whole), "unterminated" (a whole row
    without its newline) or "torn" (the start of a row), and how many rows of an older einstruct
    were skipped. Refuses anything else with FILE:LINE."""
    lines = data.split(b"\n")
    rows: list[dict[str, Any]] = []
    old = 0
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        kind, found = _line(line)
        if kind in ("bad", "text"):
            raise ParameterError(
                f"{shown_path(path)}:{number}: not a row of a results file: {found}",
                hint=f"the file is not (or no longer) this tool's results; it was left as it is. Move "
                f"it aside, or {_REFUSED}",
            )
        if kind == "row":
            rows.append(found)
        else:
            old += 1
    tail = lines[-1]
    if not tail.strip():
        return rows, "", old
    kind, found = _line(tail)
    if kind == "row":
        return [*rows, found], "unterminated", old
    if kind == "old":
        return rows, "unterminated", old + 1
    if kind == "text" and tail.startswith(b"{") and tail.isascii():
        return rows, "torn", old
    raise ParameterError(
        f"{shown_path(path)}:{len(lines)}: not a row of a results file, nor the start of one",
        hint=f"the file is not this tool's results; it was left as it is. Move it aside, or {_REFUSED}",
    )


def check_results_file(path: Path) -> None:
    """Refuse, before any work, a ``--results`` that is not a regular file of this user's holding
    only valid rows (a missing file is fine: the sweep creates it). Says nothing of older rows:
    :func:`read_results` does, once."""
    _read_rows(path)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of the results file ``path``, validated whole (a torn last line is skipped,
    not cut: :func:`repair_results` cuts it); [] if there is no file. Only reads: no lock, and
    a read-only file is fine. Rows of an older einstruct are skipped with one warning line on
    standard error."""
    rows, old = _read_rows(path)
    if old:
        _warn_old_rows(path, old)
    return rows


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``path`` and how many rows of an older einstruct it holds; [], 0 if no file."""
    descriptor = _open(path, os.O_RDONLY)
    if descriptor is None:
        return [], 0
    try:
        data = _read(descriptor, path)
    finally:
        os.close(descriptor)
    rows, _, old = _parse(data, path)
    return rows, old


def _warn_old_rows(path: Path, count: int) -> None:
    """One line on standard error: ``count`` rows of an older einstruct were skipped."""
    fields = ", ".join(repr(name) for name in LATER_FIELDS)
    rows = f"{count} row{'s' if count > 1 else ''}"
    _warn(
        f"--results {shown_path(path)}: skipped {rows} of an older einstruct (without some of "
        f"{fields}): they match no run of this version and are left in the file"
    )


def _warn(message: str) -> None:
    """One warning line on standard error (none if no one reads it any more: the sweep goes on)."""
    try:
        sys.stderr.write(f"warning: {message}\n")
    except BrokenPipeError:
        pass


def _lock(descriptor: int, path: Path) -> None:
    """Hold an exclusive advisory lock on the open results file until ``descriptor`` is closed;
    refuse at once if another process holds it. Nothing where there is no ``fcntl`` (Windows) or
    the file system has no locks."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if not isinstance(exc, BlockingIOError) and exc.errno != errno.EACCES:
            # a file system without flock (ENOLCK, EOPNOTSUPP): unlocked, as without fcntl
            _warn(
                f"--results {shown_path(path)}: cannot be locked ({exc.strerror or exc}); do not "
                "run two sweeps on it at once"
            )
            return
        shown = shown_path(path)  # EACCES: how some file systems say another process holds it
        raise OutputError(
            f"--results {shown} is locked: another run is writing it (two sweeps appending to one "
            "results file could cut each other's rows); nothing was trained",
            hint="wait for that run to finish and rerun this command (it resumes from the file), or "
            "give --results another file",
        ) from None


def _repair(descriptor: int, path: Path) -> list[dict[str, Any]]:
    """Validate the open file whole, then make it end with a whole line; its rows."""
    try:
        data = _read(descriptor, path)
        rows, last, _ = _parse(data, path)
        if last == "unterminated":
            os.lseek(descriptor, 0, os.SEEK_END)
            os.write(descriptor, b"\n")
        elif last == "torn":
            os.ftruncate(descriptor, data.rfind(b"\n") + 1)
    except OSError as exc:
        raise OutputError(
            f"cannot repair --results {shown_path(path)}: {exc.strerror or exc}",
            hint="give --results a file you can write",
        ) from None
    return rows


def repair_results(path: Path) -> list[dict[str, Any]]:
    """Validate ``path`` whole, then make it end with a whole line before rows are appended;
    its rows (under the lock of :func:`open_results_for_append`, released on return).

    A last line without its newline (a process killed while writing it) is cut
    off, so the next row does not run into it and that run is trained again;
    a last line that is a whole row but lacks only the newline gets it. A file
    that is not this tool's results is refused and left as it is.
    """
    descriptor = _open(path, os.O_RDWR)
    if descriptor is None:
        return []
    try:
        _lock(descriptor, path)
        return _repair(descriptor, path)
    finally:
        os.close(descriptor)


def make_results_folder(path: Path) -> None:
    """The folder of the results file ``path``, made if missing (the summary goes there too)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot make the folder of --results {shown_path(path)}: {exc.strerror or exc}",
            hint="give --results a path in a folder you can write",
        ) from None


def open_results_for_append(path: Path) -> tuple[IO[str], list[dict[str, Any]]]:
    """``path`` opened to append rows (created with mode 0644 if missing), locked, validated and
    repaired as by :func:`repair_results`; and its rows.

    The exclusive lock is held until the stream is closed, so no other sweep
    repairs or appends to the file meanwhile: one that tries is refused at
    once. A location that cannot be written, or a file its owner made
    read-only, is an error that names it.
    """
    descriptor = _open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    assert descriptor is not None  # O_CREAT: made or refused
    try:
        _lock(descriptor, path)
        rows = _repair(descriptor, path)
        return os.fdopen(descriptor, "a", encoding="utf-8"), rows
    except BaseException:
        os.close(descriptor)
        raise
