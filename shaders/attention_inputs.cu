// Backend::attention_inputs in one launch: the fused q/k/v projection split, Qwen3's per-head
// RMSNorm of q and k, rotary embedding, and k and v written to the cache, with the bits of
// rms_norm, rope and write_kv run one after another. Assembled after rms_norm.cu and rope.cu,
// whose row helpers it uses.
//
// One block per (head row, token): blockIdx.x runs over the q heads, then the k heads, then the
// v heads.

// A slot whose k and v are written by a later row of the same call (the last write wins, as in
// write_kv).
#define ATTN_INPUTS_SKIP 0xffffffffu

extern "C" __global__ void attention_inputs(
    const float* __restrict__ qkv, const unsigned short* __restrict__ q_norm,
    const unsigned short* __restrict__ k_norm, const unsigned int* __restrict__ positions,
    const unsigned int* __restrict__ slots, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, float* __restrict__ q_out,
    unsigned short* __restrict__ k_cache, unsigned short* __restrict__ v_cache,
    unsigned int heads, unsigned int kv_heads, unsigned int head_dim, float eps, float inv_dim) {
    // Attention, next in the stream, may be scheduled.
    allow_dependent_launch();
    wait_for_prior_grid();
    extern __shared__ __align__(16) float shared[];
    __shared__ float r_shared;
    unsigned int h = blockIdx.x;
    unsigned int token = blockIdx.y;
    bool is_q = h < heads;
    bool is_v = h >= heads + kv_heads;
    unsigned int slot = slots[token];
    // Uniform per block, so returning before any barrier is safe.
    if (!is_q && slot == ATTN_INPUTS_SKIP) {
        return;
    }
    unsigned int row_len = (heads + 2 * kv_heads) * head_dim;
    const float* src = qkv + (unsigned long long)token * row_len + (unsigned long long)h * head_dim;
    unsigned long long kv_len = (unsigned long long)kv_heads * head_dim;
    if (is_v) {
        unsigned long long dst = slot * kv_len + (unsigned long long)(h - heads - kv_heads) * head_dim;
        for (unsigned int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            v_cache[dst + i] = (unsigned short)round_bf16_bits(src[i]);
        }
        return;
    }
    // Shared: the padded squares (16-byte aligned at the start), the row, the chunk partials.
    unsigned int chunks = (head_dim + DOT_CHUNK - 1) / DOT_CHUNK;
    float* squares = shared;
    float* row = shared + rms_staged_index(chunks * DOT_CHUNK);
    float* chunk_partials = row + head_dim;
    for (unsigned int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        row[i] = src[i];
    }
    __syncthreads();
    const unsigned short* norm = is_q ? q_norm : k_norm;
    if (norm) {
        for (unsigned int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            squares[rms_staged_index(i)] = mul_rn(row[i], row[i]);
        }
        __syncthreads();
        float r =
            rms_scale_of_squares(squares, head_dim, chunk_partials, &r_shared, inv_dim, eps);
        for (unsigned int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            row[i] = rms_apply(row[i], r, norm[i]);
        }
        __syncthreads();
    }
    unsigned int half = head_dim / 2;
    unsigned long long p = positions[token];
    for (unsigned int f = threadIdx.x; f < half; f += blockDim.x) {
        float lo, hi;
        rope_pair(row[f], row[f + half], cos_table[p * half + f], sin_table[p * half + f], &lo, &hi);
        if (is_q) {
            unsigned long long dst = ((unsigned long long)token * heads + h) * head_dim;
            q_out[dst + f] = lo;
            q_out[dst + f + half] = hi;
        } else {
            unsigned long long dst = slot * kv_len + (unsigned long long)(h - heads) * head_dim;
            k_cache[dst + f] = (unsigned short)round_bf16_bits(lo);
            k_cache[dst + f + half] = (unsigned short)round_bf16_bits(hi);
        }
    }
}
