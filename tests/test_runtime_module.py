"""Generated files on the layer runtime (einstruct/nn/): one source, thin files, one artefact.

- the runtime text a standalone file carries is byte-identical to einstruct/nn/'s modules,
  and the file imports with einstruct unavailable (only torch);
- the import-mode file is thin;
- the header, extra_repr, the step comments, einstruct.summary and torch's FLOP counter
  state the same FLOPs per token, at the batch the layer was compiled for;
- the hand-kept name lists are read from the runtime (a factor cannot take a runtime name).
"""

from __future__ import annotations

import re
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import structure_sources
from torch.utils.flop_counter import FlopCounterMode

import einstruct
from einstruct.backends.compilation import compilation, render_module
from einstruct.backends.runtime_source import RUNTIME_DIR, layer_attributes, runtime_globals
from einstruct.errors import CompileError
from einstruct.runtime import compile_structure

MARK = "# ---- einstruct runtime: einstruct/nn/"


def _runtime_blocks(text: str) -> dict[str, str]:
    """The runtime modules a standalone file carries, by name, as the file has them."""
    blocks = {}
    parts = text.split(MARK)[1:]
    for part in parts:
        name = part.split(".py", 1)[0]
        body = part.split("\n", 1)[1]
        end = body.find("\n\n\n# ---- end of the einstruct runtime")
        body = body[:end] if end >= 0 else body
        assert body.endswith("\n\n\n") or end >= 0, "two blank lines between runtime modules"
        blocks[name] = body[:-3] if end < 0 else body
    return blocks


@pytest.mark.parametrize(
    ("spec", "backend", "expected"),
    [
        ("examples/btt.ein", "torch", ["env", "layer"]),
        ("examples/btt_moe.ein", "torch", ["env", "layer", "routed"]),
        ("examples/btt.ein", "triton", ["env", "layer", "kernels", "fused"]),
    ],
)
def test_a_standalone_file_carries_the_runtime_byte_for_byte(spec, backend, expected):
    text = render_module(compilation(einstruct.load(spec)), backend)
    blocks = _runtime_blocks(text)
    assert list(blocks) == expected
    for name, block in blocks.items():
        source = (RUNTIME_DIR / f"{name}.py").read_text(encoding="utf-8")
        assert block + "\n" == source, name


