"""The command line as a user meets it: exit codes, messages, JSON, generated files."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import EXAMPLES, ROOT

import einstruct
from einstruct.cli import main

COMMANDS = ["analyze", "theta", "compare", "plan", "compile"]


def run(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "einstruct", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_help_and_version():
    assert run("--version").stdout.strip() == f"einstruct {einstruct.__version__}"
    for command in COMMANDS:
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: einstruct" in result.stdout, command


def test_analyze_json_keys():
    (data,) = json.loads(run("analyze", "examples/btt.ein", "--json").stdout)  # a list, even of one
    assert {"name", "d_in", "d_out", "params", "einsum", "indices", "factors"} <= set(data)
    assert data["einsum"] == "ga,gafr,fgre->fe" and data["params"] == 65536
    assert {"name", "size", "class"} <= set(data["indices"][0])
    assert {"name", "shape", "params"} <= set(data["factors"][0])
    (theta,) = json.loads(run("theta", "1/2,0,1/2,0,1/2,1/2,0", "--d", "4096", "--json").stdout)
    assert (theta["omega"], theta["psi"], theta["nu"]) == (0, 1, 0.5)
    assert theta["theta"]["alpha"] == 0.5 and theta["params"] == 2 * 64**3


@pytest.mark.parametrize(
    "args, stdin, located",
    [
        (["analyze", "-"], "structure a(d = 4):\n    y[i] = x[i] * W[i, j]\n", "<stdin>:2:"),
        (["analyze", "examples/btt.ein", "--set", "d=1000"], None, "examples/btt.ein:4:"),
        (["analyze", "examples/btt.ein", "--structure", "nope"], None, None),
        (["analyze", "examples/btt.ein", "--set", "d"], None, None),
        (["analyze", "missing.ein"], None, None),
        (["theta", "1/2,1/2", "--d", "64"], None, None),
        (
            ["compile", "examples/btt_moe.ein", "--strategy", "dense", "-o", "-"],
            None,
            "examples/btt_moe.ein:7:",
        ),
        (["compile", "examples/btt.ein", "--symbolic", "-o", "-"], None, None),
        (["analyze", ""], None, None),  # "cannot read '.'" before
        (["compare", "-", "-"], "structure s = btt(d = 16)\n", None),  # the second - found stdin empty
        (["compile", "examples/btt.ein", "-o", ""], None, None),  # wrote ./btt.py before
    ],
)
def test_errors_exit_2_without_traceback(args, stdin, located):
    result = run(*args, stdin=stdin)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: " in result.stderr
    if located:
        assert result.stderr.startswith(located)
        assert "^" in result.stderr


def test_in_process_main_reports_errors(capsys):
    assert main(["analyze", str(EXAMPLES / "btt.ein"), "--set", "d=1000"]) == 2
    err = capsys.readouterr().err
    assert "is not a positive integer" in err and "hint:" in err


def test_compare_sorts_rows():
    out = run(
        "compare",
        "examples/btt.ein",
        "examples/dense.ein",
        "examples/low_rank.ein",
        "--format",
        "markdown",
        "--sort",
        "params",
    ).stdout
    table = [line.split("|") for line in out.splitlines()[2:]]
    header = [c.strip() for c in out.splitlines()[0].split("|")]
    names = [row[1].strip() for row in table]
    params = [int(row[header.index("params")].strip().replace(",", "")) for row in table]
    # independent reference: parameter counts straight from the factor shapes
    expected = {}
    for path in ("btt", "dense", "low_rank"):
        for s in einstruct.load_all(EXAMPLES / f"{path}.ein"):
            expected[s.name] = sum(math.prod(int(s.size(i)) for i in f.indices) for f in s.factors)
    assert sorted(names) == sorted(expected)
    assert params == [expected[n] for n in names]
    assert params == sorted(params)


def test_plan_prints_steps():
    out = run("plan", "examples/btt.ein", "--batch", "64").stdout
    assert "step 1" in out and "step 2" in out and "bmm" in out


BLOCK_EINSTRUCT = "import sys; sys.modules['einstruct'] = None\n"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.ein")), ids=lambda p: p.name)
def test_generated_files_import_with_only_torch(path, tmp_path):
    for structure in einstruct.load_all(path):
        out = tmp_path / f"{structure.name}.py"
        result = run("compile", str(path), "--structure", structure.name, "-o", str(out))
        assert result.returncode == 0, result.stderr
        code = BLOCK_EINSTRUCT + (
            "import importlib.util, torch\n"
            f"spec = importlib.util.spec_from_file_location('layer', {str(out)!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "cls = getattr(mod, mod.__all__[0])\n"
            "layer = cls(dtype=torch.float64)\n"
            "x = torch.randn(3, layer.in_features, dtype=torch.float64)\n"
            + (
                # routed: the gate depends on the token; check shape and the aux loss
                "y = layer(x); assert y.shape == (3, layer.out_features) and layer.aux_loss is not None\n"
                if structure.route is not None
                else "torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias)\n"
            )
            + "print('ok')\n"
        )
        check = subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path
        )
        assert check.stdout.strip() == "ok", check.stderr


def test_compile_is_byte_identical():
    outputs = []
    for seed in ("0", "12345"):
        result = run("compile", "examples/three_factor.ein", "-o", "-", env={"PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.encode())
    assert outputs[0] == outputs[1]
    assert b"spec sha256:" in outputs[0] and b"structure three_core_tt" in outputs[0]


def test_generated_file_is_ruff_clean(tmp_path):
    out = tmp_path / "layer.py"
    wide = ("examples/theta.ein", "--structure", "wide", "--strategy")
    for command in [(*wide, "structured"), (*wide, "dense"), ("examples/btt_moe.ein",)]:
        run("compile", *command, "-o", str(out))
        for args in (["check", "--isolated", str(out)], ["format", "--isolated", "--check", str(out)]):
            result = subprocess.run([sys.executable, "-m", "ruff", *args], capture_output=True, text=True)
            assert result.returncode == 0, result.stdout + result.stderr


def test_an_internal_bug_is_reported_without_a_traceback(monkeypatch, capsys):
    import einstruct.cli as cli

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.delenv("EINSTRUCT_DEBUG", raising=False)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), broken))
    assert cli.main(["analyze", str(EXAMPLES / "btt.ein")]) == cli.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: boom" in err and "Traceback" not in err


def _with_handler(parser, handler):
    for action in parser._subparsers._group_actions:
        action.choices["analyze"].set_defaults(handler=handler)
    return parser


def test_plan_of_a_routed_structure_names_the_gated_step():
    out = run("plan", "examples/btt_moe.ein").stdout
    assert "route r top 2 of 8: step 1's result is multiplied by the per-token gate" in out


# -- the CLI says what it does (help texts, --json, tables that fit, exact counts) ------------


def test_plan_and_compile_offer_only_what_works():
    for command in ("plan", "compile"):
        help_text = " ".join(run(command, "--help").stdout.split())  # argparse wraps lines
        assert "--symbolic" not in help_text
        assert "needed when the file declares several" in help_text
        result = run(command, "examples/btt.ein", "--symbolic", "-o", "-")
        assert result.returncode == 2 and "unrecognized arguments: --symbolic" in result.stderr
    analyze_help = " ".join(run("analyze", "--help").stdout.split())
    assert "--symbolic" in analyze_help and "every structure in the file" in analyze_help
    # what the help promises: analyze takes every structure, plan asks for one
    assert run("analyze", "examples/theta.ein", "--json").returncode == 0
    refused = run("plan", "examples/theta.ein")
    assert refused.returncode == 2 and "--structure" in refused.stderr


def test_plan_json_is_the_plan_the_layer_runs():
    from torch.utils.flop_counter import FlopCounterMode

    tokens = 512
    data = json.loads(
        run("plan", "examples/btt.ein", "--set", "d=256", "--batch", str(tokens), "--json").stdout
    )
    layer = einstruct.compile("examples/btt.ein", d=256, batch=tokens)(strategy="structured")
    x = torch.randn(tokens, 256)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    # independent reference: torch's FLOP counter on the compiled forward (the bias add is not a matmul)
    assert data["flops_per_token"] * tokens == counter.get_total_flops()
    assert sum(step["flops_per_token"] for step in data["steps"]) == data["flops_per_token"]
    assert {f["name"]: tuple(f["shape"]) for f in data["factors"]} == {
        name: tuple(getattr(layer, name).shape) for name in layer.factor_axes
    }
    assert {f["name"]: tuple(f["layout"]) for f in data["factors"]} == dict(layer.factor_axes)
    for step in data["steps"]:
        left, right = step["left"]["shape"], step["right"]["shape"]
        assert left[-1] == right[-2] and left[:-2] == right[:-2], step  # a valid (b)mm
    assert data["strategy"] in ("structured", "dense") and data["batch"] == tokens


def test_compile_json_describes_the_written_file(tmp_path):
    out = tmp_path / "layer.py"
    result = run("compile", "examples/btt.ein", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    text = out.read_text(encoding="utf-8")
    assert data["output"] == str(out)
    assert data["lines"] == len(text.splitlines()) and data["bytes"] == len(text.encode())
    assert f"# spec sha256: {data['spec_sha256']}\n" in text
    assert f"class {data['class_name']}(StructuredLinear)" in text
    assert data["backend"] == "torch"
    assert data["plan"] == json.loads(run("plan", "examples/btt.ein", "--json").stdout)
    refused = run("compile", "examples/btt.ein", "-o", "-", "--json")
    assert refused.returncode == 2 and "give a file name" in refused.stderr


def test_backends_come_from_the_registry():
    from einstruct.backends import BACKENDS

    assert list(BACKENDS) == ["torch", "triton"]
    result = run("compile", "examples/btt.ein", "--backend", "nope", "-o", "-")
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr and "torch" in result.stderr
    with pytest.raises(einstruct.EinstructError, match="unknown backend 'nope'") as info:
        einstruct.compile("examples/btt.ein", backend="nope")
    assert "choose one of: torch, triton" in str(info.value)
    assert einstruct.compile("examples/btt.ein", d=64, backend="torch")().in_features == 64


SCIENTIFIC = re.compile(r"\d(\.\d+)?[eE][+-]?\d")


def test_counts_never_switch_to_scientific_notation():
    big = "structure wide_dense = dense(d_in = 8192, d_out = 16384)\n"
    flops = 2 * 8192 * 16384
    outputs = {
        "analyze": run("analyze", "-", stdin=big).stdout,
        "markdown": run("analyze", "-", "--format", "markdown", stdin=big).stdout,
        "plan": run("plan", "-", stdin=big).stdout,
        "compare": run("compare", "-", stdin=big).stdout,
    }
    for name, text in outputs.items():
        assert not SCIENTIFIC.search(text), (name, SCIENTIFIC.search(text))
    assert f"{flops:,}" in outputs["analyze"] and f"{flops:,}" in outputs["markdown"]
    assert f"{flops} FLOPs per token" in outputs["plan"]


def test_tables_fit_100_columns_without_cutting_names():
    env = {"COLUMNS": "100"}
    compare = run("compare", *map(str, sorted(EXAMPLES.glob("*.ein"))), env=env)
    assert compare.returncode == 0, compare.stderr
    long_names = (
        "structure a_structure_with_a_rather_long_name(d = 64):\n"
        "    y[output_index, e] = x[input_index, a] * first_factor_with_a_long_name[input_index, a, f]"
        " * second_factor_with_a_long_name[f, output_index, e]\n"
        "    where input_index = a = f = output_index = e = 8\n"
    )
    analyze = run("analyze", "-", stdin=long_names, env=env)
    assert analyze.returncode == 0, analyze.stderr
    for result in (compare, analyze):
        assert "…" not in result.stdout
        assert max(len(line) for line in result.stdout.splitlines()) <= 100
    # every structure of the examples appears whole, and its diagnostics are listed under the table
    rows, listed = {}, {}
    lines = compare.stdout.splitlines()
    for line in lines[: lines.index("diagnostics:")]:
        rows[line.split()[0]] = line
    for line in lines[lines.index("diagnostics:") + 1 :]:
        name, codes = line.strip().split(": ")
        listed[name] = codes.split(", ")
    for path in sorted(EXAMPLES.glob("*.ein")):
        for data in json.loads(run("analyze", str(path), "--json").stdout):
            assert data["name"] in rows
            assert listed.get(data["name"], []) == [d["code"] for d in data["diagnostics"]]
    # a folded name continues on the next line of its cell (whose params cell is then empty)
    factors, lines = [], analyze.stdout.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("┃ factor"))
    for line in lines[start + 2 :]:
        if not line.startswith("│"):
            break
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[3]:
            factors.append(cells[0])
        else:
            factors[-1] += cells[0]
    assert factors == ["first_factor_with_a_long_name", "second_factor_with_a_long_name"]


def test_compare_refuses_a_set_parameter_no_file_has(capsys):
    """Each file may lack a --set parameter (strict=False per file); all of them together may not."""
    btt, kron = str(EXAMPLES / "btt.ein"), str(EXAMPLES / "kronecker.ein")
    assert main(["compare", btt, "--set", "D=4096"]) == 2
    assert "no structure of" in capsys.readouterr().err
    assert main(["compare", btt, kron, "--set", "rank=4"]) == 0  # btt has it, kronecker does not
    assert re.search(r"btt\s+1,024\s+1,024", capsys.readouterr().out)
    theta = str(EXAMPLES / "theta.ein")  # a theta() class is a parameter as analyze takes it
    assert main(["analyze", theta, "--set", "alpha=1/2"]) == 0
    assert main(["compare", theta, "--set", "alpha=1/2"]) == 0, capsys.readouterr().err


def test_plan_of_a_file_of_many_structures_asks_which_before_resolving_them(tmp_path, capsys):
    many = "".join(f"structure m{k} = monarch(d = 16)\n" for k in range(500))
    (tmp_path / "many.ein").write_text(many)
    assert main(["plan", str(tmp_path / "many.ein")]) == 2
    err = capsys.readouterr().err
    assert "declares 500 structures" in err and "m19, ... (480 more)" in err and "m20," not in err
    assert main(["plan", str(tmp_path / "many.ein"), "--structure", "m7"]) == 0
    assert capsys.readouterr().out.startswith("plan for m7 ")


def test_a_file_named_after_a_module_does_not_shadow_it(tmp_path, capsys):
    """compile -o DIR/ names the file after the structure; `torch.py` would break every
    `import torch` run in that directory."""
    names = ("torch", "typing", "typing_extensions", "sympy", "mixer")
    for name in names:
        (tmp_path / f"{name}.ein").write_text(f"structure {name} = btt(d = 16)\n")
        out = tmp_path / name
        out.mkdir()
        assert main(["compile", str(tmp_path / f"{name}.ein"), "-o", f"{out}/"]) == 0
        file = "mixer.py" if name == "mixer" else f"{name}_layer.py"  # mixer is no module here
        assert [p.name for p in out.iterdir()] == [file]
        # typing_extensions.py (a hand-written list missed it) broke `import torch` there
        run = subprocess.run([sys.executable, "-c", "import torch"], cwd=out, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-300:]
    capsys.readouterr()


def test_a_theta_class_given_by_name_and_letter_is_refused_at_the_second():
    source = "structure m = theta(alpha = 1, α = 1/2, gamma = 1/2, epsilon = 1/2, phi = 1/2, d = 16)\n"
    with pytest.raises(einstruct.EinstructError, match=r"class alpha is given twice \(alpha and α\)") as info:
        einstruct.load(source)
    assert (info.value.span.line, info.value.span.column) == (1, 32)


def test_an_error_on_a_long_line_shows_the_part_around_the_spot():
    line = "    where i = o = " + "1 + " * 50_000 + "(d"
    with pytest.raises(einstruct.EinstructError) as info:
        einstruct.load("structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n" + line + "\n")
    shown = str(info.value).splitlines()
    assert all(len(text) < 140 for text in shown), [len(text) for text in shown]
    source, caret = next((a, b) for a, b in zip(shown, shown[1:]) if b.strip().startswith("^"))
    assert source.strip().startswith("...") and caret.index("^") <= len(source)  # at the end of the line


def test_theta_pastes_the_parsed_exponents_not_the_raw_text(capsys):
    """A comment in an exponent used to swallow the rest of the built spec line."""
    assert main(["theta", "1,0,0,0,1,0,0 # x", "--d", "64"]) == 0
    assert "d_in = 64, d_out = 64" in capsys.readouterr().out


def test_structure_names_given_on_the_command_line_are_read_as_in_files(tmp_path, capsys):
    (tmp_path / "two.ein").write_text("structure s = btt(d = 16)\nstructure t = btt(d = 16)\n")
    assert main(["plan", str(tmp_path / "two.ein"), "--structure", "ｓ"]) == 0  # fullwidth s: NFKC s
    assert capsys.readouterr().out.startswith("plan for s ")
    for command in ("plan", "analyze"):
        assert main([command, str(tmp_path / "two.ein"), "--structure", " "]) == 2
        assert "--structure needs a structure's name" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", str(EXAMPLES / "btt.ein"), "--set", "d=log(4)"],
        ["analyze", str(EXAMPLES / "btt.ein"), "--set", "d=max(4)"],
        ["theta", "foo(1),0,1/2,0,1/2,1/2,0", "--d", "1024"],
    ],
)
def test_a_bad_function_in_a_value_given_outside_a_file_is_a_located_error(argv, capsys):
    # the same text inside a file was located; from --set or theta it was an internal
    # error (lark's VisitError, exit 3)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and ":1:1: error:" in err and "^" in err


def test_a_bad_function_in_an_api_value_raises_einstructs_error():
    from einstruct.errors import EinstructError

    with pytest.raises(EinstructError, match="unknown function 'log'"):
        einstruct.analyze(EXAMPLES / "btt.ein", d="log(4)")


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_a_reader_that_goes_away_ends_the_command_with_status_0(tmp_path, command):
    # rich's own closed-pipe handler exited 1 for the table commands (analyze | head -1)
    spec = tmp_path / "many.ein"
    spec.write_text("".join(f"structure s{k} = btt(d = 64, rank = {1 + k % 3})\n" for k in range(150)))
    run = subprocess.Popen(
        [sys.executable, "-m", "einstruct", command, str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert run.stdout.readline()  # one line, then the reader goes away
    run.stdout.close()
    assert run.wait(timeout=120) == 0
    assert run.stderr.read() == b""


def test_a_missing_structure_of_a_file_of_thousands_lists_twenty(tmp_path, capsys):
    spec = tmp_path / "many.ein"
    spec.write_text("".join(f"structure s{k} = btt(d = 16)\n" for k in range(500)))
    assert main(["analyze", str(spec), "--structure", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "s0, s1" in err and "s19, ... (480 more)" in err and "s20," not in err


def test_compiling_again_into_a_folder_on_sys_path_writes_the_same_file(tmp_path):
    # the file the first compile wrote was found as an installed module named btt, and
    # the second compile wrote btt_layer.py beside it
    (tmp_path / "btt.ein").write_text("structure btt = btt(d = 16)\n")
    command = [sys.executable, "-m", "einstruct", "compile", "btt.ein", "-o", "./", "--force"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for _ in range(2):
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["btt.ein", "btt.py"]
