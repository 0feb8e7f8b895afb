"""Hugging Face round trips beyond GPT-2 (tiny configs, nothing downloaded): model families whose
keys transformers renames when it saves, heads other than the saved one, submodules converted on
their own, configs shared by two models, generation settings and registered adapters."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageClassification

import einstruct
from einstruct.errors import EinstructError
from einstruct.runtime.adapters import ADAPTERS

LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 61,
}
IDS = torch.arange(16).reshape(2, 8) * 5 % 61


def _nudged(model):
    """Every parameter moved off its start, so a reload cannot match by accident."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def _llama(seed=0, **extra):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(transformers.LlamaConfig(**{**LLAMA, **extra})).eval()


@pytest.mark.parametrize("family", ["gpt_neox", "vit"])
def test_families_whose_keys_transformers_renames_on_save_reload_exactly(tmp_path, family):
    torch.manual_seed(0)
    if family == "gpt_neox":  # lm_head is saved as embed_out
        config = transformers.GPTNeoXConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, vocab_size=61
        )
        auto, inputs = AutoModelForCausalLM, {"input_ids": IDS}
    else:  # vit.layers.N.attention.q_proj is saved as vit.encoder.layer.N.attention.attention.query
        config = transformers.ViTConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
            image_size=16, patch_size=8, num_labels=3,
        )  # fmt: skip
        auto, inputs = AutoModelForImageClassification, {"pixel_values": torch.randn(2, 3, 16, 16)}
    model = auto.from_config(config)
    einstruct.replace_linear(model, "btt", rank=2)
    _nudged(model)
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(auto, tmp_path)
    torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)


def test_a_family_transformers_saves_converted_loads_through_transformers(tmp_path):
    """Mixtral's fused experts are saved split per expert: transformers converts them back,
    the structured attention comes from the checkpoint; outputs equal, and a checkpoint
    missing a dense weight is refused rather than left at random."""
    torch.manual_seed(0)
    config = transformers.MixtralConfig(**LLAMA, num_local_experts=2, num_experts_per_tok=1)
    model = AutoModelForCausalLM.from_config(config)
    einstruct.replace_linear(model, "low_rank", select="*.self_attn.*", rank=4)
    _nudged(model)
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)
    assert type(loaded.model.layers[0].self_attn.q_proj) is type(model.model.layers[0].self_attn.q_proj)
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "norm" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(EinstructError, match="which transformers would leave at random"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)


def test_the_base_model_loads_from_a_checkpoint_with_a_head(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", rank=4)  # the head too: its entry is not the base's
    _nudged(model)
    expected = model.model(IDS).last_hidden_state
    model.save_pretrained(tmp_path)
    base = einstruct.from_pretrained(AutoModel, tmp_path)
    torch.testing.assert_close(base(IDS).last_hidden_state, expected, rtol=0, atol=0)


def test_another_head_is_refused_naming_the_class_it_was_saved_from(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4)
    model.save_pretrained(tmp_path)
    with pytest.raises(EinstructError, match="load it with that class") as error:
        einstruct.from_pretrained(transformers.AutoModelForSequenceClassification, tmp_path)
    assert "saved from LlamaForCausalLM" in error.value.hint
    assert str(tmp_path) in error.value.message


def test_a_submodule_converted_on_its_own_saves_the_whole_models_manifest(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "btt", select="*.mlp.*", rank=2)
    einstruct.replace_linear(model, "low_rank", select="lm_head", rank=4)
    einstruct.replace_linear(model.model, "low_rank", select="*.self_attn.*", rank=4)  # shares the config
    _nudged(model)
    expected = model(IDS).logits
    names = {n for entry in model.config.einstruct["layers"] for n in entry["names"]}
    assert {"lm_head", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj"} <= names
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)


def test_a_manifest_written_from_the_base_model_loads_into_the_model_with_a_head(tmp_path):
    model = _llama()
    einstruct.replace_linear(model.model, "low_rank", select="*.mlp.*", rank=4)  # names without "model."
    _nudged(model)
    expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)


