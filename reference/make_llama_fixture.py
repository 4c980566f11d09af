#!/usr/bin/env python3
"""Llama-architecture checkpoints written by transformers and PEFT themselves, the numbers they
compute, and the byte-level BPE tokenizers of the Llama family, for lora-dist's parity tests.

    make_llama_fixture.py OUTDIR [--tokenizers-only]

Tokenizers (OUTDIR/tokenizers/STYLE/): trained with the `tokenizers` library on the training text
of reference/make_tokenizer_fixture.py (byte-level BPE, vocabulary 1500 before added tokens):
  llama3/    normalizer none; pre-tokenizer Sequence[Split(Llama-3's regex, Isolated),
             ByteLevel(use_regex false)]; model.ignore_merges true, with a few whole words in the
             vocabulary that no merge reaches (so ignore_merges changes ids); added special tokens
             after the vocabulary (<|begin_of_text|>, <|end_of_text|>, ... <|eot_id|>); post-processor
             Sequence[ByteLevel, TemplateProcessing "<|begin_of_text|> $A"].
  qwen2/     normalizer NFC; Sequence[Split(Qwen2's regex: Llama-3's with single digits \\p{N}),
             ByteLevel(use_regex false)]; added after the vocabulary: <|endoftext|>, <|im_start|>,
             <|im_end|> (special), <tool_call>, </tool_call> (not special) and <Ω> (normalized: found
             in the NFC text, so U+2126 OHM SIGN in the input becomes it).
  smollm2/   normalizer none; Sequence[Digits(individual_digits true), ByteLevel(use_regex true)];
             its 17 special tokens trained in first (ids 0-16, <|endoftext|> is 0).
  Each directory: tokenizer.json, tokenizer_config.json (bos/eos as the model family names them)
  and expected.json:
      style, eot (the end-of-text id), bos (id or null), vocab_size (with added tokens),
      cases: [{text, ids, ids_special, decoded, pieces}] for the corpus of make_tokenizer_fixture.py
          (imported) plus strings aimed at these pre-tokenizers (contractions in any case, digit
          runs, CR/LF runs, NFC, the added tokens) and seeded random mixes. ids: encode(text,
          add_special_tokens=False); ids_special: with the post-processor's tokens; decoded:
          decode(ids, skip_special_tokens=False); pieces: each id decoded alone.
      lossy: [{ids, decoded}] byte tokens spelling invalid UTF-8, decoded with U+FFFD.
  The ids are checked before they are written against a plain Python BPE below (the `regex`
  module with the same pattern, unicodedata's NFC, lowest-rank-first merging) and against
  transformers' PreTrainedTokenizerFast reading the directory.

Models (OUTDIR/VARIANT/): random-init, saved by save_pretrained, 2 layers, hidden 64, 4 query
heads (head_dim 16), intermediate 160, RMSNorm eps 1e-5, SiLU; weights drawn here from a seeded
generator (embedding and head std 0.1, q/k std 0.1 so attention and RoPE matter, other
projections 0.05, norms 1 + 0.1·N(0,1), biases 0.1·N(0,1)):
  llama/        LlamaForCausalLM, 2 KV heads (GQA), untied head, rope_theta 500000, the llama3
                tokenizer's vocabulary; float32 model.safetensors; config.json as transformers 5
                writes it ("rope_parameters").
  llama-rope3/  the same shape with Llama-3 rope scaling (factor 8, low_freq_factor 1,
                high_freq_factor 4, original_max_position_embeddings 64: with head_dim 16 and
                theta 500000 the frequencies fall in all three of its bands); saved sharded
                (model-0000x-of-0000y.safetensors + model.safetensors.index.json); config.json
                rewritten as hub checkpoints have it ("rope_theta" and "rope_scaling" at the top;
                checked to load back to the same configuration and logits).
  qwen2/        Qwen2ForCausalLM, 1 KV head (fewer than 2 or 4 ranks), q/k/v biases, tied
                embeddings (no lm_head tensor), rope_theta 1000000, the qwen2 tokenizer's
                vocabulary padded to a multiple of 64 as Qwen pads it; float32.
  qwen2-bf16/   the same weights rounded to bfloat16 and saved in bfloat16, config.json in the
                hub's form ("rope_theta", "rope_scaling": null); its truth is computed from the
                bfloat16 weights.
  Each VARIANT directory:
      base/         config.json, the weights, tokenizer.json + tokenizer_config.json (its style's)
      lora-qv/      PEFT LoRA on q_proj, v_proj: r 4, lora_alpha 8, B drawn non-zero
      lora-all/     PEFT LoRA on q,k,v,o,gate,up,down_proj: r 4, lora_alpha 16, rank_pattern
                    {"gate_proj": 8, "layers.1.self_attn.o_proj": 2}, alpha_pattern
                    {"down_proj": 4, "layers.0.self_attn.k_proj": 32}, B non-zero
                    (each: adapter_config.json + adapter_model.safetensors, PeftModel.save_pretrained)
      expected.safetensors:
          input_ids, targets [B, T] int64 (B 2, T 32; ids below the tokenizer's size)
          loss = mean cross-entropy of the logits against targets over all B·T positions (no shift)
          logits [B, T, V], loss [1]                    the base
          grad.<parameter> (as the parameter)           d loss / d every parameter of the base
                                                        (full fine-tuning; a tied embedding's
                                                        gradient includes the head's use of it)
          lora-qv.logits [B, T, V], lora-qv.loss [1]    base + lora-qv/
          lora-qv.grad.<PEFT key> (as the weight)       d lora-qv.loss / d every lora_A, lora_B
          lora-all.logits, lora-all.loss, lora-all.grad.<PEFT key>   the same for lora-all/
      PEFT keys are those of adapter_model.safetensors (base_model.model.model.layers.0.self_attn.
      q_proj.lora_A.weight ...); parameter names those of named_parameters() (model.layers.0...).

Every value is computed in float64 from the stored weights (the adapters as saved, loaded back) and
stored as float32. Deterministic: the same files every run. Needs torch (CPU), transformers, peft,
safetensors, tokenizers, regex: launch/setup --python. --tokenizers-only writes the tokenizers alone (seconds).
"""
import argparse
import json
import os
import random
import sys
import unicodedata
import warnings

