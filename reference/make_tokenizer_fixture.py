#!/usr/bin/env python3
"""Writes a small GPT-2-style byte-level BPE tokenizer and the ids Hugging Face gives for a varied
test corpus, the truth lora-dist's GPT2Tokenizer is compared with.

    make_tokenizer_fixture.py OUTDIR

OUTDIR gets vocab.json + merges.txt (GPT-2's file pair), tokenizer.json (the same tokenizer in
the `tokenizers` format) and expected.json: for every test string its ids, its decoded text and
the text of each id alone (partial UTF-8 sequences decode to U+FFFD), plus id lists that are
invalid UTF-8 and what they decode to. The ids are checked three ways before they are written:
transformers' GPT2Tokenizer reading vocab.json + merges.txt, GPT2TokenizerFast / `tokenizers`
reading tokenizer.json, and a plain Python BPE below built on the `regex` module with GPT-2's
pattern (the slow tokenizer's algorithm; transformers 5 has no slow GPT-2 tokenizer of its own).
Deterministic: the same files every run.
"""
import json
import os
import random
import sys
import tempfile

import regex
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Tokenizer, GPT2TokenizerFast

EOT = "<|endoftext|>"
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def training_corpus():
    """A few thousand lines mixing scripts, numbers, code and whitespace, so merges cover them."""
    words = {
        "en": "the quick brown fox jumps over lazy dog it's don't we're they've I'm you'll she'd "
              "hello world tokenizer training fine tuning model rank adapter matrix learning rate".split(),
        "fr": "café naïve résumé déjà vu où été garçon français élève".split(),
        "de": "Grüße aus München Straße schön Mädchen über".split(),
        "el": "Καλημέρα κόσμε αλφάβητο λόγος ελληνικά".split(),
        "ru": "Привет мир язык модель обучение данные".split(),
        "zh": "你好 世界 中文 模型 训练 数据 语言".split(),
        "ja": "こんにちは 日本語 テキスト 東京 カタカナ".split(),
        "ko": "안녕하세요 한국어 세계".split(),
        "ar": "مرحبا بالعالم اللغة العربية".split(),
        "hi": "नमस्ते दुनिया भाषा".split(),
        "emoji": "👍 👍🏽 😀 🎉 ❤️ 👨‍👩‍👧‍👦 🇯🇵 🏳️‍🌈".split(),
        "num": "0 1 2 3 10 42 100 1,000 3.14 2024 1st 2nd 3rd 4th 50% $5 ½ ²".split(),
        "punct": ". , ; : ! ? ... -- ( ) [ ] { } \" ' @ # & * / \\ == -> <= >= ++".split(),
    }
    keys = sorted(words)
    lines = []
    state = 12345
    for i in range(3000):
        parts = []
        for j in range(6 + i % 7):
            state = (state * 1103515245 + 12345) % (1 << 31)
            group = words[keys[state % len(keys)]]
            parts.append(group[(state >> 8) % len(group)])
        sep = [" ", " ", " ", "  ", "\t", "\n", " \n"][i % 7]
        lines.append(sep.join(parts))
    lines.append("def f(x):\n    return x ** 2\n\n\tif x:\n\t\tpass\r\n")
    return lines


def test_corpus():
    """Strings the ids are compared on: the pre-tokenizer's corners and the byte-level ones."""
    return [
        "", " ", "  ", "\n", "Hello world", " Hello world", "Hello  world", "Hello   world  ",
        "   leading spaces", "trailing spaces   ", "a\tb\t\tc\t", "line1\nline2\n\nline3\n",
        "a\r\nb\r\n\r\nc", " \t\n x", "x \n", "word\n\n\n", "\t\tindented", "a\u00a0b", "a \u00a0 b",
        "\u00a0\u00a0start", "日本\u3000語", "\u3000\u3000x", "thin\u2009space", "line\u2028sep",
        "next\u0085line", "ver\u000btab", "form\u000cfeed", "unit\u001fsep", "zero\u200bwidth", "\ufeffbom",
        "I'm you're we've they'll she'd it's don't", "IT'S I'M WE'RE", "'s' 't 're've'm'll'd",
        "rock'n'roll o'clock ''''s", "it’s typographic", "'", "''", "x'", "'ll've'd",
        "3rd 1st 22nd", "1,000.5", "2024-01-01T12:30:00", "12345678901234567890", "½ ² Ⅻ ٣٤٥ x²",
        "abc123def456", "$5.00 50% #1", "café naïve résumé Ñandú", "cafe\u0301 n\u0303", "Z\u0351\u0352\u0353algo",
        "Καλημέρα κόσμε", "Привет, мир!", "你好，世界。", "日本語のテキストです", "한국어 세계",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ",
        "👍", "👍🏽 ok", "👨‍👩‍👧‍👦", "🏳️‍🌈 flag", "I ❤️ NY", "🇯🇵🇫🇷", "😀" * 7,
        "Wait... what?!?", "--->", "(a)[b]{c}", "!!!   ???", "@user #tag", "C++ / C# == ok",
        "def f(x):\n    return x**2\n", "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|endoftext|>",
        " <|endoftext|> ", "<|endoftext|", "<|endoftext|>\n\nNext doc", "end.<|endoftext|>Start",
        "a" * 300, " " * 50, "x" + " " * 50 + "y", "\n" * 20,
        "The café's 3rd floor — 1,000.5 m² 👍🏽!\n",
    ] + random_strings(400)


