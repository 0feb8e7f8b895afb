"""Choices measured, not modelled: time a layer's candidate paths once, keep the fastest.

A layer with several ways to compute one map (planned steps, dense W, a fused
kernel) hands them to a :class:`PathChooser` with a prior (the cost model's
estimates). On the first call for a key (structure hash, device, dtype,
token-count bucket, training or inference) it times every candidate the prior
does not rule out (forward, and backward when grad is on; a warm-up, then the
median of interleaved rounds; CUDA synchronized), keeps the winner in memory and
in a JSON file in the user's cache directory, and says which path won and why.
No path is taken unmeasured, except the caller's ``fallback`` when timing is
impossible (tracing, compiling, meta tensors).

    >>> chooser = PathChooser(cache_dir=None)
    >>> pick = chooser.choose("abc", {"steps": lambda x: x * 2, "dense": lambda x: x + x},
    ...                       (torch.ones(8, 4),), tokens=8)
    >>> pick.winner in ("steps", "dense"), pick.source
    (True, 'measured')

Imports torch, the standard library and :mod:`einstruct.private`. A standalone generated file does not carry
it: there ``strategy="measured"`` needs einstruct installed (the layer says so).
"""

import contextlib
import functools
import json
import math
import os
import platform
import stat
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .env import inside_transform

__all__ = [
    "PathChoice",
    "PathChooser",
    "choice_key",
    "default_cache_dir",
    "device_label",
    "token_bucket",
]
__all__ += ["can_measure", "default_chooser", "structure_key", "time_paths"]

CACHE_FILE, CACHE_VERSION = "measured-paths.json", 1
MAX_CACHE_BYTES = 1 << 20  # a larger file is not ours: ignored
MAX_ENTRIES = 2000
MAX_TEXT = 400  # longest key, path name or note accepted from the cache file


@dataclass(frozen=True)
class PathChoice:
    """Which path a layer takes for one key, and why.

    ``timings_ms``: median ms per timed path; ``skipped``: path -> why not timed
    (the prior ruled it out, it failed); ``source``: ``"measured"`` (timed in this
    process), ``"disk"`` (the cache file), ``"fallback"`` (timing impossible),
    ``"only"`` (the layer has one path: nothing to choose).
    """

    key: str
    winner: str
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    source: str = "measured"

    def reason(self) -> str:
        """One line: the winner, every timing, every skipped path and why.

        >>> PathChoice("k", "steps", {"steps": 1.0, "dense": 2.5}).reason()
        'steps (measured): steps 1.000 ms, dense 2.500 ms (2.50x)'
        """
        if self.source == "only":
            why = "".join(f"; {n}: {w}" for n, w in sorted(self.skipped.items()))
            return f"{self.winner} (the only path{why})"
        if self.source == "fallback":
            return f"{self.winner} (fallback: {self.skipped.get(self.winner, 'not measured')})"
        best = self.timings_ms.get(self.winner, 0.0)
        parts = []
        for name, ms in sorted(self.timings_ms.items(), key=lambda kv: kv[1]):
            ratio = f" ({ms / best:.2f}x)" if name != self.winner and best > 0 else ""
            parts.append(f"{name} {ms:.3f} ms{ratio}")
        parts += [
            f"{name} not timed: {why}" for name, why in sorted(self.skipped.items())
        ]
        return f"{self.winner} ({self.source}): " + ", ".join(parts)


def token_bucket(tokens: int) -> int:
    """The bucket a token count falls in: the next power of two (1, 2, 4, ...).

    >>> token_bucket(1), token_bucket(2048), token_bucket(2049)
    (1, 2048, 4096)
    """
    return 1 << max(0, int(tokens) - 1).bit_length()


def device_label(device: torch.device | str) -> str:
    """A name for the hardware a timing holds on: the GPU's name, or the CPU's and the thread count.

    >>> device_label("cpu").startswith("cpu ")
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _gpu_label(
            device.index if device.index is not None else torch.cuda.current_device()
        )
    return f"{device.type} {_cpu_name()} threads={torch.get_num_threads()}"


@functools.cache
def _gpu_label(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"cuda {torch.cuda.get_device_name(index)} sm{major}{minor}"


@functools.cache
def _cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``'s ``model name`` on Linux, where
    ``platform.processor()`` says only ``x86_64``; the brand string on macOS), else the
    architecture: a home directory shared by machines of several kinds keeps their
    timings apart."""
    return _model_name() or platform.processor() or platform.machine() or "unknown"


