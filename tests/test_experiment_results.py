"""`einstruct experiment`: the results file (``--results``) is input someone else could have written.

It is used only if it is a regular file of this user's that no one else can
write, holding nothing but valid rows; anything else is refused with an error
that names the file (and the line), before any training, and left as it is.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from einstruct.cli import main
from einstruct.errors import EinstructError
from einstruct.experiments import sweep
from einstruct.experiments.results import LATER_FIELDS

try:
    import fcntl
except ImportError:  # no advisory locks here: the sweep does not lock
    fcntl = None  # type: ignore[assignment]

SMOKE = ["experiment", "scaling", "--smoke", "--workers", "0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> bytes:
    """The results file of the smoke sweep (4 runs), as bytes."""
    results = tmp_path_factory.mktemp("finished") / "r.jsonl"
    assert main([*SMOKE, "--results", str(results)]) == 0
    return results.read_bytes()


def _refused(capsys, results: Path, *more: str) -> str:
    """Run the smoke sweep on ``results``: it must be refused (status 2, no traceback); the error."""
    start = time.monotonic()
    assert main([*SMOKE, "--results", str(results), *more]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "hint:" in err and time.monotonic() - start < 30
    return err


# --- what is not this tool's results is refused and left exactly as it was ---------------------


@pytest.mark.parametrize(
    "content",
    [
        b"my notes\nline two",  # a notes file: its last line was cut, then rows appended
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",  # an image
        b'{"a": 1}\n',  # JSON lines, but not rows
        b"",  # empty: a file with no runs yet is fine (checked below)
    ],
)
def test_a_file_that_is_not_a_results_file_is_refused_and_left_as_it_is(tmp_path, capsys, content):
    results = tmp_path / "notes.txt"
    results.write_bytes(content)
    if not content:
        assert main([*SMOKE, "--results", str(results)]) == 0  # an empty file: every run trained
        assert len(results.read_bytes().splitlines()) == 4
        return
    err = _refused(capsys, results)
    assert f"{results}:1: not a row of a results file" in err or f"{results}:2: not a row" in err
    assert results.read_bytes() == content


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda row: [1, 2], "a JSON list, not a run's row"),
        (lambda row: {**row, "eval_loss": "abc"}, "field 'eval_loss' must be null or a finite number"),
        (lambda row: {k: v for k, v in row.items() if k != "train_flops"}, "no field 'train_flops'"),
        (lambda row: {k: v for k, v in row.items() if k != "curve"} | {"seed": -1}, "field 'seed' must be"),
        (lambda row: {k: v for k, v in row.items() if k not in ("curve", "steps")}, "no field 'steps'"),
        (lambda row: {**_older(row), "params_rule": "adam"}, "field 'params_rule' must be"),
        (lambda row: {**row, "structure": "dense"}, "is not the key of its own structure"),
        (lambda row: {**row, "curve": [[1, 2, "x"]]}, "field 'curve' must be a list"),
        (lambda row: {**row, "seed": 2**64}, "field 'seed' must be a whole number"),
    ],
)
def test_an_edited_row_is_refused_with_its_file_and_line(tmp_path, capsys, finished, edit, problem):
    results = tmp_path / "r.jsonl"
    lines = finished.decode().splitlines()
    lines[1] = json.dumps(edit(json.loads(lines[1])))
    results.write_text("\n".join(lines) + "\n")
    before = results.read_bytes()
    err = _refused(capsys, results)
    assert f"{results}:2: not a row of a results file: " in err and problem in err
    assert results.read_bytes() == before


def test_read_and_repair_agree_on_a_garbage_last_line_ending_in_a_newline(tmp_path, finished):
    results = tmp_path / "r.jsonl"
    results.write_bytes(finished + b"garbage\n")
    for read in (sweep.read_results, sweep.repair_results):
        with pytest.raises(EinstructError, match=r"r\.jsonl:5: not a row of a results file"):
            read(results)
    assert results.read_bytes() == finished + b"garbage\n"


def test_a_torn_last_line_is_cut_and_a_whole_one_gets_its_newline(tmp_path, finished):
    results = tmp_path / "r.jsonl"
    lines = finished.splitlines(keepends=True)
    results.write_bytes(b"".join(lines[:-1]) + lines[-1][:-1])  # a whole row without its newline
    assert [r["key"] for r in sweep.repair_results(results)] == [json.loads(x)["key"] for x in lines]
    assert results.read_bytes() == finished
    results.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # killed mid-write
    assert len(sweep.read_results(results)) == 3 and results.read_bytes().endswith(lines[-1][:40])
    sweep.repair_results(results)
    assert results.read_bytes() == b"".join(lines[:-1])


# --- only a regular file of this user's, not writable by others -------------------------------


def test_a_directory_is_refused(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    assert f"--results {tmp_path / 'd'} is a directory, not a results file" in _refused(
        capsys, tmp_path / "d"
    )


def _in_thread(call, *args):
    """Run ``call`` in a thread for at most 20 s: (finished, what it raised)."""
    outcome: list[BaseException | None] = []

    def target():
        try:
            call(*args)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    return bool(outcome), (outcome[0] if outcome else None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "r.jsonl"
    os.mkfifo(fifo)
    done, raised = _in_thread(sweep.read_results, fifo)
    assert done and isinstance(raised, EinstructError) and "is a FIFO (named pipe)" in str(raised)


def test_a_link_is_refused_even_to_a_results_file(tmp_path, capsys, finished):
    (tmp_path / "real.jsonl").write_bytes(finished)
    (tmp_path / "r.jsonl").symlink_to(tmp_path / "real.jsonl")
    assert "is a link" in _refused(capsys, tmp_path / "r.jsonl")
    if os.path.exists("/dev/zero"):  # never read to the end
        (tmp_path / "z.jsonl").symlink_to("/dev/zero")
        done, raised = _in_thread(sweep.read_results, tmp_path / "z.jsonl")
        assert done and isinstance(raised, EinstructError) and "is a link" in str(raised)
    assert (tmp_path / "real.jsonl").read_bytes() == finished


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_place_where_no_file_can_be_made_is_named(capsys):
    err = _refused(capsys, Path("/proc/r.jsonl"))
    assert "cannot create --results /proc/r.jsonl" in err


def test_a_results_file_others_can_write_is_not_trusted(tmp_path, capsys, finished):
    results = tmp_path / "r.jsonl"
    results.write_bytes(finished)
    results.chmod(0o666)
    assert "can be written by others" in _refused(capsys, results)
    assert results.read_bytes() == finished


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file away")
def test_a_results_file_of_another_user_is_not_trusted(tmp_path, capsys, finished):
    results = tmp_path / "r.jsonl"
    results.write_bytes(finished)
    os.chown(results, 12345, -1)
    assert "owned by another user (uid 12345)" in _refused(capsys, results)
    assert results.read_bytes() == finished


def test_a_file_larger_than_the_bound_is_not_read(tmp_path, monkeypatch, finished):
    results = tmp_path / "r.jsonl"
    results.write_bytes(finished)
    monkeypatch.setattr("einstruct.experiments.results.MAX_RESULTS_BYTES", len(finished) - 1)
    with pytest.raises(EinstructError, match="is larger than"):
        sweep.read_results(results)


# --- the outputs and arguments: checked before the sweep ----------------------------------------


def test_an_output_in_place_of_the_teacher_data_cache_is_refused_first(tmp_path, capsys):
    results = tmp_path / "ok.jsonl"
    err = _refused(capsys, results, "--table", f"{results}.data")
    assert "is the teacher-data cache folder of --results" in err and not results.exists()


@pytest.mark.parametrize("flag", ["--results", "--json", "--table", "--plot"])
def test_an_empty_path_is_refused(tmp_path, capsys, flag, monkeypatch):
    monkeypatch.chdir(tmp_path)
    more = [] if flag == "--results" else ["--results", "r.jsonl"]
    err = _refused(capsys, tmp_path / "r.jsonl", *more, f"{flag}=")
    assert f"{flag} is empty" in err and not list(tmp_path.iterdir())


def test_a_leader_that_is_not_in_the_sweep_is_refused(tmp_path, capsys):
    err = _refused(capsys, tmp_path / "r.jsonl", "--leader", "nosuch")
    assert "--leader 'nosuch'" in err and "dense, btt, kronecker, low_rank" in err
    assert not (tmp_path / "r.jsonl").exists()


def test_the_committed_results_are_valid(tmp_path):
    for name in ("quick", "moe", "lr-transfer"):
        source = Path(__file__).parent.parent / "docs" / "scaling" / f"{name}.jsonl"
        shutil.copyfile(source, tmp_path / f"{name}.jsonl")
        rows = sweep.read_results(tmp_path / f"{name}.jsonl")
        assert len(rows) == len(source.read_bytes().splitlines())


# --- an interrupt stops the workers at once and keeps what finished ------------------------------


def test_ctrl_c_stops_the_workers_at_once_and_keeps_what_finished():
    """Two workers: a short job finishes, three 60-second jobs do not; Ctrl-C after the first result
    must stop at once, with no worker left running and the first result recorded."""
    recorded: list[object] = []

    def record(result):
        recorded.append(result)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sweep._in_workers(time.sleep, [0.01, 60, 60, 60], 2, record)
    assert recorded == [None] and time.monotonic() - start < 30
    assert multiprocessing.active_children() == []  # terminated, not left to finish their runs


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self") or shutil.which("einstruct") is None, reason="Linux")
def test_sigterm_stops_the_sweep_and_its_workers_and_says_what_is_saved(tmp_path):
    results = tmp_path / "r.jsonl"
    command = ["einstruct", *SMOKE[:3], "--steps", "400", "--widths", "16", "24", "--workers", "2"]
    process = subprocess.Popen(
        [*command, "--results", str(results)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        workers = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    saved = results.read_bytes().count(b"\n")
    assert process.returncode == 143 and "internal error" not in err
    assert f"stopped by SIGTERM: {saved} of its 7 runs are saved in {results}" in err
    assert "rerun the same command to resume" in err
    time.sleep(0.5)
    assert [w for w in workers if Path(f"/proc/{w}").exists() and "(python" in _stat(w)] == []


def _stat(pid: int) -> str:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return "" if state.rsplit(")", 1)[1].split()[0] == "Z" else state


def _own_private_group() -> bool:
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(user.pw_gid)
    return group.gr_name == user.pw_name and not set(group.gr_mem) - {user.pw_name}


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or not _own_private_group(), reason="needs a user private group"
)
def test_a_file_writable_by_the_users_own_private_group_is_trusted(tmp_path, finished):
    # umask 002 (Ubuntu's default) checks the committed results out 0664: the documented
    # reprint was refused as "can be written by others"
    results = tmp_path / "r.jsonl"
    results.write_bytes(finished)
    results.chmod(0o664)
    assert main([*SMOKE, "--results", str(results)]) == 0
    assert results.read_bytes() == finished  # every run was in it: nothing trained, nothing appended


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file away")
def test_a_file_writable_by_another_group_is_not_trusted(tmp_path, capsys, finished):
    results = tmp_path / "r.jsonl"
    results.write_bytes(finished)
    os.chown(results, -1, 12345)
    results.chmod(0o664)
    assert "can be written by others" in _refused(capsys, results)


def test_a_line_nested_too_deep_for_json_is_refused_not_a_crash(tmp_path, capsys):
    results = tmp_path / "deep.jsonl"
    content = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    results.write_bytes(content)
    assert "deep.jsonl:1: not a row of a results file" in _refused(capsys, results)
    assert results.read_bytes() == content


# --- two sweeps on one file: the second is refused at once, never cuts the first's row ----------


@pytest.mark.skipif(fcntl is None, reason="no advisory locks (fcntl) here")
def test_a_results_file_another_run_is_writing_is_refused_at_once(tmp_path, capsys, finished):
    results = tmp_path / "r.jsonl"
    lines = finished.splitlines(keepends=True)
    writing = b"".join(lines[:2]) + lines[2][:40]  # the other run is half-way through its row
    results.write_bytes(writing)
    with open(results, "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        err = _refused(capsys, results)
        assert f"--results {results} is locked: another run is writing it" in err
        assert results.read_bytes() == writing  # its half-written row was not cut
    assert main([*SMOKE, "--results", str(results)]) == 0  # released: repaired and resumed
    assert len(_rows(results)) == 4 and results.read_bytes().startswith(b"".join(lines[:2]))


@pytest.mark.skipif(fcntl is None, reason="no advisory locks (fcntl) here")
def test_the_lock_is_held_from_the_repair_to_the_last_append(tmp_path, monkeypatch, finished):
    results = tmp_path / "r.jsonl"
    results.write_bytes(b"".join(finished.splitlines(keepends=True)[:2]))
    work, held = sweep._work, []

    def locked_while_training(job):
        held.append(_locked(results))
        return work(job)

    monkeypatch.setattr(sweep, "_work", locked_while_training)
    assert main([*SMOKE, "--results", str(results)]) == 0
    assert held == [True, True] and not _locked(results)  # released when the sweep is done
    assert len(_rows(results)) == 4


def _locked(path: Path) -> bool:
    """Whether another open file description holds ``path``'s lock."""
    with open(path, "rb") as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- a read-only results file: reprinted when it holds every run, refused when runs are left ----


