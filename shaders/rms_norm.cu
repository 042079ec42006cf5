// RMSNorm of one row per thread block (contract::rms_norm_row); the output also rounded to bf16
// bits for the matmuls it feeds.
// Sum of squares in the chunked order: thread c owns chunks c, c + blockDim, …, each summed from
// +0.0 with k ascending; thread 0 then combines the chunk partials in ascending order. The
// dynamic shared memory holds one partial per chunk and, when `staged` (the host checks it
// fits), a copy of the row: read once by all threads side by side, so the loads are coalesced
// and in flight together instead of one chunk-long chain of loads per thread. The copy keeps
// one spare word per chunk so that threads walking different chunks hit different banks.
extern "C" __global__ void rms_norm(const float* __restrict__ x,
                                    const unsigned short* __restrict__ weight,
                                    float* __restrict__ out,
                                    unsigned short* __restrict__ rounded, unsigned int dim,
                                    float eps,
                                    float inv_dim, unsigned int staged) {
    extern __shared__ float shared[];
    __shared__ float r_shared;
    const float* row = x + (unsigned long long)blockIdx.x * dim;
    float* out_row = out + (unsigned long long)blockIdx.x * dim;
    unsigned short* rounded_row = rounded + (unsigned long long)blockIdx.x * dim;
    unsigned int chunks = (dim + DOT_CHUNK - 1) / DOT_CHUNK;
    float* chunk_partials = shared;
    float* row_copy = shared + chunks;
    if (staged) {
        for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) {
            row_copy[i + i / DOT_CHUNK] = row[i];
        }
        __syncthreads();
    }
    for (unsigned int c = threadIdx.x; c < chunks; c += blockDim.x) {
        unsigned int start = c * DOT_CHUNK;
        unsigned int end = min(start + DOT_CHUNK, dim);
        float partial = 0.0f;
        if (staged) {
            const float* chunk = row_copy + start + c;
#pragma unroll 8
            for (unsigned int k = 0; k < end - start; ++k) {
                float v = chunk[k];
                partial = partial + mul_rn(v, v);
            }
        } else {
            for (unsigned int k = start; k < end; ++k) {
                float v = row[k];
                partial = partial + mul_rn(v, v);
            }
        }
        chunk_partials[c] = partial;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (unsigned int c = 0; c < chunks; ++c) {
            total = combine_chunk_partials(total, chunk_partials[c]);
        }
        r_shared = contract_rsqrt(mul_rn(total, inv_dim) + eps);
    }
    __syncthreads();
    float r = r_shared;
    for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = staged ? row_copy[i + i / DOT_CHUNK] : row[i];
        float y = mul_rn(mul_rn(v, r), bf16_to_f32(weight[i]));
        out_row[i] = y;
        rounded_row[i] = (unsigned short)round_bf16_bits(y);
    }
}
