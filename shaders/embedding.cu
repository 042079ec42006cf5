// Embedding lookup: row ids[t] of the bf16 [vocab, dim] table, widened exactly to f32.
// Token ids are checked against the vocabulary on the host.
extern "C" __global__ void embedding(const unsigned short* __restrict__ table,
                                     const unsigned int* __restrict__ ids,
                                     float* __restrict__ out, unsigned int n_ids,
                                     unsigned int dim) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)n_ids * dim) {
        return;
    }
    unsigned long long t = i / dim;
    unsigned long long d = i % dim;
    out[i] = bf16_to_f32(table[(unsigned long long)ids[t] * dim + d]);
}
