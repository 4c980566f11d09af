#!/usr/bin/env python3
"""The peer side of `launch/bench-peer`: training steps of transformers + PEFT on CPU, on the same
shape, batch and optimizer as `lora-dist bench train`, timed the same way (warm-up steps, then the
mean of the timed steps). Prints one JSON line.

  peer_peft.py [--model gpt2] [--batch 4] [--seq 128] [--method lora|full] [--precision fp32|bf16]
               [--threads N] [--lora-rank 4] [--lora-alpha 32] [--warmup 2] [--steps 5] [--seed 1234]
               [--data DIR [--dump-batches K]]

The model is a random-init model of the named shape (lora-dist's `--model` names), with dropout
off as in lora-dist's base: a GPT2LMHeadModel for the GPT-2 shapes, a LlamaForCausalLM (llama-tiny,
smollm2-135m) or Qwen2ForCausalLM (qwen2.5-0.5b: q/k/v biases) for the Llama-family ones. GPT-2's
LoRA is PEFT's on the fused attn.c_attn (fan_in_fan_out, no dropout): at rank r that is r·(d + 3d)
parameters a layer, exactly as many as lora-dist's LoRA of rank r on q and v (2·r·(d + d)), with
the same FLOPs. The Llama family's is PEFT's on q_proj and v_proj, as lora-dist's on q and v
(r·(d + d) + r·(d + kv) a layer, kv the key/value width). Full fine-tuning trains every parameter.
AdamW (weight decay 0.01) with gradient clipping at norm 1 on the trainable parameters, as
lora-dist's trainer. bf16 is torch.autocast("cpu", bfloat16) around forward and loss; the loss is
computed in fp32. Tokens and targets are random, so the loss is about ln(vocab); it must be finite.

With --data DIR it trains on DIR/train.jsonl instead of random tokens, as the HF Trainer would:
the examples are lora-dist's (Data/Dataset.swift, Data/ByteTokenizer.swift): byte-level ids, one per
UTF-8 byte of context + completion, then end-of-text 256; an example of n tokens with more than
--seq targets (n - 1 > seq; default the model's context) or an empty context is dropped, as lora-dist
drops it. The loss is on the completion and its end-of-text only (labels -100 on the context, as
lora-dist's mask). Each step takes the next --batch examples of lora-dist's own order (Train/Batcher.swift:
the per-epoch Fisher-Yates shuffle of xoshiro256** seeded with seed + epoch * 0x9E3779B9), so step k
of both sides trains the same examples. The collation is the HF Trainer's usual one for such data:
transformers' DataCollatorForSeq2Seq(padding=True, label_pad_token_id=-100), which pads each batch to
its longest example (input_ids with end-of-text, attention_mask 0, labels -100), and the loss is the
model's own (labels shifted inside transformers). It reports examples/s, real tokens/s (each
example's n - 1 tokens that predict a target, as lora-dist counts them), the tokens computed per step
(batch x the batch's longest n) and the padding fraction of what it computes (1 - the sum of n / the
tokens computed), over the timed steps. --dump-batches K prints the first K collated batches (and
their example indices) as JSON instead of training, so a test can compare them with lora-dist's.

Needs torch (CPU), transformers and peft: launch/setup --python.
"""
import argparse, json, math, os, resource, sys, time, warnings

import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

# lora-dist's named shapes (GPTConfig.named): layers, d, heads, vocab, context.
SHAPES = {
    "tiny": (4, 128, 4, 257, 192),
    "gpt2": (12, 768, 12, 50257, 1024),
    "gpt2-medium": (24, 1024, 16, 50257, 1024),
    "gpt2-large": (36, 1280, 20, 50257, 1024),
    "gpt2-xl": (48, 1600, 25, 50257, 1024),
}

# The Llama-family shapes (GPTConfig.named): layers, d, heads, kv heads, intermediate, vocab,
# context, rms eps, rope theta, tied head, q/k/v biases (Qwen2).
LLAMA_SHAPES = {
    "llama-tiny": (4, 128, 4, 2, 352, 257, 192, 1e-5, 10_000.0, False, False),
    "smollm2-135m": (30, 576, 9, 3, 1536, 49152, 8192, 1e-5, 100_000.0, True, False),
    "qwen2.5-0.5b": (24, 896, 14, 2, 4864, 151936, 32768, 1e-6, 1_000_000.0, True, True),
}


