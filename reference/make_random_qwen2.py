#!/usr/bin/env python3
"""A stand-in for a downloaded Qwen2.5-0.5B when none is at hand: a random-init Qwen2ForCausalLM
with Qwen2.5-0.5B's attention layout (14 query heads, 2 key/value heads, q/k/v biases, tied
embeddings, its MLP width, rope_theta and context) at a small width and depth, saved the way
transformers saves it (config.json, model.safetensors), with the byte-level BPE tokenizer files of
another directory (e.g. the one reference/make_random_gpt2.py writes) copied beside it.
lora-dist's `--base DIR` reads it as it reads the real download, and accepts the same --tp degrees.

  make_random_qwen2.py OUT --tokenizer DIR [--n-layer 2] [--head-dim 8] [--seed 0]

Needs torch (CPU) and transformers: launch/setup --python.
"""
import argparse, json, os, shutil
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# Qwen2.5-0.5B's config.json, except the width, depth and vocabulary.
HEADS, KV_HEADS, INTERMEDIATE, CONTEXT, ROPE_THETA = 14, 2, 4864, 32768, 1000000.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--tokenizer", required=True, help="directory with tokenizer.json (and tokenizer_config.json)")
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=8, help="width per head (Qwen2.5-0.5B: 64)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]:
        src = os.path.join(a.tokenizer, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(a.out, name))
    tok = json.load(open(os.path.join(a.tokenizer, "tokenizer.json"), encoding="utf-8"))
    vocab = max(list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]) + 1
    vocab = -(-vocab // 64) * 64          # padded to a multiple of 64, as Qwen pads its vocabulary
    torch.manual_seed(a.seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=HEADS * a.head_dim, intermediate_size=INTERMEDIATE,
                      num_hidden_layers=a.n_layer, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                      max_position_embeddings=CONTEXT, rope_theta=ROPE_THETA, tie_word_embeddings=True,
                      rms_norm_eps=1e-6, hidden_act="silu")
    Qwen2ForCausalLM(cfg).save_pretrained(a.out)
    print(f"wrote {a.out}: Qwen2 architecture, {a.n_layer} layers, d {cfg.hidden_size}, "
          f"{HEADS} heads, {KV_HEADS} key/value heads, MLP {INTERMEDIATE}, vocabulary {vocab}")


if __name__ == "__main__":
    main()