import regex
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

import make_tokenizer_fixture as gpt2_fixture

LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                   "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eom_id|>", "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN2_ADDED = ["<tool_call>", "</tool_call>"]   # not special, not normalized, as Qwen2.5 has them
QWEN2_NORMALIZED = "<\u03a9>"                    # matched in the NFC text
SMOLLM2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
                    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
                    "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>"]
# Whole words given to the Llama-3-style vocabulary without merges: with ignore_merges a piece equal
# to one of them is one token, without it BPE spells it in several.
LLAMA3_WHOLE_WORDS = [" Hello", "Hello", " spaces", " typographic", " Next", "Wait", " flag", " Start"]
VOCAB = 1500


# ---------------------------------------------------------------------------------------------
# Tokenizers

def trainer(specials=()):
    return trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=list(specials),
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)


def split_then_bytes(pattern):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])


def byte_level(text):
    table = gpt2_fixture.byte_table()
    return "".join(table[b] for b in text.encode("utf-8"))


def train_llama3():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = split_then_bytes(LLAMA3_PATTERN)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(gpt2_fixture.training_corpus(), trainer=trainer())
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for w in LLAMA3_WHOLE_WORDS:
        vocab.setdefault(byte_level(w), len(vocab))
    spec["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A:0", pair="<|begin_of_text|> $A:0 <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tok, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}


def train_qwen2():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = split_then_bytes(QWEN2_PATTERN)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(gpt2_fixture.training_corpus(), trainer=trainer())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN2_ADDED])
    tok.add_tokens([AddedToken(QWEN2_NORMALIZED, special=False, normalized=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, {"bos_token": None, "eos_token": "<|endoftext|>"}


def train_smollm2():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(gpt2_fixture.training_corpus(), trainer=trainer(SMOLLM2_SPECIALS))
    return tok, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}


STYLES = {"llama3": train_llama3, "qwen2": train_qwen2, "smollm2": train_smollm2}
EOT = {"llama3": "<|end_of_text|>", "qwen2": "<|endoftext|>", "smollm2": "<|endoftext|>"}


def style_corpus(style):
    """The GPT-2 test's corpus and strings aimed at these pre-tokenizers and added tokens."""
    specials = {"llama3": LLAMA3_SPECIALS, "qwen2": QWEN2_SPECIALS + QWEN2_ADDED + [QWEN2_NORMALIZED],
                "smollm2": SMOLLM2_SPECIALS}[style]
    aimed = [
        "IT'S I'M WE'RE THEY'VE YOU'LL SHE'D", "'S 'T 'Re 'rE 'vE 'LL 'lL 'D 'M", "don'T Won'T", "x'Sy", "'s's",
        "'\u017f 'K \u017f'\u017f '\u212a 'st'ﬆ", "''s '''re", "'x 'hello '1 ' s",
        "1 12 123 1234 12345 1234567", "٣٤٥٦ ½½½ ²³⁴ ⅫⅫⅫⅫ", "a1b22c333d4444e", "3.14159 2,048 -7 +8", "1" * 50,
        "a\r\nb", "a \r\n b", "x  \n\n  y", "  \n", "\n  ", "!!\n\n", "?\r\n\r\nz", ". \n", "a\n\tb", "\r\r\n\n x",
        " \n" * 30, "x\n \n \ny", "(\n)\n", "foo.\r\n\r\n  bar", "\t\tx", "\u00a0x", "\u00a0\u00a0x", "\u3000語", " 'x",
        "$x -foo .bar", "\u200bx \u200b", "x\u0301y", "e\u0301\u0323 \u1e9b\u0323", "cafe\u0301 \u212b \u2126 \u212a",
        "\u1100\u1161\u11a8 \u0344 \u0958 \u2fc0", "Ａｂｃ １２３ ﬁ ①", "<\u2126> <\u03a9> <\u03a9 <Ω>>",
        " ".join(specials), "".join(specials), "x" + "y".join(specials) + "z",
        "\n".join(s[:-1] for s in specials), "Hello Hello, Wait... Next flag! Start typographic spaces",
    ]
    alphabet = [" ", " ", " ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\x85", "'", "'", "s", "S", "\u017f", "t", "re",
                "RE", "ve", "m", "ll", "LL", "d", "a", "the", "Hello", "é", "e\u0301", "\u212b", "\u2126", "Ω", "中", "1",
                "42", "123", "٣", "²", "!", ".", "--", "\u0301", "👍", "\u200d", "🏽"] + specials + ["<|", "|>", "<", ">"]
    rng = random.Random(2025)
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(400)]
    return gpt2_fixture.test_corpus() + aimed + randoms


def nfc(text):
    return unicodedata.normalize("NFC", text)


class Reference:
    """The tokenizer computed again in plain Python from its tokenizer.json, `tokenizers` aside:
    added tokens split out leftmost-longest (those not normalized on the raw text, then the
    normalized ones on the NFC text), the pre-tokenizer as the `regex` module's findall, BPE by
    lowest rank first (ignore_merges: a piece in the vocabulary is one token)."""

    def __init__(self, spec):
        m = spec["model"]
        self.vocab = m["vocab"]
        self.ranks = {tuple(p) if isinstance(p, list) else tuple(p.split(" ")): i for i, p in enumerate(m["merges"])}
        self.ignore_merges = m.get("ignore_merges", False)
        self.nfc = spec["normalizer"] is not None
        added = spec["added_tokens"]
        self.added = {a["content"]: a["id"] for a in added}
        self.raw_added = [a["content"] for a in added if not a["normalized"]]
        self.norm_added = [a["content"] for a in added if a["normalized"]]
        pre = spec["pre_tokenizer"]["pretokenizers"]
        self.stages = []
        for p in pre:
            if p["type"] == "Split":
                self.stages.append(("regex", regex.compile(p["pattern"]["Regex"])))
            elif p["type"] == "Digits":
                self.stages.append(("regex", regex.compile(r"\p{N}|[^\p{N}]+")))
            elif p["type"] == "ByteLevel" and p["use_regex"]:
                self.stages.append(("regex", gpt2_fixture.PATTERN))
        self.table = gpt2_fixture.byte_table()

    @staticmethod
    def split(text, tokens):
        if not tokens:
            return [(text, False)]
        pat = regex.compile("|".join(regex.escape(t) for t in sorted(tokens, key=len, reverse=True)))
        out, at = [], 0
        for mt in pat.finditer(text):
            out += [(text[at:mt.start()], False), (mt.group(), True)]
            at = mt.end()
        return out + [(text[at:], False)]

    def encode(self, text):
        ids = []
        for part, is_added in self.split(text, self.raw_added):
            if is_added:
                ids.append(self.added[part])
                continue
            if self.nfc:
                part = nfc(part)
            for sub, sub_added in self.split(part, [nfc(t) if self.nfc else t for t in self.norm_added]):
                if sub_added:
                    ids.append(self.added[[t for t in self.norm_added if (nfc(t) if self.nfc else t) == sub][0]])
                    continue
                pieces = [sub] if sub else []
                for _, pattern in self.stages:
                    pieces = [x for p in pieces for x in pattern.findall(p)]
                for p in pieces:
                    ids += self.bpe(p)
        return ids

    def bpe(self, piece):
        word = [self.table[b] for b in piece.encode("utf-8")]
        if self.ignore_merges and "".join(word) in self.vocab:
            return [self.vocab["".join(word)]]
        while len(word) > 1:
            best = min(range(len(word) - 1), key=lambda i: (self.ranks.get((word[i], word[i + 1]), 1 << 60), i))
            if (word[best], word[best + 1]) not in self.ranks:
                break
            word[best:best + 2] = [word[best] + word[best + 1]]
        return [self.vocab[w] for w in word]


def write_tokenizer(style, out):
    """Trains STYLE's tokenizer into OUT and writes its expected.json; returns (Tokenizer, its config)."""
    from transformers import PreTrainedTokenizerFast
    os.makedirs(out, exist_ok=True)
    tok, names = STYLES[style]()
    path = os.path.join(out, "tokenizer.json")
    tok.save(path)
    tok = Tokenizer.from_file(path)
    eos = names["eos_token"]
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": names["bos_token"], "eos_token": eos,
                   "model_max_length": 131072, "clean_up_tokenization_spaces": False}, f, indent=1)
    spec = json.loads(open(path, encoding="utf-8").read())
    ref = Reference(spec)
    fast = PreTrainedTokenizerFast.from_pretrained(out)
    if style == "llama3":  # the whole words change ids only because of ignore_merges
        spec["model"]["ignore_merges"] = False
        plain = Tokenizer.from_str(json.dumps(spec))
        changed = sum(tok.encode(s, add_special_tokens=False).ids != plain.encode(s, add_special_tokens=False).ids
                      for s in style_corpus(style))
        if changed < 5:
            sys.exit(f"llama3: ignore_merges changes the ids of only {changed} strings; the test would not see it")

    cases = []
    for s in style_corpus(style):
        ids = tok.encode(s, add_special_tokens=False).ids
        if ref.encode(s) != ids:
            sys.exit(f"{style}: the Python reference disagrees with tokenizers on {s!r}:\n  {ref.encode(s)}\n  {ids}")
        if fast(s, add_special_tokens=False)["input_ids"] != ids:
            sys.exit(f"{style}: PreTrainedTokenizerFast disagrees with tokenizers on {s!r}")
        with_special = tok.encode(s, add_special_tokens=True).ids
        if fast(s)["input_ids"] != with_special:
            sys.exit(f"{style}: PreTrainedTokenizerFast's special tokens differ on {s!r}")
        decoded = tok.decode(ids, skip_special_tokens=False)
        if decoded != (nfc(s) if ref.nfc else s) and not any(t in s for t in ref.norm_added + ["\u2126"]):
            sys.exit(f"{style}: decode does not give back {s!r}: {decoded!r}")
        cases.append({"text": s, "ids": ids, "ids_special": with_special, "decoded": decoded,
                      "pieces": [tok.decode([i], skip_special_tokens=False) for i in ids]})

    vocab = spec["model"]["vocab"]
    byte_id = {b: vocab[c] for b, c in gpt2_fixture.byte_table().items()}
    broken = [[0xF0, 0x9F, 0x91], [0xC3, 0x41], [0xED, 0xA0, 0x80], [0xFF, 0xFE, 0x41], [0xE2, 0x82],
              [0x80, 0x80, 0x41], [0xF0, 0x9F, 0x91, 0x8D, 0xF0, 0x9F], [0xC0, 0xAF], [0xF4, 0x90, 0x80, 0x80]]
    lossy = [{"ids": [byte_id[b] for b in bs], "decoded": tok.decode([byte_id[b] for b in bs], skip_special_tokens=False)}
             for bs in broken]
    bos = names["bos_token"]
    expected = {"style": style, "eot": tok.token_to_id(EOT[style]), "bos": tok.token_to_id(bos) if bos else None,
                "vocab_size": tok.get_vocab_size(with_added_tokens=True), "cases": cases, "lossy": lossy}
    with open(os.path.join(out, "expected.json"), "w", encoding="ascii") as f:
        json.dump(expected, f, ensure_ascii=True, indent=1)
    print(f"{style}: {expected['vocab_size']} tokens, {len(cases)} strings ({sum(len(c['ids']) for c in cases)} ids), "
          f"checked against the Python reference and PreTrainedTokenizerFast", file=sys.stderr)
    return tok, names


