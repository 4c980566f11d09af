#!/usr/bin/env python3
"""The peer side of `launch/bench-serve`: transformers + PEFT serving several LoRA adapters on CPU
with PEFT's mixed-batch generation (`generate(..., adapter_names=[...])`), on the same base, the same
adapters and the same prompts as `lora-dist bench serve`, measured the same way. Prints one JSON line.

  peer_serve_peft.py --base BASE --adapters NAME=DIR,... --prompt-file FILE --requests M --batch N
                     --max-tokens K [--threads T] [--merge]
  peer_serve_peft.py --base BASE --make-adapters OUT --count K [--rank 4] [--alpha 8] [--seed 0]

BASE is a lora-dist safetensors file (the built-in base models/tiny-base.safetensors: Hugging Face
names, its GPT-2 shape in the metadata; byte-level ids, as lora-dist's byte tokenizer, end-of-text
256) or a Hugging Face GPT-2 directory (its own tokenizer). Adapters are PEFT LoRA directories,
which `lora-dist serve --adapter NAME=DIR` loads as they are (IO/ServedAdapters.swift).

Request i takes prompt i mod P and adapter i mod A (as bench serve's round-robin). The M requests go
in batches of N in order; each batch is one greedy `generate` (max_new_tokens K, end-of-text ends a
row, left padding) with `adapter_names` naming each row's adapter, PEFT's way of mixing adapters in
one batch (each adapter's LoRA runs over its own rows). With --merge (one adapter) the adapter is
merged into the base first (`merge_and_unload`) and the batches run without adapter_names. A
logits processor stamps the time of each decoding step, so, as bench serve reports them: time to
first token is a batch's first step's time since the batch started (for each of its rows), and time
per output token a row's (last token - first token) / (tokens - 1). Output tokens/s: every row's
tokens before end-of-text over the whole run (one untimed warm-up batch first).

--make-adapters writes K random PEFT LoRA adapters (GPT-2: attn.c_attn, attn.c_proj, mlp.c_fc,
mlp.c_proj; A and B both random, so each changes the output) into OUT/a0 ... OUT/a{K-1}.

Needs torch (CPU), transformers, peft and safetensors: launch/setup --python.
"""
import argparse, json, os, sys, time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

EOT_BYTES = 256


