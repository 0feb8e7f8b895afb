"""BTT-MoE at scale on gloo processes: expert parallelism (einstruct.parallel.shard_experts)
on 2 and 4 ranks, and routed layers whose parameters are DTensors (replicated, sharded as
FSDP2 stores them, and under FSDP2 itself) on 2, each equal to one process on the whole
batch (docs/parallel.md, "Expert parallelism").

Every rank builds the same model, feeds its share of each global batch and steps SGD; the
losses and the (gathered) parameters must equal those of the same model trained here.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_routed import SPEC

import einstruct
from einstruct.errors import ParameterError

STEPS = 3
BATCH = 8
CLIP = 0.05


def _model(dispatch: str = "counts") -> torch.nn.Module:
    torch.manual_seed(0)
    routed = einstruct.compile(SPEC)(expert_dispatch=dispatch)  # 4 experts, top 2, d = 16
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), routed, torch.nn.Linear(16, 4))
    with torch.no_grad():
        routed.router.weight.normal_()  # a router that spreads the tokens
    return model


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(BATCH, 8, generator=gen), torch.randn(BATCH, 4, generator=gen)) for _ in range(STEPS)
    ]


def _train(model, rows: slice = slice(None), scale: float = 1.0, reduce=None) -> list[float]:
    """SGD on the rows of each batch; the loss is this rank's share of the global batch's
    (a sum over its rows / BATCH, times ``scale``); ``reduce(model)`` runs before each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for x, target in _batches():
        opt.zero_grad()
        loss = ((model(x[rows]) - target[rows]) ** 2).sum() / BATCH
        (loss * scale).backward()
        if reduce is not None:
            reduce(model)
        opt.step()
        losses.append(loss.detach())
    return losses


def _full(model) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.named_parameters()
    }


def _summed(losses: list[torch.Tensor]) -> list[float]:
    out = torch.stack(losses)
    dist.all_reduce(out)
    return out.tolist()


def _expert_parallel(rank: int, world: int, model, tmp: str) -> dict:
    model = copy.deepcopy(model)
    sharded = einstruct.parallel.shard_experts(model)
    layer = model[2]
    local = {name: tuple(layer.get_parameter(name).to_local().shape) for name in layer.factor_axes}

    def reduce(m):  # the replicated parameters: every rank's tokens (a sum, like the loss)
        for name, p in m.named_parameters():
            if name not in sharded:
                dist.all_reduce(p.grad)

    losses = _summed(_train(model, _rows(rank, world), reduce=reduce))
    result = {"sharded": sharded, "local": local, "losses": losses, "params": _full(model)}
    # clipping: torch's clip_grad_norm_ refuses DTensor and plain gradients together
    x, target = _batches()[0]
    rows = _rows(rank, world)
    model.zero_grad()
    (((model(x[rows]) - target[rows]) ** 2).sum() / BATCH).backward()
    reduce(model)
    result["clip_norm"] = einstruct.parallel.clip_grad_norm_(model, CLIP)
    result["clipped"] = {
        k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        for k, p in model.named_parameters()
    }
    # checkpoints: the state_dict holds the experts as DTensors; a distributed checkpoint
    # saved here loads into a freshly sharded model
    import torch.distributed.checkpoint as dcp

    state = model.state_dict()
    result["state_types"] = {k: type(v).__name__ for k, v in state.items()}
    dcp.save(state, checkpoint_id=f"{tmp}/dcp-{world}")
    fresh = copy.deepcopy(_model())
    einstruct.parallel.shard_experts(fresh)
    loaded = fresh.state_dict()
    dcp.load(loaded, checkpoint_id=f"{tmp}/dcp-{world}")
    fresh.load_state_dict(loaded)
    result["reloaded"] = _full(fresh)
    # and the whole model's state_dict (one process's) loads with the state-dict API
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )

    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    result["whole_state"] = {k: v.detach().clone() for k, v in whole.items()}
    other = _model()
    einstruct.parallel.shard_experts(other)
    set_model_state_dict(other, whole, options=StateDictOptions(full_state_dict=True))
    result["whole_loaded"] = _full(other)
    return result


