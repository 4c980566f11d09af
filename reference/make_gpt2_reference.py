#!/usr/bin/env python3
"""Reference values for lora-dist's numerics, computed by transformers' GPT2LMHeadModel and PEFT,
for ReferenceParityTests and PEFTParityTests (the test set-up runs this into a temporary directory).

  make_gpt2_reference.py OUT
      OUT/gpt2-ref.safetensors
          a random-init GPT-2 (n_embd 64, n_layer 2, n_head 4, vocab_size 256, n_positions 32; LayerNorm
          weights and biases made non-trivial) in HF names and Conv1D [in, out] layout, without the
          attention mask buffers and the tied lm_head; `__metadata__.config` holds the shape (and lora_r 4,
          lora_alpha 32);
          input_ids, targets [2, 16] int64             one batch; loss = mean cross-entropy over all 32 positions
          base.logits [2, 16, 256], base.loss [1]      the base model
          lora.h.N.{q,v}.{A,B}                         a loralib-style LoRA on q and v inside the fused c_attn
                                                       (A [r, d], B [d, r], B non-zero): q += (α/r)·x·Aᵀ·Bᵀ,
                                                       v likewise, k untouched
          lora.logits, lora.loss                       the base with that LoRA
          lora.h.N.{q,v}.{A,B}.grad                    d lora.loss / d A, B (base frozen)
          full.grad.<weight name>                      d base.loss / d every base weight (wte gets both uses)
      OUT/peft-adapter/
          a PEFT LoRA (r 4, lora_alpha 32, fan_in_fan_out, targets c_attn, c_proj (attention and MLP),
          c_fc) with non-zero B, saved by PEFT itself (PeftModel.save_pretrained)
      OUT/peft-ref.safetensors
          input_ids, and peft.logits: what PEFT computes with that adapter on the base above

Every reference output is computed in float64 from the float32 weights and stored as float32.
Deterministic (seeded torch RNG). Needs torch (CPU), transformers, peft, safetensors:
launch/setup --python.
"""
import argparse, json, os, re, sys, warnings
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

D, L, H, V, P, B, T, R, ALPHA = 64, 2, 4, 256, 32, 2, 16, 4, 32.0


def ce(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    out_dir = ap.parse_args().out
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(1234)

    cfg = GPT2Config(n_embd=D, n_layer=L, n_head=H, vocab_size=V, n_positions=P, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, layer_norm_epsilon=1e-5, activation_function="gelu_new", tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # every parameter non-trivial (GPT-2's init makes LayerNorms 1 and biases 0)
        for n, p in model.named_parameters():
            if n.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.02 * torch.randn_like(p))
    weights = {n: p.detach().clone().float().contiguous() for n, p in model.state_dict().items()
               if not re.search(r"\.attn\.(bias|masked_bias)$", n) and n != "lm_head.weight"}
    ids = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    out = dict(weights)
    out["input_ids"] = ids.to(torch.int64)
    out["targets"] = targets.to(torch.int64)

    ref = GPT2LMHeadModel(cfg).eval().double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, strict=False)

    # 1) The base model.
    with torch.no_grad():
        lb = ref(input_ids=ids).logits
    out["base.logits"] = lb.float()
    out["base.loss"] = ce(lb, targets).float().reshape(1)

    # 2) A loralib-style LoRA on q and v inside the fused c_attn (output columns [q | k | v]).
    s = ALPHA / R
    lora = {}
    for i in range(L):
        for t in ("q", "v"):
            lora[f"lora.h.{i}.{t}.A"] = (torch.randn(R, D) / D ** 0.5).double().requires_grad_()
            lora[f"lora.h.{i}.{t}.B"] = (0.05 * torch.randn(D, R)).double().requires_grad_()  # B = 0 would test nothing
    hooks = []
    for i, blk in enumerate(ref.transformer.h):
        def hook(mod, inp, outp, i=i):
            x = inp[0]
            dq = s * (x @ lora[f"lora.h.{i}.q.A"].T) @ lora[f"lora.h.{i}.q.B"].T
            dv = s * (x @ lora[f"lora.h.{i}.v.A"].T) @ lora[f"lora.h.{i}.v.B"].T
            return outp + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)
        hooks.append(blk.attn.c_attn.register_forward_hook(hook))
    for p in ref.parameters():
        p.requires_grad_(False)
    ll = ref(input_ids=ids).logits
    loss = ce(ll, targets)
    loss.backward()
    out["lora.logits"] = ll.detach().float()
    out["lora.loss"] = loss.detach().float().reshape(1)
    for k, v in lora.items():
        out[k] = v.detach().float()
        out[k + ".grad"] = v.grad.float()
    for h in hooks:
        h.remove()

    # 3) Full fine-tuning: d base.loss / d every base weight (the tied wte gets both of its uses).
    for p in ref.parameters():
        p.requires_grad_(True)
    ref.zero_grad()
    ce(ref(input_ids=ids).logits, targets).backward()
    for n, p in ref.named_parameters():
        if n != "lm_head.weight":
            out["full.grad." + n] = p.grad.float().contiguous()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(out_dir, "gpt2-ref.safetensors"),
              metadata={"config": json.dumps(dict(n_embd=D, n_layer=L, n_head=H, vocab_size=V, n_positions=P,
                                                  layer_norm_epsilon=1e-5, lora_r=R, lora_alpha=ALPHA))})

    # 4) A PEFT adapter in PEFT's own layout (one LoRA per fused c_attn, plus c_proj and c_fc) and its logits.
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["c_attn", "c_proj", "c_fc"],
                                          lora_dropout=0.0, fan_in_fan_out=True, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn_like(p))
    pm.save_pretrained(os.path.join(out_dir, "peft-adapter"))
    pm = pm.double().eval()
    with torch.no_grad():
        lp = pm(input_ids=ids).logits
    save_file({"input_ids": ids.to(torch.int64), "peft.logits": lp.float().contiguous()},
              os.path.join(out_dir, "peft-ref.safetensors"))
    print("make_gpt2_reference.py: wrote", out_dir, file=sys.stderr)


if __name__ == "__main__":
    main()
