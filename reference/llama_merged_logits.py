#!/usr/bin/env python3
"""Logits of a model directory as transformers loads it, for lora-dist's merge tests.

    llama_merged_logits.py MODEL_DIR IDS_AND_OUT.safetensors

MODEL_DIR is what `lora-dist merge` wrote (config.json, model.safetensors, tokenizer files).
IDS_AND_OUT.safetensors holds input_ids [B, T] (whole numbers, int64 or float32 as lora-dist
writes them); the script adds to it, in place:
    logits [B, T, V] float32   AutoModelForCausalLM.from_pretrained(MODEL_DIR) in float64
    eos [1] int64              the end-of-text id of AutoTokenizer.from_pretrained(MODEL_DIR)
The model class is the one config.json names (LlamaForCausalLM, Qwen2ForCausalLM...), so a
config.json or tensor names transformers would not accept fail here, as would missing tensors
(transformers is asked to report every weight it had to initialise).
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    model_dir, path = sys.argv[1], sys.argv[2]
    tensors = load_file(path)
    ids = tensors["input_ids"].to(torch.int64)
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight" or not model.config.tie_word_embeddings]
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        sys.exit(f"{model_dir}: missing {missing}, unexpected {info['unexpected_keys']}, mismatched {info['mismatched_keys']}")
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    tok = AutoTokenizer.from_pretrained(model_dir)
    tensors["logits"] = logits.to(torch.float32).contiguous()
    tensors["eos"] = torch.tensor([tok.eos_token_id], dtype=torch.int64)
    save_file(tensors, path)
    print(f"{type(model).__name__}: logits {list(logits.shape)}, eos {tok.eos_token_id}")


if __name__ == "__main__":
    main()
