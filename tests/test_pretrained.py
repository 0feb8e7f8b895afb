"""Hugging Face round trips of converted models (GPT-2 from a small config, nothing downloaded):
the manifest travels in config.json, ``einstruct.from_pretrained`` rebuilds and loads in one call,
mismatched checkpoints are refused, and the Trainer trains with ``param_groups``.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import einstruct
from einstruct.errors import ParameterError

GPT2 = {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 97, "n_positions": 32}
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
IDS = torch.arange(24).reshape(2, 12) * 7 % 97


def _converted() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**GPT2, **NO_DROPOUT, bos_token_id=0, eos_token_id=0)).eval()
    einstruct.replace_linear(model, "structure b = btt(rank = 2)", normalize=True, gain=True)
    with torch.no_grad():  # move every parameter off its projected start, so a reload cannot guess it
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("shard", [None, "40KB"])
@pytest.mark.parametrize("model_class", [GPT2LMHeadModel, AutoModelForCausalLM])
def test_save_pretrained_alone_carries_the_structure(tmp_path, model_class, shard):
    model = _converted()
    expected = model(IDS).logits
    model.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert len(saved["einstruct"]["layers"]) == 8  # every Conv1D of the two blocks
    assert not (tmp_path / "einstruct.json").exists()
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = einstruct.from_pretrained(model_class, tmp_path)
    assert type(loaded.transformer.h[0].mlp.c_fc) is type(model.transformer.h[0].mlp.c_fc)
    assert not loaded.training
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_a_plain_checkpoint_has_no_manifest_to_restore(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**GPT2)).save_pretrained(tmp_path)
    with pytest.raises(ParameterError, match="holds no einstruct manifest"):
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda raw: raw.replace('"normalize": true', '"normalize": true, "normalize": false', 1),
            "key 'normalize' appears twice",
        ),
        (
            lambda raw: raw[: raw.rindex("}")] + ', "junk": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "nests too deeply",
        ),
        (lambda raw: "[1, 2]", "not a config object"),
        (lambda raw: raw.replace('"n_embd": 64', '"n_embd": NaN', 1), "NaN is not a JSON number"),
    ],
    ids=["duplicate key", "deep nesting", "not an object", "NaN"],
)
def test_config_json_is_read_as_strictly_as_a_manifest(tmp_path, edit, message):
    """transformers' reader lets the last of two equal keys win and fails on deep nesting
    with a traceback: the manifest in config.json goes through einstruct's strict reader."""
    _converted().save_pretrained(tmp_path)
    raw = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(edit(raw))
    with pytest.raises(einstruct.EinstructError, match=message):
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path)


@pytest.mark.parametrize("dtype", ["float16", torch.int8, 3, torch.complex64, torch.float8_e4m3fn])
def test_from_pretrained_takes_only_a_floating_dtype(tmp_path, dtype):
    _converted().save_pretrained(tmp_path)
    with pytest.raises(ParameterError, match="dtype must be a floating torch.dtype") as error:
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path, dtype=dtype)
    assert "torch.float16, torch.bfloat16, torch.float32, torch.float64" in error.value.message


def test_from_pretrained_takes_transformers_auto_dtype_as_the_saved_one(tmp_path):
    model = _converted().to(torch.float64)
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(GPT2LMHeadModel, tmp_path, dtype="auto")  # refused before
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    ids = torch.arange(8).reshape(1, 8)
    assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)


def test_weights_that_do_not_match_the_rebuilt_layers_are_refused(tmp_path):
    model = _converted()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    spec = config["einstruct"]["layers"][0]["spec"]
    assert "rank = 2," in spec
    config["einstruct"]["layers"][0]["spec"] = spec.replace(
        "rank = 2,", "rank = 3,"
    )  # layer kinds no longer match
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ParameterError, match=r"transformer\.h\.0\.attn\.c_attn\.A"):
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path)