# ---------------------------------------------------------------------------------------------
# Models

D, LAYERS, HEADS, FF, B, T = 64, 2, 4, 160, 2, 32


def variants(vocab):
    """(name, family, tokenizer style, config overrides, dtype, sharded, hub-style config, seed); a seed
    shared by two variants gives them the same weights and batch."""
    rope3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 64}
    qwen_vocab = (vocab["qwen2"] + 63) // 64 * 64
    return [
        ("llama", "llama", "llama3", dict(vocab_size=vocab["llama3"], num_key_value_heads=2, rope_theta=500000.0), "float32", False, None, 100),
        ("llama-rope3", "llama", "llama3", dict(vocab_size=vocab["llama3"], num_key_value_heads=2, rope_theta=500000.0,
                                                rope_scaling=rope3), "float32", True, (500000.0, rope3), 100),
        ("qwen2", "qwen2", "qwen2", dict(vocab_size=qwen_vocab, num_key_value_heads=1, rope_theta=1000000.0), "float32", False, None, 300),
        ("qwen2-bf16", "qwen2", "qwen2", dict(vocab_size=qwen_vocab, num_key_value_heads=1, rope_theta=1000000.0), "bfloat16", False,
         (1000000.0, None), 300),
    ]


def make_config(family, over, ids):
    from transformers import LlamaConfig, Qwen2Config
    theta = over.pop("rope_theta")
    rope = dict(over.pop("rope_scaling", None) or {"rope_type": "default"}, rope_theta=theta)
    common = dict(hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  max_position_embeddings=128, rms_norm_eps=1e-5, hidden_act="silu", rope_parameters=rope,
                  bos_token_id=ids["bos"], eos_token_id=ids["eos"], **over)
    if family == "llama":
        return LlamaConfig(tie_word_embeddings=False, attention_bias=False, mlp_bias=False, **common)
    return Qwen2Config(tie_word_embeddings=True, use_sliding_window=False, **common)


