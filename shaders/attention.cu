// Causal attention over the paged bf16 KV cache in the contract's order
// (contract::attention_query): positions 0..=t in blocks of ATTN_BLOCK aligned at multiples of
// ATTN_BLOCK; per block the scores, their max (sequential fold), the exponentials, their sum
// and the value sums, each in ascending position order; blocks merged in ascending order by
// contract::attention_merge. Two launch shapes give the same bits:
// - attention_fused: one thread block per (query, head) walks every block and merges as it goes
//   (prefill: many queries, enough parallelism); attention_fused_staged is the same with each KV
//   block's rows copied to shared memory first (decode: few enough blocks that all run at once);
// - attention_block_partials + attention_merge_partials: one thread block per (query, head, KV
//   block) writes that block's partial, then one per (query, head) merges the partials in
//   ascending order (decode: few queries, long contexts).
//
// `work` lists the query rows to compute, three u32 each: row index, absolute position t, and
// the sequence's first block-table entry. Head dims up to ATTN_MAX_HEAD_DIM (checked on host).

#define ATTN_THREADS 256
#define ATTN_MAX_HEAD_DIM 256

// The staged kernel (decode) copies a KV block's key and value rows into shared memory before
// its scores: every thread issues its 16-byte asynchronous copies at once, keys first, so the
// rows arrive coalesced in about one round trip and the values land while the scores are added.
// Unstaged, each thread fetches its own key row in several round trips and the value sums wait
// a round trip per group of positions (Nsight on the H100, 2026-11-24: 62% of the kernel's stall
// samples at barriers while those loads complete). Staged, a decode call of qwen3-8b took 8.7
// rather than 13.9 µs at 47 positions and 10.6 rather than 18.4 at 127 (same run, Nsight's locked
// clocks); tg128 rose 0.5-1.8%. Only where the rows are read from differs.
// Staged key rows are ATTN_STAGE_PAD values longer than head_dim, so that lanes reading their own
// rows 16 bytes at a time fall in different banks.
#define ATTN_STAGE_PAD 8u

struct AttnArgs {
    const float* q;
    const unsigned short* k_cache;
    const unsigned short* v_cache;
    const unsigned int* block_table;
    unsigned int heads;
    unsigned int kv_heads;
    unsigned int head_dim;
    unsigned int page_size;
    float scale;
};

struct AttnShared {
    float q[ATTN_MAX_HEAD_DIM];
    float p[ATTN_BLOCK];
    unsigned long long kv_offset[ATTN_BLOCK];
    float block_max;
    float block_sum;
};

// Loads query head h of `row`, rounded to bf16, into shared memory.
__device__ __forceinline__ void attn_load_q(const AttnArgs& a, unsigned int row, unsigned int h,
                                            AttnShared& s) {
    const float* qh = a.q + ((unsigned long long)row * a.heads + h) * a.head_dim;
    for (unsigned int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
        s.q[d] = round_bf16(qh[d]);
    }
    __syncthreads();
}

// `acc` folded with p[0], p[1], …, p[n - 1] in that order by `step`. The fold is one dependent
// chain, so its loads go out eight at a time ahead of it.
template <class Step>
__device__ __forceinline__ float fold_in_order(const float* p, unsigned int n, float acc,
                                               Step step) {
    unsigned int j = 0;
    for (; j + 8 <= n; j += 8) {
        float g[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            g[e] = p[j + e];
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            acc = step(acc, g[e]);
        }
    }
    for (; j < n; ++j) {
        acc = step(acc, p[j]);
    }
    return acc;
}

// Where position p's key and value rows for KV head kvh start in the caches.
__device__ __forceinline__ unsigned long long attn_kv_offset(const AttnArgs& a,
                                                             unsigned int table_start,
                                                             unsigned int kvh, unsigned int p) {
    unsigned long long slot =
        (unsigned long long)a.block_table[table_start + p / a.page_size] * a.page_size +
        p % a.page_size;
    return slot * ((unsigned long long)a.kv_heads * a.head_dim) +
           (unsigned long long)kvh * a.head_dim;
}

