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

    def __init__(self, winner: str, source: str = "measured") -> None:
        self.winner, self.source, self.asked = winner, source, []

    def choose(self, structure, candidates, inputs, wrt=(), prior=None, fallback=None, persist=True):
        rows = inputs[0].shape[0]
        self.asked.append(
            {"structure": structure, "rows": rows, "prior": prior, "fallback": fallback, "persist": persist}
        )
        return PathChoice(f"{structure}|{rows}", self.winner, {self.winner: 1.0}, source=self.source)


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
    """Planned at 1 token, where the model puts the planned steps at 2.4x dense (prior_skip
    1 rules out anything behind the best); at 4096 tokens both paths are timed (a real
    chooser)."""
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
    with torch.no_grad():  # one choice for every grad mode: jit.trace checks under no_grad
        assert layer._measured_strategy(x) == "dense"
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


def test_an_untimed_fallback_is_not_remembered(layer_class):
    """A call the chooser could not time (a tensor subclass, fake tensors) takes the
    default; the next plain call is measured."""
    layer, chooser = _measured(layer_class, "dense")
    chooser.source = "fallback"
    x = torch.randn(16, 64, dtype=torch.float64)
    layer(x)
    chooser.source = "measured"
    layer(x)
    layer(x)
    assert len(chooser.asked) == 2 and layer.path_choice.source == "measured"


def test_changing_an_option_after_measuring_measures_again(layer_class):
    layer, chooser = _measured(layer_class, "structured")
    x = torch.randn(16, 64, dtype=torch.float64)
    layer(x)
    layer.save_intermediate = False
    layer(x)
    layer.normalize = True
    layer(x)
    assert len({a["structure"] for a in chooser.asked}) == 3


def test_copies_and_pickles_leave_what_was_measured_behind(layer_class):
    import copy
    import io

    layer, chooser = _measured(layer_class, "dense")
    x = torch.randn(16, 64, dtype=torch.float64)
    layer(x)
    for clone in (copy.deepcopy(layer), _reloaded(layer, io)):
        assert clone.path_choice is None
        clone.path_chooser = RecordingChooser("structured")
        clone(x)  # another machine, maybe: measured where it runs
        assert len(clone.path_chooser.asked) == 1 and clone.path_choice.winner == "structured"
    assert layer.path_choice.winner == "dense"  # the original keeps its own


def _reloaded(layer, io):
    buffer = io.BytesIO()
    layer.path_chooser = None  # the recording chooser is a test's local class
    torch.save(layer, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_the_default_path_is_part_of_the_key():
    """Two classes of one spec and plan, one defaulting to the planned steps and one to
    the dense W: each default is always timed, so they do not share a measurement."""
    structured = einstruct.compile(SPEC, batch=16, strategy="structured")
    dense = einstruct.compile(SPEC, batch=16, strategy="dense")
    assert structured.plan_hash == dense.plan_hash
    keys = []
    for cls in (structured, dense):
        layer, chooser = _measured(cls, "structured")
        layer(torch.randn(16, 64, dtype=torch.float64))
        keys.append(chooser.asked[0]["structure"])
    assert keys[0] != keys[1]


def _fresh_measuring(cls):
    layer = cls(strategy="measured", dtype=torch.float64)
    layer.path_chooser = PathChooser(cache_dir=None, repeats=1, warmup=0)
    reference = cls(strategy="structured", dtype=torch.float64)
    reference.load_state_dict(layer.state_dict())
    return layer, reference


def test_the_first_call_inside_torch_func_transforms_runs_without_timing(layer_class):
    # timing calls requires_grad_ on the transform's wrapped tensors: every first call
    # (an empty cache: a fresh machine) under grad, vmap or jacrev failed
    from torch.func import functional_call, grad, vmap

    layer, reference = _fresh_measuring(layer_class)
    x = torch.randn(6, 64, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    got = grad(lambda p: functional_call(layer, p, (x,)).square().sum())(params)
    want = grad(lambda p: functional_call(reference, p, (x,)).square().sum())(params)
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    torch.testing.assert_close(vmap(layer)(x.reshape(3, 2, 64)), reference(x).reshape(3, 2, -1))
    assert getattr(layer, "_measured_choices", {}) == {}  # nothing timed, nothing remembered


def test_the_first_call_inside_non_reentrant_checkpointing_runs_without_timing(layer_class):
    from torch.utils.checkpoint import checkpoint

    layer, reference = _fresh_measuring(layer_class)
    x = torch.randn(6, 64, dtype=torch.float64, requires_grad=True)
    checkpoint(layer, x, use_reentrant=False).square().sum().backward()
    got = x.grad.clone()
    x.grad = None
    reference(x).square().sum().backward()
    torch.testing.assert_close(got, x.grad)


def test_jit_trace_checks_its_graph_against_the_same_path_under_no_grad(layer_class):
    layer, chooser = _measured(layer_class, "dense")
    x = torch.randn(16, 64, dtype=torch.float64)
    layer(x)  # training: dense
    layer.path_chooser = RecordingChooser("structured")
    with torch.no_grad():
        layer(x)  # inference: structured; the modes disagree
    traced = torch.jit.trace(layer, x)  # its check reruns under no_grad: graphs differed
    torch.testing.assert_close(traced(x), layer(x))


def test_under_checkpointing_the_layer_never_asks_its_chooser(layer_class):
    # every forward and recompute asked the chooser (a cache-file read each) and fell back
    from torch.utils.checkpoint import checkpoint

    layer, chooser = _measured(layer_class, "dense")
    x = torch.randn(6, 64, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        checkpoint(layer, x, use_reentrant=False).square().sum().backward()
    assert chooser.asked == []
    layer(x)  # a plain call measures
    assert len(chooser.asked) == 1


def test_a_standalone_file_without_einstruct_refuses_measured_at_construction(tmp_path):
    # the standalone file carries the runtime but not einstruct.nn.measured: it cannot time
    import subprocess
    import sys

    from einstruct.runtime import module_source

    (tmp_path / "standalone_layer.py").write_text(module_source(einstruct.load(SPEC)))
    script = (
        "import sys; sys.modules['einstruct'] = None\n"
        "from standalone_layer import *\n"
        "import standalone_layer as m\n"
        "cls = getattr(m, m.__all__[0])\n"
        "cls(strategy='structured')\n"
        "try:\n"
        "    cls(strategy='measured')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "does not carry" in result.stdout and "pip install einstruct" in result.stdout