def draw_weights(model, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                std = 0.1 if any(k in n for k in ("embed_tokens", "lm_head", "q_proj", "k_proj")) else 0.05
                p.copy_(std * torch.randn(p.shape, generator=g))


def load_base(family, path):
    import torch
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM
    cls = LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def lora_configs():
    from peft import LoraConfig
    return [
        ("lora-qv", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")),
        ("lora-all", LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                rank_pattern={"gate_proj": 8, "layers.1.self_attn.o_proj": 2},
                                alpha_pattern={"down_proj": 4, "layers.0.self_attn.k_proj": 32})),
    ]


def write_variant(out, name, family, style, over, dtype, shard, hub, tok_dir, tok, names, seed):
    import shutil
    import torch
    from peft import PeftModel, get_peft_model
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM
    from make_hf_fixture import ce, lora_truth

    d = os.path.join(out, name)
    base = os.path.join(d, "base")
    ids_of = {"bos": tok.token_to_id(names["bos_token"]) if names["bos_token"] else None, "eos": tok.token_to_id(names["eos_token"])}
    cfg = make_config(family, dict(over), ids_of)
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM)(cfg).eval()
    draw_weights(model, seed)
    model.to(getattr(torch, dtype)).save_pretrained(base, max_shard_size="200KB" if shard else "1GB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(base, f))
    files = sorted(os.listdir(base))
    if shard != any(f.startswith("model-0000") for f in files) or shard != ("model.safetensors.index.json" in files):
        sys.exit(f"{name}: expected {'a sharded' if shard else 'one'} checkpoint, save_pretrained wrote {files}")

    g = torch.Generator().manual_seed(seed + 1)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    input_ids = torch.randint(0, n_tok, (B, T), generator=g, dtype=torch.int64)
    targets = torch.randint(0, n_tok, (B, T), generator=g, dtype=torch.int64)

    if hub is not None:  # config.json as checkpoints on the hub have it; it must read back the same
        before = load_base(family, base).double()
        with torch.no_grad():
            want = before(input_ids=input_ids).logits
        path = os.path.join(base, "config.json")
        c = json.load(open(path))
        params = c.pop("rope_parameters")
        c["rope_theta"], c["rope_scaling"] = hub
        with open(path, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
        after = load_base(family, base)
        if dict(after.config.rope_parameters) != dict(params):
            sys.exit(f"{name}: the hub-style config.json reads back as {after.config.rope_parameters}, not {params}")
        with torch.no_grad():
            if not torch.equal(after.double()(input_ids=input_ids).logits, want):
                sys.exit(f"{name}: the hub-style config.json gives other logits")

    res = {"input_ids": input_ids, "targets": targets}
    m = load_base(family, base).double()
    for p in m.parameters():
        p.requires_grad_(True)
    logits = m(input_ids=input_ids).logits
    loss = ce(logits, targets)
    loss.backward()
    res["logits"] = logits.detach().float().contiguous()
    res["loss"] = loss.detach().float().reshape(1)
    for n, p in m.named_parameters():
        res["grad." + n] = p.grad.float().contiguous()

    for k, (lname, lcfg) in enumerate(lora_configs()):
        torch.manual_seed(seed + 10 + k)
        pm = get_peft_model(load_base(family, base), lcfg)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.1 * torch.randn_like(p))
        pm.save_pretrained(os.path.join(d, lname))
        pm = PeftModel.from_pretrained(load_base(family, base), os.path.join(d, lname)).double().eval()
        if lname == "lora-all":  # the patterns as documented: r and alpha per module
            layers = pm.base_model.model.model.layers
            got = [(m.r["default"], m.scaling["default"]) for m in (layers[0].mlp.gate_proj, layers[1].self_attn.o_proj,
                                                                   layers[0].mlp.down_proj, layers[0].self_attn.k_proj, layers[1].self_attn.k_proj)]
            if got != [(8, 2.0), (2, 8.0), (4, 1.0), (4, 8.0), (4, 4.0)]:
                sys.exit(f"{name}: PEFT read rank_pattern / alpha_pattern as {got}")
        res[lname + ".logits"], res[lname + ".loss"], grads = lora_truth(pm, input_ids, targets)
        res.update({lname + ".grad." + k: g for k, g in grads.items()})
    save_file(res, os.path.join(d, "expected.safetensors"))
    print(f"{name}: {family}, vocab {cfg.vocab_size}, {dtype}{', sharded' if shard else ''}, loss {res['loss'].item():.4f}, "
          f"{len(res)} tensors", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tokenizers-only", action="store_true", help="write OUT/tokenizers only (no models)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    toks = {}
    for style in STYLES:
        toks[style] = write_tokenizer(style, os.path.join(args.out, "tokenizers", style))
    if not args.tokenizers_only:
        vocab = {s: t.get_vocab_size(with_added_tokens=True) for s, (t, _) in toks.items()}
        for name, family, style, over, dtype, shard, hub, seed in variants(vocab):
            tok, names = toks[style]
            write_variant(args.out, name, family, style, over, dtype, shard, hub,
                          os.path.join(args.out, "tokenizers", style), tok, names, seed)
    print("make_llama_fixture.py: done", file=sys.stderr)


if __name__ == "__main__":
    main()
