#!/usr/bin/env python3
"""The E2E metrics by their reference implementations, for lora-dist's tests.

  e2e_metrics_reference.py INPUT.json  -> JSON on stdout

INPUT holds {"hypotheses": [str], "references": [[str]], "lowercase": bool, "strings": [str]}.
Output: sacreBLEU's corpus BLEU (default 13a tokenizer and exp smoothing; its 0-100 score), NLTK's corpus_nist
(n = 5) and pycocoevalcap's ROUGE-L and CIDEr on the segments as sacreBLEU's 13a tokenizer leaves
them (lowercased first when asked), and that tokenizer's output for every entry of "strings".
"""
import json
import sys

from nltk.translate.nist_score import corpus_nist
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a


def main():
    inp = json.load(open(sys.argv[1], encoding="utf-8"))
    hyps, refs, lc = inp["hypotheses"], inp["references"], inp["lowercase"]
    tok13a = Tokenizer13a()

    def tok(s):
        return tok13a((s.lower() if lc else s).rstrip())

    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    bleu = BLEU(lowercase=lc).corpus_score(hyps, streams).score
    th = [tok(h) for h in hyps]
    tr = [[tok(x) for x in r] for r in refs]
    nist = corpus_nist([[x.split() for x in r] for r in tr], [h.split() for h in th], n=5)
    gts = {i: r for i, r in enumerate(tr)}
    res = {i: [h] for i, h in enumerate(th)}
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    print(json.dumps({"bleu": bleu, "nist": nist, "rougeL": float(rouge), "cider": float(cider),
                      "tokens": [tok13a(s.rstrip()) for s in inp.get("strings", [])]}))


if __name__ == "__main__":
    main()
