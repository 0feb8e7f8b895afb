# ruff: noqa: E501 - tables of cases, one per line
"""Manifests and checkpoints from someone else: each mistake or attack a separate case.

Every case mutates a manifest (or checkpoint) ``save_manifest`` wrote, restores into a
fresh model and checks three things: the error is an einstruct error, its message names
the entry and field (or file and key) at fault, and the model is exactly as it was built
(the same module objects, the same weights). Nothing is read outside the checkpoint folder
and no spec text is ever opened as a path.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from models import Block

import einstruct
from einstruct.runtime.checkpoint import read_state_dict
from einstruct.runtime.manifest_schema import ManifestError, parse_manifest


def _saved() -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = Block()
    einstruct.replace_linear(model, "structure b = btt(rank = 2)", select=["up", "mix"], normalize=True)
    einstruct.replace_linear(model, "structure l = low_rank(rank = 3)", select=["down"])
    return einstruct.runtime.model_manifest(model), model.state_dict()


MANIFEST, STATE = _saved()


def _snapshot(model: torch.nn.Module) -> tuple:
    modules = tuple((n, id(m)) for n, m in model.named_modules())
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return modules, weights


def _unchanged(model: torch.nn.Module, before: tuple) -> bool:
    modules, weights = _snapshot(model)
    return modules == before[0] and all(torch.equal(weights[k], before[1][k]) for k in weights)


def _edit(path: tuple, value) -> dict:
    data = copy.deepcopy(MANIFEST)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()

CASES = [
    (("layers", 0, "options", "normalize"), "false", r"layers\[0\]\.options\.normalize: must be true or false, got str 'false'"),
    (("layers", 0, "options", "gain"), 1, r"layers\[0\]\.options\.gain: must be true or false, got int 1"),
    (("layers", 0, "options", "strategy"), "fast", r"layers\[0\]\.options\.strategy: must be one of structured, dense"),
    (("layers", 0, "options", "normalise"), True, r"layers\[0\]\.options\.normalise: is not a field"),
    (("layers", 0, "bias"), "yes", r"layers\[0\]\.bias: must be true or false"),
    (("layers", 0, "names"), ["up", "mix"], r"layers\[2\]\.names\[0\]: 'mix' is already named by layers\[0\]"),
    (("layers", 0, "names"), ["up", "down"], r"'down' is already named by layers\[0\]"),
    (("layers", 0, "names"), [], r"layers\[0\]\.names: must be a list of 1 to"),
    (("layers", 0, "names"), [""], r"layers\[0\]\.names\[0\]: is empty"),
    (("layers", 0, "names"), ["up..x"], r"layers\[0\]\.names\[0\]: 'up\.\.x' is not a module name"),
    (("layers", 0, "names"), ["nope"], r"layers\[0\]\.names\[0\]: the model has no layer 'nope'"),
    (("layers", 0, "names"), ["embed"], r"layers\[0\]\.names: layer 'embed' is a Embedding, not a linear layer"),
    (("layers", 0, "names"), [["up"]], r"layers\[0\]\.names\[0\]: must be a string, got list"),
    (("layers", 0, "names"), _DELETE, r"layers\[0\]\.names: is missing"),
    (("layers", 0, "spec"), "/etc/passwd", r"layers\[0\]\.spec: .*unexpected"),
    (("layers", 0, "spec"), "examples/btt.ein", r"layers\[0\]\.spec: "),
    (("layers", 0, "spec"), 42, r"layers\[0\]\.spec: must be a string, got int 42"),
    (("layers", 0, "structure"), "other", r"layers\[0\]\.spec: .*has no structure 'other'"),
    (("layers", 0, "in_features"), "16", r"layers\[0\]\.in_features: must be a whole number, got str"),
    (("layers", 0, "in_features"), True, r"layers\[0\]\.in_features: must be a whole number, got bool"),
    (("layers", 0, "in_features"), 10**40, r"layers\[0\]\.in_features: must be from 1 to"),
    (("layers", 0, "in_features"), 8, r"layer 'up' maps 16 -> 64, the manifest's 8 -> 64"),
    (("layers", 0, "batch"), 0, r"layers\[0\]\.batch: must be from 1 to"),
    (("layers", 0, "backend"), "os", r"layers\[0\]\.backend: must be one of"),
    (("layers", 0, "class_strategy"), None, r"layers\[0\]\.class_strategy: must be one of auto, structured, dense"),
    (("layers", 0, "extra"), 1, r"layers\[0\]\.extra: is not a field"),
    (("layers", 0, "factor_axes"), "A", r"layers\[0\]\.factor_axes: must be an object of 1 to 64 factors' axes"),
    (("layers", 0, "factor_axes", "A"), ["g", "g"], r"layers\[0\]\.factor_axes\.A: names an index twice"),
    (("layers", 0, "factor_axes", "A"), ["g", "a b"], r"layers\[0\]\.factor_axes\.A\[1\]: must be an index name"),
    (("layers", 0, "factor_axes", "A"), ["g", "f", "r", "x"], r"layers\[0\]\.factor_axes\.A: \['g', 'f', 'r', 'x'\] is not an order of the factor's axes"),
    (("layers", 0, "factor_axes", "Z"), ["g"], r"layers\[0\]\.factor_axes: names the factors \['A', 'B', 'Z'\]"),
    (("layers", 2), "mix", r"layers\[2\]: must be an object, got str"),
    (("layers",), [], r"manifest layers: must hold 1 to"),
    (("format",), 2, r"manifest format: must be 1: not an einstruct manifest"),
    (("format",), True, r"manifest format: must be 1"),
    (("format",), 1.0, r"manifest format: must be 1.*got float 1\.0"),
    (("skipped",), [{"name": "head", "reason": "\x1b[31mred"}], r"skipped\[0\]\.reason: .* not printable"),
    (("skipped",), [{"name": "head"}], r"skipped\[0\]\.reason: is missing"),
    (("skipped",), "head", r"manifest skipped: must be a list"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "message"), CASES, ids=[f"{'.'.join(map(str, p))}={v!r:.20}" for p, v, _ in CASES]
)
def test_a_bad_manifest_entry_is_named_and_changes_nothing(path, value, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "btt.ein").write_text("structure secret = btt(d = 16)\n")  # never read
    data = _edit(path, value)
    fresh = Block()
    before = _snapshot(fresh)
    with pytest.raises(einstruct.EinstructError, match=message) as info:
        einstruct.restore(fresh, data, STATE)
    assert "secret" not in str(info.value) and "root:" not in str(info.value)
    assert _unchanged(fresh, before)
    (tmp_path / "m.json").write_text(json.dumps(data))  # the same through the file reader
    with pytest.raises(einstruct.EinstructError, match=message):
        einstruct.restore(fresh, tmp_path / "m.json", STATE)
    assert _unchanged(fresh, before)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'{"format": 1, "format": 1, "layers": []}', "key 'format' appears twice"),
        (b'{"format": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe", "cannot read the manifest"),
        (b'{"format": 1, "layers": [' + b"9" * 5000 + b"]}", "cannot read the manifest"),
        (b"", "cannot read the manifest"),
    ],
)
def test_a_malformed_manifest_file_is_refused(text, message, tmp_path):
    (tmp_path / "m.json").write_bytes(text)
    fresh = Block()
    before = _snapshot(fresh)
    with pytest.raises(ManifestError, match=message):
        einstruct.restore(fresh, tmp_path / "m.json")
    assert _unchanged(fresh, before)


def test_a_late_problem_leaves_the_model_as_it_was():
    """The third entry is bad; the first two were fine and must not have been applied."""
    data = _edit(("layers", 2, "options", "save_intermediate"), "no")
    fresh = Block()
    before = _snapshot(fresh)
    with pytest.raises(ManifestError, match=r"layers\[2\]\.options\.save_intermediate"):
        einstruct.restore(fresh, data)
    assert _unchanged(fresh, before)
    bad_state = {**STATE, "mix.A": "not a tensor"}
    with pytest.raises(ManifestError, match="'mix.A' is a str, not a tensor"):
        einstruct.restore(fresh, MANIFEST, bad_state)
    assert _unchanged(fresh, before)


def test_an_entry_naming_an_extra_layer_never_ties_two_layers():
    data = _edit(("layers", 1, "names"), ["down", "mix"])  # mix is its own layer in the model
    data["layers"].pop(2)
    fresh = Block()
    with pytest.raises(ManifestError, match=r"names\[1\]: 'mix' is a different layer from 'down'"):
        einstruct.restore(fresh, data)
    assert fresh.down is not fresh.mix


def test_the_schema_accepts_what_save_manifest_writes():
    checked = parse_manifest(MANIFEST)
    assert [e.names for e in checked.layers] == [tuple(e["names"]) for e in MANIFEST["layers"]]
    assert [dict(e.options) for e in checked.layers] == [e["options"] for e in MANIFEST["layers"]]


# -- checkpoints ----------------------------------------------------------------------------------
def test_shard_indexes_may_name_only_weights_inside_their_folder(tmp_path):
    outside = tmp_path / "outside.pt"
    torch.save({"x": torch.zeros(1)}, outside)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"mix.A": torch.zeros(1)}, ckpt / "part.bin")
    (ckpt / "link.bin").symlink_to(outside)
    for shard, message in [
        (str(outside), "not a file name inside the checkpoint folder"),
        ("../outside.pt", "not a file name inside the checkpoint folder"),
        ("link.bin", "leads outside the checkpoint folder"),
        ("pytorch_model.bin.index.json", "an index never names an index"),
        ("notes.txt", "is not a weights file"),
    ]:
        index = {"weight_map": {"mix.A": "part.bin", "x": shard}}
        (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        with pytest.raises(ManifestError, match=message):
            read_state_dict(ckpt)
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"mix.A": "part.bin"}}))
    assert torch.equal(read_state_dict(ckpt)["mix.A"], torch.zeros(1))
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": ["part.bin"]}))
    with pytest.raises(ManifestError, match="weight_map must be an object"):
        read_state_dict(ckpt)


def test_a_folders_own_weights_file_may_not_link_outside_it(tmp_path):
    """The rule shards follow holds for the weights file a folder holds; a file passed
    by its own path is the caller's choice and is read where it is."""
    outside = tmp_path / "outside.bin"
    torch.save({"secret": torch.ones(1)}, outside)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "pytorch_model.bin").symlink_to(outside)
    with pytest.raises(ManifestError, match="is a link leading outside the checkpoint folder"):
        read_state_dict(ckpt)
    assert list(read_state_dict(ckpt / "pytorch_model.bin")) == ["secret"]
    inside = ckpt / "weights"
    inside.mkdir()
    torch.save({"mix.A": torch.zeros(1)}, inside / "real.bin")
    (ckpt / "pytorch_model.bin").unlink()
    (ckpt / "pytorch_model.bin").symlink_to(inside / "real.bin")  # a link within the folder is fine
    assert list(read_state_dict(ckpt)) == ["mix.A"]