def _read_only(monkeypatch, results: Path) -> None:
    """Make ``results`` read-only (mode 0444). Opening it to write then fails for any user but
    root; for root too, here, as the kernel fails it for others."""
    results.chmod(0o444)
    real = os.open

    def guarded(path, flags, *args, **kwargs):
        if os.fspath(path) == os.fspath(results) and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


def test_a_read_only_results_file_holding_every_run_is_reprinted(tmp_path, capsys, monkeypatch, finished):
    results = tmp_path / "r.jsonl"
    results.write_bytes(finished[:-1])  # its last row lacks only its newline: not repaired, read
    _read_only(monkeypatch, results)
    monkeypatch.setattr(sweep, "_work", _never_trained)
    assert main([*SMOKE, "--results", str(results)]) == 0
    assert "4 of 4 runs already in the results file" in capsys.readouterr().err
    assert results.read_bytes() == finished[:-1]
    assert json.loads((tmp_path / "r.jsonl.summary.json").read_text())["task"]["steps"] > 0


def test_a_read_only_results_file_with_runs_left_is_refused_before_training(
    tmp_path, capsys, monkeypatch, finished
):
    results = tmp_path / "r.jsonl"
    partial = b"".join(finished.splitlines(keepends=True)[:3])
    results.write_bytes(partial)
    _read_only(monkeypatch, results)
    monkeypatch.setattr(sweep, "_work", _never_trained)
    err = _refused(capsys, results)
    assert f"--results {results} is read-only (mode -r--r--r--): runs are left to train" in err
    assert f"chmod u+w {results}" in err and results.read_bytes() == partial
    assert not (tmp_path / "r.jsonl.summary.json").exists()


