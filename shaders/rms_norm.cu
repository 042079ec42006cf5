// RMSNorm of one row per thread block (contract::rms_norm_row); the output also rounded to bf16
// bits for the matmuls it feeds. With a `residual`, the row normed is x + residual (the residual
// connection), which is also written to `sum_out`.
//
// Sum of squares in the chunked order: thread c owns chunks c, c + blockDim, …, each summed from
// +0.0 with k ascending; thread 0 then combines the chunk partials in ascending order. The
// dynamic shared memory holds one partial per chunk and, when `staged` (the host checks it
// fits), a copy of the row: read once by all threads side by side, so the loads are coalesced
// and in flight together instead of one chunk-long chain of loads per thread. The copy keeps
// one spare word per chunk so that threads walking different chunks hit different banks.

// One chunk's sum of squares, from +0.0 with k ascending.
__device__ __forceinline__ float rms_chunk_sum_of_squares(const float* values, unsigned int len) {
    float partial = 0.0f;
#pragma unroll 8
    for (unsigned int k = 0; k < len; ++k) {
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

__device__ __forceinline__ float rms_apply(float v, float r, unsigned short weight) {
    return mul_rn(mul_rn(v, r), bf16_to_f32(weight));
}

extern "C" __global__ void rms_norm(const float* __restrict__ x,
                                    const float* __restrict__ residual,
                                    float* __restrict__ sum_out,
                                    const unsigned short* __restrict__ weight,
                                    float* __restrict__ out,
                                    unsigned short* __restrict__ rounded, unsigned int dim,
                                    float eps, float inv_dim, unsigned int staged) {
    extern __shared__ float shared[];
    __shared__ float r_shared;
    unsigned long long row_start = (unsigned long long)blockIdx.x * dim;
    const float* row = x + row_start;
    const float* residual_row = residual ? residual + row_start : nullptr;
    unsigned int chunks = (dim + DOT_CHUNK - 1) / DOT_CHUNK;
    float* chunk_partials = shared;
    float* row_copy = shared + chunks;
    if (residual_row) {
        // The sum first, so that every later read sees it.
        for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) {
            sum_out[row_start + i] = row[i] + residual_row[i];
        }
        __syncthreads();
        row = sum_out + row_start;
    }
    if (staged) {
        for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) {
            row_copy[i + i / DOT_CHUNK] = row[i];
        }
        __syncthreads();
    }
    for (unsigned int c = threadIdx.x; c < chunks; c += blockDim.x) {
        unsigned int start = c * DOT_CHUNK;
        unsigned int len = min(start + DOT_CHUNK, dim) - start;
        chunk_partials[c] =
            rms_chunk_sum_of_squares(staged ? row_copy + start + c : row + start, len);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        r_shared = rms_scale(chunk_partials, chunks, inv_dim, eps);
    }
    __syncthreads();
    float r = r_shared;
    for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) {
        float y = rms_apply(staged ? row_copy[i + i / DOT_CHUNK] : row[i], r, weight[i]);
        out[row_start + i] = y;
        rounded[row_start + i] = (unsigned short)round_bf16_bits(y);
    }
}
