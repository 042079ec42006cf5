// RMSNorm of one row per thread block (contract::rms_norm_row).
// Sum of squares in the chunked order: thread c owns chunks c, c + blockDim, …, each summed from
// +0.0 with k ascending; thread 0 then combines the chunk partials in ascending order. The
// dynamic shared memory holds one partial per chunk.
extern "C" __global__ void rms_norm(const float* __restrict__ x,
                                    const unsigned short* __restrict__ weight,
                                    float* __restrict__ out, unsigned int dim, float eps,
                                    float inv_dim) {
    extern __shared__ float chunk_partials[];
    __shared__ float r_shared;
    const float* row = x + (unsigned long long)blockIdx.x * dim;
    float* out_row = out + (unsigned long long)blockIdx.x * dim;
    unsigned int chunks = (dim + DOT_CHUNK - 1) / DOT_CHUNK;
    for (unsigned int c = threadIdx.x; c < chunks; c += blockDim.x) {
        unsigned int start = c * DOT_CHUNK;
        unsigned int end = min(start + DOT_CHUNK, dim);
        float partial = 0.0f;
        for (unsigned int k = start; k < end; ++k) {
            float v = row[k];
            partial = partial + mul_rn(v, v);
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
        out_row[i] = mul_rn(mul_rn(row[i], r), bf16_to_f32(weight[i]));
    }
}
