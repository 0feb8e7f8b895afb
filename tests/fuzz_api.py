"""Fuzzing what arrives from outside the spec: manifests someone else wrote, and Python API calls.

Shared by the CI test (``tests/test_fuzz_api.py``) and the long local run
(``tests/fuzz_long.py``), like ``tests/fuzzing.py`` for specs.

- **Manifests.** A manifest ``save_manifest`` wrote is mutated (a field replaced by a
  hostile value, deleted, added, an entry duplicated, the JSON text itself cut or spliced)
  and restored into a fresh model with the saved state dict. Either restore refuses with an
  einstruct error with a hint and the model is exactly as built (same modules, same
  weights), or it succeeds and the model holds exactly what the manifest says: the
  manifest of the restored model equals the mutated one, field by field (its factor
  axes up to order: they say how the weights were stored, and restore permutes them).
- **API calls.** ``replace_linear``, ``param_groups``, ``save_manifest``, ``compile``,
  ``load`` and ``analyze`` with arguments drawn from hostile values (strings for flags,
  NaN, huge numbers, wrong types, paths). Either an einstruct error with a hint, or a
  result that holds up (a converted model that runs and gives finite outputs, groups that
  hold every parameter exactly once).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

__all__ = ["Outcome", "mutated_manifests", "check_manifest", "api_calls", "check_call"]

HOSTILE = [
    None, True, False, 0, 1, -1, 16, 2**64, 10**400, 0.5, float("nan"), float("inf"), "", " ", "false",
    "true", "0", "16", "up", "mix", "down", "embed", "head", "up.weight", "..", "../../etc/passwd",
    "/etc/passwd",
    "examples/btt.ein", "structure b = btt(d = 16)", "structure b = btt(d = 16, rank = 2)\n", "dense",
    "structured", "auto", "torch", "triton", "os", "__class__", "ｕｐ", "\x00", "\udcff", "é" * 300,
    [], ["up"], ["up", "mix"], ["up", "up"], [[["up"]]], {}, {"normalize": True}, {"gain": True},
    {"normalize": "false"}, [1, 2, 3], "x" * 5000,
]  # fmt: skip


@dataclass
class Outcome:
    """How one input went."""

    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0


def _model() -> Any:
    import torch
    from models import Block

    torch.manual_seed(0)
    return Block()


_SAVED: dict[str, Any] = {}


def saved() -> tuple[dict, dict]:
    """The manifest and state dict of a converted Block (built once)."""
    if not _SAVED:
        import einstruct

        model = _model()
        einstruct.replace_linear(model, "structure b = btt(rank = 2)", select=["up", "mix"], normalize=True)
        einstruct.replace_linear(model, "structure l = low_rank(rank = 3)", select=["down"], strategy="dense")
        _SAVED.update(manifest=einstruct.runtime.model_manifest(model), state=model.state_dict())
    return _SAVED["manifest"], _SAVED["state"]


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for k, value in enumerate(data):
            out += _paths(value, (*prefix, k))
    return out


@st.composite
def mutated_manifests(draw: Any) -> Any:
    """A manifest save_manifest wrote, with one to three mutations: a dict, or JSON text (bytes)."""
    data = copy.deepcopy(saved()[0])
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add", "duplicate"]))
        if kind == "replace":
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
        elif kind == "delete":
            del parent[path[-1]]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "normalise", "names", "gain", "@generated"]))] = (
                copy.deepcopy(draw(st.sampled_from(HOSTILE)))
            )
        elif kind == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    if not draw(st.booleans()):
        return data
    try:
        text = json.dumps(data).encode()
    except ValueError:
        return data
    at = draw(st.integers(0, len(text)))
    splice = draw(
        st.sampled_from([b"", b"[", b"{", b'"', b"\xff", b"NaN", b"1e999", b"[" * 5000, b',"format":1'])
    )
    return text[:at] + splice + text[at + draw(st.integers(0, 8)) :]


def _snapshot(model: Any) -> tuple:
    return (
        tuple((n, id(m)) for n, m in model.named_modules()),
        {k: v.detach().clone() for k, v in model.state_dict().items()},
    )


def _same(model: Any, before: tuple) -> bool:
    import torch

    modules, weights = _snapshot(model)
    return modules == before[0] and all(torch.equal(weights[k], before[1][k]) for k in weights)


def check_manifest(source: Any, tmp: Any) -> Outcome:
    """Restore a (mutated) manifest; raise AssertionError on anything but the two outcomes."""
    import einstruct

    outcome = Outcome()
    start = time.perf_counter()
    state = saved()[1]
    if isinstance(source, bytes):
        (tmp / "einstruct.json").write_bytes(source)
        source_arg: Any = tmp
    else:
        source_arg = source
    fresh = _model()
    before = _snapshot(fresh)
    try:
        einstruct.restore(fresh, source_arg, state)
    except einstruct.EinstructError as exc:
        assert exc.hint, f"no hint for {exc!s}"
        assert _same(fresh, before), f"refused ({exc}) but the model changed"
        outcome.refused += 1
    else:
        data = source if isinstance(source, dict) else json.loads(source)
        got = sorted(einstruct.runtime.model_manifest(fresh)["layers"], key=lambda e: e["names"])
        want = sorted(data["layers"], key=lambda e: e["names"])  # the model's order, not the file's
        assert len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            for key, value in w.items():
                if key == "options":
                    assert all(g["options"][k] == v for k, v in value.items()), (g, w)
                elif key == "factor_axes":  # how the weights were stored: loaded in the layer's order
                    stored = sorted(map(sorted, value.values())) if value is not None else None
                    assert stored in (None, sorted(map(sorted, g[key].values()))), (g[key], value)
                elif key == "spec":  # the same structure, written canonically
                    assert einstruct.load(value, w["structure"]).to_source() == g["spec"], (value, g["spec"])
                else:
                    assert g[key] == value, (key, g[key], value)
        outcome.accepted += 1
    outcome.seconds = time.perf_counter() - start
    return outcome


def _hostile() -> Any:
    return st.sampled_from(HOSTILE)


SPEC = "structure b = btt(rank = 2)"


def api_calls() -> Any:
    """(function name, keyword arguments) of an API call with hostile argument values."""
    flags = ["normalize", "zero_init_last", "gain", "skip_tied"]
    replace = st.fixed_dictionaries(
        {},
        optional={
            **{f: _hostile() for f in flags},
            "select": _hostile(),
            "exclude": _hostile(),
            "init": st.sampled_from(["project", "random", "Project", 1, None]),
            "strategy": _hostile(),
            "spec": st.sampled_from([SPEC, "structure l = low_rank(rank = 100)", "/etc/passwd", 3, None]),
        },
    )
    groups = st.fixed_dictionaries(
        {"lr": st.sampled_from([1e-3, 0, -1, float("nan"), "1e-3", None, 1e300])},
        optional={
            "weight_decay": _hostile(),
            "base_width": _hostile(),
            "fixed": _hostile(),
            "base": _hostile(),
        },
    )
    compile_ = st.fixed_dictionaries(
        {},
        optional={
            "batch": _hostile(),
            "strategy": _hostile(),
            "backend": _hostile(),
            "class_name": _hostile(),
            "d": _hostile(),
        },
    )
    manifest = st.fixed_dictionaries({"model": _hostile(), "path": _hostile()})
    return st.one_of(
        st.tuples(st.just("replace_linear"), replace),
        st.tuples(st.just("param_groups"), groups),
        st.tuples(st.just("compile"), compile_),
        st.tuples(st.just("analyze"), compile_),
        st.tuples(st.just("save_manifest"), manifest),
    )


def check_call(call: tuple[str, dict], tmp: Any) -> Outcome:
    """Make the call; raise AssertionError on anything but an einstruct error or a sound result."""
    import torch

    import einstruct

    name, kwargs = call
    kwargs = dict(kwargs)
    outcome = Outcome()
    start = time.perf_counter()
    try:
        if name == "replace_linear":
            model = _model()
            spec = kwargs.pop("spec", SPEC)
            einstruct.replace_linear(model, spec, **kwargs)
            out = model(torch.arange(8).reshape(2, 4) % 11)
            assert torch.isfinite(out).all()
        elif name == "param_groups":
            model = _model()
            groups = einstruct.param_groups(model, **kwargs)
            ids = [id(p) for g in groups for p in g["params"]]
            assert sorted(ids) == sorted(id(p) for p in model.parameters())
        elif name in ("compile", "analyze"):
            function = getattr(einstruct, name)
            params = {k: kwargs.pop(k) for k in ("d",) if k in kwargs}
            if name == "analyze":
                kwargs = {k: v for k, v in kwargs.items() if k == "batch"}
            result = function("structure b = btt(rank = 2, d = 16)", **kwargs, **params)
            if name == "compile":
                try:
                    layer = result()
                except ValueError as exc:  # the layer runtime's own limit (it imports no einstruct)
                    assert "EINSTRUCT_MAX_PARAMS" in str(exc), exc
                    outcome.refused += 1
                    outcome.seconds = time.perf_counter() - start
                    return outcome
                assert layer(torch.ones(2, layer.in_features)).shape == (2, layer.out_features)
        else:
            path = kwargs["path"]
            if isinstance(path, str) and path:
                path = tmp / path.replace("/", "_").replace("\x00", "_")[:100]
            einstruct.save_manifest(kwargs["model"], path)
    except einstruct.EinstructError as exc:
        assert exc.hint, f"no hint for {exc!s}"
        outcome.refused += 1
    else:
        outcome.accepted += 1
    outcome.seconds = time.perf_counter() - start
    return outcome