// Copies the rows at offsets[0], …, offsets[n - 1] of `cache` (head_dim values each, a multiple
// of 8) to `stage`, row j from stage + j * stride, in 16-byte pieces spread over the block's
// threads.
__device__ __forceinline__ void attn_stage_rows(const unsigned short* cache,
                                                const unsigned long long* offsets, unsigned int n,
                                                unsigned int d, unsigned short* stage,
                                                unsigned int stride) {
    const unsigned int pieces = d / 8;
    for (unsigned int i = threadIdx.x; i < n * pieces; i += blockDim.x) {
        unsigned int j = i / pieces;
        unsigned int e = (i - j * pieces) * 8;
        copy_16_async(stage + j * stride + e, cache + offsets[j] + e);
    }
}

// The most positions a lane of attn_fold_max_warp0 folds (a block holds at most ATTN_BLOCK).
#define ATTN_FOLD_PER_LANE ((ATTN_BLOCK + 31) / 32)

// max_step folded over p[0], …, p[n - 1] (n >= 1) into *out, by the 32 threads of warp 0, in
// the bits of the sequential fold: lane l folds its own consecutive positions in order, then
// neighbouring ranges are combined, the earlier one first. Without NaN, max_step keeps the first
// of equal values, so it is associative and every such grouping gives the sequential fold's bits.
// A NaN is kept only where it comes first, so a block with a NaN score takes the sequential fold.
__device__ __forceinline__ void attn_fold_max_warp0(const float* p, unsigned int n, float* out) {
    const unsigned int lane = threadIdx.x;
    const unsigned int per_lane = (n + 31) / 32;
    const unsigned int begin = min(lane * per_lane, n);
    const unsigned int end = min(begin + per_lane, n);
    // -inf changes no max_step result (a later -inf is not greater; an earlier one is passed over
    // by anything greater, and by an equal -inf of the same bits).
    float acc = F32_NEG_INF;
    bool nan = false;
    // n <= ATTN_BLOCK, so a lane has at most ATTN_FOLD_PER_LANE positions: unrolled to that bound,
    // the segment costs no loop set-up. As a general loop (set-up and remainder handling for two
    // positions a lane) the fold took 17% of the staged kernel's stall samples while seven warps
    // waited; unrolled, the kernel's median call went 9.01 -> 8.77 µs and tg128 161.1 -> 162.0
    // (H100, 2026-11-24, session 14 runs 8 and 9).
#pragma unroll
    for (unsigned int t = 0; t < ATTN_FOLD_PER_LANE; ++t) {
        const unsigned int i = begin + t;
        if (i < end) {
            const float v = p[i];
            nan |= (__float_as_uint(v) & F32_ABS) > F32_EXPONENT;
            acc = max_step(acc, v);
        }
    }
    for (unsigned int offset = 1; offset < 32; offset <<= 1) {
        float other = __shfl_xor_sync(0xffffffffu, acc, offset);
        bool other_is_later = (lane & offset) == 0u;
        acc = other_is_later ? max_step(acc, other) : max_step(other, acc);
    }
    if (__any_sync(0xffffffffu, nan)) {
        if (lane == 0) {
            *out = fold_in_order(p + 1, n - 1, p[0],
                                 [](float m, float v) { return max_step(m, v); });
        }
    } else if (lane == 0) {
        *out = acc;
    }
}