def build_llama(args):
    n_layer, d, n_head, n_kv, ffn, vocab, ctx, eps, theta, tied, bias = LLAMA_SHAPES[args.model]
    common = dict(num_hidden_layers=n_layer, hidden_size=d, num_attention_heads=n_head, num_key_value_heads=n_kv,
                  intermediate_size=ffn, vocab_size=vocab, max_position_embeddings=ctx, rms_norm_eps=eps,
                  rope_theta=theta, tie_word_embeddings=tied, attention_dropout=0.0)
    model = Qwen2ForCausalLM(Qwen2Config(**common)) if bias else LlamaForCausalLM(LlamaConfig(**common))
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model
        lc = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, target_modules=["q_proj", "v_proj"],
                        lora_dropout=0.0, bias="none")
        model = get_peft_model(model, lc)
        kv = n_kv * (d // n_head)
        expected = n_layer * args.lora_rank * ((d + d) + (d + kv))
    else:
        expected = sum(p.numel() for p in model.parameters())
    return model, expected, vocab, ctx


def build(args):
    if args.model in LLAMA_SHAPES:
        model, expected, vocab, ctx = build_llama(args)
        return checked(args, model, expected, vocab, ctx)
    n_layer, d, n_head, vocab, ctx = SHAPES[args.model]
    config = GPT2Config(n_layer=n_layer, n_embd=d, n_head=n_head, vocab_size=vocab, n_positions=ctx,
                        bos_token_id=vocab - 1, eos_token_id=vocab - 1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model
        lc = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, target_modules=["c_attn"],
                        lora_dropout=0.0, fan_in_fan_out=True, bias="none")
        model = get_peft_model(model, lc)
        expected = n_layer * args.lora_rank * (d + 3 * d)
    else:
        expected = sum(p.numel() for p in model.parameters())
    return checked(args, model, expected, vocab, ctx)


def checked(args, model, expected, vocab, ctx):
    """The model with its trainable parameters, refusing a count other than lora-dist's."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trainable)
    if count != expected:
        sys.exit(f"peer_peft.py: {count} trainable parameters, expected {expected} for {args.method} on {args.model}")
    return model, trainable, count, vocab, ctx


def timed(step, args, loss=lambda r: r):
    """args.warmup steps, then args.steps timed ones: their results and the mean seconds a step;
    exits when a step's loss is not finite."""
    for _ in range(args.warmup):
        step()
    results = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        results.append(step())
    seconds = (time.perf_counter() - t0) / args.steps
    if not all(math.isfinite(loss(r)) for r in results):
        sys.exit(f"peer_peft.py: non-finite loss {[loss(r) for r in results]}")
    return results, seconds


MASK64 = (1 << 64) - 1


class Xoshiro:
    """lora-dist's RNG (Tensor's RNG: xoshiro256**, seeded through SplitMix64), for its data order."""

    def __init__(self, seed):
        z = seed & MASK64
        s = []
        for _ in range(4):
            z = (z + 0x9E3779B97F4A7C15) & MASK64
            x = z
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
            s.append(x ^ (x >> 31))
        self.s = s

    def next(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & MASK64
        result = (rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def shuffle(self, a):
        for i in range(len(a) - 1, 0, -1):
            j = self.next() % (i + 1)
            a[i], a[j] = a[j], a[i]


def lora_dist_batches(count, batch, seed):
    """The example indices of each step, as lora-dist's Batcher takes them: the next `batch` of the
    epoch's shuffle, running on into the next epoch's."""
    epoch, cursor, order = 0, 0, None
    while True:
        step = []
        for _ in range(batch):
            if order is None:
                order = list(range(count))
                Xoshiro((seed + epoch * 0x9E3779B9) & MASK64).shuffle(order)
            step.append(order[cursor])
            cursor += 1
            if cursor == count:
                epoch, cursor, order = epoch + 1, 0, None
        yield step


EOT = 256  # lora-dist's byte tokenizer: ids 0-255 are bytes, 256 end-of-text


def read_examples(path, seq):
    """DIR/train.jsonl as lora-dist tokenizes it: (ids, loss_from) per kept example, and the number dropped."""
    try:
        lines = open(path, encoding="utf-8-sig").read().splitlines()
    except FileNotFoundError:
        sys.exit(f"peer_peft.py: data file {path} does not exist")
    kept, dropped = [], 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            context, completion = obj["context"], obj["completion"]
        except (ValueError, KeyError, TypeError):
            sys.exit(f"peer_peft.py: {path} line {n}: needs a JSON object with string fields context and completion")
        c, m = list(context.encode("utf-8")), list(completion.encode("utf-8"))
        ids = c + m + [EOT]
        if len(ids) - 1 > seq or not c:
            dropped += 1
            continue
        kept.append((ids, len(c)))
    if not kept:
        sys.exit(f"peer_peft.py: {path} has no usable examples (none with at most {seq} targets and a context)")
    return kept, dropped


def byte_collator():
    """transformers' DataCollatorForSeq2Seq over a tokenizer that only pads: lora-dist's byte ids need
    no encoding, and padding is with end-of-text on the right, labels -100."""
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(256)}
    vocab["<|endoftext|>"] = EOT
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>")),
                                  pad_token="<|endoftext|>", eos_token="<|endoftext|>", padding_side="right")
    assert tok.pad_token_id == EOT
    return DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")


def feature(example):
    ids, loss_from = example
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * loss_from + ids[loss_from:]}