def load_base(path):
    """(model, encode, eos id) of a lora-dist safetensors file or a Hugging Face GPT-2 directory."""
    if os.path.isdir(path):
        from transformers import AutoTokenizer
        model = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        return model.eval(), (lambda s: tok(s)["input_ids"]), tok.eos_token_id
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    if "n_embd" not in meta:
        sys.exit(f"peer_serve_peft: {path}: only GPT-2-shaped bases (n_embd in the metadata) are read")
    cfg = GPT2Config(n_layer=meta["n_layer"], n_embd=meta["n_embd"], n_head=meta["n_head"],
                     vocab_size=meta["vocab_size"], n_positions=meta["n_positions"],
                     layer_norm_epsilon=meta.get("layer_norm_epsilon", 1e-5), resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=EOT_BYTES, eos_token_id=EOT_BYTES)
    model = GPT2LMHeadModel(cfg)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith(".attn.bias")
               and not m.endswith(".attn.masked_bias")]
    if missing or unexpected:
        sys.exit(f"peer_serve_peft: {path}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.tie_weights()
    return model.eval(), (lambda s: list(s.encode("utf-8"))), EOT_BYTES


def make_adapters(args):
    from peft import LoraConfig, get_peft_model
    base, _, _ = load_base(args.base)
    for k in range(args.count):
        torch.manual_seed(args.seed + k)
        lc = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, bias="none", fan_in_fan_out=True,
                        target_modules=["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                        init_lora_weights=False)
        pm = get_peft_model(base, lc)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.1)
        pm.save_pretrained(os.path.join(args.make_adapters, f"a{k}"))
        base = pm.unload()
    print(json.dumps({"adapters": args.count, "out": args.make_adapters}))


class Stamps(LogitsProcessor):
    """The time of each decoding step (one call per new token of the batch)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def read_prompts(path):
    lines = [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
    if path.endswith(".jsonl"):
        out = []
        for line in lines:
            o = json.loads(line)
            out.append(o.get("prompt") or o["context"])
        return out
    return [line.replace("\\n", "\n") for line in lines]


def percentile(values, p):
    """Nearest rank, as lora-dist bench serve's."""
    if not values:
        return float("nan")
    s = sorted(values)
    rank = int(-(-p * len(s) // 100))
    return s[min(max(rank, 1), len(s)) - 1]


def serve(args):
    from peft import PeftModel
    torch.set_num_threads(args.threads)
    base, encode, eos = load_base(args.base)
    names, dirs = [], []
    for item in args.adapters.split(","):
        name, _, d = item.partition("=")
        names.append(name)
        dirs.append(d)
    model = PeftModel.from_pretrained(base, dirs[0], adapter_name=names[0])
    for n, d in zip(names[1:], dirs[1:]):
        model.load_adapter(d, adapter_name=n)
    if args.merge:
        if len(names) != 1:
            sys.exit("peer_serve_peft: --merge serves one adapter")
        model = model.merge_and_unload()
    model.eval()
    prompts = [encode(p) for p in read_prompts(args.prompt_file)]
    requests = [(prompts[i % len(prompts)], names[i % len(names)]) for i in range(args.requests)]

    def run(batch):
        width = max(len(p) for p, _ in batch)
        ids = torch.tensor([[eos] * (width - len(p)) + p for p, _ in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch])
        stamps = Stamps()
        kw = {} if args.merge else {"adapter_names": [a for _, a in batch]}
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos, logits_processor=LogitsProcessorList([stamps]),
                                 **kw)
        t1 = time.perf_counter()
        rows = []
        for row in out[:, width:].tolist():
            n = next((i for i, t in enumerate(row) if t == eos), len(row))
            rows.append(n)
        return t0, t1, stamps.times, rows

    run(requests[:args.batch])  # warm-up, untimed
    ttft, tpot, tokens = [], [], 0
    start = time.perf_counter()
    for b in range(0, len(requests), args.batch):
        t0, t1, times, rows = run(requests[b:b + args.batch])
        # Step k's logits give token k, chosen right after its stamp.
        done = times
        for n in rows:
            tokens += n
            if n == 0:
                continue
            ttft.append(1000 * (done[0] - t0))
            if n > 1:
                tpot.append(1000 * (done[n - 1] - done[0]) / (n - 1))
    seconds = time.perf_counter() - start
    import peft
    print(json.dumps({
        "requests": len(requests), "batch": args.batch, "adapters": len(names), "merge": args.merge,
        "output_tokens": tokens, "seconds": seconds, "output_tokens_per_second": tokens / seconds,
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
        "tpot_p50_ms": percentile(tpot, 50), "tpot_p99_ms": percentile(tpot, 99), "threads": args.threads,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a lora-dist safetensors file or a Hugging Face GPT-2 directory")
    p.add_argument("--adapters", help="NAME=PEFT_DIR,... (request i takes adapter i mod count)")
    p.add_argument("--prompt-file", help="one prompt a line (\\n a newline), or .jsonl with prompt or context")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--batch", type=int, default=4, help="rows a generate (bench serve's --clients)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true", help="merge the one adapter into the base first")
    p.add_argument("--make-adapters", help="write --count random PEFT adapters into this directory")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.make_adapters:
        return make_adapters(args)
    if not args.adapters or not args.prompt_file:
        sys.exit("peer_serve_peft: --adapters and --prompt-file are needed (or --make-adapters)")
    if args.requests < 1 or args.batch < 1 or args.max_tokens < 1 or args.threads < 1:
        sys.exit("peer_serve_peft: --requests, --batch, --max-tokens and --threads must be at least 1")
    serve(args)


if __name__ == "__main__":
    main()
