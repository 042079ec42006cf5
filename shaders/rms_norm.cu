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

// A thread's elements i = threadIdx.x + e * blockDim.x are handled RMS_GROUP at a time, all
// loads before any store: the compiler may not move a load past a store that could alias it,
// so one element at a time would wait out a memory latency per element. A thread's first group
// (all of its elements when the row fits in one group per thread, as the host arranges for
// model widths) and its weights stay in registers for the output, so a row costs one round trip
// to memory before the reduction and none after it.
#define RMS_GROUP 8

// RMS_THREADS (1024) threads a block, as the host launches it.
extern "C" __global__ void __launch_bounds__(1024)
rms_norm(const float* __restrict__ x,
         const float* __restrict__ residual,
         float* __restrict__ sum_out,
         const unsigned short* __restrict__ weight,
         float* __restrict__ out,
         unsigned short* __restrict__ rounded,
         unsigned int dim,
         float eps,
         float inv_dim,
         unsigned int staged) {
    // The GEMV that reads the output, next in the stream, may start loading weights.
    allow_dependent_launch();
    wait_for_prior_grid();
    extern __shared__ __align__(16) float shared[];
    __shared__ float r_shared;
    unsigned long long row_start = (unsigned long long)blockIdx.x * dim;
    const float* row = x + row_start;
    const float* residual_row = residual ? residual + row_start : nullptr;
    unsigned int chunks = (dim + DOT_CHUNK - 1) / DOT_CHUNK;
    float first_v[RMS_GROUP] = {};
    unsigned short first_w[RMS_GROUP] = {};
    // The row (x, or x + residual written to sum_out), and its squares when staged.
    for (unsigned int i0 = threadIdx.x; i0 < dim; i0 += RMS_GROUP * blockDim.x) {
        float v[RMS_GROUP];
#pragma unroll
        for (int e = 0; e < RMS_GROUP; ++e) {
            unsigned int i = i0 + e * blockDim.x;
            v[e] = 0.0f;
            if (i < dim) {
                v[e] = residual_row ? row[i] + residual_row[i] : row[i];
                if (i0 == threadIdx.x) {
                    first_v[e] = v[e];
                    first_w[e] = weight[i];
                }
            }
        }
#pragma unroll
        for (int e = 0; e < RMS_GROUP; ++e) {
            unsigned int i = i0 + e * blockDim.x;
            if (i < dim) {
                if (residual_row) {
                    sum_out[row_start + i] = v[e];
                }
                if (staged) {
                    shared[rms_staged_index(i)] = mul_rn(v[e], v[e]);
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
    for (unsigned int i0 = threadIdx.x; i0 < dim; i0 += RMS_GROUP * blockDim.x) {
        float v[RMS_GROUP];
        unsigned short w[RMS_GROUP];
#pragma unroll
        for (int e = 0; e < RMS_GROUP; ++e) {
            unsigned int i = i0 + e * blockDim.x;
            v[e] = first_v[e];
            w[e] = first_w[e];
            if (i < dim && i0 != threadIdx.x) {
                v[e] = row[i];
                w[e] = weight[i];
            }
        }
#pragma unroll
        for (int e = 0; e < RMS_GROUP; ++e) {
            unsigned int i = i0 + e * blockDim.x;
            if (i < dim) {
                float y = rms_apply(v[e], r, w[e]);
                out[row_start + i] = y;
                rounded[row_start + i] = (unsigned short)round_bf16_bits(y);
            }
        }
    }
}
