"""Pictures: the data behind each figure against the analysis and brute-force references (not pixels)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import matplotlib  # noqa: F401 - a test dependency: without it these tests must fail, not skip
import pytest
from conftest import EXAMPLES, ROOT

import einstruct  # noqa: E402
from einstruct.analysis import analyze_structure  # noqa: E402
from einstruct.cli import main  # noqa: E402
from einstruct.errors import ParameterError  # noqa: E402

FILES = [EXAMPLES / f"{n}.ein" for n in ("btt", "kronecker", "low_rank", "monarch", "tensor_train", "dense")]


def _by_gid(artists, gid):
    found = [a for a in artists if a.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def _analyses():
    return [analyze_structure(s) for f in FILES for s in einstruct.load_all(f)]


def test_taxonomy_points_sit_at_the_analysis_coordinates(tmp_path):
    plot = einstruct.plot_taxonomy(FILES, output=tmp_path / "t.png")
    ax3, ax2 = plot.figure.axes
    analyses = _analyses()
    xs, ys, zs = (list(map(float, v)) for v in _by_gid(ax3.collections, "points:files")._offsets3d)
    assert list(zip(xs, ys, zs)) == [
        (float(a.taxonomy.omega), float(a.taxonomy.psi), float(a.taxonomy.nu)) for a in analyses
    ]
    flat = _by_gid(ax2.collections, "points:files").get_offsets()
    assert [tuple(map(float, p)) for p in flat] == [
        (float(a.counts.flops), float(a.params)) for a in analyses
    ]
    # the dense point of the examples' shape: 2 d_in d_out FLOPs, d_in d_out parameters
    shapes = sorted({(a.d_in, a.d_out) for a in analyses})
    dense = _by_gid(ax2.collections, "dense").get_offsets()
    assert [tuple(map(float, p)) for p in dense] == [(2.0 * i * o, float(i * o)) for i, o in shapes]
    # the staircase is the brute-force (fewer FLOPs, more params) front of everything drawn
    points = [(float(a.counts.flops), float(a.params)) for a in analyses] + [tuple(p) for p in dense]
    front = sorted({p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)})
    line = _by_gid(ax2.get_lines(), "front")
    assert sorted(set(zip(line.get_xdata(), line.get_ydata()))) == front
    assert plot.path.read_bytes().startswith(b"\x89PNG")


def test_taxonomy_of_a_search_draws_every_feasible_candidate():
    report = einstruct.search(256, flops_ratio=0.25, grid=4, include_dominated=True, top=None)
    plot = einstruct.plot_taxonomy(search=report)
    ax3, ax2 = plot.figure.axes
    xs, ys, zs = _by_gid(ax3.collections, "points:search")._offsets3d
    assert len(xs) == report.stats["feasible"]
    for r, x, y, z in zip(report.candidates, xs, ys, zs):
        assert (float(x), float(y), float(z)) == (float(r.omega), float(r.psi), float(r.nu))
    a = analyze_structure(einstruct.load(report.candidates[0].source))
    assert (float(xs[0]), float(ys[0])) == (float(a.taxonomy.omega), float(a.taxonomy.psi))
    flat = _by_gid(ax2.collections, "points:search").get_offsets()
    assert [tuple(map(float, p)) for p in flat] == [
        (float(r.flops), float(r.params)) for r in report.candidates
    ]


def _brute_force_min_cut(structure):
    """The smallest product of sizes of indices whose removal separates x from y."""
    names = [i.name for i in structure.indices]
    best = None
    for k in range(len(names) + 1):
        for cut in itertools.combinations(names, k):
            reach, frontier = {structure.input.name}, [structure.input.name]
            while frontier:
                t = frontier.pop()
                for i in structure.tensor(t).indices:
                    if i in cut:
                        continue
                    for h in structure.holders(i):
                        if h not in reach:
                            reach.add(h)
                            frontier.append(h)
            if structure.output.name not in reach:
                size = math.prod(structure.size(i) for i in cut)
                best = size if best is None else min(best, size)
    return best


@pytest.mark.parametrize("path", ["btt.ein", "tensor_train.ein", "three_factor.ein", "block_diagonal.ein"])
def test_network_drawing_shows_indices_hyperedges_cut_and_order(path, tmp_path):
    structure = einstruct.load_all(EXAMPLES / path)[0]
    drawing = einstruct.draw(structure, output=tmp_path / "net.svg")
    ax = drawing.figure.axes[0]
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    texts = [t.get_text() for t in ax.texts]
    for index in structure.indices:
        held = structure.holders(index.name)
        assert any(t.startswith(f"{index.name}={index.size}") for t in texts), index.name
        if len(held) >= 3:  # a hyperedge: a dot with a spoke to every holder
            dot = lines[f"hyperedge:{index.name}"]
            for h in held:
                spoke = lines[f"index:{index.name}:{h}"]
                assert (spoke.get_xdata()[-1], spoke.get_ydata()[-1]) == drawing.positions[h]
                assert (spoke.get_xdata()[0], spoke.get_ydata()[0]) == (
                    dot.get_xdata()[0],
                    dot.get_ydata()[0],
                )
        else:  # an edge from one holder to the other
            edge = lines[f"index:{index.name}"]
            ends = {(edge.get_xdata()[0], edge.get_ydata()[0]), (edge.get_xdata()[-1], edge.get_ydata()[-1])}
            assert ends == {drawing.positions[h] for h in held}
    # the red edges are a minimum x-y cut (brute force), and it bounds the rank as drawn
    red = {
        gid.split(":")[1]
        for gid, ln in lines.items()
        if gid.startswith("index") and ln.get_color() == "tab:red"
    }
    assert red == set(drawing.cut)
    best = _brute_force_min_cut(structure)
    assert math.prod(structure.size(i) for i in red) == best
    assert drawing.rank_bound == min(best, structure.in_features, structure.out_features)
    # the numbered steps contract every tensor, summing each index once it is no longer needed
    live = {t.name: set(t.indices) for t in (structure.input, *structure.factors)}
    for step in drawing.steps:
        merged = set().union(*(live.pop(op) for op in step.operands))
        needed = set(structure.output.indices).union(*live.values())
        assert set(step.summed) == merged - needed
        live[step.result] = merged & needed
    assert list(live) == [structure.output.name]
    assert b"generated by einstruct" in drawing.path.read_bytes()


def test_figures_are_not_written_over_other_files(tmp_path, capsys):
    target = tmp_path / "net.png"
    target.write_bytes(b"my holiday photo")
    assert main(["draw", str(EXAMPLES / "btt.ein"), "-o", str(target)]) == 2
    assert "exists and was not generated by einstruct" in capsys.readouterr().err
    assert target.read_bytes() == b"my holiday photo"
    assert main(["draw", str(EXAMPLES / "btt.ein"), "-o", str(target), "--force"]) == 0
    assert main(["draw", str(EXAMPLES / "btt.ein"), "-o", str(target)]) == 0  # ours now: replaced
    with pytest.raises(ParameterError, match="image type"):
        einstruct.draw(EXAMPLES / "btt.ein", output=tmp_path / "net.jpeg")


@pytest.mark.parametrize(
    "name, text",
    [
        (
            "report.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg"><text>generated by einstruct analyze</text></svg>\n',
        ),
        ("notes.pdf", b"notes: tables generated by einstruct\n"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"a caption: generated by einstruct 0.1.0"),
    ],
)
def test_a_users_image_that_mentions_einstruct_is_not_taken_for_ours(tmp_path, capsys, name, text):
    # the words anywhere in the file counted as einstruct's mark: the file was replaced
    target = tmp_path / name
    target.write_bytes(text)
    assert main(["draw", str(EXAMPLES / "btt.ein"), "-o", str(target)]) == 2
    assert "exists and was not generated by einstruct" in capsys.readouterr().err
    assert target.read_bytes() == text
    assert main(["draw", str(EXAMPLES / "btt.ein"), "-o", str(target), "--force"]) == 0
    assert main(["draw", str(EXAMPLES / "btt.ein"), "-o", str(target)]) == 0  # ours (its metadata): replaced


def test_plot_command_line(tmp_path, capsys):
    out = tmp_path / "tax.svg"
    args = ["plot", "taxonomy", str(EXAMPLES / "btt.ein"), "--search", "--d-in", "1024", "--d-out", "1024"]
    assert main([*args, "--flops-ratio", "0.1", "--grid", "1/4", "-o", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml")
    assert main(["plot", "taxonomy", "--search", "-o", str(tmp_path / "x.png")]) == 2
    assert "--search needs --d-in and --d-out" in capsys.readouterr().err
    assert main(["plot", "taxonomy", "-o", str(tmp_path / "x.png")]) == 2


@pytest.mark.parametrize(
    "args",
    [["draw", "examples/btt.ein", "-o", "x.png"], ["plot", "taxonomy", "examples/btt.ein", "-o", "x.png"]],
    ids=["draw", "plot"],
)
def test_without_matplotlib_the_error_names_the_extra(args, tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from einstruct.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert "pip install 'einstruct[plot]'" in result.stderr and "Traceback" not in result.stderr
    assert not (ROOT / "x.png").exists()


@pytest.mark.parametrize("args", [["draw", "nope"], ["plot", "taxonomy", "nope"]], ids=["draw", "plot"])
def test_a_missing_spec_file_is_named(args, tmp_path, capsys):
    assert main([*args, "-o", str(tmp_path / "x.png")]) == 2
    assert "no such spec file" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["draw"], ["plot", "taxonomy"]], ids=["draw", "plot"])
def test_a_directory_or_too_long_a_name_is_named_as_such(command, tmp_path, capsys):
    # a directory was "no such spec file"; a name too long for the system an OSError
    assert main([*command, str(ROOT / "examples"), "-o", str(tmp_path / "x.png")]) == 2
    assert "it is a directory" in capsys.readouterr().err
    assert main([*command, "x" * 300 + ".ein", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no such spec file" in err and "internal error" not in err


def _run(*args: str, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "einstruct", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=ROOT, env=env)


def test_draw_and_plot_read_the_spec_from_standard_input_like_analyze(tmp_path):
    # '-' was taken for a file's name: "no such spec file: '-'"
    btt = (EXAMPLES / "btt.ein").read_text()
    drawn = _run("draw", "-", "--set", "d=256", "-o", str(tmp_path / "net.svg"), stdin=btt)
    assert drawn.returncode == 0, drawn.stderr
    assert "min cut g, a: rank <= 256" in drawn.stderr and drawn.stdout == ""
    assert (tmp_path / "net.svg").read_text().lstrip().startswith("<?xml")
    both = btt + (EXAMPLES / "monarch.ein").read_text()
    several = _run("draw", "-", "-o", str(tmp_path / "n.svg"), stdin=both)
    assert several.returncode == 2 and "pass --structure with one of btt, monarch_layer" in several.stderr
    assert _run("draw", "-", "-s", "monarch_layer", "-o", str(tmp_path / "m.svg"), stdin=both).returncode == 0
    args = ["plot", "taxonomy", "-", str(EXAMPLES / "dense.ein"), "-o", str(tmp_path / "t.svg")]
    plotted = _run(*args, stdin=both)
    assert plotted.returncode == 0, plotted.stderr
    assert f"({len(einstruct.load_all(both)) + 1} structures)" in plotted.stderr
    # the same errors as `analyze -`: located in <stdin>, without a traceback
    bad = "structure a(d = 4):\n    y[i] = x[i] * W[i, j]\n"
    image = ["-o", str(tmp_path / "x.png")]
    for command in (["draw", "-", *image], ["plot", "taxonomy", "-", *image], ["analyze", "-"]):
        result = _run(*command, stdin=bad)
        assert result.returncode == 2 and result.stderr.startswith("<stdin>:2:"), (command, result.stderr)
        assert "Traceback" not in result.stderr
    twice = _run("plot", "taxonomy", "-", "-", "-o", str(tmp_path / "x.png"), stdin=btt)
    assert twice.returncode == 2 and "standard input (-) is given more than once" in twice.stderr
    assert not (tmp_path / "x.png").exists()


def test_log_axes_label_their_ticks_as_numbers_not_mathtext_source(tmp_path):
    # user text is drawn literally (no mathtext), but matplotlib writes a log axis's tick
    # labels as mathtext: drawn literally they read `$\mathdefault{10^{5}}$`
    plot = einstruct.plot_taxonomy(FILES, output=tmp_path / "t.png", title="a $stray dollar")
    ax = plot.figure.axes[-1]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both")]
    shown = [text for text in labels if text]
    assert shown and not any("$" in text or "\\" in text for text in shown), shown
    assert any("10" in text and text[-1] in "⁰¹²³⁴⁵⁶⁷⁸⁹" for text in shown), shown
    assert plot.figure._suptitle.get_text() == "a $stray dollar"  # still drawn as written
    assert not plot.figure._suptitle.get_parse_math()


def test_a_returned_figures_axes_keep_their_formatters_behaviour(tmp_path):
    # the plain-text labels must not cost the user matplotlib's own calls on the figure
    import matplotlib as mpl

    plot = einstruct.plot_taxonomy(FILES, output=tmp_path / "t.png")
    figure = mpl.figure.Figure()
    ax = figure.add_subplot()
    ax.plot([0, 1], [1e6, 3e6])
    ax.ticklabel_format(style="sci", scilimits=(0, 0), useMathText=True)
    from einstruct.figures.mpl import figure_bytes, literal_text

    literal_text(figure)
    figure_bytes(figure, "png")
    ax.ticklabel_format(style="plain")  # still a ScalarFormatter
    ax.ticklabel_format(style="sci", scilimits=(0, 0), useMathText=True)
    figure_bytes(figure, "png")
    offset = ax.yaxis.get_offset_text().get_text()
    assert offset and "\\" not in offset and "$" not in offset, offset
    assert plot.figure.axes[-1].xaxis.get_major_formatter().__class__.__name__.startswith("Plain")
