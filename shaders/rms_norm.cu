// RMSNorm of one row per thread block (contract::rms_norm_row); the output also rounded to bf16
// bits for the matmuls it feeds. With a `residual`, the row normed is x + residual (the residual
// connection), which is also written to `sum_out`.
//
// Sum of squares in the chunked order: thread c owns chunks c, c + blockDim, …, each summed from
// +0.0 with k ascending; thread 0 then combines the chunk partials in ascending order. Each
// chunk's additions are one dependent chain, so nothing else may sit on it: when `staged` (the
// host checks that it fits), all threads first write the squares to shared memory side by side,
// and the chain threads then only load (16 bytes at a time, ahead of use) and add. Each staged
// chunk is padded by RMS_CHUNK_PAD words, so that it starts 16-byte aligned and threads walking
// different chunks hit different banks. Without staging, the chain threads square as they go,
// with their loads grouped ahead of the additions.

#define RMS_CHUNK_PAD 4u

// Index of element i in the padded staging of the squares.
__device__ __forceinline__ unsigned int rms_staged_index(unsigned int i) {
    return i + (i / DOT_CHUNK) * RMS_CHUNK_PAD;
}

// One chunk's sum of precomputed squares (16-byte aligned), from +0.0 with k ascending.
__device__ __forceinline__ float rms_chunk_sum(const float* squares, unsigned int len) {
    float partial = 0.0f;
    unsigned int k = 0;
    for (; k + 16 <= len; k += 16) {
        float4 g[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            g[i] = *reinterpret_cast<const float4*>(squares + k + 4 * i);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            partial = partial + g[i].x;
            partial = partial + g[i].y;
            partial = partial + g[i].z;
            partial = partial + g[i].w;
        }
    }
    for (; k < len; ++k) {
        partial = partial + squares[k];
    }
    return partial;
}

// One chunk's sum of squares of `values`, from +0.0 with k ascending.
__device__ __forceinline__ float rms_chunk_sum_of_squares(const float* values, unsigned int len) {
    float partial = 0.0f;
    unsigned int k = 0;
    for (; k + 8 <= len; k += 8) {
        float sq[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            float v = values[k + e];
            sq[e] = mul_rn(v, v);
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            partial = partial + sq[e];
        }
    }
    for (; k < len; ++k) {
        float v = values[k];
        partial = partial + mul_rn(v, v);
    }
    return partial;
}

// The scale 1/rms from the chunk partials, combined in ascending order.
__device__ __forceinline__ float rms_scale(const float* chunk_partials, unsigned int chunks,
                                           float inv_dim, float eps) {
    float total = 0.0f;
    for (unsigned int c = 0; c < chunks; ++c) {
        total = combine_chunk_partials(total, chunk_partials[c]);
    }
    return contract_rsqrt(mul_rn(total, inv_dim) + eps);
}

// The scale 1/rms of a row whose squares are staged in `squares` (padded chunks), returned to
// every thread of the block; every thread must call it, after a barrier that follows the
// staging. `chunk_partials` is one shared float per chunk.
__device__ __forceinline__ float rms_scale_of_squares(const float* squares, unsigned int dim,
                                                      float* chunk_partials, float* r_shared,
                                                      float inv_dim, float eps) {
    unsigned int chunks = (dim + DOT_CHUNK - 1) / DOT_CHUNK;
    for (unsigned int c = threadIdx.x; c < chunks; c += blockDim.x) {
        unsigned int start = c * DOT_CHUNK;
        chunk_partials[c] =
            rms_chunk_sum(squares + rms_staged_index(start), min(start + DOT_CHUNK, dim) - start);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        *r_shared = rms_scale(chunk_partials, chunks, inv_dim, eps);
    }
    __syncthreads();
    return *r_shared;
}

__device__ __forceinline__ float rms_apply(float v, float r, unsigned short weight) {
    return mul_rn(mul_rn(v, r), bf16_to_f32(weight));
}

