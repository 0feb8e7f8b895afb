"""The triton backend's kernels, run in Triton's interpreter, against dense references.

CI sets ``TRITON_INTERPRET=1`` (``.ci/run``); this file sets it too, before any
generated module is imported, so CPU tensors run the generated kernels.
Every check compares with an independent reference: the layer's dense matrix
from one einsum of its parameters (``tests/reference.py``), its gradients by
autograd through that einsum. Sizes are ragged (not multiples of any block),
so every mask and every partial chunk is exercised.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reference import dense_torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import einstruct  # noqa: E402
from einstruct.analysis import analyze_structure  # noqa: E402
from einstruct.backends.torch.names import LAYER_ATTRIBUTES  # noqa: E402
from einstruct.planner.chain import chain_of  # noqa: E402
from einstruct.planner.plan import make_plan  # noqa: E402
from einstruct.planner.tiles import pow2  # noqa: E402
from einstruct.runtime import compile_structure  # noqa: E402

#: Two-factor catalog forms and theta points at ragged widths (class sizes 3 to 8, none a
#: multiple of the interpreter's blocks everywhere); together their launches take every
#: path of the kernels (test_the_cases_cover_every_path_of_the_kernels).
CASES = [
    "btt(d_in = 40, d_out = 24)",
    "btt(d_in = 40, d_out = 24, rank = 3)",
    "monarch(d_in = 40, d_out = 24)",
    "monarch(d = 48, blocks = 2)",
    "kronecker(d_in = 40, d_out = 24)",
    "kronecker(d = 46)",  # 46 has no split within 4:1, so the layer pads to 7 x 7
    "tensor_train(d_in = 40, d_out = 24, rank = 3)",
    "low_rank(d_in = 40, d_out = 24, rank = 3)",
    "low_rank(d_in = 40, d_out = 300, rank = 3)",  # the second step keeps its input tile
    "low_rank(d_in = 300, d_out = 40, rank = 5)",  # summed entries in several blocks
    "theta(alpha = 1/2, beta = 1/4, gamma = 1/4, delta = 1/4, epsilon = 1/2, phi = 1/4, d = 60)",
    "theta(alpha = 1/2, gamma = 1/2, epsilon = 1/2, phi = 1/2, rho = 1/4, d = 50)",
    "theta(alpha = 1/3, beta = 1/3, gamma = 1/3, delta = 1/3, epsilon = 1/3, phi = 1/3, d = 64)",
]
#: A chain whose classes hold two indices each (merged into one in the kernels).
MERGED = """structure merged:
    y[f, e1, e2] = x[g, a1, a2] * A[g, a1, a2, f] * B[f, g, e1, e2]
    where g = 3, a1 = 2, a2 = 3, f = 5, e1 = 3, e2 = 2
"""
#: A chain with all seven classes (so a step sums, and makes, three classes at once).
SEVEN = """structure seven:
    y[f, d, e] = x[g, a, b] * A[g, a, f, d, r] * B[f, g, b, r, e]
    where a = 5, b = 3, g = 2, d = 3, e = 5, f = 2, r = 3
"""
#: Tolerances against the float64 reference, by dtype (docs/triton.md): fp32 products
#: accumulate in fp32 (TF32 off, as torch's default); fp16 rounds the operands and the
#: intermediate to 11 bits, accumulating in fp32.
#: The token count layers are planned for (at 2048, small layers of rank 3 would multiply the
#: factors first, which is no chain), and the ragged count they run with.
BATCH = 8
TOKENS = 37
TOLERANCE = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-4, "atol": 1e-4},
    torch.float16: {"rtol": 2e-2, "atol": 2e-2},
}


def _np_itemsize(element_type) -> int:
    """Bytes per element of a Triton pointer's element type."""
    return element_type.primitive_bitwidth // 8


