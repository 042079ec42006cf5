#!/usr/bin/env python3
"""Builds a random-weight Hugging Face model directory for ditto's benchmarks.

The model is created with transformers from a config (Qwen3 or Llama), initialized with
transformers' default init (normal, std = initializer_range = 0.02; RMSNorm weights 1), in bf16 on
cuda when available (else cpu), and written with `save_pretrained` (safetensors). The tokenizer
files of a Hugging Face tokenizer directory (SmolLM2's, vocabulary 49152) are copied beside it, so
the directory is a complete model for ditto and for transformers.

Examples:
    # DESIGN.md's reference benchmark model (7.35 B parameters, 14.7 GB):
    python scripts/gpu/make_random_model.py --preset qwen3-8b \
        --tokenizer ../shared/models/smollm2-tokenizer --out models/qwen3-8b-random
    # a quick shape, with fewer layers:
    python scripts/gpu/make_random_model.py --preset llama-small --layers 2 \
        --tokenizer TOKDIR --out /tmp/llama-small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import torch

PRESETS = {
    # DESIGN.md: Qwen3Config(vocab_size=49152, hidden_size=4096, intermediate_size=12288,
    # num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    # rope_theta=1e6, tie_word_embeddings=False), torch.manual_seed(0).
    "qwen3-8b": dict(arch="qwen3", hidden=4096, intermediate=12288, layers=36, heads=32,
                     kv_heads=8, head_dim=128, vocab=49152, rope_theta=1e6, seed=0),
    "qwen3-small": dict(arch="qwen3", hidden=1024, intermediate=3072, layers=8, heads=16,
                        kv_heads=8, head_dim=128, vocab=49152, rope_theta=1e6, seed=0),
    "llama-small": dict(arch="llama", hidden=768, intermediate=2048, layers=8, heads=12,
                        kv_heads=4, head_dim=64, vocab=49152, rope_theta=1e5, seed=0),
}

# Files of a model directory that are not the tokenizer's and must not be copied over ours.
NOT_TOKENIZER = {"config.json", "generation_config.json", "model.safetensors.index.json"}


def build_config(a: argparse.Namespace):
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        head_dim=a.head_dim,
        tie_word_embeddings=a.tie_embeddings,
        max_position_embeddings=a.max_positions,
        initializer_range=0.02,
        rms_norm_eps=1e-6 if a.arch == "qwen3" else 1e-5,
        bos_token_id=a.bos_token_id,
        eos_token_id=a.eos_token_id,
        pad_token_id=a.eos_token_id,
    )
    # transformers 5 keeps rope settings in `rope_parameters`; 4.x takes `rope_theta`.
    cls = Qwen3Config if a.arch == "qwen3" else LlamaConfig
    try:
        cfg = cls(**common, rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta})
    except TypeError:
        cfg = cls(**common, rope_theta=a.rope_theta)
    if getattr(cfg, "rope_parameters", None) is not None:
        cfg.rope_parameters["rope_theta"] = a.rope_theta
    else:
        cfg.rope_theta = a.rope_theta
    return cfg


def tokenizer_special_ids(tokdir: str) -> tuple[int | None, int | None]:
    """bos/eos ids from the tokenizer directory (SmolLM2: 1 and 2)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokdir)
    return tok.bos_token_id, tok.eos_token_id


def copy_tokenizer(tokdir: str, out: str) -> list[str]:
    copied = []
    for name in sorted(os.listdir(tokdir)):
        src = os.path.join(tokdir, name)
        if not os.path.isfile(src) or name in NOT_TOKENIZER:
            continue
        if name.endswith((".safetensors", ".bin", ".gguf", ".pt")):
            continue
        shutil.copyfile(src, os.path.join(out, name))
        copied.append(name)
    if "tokenizer.json" not in copied:
        raise SystemExit(f"{tokdir} has no tokenizer.json")
    return copied


def add_flat_rope_theta(config_path: str, theta: float) -> None:
    """transformers 5 writes rope settings only under `rope_parameters`, 4.x only as a top-level
    `rope_theta`; write both so that loaders expecting either layout read the same value."""
    with open(config_path) as f:
        cfg = json.load(f)
    cfg["rope_theta"] = theta
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--arch", choices=["qwen3", "llama"])
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int, help="default hidden/heads")
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--tie-embeddings", action="store_true", help="tie lm_head to the embedding (default untied)")
    ap.add_argument("--max-positions", type=int, default=32768)
    ap.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer directory to copy beside the model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", help="default cuda if available, else cpu")
    a = ap.parse_args()

    # Preset values fill whatever was not given explicitly; explicit flags override the preset.
    base = dict(arch="llama", hidden=None, intermediate=None, layers=None, heads=None,
                kv_heads=None, head_dim=None, vocab=49152, rope_theta=1e4, seed=0)
    if a.preset:
        base.update(PRESETS[a.preset])
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    missing = [k for k in ("hidden", "intermediate", "layers", "heads", "kv_heads") if getattr(a, k) is None]
    if missing:
        ap.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing) + " (or use --preset)")
    if a.head_dim is None:
        a.head_dim = a.hidden // a.heads

    a.bos_token_id, a.eos_token_id = tokenizer_special_ids(a.tokenizer)
    from transformers import AutoModelForCausalLM

    cfg = build_config(a)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    torch.manual_seed(a.seed)
    # Constructing under the device context allocates and initializes the weights there
    # directly (on cuda: seconds for 8 B parameters instead of minutes on the CPU).
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    t1 = time.time()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out)
    copied = copy_tokenizer(a.tokenizer, a.out)
    add_flat_rope_theta(os.path.join(a.out, "config.json"), a.rope_theta)
    t2 = time.time()
    size = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out) if f.endswith(".safetensors"))
    info = {
        "out": a.out,
        "arch": a.arch,
        "preset": a.preset,
        "device": device,
        "seed": a.seed,
        "parameters": n_params,
        "safetensors_bytes": size,
        "config": {k: getattr(a, k) for k in ("hidden", "intermediate", "layers", "heads", "kv_heads",
                                                "head_dim", "vocab", "rope_theta", "tie_embeddings")},
        "tokenizer_files": copied,
        "build_s": round(t1 - t0, 2),
        "save_s": round(t2 - t1, 2),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    with open(os.path.join(a.out, "ditto_random_model.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
