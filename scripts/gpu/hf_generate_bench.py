#!/usr/bin/env python3
"""Peer benchmark: PyTorch + transformers greedy generation speed on a model directory.

For each batch size (default 1 and 64) it generates exactly N new tokens greedily
(`do_sample=False`, `min_new_tokens=N` so that no row stops early) from prompts of a fixed token
length, after a warm-up run, and prints one JSON object: wall time, time to first token
(a generate call with one new token), and tokens/s overall and for decode alone. Row 0 of every
batch uses the batch-1 prompt, so the output also says whether row 0's tokens equal the batch-1
tokens (transformers' default kernels are not batch-invariant; see DESIGN.md).

Example:
    python scripts/gpu/hf_generate_bench.py --model models/qwen3-8b-random --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompts(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Token ids [batch, length]: row 0 is the same for every batch size (drawn first from a fixed
    seed); the other rows differ from it. Ids avoid 0..16, SmolLM2's special tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(17, vocab, (length,), generator=g) for _ in range(batch)]
    return torch.stack(rows)


@torch.no_grad()
def timed_generate(model, ids: torch.Tensor, new_tokens: int, device: str) -> tuple[float, torch.Tensor]:
    mask = torch.ones_like(ids)
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else 0,
    )
    sync(device)
    return time.perf_counter() - t0, out[:, ids.shape[1]:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--batch", default="1,64", help="comma-separated batch sizes")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, ...)")
    ap.add_argument("--device", help="default cuda if available, else cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per batch size (best is reported)")
    a = ap.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=getattr(torch, a.dtype), attn_implementation=a.attn
    ).to(device)
    model.eval()
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size

    results = []
    row0_batch1 = None
    for b in [int(x) for x in a.batch.split(",")]:
        ids = prompts(b, a.prompt_tokens, vocab, a.seed).to(device)
        timed_generate(model, ids, min(4, a.new_tokens), device)  # warm-up (allocations, kernels)
        ttft, _ = timed_generate(model, ids, 1, device)
        best, toks = None, None
        for _ in range(a.repeats):
            wall, out = timed_generate(model, ids, a.new_tokens, device)
            if best is None or wall < best:
                best, toks = wall, out
        row0 = toks[0].tolist()
        if b == 1:
            row0_batch1 = row0
        decode_s = best - ttft
        results.append({
            "batch": b,
            "new_tokens": a.new_tokens,
            "wall_s": round(best, 4),
            "ttft_s": round(ttft, 4),
            "tokens_per_s": round(b * a.new_tokens / best, 2),
            "decode_tokens_per_s": round(b * (a.new_tokens - 1) / decode_s, 2) if decode_s > 0 and a.new_tokens > 1 else None,
            "row0_matches_batch1": None if row0_batch1 is None or b == 1 else row0 == row0_batch1,
            "row0_first_tokens": row0[:8],
        })
        print(json.dumps(results[-1]), file=sys.stderr)

    report = {
        "bench": "hf_generate",
        "model": a.model,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
        "dtype": a.dtype,
        "attn_implementation": a.attn,
        "prompt_tokens": a.prompt_tokens,
        "load_s": round(load_s, 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "results": results,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
