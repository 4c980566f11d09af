#!/usr/bin/env python3
"""A stand-in for a downloaded GPT-2 when none is at hand: a random-init GPT2LMHeadModel of GPT-2's
architecture and a GPT-2 byte-level BPE tokenizer trained on some text, both saved the way
transformers saves them (config.json, model.safetensors, vocab.json, merges.txt, tokenizer.json).
lora-dist's `--base DIR` reads such a directory exactly as it reads a real GPT-2 download.

  make_random_gpt2.py OUT --text FILE [FILE...] [--vocab 2000] [--n-embd 128] [--n-layer 4]
                      [--n-head 4] [--n-positions 256] [--seed 0]

Needs torch (CPU), transformers and tokenizers: launch/setup --python.
"""
import argparse, json, os
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

EOT = "<|endoftext|>"


def texts(files):
    """Lines of plain text files, or the context + completion of JSON-lines files."""
    for f in files:
        for line in open(f, encoding="utf-8"):
            if f.endswith(".jsonl") and line.strip():
                row = json.loads(line)
                yield row.get("context", "") + row.get("completion", "")
            else:
                yield line


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--text", nargs="+", required=True, help="text or .jsonl files to train the tokenizer on")
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(a.text), trainer=trainer)
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    fast.save_pretrained(a.out)          # tokenizer.json (+ its config)
    tok.model.save(a.out)                # vocab.json + merges.txt

    torch.manual_seed(a.seed)
    eot = tok.token_to_id(EOT)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=a.n_embd, n_layer=a.n_layer, n_head=a.n_head,
                     n_positions=a.n_positions, bos_token_id=eot, eos_token_id=eot)
    GPT2LMHeadModel(cfg).save_pretrained(a.out)
    print(f"wrote {a.out}: GPT-2 architecture, {a.n_layer} layers, d {a.n_embd}, vocabulary {cfg.vocab_size}")


if __name__ == "__main__":
    main()
