"""Save a converted model and reload it in a fresh process: a manifest, ``einstruct.restore``.

The fresh process builds the original architecture, restores and loads the
weights; its outputs must equal the saved process's exactly (``torch.equal``).
"""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from conftest import EXAMPLES, fresh_python
from models import Block

import einstruct
from einstruct.errors import OutputError, ParameterError


def _converted() -> Block:
    torch.manual_seed(0)
    model = Block()
    einstruct.replace_linear(
        model, "structure b = btt(rank = 2)", select=["up", "mix"], normalize=True, gain=True
    )
    einstruct.replace_linear(
        model, "structure l = low_rank(rank = 3)", select=["down"], strategy="structured"
    )
    with torch.no_grad():  # as if fine-tuned: every parameter moved
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_save_and_restore_in_a_fresh_process(tmp_path):
    model = _converted().eval()
    ids = torch.arange(12).reshape(3, 4) % 11
    torch.save(model(ids).detach(), tmp_path / "expected.pt")
    written = einstruct.save_manifest(model, tmp_path)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert written == tmp_path / "einstruct.json"
    data = json.loads(written.read_text())
    assert [e["names"] for e in data["layers"]] == [["up"], ["down"], ["mix"]]
    assert data["skipped"] == [] and data["layers"][1]["options"]["strategy"] == "structured"
    out = fresh_python(
        f"""
import torch, einstruct
from models import Block
model = Block().eval()
report = einstruct.restore(model, {str(tmp_path)!r}, {str(tmp_path / "model.pt")!r})
ids = torch.arange(12).reshape(3, 4) % 11
print(torch.equal(model(ids), torch.load({str(tmp_path / "expected.pt")!r})), report.names)
print(model.up.normalize, model.up.gain is not None, model.down.strategy)
"""
    )
    assert out.splitlines() == ["True ['up', 'down', 'mix']", "True True structured"]


def test_restore_checks_everything_before_touching_the_model(tmp_path):
    model = _converted()
    einstruct.save_manifest(model, tmp_path / "m.json")
    state = model.state_dict()
    fresh = Block()
    before = {n: type(m) for n, m in fresh.named_modules()}
    bad = dict(state)
    bad.pop("mix.A")
    with pytest.raises(ParameterError, match="the state dict lacks keys: mix.A"):
        einstruct.restore(fresh, tmp_path / "m.json", bad)
    assert {n: type(m) for n, m in fresh.named_modules()} == before  # swapped back
    wrong = {**state, "mix.A": torch.zeros(1)}
    with pytest.raises(ParameterError, match="other shapes at: mix.A"):
        einstruct.restore(fresh, tmp_path / "m.json", wrong)
    other = Block(d=8)
    with pytest.raises(ParameterError, match="layer 'up' maps 8 -> 32, the manifest's 16 -> 64"):
        einstruct.restore(other, tmp_path / "m.json")
    with pytest.raises(ParameterError, match="not an einstruct manifest"):
        einstruct.restore(fresh, {"layers": 3})
    with pytest.raises(ParameterError, match="cannot read the manifest"):
        einstruct.restore(fresh, tmp_path / "missing.json")
    report = einstruct.restore(fresh, tmp_path / "m.json", state)  # tied head: embed.weight loads both
    assert report.names == ["up", "down", "mix"] and fresh.head.weight is fresh.embed.weight
    with pytest.raises(ParameterError, match="is a .*not a linear layer to restore"):
        einstruct.restore(fresh, tmp_path / "m.json")  # already restored