def test_two_models_built_from_one_config_object_save_their_own_layers(tmp_path):
    config = transformers.LlamaConfig(**LLAMA)
    first = AutoModelForCausalLM.from_config(config)
    second = AutoModelForCausalLM.from_config(config)
    assert first.config is second.config  # transformers shares it
    einstruct.replace_linear(first, "monarch", select="*.mlp.*")
    einstruct.replace_linear(second, "low_rank", select="*.mlp.*", rank=4)
    first.save_pretrained(tmp_path / "first")
    saved = json.loads((tmp_path / "first" / "config.json").read_text())["einstruct"]
    assert all(entry["structure"] == "monarch" for entry in saved["layers"])  # not the second's
    expected = _nudged(first)(IDS).logits
    first.save_pretrained(tmp_path / "first")
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path / "first")
    torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=0)


def test_generation_settings_come_back_with_the_model(tmp_path):
    model = _llama(eos_token_id=5)
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4)
    model.generation_config.max_new_tokens = 3
    model.generation_config.repetition_penalty = 1.5
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    assert (loaded.generation_config.max_new_tokens, loaded.generation_config.repetition_penalty) == (3, 1.5)
    assert loaded.generate(IDS[:1], do_sample=False).shape == model.generate(IDS[:1], do_sample=False).shape


class _Scaled(torch.nn.Module):
    """A linear layer einstruct knows only through an adapter."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)

    def forward(self, x):
        return x @ self.w.T


def test_a_registered_adapter_is_named_in_the_manifest_and_asked_for_on_restore(tmp_path):
    model = torch.nn.Sequential(_Scaled(16, 16), torch.nn.ReLU(), _Scaled(16, 16))
    einstruct.register_adapter("scaled", lambda m: isinstance(m, _Scaled), lambda m: (m.w, None))
    try:
        einstruct.replace_linear(model, "low_rank", rank=2)
        manifest = einstruct.runtime.manifest.model_manifest(model)
        assert [entry.get("adapter") for entry in manifest["layers"]] == ["scaled", "scaled"]
    finally:
        ADAPTERS.pop("scaled")
    fresh = torch.nn.Sequential(_Scaled(16, 16), torch.nn.ReLU(), _Scaled(16, 16))
    with pytest.raises(EinstructError, match="register_adapter\\('scaled'"):
        einstruct.restore(fresh, manifest)


def test_restore_with_the_models_own_manifest_dict_and_its_save_pretrained_folder(tmp_path):
    """config.json is written with sorted keys, so the options came back in another order
    and the folder's own manifest was taken for another one."""
    model = _llama()
    einstruct.replace_linear(model, "btt", select="*.mlp.*", rank=2, normalize=True)
    _nudged(model)
    model.save_pretrained(tmp_path)
    for weights in (tmp_path, tmp_path / "model.safetensors"):
        fresh = _llama(seed=1)
        einstruct.restore(fresh, einstruct.runtime.manifest.model_manifest(model), weights)
        torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_restore_maps_renamed_keys_of_a_save_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        image_size=16, patch_size=8, num_labels=3,
    )  # fmt: skip
    model = AutoModelForImageClassification.from_config(config).eval()
    einstruct.replace_linear(model, "low_rank", rank=4)
    model.save_pretrained(tmp_path)
    fresh = AutoModelForImageClassification.from_config(config).eval()
    einstruct.restore(fresh, tmp_path, tmp_path)
    pixels = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_a_loaded_model_converted_further_keeps_every_layer_in_its_manifest(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="lm_head", rank=4)
    model.save_pretrained(tmp_path / "first")
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path / "first")
    einstruct.replace_linear(loaded.model, "low_rank", select="*.mlp.*", rank=4)  # the base model
    names = {n for entry in loaded.config.einstruct["layers"] for n in entry["names"]}
    assert {"lm_head", "model.layers.0.mlp.up_proj"} <= names  # lm_head was lost
    _nudged(loaded)
    loaded.save_pretrained(tmp_path / "second")
    again = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path / "second")
    torch.testing.assert_close(again(IDS).logits, loaded(IDS).logits, rtol=0, atol=0)