def test_the_standalone_file_imports_without_einstruct(tmp_path):
    """Only torch: einstruct made unimportable in the child process."""
    for name, spec in (("btt_layer", "examples/btt.ein"), ("moe_layer", "examples/btt_moe.ein")):
        (tmp_path / f"{name}.py").write_text(render_module(compilation(einstruct.load(spec))))
    script = (
        "import sys; sys.modules['einstruct'] = None\n"
        "import torch, btt_layer, moe_layer\n"
        "layer = btt_layer.Btt()\n"
        "x = torch.randn(3, 1024)\n"
        "assert torch.allclose(layer(x), x @ layer.to_dense().T + layer.bias, atol=1e-4)\n"
        "moe = moe_layer.BttMoe(); moe(x).sum().backward()\n"
        "print('ok', btt_layer.Btt.__mro__[1].__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "StructuredLinear"]


def test_the_import_mode_file_is_thin_and_shares_the_runtime_class():
    text = render_module(compilation(einstruct.load("examples/btt.ein")), runtime="import")
    assert len(text.splitlines()) < 150
    assert MARK not in text and "from einstruct.nn.layer import" in text
    layer = einstruct.compile("examples/btt.ein")()
    from einstruct.nn.layer import StructuredLinear

    assert isinstance(layer, StructuredLinear)


def _stated_flops(text: str) -> tuple[Fraction, int]:
    header = re.search(r"^# params \d+, FLOPs/token (\S+) at batch (\d+)", text, re.M)
    assert header, text[:400]
    return Fraction(header.group(1)), int(header.group(2))


def _step_flops(text: str) -> Fraction:
    steps = re.findall(r"# step \d+: .*\((?:bmm|mm), (\S+) FLOPs/token\)", text)
    return sum((Fraction(s) for s in steps), Fraction(0))


@given(source=structure_sources(), batch=st.sampled_from([1, 3, 64, 2048]))
def test_header_steps_summary_repr_and_flop_counter_agree(source, batch):
    structure = einstruct.load(source)
    text = render_module(compilation(structure, batch, "structured"), runtime="import")
    flops, planned = _stated_flops(text)
    assert planned == batch
    assert _step_flops(text) == flops
    layer = compile_structure(structure, batch=batch, strategy="structured")().double()
    assert Fraction(layer.layer_metrics["flops"]) == flops
    assert f"flops={layer.layer_metrics['flops']}" in repr(layer)
    report = einstruct.summary(torch.nn.Sequential(layer))
    assert report.layers[0].flops_after == pytest.approx(float(flops), rel=1e-15)
    x = torch.randn(batch, layer.in_features, dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == flops * batch


def test_btt_rank_4_states_its_planned_order_not_batch_one():
    """The order at 2048 tokens contracts differently than at batch 1: the header follows the plan."""
    structure = einstruct.load("structure b = btt(d = 16, rank = 4)")
    at_2048 = compilation(structure, 2048, "structured")
    at_1 = einstruct.analyze("structure b = btt(d = 16, rank = 4)")
    assert at_2048.analysis.counts.flops == Fraction(at_2048.plan.flops, 2048)
    layer = compile_structure(structure, strategy="structured")()
    x = torch.randn(2048, 16)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == at_2048.analysis.counts.flops * 2048
    # the batch-1 analysis is a different number when the orders differ
    if at_1.counts.order.steps != at_2048.analysis.counts.order.steps:
        assert at_1.counts.flops != at_2048.analysis.counts.flops


def test_name_rules_are_read_from_the_runtime():
    attributes = layer_attributes()
    assert {"from_dense", "param_groups", "weight", "router", "kernels", "planned_function"} <= attributes
    names = runtime_globals()
    assert {"StructuredLinear", "RoutedStructuredLinear", "torch", "nn"} <= names
    with pytest.raises(CompileError, match="StructuredLinear"):
        einstruct.compile("examples/btt.ein", class_name="StructuredLinear")
    spec = "structure s:\n    y[o] = x[i] * planned_function[i, o]\n    where i = 4, o = 4\n"
    with pytest.raises(CompileError, match="attribute of the generated layer"):
        einstruct.compile(spec)


def test_layer_param_groups_decay_like_the_model_wide_groups():
    """A 1-D factor gets no weight decay from the layer's own groups, as from einstruct.param_groups."""
    spec = "structure s:\n    y[o] = x[o] * D[o]\n    where o = 8\n"
    layer = einstruct.compile(spec)()
    own = {id(p): g["weight_decay"] for g in layer.param_groups(1e-3, 0.1) for p in g["params"]}
    wide = {id(p): g["weight_decay"] for g in einstruct.param_groups(layer, 1e-3, 0.1) for p in g["params"]}
    assert own == wide
    assert own[id(layer.D)] == 0.0


def test_routed_layers_document_what_they_are():
    from einstruct.nn.routed import RoutedStructuredLinear

    cls = einstruct.compile("examples/btt_moe.ein")
    assert issubclass(cls, RoutedStructuredLinear)
    assert "W^T" not in (cls.__doc__ or "") and "top-" in cls.__doc__
    layer = cls()
    with pytest.raises(ValueError, match="structured only"):
        cls(strategy="dense")
    with pytest.raises(RuntimeError, match="no single dense matrix"):
        layer.from_dense(torch.zeros(layer.out_features, layer.in_features))
    assert not hasattr(layer, "weight")


def test_constructor_flags_must_be_booleans():
    cls = einstruct.compile("examples/btt.ein")
    with pytest.raises(TypeError, match="normalize must be True or False"):
        cls(normalize="false")
    with pytest.raises(TypeError, match="bias must be True or False"):
        cls(bias=1)


def test_weight_is_the_dense_matrix_read_only():
    layer = einstruct.compile("structure b = btt(d = 16, rank = 2)")()
    assert torch.equal(layer.weight, layer.to_dense().detach())
    assert not layer.weight.requires_grad


def test_the_aux_loss_joined_to_the_graph_is_exact_under_reentrant_checkpointing():
    """aux_weight joins weight * aux_loss to the output's graph: the router's gradient under
    reentrant activation checkpointing (forward first run without a graph) equals adding
    the loss by hand without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    spec = "examples/btt_moe.ein"
    torch.manual_seed(0)
    reference = einstruct.compile(spec, d=64)().double()
    torch.nn.init.normal_(reference.router.weight, 0.0, 0.5)
    joined = einstruct.compile(spec, d=64)(aux_weight=0.3).double()
    joined.load_state_dict(reference.state_dict())
    x = torch.randn(32, 64, dtype=torch.float64)

    (reference(x).pow(2).sum() + 0.3 * reference.aux_loss).backward()
    y = checkpoint(joined, x.clone().requires_grad_(), use_reentrant=True)
    y.pow(2).sum().backward()
    assert torch.allclose(joined.router.weight.grad, reference.router.weight.grad, rtol=1e-10, atol=1e-12)
    assert joined.aux_loss is not None and not joined.aux_loss.requires_grad
    assert torch.allclose(joined.aux_loss, reference.aux_loss.detach())


def test_the_measured_strategy_times_both_paths_once_and_computes_the_same_map(monkeypatch, tmp_path):
    import einstruct.nn.measured as measured

    chooser = measured.PathChooser(cache_dir=str(tmp_path), repeats=1, warmup=0)
    monkeypatch.setattr(measured, "default_chooser", lambda: chooser)
    cls = einstruct.compile("structure k = kronecker(d = 64)")
    layer = cls(strategy="measured", dtype=torch.float64)
    reference = cls(strategy="structured", dtype=torch.float64)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(32, 64, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x))
    choice = layer.path_choice
    assert choice.winner in ("structured", "dense") and set(choice.timings_ms) == {"structured", "dense"}
    assert chooser.measurements == 1
    layer(x)  # the same key: remembered, not timed again
    assert chooser.measurements == 1
    fresh = measured.PathChooser(cache_dir=str(tmp_path))
    monkeypatch.setattr(measured, "default_chooser", lambda: fresh)
    cls(strategy="measured", dtype=torch.float64)(x)  # a new process would read the file
    assert fresh.measurements == 0


def test_the_runtime_launches_with_the_planners_tile_constants():
    """The fused-kernel runtime's register cap and token split are the ones the planner sized
    the tiles for (read from the runtime's source: it imports triton)."""
    import ast

    from einstruct.planner import tiles

    tree = ast.parse((RUNTIME_DIR / "kernels.py").read_text(encoding="utf-8"))
    values = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("_MAX_REGISTERS", "_SPLIT_ROWS", "_MAX_SPLIT", "_PROGRAMS")
    }
    assert values == {
        "_MAX_REGISTERS": tiles.MAX_REGISTERS,
        "_SPLIT_ROWS": tiles.SPLIT_ROWS,
        "_MAX_SPLIT": tiles.MAX_SPLIT,
        "_PROGRAMS": tiles.PROGRAMS,
    }


def test_the_constructor_checks_types_and_sizes_before_allocating(monkeypatch):
    """dtype and device are checked; a layer whose padded widths exceed EINSTRUCT_MAX_PARAMS is
    refused though its parameters are few (it would allocate that much per token)."""
    cls = einstruct.compile("structure b = btt(d = 16, rank = 2)")
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        cls(dtype=torch.int64)
    with pytest.raises(TypeError, match="is not a torch device"):
        cls(device="nowhere")
    with pytest.raises(TypeError, match="got an input in torch.int64"):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not excuse integers
            cls()(torch.ones(2, 16, dtype=torch.long))
    wide = einstruct.compile("structure w:\n    y[i] = x[i, j] * A[j]\n    where i = 2000, j = 3\n")
    assert wide.param_count == 3
    monkeypatch.setenv("EINSTRUCT_MAX_PARAMS", "5000")
    with pytest.raises(ValueError, match="6,000 entries per token"):
        wide()
    with pytest.raises(ValueError, match="meta device"):
        cls().from_dense(torch.empty(16, 16, device="meta"))


def test_routed_options_round_trip_through_a_manifest(tmp_path):
    """Every constructor option a routed layer declares is written, read back and applied;
    a wrong aux_weight is refused naming its field."""
    import json

    layer = einstruct.compile("examples/btt_moe.ein", d=64)(aux_weight=0.25, expert_dispatch="static")
    model = torch.nn.Sequential(layer)
    path = tmp_path / "m.json"
    einstruct.save_manifest(model, path)
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64))
    einstruct.restore(fresh, path, model.state_dict())
    assert fresh[0].aux_weight == 0.25 and fresh[0].sparse_experts is True
    assert fresh[0].expert_dispatch == "static"
    data = json.loads(path.read_text())
    data["layers"][0]["options"]["aux_weight"] = "0.1"
    with pytest.raises(einstruct.EinstructError, match=r"layers\[0\]\.options\.aux_weight"):
        einstruct.restore(torch.nn.Sequential(torch.nn.Linear(64, 64)), data, model.state_dict())
    data["layers"][0]["options"].update(aux_weight=0.1, expert_dispatch="never")
    with pytest.raises(einstruct.EinstructError, match=r"layers\[0\]\.options\.expert_dispatch"):
        einstruct.restore(torch.nn.Sequential(torch.nn.Linear(64, 64)), data, model.state_dict())


