#!/usr/bin/env python3
"""Measures how far ditto's bf16 numerics may drift from the float32 reference.

ditto rounds every weight to bf16 at load and rounds every matmul input (and q, k, v of
attention) to bf16, accumulating in f32; the reference (make_reference.py) runs transformers in
float32 on the dequantized GGUF weights. This script

1. counts how many dequantized weights change when rounded to bf16 (per GGUF tensor type);
2. re-implements the Llama forward pass in plain torch with switchable bf16 rounding points that
   mirror ditto's (checked first: with rounding off it must match transformers' float32 logits);
3. compares the emulation with the float32 reference along each reference prompt + greedy
   continuation (teacher forced, every position) and in a free-running greedy loop, and reports
   max |Δlogit|, Δ of the stored per-step quantities and where greedy tokens diverge.

The emulation's f32 accumulation order is torch's, not the contract's; that difference is about
1e-6 relative, far below the bf16 effects measured here (an f32 run of the emulation against
transformers shows the size of such order effects).

Usage:
    python tests/reference/bf16_agreement.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as ref  # noqa: E402

FLUSH_BELOW = 2.0**-63  # the contract flushes bf16 values below 2^-63 to zero


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest even bf16 (torch's conversion), flush |x| < 2^-63, back to float32."""
    r = x.to(torch.bfloat16).to(torch.float32)
    return torch.where(r.abs() < FLUSH_BELOW, torch.zeros_like(r) * torch.sign(x), r)


def weight_representability(gguf_path: str, model) -> dict:
    """Fraction of the model's float32 (dequantized) weights that bf16 rounding changes, grouped
    by the tensor's GGUF type."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    # transformers' parameter name -> GGUF tensor name, for the Llama layout.
    gguf_of = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    stats: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            parts = name.split(".")  # model.layers.N.<module>[.<proj>].weight
            module = ".".join(parts[3:-1])
            gname = f"blk.{parts[2]}.{gguf_of[module]}.weight"
        kind = types[gname]
        w = p.detach().float()
        changed = int((round_bf16(w) != w).sum())
        rel = ((round_bf16(w) - w).abs() / w.abs().clamp_min(1e-30)).max().item()
        s = stats.setdefault(kind, {"tensors": 0, "values": 0, "changed": 0, "max_rel_change": 0.0})
        s["tensors"] += 1
        s["values"] += w.numel()
        s["changed"] += changed
        s["max_rel_change"] = max(s["max_rel_change"], rel)
    for s in stats.values():
        s["changed_fraction"] = s["changed"] / s["values"]
    return stats


class Emulator:
    """Plain-torch Llama forward with ditto's bf16 rounding points, each switchable."""

    def __init__(self, model, round_weights: bool, round_acts: bool):
        cfg = model.config
        self.cfg = cfg
        rw = round_bf16 if round_weights else (lambda t: t)
        self.ra = round_bf16 if round_acts else (lambda t: t)
        sd = {k: v.detach().float() for k, v in model.state_dict().items()}
        self.embed = rw(sd["model.embed_tokens.weight"])
        self.lm_head = self.embed if cfg.tie_word_embeddings else rw(sd["lm_head.weight"])
        self.final_norm = rw(sd["model.norm.weight"])
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            self.layers.append({k: rw(sd[p + k + ".weight"]) for k in (
                "input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")})
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or cfg.rope_theta
        half = self.head_dim // 2
        # inv_freq and the angle table in float64, rounded to f32 (as ditto's host tables are).
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float64) * 2 / self.head_dim))
        self.eps = cfg.rms_norm_eps

    def rms(self, x, w):
        var = (x * x).mean(-1, keepdim=True)
        return (x * torch.rsqrt(var + self.eps)) * w

    def linear(self, x, w):
        return self.ra(x) @ w.T

    def rope(self, x, cos, sin):
        h = self.head_dim // 2
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """Logits [T, vocab] of every position of `ids` (causal)."""
        T = len(ids)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * self.inv_freq[None, :]
        cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
        x = self.embed[torch.tensor(ids)]
        mask = torch.full((T, T), float("-inf")).triu(1)
        groups = self.n_heads // self.n_kv
        scale = self.head_dim ** -0.5
        for L in self.layers:
            h = self.rms(x, L["input_layernorm"])
            q = self.linear(h, L["self_attn.q_proj"]).view(T, self.n_heads, self.head_dim)
            k = self.linear(h, L["self_attn.k_proj"]).view(T, self.n_kv, self.head_dim)
            v = self.linear(h, L["self_attn.v_proj"]).view(T, self.n_kv, self.head_dim)
            q = self.ra(self.rope(q, cos[:, None], sin[:, None])).transpose(0, 1)
            k = self.ra(self.rope(k, cos[:, None], sin[:, None])).transpose(0, 1)
            v = self.ra(v).transpose(0, 1)
            k = k.repeat_interleave(groups, 0)
            v = v.repeat_interleave(groups, 0)
            s = (q @ k.transpose(1, 2)) * scale + mask
            a = torch.softmax(s, -1) @ v  # probabilities stay f32, as in the contract
            x = x + self.linear(a.transpose(0, 1).reshape(T, -1), L["self_attn.o_proj"])
            h = self.rms(x, L["post_attention_layernorm"])
            g = self.linear(h, L["mlp.gate_proj"])
            u = self.linear(h, L["mlp.up_proj"])
            x = x + self.linear(torch.nn.functional.silu(g) * u, L["mlp.down_proj"])
        return self.linear(self.rms(x, self.final_norm), self.lm_head)

    def greedy(self, prompt_ids: list[int], steps: int) -> list[int]:
        ids = list(prompt_ids)
        out = []
        for _ in range(steps):
            t = int(torch.argmax(self.logits(ids)[-1]))
            out.append(t)
            ids.append(t)
        return out


