// Writes K and V rows, rounded to bf16, into their cache slots. `src_rows[i]` names the input
// row written to `slots[i]`; the host keeps only the last row for a slot named twice (the cpu
// backend's order), so no two threads write one element.
extern "C" __global__ void write_kv(const float* __restrict__ k, const float* __restrict__ v,
                                    const unsigned int* __restrict__ src_rows,
                                    const unsigned int* __restrict__ slots,
                                    unsigned short* __restrict__ k_cache,
                                    unsigned short* __restrict__ v_cache, unsigned int n_rows,
                                    unsigned int row_len) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)n_rows * row_len) {
        return;
    }
    unsigned long long r = i / row_len;
    unsigned long long d = i % row_len;
    unsigned long long src = (unsigned long long)src_rows[r] * row_len + d;
    unsigned long long dst = (unsigned long long)slots[r] * row_len + d;
    k_cache[dst] = (unsigned short)round_bf16_bits(k[src]);
    v_cache[dst] = (unsigned short)round_bf16_bits(v[src]);
}