// The partial of positions start..start+n of one (query, KV head) (contract::attention_block).
// Leaves the block max and sum in shared memory and returns acc[threadIdx.x] (for threads below
// head_dim). Starts and ends with a barrier, so it may be called in a loop.
template <bool STAGED>
__device__ float attn_block_partial(const AttnArgs& a, unsigned int table_start, unsigned int kvh,
                                    unsigned int start, unsigned int n, AttnShared& s,
                                    unsigned short* stage_k, unsigned short* stage_v) {
    const unsigned int d = a.head_dim;
    const unsigned int key_stride = d + ATTN_STAGE_PAD;
    if (STAGED) {
        for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) {
            s.kv_offset[j] = attn_kv_offset(a, table_start, kvh, start + j);
        }
        __syncthreads();
        attn_stage_rows(a.k_cache, s.kv_offset, n, d, stage_k, key_stride);
        copy_async_commit();
        attn_stage_rows(a.v_cache, s.kv_offset, n, d, stage_v, d);
        copy_async_commit();
        copy_async_wait<1>();
        __syncthreads();
    }
    // Scores: thread j owns position start + j; its dot product runs in the chunked order.
    for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) {
        const unsigned short* key;
        if (STAGED) {
            key = stage_k + j * key_stride;
        } else {
            unsigned long long offset = attn_kv_offset(a, table_start, kvh, start + j);
            s.kv_offset[j] = offset;
            // The value sums below read this position's V row a group of positions at a time,
            // each group a round trip to memory; asked for now (one prefetch per 128-byte line),
            // the rows are in L2 by then (H100, 2026-11-24: tg128 136.3 -> 138.2 tokens/s).
            for (unsigned int e = 0; e < d; e += 64) {
                asm volatile("prefetch.global.L2 [%0];" ::"l"(a.v_cache + offset + e));
            }
            key = a.k_cache + offset;
        }
        float total = 0.0f;
        for (unsigned int c0 = 0; c0 < d; c0 += DOT_CHUNK) {
            unsigned int c1 = min(c0 + DOT_CHUNK, d);
            float part = 0.0f;
            if ((d & 7u) == 0u) {
                // Rows are kv_heads * d bf16 values with d a multiple of 8: 16-byte aligned.
                // Groups of four 16-byte loads are issued before their products are added.
                unsigned int kk = c0;
                for (; kk + 32 <= c1; kk += 32) {
                    uint4 kq[4];
#pragma unroll
                    for (int g = 0; g < 4; ++g) {
                        kq[g] = *reinterpret_cast<const uint4*>(key + kk + 8 * g);
                    }
#pragma unroll
                    for (int g = 0; g < 4; ++g) {
                        float kv[8];
                        unpack_bf16x8(kq[g], kv);
#pragma unroll
                        for (int e = 0; e < 8; ++e) {
                            part = fmaf(s.q[kk + 8 * g + e], kv[e], part);
                        }
                    }
                }
                for (; kk < c1; kk += 8) {
                    float kv[8];
                    unpack_bf16x8(*reinterpret_cast<const uint4*>(key + kk), kv);
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        part = fmaf(s.q[kk + e], kv[e], part);
                    }
                }
            } else {
                for (unsigned int kk = c0; kk < c1; ++kk) {
                    part = fmaf(s.q[kk], bf16_to_f32(key[kk]), part);
                }
            }
            total = combine_chunk_partials(total, part);
        }
        s.p[j] = mul_rn(total, a.scale);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        // A block always holds at least one position.
        attn_fold_max_warp0(s.p, n, &s.block_max);
    }
    __syncthreads();
    const float m = s.block_max;
    for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) {
        s.p[j] = contract_exp(s.p[j] - m);
    }
    if (STAGED) {
        copy_async_wait<0>();
    }
    __syncthreads();
    // The sum's one chain goes to a thread that owns no dimension below, where there is one, so
    // that it runs beside the value sums rather than before one of them.
    if (threadIdx.x == (d < blockDim.x ? blockDim.x - 1 : 0)) {
        s.block_sum = fold_in_order(s.p, n, 0.0f, [](float acc, float v) { return acc + v; });
    }
    // Value sums: thread i < d owns dimension i and adds positions in ascending order; at each
    // position the threads read one contiguous row. Loads go out eight positions at a time
    // before their products are added.
    float acc = 0.0f;
    if (threadIdx.x < d) {
        auto value = [&](unsigned int j) {
            return STAGED ? bf16_to_f32(stage_v[j * d + threadIdx.x])
                          : bf16_to_f32(a.v_cache[s.kv_offset[j] + threadIdx.x]);
        };
        unsigned int j = 0;
        for (; j + 8 <= n; j += 8) {
            float v[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                v[e] = value(j + e);
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                acc = acc + mul_rn(s.p[j + e], v[e]);
            }
        }
        for (; j < n; ++j) {
            acc = acc + mul_rn(s.p[j], value(j));
        }
    }
    __syncthreads();
    return acc;
}

