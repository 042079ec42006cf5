// Rotary embedding, Hugging Face rotate-half layout (contract::rope_head). One thread per
// (token, head, frequency) pair; positions are checked against the tables on the host.

// One frequency of one head: a = x[f], b = x[f + half] rotated by the angle whose cos and sin are
// c and s.
__device__ __forceinline__ void rope_pair(float a, float b, float c, float s, float* lo, float* hi) {
    *lo = mul_rn(a, c) - mul_rn(b, s);
    *hi = mul_rn(b, c) + mul_rn(a, s);
}

extern "C" __global__ void rope(const float* __restrict__ x, const unsigned int* __restrict__ positions,
                                const float* __restrict__ cos_table,
                                const float* __restrict__ sin_table, float* __restrict__ out,
                                unsigned int tokens, unsigned int heads, unsigned int half) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)tokens * heads * half) {
        return;
    }
    unsigned long long f = i % half;
    unsigned long long token_head = i / half;
    unsigned long long t = token_head / heads;
    unsigned long long base = token_head * 2ull * half;
    unsigned long long p = positions[t];
    float c = cos_table[p * half + f];
    float s = sin_table[p * half + f];
    rope_pair(x[base + f], x[base + f + half], c, s, &out[base + f], &out[base + f + half]);
}