@pytest.fixture(autouse=True)
def _accesses_stay_inside_the_tensors(monkeypatch):
    """Every load and store a kernel makes with its mask on must fall inside one of the
    tensors it was launched with. A store past a tensor (a wrong mask) leaves correct
    outputs and corrupts other memory, which no comparison of results would notice; the
    interpreter runs on host memory, so this checks the addresses themselves."""
    from triton.runtime import interpreter

    ranges: list[tuple[int, int]] = []
    builder = type(interpreter.interpreter_builder)
    init_args, load, store = (
        interpreter.GridExecutor._init_args_hst,
        builder.create_masked_load,
        builder.create_masked_store,
    )

    def _check(kind, ptrs, mask):
        """Raise before the access (a stray store would corrupt memory, a stray load may crash)."""
        on = ptrs.data[mask.data.astype(bool)]
        if on.size:
            itemsize = _np_itemsize(ptrs.get_element_ty())
            lo, hi = int(on.min()), int(on.max()) + itemsize
            assert any(a <= lo and hi <= b for a, b in ranges), (
                f"{kind} of bytes [{lo:#x}, {hi:#x}) outside the kernel's tensors"
            )

    def _init_args(self, args, kwargs):
        host = init_args(self, args, kwargs)
        storages = [t.untyped_storage() for t in [*host[0], *host[1].values()] if isinstance(t, torch.Tensor)]
        ranges[:] = [(s.data_ptr(), s.data_ptr() + s.nbytes()) for s in storages]
        return host

    def _load(self, ptrs, mask, *rest):
        _check("load", ptrs, mask)
        return load(self, ptrs, mask, *rest)

    def _store(self, ptrs, value, mask, *rest):
        _check("store", ptrs, mask)
        return store(self, ptrs, value, mask, *rest)

    monkeypatch.setattr(interpreter.GridExecutor, "_init_args_hst", _init_args)
    monkeypatch.setattr(builder, "create_masked_load", _load)
    monkeypatch.setattr(builder, "create_masked_store", _store)