@pytest.mark.parametrize("sharded", [False, True], ids=["one file", "sharded"])
def test_a_hugging_face_hub_snapshot_loads_through_its_blob_links(tmp_path, sharded):
    """The hub cache's layout: snapshots/<revision>/<file> -> ../../blobs/<hash>. Its links
    leave the snapshot folder but stay in the repository's blobs folder."""
    repo = tmp_path / "models--org--name"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    if sharded:
        torch.save({"a": torch.zeros(2)}, blobs / "h1")
        torch.save({"b": torch.ones(3)}, blobs / "h2")
        (blobs / "h3").write_text(json.dumps({"weight_map": {"a": "part-1.bin", "b": "part-2.bin"}}))
        links = {"part-1.bin": "h1", "part-2.bin": "h2", "pytorch_model.bin.index.json": "h3"}
    else:
        torch.save({"a": torch.zeros(2), "b": torch.ones(3)}, blobs / "h1")
        links = {"pytorch_model.bin": "h1"}
    for name, blob in links.items():
        (snapshot / name).symlink_to(f"../../blobs/{blob}")
    state = read_state_dict(snapshot)
    assert sorted(state) == ["a", "b"] and torch.equal(state["b"], torch.ones(3))
    torch.save({"secret": torch.ones(1)}, tmp_path / "elsewhere.bin")  # out of the repository: refused
    name = "part-2.bin" if sharded else "pytorch_model.bin"
    (snapshot / name).unlink()
    (snapshot / name).symlink_to("../../../elsewhere.bin")
    with pytest.raises(ManifestError, match="outside the checkpoint folder"):
        read_state_dict(snapshot)


