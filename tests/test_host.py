"""Files and hosts that others control: the environment, the shared temp dir, devices and FIFOs,
long output names, resource-sized arguments, text passed to matplotlib.

Each test plants what another user or a careless setting would and checks that einstruct
refuses it with an einstruct error (naming the variable, file or argument) before any work,
or, for the parser cache, never loads it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import subprocess
import sys

import pytest
from conftest import ROOT

import einstruct
from einstruct.capacity import MAX_SEED, checked_seed, checked_width, checked_workers, usable_cpus
from einstruct.cli import main
from einstruct.files import TEMP_NAME_BYTES, temporary_prefix
from einstruct.limits import DEFAULTS, current
from einstruct.nn.env import MAX_SETTING_CHARS, SettingError, parse_positive, positive_setting

BTT = "structure b = btt(d = 16)\n"


# -- the environment: one parser ---------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["", " ", "-5", "0", "0_0", "+5", "5.0", "1e9", "1 000", "_5", "5_", "5__0", "²³", "١٢٣", "٣", "12\x00",
     "0x10", "9" * (MAX_SETTING_CHARS + 1), "five"],
)  # fmt: skip
def test_settings_that_are_not_plain_positive_digits_are_refused(text):
    with pytest.raises(SettingError) as info:
        parse_positive("EINSTRUCT_MAX_SIZE", text)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("EINSTRUCT_MAX_SIZE=") and "plain digits" in message
    assert len(message) < 400 and "\x00" not in message  # the value is cut and escaped


@pytest.mark.parametrize(
    ("text", "value"), [("1", 1), (" 42\t", 42), ("2_048", 2048), ("9" * 600, int("9" * 600))]
)
def test_plain_digits_are_read_exactly(text, value):
    assert parse_positive("EINSTRUCT_MAX_X", text) == value


def test_unset_or_blank_settings_keep_the_default():
    assert positive_setting("EINSTRUCT_MAX_X", 7, {}) == 7
    assert positive_setting("EINSTRUCT_MAX_X", 7, {"EINSTRUCT_MAX_X": "  "}) == 7


def test_a_bad_setting_is_an_einstruct_error_in_the_library_and_the_cli(monkeypatch, capsys):
    monkeypatch.setenv("EINSTRUCT_MAX_SIZE", "²³")
    with pytest.raises(einstruct.EinstructError, match=r"EINSTRUCT_MAX_SIZE='\\xb2\\xb3'"):
        current()
    assert main(["analyze", str(ROOT / "examples" / "btt.ein")]) == 2
    err = capsys.readouterr().err
    assert "EINSTRUCT_MAX_SIZE" in err and "hint:" in err and "Traceback" not in err
    monkeypatch.setenv("EINSTRUCT_MAX_SIZE", "1" * 5000)  # past Python's int-from-text limit
    assert main(["analyze", str(ROOT / "examples" / "btt.ein")]) == 2
    assert "longer than 1000 characters" in capsys.readouterr().err
    monkeypatch.delenv("EINSTRUCT_MAX_SIZE")
    assert current() == DEFAULTS


def test_env_module_stands_alone():
    """Generated files include einstruct/nn/env.py verbatim: it imports only the standard library."""
    source = (ROOT / "einstruct" / "nn" / "env.py").read_text(encoding="utf-8")
    assert "from __future__" not in source and "einstruct" not in source.split('"""', 2)[2].split("import")[0]
    namespace: dict = {}
    exec(compile(source, "env.py", "exec"), namespace)  # noqa: S102 - our own module
    assert namespace["positive_setting"]("X", 3, {"X": "1_0"}) == 10