def random_strings(n):
    """Seeded random mixes of the characters the pre-tokenizer's rules turn on."""
    alphabet = [" ", " ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\x1c", "\x85", "'", "'", "s", "t", "re", "ve",
                "m", "ll", "d", "S", "a", "the", "é", "Ω", "中", "1", "42", "٣", "²", "!", ".", "--", "\u0301", "👍",
                "\u200d", "🏽", EOT, "<|", "|>"]
    rng = random.Random(2024)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30))) for _ in range(n)]


def byte_table():
    """GPT-2's byte → printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def reference_encode(text, vocab, ranks, table):
    """GPT-2's slow algorithm: split on end-of-text, pre-tokenize with PATTERN, merge lowest rank first."""
    ids = []
    for k, part in enumerate(text.split(EOT)):
        if k:
            ids.append(vocab[EOT])
        for piece in PATTERN.findall(part):
            word = [table[b] for b in piece.encode("utf-8")]
            while len(word) > 1:
                best = min(range(len(word) - 1), key=lambda i: (ranks.get((word[i], word[i + 1]), 1 << 60), i))
                if (word[best], word[best + 1]) not in ranks:
                    break
                word[best:best + 2] = [word[best] + word[best + 1]]
            ids += [vocab[w] for w in word]
    return ids


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_tokenizer_fixture.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    tok.model.save(out)  # vocab.json + merges.txt (with its #version header)

    vocab = json.load(open(os.path.join(out, "vocab.json"), encoding="utf-8"))
    merge_lines = open(os.path.join(out, "merges.txt"), encoding="utf-8").read().split("\n")
    ranks = {tuple(l.split(" ")): i for i, l in enumerate(m for m in merge_lines if m and not m.startswith("#version"))}
    table = byte_table()

    with tempfile.TemporaryDirectory() as files_only:
        for name in ("vocab.json", "merges.txt"):
            with open(os.path.join(out, name), "rb") as src, open(os.path.join(files_only, name), "wb") as dst:
                dst.write(src.read())
        slow = GPT2Tokenizer.from_pretrained(files_only)
    fast = GPT2TokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"))
    raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))

    cases = []
    for s in test_corpus():
        ids = slow(s)["input_ids"]
        others = {"GPT2TokenizerFast": fast(s)["input_ids"], "tokenizers": raw.encode(s).ids,
                  "regex reference": reference_encode(s, vocab, ranks, table)}
        for name, got in others.items():
            if got != ids:
                sys.exit(f"{name} disagrees with GPT2Tokenizer on {s!r}:\n  {got}\n  {ids}")
        text = slow.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text != s or raw.decode(ids, skip_special_tokens=False) != s:
            sys.exit(f"decode does not give back {s!r}: {text!r}")
        pieces = [raw.decode([i], skip_special_tokens=False) for i in ids]
        cases.append({"text": s, "ids": ids, "decoded": text, "pieces": pieces})

    # Byte sequences that are not UTF-8, spelled with the single-byte tokens: lossy decoding.
    byte_id = {b: vocab[c] for b, c in table.items()}
    broken = [[0xF0, 0x9F, 0x91], [0xC3, 0x41], [0xED, 0xA0, 0x80], [0xFF, 0xFE, 0x41], [0xE2, 0x82],
              [0x80, 0x80, 0x41], [0xF0, 0x9F, 0x91, 0x8D, 0xF0, 0x9F], [0xC0, 0xAF], [0xF4, 0x90, 0x80, 0x80]]
    lossy = []
    for bs in broken:
        ids = [byte_id[b] for b in bs]
        text = raw.decode(ids, skip_special_tokens=False)
        if slow.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != text:
            sys.exit(f"lossy decode disagrees on {bs}")
        lossy.append({"ids": ids, "decoded": text})

    expected = {"eot": vocab[EOT], "vocab_size": len(slow), "merges": len(ranks), "cases": cases, "lossy": lossy}
    with open(os.path.join(out, "expected.json"), "w", encoding="ascii") as f:
        json.dump(expected, f, ensure_ascii=True, indent=1)
    print(f"wrote {out}: {len(vocab)} tokens, {len(ranks)} merges, {len(cases)} strings "
          f"({sum(len(c['ids']) for c in cases)} ids) and {len(lossy)} lossy decodes, checked three ways")


if __name__ == "__main__":
    main()
