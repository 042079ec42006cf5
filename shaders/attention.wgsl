// Causal attention over a paged bf16 KV cache (contract::attention_query), one workgroup per
// (query row, head). The workgroup walks the positions 0..=t in blocks of ATTN_BLOCK aligned at
// multiples of it, ascending. Per block: thread j' computes the scores of positions j = j' +
// THREADS·n (each a chunked bf16 dot product, then an explicit product with the scale); thread 0
// folds the block max in position order; all threads compute the exponentials; thread 0 sums them
// in position order and merges (max, sum) into the running state; thread d computes the value
// sum of dimension d (positions ascending) and merges it. The first block's partial is the
// initial state. Rows the host marked unused (position 0xffffffff) are left as zeros.
struct Params {
    opaque_zero: u32,
    rows: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    page_size: u32,
    scale_bits: u32,
    _pad: u32,
}

const THREADS: u32 = 128u;
const MAX_HEAD_DIM: u32 = 256u;
const UNUSED_ROW: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
// Per query row: its absolute position t, and where its sequence's block table starts.
@group(0) @binding(4) var<storage, read> row_position: array<u32>;
@group(0) @binding(5) var<storage, read> row_table_start: array<u32>;
@group(0) @binding(6) var<storage, read> block_table: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

var<workgroup> q_s: array<f32, MAX_HEAD_DIM>;
var<workgroup> acc_s: array<f32, MAX_HEAD_DIM>;
// Scores of the block's positions, then their exponentials.
var<workgroup> p_s: array<f32, ATTN_BLOCK>;
// Cache row (slot · kv_heads + kv head) of each of the block's positions.
var<workgroup> kv_row_s: array<u32, ATTN_BLOCK>;
// 0: state max, 1: state sum, 2: alpha, 3: beta, 4: block max.
var<workgroup> stats: array<f32, 5>;

fn k_at(e: u32) -> f32 {
    return bf16_to_f32(k_cache[e >> 1u] >> ((e & 1u) << 4u));
}

fn v_at(e: u32) -> f32 {
    return bf16_to_f32(v_cache[e >> 1u] >> ((e & 1u) << 4u));
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    opaque_zero = params.opaque_zero;
    let id = wg.x + wg.y * nwg.x;
    if (id >= params.rows * params.heads) {
        return;
    }
    let row = id / params.heads;
    let head = id % params.heads;
    let position = row_position[row];
    if (position == UNUSED_ROW) {
        return;
    }
    let table_start = row_table_start[row];
    let d = params.head_dim;
    let kv_head = head / (params.heads / params.kv_heads);
    let page = params.page_size;
    let q_base = id * d;
    let scale = bitcast<f32>(params.scale_bits);
    for (var i = t; i < d; i += THREADS) {
        q_s[i] = round_bf16(q[q_base + i]);
    }
    workgroupBarrier();

    let positions = position + 1u;
    for (var start = 0u; start < positions; start += ATTN_BLOCK) {
        let len = min(ATTN_BLOCK, positions - start);
        // Scores.
        for (var j = t; j < len; j += THREADS) {
            let p = start + j;
            let slot = block_table[table_start + p / page] * page + p % page;
            let kv_row = slot * params.kv_heads + kv_head;
            kv_row_s[j] = kv_row;
            let key = kv_row * d;
            var total = 0.0;
            for (var c = 0u; c < d; c += DOT_CHUNK) {
                let end = min(c + DOT_CHUNK, d);
                var partial = 0.0;
                // 64 keys (32 words) at a time, their loads issued before the adds, so that a
                // thread waits for one round trip per 64 keys rather than per key: a cache row
                // read long ago comes from memory. With the value loop's below, 8 and 16 at a time
                // took qwen3-8b decode on an H100 from 81.7 to 83.4 tokens/s, and 32 and 64 to
                // 87.7 (2026-11-24, with the fused silu). A key row that starts mid-word (odd
                // head_dim) takes the one-key loop.
                var rest = c;
                if ((key & 1u) == 0u) {
                    let whole = c + (end - c) / 64u * 64u;
                    for (var i0 = c; i0 < whole; i0 += 64u) {
                        var words: array<u32, 32>;
                        for (var u = 0u; u < 32u; u++) {
                            words[u] = k_cache[(key + i0) / 2u + u];
                        }
                        for (var u = 0u; u < 32u; u++) {
                            partial = partial + q_s[i0 + 2u * u] * bf16_to_f32(words[u]);
                            partial = partial + q_s[i0 + 2u * u + 1u] * bf16_hi(words[u]);
                        }
                    }
                    rest = whole;
                }
                for (var i = rest; i < end; i++) {
                    partial = partial + q_s[i] * k_at(key + i);
                }
                total = combine_chunk_partials(total, partial);
            }
            p_s[j] = mul_rn(total, scale);
        }
        workgroupBarrier();
        // Block max, in position order.
        if (t == 0u) {
            var m = p_s[0];
            for (var j = 1u; j < len; j++) {
                m = max_step(m, p_s[j]);
            }
            stats[4] = m;
        }
        workgroupBarrier();
        let block_max = stats[4];
        for (var j = t; j < len; j += THREADS) {
            p_s[j] = contract_exp(p_s[j] - block_max);
        }
        workgroupBarrier();
        // Block sum in position order, and the merge of (max, sum) into the state.
        if (t == 0u) {
            var sum = 0.0;
            for (var j = 0u; j < len; j++) {
                sum = sum + p_s[j];
            }
            if (start == 0u) {
                stats[0] = block_max;
                stats[1] = sum;
            } else {
                let m = max_step(stats[0], block_max);
                let alpha = contract_exp(stats[0] - m);
                let beta = contract_exp(block_max - m);
                stats[1] = mul_rn(stats[1], alpha) + mul_rn(sum, beta);
                stats[0] = m;
                stats[2] = alpha;
                stats[3] = beta;
            }
        }
        workgroupBarrier();
        // Value sums, positions ascending, merged into the state (each thread owns its dims).
        for (var i = t; i < d; i += THREADS) {
            var acc = 0.0;
            // 32 positions at a time, their loads issued before the adds (as for the keys).
            let whole = len / 32u * 32u;
            for (var j0 = 0u; j0 < whole; j0 += 32u) {
                var vs: array<f32, 32>;
                for (var u = 0u; u < 32u; u++) {
                    vs[u] = v_at(kv_row_s[j0 + u] * d + i);
                }
                for (var u = 0u; u < 32u; u++) {
                    acc = acc + mul_rn(p_s[j0 + u], vs[u]);
                }
            }
            for (var j = whole; j < len; j++) {
                acc = acc + mul_rn(p_s[j], v_at(kv_row_s[j] * d + i));
            }
            if (start == 0u) {
                acc_s[i] = acc;
            } else {
                acc_s[i] = mul_rn(acc_s[i], stats[2]) + mul_rn(acc, stats[3]);
            }
        }
        workgroupBarrier();
    }
    let inv = contract_recip(stats[1]);
    for (var i = t; i < d; i += THREADS) {
        out[q_base + i] = mul_rn(acc_s[i], inv);
    }
}