# -- the parser cache: never the shared temp dir -----------------------------------------------
def test_a_pickle_planted_in_the_temp_dir_never_runs(tmp_path):
    """Plant a pickle under every name lark's default cache could use; einstruct must not load any."""
    marker = tmp_path / "ran"
    planted = tmp_path / "tmp"
    planted.mkdir()

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Boom())
    import lark

    # lark's default cache name: .lark_cache_<user>_<sha256 of grammar+options+version>_<py>.tmp;
    # plant one for any user name and hash einstruct could ask for, by planting a catch-all
    # set of names derived the way lark derives them
    from einstruct.resources import grammar_file

    grammar = grammar_file().read_text(encoding="utf-8")
    for start in ("start", "expr", "value"):
        options = dict(
            cache=True, parser="lalr", start=start, propagate_positions=True, maybe_placeholders=True
        )
        text = "".join(f"{k}{v}" for k, v in options.items())
        digest = hashlib.sha256(
            (grammar + text + lark.__version__ + str(sys.version_info[:2])).encode()
        ).hexdigest()
        for user in ("root", os.environ.get("USER", "x"), "unknown"):
            name = f".lark_cache_{user}_{digest}_{sys.version_info[0]}_{sys.version_info[1]}.tmp"
            (planted / name).write_bytes(digest.encode() + b"\n" + payload)
    env = {**os.environ, "TMPDIR": str(planted), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "einstruct", "analyze", str(ROOT / "examples" / "btt.ein")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    cache = tmp_path / "cache" / "einstruct"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and any(cache.iterdir())


def test_the_cache_is_skipped_unless_private(tmp_path, monkeypatch):
    from einstruct.language.parser_cache import private_cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert private_cache_file("lark-start.pickle") == str(tmp_path / "einstruct" / "lark-start.pickle")
    (tmp_path / "einstruct").chmod(0o755)  # readable by others: not private
    assert private_cache_file("lark-start.pickle") is None
    (tmp_path / "einstruct").chmod(0o700)
    file = tmp_path / "einstruct" / "lark-start.pickle"
    file.write_bytes(b"x")
    file.chmod(0o666)  # writable by others
    assert private_cache_file("lark-start.pickle") is None
    file.chmod(0o600)
    assert private_cache_file("lark-start.pickle") == str(file)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "link"))
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "einstruct").symlink_to(tmp_path / "einstruct")  # a link is never followed
    assert private_cache_file("lark-start.pickle") is None
    monkeypatch.setenv("EINSTRUCT_PARSER_CACHE", "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert private_cache_file("lark-start.pickle") is None


@pytest.mark.parametrize("text", ["off", "false", "no", "2", "00"])
def test_a_parser_cache_setting_other_than_0_or_1_is_an_error_naming_it(monkeypatch, tmp_path, text):
    # `off` meant as 0 kept the pickle cache silently
    from einstruct.errors import ParameterError
    from einstruct.language.parser_cache import private_cache_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("EINSTRUCT_PARSER_CACHE", text)
    with pytest.raises(ParameterError, match="EINSTRUCT_PARSER_CACHE"):
        private_cache_file("lark-start.pickle")
    assert not (tmp_path / "einstruct").exists()  # nothing made
    monkeypatch.setenv("EINSTRUCT_PARSER_CACHE", " 1 ")
    assert private_cache_file("lark-start.pickle") is not None


# -- inputs: bounded, regular files only --------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_device_is_refused_before_it_is_opened(tmp_path, capsys):
    fifo = tmp_path / "spec.ein"
    os.mkfifo(fifo)  # no writer: opening it would block forever
    for path in (str(fifo), "/dev/zero"):
        assert main(["analyze", path]) == 2
        err = capsys.readouterr().err
        assert "not a regular spec file" in err and "standard input (-)" in err
    with pytest.raises(einstruct.EinstructError, match="FIFO"):
        einstruct.load(fifo)


def test_inputs_past_the_size_limit_stop_there(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EINSTRUCT_MAX_INPUT_BYTES", "64")
    spec = tmp_path / "big.ein"
    spec.write_text(BTT + "# " + "x" * 100 + "\n")
    assert main(["analyze", str(spec)]) == 2
    assert "larger than 64 bytes" in capsys.readouterr().err
    result = subprocess.run(  # an endless stream on standard input ends at the limit
        [sys.executable, "-m", "einstruct", "analyze", "-"],
        input=("# comment\n" * 100_000).encode(),
        env={**os.environ, "EINSTRUCT_MAX_INPUT_BYTES": "1000"},
        capture_output=True,
    )
    assert result.returncode == 2 and b"standard input is larger than 1,000 bytes" in result.stderr
    monkeypatch.delenv("EINSTRUCT_MAX_INPUT_BYTES")
    assert main(["analyze", str(ROOT / "examples" / "btt.ein")]) == 0


# -- outputs near the file-system name limit ----------------------------------------------------
def test_temporary_names_stay_short_whatever_the_target():
    for name in ("a.py", "x" * 255, "é" * 127, "日本" * 40, "\udcff" * 200):
        prefix = temporary_prefix(name)
        assert len(os.fsencode(prefix)) <= TEMP_NAME_BYTES + 2
        assert os.fsencode(name).startswith(os.fsencode(prefix[1:-1]))


def test_an_output_name_at_the_limit_is_written(tmp_path, capsys):
    name = "b" * 252 + ".py"  # 255 bytes: the longest name the file system takes
    assert main(["compile", str(ROOT / "examples" / "btt.ein"), "-o", str(tmp_path / name)]) == 0
    assert (tmp_path / name).read_text().startswith("# @generated by einstruct")
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


# -- arguments that size resources ---------------------------------------------------------------
def test_worker_counts_are_bounded_by_the_cpus():
    cpus = usable_cpus()
    assert checked_workers(cpus) == cpus and checked_workers(0, allow_zero=True) == 0
    for bad in (cpus + 1, 10**6, 0, -1, 2.0, "2", True, None):
        with pytest.raises(einstruct.EinstructError, match="workers must be"):
            checked_workers(bad)
    with pytest.raises(einstruct.EinstructError, match=f"jobs must be from 1 to {cpus}"):
        einstruct.search(d_in=16, d_out=16, jobs=10**6)


def test_seeds_and_training_widths_are_bounded(monkeypatch, tmp_path):
    from einstruct.experiments.sweep import plan_runs

    assert checked_seed(MAX_SEED) == MAX_SEED and checked_width(65536) == 65536
    for bad in (-1, MAX_SEED + 1, 10**30, 1.5):
        with pytest.raises(einstruct.EinstructError, match="seed must be"):
            plan_runs({"b": BTT}, {"b": [16]}, {"b": [0.1]}, [bad])
    with pytest.raises(einstruct.EinstructError, match="width of b must be from 1 to 65,536"):
        plan_runs({"b": BTT}, {"b": [10**9]}, {"b": [0.1]}, [0])
    monkeypatch.setenv("EINSTRUCT_MAX_WIDTH", "10^9")
    with pytest.raises(einstruct.EinstructError, match="EINSTRUCT_MAX_WIDTH"):
        checked_width(16)


def test_cli_refuses_too_many_workers_before_any_work(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    args = ["experiment", "scaling", "--smoke", "--workers", "100000", "--results", str(results)]
    assert main(args) == 2
    assert "workers must be from 0 to" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no results, no teacher data


# -- text that reaches matplotlib -----------------------------------------------------------------
def test_a_dollar_in_a_title_is_drawn_as_written(tmp_path):
    pytest.importorskip("matplotlib")
    for title in ("cost in $", "$x$ and $", "a $\\frac{", "$$"):
        plot = einstruct.plot_taxonomy(
            [ROOT / "examples" / "btt.ein"], output=tmp_path / "t.png", title=title, force=True
        )
        texts = [t for t in plot.figure.findobj(lambda o: hasattr(o, "get_text")) if t.get_text() == title]
        assert texts and not any(t.get_parse_math() for t in texts)


@pytest.mark.parametrize("variable", ["EINSTRUCT_MAX_SIZE", "EINSTRUCT_MAX_PARAMS", "EINSTRUCT_MAX_DEPTH"])
@pytest.mark.parametrize("text", ["abc", "-1", "0", "1e9", "\u0661\u0662\u0663"])
def test_a_bad_limit_met_while_reading_an_integer_argument_names_its_variable(
    monkeypatch, capsys, variable, text
):
    # --batch's type reads the size limit: argparse took the limit's error for a bad --batch
    from einstruct.cli import main

    monkeypatch.setenv(variable, text)
    assert main(["plan", str(ROOT / "examples" / "low_rank.ein"), "--batch", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: environment variable {variable}=") and "--batch" not in err


@pytest.mark.parametrize("text", ["\u0661\u0666", "1e3", "16.0", "0x10"])
def test_an_integer_argument_is_in_plain_digits(capsys, text):
    from einstruct.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(ROOT / "examples" / "low_rank.ein"), "--batch", text])
    assert exit_.value.code == 2 and "is not an integer in plain digits" in capsys.readouterr().err


def test_a_private_cache_reached_through_a_linked_parent_is_private(tmp_path):
    from einstruct.private import private_directory

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (real / "einstruct").mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(real)
    assert private_directory(tmp_path / "linked" / "einstruct", os.geteuid())
    real.chmod(0o777)  # what the link leads to decides
    assert not private_directory(tmp_path / "linked" / "einstruct", os.geteuid())
    real.chmod(0o1777)  # sticky, as /tmp
    assert private_directory(tmp_path / "linked" / "einstruct", os.geteuid())


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment", "scaling", "--smoke", "--steps", "\u0661\u0660"],
        ["search", "--d", "64", "--jobs", "\u0664"],
        ["search", "--d", "64", "--grid", "\u0661/\u0661\u0662"],
    ],
    ids=["steps", "jobs", "grid"],
)
def test_every_integer_option_is_in_plain_digits(capsys, argv):
    from einstruct.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2 and "plain digits" in capsys.readouterr().err