// The running state of contract::attention_merge, held identically by every thread (acc: each
// thread's own dimension).
struct AttnState {
    float max;
    float sum;
    float acc;
};

__device__ __forceinline__ void attn_merge(AttnState& st, float next_max, float next_sum,
                                           float next_acc) {
    float m = max_step(st.max, next_max);
    float alpha = contract_exp(st.max - m);
    float beta = contract_exp(next_max - m);
    st.sum = mul_rn(st.sum, alpha) + mul_rn(next_sum, beta);
    st.acc = mul_rn(st.acc, alpha) + mul_rn(next_acc, beta);
    st.max = m;
}

// Writes the output, and its bf16 rounding for the o projection that reads it.
__device__ __forceinline__ void attn_finish(const AttnState& st, float* out_row_head,
                                            unsigned short* rounded_row_head, unsigned int d) {
    float inv = contract_recip(st.sum);
    if (threadIdx.x < d) {
        float y = mul_rn(st.acc, inv);
        out_row_head[threadIdx.x] = y;
        rounded_row_head[threadIdx.x] = (unsigned short)round_bf16_bits(y);
    }
}

// One thread block per (work row, head) walks every KV block and merges as it goes. STAGED:
// each KV block's rows are first copied to the dynamic shared memory, which holds stage_rows
// key rows of head_dim + ATTN_STAGE_PAD values, then stage_rows value rows of head_dim (head_dim
// a multiple of 8, stage_rows at least every block's length; the host checks both).
template <bool STAGED>
__device__ __forceinline__ void attention_fused_body(const AttnArgs& a,
                                                     const unsigned int* __restrict__ work,
                                                     float* __restrict__ out,
                                                     unsigned short* __restrict__ rounded,
                                                     unsigned int stage_rows) {
    // The o projection's GEMV, next in the stream, may start loading weights.
    allow_dependent_launch();
    wait_for_prior_grid();
    __shared__ AttnShared s;
    extern __shared__ __align__(16) unsigned short attn_stage[];
    unsigned short* stage_k = attn_stage;
    unsigned short* stage_v = attn_stage + stage_rows * (a.head_dim + ATTN_STAGE_PAD);
    unsigned int h = blockIdx.x;
    unsigned int row = work[3 * blockIdx.y];
    unsigned int t = work[3 * blockIdx.y + 1];
    unsigned int table_start = work[3 * blockIdx.y + 2];
    unsigned int kvh = h / (a.heads / a.kv_heads);
    attn_load_q(a, row, h, s);
    AttnState st;
    for (unsigned int start = 0; start <= t; start += ATTN_BLOCK) {
        unsigned int n = min((unsigned int)ATTN_BLOCK, t + 1 - start);
        float acc = attn_block_partial<STAGED>(a, table_start, kvh, start, n, s, stage_k, stage_v);
        if (start == 0) {
            st.max = s.block_max;
            st.sum = s.block_sum;
            st.acc = acc;
        } else {
            attn_merge(st, s.block_max, s.block_sum, acc);
        }
    }
    unsigned long long at = ((unsigned long long)row * a.heads + h) * a.head_dim;
    attn_finish(st, out + at, rounded + at, a.head_dim);
}