def _model_name() -> str:
    """The CPU's model name where the system says it, printable and short; else ""."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh.read(1 << 16).splitlines():
                label, _, value = line.partition(":")
                if label.strip() in ("model name", "Model", "cpu model"):
                    text = value
                    break
    except OSError:
        pass
    if not text and platform.system() == "Darwin":
        import subprocess

        try:
            text = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=2,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
    name = " ".join("".join(ch for ch in text if ch.isprintable()).split())
    return name.replace("|", "/")[:120]


def choice_key(
    structure: str, device: str, dtype: torch.dtype | str, tokens: int, train: bool
) -> str:
    """The key one measurement holds for.

    >>> choice_key("ab12", "cpu x86_64 threads=1", torch.float32, 3000, True)
    'ab12|cpu x86_64 threads=1|torch.float32|tokens<=4096|train'
    """
    mode = "train" if train else "infer"
    return f"{structure}|{device}|{dtype}|tokens<={token_bucket(tokens)}|{mode}"


def structure_key(spec_sha256: str, backend: str) -> str:
    """What a layer's measurements are keyed by besides the hardware: its spec's hash and backend."""
    return f"{spec_sha256}/{backend}"


def default_cache_dir() -> str | None:
    """``$XDG_CACHE_HOME/einstruct`` (if absolute, as XDG says), else ``~/.cache/einstruct``, else None."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "einstruct")


def can_measure(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether timing is meaningful here: not while tracing or compiling, not inside
    a torch.func transform or activation checkpointing, not on meta or fake tensors."""
    if (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or inside_transform()
    ):
        return False
    for t in tensors:
        if (
            t.device.type == "meta"
            or type(t) is not torch.Tensor
            and not isinstance(t, torch.nn.Parameter)
        ):
            return False
    return True


def _private_dir(path: str, create: bool) -> bool:
    """Whether ``path`` is a directory (not a link) only its owner (us) can write, in a
    parent no other user can rename it out of (:func:`einstruct.private.safe_parent`);
    made 0700 when ``create``."""
    from ..private import safe_parent

    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or not _owned(st):
            return False
        return not hasattr(os, "getuid") or safe_parent(path, os.getuid())
    except OSError:
        return False


def _owned(st: os.stat_result) -> bool:
    """Whether a file's owner is this user and nobody else can write it."""
    return not hasattr(os, "getuid") or (
        st.st_uid == os.getuid() and not st.st_mode & 0o022
    )


def _read_cache(directory: str) -> dict[str, dict[str, Any]]:
    """The entries of the cache file, fully validated; empty when missing, foreign or malformed."""
    if not _private_dir(directory, create=False):
        return {}
    try:
        fd = os.open(
            os.path.join(directory, CACHE_FILE),
            # no link followed; a FIFO or device at the path must not block the open
            os.O_RDONLY
            | getattr(os, "O_NOFOLLOW", 0)
            | getattr(os, "O_NONBLOCK", 0)
            | getattr(os, "O_CLOEXEC", 0),
        )
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_size > MAX_CACHE_BYTES
            or not _owned(st)
        ):
            return {}
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_CACHE_BYTES + 1)
        if len(raw) > MAX_CACHE_BYTES:
            return {}
        return _valid_entries(json.loads(raw.decode("utf-8")))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, OverflowError):
        return {}
    finally:
        os.close(fd)


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def _valid_entries(data: object) -> dict[str, dict[str, Any]]:
    """The entries of a parsed cache document, all of them or none (a partly valid file is not trusted)."""
    if (
        not isinstance(data, dict)
        or set(data) != {"version", "entries"}
        or type(data["version"]) is not int
        or data["version"] != CACHE_VERSION
    ):
        return {}
    entries = data["entries"]
    if not isinstance(entries, dict) or len(entries) > MAX_ENTRIES:
        return {}
    checked = {key: _valid_entry(key, entry) for key, entry in entries.items()}
    return (
        {}
        if None in checked.values()
        else {k: v for k, v in checked.items() if v is not None}
    )


def _milliseconds(value: object) -> bool:
    """Whether a cache file's timing is a plain, finite, non-negative number of ms
    (an int of any size is accepted only below 2**53: float() of a huge one raises).

    >>> _milliseconds(1.5), _milliseconds(10**400), _milliseconds(float("nan")), _milliseconds(True)
    (True, False, False, False)
    """
    if type(value) is int:
        return 0 <= value < 2**53
    return type(value) is float and math.isfinite(value) and value >= 0


