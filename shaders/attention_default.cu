// KernelMode::Default attention: a split-KV ("flash-decoding") kernel as common servers run it,
// NOT the contract. Compiled with --use_fast_math (FMA contraction, fast exp2) and without
// numerics.cuh. The host picks the split count from the batch and the context lengths, so the
// bits of one request depend on the rest of the batch: this is the honest baseline ditto is
// compared with. Requires head_dim a multiple of 32 and at most 256 (checked on the host).
//
// Scores are kept in the log2 domain (scale * log2 e folded in), as FlashAttention does.

#define SPLITKV_WARPS 4
#define SPLITKV_MAX_PER_LANE 8
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_bits_to_float(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

__device__ __forceinline__ float to_bf16_value(float x) {
    // Round to nearest even on the bits (inputs are finite activations).
    unsigned int bits = __float_as_uint(x);
    bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    return __uint_as_float(bits);
}

// grid (heads, work rows, splits), SPLITKV_WARPS warps. Split s covers positions
// [s * per, min((s + 1) * per, t + 1)) with per = ceil((t + 1) / splits). Writes per (row, head,
// split) head_dim + 2 floats: max (log2 domain), sum, acc[head_dim].
extern "C" __global__ void __launch_bounds__(SPLITKV_WARPS * 32)
attention_splitkv(const float* __restrict__ q, const unsigned short* __restrict__ k_cache,
                  const unsigned short* __restrict__ v_cache,
                  const unsigned int* __restrict__ block_table, unsigned int heads,
                  unsigned int kv_heads, unsigned int head_dim, unsigned int page_size,
                  float scale, const unsigned int* __restrict__ work, unsigned int splits,
                  float* __restrict__ partials) {
    __shared__ float warp_max[SPLITKV_WARPS];
    __shared__ float warp_sum[SPLITKV_WARPS];
    __shared__ float warp_acc[SPLITKV_WARPS][SPLITKV_MAX_PER_LANE * 32];
    unsigned int h = blockIdx.x;
    unsigned int w = blockIdx.y;
    unsigned int split = blockIdx.z;
    unsigned int row = work[3 * w];
    unsigned int t = work[3 * w + 1];
    unsigned int table_start = work[3 * w + 2];
    unsigned int kvh = h / (heads / kv_heads);
    unsigned int len = t + 1;
    unsigned int per = (len + splits - 1) / splits;
    unsigned int s0 = min(split * per, len);
    unsigned int s1 = min(s0 + per, len);
    unsigned int lane = threadIdx.x & 31u;
    unsigned int warp = threadIdx.x >> 5;
    unsigned int per_lane = head_dim / 32;
    const float* qh = q + ((unsigned long long)row * heads + h) * head_dim;
    float qv[SPLITKV_MAX_PER_LANE];
    float acc[SPLITKV_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < SPLITKV_MAX_PER_LANE; ++i) {
        qv[i] = i < (int)per_lane ? to_bf16_value(qh[i * 32 + lane]) : 0.0f;
        acc[i] = 0.0f;
    }
    const float scale_log2 = scale * 1.4426950408889634f;
    const unsigned long long kv_row = (unsigned long long)kv_heads * head_dim;
    float m = NEG_INF;
    float l = 0.0f;
    for (unsigned int p = s0 + warp; p < s1; p += SPLITKV_WARPS) {
        unsigned long long slot =
            (unsigned long long)block_table[table_start + p / page_size] * page_size + p % page_size;
        unsigned long long off = slot * kv_row + (unsigned long long)kvh * head_dim;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < SPLITKV_MAX_PER_LANE; ++i) {
            if (i < (int)per_lane) {
                dot += qv[i] * bf16_bits_to_float(k_cache[off + i * 32 + lane]);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            dot += __shfl_xor_sync(0xffffffffu, dot, o);
        }
        float score = dot * scale_log2;
        float m_new = fmaxf(m, score);
        float correction = exp2f(m - m_new);
        float weight = exp2f(score - m_new);
        l = l * correction + weight;
#pragma unroll
        for (int i = 0; i < SPLITKV_MAX_PER_LANE; ++i) {
            if (i < (int)per_lane) {
                acc[i] = acc[i] * correction + weight * bf16_bits_to_float(v_cache[off + i * 32 + lane]);
            }
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < SPLITKV_MAX_PER_LANE; ++i) {
        if (i < (int)per_lane) {
            warp_acc[warp][i * 32 + lane] = acc[i];
        }
    }
    __syncthreads();
    float big = NEG_INF;
    for (int v = 0; v < SPLITKV_WARPS; ++v) {
        big = fmaxf(big, warp_max[v]);
    }
    float* dst = partials + (((unsigned long long)w * heads + h) * splits + split) * (head_dim + 2);
    for (unsigned int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        for (int v = 0; v < SPLITKV_WARPS; ++v) {
            if (warp_max[v] != NEG_INF) {
                a += warp_acc[v][d] * exp2f(warp_max[v] - big);
            }
        }
        dst[2 + d] = a;
    }
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int v = 0; v < SPLITKV_WARPS; ++v) {
            if (warp_max[v] != NEG_INF) {
                sum += warp_sum[v] * exp2f(warp_max[v] - big);
            }
        }
        dst[0] = big;
        dst[1] = sum;
    }
}

// grid (heads, work rows); one thread per dimension: rescales and adds the splits' partials.
extern "C" __global__ void attention_splitkv_combine(const float* __restrict__ partials,
                                                     const unsigned int* __restrict__ work,
                                                     float* __restrict__ out, unsigned int heads,
                                                     unsigned int head_dim, unsigned int splits) {
    unsigned int h = blockIdx.x;
    unsigned int w = blockIdx.y;
    unsigned int row = work[3 * w];
    const float* base = partials + ((unsigned long long)w * heads + h) * splits * (head_dim + 2);
    float big = NEG_INF;
    for (unsigned int s = 0; s < splits; ++s) {
        big = fmaxf(big, base[s * (head_dim + 2)]);
    }
    float sum = 0.0f;
    float a = 0.0f;
    unsigned int d = threadIdx.x;
    for (unsigned int s = 0; s < splits; ++s) {
        const float* p = base + s * (head_dim + 2);
        if (p[0] != NEG_INF) {
            float f = exp2f(p[0] - big);
            sum += p[1] * f;
            if (d < head_dim) {
                a += p[2 + d] * f;
            }
        }
    }
    if (d < head_dim) {
        out[((unsigned long long)row * heads + h) * head_dim + d] = a / sum;
    }
}
