"""Hugging Face models built from small configs (random weights, nothing downloaded): GPT-2
(Conv1D layers, a tied head) and Llama (grouped-query attention: rectangular k/v projections).

The done-when path of docs/converting.md: convert in one call, read the report,
fine-tune from the projected weights, save with ``save_pretrained`` and reload
in a new process.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fresh_python
from reference import dense_from_factors
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

import einstruct

GPT2 = {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 97, "n_positions": 32}
IDS = torch.arange(24).reshape(2, 12) * 7 % 97


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**GPT2, bos_token_id=0, eos_token_id=0)).eval()


def test_gpt2_conv1d_layers_keep_their_function_when_representable():
    spec = "structure b = btt(rank = 2)"
    model = _gpt2().double()
    conv = [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(conv) == 8
    for k, (_, m) in enumerate(conv):
        torch.manual_seed(k)
        layer = einstruct.compile(spec, d_in=m.nx, d_out=m.nf)(dtype=torch.float64)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(dense_from_factors(layer)).T)
    before = model(IDS).logits
    report = einstruct.replace_linear(model, spec)
    assert report.names == [n for n, _ in conv] and {layer.replaces for layer in report.layers} == {"conv1d"}
    assert max(layer.error for layer in report.layers) < 1e-12
    assert [s.name for s in report.skipped] == ["lm_head"]
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model(IDS).logits, before, rtol=1e-9, atol=1e-9)


def test_llama_with_grouped_query_attention_converts_and_fine_tunes():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(config)
    report = einstruct.replace_linear(model, "structure l = low_rank(rank = 8)", exclude=["lm_head"])
    shapes = {(layer.in_features, layer.out_features) for layer in report.layers}
    assert shapes == {(64, 64), (64, 32), (64, 128), (128, 64)}  # k_proj, v_proj: 64 -> 32
    assert len(report.layers) == 14 and all(0 < layer.error < 1 for layer in report.layers)
    opt = torch.optim.AdamW(einstruct.param_groups(model, lr=3e-3))
    losses = []
    for _ in range(8):
        loss = model(IDS, labels=IDS).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_save_pretrained_and_restore_in_a_fresh_process(tmp_path):
    model = _gpt2()
    einstruct.replace_linear(model, "structure b = btt(rank = 2)", normalize=True, gain=True)
    model.save_pretrained(tmp_path)
    einstruct.save_manifest(model, tmp_path)
    torch.save(model(IDS).logits.detach(), tmp_path / "expected.pt")
    out = fresh_python(
        f"""
import torch, einstruct
from transformers import AutoConfig, AutoModelForCausalLM
path = {str(tmp_path)!r}
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).eval()
report = einstruct.restore(model, path, path)
ids = torch.arange(24).reshape(2, 12) * 7 % 97
print(torch.equal(model(ids).logits, torch.load(path + "/expected.pt")), len(report), report.skipped[0].name)
"""
    )
    assert out.split() == ["True", "8", "lm_head"]


@pytest.mark.parametrize("spec", ["structure k = kronecker()", "structure m = monarch()"])
def test_other_structures_convert_gpt2(spec):
    model = _gpt2()
    report = einstruct.replace_linear(model, spec)
    assert len(report) == 8 and model(IDS).logits.isfinite().all()
