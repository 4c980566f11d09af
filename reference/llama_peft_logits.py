#!/usr/bin/env python3
"""A PEFT LoRA adapter on a Llama-family checkpoint, as PEFT itself loads it, for lora-dist's export tests.

    llama_peft_logits.py BASE_DIR ADAPTER_DIR IDS_FILE OUT

Loads BASE_DIR with transformers (AutoModelForCausalLM: Llama, Qwen2, Mistral per config.json's
model_type; float32, eager attention), PeftModel.from_pretrained(base, ADAPTER_DIR), and runs it in
float64 on `input_ids` of the safetensors IDS_FILE (make_llama_fixture.py's expected.safetensors).
Writes to OUT:
    input_ids               as read
    logits [B, T, V]        float32 copies of the float64 logits
    loss [1]                mean cross-entropy of the logits against IDS_FILE's `targets` (no shift)
    ranks, scalings [L, 7]  the r and scaling PEFT gave each module of layer L, in the order q, k,
                            v, o, gate, up, down _proj (0 for a module it did not adapt)
Needs torch (CPU), transformers, peft, safetensors: launch/setup --python.
"""
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging
from peft import PeftModel

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore")

MODULES = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
           ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    base_dir, adapter_dir, ids_file, out = sys.argv[1:]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    pm = PeftModel.from_pretrained(base, adapter_dir).double().eval()
    io = load_file(ids_file)
    ids = io["input_ids"]
    with torch.no_grad():
        logits64 = pm(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits64.reshape(-1, logits64.shape[-1]), io["targets"].reshape(-1))
    logits = logits64.float().contiguous()
    layers = pm.base_model.model.model.layers
    ranks = torch.zeros(len(layers), len(MODULES), dtype=torch.float32)
    scalings = torch.zeros_like(ranks)
    for i, layer in enumerate(layers):
        for j, (part, name) in enumerate(MODULES):
            m = getattr(getattr(layer, part), name)
            if hasattr(m, "r") and "default" in m.r:
                ranks[i, j], scalings[i, j] = m.r["default"], m.scaling["default"]
    save_file({"input_ids": ids, "logits": logits, "loss": loss.float().reshape(1), "ranks": ranks, "scalings": scalings}, out)
    print("llama_peft_logits.py: done", file=sys.stderr)


if __name__ == "__main__":
    main()