def data_main(args):
    """--data DIR: training steps on lora-dist's data with the HF Trainer's collation (see the docstring)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ctx = SHAPES[args.model][4] if args.model in SHAPES else LLAMA_SHAPES[args.model][6]
    seq = min(args.seq or ctx, ctx)
    path = os.path.join(args.data, "train.jsonl")
    examples, dropped = read_examples(path, seq)
    longest = max(len(ids) for ids, _ in examples)
    if longest > ctx:
        sys.exit(f"peer_peft.py: an example of {longest} tokens exceeds the model's context of {ctx}; pass --seq")
    collate = byte_collator()
    order = lora_dist_batches(len(examples), args.batch, args.seed)
    if args.dump_batches > 0:
        out = []
        for _ in range(args.dump_batches):
            idx = next(order)
            b = collate([feature(examples[i]) for i in idx])
            out.append({"examples": idx, **{k: b[k].tolist() for k in ("input_ids", "attention_mask", "labels")}})
        print(json.dumps({"examples": len(examples), "dropped": dropped, "batches": out}))
        return

    model, trainable, count, vocab, _ = build(args)
    if vocab <= EOT:
        sys.exit(f"peer_peft.py: the byte-level ids need a vocabulary of at least {EOT + 1} (the model has {vocab})")
    model.train()
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def step():
        idx = next(order)
        batch = collate([feature(examples[i]) for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n = [len(examples[i][0]) for i in idx]
        return loss.item(), sum(x - 1 for x in n), sum(n), batch["input_ids"].numel()

    results, seconds = timed(step, args, loss=lambda r: r[0])
    losses = [r[0] for r in results]
    real = sum(r[1] for r in results) / args.steps
    inputs = sum(r[2] for r in results)
    computed = sum(r[3] for r in results)

    import peft
    print(json.dumps({
        "side": "peft", "model": args.model, "method": args.method, "precision": args.precision,
        "data": args.data, "examples": len(examples), "dropped": dropped, "batch": args.batch,
        "collator": "DataCollatorForSeq2Seq(padding=True, label_pad_token_id=-100)",
        "seconds_per_step": seconds, "examples_per_second": args.batch / seconds,
        "real_tokens_per_step": real, "real_tokens_per_second": real / seconds,
        "tokens_computed_per_step": computed / args.steps, "padding_fraction": 1 - inputs / computed,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "trainable_params": count, "threads": torch.get_num_threads(),
        "warmup": args.warmup, "steps": args.steps, "loss": losses[-1],
        "attn_implementation": model.config._attn_implementation,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", choices=sorted(SHAPES) + sorted(LLAMA_SHAPES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=None,
                   help="random tokens: tokens a row (default 128); --data: the most targets an example may have "
                   "(default the model's context)")
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=2, help="steps before timing")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--data", default=None, help="train on DIR/train.jsonl (lora-dist's data) instead of random tokens")
    p.add_argument("--dump-batches", type=int, default=0, help="--data: print the first K collated batches and stop")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1 or args.batch < 1:
        sys.exit("peer_peft.py: --steps, --batch and --threads must be at least 1, --warmup not negative")
    if args.seq is not None and args.seq < 2:
        sys.exit(f"peer_peft.py: --seq must be at least 2 (got {args.seq})")
    if args.data is not None:
        return data_main(args)
    args.seq = 128 if args.seq is None else args.seq

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices between library versions
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, trainable, count, vocab, ctx = build(args)
    model.train()
    seq = min(args.seq, ctx)
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, vocab, (args.batch, seq), generator=g)
    targets = torch.randint(0, vocab, (args.batch, seq), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(input_ids=tokens).logits
            loss = F.cross_entropy(logits.float().view(-1, vocab), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses, seconds = timed(step, args)

    import peft
    print(json.dumps({
        "side": "peft", "model": args.model, "method": args.method, "precision": args.precision,
        "batch": args.batch, "seq": seq, "tokens_per_step": args.batch * seq,
        "seconds_per_step": seconds, "tokens_per_second": args.batch * seq / seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "trainable_params": count, "threads": torch.get_num_threads(),
        "warmup": args.warmup, "steps": args.steps, "loss": losses[-1],
        "attn_implementation": model.config._attn_implementation,
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
    }))


if __name__ == "__main__":
    main()