def _bad_values(state: dict) -> list:
    """(a state dict with one value the model cannot take as it is, what the error says)."""
    bias = state["mix.bias"]
    with warnings.catch_warnings():  # torch deprecates quantized tensors; checkpoints may still hold them
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(bias.float(), 0.1, 0, torch.qint8)
    return [
        ({**state, "mix.bias": bias.to_sparse()}, "'mix.bias' is a torch.sparse_coo tensor"),
        ({**state, "mix.bias": quantized}, "'mix.bias' is a quantized tensor"),
        ({**state, "mix.bias": bias.to(torch.complex64)}, r"'mix.bias' holds torch.complex64 values"),
        ({**state, "mix.bias": torch.ones_like(bias, dtype=torch.int64)}, "holds torch.int64 values"),
        ({**state, "mix.bias": torch.ones_like(bias, dtype=torch.bool)}, "holds torch.bool values"),
        ({**state, "mix.A": state["mix.A"] * float("nan")}, "'mix.A' holds NaN or infinite values"),
        ({**state, "embed.weight": state["embed.weight"] * float("inf")}, "holds NaN or infinite"),
        ({**state, "head.weight": torch.zeros_like(state["head.weight"])}, "differ, but they are one tensor"),
    ]


def test_restore_refuses_values_the_model_cannot_take_and_changes_nothing(tmp_path):
    """Checked before the first weight is copied: load_state_dict copies key by key and
    raises at the end, which used to leave the embedding overwritten; a tied key that
    disagrees silently replaced the other."""
    model = _converted()
    einstruct.save_manifest(model, tmp_path / "m.json")
    state = model.state_dict()
    for bad, problem in _bad_values(state):
        fresh = Block()
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(ParameterError, match=problem):
            einstruct.restore(fresh, tmp_path / "m.json", bad)
        after = fresh.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), problem
    fresh = Block()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    einstruct.restore(fresh, tmp_path / "m.json", half)  # another floating dtype is a cast, as in torch
    torch.testing.assert_close(fresh.mix.A, state["mix.A"].half().float())


def test_the_manifest_is_written_by_the_file_rule(tmp_path):
    model = _converted()
    theirs = tmp_path / "notes.json"
    theirs.write_text("{}")
    with pytest.raises(OutputError, match="was not generated by einstruct"):
        einstruct.save_manifest(model, theirs)
    assert theirs.read_text() == "{}"
    einstruct.save_manifest(model, tmp_path / "m.json")
    einstruct.save_manifest(model, tmp_path / "m.json")  # its own file: replaced
    with pytest.raises(ParameterError, match="has no einstruct layer"):
        einstruct.save_manifest(Block(), tmp_path / "n.json")


def test_converting_a_model_imports_no_transformers():
    out = fresh_python(
        "import sys, einstruct\n"
        "from models import Block\n"
        "einstruct.replace_linear(Block(), 'structure b = btt()')\n"
        "print('transformers' in sys.modules)\n"
    )
    assert out.split() == ["False"]