def _layer(source: str, dtype=torch.float64, seed: int = 0, **kwargs):
    structure = einstruct.load(
        source if source.startswith("structure") and ":" in source else f"structure s = {source}"
    )
    layer_class = compile_structure(structure, batch=BATCH, backend="triton")
    layer = layer_class(dtype=dtype, strategy="structured", **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return structure, layer


def _einstruct_ops(counter: FlopCounterMode) -> set[str]:
    """The fused ops a counted run dispatched: forward, backward."""
    names = [str(op) for op in counter.get_flop_counts()["Global"] if str(op).startswith("einstruct.")]
    return {kind for kind in ("forward", "backward") for n in names if n.endswith(kind)}


def _check(layer, n: int, dtype) -> set[str]:
    """Forward and every gradient against the dense reference; returns the fused ops that ran."""
    tol = TOLERANCE[dtype]
    x = torch.randn(n, layer.in_features, dtype=torch.float64).to(dtype).requires_grad_()
    probe = torch.randn(n, layer.out_features, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        y = layer(x)
        (y.double() * probe).sum().backward()
    factors = {k: getattr(layer, k).detach().double().clone().requires_grad_() for k in layer.factor_axes}
    xr = x.detach().double().clone().requires_grad_()
    expected = xr @ dense_torch(layer, factors).T + layer.bias.detach().double()
    (expected * probe).sum().backward()
    torch.testing.assert_close(y.double(), expected, **tol)
    torch.testing.assert_close(x.grad.double(), xr.grad, **tol)
    for name, ref in factors.items():
        torch.testing.assert_close(getattr(layer, name).grad.double(), ref.grad, **tol)
    return _einstruct_ops(counter)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(
    "source", [*CASES, MERGED, SEVEN], ids=lambda s: s.split(":")[0] if ":" in s else s.replace(" ", "")
)
def test_every_two_factor_form_runs_its_fused_kernels(source, dtype):
    _, layer = _layer(source, dtype, kernels="fused")
    assert layer.fused_forward is not None, "a two-factor chain gets fused kernels"
    ran = _check(layer, TOKENS, dtype)
    assert ran == {"forward", "backward"}, ran


def test_the_cases_cover_every_path_of_the_kernels():
    """Across the cases' interpreter configurations: a step that keeps its input tile
    (C_INNER), one that keeps its weight tile, one that loops over summed blocks; rows that
    carry a class (beta or delta); summed and made entries over two or three classes."""
    from einstruct.planner.fusion import LAUNCHES, plan_fusion

    seen = set()
    for source in [*CASES, SEVEN]:
        text = source if ":" in source else f"structure s = {source}"
        fusion = plan_fusion(make_plan(einstruct.load(text), batch=BATCH))
        for k in fusion.launches:
            launch, row = k.launch, k.interpreter
            if launch.kind == "step":
                kept = "weight kept" if launch.summed <= row[1] else "summed loop"
                seen.add("input kept" if row[3] else kept)
            seen |= {"rows carry a class"} if launch.rows > 1 else set()
            _, _, _, summed, made = LAUNCHES[k.name]
            for classes in (summed, made):
                present = [c for c in classes if fusion.chain.sizes[c] > 1]
                seen |= {f"{len(present)} classes"} if len(present) > 1 else set()
    paths = {"input kept", "weight kept", "summed loop", "rows carry a class", "2 classes", "3 classes"}
    assert seen == paths


def test_half_precision_and_autocast():
    _, layer = _layer(CASES[1], torch.float16, kernels="fused")
    _check(layer, 21, torch.float16)
    _, wide = _layer(CASES[1], torch.float32, kernels="fused")
    x = torch.randn(21, wide.in_features)
    with torch.autocast("cpu", dtype=torch.float16), FlopCounterMode(display=False) as counter:
        y = wide(x)
        wide.kernels = "torch"
        planned = wide(x)
    assert _einstruct_ops(counter) == {"forward"}
    assert y.dtype == planned.dtype  # the bias is added after the kernels, as in the torch path
    expected = x.double() @ wide.to_dense().double().T + wide.bias.double()
    torch.testing.assert_close(y.double(), expected, **TOLERANCE[torch.float16])


def test_bfloat16_in_the_interpreter_runs_the_planned_steps():
    """The interpreter's bfloat16 tl.dot multiplies bit patterns: under bfloat16 autocast on
    CPU the layer must not dispatch its kernels, and its output must stay near float64's."""
    _, layer = _layer(CASES[1], torch.float32, kernels="fused")
    x = torch.randn(21, layer.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16), FlopCounterMode(display=False) as counter:
        y = layer(x)
    assert _einstruct_ops(counter) == set()
    assert y.dtype == torch.bfloat16
    expected = x.double() @ layer.to_dense().double().T + layer.bias.double()
    scale = expected.abs().max()
    assert (y.double() - expected).abs().max() <= 2**-5 * scale


def test_torch_func_transforms_run_the_planned_steps():
    """Custom ops have no functorch rules: grad and vmap over a fused layer fall back to the
    planned Function and give the dense reference's gradients."""
    from torch.func import functional_call, grad, vmap

    _, layer = _layer(CASES[1], kernels="fused")
    x = torch.randn(TOKENS, layer.in_features, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    grads = grad(lambda p: functional_call(layer, p, (x,)).square().sum())(params)
    factors = {k: getattr(layer, k).detach().clone().requires_grad_() for k in layer.factor_axes}
    bias = layer.bias.detach().clone().requires_grad_()
    (x @ dense_torch(layer, factors).T + bias).square().sum().backward()
    for name, ref in factors.items():
        torch.testing.assert_close(grads[name], ref.grad, **TOLERANCE[torch.float64])
    torch.testing.assert_close(grads["bias"], bias.grad, **TOLERANCE[torch.float64])
    rows = vmap(lambda row: layer(row[None])[0])(x)
    torch.testing.assert_close(rows, x @ layer.to_dense().T + layer.bias, **TOLERANCE[torch.float64])


def test_the_intermediate_is_saved_or_recomputed():
    """save_intermediate=True keeps t = x P for Q's gradient (one more saved tensor, tokens
    x t's width); False recomputes it; both give the dense reference's gradients."""
    saved = {}
    for save in (True, False):
        _, layer = _layer(CASES[1], kernels="fused", save_intermediate=save)
        shapes = []

        def pack(tensor, shapes=shapes):
            shapes.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            assert _check(layer, TOKENS, torch.float64) == {"forward", "backward"}
        saved[save] = shapes
    width = sys.modules[type(layer).__module__]._CHAIN.widths["t"]
    assert (TOKENS, width) in saved[True] and (TOKENS, width) not in saved[False]


def test_flop_counter_counts_what_analyze_reports():
    for source in (CASES[1], CASES[8], MERGED):
        structure, layer = _layer(source, kernels="fused")
        analysis = analyze_structure(structure, batch=BATCH)
        x = torch.randn(TOKENS, layer.in_features, dtype=torch.float64, requires_grad=True)
        with FlopCounterMode(display=False) as forward:
            layer(x)
        assert forward.get_total_flops() == analysis.counts.flops * TOKENS
        with FlopCounterMode(display=False) as both:
            layer(x).sum().backward()
        assert both.get_total_flops() == analysis.counts.train_flops * TOKENS


def test_compile_and_export_trace_the_fused_ops():
    _, layer = _layer(CASES[1], kernels="fused")
    x = torch.randn(9, layer.in_features, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, layer(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    (want,) = torch.autograd.grad(layer(x).sum(), x)
    torch.testing.assert_close(g, want)
    exported = torch.export.export(layer, (x.detach(),))
    assert "torch.ops.einstruct.fused_" in exported.graph_module.code
    torch.testing.assert_close(exported.module()(x.detach()), layer(x.detach()))


# -- Hypothesis: random chains, random tiles --------------------------------------------------

_CLASS_TENSORS = {
    "alpha": ("x", "A"),
    "beta": ("x", "B"),
    "gamma": ("x", "A", "B"),
    "delta": ("A", "y"),
    "epsilon": ("B", "y"),
    "phi": ("A", "B", "y"),
    "rho": ("A", "B"),
}


@st.composite
def chains(draw):
    """A random two-factor chain x -> A -> B -> y: which classes it has, their sizes, every axis order."""
    present = {c for c in _CLASS_TENSORS if draw(st.booleans())} | {"alpha", "epsilon"}
    if not present & {"gamma", "beta", "rho"}:
        present.add(draw(st.sampled_from(["gamma", "beta", "rho"])))
    if not present & {"phi", "delta", "rho"}:
        present.add(draw(st.sampled_from(["phi", "delta", "rho"])))
    sizes = {c: draw(st.integers(2, 6)) for c in sorted(present)}
    axes = {t: [c for c in sorted(present) if t in _CLASS_TENSORS[c]] for t in ("x", "A", "B", "y")}
    axes = {t: draw(st.permutations(v)) for t, v in axes.items()}
    ref = lambda t: f"{t}[{', '.join(axes[t])}]"  # noqa: E731
    return (
        "structure chain:\n"
        f"    {ref('y')} = {ref('x')} * {ref('A')} * {ref('B')}\n"
        f"    where {', '.join(f'{c} = {v}' for c, v in sizes.items())}\n"
    )


def _row(draw, launch, name: str) -> tuple:
    """A random configuration of one launch: rows in blocks of 16 or 32, summed and made
    entries in one block or in blocks of 16; a step keeps its input tile when it may."""
    from einstruct.nn.kernels import FACTOR_GRADS

    m = draw(st.sampled_from([16, 32]), label=f"{name} BLOCK_M")
    k = draw(st.sampled_from([16, max(16, pow2(launch.summed))]), label=f"{name} BLOCK_K")
    c = draw(st.sampled_from([16, max(16, pow2(launch.made))]), label=f"{name} BLOCK_C")
    if name in FACTOR_GRADS:
        return (m, k, c, 4, 1)
    inner = launch.summed <= k and draw(st.booleans(), label=f"{name} C_INNER")
    return (m, k, c, inner, 4, 1)


@given(source=chains(), data=st.data())
def test_two_factor_kernels_match_the_reference_for_any_tiles(source, data):
    from einstruct.nn.kernels import INTERMEDIATES, FusedChain
    from einstruct.planner.fusion import plan_fusion

    structure = einstruct.load(source)
    plan = make_plan(structure, batch=BATCH)
    chain = chain_of(plan)
    cls = compile_structure(structure, batch=BATCH, backend="triton")
    assume(cls.fused_forward is not None)  # tiny factors may be multiplied first, which is no chain
    module = sys.modules[cls.__module__]
    fusion = plan_fusion(plan)
    table = module._CHAIN
    rows = {k.name: _row(data.draw, k.launch, k.name) for k in fusion.launches}
    layouts = {r: lay for r, lay in table.layouts.items() if r not in INTERMEDIATES}
    drawn = FusedChain(table.sizes, layouts, {}, rows)
    layer = cls(dtype=torch.float64, strategy="structured")
    gen = torch.Generator().manual_seed(1)
    factors = {
        k: torch.randn(getattr(layer, k).shape, generator=gen, dtype=torch.float64) for k in cls.factor_axes
    }
    p, q = factors[chain.first], factors[chain.second]
    n = data.draw(st.integers(1, 24), label="tokens")
    x = torch.randn(n, layer.in_features, generator=gen, dtype=torch.float64)
    gy = torch.randn(n, layer.out_features, generator=gen, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_() for k, v in factors.items()}
    xr = x.clone().requires_grad_()
    expected = xr @ dense_torch(layer, leaves).T
    (expected * gy).sum().backward()
    torch.testing.assert_close(drawn.forward(x, p, q), expected)
    g_x, g_p, g_q = drawn.backward(x, gy, p, q, (True, True, True))
    torch.testing.assert_close(g_x, xr.grad)
    torch.testing.assert_close(g_p.view(p.shape), leaves[chain.first].grad)
    torch.testing.assert_close(g_q.view(q.shape), leaves[chain.second].grad)


# -- the module contract ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, structure, params",
    [
        ("examples/btt_moe.ein", None, {}),  # routed: the gate sits between the factors
        ("examples/three_factor.ein", None, {}),  # three factors
        ("structure s = block_diagonal(d = 16, blocks = 4)", None, {}),  # one factor
    ],
)
def test_structures_without_a_chain_run_the_planned_steps(path, structure, params):
    from conftest import ROOT

    spec = ROOT / path if path.startswith("examples") else path
    layer_class = einstruct.compile(spec, structure, backend="triton", **params)
    assert layer_class.default_kernels == "torch" and layer_class.fused_forward is None
    assert layer_class.kernels_note.startswith("no fused kernels:")
    with pytest.raises(ValueError, match="kernels must be one of 'torch'"):
        layer_class(kernels="fused")
    layer = layer_class(dtype=torch.float64)
    x = torch.randn(5, layer.in_features, dtype=torch.float64)
    assert layer(x).shape == (5, layer.out_features)


def test_the_kernels_option():
    _, layer = _layer(CASES[0])
    assert layer.kernels == layer.default_kernels
    with pytest.raises(ValueError, match="kernels must be one of 'fused', 'torch'"):
        _layer(CASES[0], kernels="cuda")
    _, fused = _layer(CASES[0], kernels="fused")
    _, planned = _layer(CASES[0], kernels="torch")
    x = torch.randn(7, fused.in_features, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        torch.testing.assert_close(fused(x), planned(x))
    assert _einstruct_ops(counter) == {"forward"}


def test_the_same_contract_as_the_torch_backend():
    """Every public attribute and constructor option of the torch module, with the same values."""
    import inspect

    structure = einstruct.load("structure s = btt(d = 64, rank = 2)")
    torch_class = compile_structure(structure)
    triton_class = compile_structure(structure, backend="triton")
    torch_args = inspect.signature(torch_class.__init__).parameters
    triton_args = inspect.signature(triton_class.__init__).parameters
    # **options passes a routed layer's own options on to RoutedStructuredLinear
    named = [n for n, p in triton_args.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert named == [*torch_args, "kernels"]
    a, b = torch_class(dtype=torch.float64), triton_class(dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    extra = {
        "default_kernels",
        "kernel_choices",
        "kernels",
        "kernels_note",
        "fused_forward",
        "gpu_dtypes",
    }
    assert extra <= LAYER_ATTRIBUTES  # so no factor can take these names
    assert {n for n in dir(b) if not n.startswith("_")} == {
        n for n in dir(a) if not n.startswith("_")
    } | extra
    for name in (
        "factor_axes",
        "index_sizes",
        "init_std",
        "lr_mult",
        "param_count",
        "input_axes",
        "output_axes",
    ):
        assert getattr(a, name) == getattr(b, name), name
    torch.testing.assert_close(a.to_dense(), b.to_dense())
    assert a.lr_multipliers() == b.lr_multipliers()
    x = torch.randn(3, 64, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))
    for option in ({"normalize": True, "gain": True}, {"zero_init_last": True}, {"bias": False}):
        layer = triton_class(dtype=torch.float64, strategy="structured", kernels="fused", **option)
        torch.testing.assert_close(
            layer(x), x @ layer.to_dense().T + (0 if layer.bias is None else layer.bias)
        )


def test_hostile_names_through_the_fused_kernels():
    """Names taken from the generated module's own locals, kernels included, compile to kernels that
    compute the dense matrix."""
    x, p, q, g, a, f, e = "p", "q", "x", "tl", "acc", "offs_n", "BLOCK_N"
    source = (
        "structure s:\n"
        f"    y[{f}, {e}] = {x}[{g}, {a}] * {p}[{g}, {a}, {f}] * {q}[{f}, {g}, {e}]\n"
        f"    where {g} = 3, {a} = 5, {f} = 4, {e} = 6\n"
    )
    _, layer = _layer(source, kernels="fused")
    assert _check(layer, 9, torch.float64) == {"forward", "backward"}


def test_class_names_the_triton_module_imports_are_refused():
    with pytest.raises(einstruct.EinstructError, match="already binds that name"):
        compile_structure(einstruct.load("structure s = btt(d = 16)"), class_name="triton", backend="triton")


def test_generated_files_are_stamped_deterministic_and_ruff_clean(tmp_path):
    import subprocess

    from conftest import ROOT

    texts = []
    for seed in ("0", "4242"):
        (tmp_path / seed).mkdir()
        out = tmp_path / seed / "layer.py"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        spec = str(ROOT / "examples" / "tensor_train.ein")  # its chain_ops call is the longest line
        args = [sys.executable, "-m", "einstruct", "compile", spec, "--backend", "triton", "-o", "layer.py"]
        result = subprocess.run(args, cwd=tmp_path / seed, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        texts.append(out.read_text())
    assert texts[0] == texts[1]
    assert texts[0].startswith("# @generated by einstruct")
    for args in (["check", "--isolated"], ["format", "--isolated", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args, str(tmp_path / "0" / "layer.py")],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_module_imports_and_runs_without_triton(tmp_path):
    """Without Triton the module imports, CPU tensors run the planned steps, and a CUDA call
    says what to install."""
    import subprocess

    from conftest import ROOT

    out = tmp_path / "layer.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        "-m",
        "einstruct",
        "compile",
        "examples/btt.ein",
        "--backend",
        "triton",
        "-o",
        str(out),
    ]
    assert subprocess.run(args, cwd=ROOT, env=env, capture_output=True).returncode == 0
    script = f"""
import sys, types
sys.modules["triton"] = None        # import triton fails, as where it is not installed
sys.modules["einstruct"] = None     # and the module needs no einstruct
import importlib.util, torch
spec = importlib.util.spec_from_file_location("layer", {str(out)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
layer = module.Btt(kernels="fused", strategy="structured")
y = layer(torch.randn(3, 1024))
try:
    module._use_kernels("fused", types.SimpleNamespace(is_cuda=True), ())
except RuntimeError as error:
    print("refused:", error)
print(module.triton, tuple(y.shape))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "refused: this layer runs fused Triton kernels on CUDA tensors: pip install triton" in result.stdout
    )
    assert "None (3, 1024)" in result.stdout


def test_the_planner_default():
    """The torch steps are the default everywhere until a GPU has timed the kernels; a chain
    gets its six launches, anything else none."""
    from einstruct.planner.fusion import GPU_TIMED, LAUNCHES, NotFused, plan_fusion

    def fusion(source):
        return plan_fusion(make_plan(einstruct.load(f"structure s = {source}")))

    assert GPU_TIMED is False
    btt = fusion("btt(d = 4096)")
    assert [k.name for k in btt.launches] == list(LAUNCHES) and btt.default == "torch"
    # two products forward, four backward (t saved): the layer's three pairs
    assert btt.flops_ratio == 1
    assert fusion("low_rank(d = 4096, rank = 16)").default == "torch"
    assert isinstance(fusion("block_diagonal(d = 1024, blocks = 4)"), NotFused)


@pytest.mark.parametrize(
    "source", ["btt(d = 256, rank = 2)", "low_rank(d = 96, rank = 8)", "kronecker(d = 144)"]
)
def test_the_byte_model_matches_the_bytes_the_kernels_request(source):
    """The planner's model of what each launch's programs request (re-reads included) against
    the bytes its loads move in the interpreter with its first GPU configuration; each launch
    within 2x of its operands read once; the default never fused where the launches move more
    than the planned torch path."""
    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kernel_traffic import structure_records

    from einstruct.planner.fusion import plan_fusion
    from einstruct.planner.tiles import requested_per_token

    tokens = 2048
    records = structure_records(source, tokens=tokens)
    fusion = plan_fusion(make_plan(einstruct.load(f"structure s = {source}"), batch=tokens))
    assert records
    for r in (r for r in records if r.role != "role"):
        k = fusion.launch(r.kernel)
        modelled = 2 * requested_per_token(k.launch, k.gpu[2][0], tokens)
        assert r.loaded_bytes_per_token == pytest.approx(float(modelled), rel=0.02), (r.kernel, r, modelled)
        assert r.loaded_ratio <= 2, r
    roles = [r for r in records if r.role == "role"]
    fused = sum(r.loaded_bytes_per_token + r.stored_bytes_per_token for r in roles)
    torch_path = sum(r.torch_bytes_per_token for r in roles)
    if fused > torch_path:
        assert fusion.default == "torch"


@pytest.mark.parametrize("frozen", ["x and A", "x and B", "the layer"])
def test_the_fused_backward_with_two_gradients_not_needed(frozen):
    """One gradient needed of three: the op returned one empty tensor for both others,
    which custom ops refuse (outputs may not alias)."""
    _, layer = _layer(CASES[1], kernels="fused")
    _, planned = _layer(CASES[1], kernels="torch")
    x = torch.randn(TOKENS, layer.in_features, dtype=torch.float64)
    for model in (layer, planned):
        if frozen == "the layer":
            model.requires_grad_(False)
        else:
            getattr(model, frozen[-1]).requires_grad_(False)
    xs = [x.clone().requires_grad_(frozen == "the layer") for _ in range(2)]
    with FlopCounterMode(display=False) as counter:
        layer(xs[0]).square().sum().backward()
    planned(xs[1]).square().sum().backward()
    assert _einstruct_ops(counter) == {"forward", "backward"}
    for name in layer.factor_axes:
        got, want = getattr(layer, name).grad, getattr(planned, name).grad
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])
    if frozen == "the layer":
        torch.testing.assert_close(xs[0].grad, xs[1].grad, **TOLERANCE[torch.float64])


def test_a_gradient_penalty_through_the_fused_layer_equals_the_dense_references():
    """create_graph=True: the backward differentiates the planned steps (the backward op has
    no derivative of its own); second-order gradients against autograd through the dense W."""
    _, layer = _layer(CASES[1], kernels="fused")
    x = torch.randn(TOKENS, layer.in_features, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    factors = {k: getattr(layer, k).detach().clone().requires_grad_() for k in layer.factor_axes}
    xr = x.detach().clone().requires_grad_()
    y = xr @ dense_torch(layer, factors).T + layer.bias.detach()
    (gr,) = torch.autograd.grad(y.square().sum(), xr, create_graph=True)
    gr.square().sum().backward()
    torch.testing.assert_close(gx, gr, **TOLERANCE[torch.float64])
    for name, ref in factors.items():
        torch.testing.assert_close(getattr(layer, name).grad, ref.grad, **TOLERANCE[torch.float64])


def test_float64_under_autocast_stays_float64_as_in_f_linear():
    _, layer = _layer(CASES[1], torch.float64, kernels="fused")
    x = torch.randn(TOKENS, layer.in_features, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.float16):
        y = layer(x)
        assert torch.nn.functional.linear(x, layer.to_dense()).dtype == torch.float64
    assert y.dtype == torch.float64
    expected = x @ layer.to_dense().T + layer.bias
    torch.testing.assert_close(y, expected, **TOLERANCE[torch.float64])


def test_the_flop_counter_counts_the_intermediates_gradient_without_the_inputs():
    """The input needs no gradient (a first layer): P's gradient still needs g Q^T."""
    for source in (CASES[1], CASES[7]):
        _, fused = _layer(source, kernels="fused")
        _, planned = _layer(source, kernels="torch")
        counts = []
        for layer in (fused, planned):
            x = torch.randn(TOKENS, layer.in_features, dtype=torch.float64)
            with FlopCounterMode(display=False) as counter:
                layer(x).sum().backward()
            counts.append(counter.get_total_flops())
        assert counts[0] == counts[1]  # torch's own formulas for the planned steps' matmuls


def test_a_refused_kernels_option_says_why():
    source = "structure s = btt(d_in = 40, d_out = 24, rank = 3)"  # at 2048 tokens: W first
    layer_class = compile_structure(einstruct.load(source), batch=2048, backend="triton")
    assert layer_class.kernel_choices == ("torch",)
    with pytest.raises(ValueError, match="multiplies the two factors first"):
        layer_class(kernels="fused")


def test_triton_imported_before_the_interpreter_was_asked_for_runs_the_planned_steps(tmp_path):
    """TRITON_INTERPRET=1 set after Triton was imported (as by transformers): Triton's own
    functions stay compiled, which interpreted kernels cannot call; CPU tensors must run
    the planned steps, not fail inside the kernel."""
    import subprocess

    from conftest import ROOT

    script = (
        "import os\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "import triton, torch\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "import einstruct\n"
        "spec = 'structure s = btt(d_in = 40, d_out = 24, rank = 3)'\n"
        "L = einstruct.compile(spec, backend='triton', batch=8)\n"
        "layer = L(dtype=torch.float64, strategy='structured', kernels='fused')\n"
        "x = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)\n"
        "y = layer(x)\n"
        "y.sum().backward()\n"
        "print(float((y - x @ layer.to_dense().T - layer.bias).abs().max()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip()) < 1e-10


def test_the_sampled_kernel_traffic_is_every_programs_count():
    """The traffic benchmark samples each grid axis; axis 0 cycles through the column
    blocks (the last one partial), so single interior programs were not representative
    (6-15% off on this Monarch): it samples whole cycles now. Every role loads at least
    what it must (P's gradient reads x and gt, not gy: it was reported at 0.53x)."""
    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kernel_traffic import structure_records

    source, tokens = "monarch(d = 600, blocks = 3)", 300
    sampled = structure_records(source, tokens=tokens)
    exact = structure_records(source, tokens=tokens, exact=True)
    assert [(r.kernel, r.loaded_bytes_per_token) for r in sampled] == [
        (r.kernel, r.loaded_bytes_per_token) for r in exact
    ]
    for records in (sampled, structure_records("low_rank(d = 256, rank = 16)", tokens=512)):
        roles = [r for r in records if r.role == "role"]
        assert len(roles) == 4 and all(r.loaded_ratio >= 1 for r in roles), roles


def test_timings_of_interpreted_kernels_are_keyed_apart_and_never_written(tmp_path):
    # Triton's interpreter on the CPU is thousands of times slower than the kernels on a
    # GPU: its timings hold for no real run, so they must not reach the user's cache
    from einstruct.nn.measured import CACHE_FILE, PathChooser

    _, fused = _layer(CASES[1], torch.float32, kernels="fused")
    _, steps = _layer(CASES[1], torch.float32, kernels="torch")
    x = torch.randn(BATCH, fused.in_features)
    for layer in (fused, steps):
        layer.strategy = "measured"
        layer.path_chooser = PathChooser(cache_dir=str(tmp_path), repeats=1)
        layer(x).sum().backward()
    assert "/fused-interpreted|" in fused.path_choice.key and "/torch|" in steps.path_choice.key
    written = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert list(written) == [steps.path_choice.key]  # the torch steps' timing only
