"""Tensor parallelism (einstruct.parallel) on 2 and 4 gloo processes equals one process.

A model of two BTT layers (column-, then row-parallel) and, on Hugging Face,
GPT-2's MLPs converted to BTT, trains a few steps with every rank seeing the
whole batch; losses and parameters (gathered) must equal those of the same
model trained in this process.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import einstruct
from einstruct.errors import ParameterError
from einstruct.runtime.parallel import shard_axis, tensor_parallel_plan

STEPS = 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    btt = einstruct.compile("structure b = btt(rank = 2, d_in = 16, d_out = 32)", strategy="structured")
    back = einstruct.compile("structure b = btt(rank = 3, d_in = 32, d_out = 16)")
    return torch.nn.Sequential(torch.nn.Linear(8, 16), btt(), torch.nn.Tanh(), back(), torch.nn.Linear(16, 4))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 8, generator=gen), torch.randn(6, 4, generator=gen)) for _ in range(STEPS)]


def _train(model: torch.nn.Module) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for x, target in _batches():
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _full(params) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in params}


def _gpt2() -> torch.nn.Module:
    """GPT-2 from a small config, its MLPs converted to BTT (4 x 4 -> 8 x 8 axes)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=31, n_positions=16, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(config)
    einstruct.replace_linear(model, "btt", select="*.mlp.*", rank=2, init="random")
    return model


def _train_lm(model: torch.nn.Module) -> list[float]:
    ids = torch.arange(20).reshape(2, 10) * 7 % 31
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _worker(rank: int, world: int, model: torch.nn.Module, store: str, out: str, lm: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    model = copy.deepcopy(model)
    plan = {"1": einstruct.parallel.ColwiseStructured(), "3": einstruct.parallel.RowwiseStructured()}
    parallelize_module(model, mesh, plan)
    result = {"local": tuple(model[1].A.to_local().shape), "losses": _train(model)}
    result["params"] = {k: v.clone() for k, v in _full(model.named_parameters()).items()}
    # einstruct's AdamW with foreach (CUDA's default): one kind of tensor per group, or its step fails
    opt = einstruct.optimizer(model, lr=1e-3, weight_decay=0.1, foreach=True)
    result["group_kinds"] = [sorted({type(p).__name__ for p in g["params"]}) for g in opt.param_groups]
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    refusals = []  # the unsharded layer's input checks and from_dense's refusal, by name
    for call in (
        lambda: model[1](torch.randn(2, 16, dtype=torch.float64)),
        lambda: model[3](torch.randn(2, 32)),  # the whole input to a row style that expects a part
        lambda: model[1].from_dense(torch.randn(32, 16)),
    ):
        try:
            call()
        except (TypeError, ValueError) as exc:
            refusals.append(str(exc))
    result["refusals"] = refusals
    if lm:
        gpt2 = _gpt2()
        plan = {"transformer.h.*.mlp.c_fc": "colwise", "transformer.h.*.mlp.c_proj": "rowwise"}
        parallelize_module(gpt2, mesh, einstruct.parallel.tensor_parallel_plan(gpt2, plan))
        result["lm_losses"] = _train_lm(gpt2)
        result["lm_params"] = _full(gpt2.named_parameters())
    if rank == 0:
        torch.save(result, out)
    dist.barrier()  # both ranks done before either tears down (gloo may abort otherwise)
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_column_and_row_parallel_btt_train_like_one_process(tmp_path, world):
    model = _model()
    out = tmp_path / "out.pt"
    lm = world == 2  # GPT-2 with its MLPs tensor-parallel: on 2 ranks only (CI time)
    mp.spawn(_worker, args=(world, model, str(tmp_path / "store"), str(out), lm), nprocs=world)
    got = torch.load(out)
    assert ["DTensor"] in got["group_kinds"] and ["Parameter"] in got["group_kinds"]
    assert all(len(kinds) == 1 for kinds in got["group_kinds"]), got["group_kinds"]
    dtype, whole, project = got["refusals"]  # torch's own errors before: no name, no hint
    assert "holds its factors in torch.float32, got an input in torch.float64" in dtype
    assert "input_sharded=False" in whole
    assert "project W before parallelize_module" in project
    a_axes = model[1].factor_axes["A"]
    sharded = a_axes.index(model[1].output_axes[0])
    assert got["local"][sharded] == model[1].A.shape[sharded] // world  # each rank holds a slice
    reference = copy.deepcopy(model)
    _check(got["losses"], got["params"], _train(reference), reference)
    assert not torch.equal(reference[1].A, model[1].A)  # training moved the factors
    if lm:
        reference = _gpt2()
        _check(got["lm_losses"], got["lm_params"], _train_lm(reference), reference)


def _check(losses, params, expected_losses, reference) -> None:
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected_losses))
    expected = _full(reference.named_parameters())
    assert params.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(params[name], value, msg=name)


def test_axes_that_do_not_divide_or_pad_are_refused():
    odd = einstruct.compile("structure b = btt(rank = 2, d_in = 16, d_out = 36)")()  # axes 6 x 6
    assert einstruct.parallel.shard_axis(odd, "column", 2) == odd.output_axes[0]
    with pytest.raises(ParameterError, match="not divisible by 4 ranks"):
        einstruct.parallel.shard_axis(odd, "column", 4)
    padded = einstruct.compile("structure b = btt(rank = 2, d_in = 16, d_out = 37)")()
    with pytest.raises(ParameterError, match="pads 16 -> 37"):
        einstruct.parallel.shard_axis(padded, "row", 2)