def test_a_layer_from_a_generated_file_is_described_by_its_header(tmp_path):
    from einstruct.cli import main

    assert (
        main(["compile", str(EXAMPLES / "btt.ein"), "--set", "d=16", "-o", str(tmp_path / "layer16.py")]) == 0
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import layer16
    finally:
        sys.path.remove(str(tmp_path))
    model = Block()
    model.mix = layer16.Btt()
    entry = einstruct.runtime.model_manifest(model)["layers"][0]
    assert (
        entry["names"] == ["mix"] and entry["spec"] == einstruct.load(EXAMPLES / "btt.ein", d=16).to_source()
    )
    assert einstruct.summary(model).layers[0].structure == "btt"


def test_a_compiled_models_manifest_and_weights_restore_into_the_model_built_fresh(tmp_path):
    """torch.compile prefixes every module name with _orig_mod. (DDP with module.): the
    manifest names the layers inside the wrapper, and a wrapped state dict loads."""
    model = _converted().eval()
    compiled = torch.compile(model)
    einstruct.save_manifest(compiled, tmp_path)
    data = json.loads((tmp_path / "einstruct.json").read_text())
    assert [e["names"] for e in data["layers"]] == [["up"], ["down"], ["mix"]]
    state = compiled.state_dict()
    assert all(k.startswith("_orig_mod.") for k in state)
    fresh = Block().eval()
    einstruct.restore(fresh, tmp_path, {f"module.{k}": v for k, v in state.items()})  # DDP's, over compile's
    ids = torch.arange(12).reshape(3, 4) % 11
    assert torch.equal(fresh(ids), model(ids))


def _square(spec: str, **options) -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    einstruct.replace_linear(model, spec, **options)
    return model


def test_weights_saved_with_another_structures_manifest_are_refused(tmp_path):
    # Tensor-Train of rank 8 and Monarch store the same keys with the same shapes at 64 -> 64
    monarch, tt = _square("monarch"), _square("tensor_train", rank=8)
    assert {k: v.shape for k, v in monarch.state_dict().items()} == {
        k: v.shape for k, v in tt.state_dict().items()
    }
    from safetensors.torch import save_file

    for name, model in (("monarch", monarch), ("tt", tt)):  # as save_pretrained lays a folder out
        (tmp_path / name).mkdir()
        einstruct.save_manifest(model, tmp_path / name)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / name / "model.safetensors"
        )
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    before = [p.clone() for p in fresh.parameters()]
    for weights in (tmp_path / "monarch", tmp_path / "monarch" / "model.safetensors"):
        with pytest.raises(ParameterError, match="saved with another manifest"):
            einstruct.restore(fresh, tmp_path / "tt", weights)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))
    einstruct.restore(fresh, einstruct.runtime.manifest.model_manifest(monarch), tmp_path / "monarch")
    x = torch.randn(3, 64)
    torch.testing.assert_close(fresh(x), monarch(x), rtol=0, atol=0)


def test_a_layer_the_manifest_does_not_list_is_named(tmp_path):
    model = _square("low_rank", rank=4)
    manifest = einstruct.runtime.manifest.model_manifest(model)
    manifest["layers"] = manifest["layers"][:1]  # someone dropped the second layer's entry
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    with pytest.raises(
        ParameterError, match="holds '2' as a structured layer .* the manifest does not list it"
    ):
        einstruct.restore(fresh, manifest, model.state_dict())


def test_a_save_pretrained_folder_is_its_own_manifest_for_restore(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=61, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    einstruct.replace_linear(model, "low_rank", rank=4)
    model.save_pretrained(tmp_path)  # config.json carries the manifest; no einstruct.json
    fresh = transformers.GPT2LMHeadModel(config).eval()
    einstruct.restore(fresh, tmp_path, tmp_path)
    ids = torch.arange(8).reshape(1, 8)
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_another_runs_manifest_beside_a_weights_file_does_not_block_it(tmp_path):
    """A folder of several runs' checkpoints with one run's manifest: only a save_pretrained
    folder (or its weights file) is held to the manifest beside it."""
    small, large = _square("low_rank", rank=2), _square("low_rank", rank=4)
    einstruct.save_manifest(small, tmp_path)
    torch.save(large.state_dict(), tmp_path / "run2.pt")
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    einstruct.restore(fresh, einstruct.runtime.manifest.model_manifest(large), tmp_path / "run2.pt")
    x = torch.randn(3, 64)
    torch.testing.assert_close(fresh(x), large(x), rtol=0, atol=0)


def test_another_programs_config_json_beside_the_manifest_is_not_read(tmp_path):
    model = _square("low_rank", rank=2)
    einstruct.save_manifest(model, tmp_path)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "config.json").write_text('{"lr": NaN, "epochs": 3}')  # json.dump writes NaN
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    einstruct.restore(fresh, tmp_path, tmp_path / "model.pt")
    x = torch.randn(3, 64)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_an_extra_key_on_a_plain_layer_is_not_called_an_unlisted_layer():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8, bias=False))
    einstruct.replace_linear(model, "low_rank", select=["0"], rank=2)
    state = {**model.state_dict(), "2.bias": torch.zeros(8)}
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8, bias=False))
    with pytest.raises(ParameterError, match="has keys the model lacks: 2.bias"):
        einstruct.restore(fresh, einstruct.runtime.manifest.model_manifest(model), state)


