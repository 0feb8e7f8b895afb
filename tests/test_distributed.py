"""Distributed training with generated layers: DDP and FSDP2 on 2 gloo processes equal one process.

A small model (a plain BTT, a routed BTT-MoE, nn.Linear) trains a few steps on
a global batch split between two ranks; its parameters must equal those of
the same model trained in this process on the whole batch. The model reaches
the workers pickled by ``torch.multiprocessing.spawn``, which also checks that
in-memory classes survive spawning.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_routed import SPEC

import einstruct

STEPS = 3
BATCH = 8


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    plain = einstruct.compile("structure b = btt(rank = 2, d = 16)", strategy="structured")
    model = torch.nn.Sequential(plain(), torch.nn.Tanh(), einstruct.compile(SPEC)(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        model[2].router.weight.normal_()
    return model


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(BATCH, 16, generator=gen), torch.randn(BATCH, 4, generator=gen)) for _ in range(STEPS)
    ]


def _train(model, batches, rows: slice, world: int) -> None:
    """SGD on the rows of each batch; the loss is the global batch's mean, times the
    world size (DDP and FSDP average gradients over the ranks)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, target in batches:
        opt.zero_grad()
        y = model(x[rows])
        loss = ((y - target[rows]) ** 2).sum() / BATCH * world + 0.01 * _aux(model)
        loss.backward()
        opt.step()


def _aux(model) -> torch.Tensor:
    return next(m.aux_loss for m in model.modules() if hasattr(m, "aux_loss"))


def _worker(rank: int, model: torch.nn.Module, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    # the aux loss is a mean over this rank's tokens: both ranks' means, averaged,
    # are not the global one, so the reference below trains each half's aux loss too
    ddp_model = copy.deepcopy(model)  # spawn shares tensors between the workers; train a copy
    _train(torch.nn.parallel.DistributedDataParallel(ddp_model), _batches(), rows, 2)
    from torch.distributed.fsdp import fully_shard

    fsdp_model = copy.deepcopy(model)
    for layer in fsdp_model:
        if list(layer.parameters()):
            fully_shard(layer)
    fully_shard(fsdp_model)
    _train(fsdp_model, _batches(), rows, 2)
    fsdp_params = {k: v.full_tensor() for k, v in fsdp_model.named_parameters()}
    if rank == 0:
        torch.save({"ddp": dict(ddp_model.named_parameters()), "fsdp": fsdp_params}, out)
    dist.barrier()  # both ranks done before either tears down (gloo may abort otherwise)
    dist.destroy_process_group()


def _reference(model: torch.nn.Module) -> dict:
    """One process, the whole batch; the aux loss as the ranks see it (the mean of each half's)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, target in _batches():
        opt.zero_grad()
        aux = 0.0
        for half in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH)):
            model(x[half])
            aux = aux + _aux(model) / 2
        loss = ((model(x) - target) ** 2).sum() / BATCH + 0.01 * aux
        loss.backward()
        opt.step()
    return dict(model.named_parameters())


def test_ddp_and_fsdp2_train_like_one_process(tmp_path):
    model = _model()
    out = tmp_path / "params.pt"
    mp.spawn(_worker, args=(model, str(tmp_path / "store"), str(out)), nprocs=2)
    expected = _reference(copy.deepcopy(model))
    trained = torch.load(out)
    for kind in ("ddp", "fsdp"):
        assert trained[kind].keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(trained[kind][name], value.detach(), msg=f"{kind} {name}")
    assert not torch.equal(expected["0.A"], model[0].A)  # training moved the parameters


def _aux_and_grad(layer, x) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's aux loss on x and its gradient for the router."""
    layer(x)
    (grad,) = torch.autograd.grad(layer.aux_loss, layer.router.weight)
    return layer.aux_loss.detach(), grad


def _balance_worker(
    rank: int, layer: torch.nn.Module, x: torch.Tensor, split: int, store: str, out: str
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    layer.balance_group = dist.group.WORLD
    aux, grad = _aux_and_grad(layer, x[:split] if rank == 0 else x[split:])
    dist.all_reduce(grad)  # as DDP does, then halved
    if rank == 0:
        torch.save({"aux": aux, "grad": grad / 2}, out)
    layer.balance_group = layer.aux_loss = layer._aux = None  # nothing holds the group at teardown
    dist.barrier()  # both ranks done before either tears down (gloo may abort otherwise)
    dist.destroy_process_group()


@pytest.mark.parametrize("split", [8, 3, 16], ids=["even", "uneven", "a rank without tokens"])
def test_the_balance_term_over_a_process_group_is_the_global_batchs(tmp_path, split):
    """With balance_group, each rank's aux loss is the one the whole batch gives in one
    process, and the ranks' router gradients averaged (as DDP does) are its gradient,
    however many tokens each rank holds (the ranks' means were averaged unweighted, and
    a rank without tokens made every rank's loss NaN). Without it, a rank balances its
    own tokens only."""
    torch.manual_seed(0)
    layer = einstruct.compile(SPEC)().double()
    with torch.no_grad():
        layer.router.weight.normal_()
    x = torch.randn(16, layer.in_features, dtype=torch.float64)
    out = tmp_path / "balance.pt"
    mp.spawn(_balance_worker, args=(layer, x, split, str(tmp_path / "store"), str(out)), nprocs=2)
    expected = _aux_and_grad(copy.deepcopy(layer), x)
    got = torch.load(out)
    torch.testing.assert_close(got["aux"], expected[0])
    torch.testing.assert_close(got["grad"], expected[1])
    assert not torch.allclose(
        _aux_and_grad(copy.deepcopy(layer), x[:8])[0], expected[0]
    )  # one rank alone differs