// Elements travel in units of VEC consecutive values (one 16-byte load of x at VEC 4, which the
// host picks where dim is a multiple of 4 and the buffers are aligned for it). One block does a
// whole row on one SM, so its instructions queue at that SM's schedulers: one element at a time,
// a row of 4096 took 20.7 thousand instructions, issued at 1.75 a cycle (9.8 µs a call); four at
// a time, 11.7 thousand (7.3 µs; Nsight Compute on the H100, 2026-11-24; tg128 160.2 -> 164.0
// tokens/s).
// Cutting the row into slices, a block each, with every block repeating the chain, was no
// faster: the block then waits on its chain and round trips, not on issue.
#define RMS_GROUP_ELEMENTS 8

template <int VEC>
__device__ __forceinline__ void rms_load_unit(const float* p, float (&v)[VEC]) {
    if (VEC == 4) {
        float4 q = *reinterpret_cast<const float4*>(p);
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            v[j] = p[j];
        }
    }
}

template <int VEC>
__device__ __forceinline__ void rms_store_unit(float* p, const float (&v)[VEC]) {
    if (VEC == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            p[j] = v[j];
        }
    }
}

// The unit's weights, as their bf16 bits.
template <int VEC>
__device__ __forceinline__ void rms_load_weights(const unsigned short* p,
                                                 unsigned short (&w)[VEC]) {
    if (VEC == 4) {
        uint2 q = *reinterpret_cast<const uint2*>(p);
        w[0] = (unsigned short)(q.x & 0xffffu);
        w[1] = (unsigned short)(q.x >> 16);
        w[2] = (unsigned short)(q.y & 0xffffu);
        w[3] = (unsigned short)(q.y >> 16);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            w[j] = p[j];
        }
    }
}

// The unit's outputs rounded to bf16 bits.
template <int VEC>
__device__ __forceinline__ void rms_store_rounded(unsigned short* p, const float (&y)[VEC]) {
    if (VEC == 4) {
        *reinterpret_cast<uint2*>(p) = round_pack_bf16x4(y);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            p[j] = (unsigned short)round_bf16_bits(y[j]);
        }
    }
}