def _valid_entry(key: object, entry: object) -> dict[str, Any] | None:
    fields = {"winner", "timings_ms", "skipped"}
    if not _short_text(key) or not isinstance(entry, dict) or set(entry) != fields:
        return None
    timings, skipped, winner = entry["timings_ms"], entry["skipped"], entry["winner"]
    if (
        not isinstance(timings, dict)
        or not isinstance(skipped, dict)
        or not 0 < len(timings) <= 64
    ):
        return None
    for name, ms in timings.items():
        if not _short_text(name) or not _milliseconds(ms):
            return None
    if len(skipped) > 64 or not all(
        _short_text(n) and _short_text(w) for n, w in skipped.items()
    ):
        return None
    if (
        not _short_text(winner)
        or winner not in timings
        or timings[winner] != min(timings.values())
    ):
        return None
    return {"winner": winner, "timings_ms": dict(timings), "skipped": dict(skipped)}


def _write_cache(directory: str, entries: Mapping[str, Mapping[str, Any]]) -> bool:
    """Write the entries atomically (a temporary file renamed over the old one); False when impossible."""
    if not _private_dir(directory, create=True):
        return False
    text = json.dumps(
        {"version": CACHE_VERSION, "entries": entries}, sort_keys=True, indent=1
    )
    if len(text) > MAX_CACHE_BYTES:
        return False
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".measured-", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(directory, CACHE_FILE))
        return True
    except OSError:
        with contextlib.suppress(OSError, TypeError):
            os.unlink(tmp)  # type: ignore[arg-type]
        return False


def time_paths(
    candidates: Mapping[str, Callable[..., Any]],
    inputs: Sequence[torch.Tensor],
    wrt: Sequence[torch.Tensor] = (),
    backward: bool = True,
    repeats: int = 5,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, float], dict[str, str]]:
    """Median milliseconds of each candidate, timed interleaved round by round, and the failures.

    Each is called as ``fn(*inputs)``; with ``backward`` the output's gradients with
    respect to the inputs and ``wrt`` that require grad too. One that raises is dropped, noted.
    """
    inputs = [
        t.detach().requires_grad_(t.requires_grad) for t in inputs
    ]  # the user's graph untouched
    cuda = any(t.device.type == "cuda" for t in (*inputs, *wrt))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    targets = [t for t in (*inputs, *wrt) if t.requires_grad]

    def runner(fn: Callable[..., Any]) -> Callable[[], None]:
        def run() -> (
            None
        ):  # forward, and backward by autograd.grad: no ``.grad`` is touched
            with torch.enable_grad() if backward else torch.no_grad():
                out = fn(*inputs)
                if backward and targets and out.requires_grad:
                    torch.autograd.grad(
                        out, targets, torch.ones_like(out), allow_unused=True
                    )

        return run

    runs = {name: runner(fn) for name, fn in candidates.items()}
    failed: dict[str, str] = {}
    for name, run in list(runs.items()):
        try:
            for _ in range(max(1, warmup)):
                run()
        except Exception as exc:  # noqa: BLE001  a path that cannot run here is not a candidate here
            failed[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            del runs[name]
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, repeats)):
        for name, run in runs.items():
            sync()
            start = clock()
            run()
            sync()
            samples[name].append(clock() - start)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}, failed


