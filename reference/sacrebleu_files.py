#!/usr/bin/env python3
"""sacreBLEU's corpus BLEU on the files lora-dist writes, for lora-dist's tests.

  sacrebleu_files.py PREDICTIONS REFERENCES [--cased]  -> the score (0-100) on stdout

PREDICTIONS holds one generation a line; REFERENCES each example's references one a line, a blank
line between examples (the files the official E2E scripts read). Scored as sacrebleu.corpus_bleu
with its defaults (13a tokenizer, exp smoothing), lowercased unless --cased, every reference of an
example in its own stream (None where an example has fewer).
"""
import sys

import sacrebleu


def main():
    pred_path, ref_path = sys.argv[1], sys.argv[2]
    cased = "--cased" in sys.argv[3:]
    with open(pred_path, encoding="utf-8", newline="") as f:
        hyps = f.read().split("\n")
    if hyps and hyps[-1] == "":
        hyps.pop()
    with open(ref_path, encoding="utf-8", newline="") as f:
        text = f.read()
    if text.endswith("\n"):
        text = text[:-1]
    groups = [g.split("\n") for g in text.split("\n\n")]
    if len(groups) != len(hyps):
        sys.exit(f"{len(hyps)} predictions for {len(groups)} reference groups")
    width = max(len(g) for g in groups)
    streams = [[g[k] if k < len(g) else None for g in groups] for k in range(width)]
    print(repr(sacrebleu.corpus_bleu(hyps, streams, lowercase=not cased).score))


if __name__ == "__main__":
    main()