def test_corrupt_or_foreign_checkpoints_are_einstruct_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(STATE, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    torch.save({"mix.A": [1, 2]}, tmp_path / "list.pt")
    torch.save([torch.zeros(1)], tmp_path / "seq.pt")
    torch.save({3: torch.zeros(1)}, tmp_path / "intkey.pt")
    cases = {
        "cut.pt": "cannot read checkpoint",
        "junk.safetensors": "cannot read checkpoint",
        "list.pt": "'mix.A' is a list, not a tensor",
        "seq.pt": "holds a list, not a state dict",
        "intkey.pt": "key 3 is not a string",
    }
    for name, message in cases.items():
        with pytest.raises(ManifestError, match=message):
            read_state_dict(tmp_path / name)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.pt")
        with pytest.raises(ManifestError, match="not a regular file"):
            read_state_dict(tmp_path / "pipe.pt")


def test_restore_and_save_manifest_take_only_modules(tmp_path):
    for call in (
        lambda: einstruct.save_manifest("model", tmp_path),
        lambda: einstruct.runtime.model_manifest(None),
        lambda: einstruct.restore({"a": 1}, MANIFEST),
    ):
        with pytest.raises(einstruct.EinstructError, match=r"needs the model \(a torch.nn.Module\)"):
            call()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([1, 2], "its metadata .* is a list, not a mapping of module names"),
        ({"up": "v1"}, "the metadata of module 'up' is not a module name and a mapping"),
        ({"up": {"version": "2"}}, "the metadata of module 'up' has version '2', not a whole number"),
        ({"up": {"einstruct_factor_axes": ["A"]}}, "the metadata of module 'up' records factor axes"),
        (
            {"up": {"einstruct_factor_axes": {"A": ["g", "g"]}}},
            "the metadata of module 'up' records factor axes",
        ),
    ],
)
def test_a_checkpoints_torch_metadata_is_checked_and_kept(tmp_path, metadata, message):
    """torch.save keeps a state dict's metadata, which records each structured layer's
    stored axes: kept (restore permutes by it), checked as the rest of the file."""
    from collections import OrderedDict

    state = OrderedDict(STATE)
    state._metadata = metadata
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ManifestError, match=f"'{tmp_path / 'bad.pt'}': {message}"):
        read_state_dict(tmp_path / "bad.pt")
    model = Block()
    einstruct.restore(model, MANIFEST)
    torch.save(model.state_dict(), tmp_path / "good.pt")
    kept = read_state_dict(tmp_path / "good.pt")._metadata
    assert kept["up"] == {"version": 1, "einstruct_factor_axes": dict(type(model.up).factor_axes)}


