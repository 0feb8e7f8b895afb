"""The console examples in README.md and docs/*.md run exactly as shown.

A console example is a fenced block marked ``console``: ``$ `` lines are
commands, the lines after each command are what it prints (stdout and stderr
together; the exit status is not shown). The input files an example uses live
in ``examples/`` (commands run from the repository root) or are shown in the
same document as a fenced block right after a line that is exactly the file's
name in backticks followed by a colon::

    `costly.ein`:

    ```
    structure too_wide(d = 1024):
        ...
    ```

Each example runs with bash in a fresh temporary directory holding its
document's labelled files and a symlink ``examples`` to the repository's
examples (and ``benchmarks``, ``grammar``: the folders a command may name), with this
interpreter's directory first on PATH, so ``einstruct`` and ``python`` are the
ones under test. Its output must equal the text in the document line by line,
trailing whitespace aside: the docs are what a user reads, so they are the
reference, not einstruct's current output.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = ("examples", "benchmarks", "grammar")  # repository folders a command may name
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
LABEL = re.compile(r"^`([\w.-]+)`:$")
INPUT = re.compile(r"[\w./-]+\.(?:ein|py|json|txt|csv)\b")
OUTPUT_FLAGS = {"-o", "--output", "--out", ">"}
DIRECTORY_FLAGS = {"--emit"}  # a command that writes files into a folder a later command may read


@dataclass(frozen=True)
class Block:
    """A fenced block: where it starts (1-based line of its first content line), its info, its lines."""

    doc: Path
    line: int
    info: str
    label: str | None
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    output: tuple[str, ...]


def parse_blocks(doc: Path) -> list[Block]:
    """Every fenced block of a markdown file, with the file label before it if any."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match.groups()
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        label = LABEL.match(previous)
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise ValueError(f"{doc.name}:{i + 1}: unclosed code fence")
        blocks.append(Block(doc, i + 2, info, label.group(1) if label else None, tuple(lines[i + 1 : end])))
        i = end + 1
    return blocks


def labelled_files(doc: Path) -> dict[str, str]:
    """The document's input files: name -> content (a name shown twice must show the same text)."""
    files: dict[str, str] = {}
    for block in parse_blocks(doc):
        if block.label is None:
            continue
        text = "\n".join(block.lines) + "\n"
        if files.get(block.label, text) != text:
            raise ValueError(f"{doc.name}:{block.line}: `{block.label}` is shown twice with different text")
        files[block.label] = text
    return files


def commands(block: Block) -> list[Command]:
    """A console block's commands, each with the output lines shown after it."""
    result: list[Command] = []
    for offset, line in enumerate(block.lines):
        if line.startswith("$ "):
            result.append(Command(block.line + offset, line[2:], ()))
        elif not result:
            raise ValueError(f"{block.doc.name}:{block.line + offset}: console block must start with '$ '")
        else:
            last = result[-1]
            result[-1] = Command(last.line, last.text, (*last.output, line))
    return result


def console_examples() -> list[tuple[Block, list[Command]]]:
    examples = []
    for doc in DOCS:
        for block in parse_blocks(doc):
            if block.info == "console":
                examples.append((block, commands(block)))
    return examples


EXAMPLES = console_examples()


def _id(example: tuple[Block, list[Command]]) -> str:
    block, cmds = example
    return f"{block.doc.name}:{cmds[0].line if cmds else block.line}"


def _transcript(cmds: list[Command], outputs: list[list[str]]) -> str:
    """The commands and outputs as one text, trailing whitespace and trailing blank lines dropped."""
    lines: list[str] = []
    for cmd, output in zip(cmds, outputs, strict=True):
        body = [line.rstrip() for line in output]
        while body and not body[-1]:
            body.pop()
        lines += [f"$ {cmd.text}", *body]
    return "\n".join(lines)


def _environment() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "CLICOLOR_FORCE")
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUTF8"] = "1"
    return env


def _written_directories(cmd: Command) -> set[str]:
    """Folders a command writes files into (``--emit DIR``)."""
    words = cmd.text.split()
    return {words[k + 1] for k, word in enumerate(words[:-1]) if word in DIRECTORY_FLAGS}


def _input_files(cmd: Command) -> list[str]:
    """Names in a command that look like files it reads (not the ones it writes)."""
    try:
        words = shlex.split(cmd.text)
    except ValueError:
        words = cmd.text.split()
    names = []
    for k, word in enumerate(words):
        if k > 0 and words[k - 1] in OUTPUT_FLAGS:
            continue
        names += INPUT.findall(word)
    return names


def test_docs_have_console_examples():
    assert len(EXAMPLES) > 20
    assert all(cmds for _, cmds in EXAMPLES), "a console block without a '$ ' command"


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_inputs_are_shown_or_in_repository(example):
    block, cmds = example
    files = labelled_files(block.doc)
    written: set[str] = set()
    for cmd in cmds:
        for name in _input_files(cmd):
            first = name.split("/")[0]
            if first in written:  # made by an earlier command of the example
                continue
            if first in LINKED:
                assert (ROOT / name).exists(), f"{block.doc.name}:{cmd.line}: {name} is not in the repository"
            else:
                assert name in files, (
                    f"{block.doc.name}:{cmd.line}: {name} is neither under examples/ nor shown as "
                    f"a block labelled `{name}`: in {block.doc.name}"
                )
        written |= _written_directories(cmd)


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_console_example(example, tmp_path):
    block, cmds = example
    for name, text in labelled_files(block.doc).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    for folder in LINKED:
        (tmp_path / folder).symlink_to(ROOT / folder, target_is_directory=True)
    env = _environment()
    outputs = []
    for cmd in cmds:
        run = subprocess.run(
            ["bash", "-c", cmd.text],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
            timeout=120,
        )
        outputs.append(run.stdout.splitlines())
    expected = _transcript(cmds, [list(cmd.output) for cmd in cmds])
    assert _transcript(cmds, outputs) == expected
