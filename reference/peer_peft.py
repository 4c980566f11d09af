#!/usr/bin/env python3
"""The peer side of `launch/bench-peer`: training steps of transformers + PEFT on CPU, on the same
shape, batch and optimizer as `lora-dist bench train`, timed the same way (warm-up steps, then the
mean of the timed steps). Prints one JSON line.

  peer_peft.py [--model gpt2] [--batch 4] [--seq 128] [--method lora|full] [--precision fp32|bf16]
               [--threads N] [--lora-rank 4] [--lora-alpha 32] [--warmup 2] [--steps 5] [--seed 1234]

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

Needs torch (CPU), transformers and peft: launch/setup --python.
"""
import argparse, json, math, resource, sys, time, warnings

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", choices=sorted(SHAPES) + sorted(LLAMA_SHAPES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=2, help="steps before timing")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        sys.exit("peer_peft.py: --steps and --threads must be at least 1, --warmup not negative")

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

    for _ in range(args.warmup):
        step()
    losses = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step())
    seconds = (time.perf_counter() - t0) / args.steps
    if not all(math.isfinite(x) for x in losses):
        sys.exit(f"peer_peft.py: non-finite loss {losses}")

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