def _rows(rank: int, world: int) -> slice:
    return slice(rank * BATCH // world, (rank + 1) * BATCH // world)


def _dtensors(rank: int, model) -> dict:
    """The routed layer alone with DTensor parameters: replicated (distribute_module),
    sharded on dim 0 (FSDP2's layout between steps), and the model under FSDP2 with the
    static dispatch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_module, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    out = {}
    replicated = copy.deepcopy(model)
    distribute_module(replicated[2], mesh)  # every parameter a replicated DTensor
    # the other layers: ordinary parameters, gradients summed over the ranks by hand
    out["replicated"] = (_summed(_train(replicated, _rows(rank, 2), reduce=_sum_plain)), _full(replicated))

    def shard0(name, module, mesh):
        for key, p in list(module.named_parameters(recurse=False)):
            module.register_parameter(key, torch.nn.Parameter(distribute_tensor(p.data, mesh, [Shard(0)])))

    sharded = copy.deepcopy(model)
    distribute_module(sharded[2], mesh, shard0)
    assert all(p.to_local().shape[0] == p.shape[0] // 2 for p in sharded[2].parameters())
    out["sharded"] = (_summed(_train(sharded, _rows(rank, 2), reduce=_sum_plain)), _full(sharded))
    fsdp = copy.deepcopy(model)
    fsdp[2].expert_dispatch = "static"
    for layer in fsdp:
        if list(layer.parameters()):
            fully_shard(layer)
    fully_shard(fsdp)
    out["fsdp"] = (_summed(_train(fsdp, _rows(rank, 2), scale=2.0)), _full(fsdp))  # FSDP2 averages
    return out


def _sum_plain(model) -> None:
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        if not isinstance(p, DTensor):
            dist.all_reduce(p.grad)


def _worker(rank: int, world: int, model, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    result = {"ep": _expert_parallel(rank, world, model, tmp)}
    if world == 2:  # DTensor parameters: on 2 ranks only (CI time)
        result["dtensor"] = _dtensors(rank, model)
        three = einstruct.compile(SPEC.replace("experts = 4", "experts = 3"))()
        try:
            einstruct.parallel.shard_experts(torch.nn.Sequential(three))
        except ParameterError as error:
            result["refused"] = (str(error), three.A.shape)
    if rank == 0:
        torch.save(result, f"{tmp}/out.pt")
    dist.barrier()  # both ranks done before either tears down (gloo may abort otherwise)
    dist.destroy_process_group()


def _check(losses, params, reference, expected_losses, what: str) -> None:
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected_losses), msg=what)
    expected = _full(reference)
    assert params.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-5, msg=f"{what} {name}")


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_training_equals_one_process(tmp_path, world):
    model = _model()
    mp.spawn(_worker, args=(world, model, str(tmp_path)), nprocs=world)
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    reference = copy.deepcopy(model)
    expected_losses = [loss.item() for loss in _train(reference)]
    ep = got["ep"]
    assert ep["sharded"] == ["2.A", "2.B"]
    layer = model[2]
    for name, shape in ep["local"].items():  # each rank holds E / world experts of each factor
        dim = layer.factor_axes[name].index(layer.routed_index)
        assert shape[dim] == layer.experts // world
    _check(ep["losses"], ep["params"], reference, expected_losses, f"{world} ranks")
    x, target = _batches()[0]  # the same gradient in one process, clipped by torch
    reference.zero_grad()
    (((reference(x) - target) ** 2).sum() / BATCH).backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
    assert norm > CLIP  # so the clipping scaled every gradient
    torch.testing.assert_close(ep["clip_norm"], norm, rtol=1e-5, atol=0)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ep["clipped"][name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(reference[2].A, model[2].A)  # training moved the experts
    assert ep["state_types"]["2.A"] == "DTensor" and ep["state_types"]["2.router.weight"] == "Tensor"
    for key in ("reloaded", "whole_loaded"):
        for name, value in ep["params"].items():
            torch.testing.assert_close(ep[key][name], value, rtol=0, atol=0, msg=f"{key} {name}")
    whole = ep["whole_state"]  # gathered: the one-process model's state_dict
    assert {k: v.shape for k, v in whole.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    if world == 2:
        for kind, (losses, params) in got["dtensor"].items():
            _check(losses, params, reference, expected_losses, kind)
        message, shape = got["refused"]  # refused before anything changed
        assert "0 has 3 experts, not divisible by 2 ranks" in message
        assert shape == einstruct.compile(SPEC.replace("experts = 4", "experts = 3"))().A.shape


def test_shard_experts_refuses_what_it_cannot_shard(tmp_path):
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ParameterError, match="needs torch.distributed"):
        einstruct.parallel.shard_experts(plain)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        with pytest.raises(ParameterError, match="has no routed layer"):
            einstruct.parallel.shard_experts(plain)
        three = einstruct.compile(SPEC.replace("experts = 4", "experts = 3"))()
        group = dist.new_group([0])
        assert einstruct.parallel.shard_experts(torch.nn.Sequential(three), group) == ["0.A", "0.B"]
        with pytest.raises(ParameterError, match="sharded already"):
            einstruct.parallel.shard_experts(torch.nn.Sequential(three))
        normalized = einstruct.compile(SPEC)(normalize=True)
        with pytest.raises(ParameterError, match="normalize=True"):
            einstruct.parallel.shard_experts(normalized)
    finally:
        dist.destroy_process_group()