def test_the_trainer_trains_with_param_groups_and_its_checkpoint_reloads(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _converted().double().train()
    reference = _converted().double().train()
    # the Trainer divides the loss by the count of labels before the shift: ignore the first,
    # which no token predicts, so that it is the model's own mean loss
    labels = IDS.clone()
    labels[:, 0] = -100
    data = [{"input_ids": IDS[i], "labels": labels[i]} for i in range(2)]
    args = TrainingArguments(
        str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=3, lr_scheduler_type="constant",
        use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", max_grad_norm=0.0,
    )  # fmt: skip
    optimizer = einstruct.optimizer(model, lr=1e-2, weight_decay=0.1)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))
    trainer.train()
    # the same three steps by hand: the whole dataset is one batch, in any order
    groups = einstruct.param_groups(reference, lr=1e-2, weight_decay=0.1)
    assert len({g["lr"] for g in groups}) > 2  # muP: not one learning rate for all
    by_hand = torch.optim.AdamW(groups, lr=1e-2)
    for _ in range(3):
        by_hand.zero_grad()
        reference(IDS, labels=labels).loss.backward()
        by_hand.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
    trainer.save_model(str(tmp_path / "final"))
    loaded = einstruct.from_pretrained(GPT2LMHeadModel, tmp_path / "final")
    torch.testing.assert_close(loaded(IDS).logits, model.eval()(IDS).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_head", 5, "ValueError: `embed_dim` must be divisible by num_heads"),
        ("activation_function", "bogus", "KeyError: 'bogus'"),
        ("dtype", "int64", r"config.json asks for dtype 'int64', not one a model is built in \(float16, bf"),
        ("dtype", "float8_e4m3fn", "config.json asks for dtype 'float8_e4m3fn', not one a model is built in"),
    ],
)
def test_a_config_transformers_cannot_build_is_an_einstruct_error(tmp_path, field, value, message):
    """transformers' own errors while it builds the model (a ValueError, a KeyError, a
    TypeError from torch's default dtype) name config.json, with no traceback."""
    _converted().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(einstruct.EinstructError, match=message) as error:
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path)
    assert "config.json" in error.value.message and str(tmp_path) in error.value.message
    if field == "dtype":  # a dtype given overrides the saved one
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path, dtype=torch.float32)


def test_a_weight_too_large_for_the_dtype_asked_for_is_refused(tmp_path):
    model = _converted()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.A.view(-1)[0] = 1e6  # finite in float32, not in float16
    model.save_pretrained(tmp_path)
    with pytest.raises(
        ParameterError, match=r"c_proj\.A' holds values too large for the model's torch\.float16"
    ):
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path, dtype=torch.float16)


class _Largest(TorchDispatchMode):
    """The most elements of any tensor with storage an operation makes while it is on."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple | list) else (out,):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.most = max(self.most, value.numel())
        return out


@pytest.mark.parametrize("edit", ["rank", "n_embd"])
def test_an_edited_config_is_refused_before_anything_of_its_size_is_allocated(tmp_path, edit):
    """rank = 2 edited to 4,000 (or n_embd to 2,048) built every layer (gigabytes) before
    the shapes were compared; the compiled classes' tables (and the model built on the
    meta device) give the shapes without allocating them."""
    _converted().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if edit == "rank":
        for entry in config["einstruct"]["layers"]:
            entry["spec"] = entry["spec"].replace("rank = 2,", "rank = 4000,")
        message = r"other shapes at: transformer\.h\.0\.attn\.c_attn\.A"
    else:
        config.update(n_embd=2048, n_inner=8192)
        message = "maps 2048 -> 6144, the manifest's 64 -> 192"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with _Largest() as largest, pytest.raises(ParameterError, match=message):
        einstruct.from_pretrained(GPT2LMHeadModel, tmp_path)
    assert largest.most < 100_000  # the saved model's largest tensor: 97 x 64
    if edit == "rank":  # restore: the manifest's rank edited, the weights as saved
        from safetensors.torch import load_file

        manifest = einstruct.runtime.model_manifest(_converted())
        manifest["layers"][0]["spec"] = manifest["layers"][0]["spec"].replace("rank = 2,", "rank = 4000,")
        state = load_file(tmp_path / "model.safetensors")
        with _Largest() as largest, pytest.raises(ParameterError, match=message):
            einstruct.restore(GPT2LMHeadModel(GPT2Config(**GPT2)), manifest, state)
        assert largest.most < 100_000


def test_layers_planned_for_another_batch_load_the_saved_factors_permuted(tmp_path):
    """config.json's entries edited to plan for one token: their layers store the
    factors in other axis orders (and other shapes); safetensors has no torch metadata,
    the manifest's factor_axes say how the weights are stored."""
    model = _converted()
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for entry in config["einstruct"]["layers"]:
        entry["batch"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = einstruct.from_pretrained(GPT2LMHeadModel, tmp_path)
    layer = loaded.transformer.h[0].attn.c_proj  # 64 -> 64: (8, 8, 2, 8) stored as (8, 8, 8, 2)
    assert type(layer).factor_axes != type(model.transformer.h[0].attn.c_proj).factor_axes
    torch.testing.assert_close(loaded(IDS).logits, expected)