def _never_trained(job):
    raise AssertionError("a run was trained")


# --- rows of an older einstruct: skipped with one warning, never refusing the file --------------


def _older(row: dict) -> dict:
    """``row`` as an einstruct before lr-transfer and the fitted laws wrote it."""
    return {k: v for k, v in row.items() if k not in LATER_FIELDS}


def test_rows_of_an_older_einstruct_are_skipped_with_one_warning(tmp_path, capsys, finished):
    results = tmp_path / "r.jsonl"
    lines = finished.decode().splitlines()
    older = [json.dumps(_older(json.loads(line)), sort_keys=True) for line in lines[:2]]
    results.write_text("\n".join([*older, *lines[2:]]) + "\n")
    assert [r["key"] for r in sweep.read_results(results)] == [json.loads(x)["key"] for x in lines[2:]]
    assert capsys.readouterr().err.count("skipped 2 rows of an older einstruct") == 1
    assert main([*SMOKE, "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"--results {results}: skipped 2 rows of an older" in err
    assert "2 of 4 runs already in the results file" in err
    rows = _rows(results)
    assert len(rows) == 6 and rows[:2] == [json.loads(x) for x in older]  # left in the file
    assert sorted(r["key"] for r in rows[4:]) == sorted(json.loads(x)["key"] for x in lines[:2])


@pytest.mark.skipif(fcntl is None, reason="no advisory locks (fcntl) here")
@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOLCK])
def test_a_lock_the_file_system_answers_otherwise_is_refused_or_said(
    tmp_path, capsys, monkeypatch, finished, code
):
    # some file systems say EACCES where another process holds the lock: refused, as
    # EAGAIN is; one without locks (ENOLCK) goes on unlocked, and says so
    results = tmp_path / "r.jsonl"
    results.write_bytes(b"".join(finished.splitlines(keepends=True)[:2]))

    def flock(fd, how):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    if code == errno.EACCES:
        assert "is locked: another run is writing it" in _refused(capsys, results)
        assert len(_rows(results)) == 2
    else:
        assert main([*SMOKE, "--results", str(results)]) == 0
        assert "cannot be locked" in capsys.readouterr().err and len(_rows(results)) == 4
