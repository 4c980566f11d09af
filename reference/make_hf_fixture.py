#!/usr/bin/env python3
"""Checkpoints written by transformers and PEFT themselves, and the numbers they compute, for
lora-dist's interop parity tests (Tests/LoRADistTests/IO/HFParityTests.swift).

  make_hf_fixture.py fixture OUT
      OUT/base/            random-init GPT2LMHeadModel, model.save_pretrained (model.safetensors + config.json)
      OUT/peft/            a PEFT LoRA on c_attn, c_proj (attention and MLP), c_fc; r 4, lora_alpha 16,
                           fan_in_fan_out, non-zero B; PeftModel.save_pretrained
      OUT/peft-patterns/   the same targets with rank_pattern {"c_fc": 8} and alpha_pattern {"attn.c_proj": 4}
      OUT/expected.safetensors
          input_ids, targets [B, T] int64; loss = mean cross-entropy over all B·T positions
          base.logits [B, T, V]                    the base model
          peft.logits [B, T, V], peft.loss [1]     base + OUT/peft
          grad.<PEFT key> (as the weight)          d peft.loss / d every lora_A / lora_B weight of OUT/peft
          patterns.logits [B, T, V]                base + OUT/peft-patterns
  make_hf_fixture.py peft-logits BASE_DIR ADAPTER_DIR IDS_FILE OUT
      PeftModel.from_pretrained(base, ADAPTER_DIR) on the ids (`input_ids` of the safetensors IDS_FILE);
      writes `logits` to OUT.
  make_hf_fixture.py hf-logits MODEL_DIR IDS_FILE OUT
      GPT2LMHeadModel.from_pretrained(MODEL_DIR) on the ids; writes `logits` to OUT.

Every value is computed in float64 from the float32 weights and stored as float32. Deterministic
(seeded torch RNG). Needs torch (CPU), transformers, peft, safetensors: launch/setup --python.
"""
import argparse, os, sys, warnings
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging
from peft import LoraConfig, PeftModel, get_peft_model

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

D, L, H, V, P, B, T = 64, 2, 4, 300, 64, 2, 24


def base_model(seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=D, n_layer=L, n_head=H, vocab_size=V, n_positions=P, layer_norm_epsilon=1e-5,
                     activation_function="gelu_new", bos_token_id=256, eos_token_id=256)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # LayerNorms and biases non-trivial (GPT-2's init makes them 1 and 0)
        for n, p in model.named_parameters():
            if n.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.02 * torch.randn_like(p))
    return model


def with_lora(model, **kw):
    """A PEFT LoRA on every GPT-2 Linear-like module, B drawn non-zero (B = 0 would test nothing)."""
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0,
                     fan_in_fan_out=True, task_type="CAUSAL_LM", **kw)
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn_like(p))
    return pm


def ce(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lora_truth(pm, ids, targets):
    """(logits, loss, {PEFT key: gradient}) of the PEFT model `pm` on `ids`: d loss / d every lora_A
    and lora_B weight, keyed as PeftModel.save_pretrained writes them; float32 copies."""
    lora = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    for n, p in pm.named_parameters():
        p.requires_grad_(n in lora)
    logits = pm(input_ids=ids).logits
    loss = ce(logits, targets)
    loss.backward()
    grads = {n.replace(".default.", "."): p.grad.float().contiguous() for n, p in lora.items()}  # saved keys drop the adapter name
    return logits.detach().float().contiguous(), loss.detach().float().reshape(1), grads


def load_base(path):
    return GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()


def logits64(model, ids):
    with torch.no_grad():
        return model.double()(input_ids=ids).logits.float().contiguous()


def fixture(out):
    os.makedirs(out, exist_ok=True)
    model = base_model(1234)
    model.save_pretrained(os.path.join(out, "base"))
    torch.manual_seed(99)
    ids = torch.randint(0, V, (B, T), dtype=torch.int64)
    targets = torch.randint(0, V, (B, T), dtype=torch.int64)
    res = {"input_ids": ids, "targets": targets, "base.logits": logits64(load_base(os.path.join(out, "base")), ids)}
    # The same base as transformers stores it in half precision (BF16 and F16 safetensors).
    for dtype, name in ((torch.bfloat16, "base-bf16"), (torch.float16, "base-f16")):
        load_base(os.path.join(out, "base")).to(dtype).save_pretrained(os.path.join(out, name))

    # The PEFT adapter, saved by PEFT; the truth is computed from what was saved, loaded back.
    torch.manual_seed(7)
    with_lora(load_base(os.path.join(out, "base"))).save_pretrained(os.path.join(out, "peft"))
    pm = PeftModel.from_pretrained(load_base(os.path.join(out, "base")), os.path.join(out, "peft")).double().eval()
    res["peft.logits"], res["peft.loss"], grads = lora_truth(pm, ids, targets)
    res.update({"grad." + k: g for k, g in grads.items()})

    torch.manual_seed(8)
    with_lora(load_base(os.path.join(out, "base")), rank_pattern={"c_fc": 8},
              alpha_pattern={"attn.c_proj": 4}).save_pretrained(os.path.join(out, "peft-patterns"))
    pp = PeftModel.from_pretrained(load_base(os.path.join(out, "base")), os.path.join(out, "peft-patterns"))
    res["patterns.logits"] = logits64(pp.eval(), ids)
    save_file(res, os.path.join(out, "expected.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fixture").add_argument("out")
    p = sub.add_parser("peft-logits")
    for a in ("base_dir", "adapter_dir", "ids_file", "out"):
        p.add_argument(a)
    h = sub.add_parser("hf-logits")
    for a in ("model_dir", "ids_file", "out"):
        h.add_argument(a)
    args = ap.parse_args()
    if args.cmd == "fixture":
        fixture(args.out)
    elif args.cmd == "peft-logits":
        ids = load_file(args.ids_file)["input_ids"]
        pm = PeftModel.from_pretrained(load_base(args.base_dir), args.adapter_dir).eval()
        save_file({"logits": logits64(pm, ids)}, args.out)
    else:
        ids = load_file(args.ids_file)["input_ids"]
        save_file({"logits": logits64(load_base(args.model_dir), ids)}, args.out)
    print("make_hf_fixture.py:", args.cmd, "done", file=sys.stderr)


if __name__ == "__main__":
    main()