class PathChooser:
    """Measures candidate paths once per key and remembers the winner (memory, then disk).

    ``cache_dir``: where the JSON cache lives (``default_cache_dir()`` by
    default; None keeps choices in memory only). ``prior_skip``: a candidate
    the prior puts more than this many times above the prior's best is not
    timed (``math.inf`` times everything). ``repeats``/``warmup``: timing rounds.
    """

    def __init__(
        self,
        cache_dir: str | None = "",
        prior_skip: float = 8.0,
        repeats: int = 5,
        warmup: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cache_dir = default_cache_dir() if cache_dir == "" else cache_dir
        self.prior_skip, self.repeats, self.warmup, self.clock = (
            prior_skip,
            repeats,
            warmup,
            clock,
        )
        self.memory: dict[str, PathChoice] = {}
        self.measurements = (
            0  # how many keys were timed (not found in memory or on disk)
        )

    def lookup(self, key: str, names: Sequence[str]) -> PathChoice | None:
        """The remembered choice for ``key`` if its winner is still among ``names``."""
        hit = self.memory.get(key)
        if hit is not None and hit.winner in names:
            return hit
        entry = (
            _read_cache(self.cache_dir).get(key) if self.cache_dir is not None else None
        )
        if entry is None or entry["winner"] not in names:
            return None
        choice = PathChoice(
            key, entry["winner"], entry["timings_ms"], entry["skipped"], "disk"
        )
        self.memory[key] = choice
        return choice

    def choose(
        self,
        structure: str,
        candidates: Mapping[str, Callable[..., Any]],
        inputs: Sequence[torch.Tensor],
        tokens: int | None = None,
        wrt: Sequence[torch.Tensor] = (),
        prior: Mapping[str, float] | None = None,
        fallback: str | None = None,
        persist: bool = True,
    ) -> PathChoice:
        """The path to take for these inputs: remembered, else measured now.

        ``structure``: the structure's hash (and anything else that changes the
        candidates' code); ``candidates``: name -> ``fn(*inputs)``, one map; ``tokens``:
        default the first input's rows; ``wrt``: the parameters a training step
        differentiates; ``prior``: name -> modelled cost; ``fallback``: the path
        when timing is impossible (default: the first candidate); ``persist``:
        False keeps the choice in memory only (timings that hold for no other run).
        """
        if not candidates:
            raise ValueError("choose() needs at least one candidate path")
        x = inputs[0]
        rows = int(x.shape[0]) if x.dim() > 0 else 1
        train = torch.is_grad_enabled() and any(
            t.requires_grad for t in (*inputs, *wrt)
        )
        tokens = rows if tokens is None else tokens
        key = choice_key(structure, device_label(x.device), x.dtype, tokens, train)
        names = list(candidates)
        name = fallback if fallback is not None and fallback in candidates else names[0]
        if (
            tokens <= 0 or x.numel() == 0
        ):  # nothing to time, and nothing a later call could reuse
            return PathChoice(key, name, {}, {name: "no tokens to time"}, "fallback")
        found = self.lookup(key, names)
        if found is not None:
            return found
        if not can_measure([*inputs, *wrt]):
            why = {
                name: "timing impossible while tracing, compiling, transforming or checkpointing"
            }
            return PathChoice(key, name, {}, why, "fallback")
        timed, skipped = self._prune(names, prior, fallback)
        timings, failed = time_paths(
            {n: candidates[n] for n in timed},
            inputs,
            wrt,
            train,
            self.repeats,
            self.warmup,
            self.clock,
        )
        skipped.update(failed)
        if not timings:
            raise RuntimeError(f"every candidate path failed: {failed}")
        winner = min(timings, key=lambda n: (timings[n], names.index(n)))
        choice = PathChoice(key, winner, timings, skipped, "measured")
        self.measurements += 1
        self.memory[key] = choice
        if persist:
            self._store(choice)
        return choice

    def _prune(
        self,
        names: list[str],
        prior: Mapping[str, float] | None,
        fallback: str | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The candidates worth timing and, for the rest, the prior's verdict (the
        fallback, the path taken unmeasured, is always timed)."""
        prior = prior or {}
        known = [
            prior[n]
            for n in names
            if n in prior and math.isfinite(prior[n]) and prior[n] > 0
        ]
        if not known:
            return names, {}
        best = min(known)
        timed, skipped = [], {}
        for n in names:
            ratio = prior.get(n, best) / best
            if ratio > self.prior_skip and n != fallback:
                skipped[n] = (
                    f"the cost model puts it at {ratio:.1f}x the best (> {self.prior_skip:g}x)"
                )
            else:
                timed.append(n)
        return timed, skipped

    def _store(self, choice: PathChoice) -> None:
        if self.cache_dir is None:
            return
        entries = _read_cache(self.cache_dir)
        entries[choice.key] = {
            "winner": choice.winner,
            "timings_ms": dict(choice.timings_ms),
            "skipped": {n: w[:MAX_TEXT] for n, w in choice.skipped.items()},
        }
        _write_cache(self.cache_dir, dict(list(entries.items())[-MAX_ENTRIES:]))


@functools.cache
def default_chooser() -> PathChooser:
    """The process-wide chooser (cache in the user's cache directory), made on first use."""
    return PathChooser()
