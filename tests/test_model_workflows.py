"""The runtime as a user with a real model meets it: parts of encoder-decoder models, tied heads
replaced, manifests that disagree with the model, frozen layers, new checkpoint folders, and the
package's documented attribute paths. Tiny configs; each test compares with an independent
reference (the model's own count, the outputs before saving)."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import einstruct

transformers = pytest.importorskip("transformers")


def _t5() -> nn.Module:
    config = transformers.T5Config(
        d_model=16, d_ff=32, d_kv=4, num_layers=1, num_heads=4, vocab_size=50, decoder_start_token_id=0
    )
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config).eval()


def _bart() -> nn.Module:
    config = transformers.BartConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        vocab_size=50,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.BartForConditionalGeneration(config).eval()


def _seq2seq_inputs() -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(3, 50, (2, 6), generator=generator),
        "decoder_input_ids": torch.randint(3, 50, (2, 4), generator=generator),
    }


def _names(config) -> set[str]:
    return {n for entry in config.einstruct["layers"] for n in entry["names"]}


def test_t5s_encoder_converted_after_the_model_is_saved_in_the_models_manifest(tmp_path):
    """T5's encoder holds a copy of the config: its layers went into that copy, which
    save_pretrained never writes, and the checkpoint no longer loaded."""
    model = _t5()
    einstruct.replace_linear(model, "low_rank", rank=2, select="decoder.*")
    einstruct.replace_linear(model.encoder, "low_rank", rank=2)
    assert "encoder.block.0.layer.0.SelfAttention.q" in _names(model.config)
    inputs = _seq2seq_inputs()
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(transformers.T5ForConditionalGeneration, tmp_path)
    torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_an_encoder_converted_alone_warns_and_writes_no_manifest_of_its_own_names(tmp_path, family):
    """BART's encoder shares the model's config: its manifest, naming 'layers.0...' from the
    encoder, went into config.json and the checkpoint could not load; T5's went nowhere.
    Both converted silently."""
    model = _bart() if family == "bart" else _t5()
    encoder = model.model.encoder if family == "bart" else model.encoder
    with pytest.warns(UserWarning, match="manifest_to_config"):
        einstruct.replace_linear(encoder, "low_rank", rank=2)
    assert getattr(model.config, "einstruct", None) is None
    einstruct.manifest_to_config(model)  # what the warning says to do
    inputs = _seq2seq_inputs()
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(type(model), tmp_path)
    torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)


def test_a_model_inside_a_converted_model_keeps_a_manifest_of_its_own(tmp_path):
    """A BERT encoder inside an encoder-decoder model is a model itself: converted after the
    outer one, its config gets its own manifest (names from the encoder, so it saves and
    loads alone) and the outer model's manifest lists its layers too."""
    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    torch.manual_seed(0)
    encoder = transformers.BertModel(transformers.BertConfig(vocab_size=50, **small))
    decoder_config = transformers.BertConfig(
        vocab_size=50, is_decoder=True, add_cross_attention=True, **small
    )
    model = transformers.EncoderDecoderModel(
        encoder=encoder, decoder=transformers.BertLMHeadModel(decoder_config)
    )
    einstruct.replace_linear(model, "low_rank", rank=2, select="decoder.*")
    einstruct.replace_linear(model.encoder, "low_rank", rank=2)
    own = einstruct.manifest_to_config(model.encoder)
    assert "encoder.layer.0.attention.self.query" in {n for e in own["layers"] for n in e["names"]}
    assert "encoder.encoder.layer.0.attention.self.query" in _names(model.config)
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    expected = model.encoder.eval()(ids).last_hidden_state
    model.encoder.save_pretrained(tmp_path)
    loaded = einstruct.from_pretrained(transformers.BertModel, tmp_path).eval()
    torch.testing.assert_close(loaded(ids).last_hidden_state, expected, rtol=0, atol=0)


def test_a_tied_head_replaced_is_not_counted_twice_in_the_models_params_before():
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    before = sum(p.numel() for p in model.parameters())  # the tied weight once
    report = einstruct.replace_linear(model, "low_rank", rank=2, skip_tied=False)
    after = sum(p.numel() for p in model.parameters())
    for totals in (report.totals(), einstruct.summary(model).totals()):
        assert (totals["model_params_before"], totals["model_params_after"]) == (before, after)


