"""The planner's claims about memory layout hold in torch, and its options work."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from strategies import structure_sources

import einstruct
from einstruct.errors import CompileError
from einstruct.planner import make_plan
from einstruct.planner.order import BATCH
from einstruct.runtime import compile_structure

TOKENS = 5


def _source_tensor(layout, sizes):
    """A fresh contiguous tensor whose memory order is ``layout``."""
    return torch.zeros(*(TOKENS if i == BATCH else sizes[i] for i in layout))


def _matmul_view(view, source):
    t = source if view.permute is None else source.permute(view.permute)
    t = t.reshape(view.shape)
    return t.mT if view.transposed else t


def _blas_compatible(t: torch.Tensor) -> bool:
    """A matrix BLAS takes as is: unit stride along one of its two axes (size-1 axes count as any)."""
    rows, cols = t.shape[-2:]
    rs, cs = t.stride()[-2:]
    return cs == 1 or rs == 1 or rows == 1 or cols == 1


@given(source=structure_sources())
def test_views_the_planner_calls_free_are_views_and_copies_are_copies(source):
    structure = einstruct.load(source)
    plan = make_plan(structure, batch=TOKENS)
    sizes = {i.name: int(i.size) for i in structure.indices}
    for step in plan.steps:
        for view in (step.left, step.right):
            src = _source_tensor(view.layout, sizes)
            t = _matmul_view(view, src)
            shares = t.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
            # a copy happens in reshape, or inside the matmul when BLAS cannot take the strides
            copies = not shares or (t.numel() > 1 and not _blas_compatible(t))
            assert copies == view.copy, (step.einsum, view, t.stride())
        # the matmul shapes line up
        lhs, rhs = step.left.matmul_shape, step.right.matmul_shape
        assert lhs[-1] == rhs[-2] and lhs[:-2] == rhs[:-2]


def test_btt_rank_1_plans_no_copy_between_steps():
    # the transpose between BTT's two steps is the expensive copy (docs/compiling.md, the planner on BTT)
    plan = make_plan(einstruct.load("structure b = btt(d = 1024, rank = 1)"), batch=2048)
    assert not any(v.copy for s in plan.steps for v in (s.left, s.right))
    assert plan.copies == 1 and not plan.output_inner_moved


def test_strategy_forced_and_auto():
    structure = einstruct.load("structure b = btt(d = 64, rank = 1)")
    assert make_plan(structure, strategy="dense").strategy == "dense"
    assert make_plan(structure, strategy="structured").strategy == "structured"
    auto = make_plan(structure)
    e = auto.estimate
    assert auto.strategy == ("dense" if e.dense_ms < e.structured_ms else "structured")
    with pytest.raises(CompileError, match="unknown strategy"):
        make_plan(structure, strategy="fast")


def test_names_of_the_generated_locals_are_ordinary_tensor_names():
    """The generated code binds no user name as a variable, so its own locals are free to use."""
    from reference import dense_from_factors

    names = ("t1", "l1", "t2", "g_x", "eye1", "x", "y", "w1")
    for inp, a, b, out in zip(names, names[1:] + names[:1], names[2:] + names[:2], names[3:] + names[:3]):
        source = (
            f"structure s:\n    {out}[o, k] = {inp}[i, k] * {a}[i, j, k] * {b}[j, o, k]\n"
            "    where i = 4, j = 3, o = 5, k = 2\n"
        )
        for strategy in ("structured", "dense"):
            layer = compile_structure(einstruct.load(source))(dtype=torch.float64, strategy=strategy)
            x = torch.randn(6, layer.in_features, dtype=torch.float64, requires_grad=True)
            W = torch.tensor(dense_from_factors(layer))
            y = layer(x)
            torch.testing.assert_close(y, x @ W.T + layer.bias)
            (g,) = torch.autograd.grad(y.sum(), x)
            torch.testing.assert_close(g, torch.ones_like(y) @ W)


def _saved_storages(layer, x):
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    return set(saved), y


@pytest.mark.parametrize(
    "spec", ["btt(d = 64, rank = 2)", "tensor_train(d = 64, rank = 3)", "monarch(d = 64)"]
)
def test_save_intermediate_false_keeps_only_input_and_factors(spec):
    cls = compile_structure(einstruct.load(f"structure s = {spec}"), strategy="structured")
    x = torch.randn(7, 64, requires_grad=True)
    lean = cls(bias=False, save_intermediate=False)
    full = cls(bias=False)
    full.load_state_dict(lean.state_dict())
    allowed = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in lean.parameters()}
    saved, y_lean = _saved_storages(lean, x)
    assert saved <= allowed
    saved_full, y_full = _saved_storages(full, x)
    assert saved_full - allowed  # the default keeps intermediates
    g = torch.randn_like(y_lean)
    (gx_lean,) = torch.autograd.grad(y_lean, x, g)
    (gx_full,) = torch.autograd.grad(y_full, x, g)
    torch.testing.assert_close(gx_lean, gx_full)
    torch.testing.assert_close(gx_full, g @ full.to_dense())


def _chain_source(n: int) -> str:
    """A Tensor-Train of ``n`` cores (n steps): more than the exhaustive orientation search covers."""
    factors = []
    for k in range(1, n + 1):
        axes = [f"i{k}", f"o{k}"] + ([f"r{k}"] if k < n else [])
        axes = ([f"r{k - 1}"] if k > 1 else []) + axes
        factors.append(f"F{k}[{', '.join(axes)}]")
    ins = ", ".join(f"i{k}" for k in range(1, n + 1))
    outs = ", ".join(f"o{k}" for k in range(1, n + 1))
    sizes = " = ".join([*(f"i{k}" for k in range(1, n + 1)), *(f"o{k}" for k in range(1, n + 1))])
    ranks = " = ".join(f"r{k}" for k in range(1, n))
    equation = f"y[{outs}] = x[{ins}] * {' * '.join(factors)}"
    return f"structure chain:\n    {equation}\n    where {sizes} = 2, {ranks} = 2\n"


def test_long_chains_plan_greedily_and_stay_exact():
    from reference import dense_from_factors

    from einstruct.planner.layouts import MAX_SEARCH

    n = MAX_SEARCH + 1
    structure = einstruct.load(_chain_source(n))
    assert len(make_plan(structure).steps) == n
    layer = compile_structure(structure, strategy="structured")(dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(3, layer.in_features, dtype=torch.float64, requires_grad=True)
    dense = torch.from_numpy(dense_from_factors(layer))
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)
    g = torch.randn(3, layer.out_features, dtype=torch.float64)
    (gx,) = torch.autograd.grad(layer(x), x, g)
    torch.testing.assert_close(gx, g @ dense)


def test_the_token_axis_is_primed_when_an_index_is_called_n(tmp_path, capsys):
    """Plans print the tokens as ``n``; a structure with its own index ``n`` gets ``n'`` for
    the tokens, in the text, the JSON and the generated step comments."""
    from einstruct.cli import main
    from einstruct.planner.format import format_plan, plan_to_dict

    text = "structure s(d = 64):\n  y[o, n] = x[i, n] * A[i, o]\n  where i = o = 8, n = 8\n"
    plan = make_plan(einstruct.load(text), 64, "structured")
    shown = format_plan(plan)
    assert "(n' = tokens)" in shown and "viewed as [n',i,n]" in shown
    data = plan_to_dict(plan)
    assert data["token_axis"] == "n'" and data["input_layout"] == ["n'", "i", "n"]
    assert "__batch" not in json.dumps(data)
    plain = plan_to_dict(make_plan(einstruct.load("structure b = btt(d = 64)"), 64, "structured"))
    assert plain["token_axis"] == "n" and plain["input_layout"][0] == "n"
    (tmp_path / "s.ein").write_text(text)
    assert (
        main(["compile", str(tmp_path / "s.ein"), "--batch", "64", "--strategy", "structured", "-o", "-"])
        == 0
    )
    assert "# step 1: [n',i,n] * [i,o] -> [n',n,o]" in capsys.readouterr().out
