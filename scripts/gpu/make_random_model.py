#!/usr/bin/env python3
"""Builds a random-weight Qwen3 or Llama model with transformers and saves it in Hugging Face
form (bf16 safetensors) with SmolLM2's tokenizer files beside it: the models ditto's GPU
equivalence runs and benchmarks use (nothing can be downloaded on the GPU machine).

    python3 scripts/gpu/make_random_model.py --preset qwen3-small --tokenizer DIR --out OUT
"""
import argparse, os, shutil
import torch
from transformers import LlamaConfig, Qwen3Config, AutoModelForCausalLM

PRESETS = {
    # DESIGN.md's reference benchmark model (Qwen3-8B shape, SmolLM2's vocabulary).
    "qwen3-8b": ("qwen3", dict(vocab_size=49152, hidden_size=4096, intermediate_size=12288,
                               num_hidden_layers=36, num_attention_heads=32,
                               num_key_value_heads=8, head_dim=128, rope_theta=1e6,
                               tie_word_embeddings=False)),
    "qwen3-small": ("qwen3", dict(vocab_size=49152, hidden_size=1024, intermediate_size=3072,
                                  num_hidden_layers=8, num_attention_heads=16,
                                  num_key_value_heads=8, head_dim=128, rope_theta=1e6,
                                  tie_word_embeddings=False)),
    "llama-small": ("llama", dict(vocab_size=49152, hidden_size=768, intermediate_size=2048,
                                  num_hidden_layers=8, num_attention_heads=12,
                                  num_key_value_heads=4, rope_theta=1e5,
                                  tie_word_embeddings=True)),
}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--layers", type=int, help="override the layer count")
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json and friends")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    arch, kw = PRESETS[args.preset]
    kw = dict(kw, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    if args.layers:
        kw["num_hidden_layers"] = args.layers
    config = (Qwen3Config if arch == "qwen3" else LlamaConfig)(**kw)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    for f in os.listdir(args.tokenizer):
        shutil.copy(os.path.join(args.tokenizer, f), args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {n / 1e9:.3f} B parameters in {args.out}")

if __name__ == "__main__":
    main()
