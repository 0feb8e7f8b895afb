"""Products written straight into the order that follows them, and Functions applied without
per-call signature binding.

When the last step's result needs a permute into the output's order (or the
input's gradient into the input's), the generated code writes the product there
(``matmul_into``: ``out=`` on a permuted buffer), so the permute after it is a
view. Checked against the plain products (torch.bmm / torch.mm), the layers'
dense matrices (``tests/reference.py``) and the ops torch actually dispatches.
"""

import inspect

import pytest
import torch
from reference import assert_dense_forward_and_backward
from torch.utils._python_dispatch import TorchDispatchMode

import einstruct
from einstruct.nn.layer import apply_function, matmul_into
from einstruct.runtime import compile_structure, module_source

MONARCH4 = "structure m = monarch(d = 256, blocks = 4)"


def _inverse(axes):
    return tuple(axes.index(k) for k in range(len(axes)))


@pytest.mark.parametrize(
    "left, right, shape, axes",
    [
        ((4, 6, 5), (4, 5, 3), (6, 4, 3), (1, 0, 2)),  # [b, m, n] written as [m, b, n]
        ((4, 6, 5), (4, 5, 3), (6, 3, 4), (2, 0, 1)),  # as [m, n, b]: BLAS writes column-major
        ((4, 6, 10), (4, 10, 6), (-1, 4, 2, 3), (1, 0, 2, 3)),  # -1 for the tokens, N split in two
        ((6, 5), (5, 12), (12, 6), (1, 0)),  # an mm written transposed
    ],
)
def test_the_product_is_written_in_the_asked_memory_order(left, right, shape, axes):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(left, generator=gen), torch.randn(right, generator=gen)
    plain = torch.bmm(a, b) if a.dim() == 3 else torch.mm(a, b)
    with torch.no_grad():
        y = matmul_into(a, b, shape, axes)
    # the same sums, but BLAS may order them otherwise for another output layout (MKL on
    # AMD CPUs does for the transposed mm): equal to float32 rounding, not bit for bit
    torch.testing.assert_close(y, plain, rtol=1e-6, atol=1e-6)
    # split into the memory's axes (in the product's order), permuted back: contiguous
    split = [shape[k] for k in axes]
    assert not y.is_contiguous()
    assert y.view(split).permute(_inverse(axes)).is_contiguous()


def test_where_out_is_not_allowed_the_plain_product_runs():
    a = torch.randn(4, 6, 5, requires_grad=True)
    b = torch.randn(4, 5, 3)
    y = matmul_into(a, b, (6, 4, 3), (1, 0, 2))  # autograd records: no out=
    assert y.grad_fn is not None and y.is_contiguous()
    (g,) = torch.autograd.grad(y.sum(), a)
    assert torch.equal(g, torch.ones(4, 6, 3) @ b.mT)
    with torch.no_grad():  # a column-major left operand: measured slower written, so plain
        col = a.detach().mT.contiguous().mT
        assert matmul_into(col, b, (6, 4, 3), (1, 0, 2)).is_contiguous()
    batched = torch.randn(2, 4, 6, 5)
    with torch.no_grad():  # under vmap (a torch.func transform): plain, per sample equal
        out = torch.func.vmap(lambda t: matmul_into(t, b, (6, 4, 3), (1, 0, 2)))(batched)
    assert torch.equal(out, torch.matmul(batched, b))


def test_under_autocast_the_product_is_made_as_autocast_makes_it():
    a, b = torch.randn(4, 6, 5), torch.randn(4, 5, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = matmul_into(a, b, (6, 4, 3), (1, 0, 2))
        plain = torch.bmm(a, b)
    assert y.dtype == plain.dtype == torch.bfloat16
    assert torch.equal(y, plain)


class _Ops(TorchDispatchMode):
    """The aten ops dispatched inside the block, by name."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__) + ("_out" if "out" in (kwargs or {}) else ""))
        return func(*args, **(kwargs or {}))


def test_monarch_with_blocks_copies_no_output_and_no_input_gradient():
    structure = einstruct.load(MONARCH4)
    text = module_source(structure, runtime="import")
    assert "y = matmul_into(" in text and "g_x = matmul_into(" in text
    layer = compile_structure(structure, batch=16)(bias=False)
    x = torch.randn(16, layer.in_features, requires_grad=True)
    y = layer(x)
    with _Ops() as forward_ops:
        with torch.no_grad():
            layer(x)
    with _Ops() as backward_ops:
        y.backward(torch.randn_like(y))
    # forward: the intermediate's copy for step 2 only (the plan's one operand copy);
    # the output's permute and reshape are views of what bmm wrote
    assert forward_ops.ops.count("bmm_out") == 1
    assert forward_ops.ops.count("clone") + forward_ops.ops.count("copy_") == 1
    # backward: the intermediate gradient's copy only; g_x written in the input's order
    assert backward_ops.ops.count("bmm_out") == 1
    assert backward_ops.ops.count("clone") + backward_ops.ops.count("copy_") == 1


@pytest.mark.parametrize("save", [True, False])
@pytest.mark.parametrize(
    "spec", [MONARCH4, "structure b = btt(d = 64, rank = 2)", "structure k = kronecker(d = 64)"]
)
def test_layers_that_write_their_products_are_their_dense_matrices(spec, save):
    layer = compile_structure(einstruct.load(spec), batch=8, strategy="structured")(
        dtype=torch.float64, save_intermediate=save
    )
    assert_dense_forward_and_backward(layer)


def test_a_layer_call_binds_no_signature(monkeypatch):
    layer = compile_structure(einstruct.load(MONARCH4), batch=8)(bias=False)
    x = torch.randn(8, layer.in_features, requires_grad=True)
    y_ref = layer.planned_function.apply(x, *layer._factors(), True)[0]

    def refuse(*args, **kwargs):
        raise AssertionError("inspect.signature called")

    monkeypatch.setattr(inspect, "signature", refuse)
    y = apply_function(layer.planned_function, x, *layer._factors(), True)[0]
    assert torch.equal(y, y_ref)
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x)
    assert torch.equal(g, g_ref)
    layer(x).sum().backward()  # the layer's own call takes the same path


@pytest.mark.parametrize(
    "spec",
    [
        "btt(d = 256, rank = 1)",
        "btt(d = 256, rank = 2)",
        "monarch(d = 256)",
        "monarch(d = 256, blocks = 4)",
        "kronecker(d = 256)",
        "tensor_train(d = 256, rank = 4)",
        "low_rank(d = 256, rank = 32)",
    ],
)
def test_every_emitted_write_writes(spec):
    # the generator emits matmul_into only where the runtime then writes (a row-major left
    # operand): no call that always falls back to the plain product
    structure = einstruct.load(f"structure s = {spec}")
    for batch in (64, 2048):  # (the plans differ: BTT rank 2 copies at 64 tokens, views at 2048)
        text = module_source(structure, batch=batch, strategy="structured", runtime="import")
        layer = compile_structure(structure, batch=batch, strategy="structured")(bias=False)
        x = torch.randn(64, layer.in_features, requires_grad=True)
        with _Ops() as ops:
            layer(x).backward(torch.randn(64, layer.out_features))
        written = ops.ops.count("bmm_out") + ops.ops.count("mm_out")
        assert written == text.count("matmul_into(")
