"""Layers built in memory (einstruct.compile, replace_linear) pickle across processes.

A whole model is ``torch.save``-d here and ``torch.load``-ed in a fresh Python
process, and sent to a spawned process; both give the outputs computed here.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import torch
from conftest import ROOT
from test_routed import SPEC

import einstruct
from einstruct.runtime.pickling import module_name


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))
    einstruct.replace_linear(model, "structure b = btt(rank = 2, d = 16)", select=["0"])
    model.append(einstruct.compile(SPEC)())
    model.append(
        einstruct.compile("structure w = low_rank(rank = 3, d_in = 16, d_out = 5)", strategy="dense")()
    )
    with torch.no_grad():
        model[3].router.weight.normal_()
    return model


def _environment() -> dict:
    """This checkout first on the path of a child process (not an installed einstruct)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *([path] if path else [])])}


LOAD = """
import sys
import torch
saved = torch.load(sys.argv[1], weights_only=False)
model = saved["model"]
torch.testing.assert_close(model(saved["x"]), saved["y"], rtol=0, atol=0)
print(type(model[0]).__name__, type(model[3]).__name__, type(model[4]).__name__)
"""


def test_a_saved_model_loads_in_a_fresh_process(tmp_path):
    model = _model()
    x = torch.randn(6, 16)
    path = tmp_path / "model.pt"
    torch.save({"model": model, "x": x, "y": model(x).detach()}, path)
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(path)],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["B", "Moe", "W"]


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).detach()


def test_a_model_goes_to_a_spawned_process():
    model = _model()
    x = torch.randn(6, 16)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        y = pool.submit(_outputs, model, x).result(timeout=120)
    torch.testing.assert_close(y, model(x), rtol=0, atol=0)


def test_copies_and_pickles_in_process_keep_the_class():
    model = _model()
    x = torch.randn(6, 16)
    y = model(x)
    assert model[3].aux_loss is not None and model[3].aux_loss.grad_fn is not None
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert [type(m) for m in clone] == [type(m) for m in model]
        assert clone[3].aux_loss is None  # the last step's graph is not copied
        torch.testing.assert_close(clone(x), y, rtol=0, atol=0)
    assert pickle.loads(pickle.dumps(type(model[0]))) is type(model[0])  # a class, by reference


def test_each_generated_text_gets_its_own_module():
    """Another strategy or class name for the same structure is another module: neither
    replaces the other, so instances of both pickle."""
    spec = "structure b = btt(rank = 2, d = 16)"
    classes = [
        einstruct.compile(spec, strategy="structured"),
        einstruct.compile(spec, strategy="dense"),
        einstruct.compile(spec, class_name="Other"),
    ]
    assert len({c.__module__ for c in classes}) == 3
    assert all(c.__module__.startswith("einstruct_generated_b_") for c in classes)
    assert module_name("b", "text") == module_name("b", "text") != module_name("b", "text ")
    for cls in classes:
        layer = cls()
        assert type(pickle.loads(pickle.dumps(layer))) is cls