@torch.no_grad()
def hf_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


def margin(row: torch.Tensor) -> float:
    top2 = torch.topk(row, 2).values
    return float(top2[0] - top2[1])


def compare(reference_doc: dict, model, emu: Emulator, free_run: bool) -> dict:
    """Teacher-forced comparison at every position of prompt + reference continuation, and
    optionally a free-running greedy comparison."""
    per_prompt = []
    all_max = 0.0
    flips = []
    for p in reference_doc["prompts"]:
        prompt, gen = p["token_ids"], p["generated"]
        seq = prompt + gen[:-1]
        R = hf_logits(model, seq)
        E = emu.logits(seq)
        d = (E - R).abs()
        row_max = d.max(-1).values
        start = len(prompt) - 1  # logits at positions start.. are the 24 reference steps
        step_stats = []
        for i, s in enumerate(p["steps"]):
            e = E[start + i]
            ids = [t for t, _ in s["top"]]
            step_stats.append({
                "max_abs_dlogit": float(row_max[start + i]),
                "top8_max_abs_dlogit": max(abs(float(e[t]) - v) for t, v in s["top"]),
                "dlogsumexp": abs(float(torch.logsumexp(e.double(), 0)) - s["logsumexp"]),
                "dmax_abs_logit": abs(float(e.abs().max()) - s["max_abs_logit"]),
                "ref_margin": s["top"][0][1] - s["top"][1][1],
                "argmax_equal": int(torch.argmax(e)) == s["token"],
                # Noise floor: the JSON's step-by-step f32 logits vs this full-sequence f32 pass.
                "ref_recompute_top8_dlogit": max(abs(float(R[start + i][t]) - v) for t, v in s["top"]),
            })
            assert ids[0] == s["token"]
        # Change of the reference's top-1 minus top-2 gap: what a greedy flip needs to exceed.
        top2 = torch.topk(R, 2, dim=-1).indices
        gap_r = R.gather(1, top2[:, :1]) - R.gather(1, top2[:, 1:])
        gap_e = E.gather(1, top2[:, :1]) - E.gather(1, top2[:, 1:])
        dgap = (gap_e - gap_r).abs().squeeze(1)
        for pos in range(len(seq)):
            ra, ea = int(torch.argmax(R[pos])), int(torch.argmax(E[pos]))
            if ra != ea:
                flips.append({"prompt": p["name"], "position": pos, "ref_margin": margin(R[pos]),
                              "emu_margin": margin(E[pos]),
                              "max_abs_dlogit": float(row_max[pos])})
        entry = {
            "name": p["name"],
            "positions": len(seq),
            "max_abs_dlogit_all_positions": float(row_max.max()),
            "p99_row_max_abs_dlogit": float(row_max.quantile(0.99)),
            "median_abs_dlogit": float(d.median()),
            "max_abs_dgap_top1_top2": float(dgap.max()),
            "steps_max_abs_dlogit": max(s["max_abs_dlogit"] for s in step_stats),
            "steps_top8_max_abs_dlogit": max(s["top8_max_abs_dlogit"] for s in step_stats),
            "steps_max_dlogsumexp": max(s["dlogsumexp"] for s in step_stats),
            "ref_recompute_noise": max(s["ref_recompute_top8_dlogit"] for s in step_stats),
            "min_ref_margin_over_steps": min(s["ref_margin"] for s in step_stats),
            "teacher_forced_step_argmax_mismatches": [i for i, s in enumerate(step_stats) if not s["argmax_equal"]],
            "step_margins": [round(s["ref_margin"], 4) for s in step_stats],
        }
        if "last_prompt_logits_f32le_b64" in p:
            import base64
            import numpy as np
            full = torch.from_numpy(np.frombuffer(base64.b64decode(p["last_prompt_logits_f32le_b64"]), "<f4").copy())
            entry["full_row_max_abs_dlogit"] = float((E[start] - full).abs().max())
        if free_run:
            g = emu.greedy(prompt, len(gen))
            div = next((i for i, (a, b) in enumerate(zip(g, gen)) if a != b), None)
            entry["free_run_first_divergence"] = div
            if div is not None:
                entry["free_run_divergence_ref_margin"] = p["steps"][div]["top"][0][1] - p["steps"][div]["top"][1][1]
        all_max = max(all_max, entry["max_abs_dlogit_all_positions"])
        per_prompt.append(entry)
    return {
        "max_abs_dlogit": all_max,
        "max_abs_dgap_top1_top2": max(p["max_abs_dgap_top1_top2"] for p in per_prompt),
        "positions": sum(p["positions"] for p in per_prompt),
        "argmax_flips": flips,
        "prompts": per_prompt,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--reference", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_reference.json"))
    ap.add_argument("--json", help="write the full results here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="f32_emulation,bf16_weights_only,bf16_activations_only,ditto_bf16")
    ap.add_argument("--no-free-run", action="store_true", help="skip the (slow) free-running greedy comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with open(args.reference, encoding="utf-8") as f:
        doc = json.load(f)
    _, model = ref.load_model(args.gguf)

    results = {"weights": weight_representability(args.gguf, model)}
    print(json.dumps(results["weights"], indent=1), file=sys.stderr)

    variants = {
        "f32_emulation": (False, False),  # validates the emulator against transformers
        "bf16_weights_only": (True, False),
        "bf16_activations_only": (False, True),
        "ditto_bf16": (True, True),
    }
    for name in args.variants.split(","):
        rw, ra = variants[name]
        emu = Emulator(model, rw, ra)
        r = compare(doc, model, emu, free_run=(name == "ditto_bf16" and not args.no_free_run))
        results[name] = r
        print(f"== {name}: {r['positions']} positions, max|dlogit| {r['max_abs_dlogit']:.4g}, "
              f"max|dgap| {r['max_abs_dgap_top1_top2']:.4g}, {len(r['argmax_flips'])} argmax flips", file=sys.stderr)
        for p in r["prompts"]:
            print("  " + json.dumps({k: v for k, v in p.items() if k != "step_margins"}), file=sys.stderr)
        for fl in r["argmax_flips"]:
            print("  flip " + json.dumps(fl), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