def test_a_meta_device_model_gets_no_state_silently():
    with torch.device("meta"):
        fresh = Block()
    with pytest.raises(ManifestError, match="meta-device tensors"):
        einstruct.restore(fresh, MANIFEST, STATE)
    report = einstruct.restore(fresh, MANIFEST)  # structure only: fine on meta
    assert report.names == ["up", "down", "mix"]


def test_a_limit_of_this_machine_is_not_blamed_on_the_manifest(monkeypatch):
    monkeypatch.setenv("EINSTRUCT_MAX_PARAMS", "10")
    fresh = Block()
    before = _snapshot(fresh)
    with pytest.raises(
        einstruct.EinstructError, match=r"layer 'up' \(layers\[0\]\): .*EINSTRUCT_MAX_PARAMS = 10"
    ) as info:
        einstruct.restore(fresh, MANIFEST, STATE)
    assert "save_manifest" not in str(info.value) and "raise or fix EINSTRUCT_MAX_PARAMS" in str(info.value)
    assert _unchanged(fresh, before)


def test_a_bad_setting_is_named_as_the_setting_for_a_manifest_file(monkeypatch, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(MANIFEST))
    monkeypatch.setenv("EINSTRUCT_MAX_INPUT_BYTES", "abc")
    with pytest.raises(einstruct.EinstructError, match="EINSTRUCT_MAX_INPUT_BYTES='abc'") as info:
        einstruct.restore(Block(), tmp_path / "m.json")
    assert "cannot read the manifest" not in str(info.value)


@pytest.mark.parametrize("name", ["a\x00b.json", "a\x00b"])
def test_a_path_holding_a_nul_is_an_einstruct_error(name):
    model = Block()
    before = _snapshot(model)
    with pytest.raises(einstruct.EinstructError, match="NUL"):
        einstruct.restore(model, name)
    assert _unchanged(model, before)


@pytest.mark.parametrize("name", ["a\x00b", "a\x00b.json", "x" * 300, "x" * 300 + ".json"])
def test_save_manifest_to_a_path_no_file_can_have_is_an_einstruct_error(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = Block()
    einstruct.replace_linear(model, "structure l = low_rank(rank = 3)", select=["down"])
    with pytest.raises(einstruct.EinstructError):
        einstruct.save_manifest(model, name)
    assert list(tmp_path.iterdir()) == []