// A thread's units u = threadIdx.x + g * blockDim.x are handled a group of GROUP at a time, all
// loads before any store: the compiler may not move a load past a store that could alias it,
// so one unit at a time would wait out a memory latency per unit. A thread's first group (all
// of its units when the row fits in one group per thread, as for model widths) and its weights
// stay in registers for the output, so a row costs one round trip to memory before the
// reduction and none after it.
template <int VEC>
__device__ __forceinline__ void rms_norm_row(const float* __restrict__ x,
                                             const float* __restrict__ residual,
                                             float* __restrict__ sum_out,
                                             const unsigned short* __restrict__ weight,
                                             float* __restrict__ out,
                                             unsigned short* __restrict__ rounded,
                                             unsigned int dim, float eps, float inv_dim,
                                             unsigned int staged) {
    constexpr int GROUP = RMS_GROUP_ELEMENTS / VEC;
    extern __shared__ __align__(16) float shared[];
    __shared__ float r_shared;
    unsigned long long row_start = (unsigned long long)blockIdx.x * dim;
    const float* row = x + row_start;
    const float* residual_row = residual ? residual + row_start : nullptr;
    unsigned int chunks = (dim + DOT_CHUNK - 1) / DOT_CHUNK;
    unsigned int units = dim / VEC;
    float first_v[GROUP][VEC] = {};
    unsigned short first_w[GROUP][VEC] = {};
    // The row (x, or x + residual written to sum_out), and its squares when staged. A unit
    // never straddles a chunk (DOT_CHUNK is a multiple of VEC), so its staged squares are
    // contiguous and, at VEC 4, 16-byte aligned.
    for (unsigned int u0 = threadIdx.x; u0 < units; u0 += GROUP * blockDim.x) {
        float v[GROUP][VEC];
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            unsigned int u = u0 + g * blockDim.x;
            if (u < units) {
                rms_load_unit<VEC>(row + u * VEC, v[g]);
                if (residual_row) {
                    float r[VEC];
                    rms_load_unit<VEC>(residual_row + u * VEC, r);
#pragma unroll
                    for (int j = 0; j < VEC; ++j) {
                        v[g][j] = v[g][j] + r[j];
                    }
                }
                if (u0 == threadIdx.x) {
                    rms_load_weights<VEC>(weight + u * VEC, first_w[g]);
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            unsigned int u = u0 + g * blockDim.x;
            if (u < units) {
                if (u0 == threadIdx.x) {
#pragma unroll
                    for (int j = 0; j < VEC; ++j) {
                        first_v[g][j] = v[g][j];
                    }
                }
                if (residual_row) {
                    rms_store_unit<VEC>(sum_out + row_start + u * VEC, v[g]);
                }
                if (staged) {
                    float sq[VEC];
#pragma unroll
                    for (int j = 0; j < VEC; ++j) {
                        sq[j] = mul_rn(v[g][j], v[g][j]);
                    }
                    rms_store_unit<VEC>(shared + rms_staged_index(u * VEC), sq);
                }
            }
        }
    }
    if (residual_row) {
        row = sum_out + row_start;
    }
    __syncthreads();
    float r;
    if (staged) {
        // The chunk partials follow the padded squares.
        float* chunk_partials = shared + rms_staged_index(chunks * DOT_CHUNK);
        r = rms_scale_of_squares(shared, dim, chunk_partials, &r_shared, inv_dim, eps);
    } else {
        float* chunk_partials = shared;
        for (unsigned int c = threadIdx.x; c < chunks; c += blockDim.x) {
            unsigned int start = c * DOT_CHUNK;
            chunk_partials[c] =
                rms_chunk_sum_of_squares(row + start, min(start + DOT_CHUNK, dim) - start);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            r_shared = rms_scale(chunk_partials, chunks, inv_dim, eps);
        }
        __syncthreads();
        r = r_shared;
    }
    for (unsigned int u0 = threadIdx.x; u0 < units; u0 += GROUP * blockDim.x) {
        float v[GROUP][VEC];
        unsigned short w[GROUP][VEC];
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            unsigned int u = u0 + g * blockDim.x;
            if (u0 == threadIdx.x) {
#pragma unroll
                for (int j = 0; j < VEC; ++j) {
                    v[g][j] = first_v[g][j];
                    w[g][j] = first_w[g][j];
                }
            } else if (u < units) {
                rms_load_unit<VEC>(row + u * VEC, v[g]);
                rms_load_weights<VEC>(weight + u * VEC, w[g]);
            }
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            unsigned int u = u0 + g * blockDim.x;
            if (u < units) {
                float y[VEC];
#pragma unroll
                for (int j = 0; j < VEC; ++j) {
                    y[j] = rms_apply(v[g][j], r, w[g][j]);
                }
                rms_store_unit<VEC>(out + row_start + u * VEC, y);
                rms_store_rounded<VEC>(rounded + row_start + u * VEC, y);
            }
        }
    }
}

// RMS_THREADS (1024) threads a block, one block a row, as the host launches it. rms_norm_vec4
// needs dim a multiple of 4, x, residual, sum_out and out 16-byte aligned, and weight and rounded
// 8-byte aligned (the host checks); rms_norm takes any row.
#define RMS_NORM_KERNEL(NAME, VEC)                                                               \
    extern "C" __global__ void __launch_bounds__(1024) NAME(                                    \
        const float* __restrict__ x, const float* __restrict__ residual,                        \
        float* __restrict__ sum_out, const unsigned short* __restrict__ weight,                 \
        float* __restrict__ out, unsigned short* __restrict__ rounded, unsigned int dim,        \
        float eps, float inv_dim, unsigned int staged) {                                        \
        /* The GEMV that reads the output, next in the stream, may start loading weights. */    \
        allow_dependent_launch();                                                               \
        wait_for_prior_grid();                                                                  \
        rms_norm_row<VEC>(x, residual, sum_out, weight, out, rounded, dim, eps, inv_dim,        \
                          staged);                                                              \
    }
RMS_NORM_KERNEL(rms_norm, 1)
RMS_NORM_KERNEL(rms_norm_vec4, 4)
