// Elementwise kernels: silu(gate) * up, the residual add, and a bf16 bias added to every row.

extern "C" __global__ void silu_mul(const float* __restrict__ gate, const float* __restrict__ up,
                                    float* __restrict__ out, unsigned long long len) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        out[i] = mul_rn(contract_silu(gate[i]), up[i]);
    }
}

extern "C" __global__ void add(const float* __restrict__ a, const float* __restrict__ b,
                               float* __restrict__ out, unsigned long long len) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        out[i] = a[i] + b[i];
    }
}

extern "C" __global__ void add_bias(const float* __restrict__ x,
                                    const unsigned short* __restrict__ bias,
                                    float* __restrict__ out, unsigned long long len,
                                    unsigned int n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        out[i] = x[i] + bf16_to_f32(bias[i % n]);
    }
}
