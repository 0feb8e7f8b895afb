"""The measured-path chooser (einstruct.nn.measured) with fake candidates on a fake clock.

Each fake candidate advances a counter clock by a fixed cost when called, so
every timing is exact and the tests cannot be flaky.
"""

import json
import os

import pytest
import torch

from einstruct.nn import measured
from einstruct.nn.measured import PathChooser, choice_key, default_cache_dir, token_bucket


class FakeClock:
    """A clock that only moves when a candidate does work."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: dict[str, int] = {}

    def __call__(self) -> float:
        return self.now

    def path(self, name: str, cost: float, backward_cost: float = 0.0):
        clock = self

        class Work(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                clock.now += backward_cost
                return g * 2

        def fn(x):
            self.calls[name] = self.calls.get(name, 0) + 1
            self.now += cost
            return Work.apply(x)

        return fn


def _paths(clock: FakeClock, costs: dict[str, float]):
    return {name: clock.path(name, cost) for name, cost in costs.items()}


X = (torch.ones(100, 4),)


def test_the_fastest_candidate_wins_with_its_exact_timings(tmp_path):
    clock = FakeClock()
    chooser = PathChooser(cache_dir=str(tmp_path), clock=clock, repeats=3)
    pick = chooser.choose("s", _paths(clock, {"steps": 0.003, "dense": 0.001, "fused": 0.002}), X)
    assert pick.winner == "dense" and pick.source == "measured"
    assert pick.timings_ms == pytest.approx({"steps": 3.0, "dense": 1.0, "fused": 2.0})
    assert clock.calls == {"steps": 4, "dense": 4, "fused": 4}  # one warm-up, three rounds
    assert "dense 1.000 ms" in pick.reason() and "steps 3.000 ms (3.00x)" in pick.reason()


def test_backward_counts_when_grad_is_on():
    clock = FakeClock()
    chooser = PathChooser(cache_dir=None, clock=clock)
    weight = torch.nn.Parameter(torch.ones(4))
    paths = {
        "cheap_forward": clock.path("cheap_forward", 0.001, backward_cost=0.010),
        "even": clock.path("even", 0.004, 0.001),
    }
    x = (torch.ones(8, 4, requires_grad=True),)
    pick = chooser.choose("s", paths, x, wrt=[weight])
    assert pick.winner == "even" and pick.timings_ms["cheap_forward"] == pytest.approx(11.0)
    assert weight.grad is None and x[0].grad is None  # timing leaves the user's gradients alone
    with torch.no_grad():  # inference: forward only, its own key
        assert chooser.choose("s", paths, x, wrt=[weight]).winner == "cheap_forward"


def test_a_second_call_is_a_memory_hit_and_a_new_chooser_reads_the_disk(tmp_path):
    clock = FakeClock()
    first = PathChooser(cache_dir=str(tmp_path), clock=clock)
    paths = _paths(clock, {"a": 0.002, "b": 0.001})
    first.choose("s", paths, X)
    calls = dict(clock.calls)
    again = first.choose("s", paths, X)
    assert again.winner == "b" and again.source == "measured" and clock.calls == calls
    second = PathChooser(cache_dir=str(tmp_path), clock=clock)
    hit = second.choose("s", paths, X)
    assert (hit.winner, hit.source, hit.timings_ms["a"]) == ("b", "disk", pytest.approx(2.0))
    assert clock.calls == calls and second.measurements == 0


def test_the_cache_directory_is_made_private(tmp_path):
    clock = FakeClock()
    where = tmp_path / "fresh" / "einstruct"
    PathChooser(cache_dir=str(where), clock=clock).choose("s", _paths(clock, {"a": 0.001}), X)
    assert where.stat().st_mode & 0o777 == 0o700 and (where / measured.CACHE_FILE).is_file()


def test_token_buckets_key_the_choice():
    clock = FakeClock()
    chooser = PathChooser(cache_dir=None, clock=clock)
    paths = _paths(clock, {"a": 0.002, "b": 0.001})
    for rows in (1000, 1024, 513):
        chooser.choose("s", paths, (torch.ones(rows, 4),))
    assert chooser.measurements == 1
    chooser.choose("s", paths, (torch.ones(1025, 4),))
    chooser.choose("other structure", paths, (torch.ones(1024, 4),))
    chooser.choose("s", paths, (torch.ones(1024, 4, dtype=torch.float64),))
    assert chooser.measurements == 4
    assert [token_bucket(n) for n in (1, 3, 1024, 1025)] == [1, 4, 1024, 2048]


@pytest.mark.parametrize(
    "content",
    [
        b"not json {",
        b"\xff\xfe",
        b'{"version": 1, "entries": {"k": {"winner": "a", "timings_ms": {"a": NaN}, "skipped": {}}}}',
        b'{"version": 1, "entries": {"k": {"winner": "zz", "timings_ms": {"a": 1.0}, "skipped": {}}}}',
        b'{"version": 1, "entries": {"k": {"winner": "a", "timings_ms": {"a": 2, "b": 1}, "skipped": {}}}}',
        b'{"version": 2, "entries": {}}',
        b'{"version": true, "entries": {"k": {"winner": "a", "timings_ms": {"a": 1.0}, "skipped": {}}}}',
        pytest.param(
            b'{"version": 1, "entries": {"k": {"winner": "a", "timings_ms": {"a": 1'
            + b"0" * 400
            + b'}, "skipped": {}}}}',
            id="an-int-too-large-for-a-float",
        ),
        b'{"version": 1, "entries": {"k": {"winner": "a", "timings_ms": {"a": true}, "skipped": {}}}}',
        b'{"version": 1, "entries": {"k": {"winner": "a", "timings_ms": {"a": -1}, "skipped": {}}}}',
        b"[1, 2, 3]",
        pytest.param(b"[" * 100000, id="deeply-nested"),
    ],
)
def test_a_corrupt_cache_file_is_ignored_and_replaced(tmp_path, content):
    clock = FakeClock()
    paths = _paths(clock, {"a": 0.002, "b": 0.001})
    key = choice_key("s", measured.device_label("cpu"), torch.float32, 100, False)
    good = json.dumps(
        {"version": 1, "entries": {"k": {"winner": "a", "timings_ms": {"a": 1.0}, "skipped": {}}}}
    )
    text = content.replace(b'"k"', json.dumps(key).encode()) if content.startswith(b"{") else content
    os.chmod(tmp_path, 0o700)
    (tmp_path / measured.CACHE_FILE).write_bytes(text)
    assert measured._read_cache(str(tmp_path)) == {}
    pick = PathChooser(cache_dir=str(tmp_path), clock=clock).choose("s", paths, X)
    assert pick.winner == "b" and pick.source == "measured"  # measured, never the file's say
    assert measured._read_cache(str(tmp_path))[key]["winner"] == "b"  # rewritten whole
    assert json.loads(good)  # the schema the bad files break


def test_an_unwritable_cache_keeps_the_choice_in_memory(tmp_path):
    clock = FakeClock()
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where the cache directory should be")
    chooser = PathChooser(cache_dir=str(blocker / "einstruct"), clock=clock)
    paths = _paths(clock, {"a": 0.002, "b": 0.001})
    assert chooser.choose("s", paths, X).winner == "b"
    assert chooser.choose("s", paths, X).source == "measured" and chooser.measurements == 1


def test_a_cache_others_can_write_is_not_read(tmp_path):
    clock = FakeClock()
    paths = _paths(clock, {"a": 0.002, "b": 0.001})
    PathChooser(cache_dir=str(tmp_path), clock=clock).choose("s", paths, X)
    os.chmod(tmp_path, 0o777)
    assert PathChooser(cache_dir=str(tmp_path), clock=clock).choose("s", paths, X).source == "measured"
    os.chmod(tmp_path, 0o700)
    target = tmp_path / "elsewhere.json"
    os.replace(tmp_path / measured.CACHE_FILE, target)
    os.symlink(target, tmp_path / measured.CACHE_FILE)
    assert measured._read_cache(str(tmp_path)) == {}  # a link is never followed


def test_the_prior_skips_hopeless_paths_and_failures_are_reported():
    clock = FakeClock()
    chooser = PathChooser(cache_dir=None, clock=clock, prior_skip=4.0)

    def broken(x):
        raise RuntimeError("no kernel for this device")

    paths = {**_paths(clock, {"steps": 0.002, "dense": 0.001, "fused": 0.0005}), "broken": broken}
    pick = chooser.choose("s", paths, X, prior={"steps": 1.0, "dense": 2.0, "fused": 10.0, "broken": 1.0})
    assert pick.winner == "dense" and "fused" not in clock.calls
    assert "10.0x" in pick.skipped["fused"] and "no kernel" in pick.skipped["broken"]
    assert set(pick.timings_ms) == {"steps", "dense"}


def test_the_fallback_is_timed_whatever_the_prior_says():
    clock = FakeClock()
    chooser = PathChooser(cache_dir=None, clock=clock, prior_skip=4.0)
    paths = _paths(clock, {"steps": 0.001, "dense": 0.002})
    pick = chooser.choose("s", paths, X, prior={"steps": 100.0, "dense": 1.0}, fallback="steps")
    assert pick.winner == "steps" and set(pick.timings_ms) == {"steps", "dense"}  # the prior was wrong


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_at_the_cache_path_does_not_block(tmp_path):
    import threading

    os.chmod(tmp_path, 0o700)
    os.mkfifo(tmp_path / measured.CACHE_FILE, 0o600)
    result = []
    reader = threading.Thread(target=lambda: result.append(measured._read_cache(str(tmp_path))), daemon=True)
    reader.start()
    reader.join(10)
    assert result == [{}], "reading a pipe at the cache path blocked"


def test_a_remembered_winner_that_is_no_longer_a_candidate_is_measured_again():
    clock = FakeClock()
    chooser = PathChooser(cache_dir=None, clock=clock)
    chooser.choose("s", _paths(clock, {"a": 0.002, "fused": 0.001}), X)
    pick = chooser.choose("s", _paths(clock, {"a": 0.002, "b": 0.003}), X)
    assert pick.winner == "a" and chooser.measurements == 2


def test_no_timing_under_meta_tensors_gives_the_fallback():
    clock = FakeClock()
    chooser = PathChooser(cache_dir=None, clock=clock)
    pick = chooser.choose(
        "s", _paths(clock, {"a": 0.002, "b": 0.001}), (torch.ones(8, 4, device="meta"),), fallback="a"
    )
    assert (pick.winner, pick.source, clock.calls) == ("a", "fallback", {})


def test_the_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "einstruct")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "einstruct")


def test_a_cache_directory_in_a_parent_others_can_write_is_not_used(tmp_path):
    # another user could rename the directory out of a world-writable, non-sticky parent and
    # put their own in its place between the check and the read
    clock = FakeClock()
    open_parent = tmp_path / "shared"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    where = open_parent / "einstruct"
    chooser = PathChooser(cache_dir=str(where), clock=clock)
    assert chooser.choose("s", _paths(clock, {"a": 0.001}), X).source == "measured"
    assert not (where / measured.CACHE_FILE).exists()  # nothing written there
    os.chmod(open_parent, 0o1777)  # sticky (as /tmp): others cannot rename what is ours
    chooser = PathChooser(cache_dir=str(where), clock=clock)
    assert chooser.choose("s", _paths(clock, {"a": 0.001}), X).source == "measured"
    assert (where / measured.CACHE_FILE).is_file()


def test_no_tokens_time_nothing_and_leave_the_one_token_choice_unmade(tmp_path):
    clock = FakeClock()
    chooser = PathChooser(cache_dir=str(tmp_path), clock=clock)
    paths = _paths(clock, {"a": 0.002, "b": 0.001})
    empty = chooser.choose("s", paths, (torch.ones(0, 4),), fallback="a")
    assert empty.winner == "a" and empty.source == "fallback" and clock.calls == {}
    assert not (tmp_path / measured.CACHE_FILE).exists()
    one = chooser.choose("s", paths, (torch.ones(1, 4),), fallback="a")
    assert one.winner == "b" and one.source == "measured"


def test_the_cpu_label_names_the_processor_model(monkeypatch, tmp_path):
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n"
    )
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            (tmp_path / "cpuinfo").write_text(cpuinfo)
            return real_open(tmp_path / "cpuinfo", *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    measured._cpu_name.cache_clear()
    try:
        label = measured.device_label("cpu")
    finally:
        monkeypatch.undo()
        measured._cpu_name.cache_clear()
    assert label.startswith("cpu Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz threads=")


def test_a_cache_directory_reached_through_a_linked_parent_is_used(tmp_path):
    # a linked ~/.cache (home directories on clusters) is the directory it links to; the
    # link itself (mode 0777 as lstat sees it) must not turn the cache off
    clock = FakeClock()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(real)
    where = tmp_path / "linked" / "einstruct"
    chooser = PathChooser(cache_dir=str(where), clock=clock)
    assert chooser.choose("s", _paths(clock, {"a": 0.001}), X).source == "measured"
    assert (real / "einstruct" / measured.CACHE_FILE).is_file()
