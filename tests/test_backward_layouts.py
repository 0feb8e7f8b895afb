"""The planned backward's gradient views: one copy, into the cheapest order BLAS takes.

A step's result gradient is viewed as its matmul's ``(batch, M, N)``. When its
memory order is no such matrix (the output gradient behind an output permute
that moved the innermost axis: Monarch written in the butterfly's order,
``y[e, f]``), the backward copies it once, before the step's two products, and
into the order a copy reaches cheapest: each token's block transposed, the
tokens kept outermost, rather than the tokens moved inward. The layers stay
their dense matrices.
"""

import subprocess
import sys

import pytest
import torch
from reference import assert_dense_forward_and_backward

import einstruct
from einstruct.runtime import compile_structure, module_source

#: three broadcast steps whose backward lines run past 88 columns in one piece
THREE = (
    "structure s(d = 4096):\n    y[o1, o2, o3] = x[i1, i2, i3] * A[i1, o1] * B[i2, o2] * C[i3, o3]\n"
    "    where i1 = o1 = i2 = o2 = i3 = o3 = 16"
)

BFLY = "structure m(d = {d}):\n    y[e, f] = x[g, a] * A[g, a, f] * B[f, g, e]\n    where g = a = f = e = {b}"


def test_the_output_gradient_behind_an_inner_permute_is_copied_once_tokens_outermost():
    text = module_source(einstruct.load(BFLY.format(d=1024, b=32)), runtime="import")
    # g_y is [f, n, e] over memory [n, e, f]: copied as [n, f, e] (a 32 x 32 transpose per token)
    assert "g2 = g_y.permute(1, 0, 2).contiguous().permute(1, 0, 2).reshape(32, -1, 32)" in text
    assert text.count(".contiguous()") == 1


def test_a_blas_ready_gradient_is_never_copied():
    text = module_source(einstruct.load("structure m = monarch(d = 1024)"), runtime="import")
    assert ".contiguous()" not in text


@pytest.mark.parametrize("save", [True, False])
def test_butterfly_order_is_its_dense_matrix_forward_and_backward(save):
    structure = einstruct.load(BFLY.format(d=256, b=16))
    layer = compile_structure(structure, batch=8, strategy="structured")(
        dtype=torch.float64, save_intermediate=save
    )
    assert_dense_forward_and_backward(layer)


@pytest.mark.parametrize("spec", [THREE, BFLY.format(d=4096, b=64)])
def test_long_backward_lines_are_split_and_the_file_is_ruff_clean(spec, tmp_path):
    text = module_source(einstruct.load(spec))
    assert all(len(line) <= 88 for line in text.splitlines() if line.lstrip().startswith("g"))
    out = tmp_path / "layer.py"
    out.write_text(text)
    for args in (["check", "--isolated", str(out)], ["format", "--isolated", "--check", str(out)]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