def test_a_weight_two_replaced_layers_share_is_counted_once_in_params_before():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
            self.b.weight = self.a.weight

    model = Shared()
    before = sum(p.numel() for p in model.parameters())  # the shared weight once
    report = einstruct.replace_linear(model, "low_rank", ["a", "b"], rank=2, skip_tied=False)
    after = sum(p.numel() for p in model.parameters())
    for totals in (report.totals(), einstruct.summary(model).totals()):
        assert (totals["model_params_before"], totals["model_params_after"]) == (before, after)


def _converted() -> tuple[nn.Module, dict, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 8))
    einstruct.replace_linear(model, "low_rank", rank=2)
    return model, einstruct.runtime.model_manifest(model), model.state_dict()


def _fresh() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 8))


@pytest.mark.parametrize("with_state", [False, True])
def test_a_manifest_whose_bias_disagrees_with_the_layer_is_refused_by_field(with_state):
    """Without weights the layer silently gained a bias the architecture lacks; with them
    the error blamed the state dict's keys."""
    _, manifest, state = _converted()
    edited = copy.deepcopy(manifest)
    edited["layers"][0]["bias"] = True
    fresh = _fresh()
    before = [(n, id(m)) for n, m in fresh.named_modules()]
    with pytest.raises(einstruct.EinstructError, match=r"layers\[0\]\.bias: true, but layer '0' has no bias"):
        einstruct.restore(fresh, edited, state if with_state else None)
    assert [(n, id(m)) for n, m in fresh.named_modules()] == before


def test_restore_keeps_a_frozen_layer_frozen_as_replace_linear_does():
    model, manifest, state = _converted()
    fresh = _fresh()
    fresh[0].requires_grad_(False)
    fresh[2].bias.requires_grad_(False)  # a trainable weight with a frozen bias stays that way
    einstruct.restore(fresh, manifest, state)
    assert not any(p.requires_grad for p in fresh[0].parameters())
    assert not fresh[2].bias.requires_grad
    assert all(p.requires_grad for n, p in fresh[2].named_parameters() if n != "bias")
    x = torch.randn(3, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_save_manifest_to_a_new_folder_makes_the_folder(tmp_path):
    """docs/security.md: save_manifest(model, "ckpt") then torch.save(..., "ckpt/model.pt");
    the manifest went to a file named ckpt and the torch.save failed."""
    model, _, _ = _converted()
    written = einstruct.save_manifest(model, tmp_path / "ckpt")
    assert written == tmp_path / "ckpt" / "einstruct.json"
    torch.save(model.state_dict(), tmp_path / "ckpt" / "model.pt")
    fresh = _fresh()
    einstruct.restore(fresh, tmp_path / "ckpt", tmp_path / "ckpt" / "model.pt")
    x = torch.randn(3, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert einstruct.save_manifest(model, tmp_path / "m.json") == tmp_path / "m.json"  # a file
    with pytest.raises(einstruct.EinstructError, match="cannot create the checkpoint folder"):
        einstruct.save_manifest(model, tmp_path / "missing" / "ckpt")


def test_the_documented_runtime_paths_work_in_a_fresh_process():
    """docs/converting.md's einstruct.runtime.model_manifest(model) was an AttributeError
    unless something had imported einstruct.runtime first."""
    code = (
        "import einstruct, torch\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 4))\n"
        "einstruct.runtime  # no import of its own\n"
        "print(callable(einstruct.runtime.model_manifest), hasattr(einstruct, 'nope'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_converting_again_says_the_layers_are_already_structured():
    model, _, _ = _converted()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(einstruct.EinstructError) as every:
            einstruct.replace_linear(model, "low_rank", rank=2)
        with pytest.raises(einstruct.EinstructError, match="matches only layers that are already"):
            einstruct.replace_linear(model, "low_rank", rank=2, select="[02]")
    assert "already an einstruct layer" in every.value.hint