@pytest.mark.parametrize(
    "spec", ["structure b = btt(rank = 2, d_in = 16, d_out = 32)", "structure l = low_rank(rank = 4, d = 16)"]
)
def test_analyze_reports_the_runtime_axes_and_communication(spec):
    from einstruct.analysis.sharding import shardings

    structure = einstruct.load(spec)
    layer = einstruct.compile(spec)()
    column, row = shardings(structure)
    assert column.axis == einstruct.parallel.shard_axis(layer, "column", 2)
    assert row.axis == einstruct.parallel.shard_axis(layer, "row", 2)
    # column: nothing forward, the input's gradient (d_in per token) backward; row: the output forward
    assert (column.forward, column.backward) == (0, layer.in_features)
    assert (row.forward, row.backward) == (layer.out_features, 0)
    for s in (column, row):  # replicated factors: those without the axis, by the layer's own axes
        whole = [n for n, axes in layer.factor_axes.items() if s.axis not in axes]
        assert list(s.replicated) == whole
        assert s.replicated_params == sum(layer.get_parameter(n).numel() for n in whole)
    if structure.name == "l":  # y[o] = x[i] U[i, r] V[r, o]: column shards V, U (16 x 4) stays whole
        assert column.replicated == ("U",) and column.replicated_params == 64


def test_the_plan_follows_the_hugging_face_config():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97)  # fmt: skip
    model = LlamaForCausalLM(config)
    einstruct.replace_linear(model, "btt", rank=2, select="*.mlp.*")
    plan = einstruct.parallel.tensor_parallel_plan(model)
    kinds = {name.rsplit(".", 1)[1]: type(style).__name__ for name, style in plan.items()}
    assert kinds == {  # the config's plan: structured MLPs get einstruct's styles, dense attention torch's
        "q_proj": "ColwiseParallel", "k_proj": "ColwiseParallel", "v_proj": "ColwiseParallel",
        "o_proj": "RowwiseParallel", "gate_proj": "ColwiseStructured", "up_proj": "ColwiseStructured",
        "down_proj": "RowwiseStructured",
    }  # fmt: skip
    assert all(name.startswith("model.layers.0.") for name in plan)
    with pytest.raises(ParameterError, match="no tensor-parallel plan"):
        einstruct.parallel.tensor_parallel_plan(torch.nn.Sequential(torch.nn.Linear(4, 4)))


@pytest.mark.parametrize(
    "kind, ways, problem",
    [
        ("diagonal", 2, "kind must be 'column' or 'row'"),
        ("Column", 2, "kind must be"),
        ("column", 0, "ways must be"),
    ],
)
def test_shard_axis_checks_its_arguments(kind, ways, problem):
    """'diagonal' gave the row axis, ways=0 a ZeroDivisionError."""
    layer = einstruct.compile("structure b = btt(rank = 2, d = 16)")()
    with pytest.raises(ParameterError, match=problem):
        shard_axis(layer, kind, ways)
    for bad in (None, True, -2):
        with pytest.raises(ParameterError, match="ways must be a positive integer"):
            shard_axis(layer, "column", bad)


def test_a_plan_with_a_kind_einstruct_does_not_shard_is_refused():
    """shard_axis's words in a plan were dropped: the model stayed whole, silently."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
    einstruct.replace_linear(model, "low_rank", rank=4)
    with pytest.raises(ParameterError, match="'column' is not a kind einstruct shards"):
        tensor_parallel_plan(model, {"0": "column", "1": "row"})
    with pytest.raises(ParameterError, match="both match '0'"):
        tensor_parallel_plan(model, {"0": "colwise", "0*": "rowwise"})
    with pytest.raises(ParameterError, match="plan must be a dict"):
        tensor_parallel_plan(model, [("0", "colwise")])
    # a config's own plan passed as is: transformers' other kinds are left whole
    assert set(tensor_parallel_plan(model, {"0": "colwise", "1": "embedding_rowwise"})) == {"0"}
    assert set(tensor_parallel_plan(model, {"0": "colwise", "1": "rowwise"})) == {"0", "1"}


def test_a_block_diagonal_layer_is_refused_by_both_styles_and_the_analysis():
    """The column style accepted it and failed in torch's einsum at the first forward
    (the input's block axis was sliced in the factors only)."""
    layer = einstruct.compile("structure k = block_diagonal(blocks = 4, d = 16)")()
    for kind in ("column", "row"):
        with pytest.raises(ParameterError, match="neither style shards this layer"):
            shard_axis(layer, kind, 2)
    analysis = einstruct.analyze("structure k = block_diagonal(blocks = 4, d = 16)")
    refusals = [s["refused"] for s in analysis.to_dict()["sharding"]]
    assert all(r and "neither style" in r for r in refusals), refusals


def test_clip_grad_norm_of_plain_gradients_is_torchs():
    from einstruct.runtime.parallel import clip_grad_norm_

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    x = torch.randn(5, 8)
    for m in (model, twin):
        m(x).square().sum().backward()
    norm = clip_grad_norm_(model, 0.1)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    for bad in (0, -1.0, "1", True):
        with pytest.raises(ParameterError, match="max_norm must be a positive number"):
            clip_grad_norm_(model, bad)