def test_converting_parts_of_a_model_keeps_one_config_and_says_what_to_do(tmp_path):
    """A per-layer loop over attention blocks: each conversion took the blocks for two
    models sharing a config and gave all but the first a copy (settings then changed on
    the model no longer reached them)."""
    model = _llama(num_hidden_layers=2)
    for layer in model.model.layers:
        with pytest.warns(UserWarning, match="manifest_to_config"):
            einstruct.replace_linear(layer.self_attn, "low_rank", rank=4)
    assert all(layer.self_attn.config is model.config for layer in model.model.layers)
    einstruct.manifest_to_config(model)
    _nudged(model)
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_a_base_model_loading_error_keeps_its_hint(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "norm" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(EinstructError) as error:
        einstruct.from_pretrained(AutoModel, tmp_path)
    assert "load it with that class" not in error.value.hint  # the base model loads from any head


def _mixtral(tmp_path, **convert):
    torch.manual_seed(0)
    config = transformers.MixtralConfig(**LLAMA, num_local_experts=2, num_experts_per_tok=1)
    model = AutoModelForCausalLM.from_config(config).eval()
    einstruct.replace_linear(model, "low_rank", select="*.self_attn.*", rank=4, **convert)
    _nudged(model)
    model.save_pretrained(tmp_path)
    return model


def _edited(path, keep=lambda key: True, add=None):
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    save_file({**{k: v for k, v in weights.items() if keep(k)}, **(add or {})}, path / "model.safetensors")


def test_the_converted_path_takes_the_base_model_and_refuses_edits_by_name(tmp_path):
    model = _mixtral(tmp_path)
    base = einstruct.from_pretrained(AutoModel, tmp_path)  # the head's keys are left out
    torch.testing.assert_close(
        base(IDS).last_hidden_state, model.model(IDS).last_hidden_state, rtol=0, atol=0
    )
    q = "model.layers.0.self_attn.q_proj.weight"  # a dense weight beside the structured layer's factors
    _edited(tmp_path, add={q: torch.zeros(32, 32)})
    with pytest.raises(EinstructError, match=f"holds '{q}', a dense weight"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    _edited(tmp_path, keep=lambda k: k != q and "experts.0.w1" not in k)  # an expert's weight gone
    with pytest.raises(EinstructError, match="gate_up_proj"):  # transformers' report, quoted
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)


def test_restore_points_a_converted_family_at_from_pretrained(tmp_path):
    _mixtral(tmp_path)
    fresh = AutoModelForCausalLM.from_config(transformers.MixtralConfig(**LLAMA, num_local_experts=2))
    with pytest.raises(EinstructError, match="einstruct.from_pretrained"):
        einstruct.restore(fresh, tmp_path, tmp_path)


def test_restore_of_a_weights_file_maps_renamed_keys_as_of_its_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, vocab_size=61
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    einstruct.replace_linear(model, "low_rank", rank=4)  # embed_out as well
    model.save_pretrained(tmp_path)
    fresh = AutoModelForCausalLM.from_config(config).eval()
    einstruct.restore(fresh, tmp_path, tmp_path / "model.safetensors")
    torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_a_manifest_with_other_options_is_refused_for_a_folders_weights(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4, normalize=True)
    model.save_pretrained(tmp_path)
    other = _llama()
    einstruct.replace_linear(other, "low_rank", select="*.mlp.*", rank=4)  # normalize=False: another map
    with pytest.raises(EinstructError, match="saved with another manifest"):
        einstruct.restore(_llama(), einstruct.runtime.manifest.model_manifest(other), tmp_path)


def test_a_decoder_layer_converted_after_the_model_updates_its_manifest(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="lm_head", rank=4)
    einstruct.replace_linear(
        model.model.layers[0], "low_rank", select="mlp.*", rank=4
    )  # no config of its own
    names = {n for entry in model.config.einstruct["layers"] for n in entry["names"]}
    assert {"lm_head", "model.layers.0.mlp.up_proj"} <= names
    fresh = _llama()
    with pytest.warns(UserWarning, match="manifest_to_config"):  # no model around it known
        einstruct.replace_linear(fresh.model.layers[0], "low_rank", select="mlp.*", rank=4)


def test_a_base_model_sharing_a_config_with_another_model_is_not_split_from_its_head():
    config = transformers.LlamaConfig(**LLAMA)
    first, second = AutoModelForCausalLM.from_config(config), AutoModelForCausalLM.from_config(config)
    einstruct.replace_linear(first, "low_rank", select="*.mlp.*", rank=4)
    with pytest.warns(UserWarning, match="manifest_to_config"):
        einstruct.replace_linear(second.model, "low_rank", select="*.self_attn.*", rank=4)
    assert second.config is second.model.config


def test_a_bfloat16_load_keeps_the_buffers_transformers_keeps_in_float32(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4)
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(AutoModelForCausalLM, tmp_path, dtype=torch.bfloat16)
    plain = AutoModelForCausalLM.from_config(transformers.LlamaConfig(**LLAMA), dtype=torch.bfloat16)
    assert loaded.model.layers[0].mlp.up_proj.U.dtype == torch.bfloat16
    buffers = {k: v.dtype for k, v in loaded.named_buffers()}
    assert buffers == {k: v.dtype for k, v in plain.named_buffers()}  # RoPE's inv_freq stays as built


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"max_new_tokens": 3, "max_new_tokens": 9}', "appears twice"),
        ('{"temperature": NaN}', "NaN"),
        ("[1, 2]", "not a generation config"),
    ],
)
def test_generation_config_json_is_read_as_strictly_as_config_json(tmp_path, text, problem):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4)
    model.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(text)
    with pytest.raises(EinstructError, match=problem):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)


