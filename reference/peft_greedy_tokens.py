#!/usr/bin/env python3
"""PEFT's greedy tokens for prompts, each alone (a batch of one, no padding) with its own LoRA
adapter or the bare base. Prints one JSON line: {"tokens": [[id, ...], ...]}, the ids generated for
each case in order, up to (not including) end-of-text.

  peft_greedy_tokens.py --base BASE --cases FILE --max-tokens K --eos ID

BASE: a lora-dist GPT-2 safetensors file (as reference/peer_serve_peft.py reads it) or a Hugging
Face directory (GPT-2 or the Llama family, AutoModelForCausalLM). FILE is JSON,
[{"adapter": PEFT_DIR or null, "ids": [prompt id, ...]}, ...]: the prompts come tokenized, so the
tokenizer is not under test. ID: end-of-text, which ends generation.
Tests/LoRADistTests/Serve/ServePEFTParityTests.swift compares these with the serving engine's.
"""
import argparse, json, os, sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_serve_peft import load_base  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--eos", type=int, required=True)
    args = p.parse_args()
    from peft import PeftModel
    if os.path.isdir(args.base):
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    else:
        base = load_base(args.base)[0]
    eos = args.eos
    cases = json.load(open(args.cases, encoding="utf-8"))
    dirs = sorted({c["adapter"] for c in cases if c["adapter"]})
    if not dirs:
        sys.exit("peft_greedy_tokens: at least one case needs an adapter")
    names = {d: f"a{i}" for i, d in enumerate(dirs)}
    model = PeftModel.from_pretrained(base, dirs[0], adapter_name=names[dirs[0]])
    for d in dirs[1:]:
        model.load_adapter(d, adapter_name=names[d])
    model.eval()
    out = []
    for c in cases:
        ids = torch.tensor([c["ids"]])
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_tokens,
                  do_sample=False, eos_token_id=eos, pad_token_id=eos)
        with torch.no_grad():
            if c["adapter"]:
                model.set_adapter(names[c["adapter"]])
                row = model.generate(**kw)[0, ids.shape[1]:].tolist()
            else:
                with model.disable_adapter():
                    row = model.generate(**kw)[0, ids.shape[1]:].tolist()
        out.append(row[:row.index(eos)] if eos in row else row)
    print(json.dumps({"tokens": out}))


if __name__ == "__main__":
    main()
