"""A generated file's header never declares a source encoding (PEP 263).

Line 2 of a generated file records the command that wrote it; a spec file named
like an encoding declaration (``coding:ascii``) made Python read the whole file in
that encoding. The reference is Python's own import of the file, in a fresh
process that cannot import einstruct.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

import einstruct
from einstruct.backends.compilation import compilation
from einstruct.backends.torch.render import render
from einstruct.cli import main

#: Runs a generated file in a fresh Python that cannot import einstruct, and prints
#: the class it exports and its output's shape.
STANDALONE = """
import importlib.util, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "einstruct":
            raise ImportError("einstruct is blocked")
sys.meta_path.insert(0, Block())
import torch
spec = importlib.util.spec_from_file_location("layer", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
(name,) = module.__all__
layer = getattr(module, name)()
print(name, tuple(layer(torch.randn(3, layer.in_features)).shape))
"""


def _run_standalone(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, str(path)], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.parametrize("cookie", ["coding:ascii", "coding=latin-1", "x-coding:utf-8-coding=ascii"])
def test_a_spec_path_like_an_encoding_declaration_leaves_the_file_readable(cookie, tmp_path, monkeypatch):
    # a non-ASCII structure name: read as ASCII the file is a SyntaxError, as latin-1 the
    # class name turns into other characters
    spec = tmp_path / cookie
    spec.write_text("structure straße = btt(d = 16)\n", encoding="utf-8")
    out = tmp_path / "layer.py"
    monkeypatch.chdir(tmp_path)
    argv = ["compile", cookie, "-o", str(out), "--strategy", "structured"]
    assert main(argv) == 0
    result = _run_standalone(out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Straße", "(3,", "16)"]
    if shutil.which("bash"):  # the recorded command still names the same arguments
        words = out.read_text(encoding="utf-8").splitlines()[1].removeprefix("# command: einstruct ")
        read = subprocess.run(
            ["bash", "-c", f"printf '%s\\0' {words}"], capture_output=True, env={"LC_ALL": "C.UTF-8"}
        )
        assert read.stdout.decode("utf-8").split("\0")[:-1] == argv


def test_a_command_given_from_python_declares_no_encoding(tmp_path):
    compiled = compilation(einstruct.load("structure straße = btt(d = 16)"), strategy="structured")
    text = render(compiled, command="make layer  # -*- coding: ascii -*-")
    out = tmp_path / "layer.py"
    out.write_text(text, encoding="utf-8")
    result = _run_standalone(out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "Straße"


@pytest.mark.skipif(os.name != "posix", reason="file names with ':' are POSIX")
def test_the_header_never_declares_an_encoding(tmp_path, monkeypatch):
    """Lines 1 and 2 of every generated file hold no ``coding[:=]``, whatever argv was."""
    import re

    spec = tmp_path / "coding=ascii.ein"
    spec.write_text("structure s = low_rank(d = 8, rank = 2)\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for backend in ("torch", "triton"):
        out = tmp_path / f"{backend}.py"
        assert main(["compile", spec.name, "--backend", backend, "-o", str(out), "--class-name", "Lr"]) == 0
        head = out.read_text(encoding="utf-8").splitlines()[:2]
        assert not any(re.search(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", line) for line in head), head


@pytest.mark.parametrize("word", ["\x0coding:ascii.ein", "a\x0ccoding=1", "\x00coding:", "codingcoding::"])
def test_a_recorded_command_spells_no_encoding_even_through_its_escapes(word):
    """``\\x0c`` then ``oding:`` reads ``coding:`` once escaped: the check is on what is written."""
    import re

    from einstruct.backends.common import shell_command

    command = shell_command(["compile", word])
    assert not re.search(r"coding[:=]", command), command
    if shutil.which("bash") and "\x00" not in word:  # bash reads the same argument back
        read = subprocess.run(
            ["bash", "-c", f"printf '%s\\0' {command.removeprefix('einstruct ')}"],
            capture_output=True,
            env={"LC_ALL": "C.UTF-8"},
        )
        assert read.stdout.decode("utf-8").split("\0")[:-1] == ["compile", word]