def test_the_converted_path_checks_the_files_before_transformers_reads_them(tmp_path):
    """transformers casts integer or boolean weights silently and reads generation_config.json
    and pickles itself: the folder is checked by einstruct's rules first."""
    _mixtral(tmp_path)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "model.safetensors")
    expert = next(k for k in weights if "experts.0.w1" in k)
    _edited(tmp_path, keep=lambda k: k != expert, add={expert: (weights[expert] * 1000).to(torch.int32)})
    with pytest.raises(EinstructError, match=f"'{expert}' holds torch.int32 values"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    _edited(tmp_path, keep=lambda k: k != expert, add={expert: weights[expert]})
    (tmp_path / "generation_config.json").write_text('{"max_length": "lots"}')
    with pytest.raises(EinstructError, match="generation_config.json"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    (tmp_path / "generation_config.json").unlink()
    os.mkfifo(tmp_path / "generation_config.json")  # would block a reader, or be skipped silently
    with pytest.raises(EinstructError, match="generation"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)


def test_a_config_of_another_family_is_refused_before_a_model_is_built(tmp_path):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({**saved, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(EinstructError, match="the model the config builds has no layer"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_hidden_layers": "three"}))
    with pytest.raises(EinstructError, match="transformers cannot build a config"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)


@pytest.mark.parametrize("field", ["num_hidden_layers", "text_config"])
def test_a_config_asking_for_far_more_layers_than_the_checkpoint_holds_is_refused_at_once(tmp_path, field):
    model = _llama()
    einstruct.replace_linear(model, "low_rank", select="*.mlp.*", rank=4)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    if field == "text_config":  # a count nested in a sub-config is read too
        edited = {**saved, "text_config": {"num_hidden_layers": 10**6}}
    else:
        edited = {**saved, field: 10**6}
    (tmp_path / "config.json").write_text(json.dumps(edited))
    started = time.perf_counter()
    with pytest.raises(EinstructError, match=r"num_hidden_layers = 1,000,000, far more than") as error:
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)
    assert time.perf_counter() - started < 30  # building the model first took minutes
    assert str(tmp_path.name) in error.value.message
    # a count up to the floor still builds (and then fails on its missing weights, as before)
    (tmp_path / "config.json").write_text(json.dumps({**saved, "num_hidden_layers": 3}))
    with pytest.raises(EinstructError, match="layers.1"):
        einstruct.from_pretrained(AutoModelForCausalLM, tmp_path)


def test_restore_of_a_converted_familys_weights_under_another_name_points_at_from_pretrained(tmp_path):
    _mixtral(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "weights.safetensors")
    fresh = AutoModelForCausalLM.from_config(transformers.MixtralConfig(**LLAMA, num_local_experts=2))
    with pytest.raises(EinstructError, match="has keys the model lacks") as error:
        einstruct.restore(fresh, tmp_path, tmp_path / "weights.safetensors")
    assert "einstruct.from_pretrained" in error.value.hint
