// Backend::attention_inputs in one dispatch: the fused q/k/v projection split, Qwen3's per-head
// RMSNorm of q and k (contract::rms_norm_row), rotary embedding (contract::rope_head), and k and
// v rounded to bf16 and written to their cache slots, with the bits of those kernels run one
// after another (the twin of attention_inputs.cu).
//
// One workgroup per (head row, token): wg.x runs over the q heads, then the k heads, then the v
// heads; wg.y is the token. The head's row is staged in workgroup memory. The norm's sum of
// squares follows the chunked order: thread c sums chunk c from +0.0 with k ascending, and thread
// 0 combines the chunk partials in ascending order. Cache words hold two bf16 values, so rotated
// k rows are staged again and each thread writes whole words.
struct Params {
    opaque_zero: u32,
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    eps_bits: u32,
    inv_dim_bits: u32,
    has_norm: u32,
}

const THREADS: u32 = 128u;
const MAX_HEAD_DIM: u32 = 512u;
const MAX_CHUNKS: u32 = (MAX_HEAD_DIM + DOT_CHUNK - 1u) / DOT_CHUNK;
// A slot whose k and v a later row of the same call writes (the last write wins, as in write_kv).
const SKIP_SLOT: u32 = 0xffffffffu;
const CHAIN_LOADS: u32 = 16u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
// The norms' weights, bf16 two per word (head_dim is even).
@group(0) @binding(2) var<storage, read> q_norm: array<u32>;
@group(0) @binding(3) var<storage, read> k_norm: array<u32>;
// Each token's position, then each token's slot.
@group(0) @binding(4) var<storage, read> positions_slots: array<u32>;
@group(0) @binding(5) var<storage, read> cos_table: array<f32>;
@group(0) @binding(6) var<storage, read> sin_table: array<f32>;
@group(0) @binding(7) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(9) var<storage, read_write> v_cache: array<u32>;

var<workgroup> row_s: array<f32, MAX_HEAD_DIM>;
var<workgroup> squares_s: array<f32, MAX_HEAD_DIM>;
var<workgroup> partials: array<f32, MAX_CHUNKS>;
var<workgroup> scale_shared: f32;

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    opaque_zero = params.opaque_zero;
    let heads = params.heads;
    let kv_heads = params.kv_heads;
    let d = params.head_dim;
    let h = wg.x;
    let token = wg.y;
    let is_q = h < heads;
    let is_v = h >= heads + kv_heads;
    let slot = positions_slots[params.tokens + token];
    // Uniform per workgroup, so returning before any barrier is safe.
    if (!is_q && slot == SKIP_SLOT) {
        return;
    }
    let kv_len = kv_heads * d;
    let src = token * (heads + 2u * kv_heads) * d + h * d;
    if (is_v) {
        let dst = (slot * kv_len + (h - heads - kv_heads) * d) / 2u;
        for (var w = t; w < d / 2u; w += THREADS) {
            v_cache[dst + w] = bf16_pair(qkv[src + 2u * w], qkv[src + 2u * w + 1u]);
        }
        return;
    }
    for (var i = t; i < d; i += THREADS) {
        row_s[i] = qkv[src + i];
    }
    workgroupBarrier();
    if (params.has_norm != 0u) {
        for (var i = t; i < d; i += THREADS) {
            squares_s[i] = mul_rn(row_s[i], row_s[i]);
        }
        workgroupBarrier();
        let chunks = (d + DOT_CHUNK - 1u) / DOT_CHUNK;
        if (t < chunks) {
            let start = t * DOT_CHUNK;
            let len = min(DOT_CHUNK, d - start);
            var partial = 0.0;
            for (var k = 0u; k < len; k += CHAIN_LOADS) {
                var s: array<f32, CHAIN_LOADS>;
                for (var l = 0u; l < CHAIN_LOADS; l++) {
                    s[l] = squares_s[min(start + k + l, MAX_HEAD_DIM - 1u)];
                }
                for (var l = 0u; l < CHAIN_LOADS; l++) {
                    if (k + l < len) {
                        partial = partial + s[l];
                    }
                }
            }
            partials[t] = partial;
        }
        workgroupBarrier();
        if (t == 0u) {
            var total = 0.0;
            for (var c = 0u; c < chunks; c++) {
                total = combine_chunk_partials(total, partials[c]);
            }
            let eps = bitcast<f32>(params.eps_bits);
            let inv_dim = bitcast<f32>(params.inv_dim_bits);
            scale_shared = contract_rsqrt(mul_rn(total, inv_dim) + eps);
        }
        workgroupBarrier();
        let r = scale_shared;
        for (var i = t; i < d; i += THREADS) {
            let word = select(k_norm[i >> 1u], q_norm[i >> 1u], is_q);
            let w = bf16_to_f32(word >> ((i & 1u) << 4u));
            row_s[i] = mul_rn(mul_rn(row_s[i], r), w);
        }
        workgroupBarrier();
    }
    let half = d / 2u;
    let angle = positions_slots[token] * half;
    for (var f = t; f < half; f += THREADS) {
        let a = row_s[f];
        let b = row_s[f + half];
        let c = cos_table[angle + f];
        let s = sin_table[angle + f];
        let lo = mul_rn(a, c) - mul_rn(b, s);
        let hi = mul_rn(b, c) + mul_rn(a, s);
        if (is_q) {
            let dst = (token * heads + h) * d;
            q_out[dst + f] = lo;
            q_out[dst + f + half] = hi;
        } else {
            squares_s[f] = lo;
            squares_s[f + half] = hi;
        }
    }
    if (!is_q) {
        workgroupBarrier();
        let dst = (slot * kv_len + (h - heads) * d) / 2u;
        for (var w = t; w < half; w += THREADS) {
            k_cache[dst + w] = bf16_pair(squares_s[2u * w], squares_s[2u * w + 1u]);
        }
    }
}