def test_the_manifest_schema_accepts_every_option_the_runtime_declares():
    from einstruct.nn.routed import RoutedStructuredLinear
    from einstruct.runtime.manifest_schema import BOOL_OPTIONS, CHOICE_OPTIONS, NUMBER_OPTIONS

    declared = set(RoutedStructuredLinear.constructor_options)  # the plain layer's and the routed ones
    assert declared <= {*BOOL_OPTIONS, *NUMBER_OPTIONS, *CHOICE_OPTIONS}
    assert CHOICE_OPTIONS["expert_dispatch"] == RoutedStructuredLinear.expert_dispatches


def test_the_planner_splits_factor_gradients_as_the_runtime_does():
    """The planner's model of a factor gradient's shares is the runtime's rule."""
    from einstruct.nn.kernels import _shares
    from einstruct.planner.tiles import shares

    for rows in (1, 255, 256, 513, 4096, 16384 * 64, 10**6 + 7):
        for entries in (1, 4096, 64 * 64 * 64, 64 * 64 * 256 * 4):
            assert _shares(rows, entries) == shares(rows, entries), (rows, entries)
            count, per_share = shares(rows, entries)
            assert per_share % 256 == 0 and count * per_share >= rows > (count - 1) * per_share


def test_the_planner_plans_the_launches_the_runtime_runs():
    """fusion.LAUNCHES (the planner cannot import the runtime: it imports torch) names the
    runtime's launches with the same batch, row, summed and made classes."""
    from einstruct.nn.kernels import FACTOR_GRADS, STEPS
    from einstruct.planner.fusion import LAUNCHES

    runtime = {
        **{name: ("step", *entry[3:]) for name, entry in STEPS.items()},
        **{name: ("factor", *entry[3:]) for name, entry in FACTOR_GRADS.items()},
    }
    assert LAUNCHES == runtime
