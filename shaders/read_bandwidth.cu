// Not a contract kernel: the benchmarks' ceiling for streaming reads. Reads `units` 16-byte
// units once, four loads in flight per thread, and folds them with XOR so that no load can be
// dropped; the fold is written only if it equals `never` (the host passes a value it cannot
// take), so the kernel writes nothing in practice.
extern "C" __global__ void read_bandwidth(const uint4* __restrict__ src, unsigned long long units,
                                          unsigned int never, unsigned int* __restrict__ sink) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int fold = 0;
    for (; i + 3 * stride < units; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            v[u] = __ldcs(src + i + u * stride);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            fold ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
        }
    }
    for (; i < units; i += stride) {
        uint4 v = __ldcs(src + i);
        fold ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (fold == never) {
        sink[0] = fold;
    }
}
