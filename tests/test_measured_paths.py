"""``einstruct plan --measure`` and the torch layer's measured paths (structured, dense).

Timings are never asserted (the machine is shared): only which candidates were
timed, that both compute the layer's map, and where the choice came from.
"""

import json

import numpy as np
import pytest
import torch
from reference import dense_from_factors

from einstruct.cli import main
from einstruct.language.load import load
from einstruct.nn import measured
from einstruct.nn.measured import PathChooser
from einstruct.runtime.build import compile_structure
from einstruct.runtime.measured_paths import measure_structure, strategy_paths

SPEC = "structure k = kronecker(d = 64)"


def test_both_paths_compute_the_layers_dense_map():
    layer = compile_structure(load(SPEC), batch=16)(bias=False, dtype=torch.float64)
    x = torch.randn(16, 64, dtype=torch.float64)
    w = torch.from_numpy(dense_from_factors(layer))
    for name, path in strategy_paths(layer).items():
        assert np.allclose(path(x).detach().numpy(), (x @ w.T).numpy(), atol=1e-10), name
    assert layer.strategy == layer.default_strategy  # the candidates leave the layer as it was


def test_measure_structure_times_both_paths_once(tmp_path):
    chooser = PathChooser(cache_dir=str(tmp_path), repeats=1)
    first = measure_structure(load(SPEC), batch=16, chooser=chooser)
    assert set(first.timings_ms) == {"structured", "dense"} and first.source == "measured"
    assert first.key.endswith("|tokens<=16|train") and "/torch|" in first.key
    again = measure_structure(load(SPEC), batch=12, chooser=chooser)  # same bucket: remembered
    assert again is first and chooser.measurements == 1
    fwd = measure_structure(load(SPEC), batch=16, train=False, chooser=chooser)
    assert fwd.key.endswith("|infer") and chooser.measurements == 2


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured.default_chooser.cache_clear()
    yield tmp_path / "einstruct"
    measured.default_chooser.cache_clear()


def test_plan_measure_says_which_path_and_why_then_reads_the_cache(cache_home, tmp_path, capsys):
    spec = tmp_path / "k.ein"
    spec.write_text(SPEC + "\n")
    assert main(["plan", str(spec), "--batch", "16", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "measured (" in out and "takes " in out and "(measured)" in out
    assert " ms" in out.split("takes ", 1)[1] and "structured" in out and "dense" in out
    measured.default_chooser.cache_clear()  # a new process: the choice comes from the file
    assert main(["plan", str(spec), "--batch", "16", "--measure", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["measured"]
    assert data["source"] == "disk" and set(data["timings_ms"]) == {"structured", "dense"}
    (cache_home / measured.CACHE_FILE).write_text("{ corrupt")
    measured.default_chooser.cache_clear()
    assert main(["plan", str(spec), "--batch", "16", "--measure", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measured"]["source"] == "measured"


def test_plan_measure_refuses_a_batch_too_large_to_time_before_allocating(tmp_path, capsys, monkeypatch):
    from einstruct.runtime import measured_paths

    spec = tmp_path / "k.ein"
    spec.write_text(SPEC + "\n")
    assert main(["plan", str(spec), "--batch", str(10**15), "--measure"]) == 2
    err = capsys.readouterr().err
    assert "EINSTRUCT_MAX_PARAMS" in err and "--batch" in err and "Traceback" not in err
    monkeypatch.setattr(measured_paths, "_memory_bytes", lambda: 2**20)  # a 1 MiB machine
    assert main(["plan", str(spec), "--batch", "4096", "--measure"]) == 2
    assert "more than half of this machine's" in capsys.readouterr().err
    cls = compile_structure(load(SPEC), batch=4096)
    layer = cls(bias=False)
    need = measured_paths.timing_bytes(cls, 4096, 4)
    assert need >= 4 * 4096 * (layer.in_features + layer.out_features)  # at least x and y


def test_plan_measure_of_a_routed_layer_says_it_has_one_path(cache_home, tmp_path, capsys):
    spec = tmp_path / "moe.ein"
    spec.write_text(
        "structure moe(d = 64, experts = 4, k = 2):\n"
        "    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
        "    where g = a = f = e = d^(1/2), r = experts\n"
        "    route r top k\n"
    )
    assert main(["plan", str(spec), "--batch", "16", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "takes structured (the only path; dense: a routed layer" in out
    assert main(["plan", str(spec), "--batch", "16", "--measure", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["measured"]
    assert data["path"] == "structured" and data["source"] == "only" and data["timings_ms"] == {}


def test_plan_measure_with_a_forced_strategy_is_refused(tmp_path, capsys):
    # it printed "strategy: structured (forced by the user)" and then "takes dense"
    spec = tmp_path / "k.ein"
    spec.write_text(SPEC + "\n")
    assert main(["plan", str(spec), "--batch", "16", "--strategy", "structured", "--measure"]) == 2
    assert "--measure times both strategies" in capsys.readouterr().err
