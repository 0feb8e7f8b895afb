"""Convert GPT-2 (built from its config: random weights, nothing downloaded) to BTT, print the report,
fine-tune a few steps, save with save_pretrained and reload.

Run: python examples/convert_gpt2.py [--small] [--out DIR]     (needs: pip install transformers)

GPT-2's attention and MLP layers are Hugging Face ``Conv1D`` (weight stored
transposed); its head is tied to the token embedding. One call converts every
Conv1D (768 -> 2304, 768 -> 768, 768 -> 3072, 3072 -> 768) with its own widths,
projects each weight, skips the tied head and says so. ``--small`` uses a
2-layer, 128-wide GPT-2 for a quick run. With a pretrained checkpoint, build
the model with ``GPT2LMHeadModel.from_pretrained(...)`` instead; the rest is
the same.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import einstruct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer, 128-wide GPT-2")
    parser.add_argument("--out", default=None, help="where to save (default: a temporary directory)")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(n_embd=128, n_layer=2, n_head=4) if args.small else GPT2Config()  # gpt2 (124M)
    model = GPT2LMHeadModel(config)

    start = time.perf_counter()
    report = einstruct.replace_linear(model, "structure b = btt(rank = 4)", normalize=True, gain=True)
    print(report)
    print(f"converted in {time.perf_counter() - start:.1f} s")

    ids = torch.randint(0, config.vocab_size, (4, 64))
    opt = torch.optim.AdamW(einstruct.param_groups(model, lr=1e-3, weight_decay=0.01))
    for step in range(3):  # fine-tuning runs from the projected weights
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.3f}")

    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or tmp
        model.save_pretrained(path)  # the weights (model.safetensors) and config.json
        einstruct.save_manifest(model, path)  # einstruct.json: which layers are which structure
        fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).eval()
        einstruct.restore(fresh, path, path)  # the same replacements, then the saved weights
        same = torch.equal(fresh(ids).logits, model(ids).logits)
    print(f"saved and reloaded: outputs identical: {same}")


if __name__ == "__main__":
    main()