// The two entry points differ only in STAGED; attention_fused ignores stage_rows.
#define ATTN_FUSED_KERNEL(NAME, STAGED)                                                          \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS) NAME(                             \
        const float* __restrict__ q, const unsigned short* __restrict__ k_cache,                 \
        const unsigned short* __restrict__ v_cache,                                              \
        const unsigned int* __restrict__ block_table, unsigned int heads,                        \
        unsigned int kv_heads, unsigned int head_dim, unsigned int page_size, float scale,       \
        const unsigned int* __restrict__ work, float* __restrict__ out,                          \
        unsigned short* __restrict__ rounded, unsigned int stage_rows) {                         \
        AttnArgs a = {q,        k_cache,  v_cache,   block_table, heads,                         \
                      kv_heads, head_dim, page_size, scale};                                     \
        attention_fused_body<STAGED>(a, work, out, rounded, stage_rows);                         \
    }
ATTN_FUSED_KERNEL(attention_fused, false)
ATTN_FUSED_KERNEL(attention_fused_staged, true)

// `items` lists (work index, block index) pairs; the blocks of one work row are consecutive and
// ascending. Partials: per (item, head) head_dim + 2 floats: max, sum, acc[0..head_dim].
extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
attention_block_partials(const float* __restrict__ q, const unsigned short* __restrict__ k_cache,
    const unsigned short* __restrict__ v_cache, const unsigned int* __restrict__ block_table,
    unsigned int heads, unsigned int kv_heads, unsigned int head_dim, unsigned int page_size,
    float scale,
    const unsigned int* __restrict__ work, const unsigned int* __restrict__ items,
    float* __restrict__ partials) {
    AttnArgs a = {q, k_cache, v_cache, block_table, heads, kv_heads, head_dim, page_size, scale};
    __shared__ AttnShared s;
    unsigned int h = blockIdx.x;
    unsigned int item = blockIdx.y;
    unsigned int w = items[2 * item];
    unsigned int block = items[2 * item + 1];
    unsigned int row = work[3 * w];
    unsigned int t = work[3 * w + 1];
    unsigned int table_start = work[3 * w + 2];
    unsigned int kvh = h / (a.heads / a.kv_heads);
    unsigned int start = block * ATTN_BLOCK;
    unsigned int n = min((unsigned int)ATTN_BLOCK, t + 1 - start);
    attn_load_q(a, row, h, s);
    float acc = attn_block_partial<false>(a, table_start, kvh, start, n, s, nullptr, nullptr);
    float* dst = partials + ((unsigned long long)item * a.heads + h) * (a.head_dim + 2);
    if (threadIdx.x == 0) {
        dst[0] = s.block_max;
        dst[1] = s.block_sum;
    }
    if (threadIdx.x < a.head_dim) {
        dst[2 + threadIdx.x] = acc;
    }
}

// One thread block per (work row, head), one thread per dimension: merges that row's block
// partials in ascending order, then finishes. `first_item[w]` is w's first item.
extern "C" __global__ void attention_merge_partials(const float* __restrict__ partials,
                                                    const unsigned int* __restrict__ work,
                                                    const unsigned int* __restrict__ first_item,
                                                    float* __restrict__ out,
                                                    unsigned short* __restrict__ rounded,
                                                    unsigned int heads, unsigned int head_dim) {
    allow_dependent_launch();
    unsigned int h = blockIdx.x;
    unsigned int w = blockIdx.y;
    unsigned int row = work[3 * w];
    unsigned int t = work[3 * w + 1];
    unsigned int blocks = t / ATTN_BLOCK + 1;
    unsigned int item0 = first_item[w];
    unsigned int dd = threadIdx.x < head_dim ? threadIdx.x : 0;
    AttnState st;
    for (unsigned int b = 0; b < blocks; ++b) {
        const float* p = partials + ((unsigned long long)(item0 + b) * heads + h) * (head_dim + 2);
        if (b == 0) {
            st.max = p[0];
            st.sum = p[1];
            st.acc = p[2 + dd];
        } else {
            attn_merge(st, p[0], p[1], p[2 + dd]);
        }
    }
    unsigned long long at = ((unsigned long long)row * heads + h) * head_dim;
    attn_finish(st, out + at, rounded + at, head_dim);
}