#: every axis 8: the stored axis orders of a layer planned for 1 token and for 2048 differ,
#: with the same shapes
EIGHTS = """structure btt8(d = 64, rank = 8):
    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]
    where g = a = f = e = d^(1/2), r = rank
"""


def _generated(tmp_path, name: str, batch: int, backend: str = "torch"):
    from einstruct.runtime.build import module_source

    (tmp_path / f"{name}.py").write_text(module_source(einstruct.load(EIGHTS), batch=batch, backend=backend))
    sys.path.insert(0, str(tmp_path))
    try:
        return __import__(name).Btt8
    finally:
        sys.path.remove(str(tmp_path))


def test_weights_of_a_layer_planned_for_another_batch_load_in_this_layers_axis_order(tmp_path):
    one, many = _generated(tmp_path, "planned1", 1), _generated(tmp_path, "planned2048", 2048)
    assert one.factor_axes != many.factor_axes  # the same shapes, other axis orders
    torch.manual_seed(0)
    source, target = torch.nn.Sequential(one()), torch.nn.Sequential(many())
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    x = torch.randn(5, 64)
    torch.testing.assert_close(target(x), source(x))  # loaded as stored: 1.9 off
    state = source.state_dict()
    state._metadata["0"]["einstruct_factor_axes"] = {"A": ["g", "a"], "B": ["f", "g", "r", "e"]}
    with pytest.raises(RuntimeError, match=r"0\.A: the state dict stores it with axes"):
        target.load_state_dict(state)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_manifest_of_a_generated_files_layer_keeps_its_planned_batch_and_backend(tmp_path, backend):
    cls = _generated(tmp_path, f"file_{backend}", 1, backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(cls(bias=False)).eval()
    einstruct.save_manifest(model, tmp_path / "einstruct.json")
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False))
    state = dict(model.state_dict())  # as a safetensors file holds it: no metadata
    einstruct.restore(fresh, tmp_path / "einstruct.json", state)
    assert type(fresh[0]).factor_axes == cls.factor_axes
    assert hasattr(fresh[0], "kernels") == (backend == "triton")
    x = torch.randn(5, 64)
    assert torch.equal(fresh(x), model(x))


def test_a_generated_file_regenerated_after_its_import_cannot_describe_the_layer(tmp_path):
    # the same factor shapes, another map: the manifest would describe other weights
    cls = _generated(tmp_path, "regenerated", 2048)
    model = torch.nn.Sequential(cls(bias=False))
    einstruct.summary(model)  # reads the header before the file changes: must not be kept
    from einstruct.runtime.build import module_source

    other = EIGHTS.replace("y[f, e]", "y[e, f]")
    (tmp_path / "regenerated.py").write_text(module_source(einstruct.load(other), batch=2048))
    with pytest.raises(ParameterError, match="now holds another spec") as error:
        einstruct.save_manifest(model, tmp_path / "after.json")
    assert "restart" in error.value.hint


