"""A compiled layer with strategy="measured": what it asks its chooser, and how often.

A recording chooser stands in for einstruct.nn.measured's (it returns a fixed
winner and keeps every question), so nothing here depends on timings.
"""

import pytest
import torch

import einstruct
from einstruct.nn import measured
from einstruct.nn.measured import PathChoice, PathChooser

SPEC = "structure k = kronecker(d = 64)"


class RecordingChooser:
    """Answers every question with ``winner`` and records the question."""

    def __init__(self, winner: str) -> None:
        self.winner, self.asked = winner, []

    def choose(self, structure, candidates, inputs, wrt=(), prior=None, fallback=None):
        rows = inputs[0].shape[0]
        self.asked.append({"structure": structure, "rows": rows, "prior": prior, "fallback": fallback})
        return PathChoice(f"{structure}|{rows}", self.winner, {self.winner: 1.0})


@pytest.fixture(scope="module")
def layer_class():
    return einstruct.compile(SPEC, batch=16)


def _measured(cls, winner, **options):
    layer = cls(strategy="measured", dtype=torch.float64, **options)
    layer.path_chooser = RecordingChooser(winner)
    return layer, layer.path_chooser


def test_the_prior_is_offered_only_where_it_holds(layer_class):
    """The estimates are forward + backward at the planned batch: a call of another
    token bucket, or one without gradients, times every path."""
    layer, chooser = _measured(layer_class, "structured")
    layer(torch.randn(16, 64, dtype=torch.float64))
    assert chooser.asked[-1]["prior"] == layer_class.strategy_estimate_ms
    layer(torch.randn(4096, 64, dtype=torch.float64))
    assert chooser.asked[-1]["prior"] is None
    with torch.no_grad():
        layer(torch.randn(16, 64, dtype=torch.float64))
    assert chooser.asked[-1]["prior"] is None
    assert {a["fallback"] for a in chooser.asked} == {layer_class.default_strategy}


def test_a_layer_far_from_its_planned_batch_times_the_path_the_prior_dislikes():
    """The reviewer's case: planned at 1 token, where the model puts the planned
    steps at 10x dense; at 4096 tokens both paths are timed (a real chooser)."""
    cls = einstruct.compile("structure b = block_diagonal(d = 256, blocks = 2)", batch=1)
    layer = cls(strategy="measured")
    layer.path_chooser = PathChooser(cache_dir=None, repeats=1, warmup=0, prior_skip=1.0)
    with torch.no_grad():
        layer(torch.randn(4096, 256))
    assert set(layer.path_choice.timings_ms) == {"structured", "dense"}


def test_a_known_key_is_a_lookup_on_the_layer(layer_class):
    layer, chooser = _measured(layer_class, "dense")
    x = torch.randn(16, 64, dtype=torch.float64)
    for _ in range(3):
        layer(x)
    layer(torch.randn(2, 8, 64, dtype=torch.float64))  # 16 tokens in another shape: the same bucket
    assert len(chooser.asked) == 1 and layer.path_choice.winner == "dense"
    layer(torch.randn(17, 64, dtype=torch.float64))  # another bucket
    with torch.no_grad():
        layer(x)  # inference
    layer.requires_grad_(False)
    layer(x)  # no gradient anywhere: inference too, already known
    assert [a["rows"] for a in chooser.asked] == [16, 17, 16]


def test_the_measured_map_is_the_layers_map(layer_class):
    for winner in ("structured", "dense"):
        layer, _ = _measured(layer_class, winner)
        reference = layer_class(strategy="structured", dtype=torch.float64)
        reference.load_state_dict(layer.state_dict())
        x = torch.randn(16, 64, dtype=torch.float64)
        torch.testing.assert_close(layer(x), reference(x))


def test_options_that_change_the_cost_key_the_choice(layer_class):
    """save_intermediate, normalize and gain change what a path runs: each layer of
    different options is measured under its own key; the same options share one."""
    keys = {}
    for options in (
        {},
        {"save_intermediate": False},
        {"normalize": True},
        {"normalize": True, "gain": True},
        {"zero_init_last": True},  # init only: the same paths
    ):
        layer, chooser = _measured(layer_class, "structured", **options)
        layer(torch.randn(16, 64, dtype=torch.float64))
        keys[tuple(options)] = chooser.asked[0]["structure"]
    assert len(set(keys.values())) == 4 and keys[()] == keys[("zero_init_last",)]


def test_the_key_follows_the_planned_steps():
    """Two plans of one spec whose steps differ are kept apart; one plan is one key.
    Rank 256 over d = 64: for one token the input meets U first, for 4096 U meets V first."""
    spec = "structure l = low_rank(d = 64, rank = 256)"
    questions = {}
    for batch in (1, 16, 4096):
        layer = einstruct.compile(spec, batch=batch)(strategy="measured")
        layer.path_chooser = RecordingChooser("structured")
        layer(torch.randn(8, 64))
        questions[batch] = layer.path_chooser.asked[0]["structure"]
    assert questions[1] == questions[16] != questions[4096]


def test_while_compiling_the_layer_takes_what_was_measured_for_its_mode(layer_class, monkeypatch):
    layer, chooser = _measured(layer_class, "dense")
    x = torch.randn(16, 64, dtype=torch.float64)
    layer(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert layer._measured_strategy(x) == "dense"
    assert layer._measured_strategy(x.float()) == layer_class.default_strategy  # another dtype
    with torch.no_grad():
        assert layer._measured_strategy(x) == layer_class.default_strategy  # not measured for inference
    monkeypatch.undo()
    layer.path_chooser = RecordingChooser("structured")
    layer(torch.randn(1000, 64, dtype=torch.float64))  # another bucket disagrees
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert layer._measured_strategy(x) == layer_class.default_strategy
    assert len(chooser.asked) == 1


def test_without_a_chooser_of_its_own_the_layer_uses_the_process_wide_one(layer_class, monkeypatch):
    shared = RecordingChooser("dense")
    monkeypatch.setattr(measured, "default_chooser", lambda: shared)
    layer_class(strategy="measured", dtype=torch.float64)(torch.randn(4, 64, dtype=torch.float64))
    assert len(shared.asked) == 1
