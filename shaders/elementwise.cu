// Elementwise kernels: silu(gate) * up, the q/k/v split, the residual add, and a bf16 bias added
// to every row.

// Each row of gate_up holds n gate values, then n up values; the output is also rounded to bf16
// bits for the matmul it feeds.
extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, float* __restrict__ out,
                                    unsigned short* __restrict__ rounded, unsigned long long len,
                                    unsigned int n) {
    // The down projection's GEMV, next in the stream, may start loading weights.
    allow_dependent_launch();
    wait_for_prior_grid();
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        unsigned long long gate = i + (i / n) * n;
        float y = mul_rn(contract_silu(gate_up[gate]), gate_up[gate + n]);
        out[i] = y;
        rounded[i] = (unsigned short)round_bf16_bits(y);
    }
}

// Rows of q_len + 2 kv_len values split into q, k and v.
extern "C" __global__ void split_qkv(const float* __restrict__ qkv, float* __restrict__ q,
                                     float* __restrict__ k, float* __restrict__ v,
                                     unsigned long long len, unsigned int q_len,
                                     unsigned int kv_len) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) {
        unsigned int row_len = q_len + 2 * kv_len;
        unsigned long long row = i / row_len;
        unsigned int c = (unsigned int)(i - row * row_len);
        float value = qkv[i];
        if (c < q_len) {
            q[row * q_len + c] = value;
        } else if (c < q_len + kv_len) {
            k[row * kv_len + c - q_len] = value;
        } else {
            v[row * kv_len + c - q_len - kv_len] = value;
        }
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
