// Applies one contract primitive to every element, so tests can compare this backend's
// primitives with the Rust reference bit for bit (op numbers: ditto_shaders::ProbeOp).
extern "C" __global__ void numerics_probe(const float* __restrict__ a, const float* __restrict__ b,
                                          unsigned int* __restrict__ out, unsigned int len,
                                          unsigned int op) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) {
        return;
    }
    float x = a[i];
    float y = b[i];
    unsigned int r;
    switch (op) {
        case 0: r = __float_as_uint(contract_exp(x)); break;
        case 1: r = __float_as_uint(contract_recip(x)); break;
        case 2: r = __float_as_uint(contract_rsqrt(x)); break;
        case 3: r = round_bf16_bits(x); break;
        case 4: r = __float_as_uint(mul_rn(x, y)); break;
        case 5: r = __float_as_uint(contract_div(x, y)); break;
        default: r = __float_as_uint(contract_silu(x)); break;
    }
    out[i] = r;
}