def _planned_for(batch: int) -> torch.nn.Sequential:
    """A layer of EIGHTS compiled for ``batch`` tokens (its factors' axis order depends on it)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(einstruct.compile(EIGHTS, batch=batch)(bias=False)).eval()


def test_a_manifest_records_the_axes_each_factor_is_stored_with():
    one = _planned_for(1)
    entry = einstruct.runtime.model_manifest(one)["layers"][0]
    assert entry["batch"] == 1
    assert entry["factor_axes"] == {f: list(axes) for f, axes in type(one[0]).factor_axes.items()}


@pytest.mark.parametrize("weights", ["w.pt", "folder", "model.safetensors"])
def test_weights_of_a_layer_planned_for_one_token_restore_with_a_manifest_planned_for_many(tmp_path, weights):
    """The same structure planned for 1 and for 2,048 tokens stores equal-shaped factors in
    other axis orders; restore read them in the new layer's order (1.68 off). A .pt keeps
    torch's metadata, which records the stored axes; a safetensors folder has none: the
    manifest saved beside it records them."""
    from safetensors.torch import save_file

    one, many = _planned_for(1), _planned_for(2048)
    assert type(one[0]).factor_axes != type(many[0]).factor_axes
    torch.save(one.state_dict(), tmp_path / "w.pt")
    save_file(dict(one.state_dict()), tmp_path / "model.safetensors")
    einstruct.save_manifest(one, tmp_path)  # the folder's own manifest: planned for 1
    other = einstruct.runtime.model_manifest(many)  # the same structure planned for 2,048
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)).eval()
    einstruct.restore(fresh, other, tmp_path if weights == "folder" else tmp_path / weights)
    assert type(fresh[0]).factor_axes == type(many[0]).factor_axes
    x = torch.randn(5, 64)
    torch.testing.assert_close(fresh(x), one(x))


@pytest.mark.parametrize("metadata", [True, False], ids=["torch metadata", "manifest only"])
def test_factors_of_another_shape_that_a_permutation_matches_are_loaded(metadata):
    """An entry's batch edited (1 token): its layer stores btt's factors with other shapes
    (8, 8, 8, 2) than the weights (8, 8, 2, 8); both the weights' metadata and the
    manifest say how they are stored, so they are permuted, not refused."""
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(64, 64)).eval()
    einstruct.replace_linear(source, "btt", rank=2)
    manifest = einstruct.runtime.model_manifest(source)
    manifest["layers"][0]["batch"] = 1
    state = source.state_dict() if metadata else dict(source.state_dict())
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64)).eval()
    einstruct.restore(fresh, manifest, state)
    assert fresh[0].A.shape != source[0].A.shape
    x = torch.randn(5, 64)
    torch.testing.assert_close(fresh(x), source(x))


def test_a_manifest_without_factor_axes_loads_as_before(tmp_path):
    """Older manifests record no factor axes: the weights are read in the layer's order."""
    from safetensors.torch import save_file

    one = _planned_for(1)
    old = einstruct.runtime.model_manifest(one)
    del old["layers"][0]["factor_axes"]
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)).eval()
    einstruct.restore(fresh, old, dict(one.state_dict()))
    x = torch.randn(5, 64)
    assert torch.equal(fresh(x), one(x))
    # a folder whose older manifest was planned otherwise: its order cannot be told
    (tmp_path / "einstruct.json").write_text(json.dumps(old))
    save_file(dict(one.state_dict()), tmp_path / "model.safetensors")
    other = einstruct.runtime.model_manifest(_planned_for(2048))
    with pytest.raises(ParameterError, match="saved with another manifest"):
        einstruct.restore(torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)), other, tmp_path)


def test_factors_whose_recorded_axes_are_not_the_layers_are_refused():
    one = _planned_for(1)
    state = one.state_dict()
    state._metadata["0"]["einstruct_factor_axes"]["A"] = ["g", "a", "f", "x"]
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False))
    manifest = einstruct.runtime.model_manifest(one)
    with pytest.raises(
        ParameterError, match=r"'0\.A' is stored with axes \['g', 'a', 'f', 'x'\] \(its metadata\)"
    ):
        einstruct.restore(fresh, manifest, state)
    assert isinstance(fresh[0], torch.nn.Linear)


def test_a_value_the_models_dtype_cannot_hold_is_refused_by_name():
    """Checked as loaded: a float32 1e6 is finite, and infinite in a float16 model."""
    model = _converted()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mix.A"].view(-1)[0] = 1e6
    fresh = Block().half()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(
        ParameterError, match=r"'mix\.A' holds values too large for the model's torch\.float16"
    ):
        einstruct.restore(fresh, einstruct.runtime.model_manifest(model), state)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    einstruct.restore(Block().double(), einstruct.runtime.model_manifest(model), state)  # float64 holds it


def test_the_runtime_reads_the_metadata_key_the_layer_writes():
    from einstruct.nn.layer import AXES_KEY as written
    from einstruct.runtime.factor_order import AXES_KEY as read

    assert read == written
