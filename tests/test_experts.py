"""Mixture-of-experts plumbing (einstruct.runtime.experts): the aux loss's gradient survives
every checkpointing mode, the balance loss over a process group is the global batch's, and
expert parallelism (all-to-all) equals every expert in one process; on 2 gloo ranks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.checkpoint import checkpoint

from einstruct.errors import ParameterError
from einstruct.runtime.experts import all_to_all_experts, attach_aux_loss, balance_loss

E, D, TOKENS = 4, 6, 10


def _routed(weight: torch.Tensor, router: torch.Tensor, x: torch.Tensor, attach: bool):
    """A tiny routed layer: top-1 of E experts; the balance loss attached or returned."""
    probs = torch.softmax(x @ router, dim=-1)
    chosen = probs.argmax(dim=-1)
    y = torch.einsum("nd,nde->ne", x, weight[chosen]) * probs.gather(1, chosen[:, None])
    aux = balance_loss(probs, chosen)
    return (attach_aux_loss(y, aux, weight=0.1), None) if attach else (y, aux)


@pytest.mark.parametrize("mode", ["none", "reentrant", "non-reentrant"])
def test_the_attached_aux_loss_gets_its_exact_gradient_under_checkpointing(mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, D, generator=gen, dtype=torch.float64)
    weight = torch.randn(E, D, D, generator=gen, dtype=torch.float64, requires_grad=True)
    router = torch.randn(D, E, generator=gen, dtype=torch.float64, requires_grad=True)
    y, aux = _routed(weight, router, x, attach=False)  # the reference: loss + 0.1 * aux, by hand
    expected = torch.autograd.grad((y**2).sum() + 0.1 * aux, (weight, router))
    if mode == "none":
        y, _ = _routed(weight, router, x, True)
    else:
        y, _ = checkpoint(_routed, weight, router, x, True, use_reentrant=mode == "reentrant")
    (y**2).sum().backward()  # reentrant checkpointing refuses autograd.grad
    torch.testing.assert_close((weight.grad, router.grad), expected, rtol=0, atol=1e-12)
    assert expected[1].abs().sum() > 0


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x, router, weight, expert = _data()
    rows = slice(rank * TOKENS // 2, (rank + 1) * TOKENS // 2)
    # balance: this rank's tokens, counts over the group; DDP would average the gradients
    probs = torch.softmax(x[rows] @ router, dim=-1)
    aux = balance_loss(probs, probs.argmax(dim=-1), group=dist.group.WORLD)
    (router_grad,) = torch.autograd.grad(aux, router)
    stats = torch.cat([aux.detach().reshape(1), router_grad.reshape(-1)])
    dist.all_reduce(stats)
    # expert parallelism: this rank holds experts 2 * rank, 2 * rank + 1
    mine = weight[2 * rank : 2 * rank + 2].detach().requires_grad_()
    tokens = x[rows].clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = all_to_all_experts(tokens, expert[rows], lambda t, i: torch.einsum("nd,nde->ne", t, mine[i]), 2)
        (y**2).sum().backward()
    results = [None, None]
    dist.all_gather_object(results, (y.detach(), tokens.grad, mine.grad))
    if rank == 0:
        said = [str(w.message) for w in caught]
        torch.save({"stats": stats / 2, "experts": results, "warnings": said}, out)
    dist.barrier()  # both ranks done before either tears down (gloo aborted a rank otherwise)
    dist.destroy_process_group()


def _data():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(TOKENS, D, generator=gen, dtype=torch.float64)
    router = torch.randn(D, E, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(E, D, D, generator=gen, dtype=torch.float64)
    expert = torch.tensor([0, 3, 1, 1, 2, 3, 3, 0, 2, 3])  # uneven: rank 1's experts get more rows
    return x, router, weight, expert


def test_balance_over_a_group_and_expert_parallelism_equal_one_process(tmp_path):
    out = tmp_path / "out.pt"
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2)
    got = torch.load(out)
    assert got["warnings"] == []  # torch's deprecated all_to_all_single warned here before
    x, router, weight, expert = _data()
    probs = torch.softmax(x @ router, dim=-1)
    aux = balance_loss(probs, probs.argmax(dim=-1))  # the whole batch in one process
    (grad,) = torch.autograd.grad(aux, router)
    torch.testing.assert_close(got["stats"], torch.cat([aux.detach().reshape(1), grad.reshape(-1)]))
    tokens, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    y = torch.einsum("nd,nde->ne", tokens, w[expert])  # every expert here
    (y**2).sum().backward()
    halves = [slice(0, TOKENS // 2), slice(TOKENS // 2, TOKENS)]
    for rank, (y_r, x_grad, w_grad) in enumerate(got["experts"]):
        torch.testing.assert_close(y_r, y[halves[rank]].detach())
        torch.testing.assert_close(x_grad, tokens.grad[halves[rank]])
        torch.testing.assert_close(w_grad, w.grad[2 * rank : 2 * rank + 2])


PROBS = torch.softmax(torch.linspace(-1, 1, 24).reshape(6, 4), dim=-1)


@pytest.mark.parametrize(
    "args, problem",
    [
        ((PROBS, torch.tensor([[0, 1]] * 5 + [[0, 5]])), "outside 0 .. 3"),  # counted as a 5th expert before
        ((PROBS, torch.tensor([[-1, 1]] * 6)), "outside 0 .. 3"),
        ((PROBS, torch.tensor([[0.0, 1.0]] * 6)), "integer tensor"),
        ((PROBS, torch.tensor([0] * 5)), "5 tokens but probs has 6"),
        ((PROBS, torch.tensor([0] * 6), 5), "num_experts is 5"),
        ((PROBS[0], torch.tensor([0])), "2 axes"),
        (([[0.5, 0.5]], torch.tensor([0])), "must be a tensor"),
    ],
)
def test_balance_loss_refuses_inconsistent_arguments(args, problem):
    with pytest.raises(ParameterError, match=problem):
        balance_loss(*args)


@pytest.mark.parametrize(
    "args, problem",
    [
        ((torch.randn(3, 4), torch.tensor([0, 1]), 2), "2 entries but tokens has 3 rows"),  # 2 rows came back
        ((torch.randn(2, 4), torch.tensor([0, 1]), 0), "positive integer"),  # ZeroDivisionError before
        ((torch.randn(2, 4), torch.tensor([0.0, 1.0]), 2), "integer tensor"),
        ((torch.randn(2, 4), torch.tensor([0, 1]), 1.5), "positive integer"),
    ],
)
def test_all_to_all_experts_refuses_inconsistent_arguments(args, problem):
    tokens, expert, per_rank = args
    with pytest.raises(ParameterError, match=problem):  # before any collective
        all_to_all_experts(tokens, expert, lambda rows, local: rows, per_rank)


def test_balance_loss_of_a_rank_without_tokens_is_zero_not_an_error():
    """A rank whose share of the batch is empty raised a reshape error (and skipped the
    all-reduce the other ranks wait in); its contribution is 0."""
    probs = torch.softmax(torch.randn(0, 4), dim=-1).requires_grad_()
    loss = balance_loss(probs, torch.zeros(0, 2, dtype=torch.int64))
    assert loss.item() == 0.0
    loss.backward()
    assert probs.grad.shape == (0, 4)
