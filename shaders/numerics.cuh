// The contract's primitives in CUDA C++: the twin of shaders/src/contract.rs and numerics.wgsl,
// function for function. The constants (DOT_CHUNK, EXP_LOG2E, …) are generated from contract.rs
// by shaders/src/cuda.rs and prepended to this file.
//
// Every kernel that includes this is compiled by NVRTC with --fmad=false --ftz=false
// --prec-div=true --prec-sqrt=true and never --use_fast_math. --fmad=false makes NVRTC emit
// `mul.rn.f32`, which ptxas (also the driver's PTX JIT) never fuses into an FMA. On top of that,
// every product that is not exact goes through `__fmul_rn` (DESIGN.md rule 2), which is never
// contracted whatever the flags: the flag protects what a reader might miss, the intrinsic states
// the intent. Products of two bf16 values are exact in f32, so `fmaf(a, b, c)` and `a * b + c`
// give the same bits; the matmul and attention kernels use `fmaf` there for speed.

#define F32_SIGN 0x80000000u
#define F32_EXPONENT 0x7f800000u
#define F32_ABS 0x7fffffffu
// -inf, from its bits.
#define F32_NEG_INF __uint_as_float(F32_SIGN | F32_EXPONENT)

__device__ __forceinline__ float flush_subnormal(float x) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & F32_EXPONENT) == 0u) {
        return __uint_as_float(bits & F32_SIGN);
    }
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return __uint_as_float(CANONICAL_NAN);
    }
    return x;
}

__device__ __forceinline__ float mul_rn(float a, float b) {
    return flush_subnormal(__fmul_rn(a, b));
}

__device__ __forceinline__ unsigned int round_bf16_bits(float x) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return ((bits & F32_SIGN) >> 16) | 0x7fc0u;
    }
    unsigned int lsb = (bits >> 16) & 1u;
    unsigned int rounded = (bits + 0x7fffu + lsb) & 0xffff0000u;
    if (((rounded & F32_EXPONENT) >> 23) < BF16_MIN_EXPONENT_FIELD) {
        return (bits & F32_SIGN) >> 16;
    }
    return rounded >> 16;
}

__device__ __forceinline__ float bf16_to_f32(unsigned int bits) {
    return __uint_as_float(bits << 16);
}

__device__ __forceinline__ float round_bf16(float x) {
    return bf16_to_f32(round_bf16_bits(x));
}

__device__ __forceinline__ float scale_by_pow2(float m, int n) {
    unsigned int bits = __float_as_uint(m);
    int e = (int)((bits & F32_EXPONENT) >> 23) + n;
    if (e <= 0) {
        return 0.0f;
    }
    if (e >= 255) {
        return __uint_as_float(F32_EXPONENT);
    }
    return __uint_as_float((bits & ~F32_EXPONENT) | ((unsigned int)e << 23));
}

__device__ __forceinline__ float contract_exp(float x) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return __uint_as_float(CANONICAL_NAN);
    }
    if (x > EXP_MAX_INPUT) {
        return __uint_as_float(F32_EXPONENT);
    }
    if (x < EXP_MIN_INPUT) {
        return 0.0f;
    }
    float n = floorf(mul_rn(x, EXP_LOG2E) + 0.5f);
    float r = (x - mul_rn(n, EXP_LN2_HI)) - mul_rn(n, EXP_LN2_LO);
    float p = EXP_TAYLOR_0;
    p = EXP_TAYLOR_1 + mul_rn(p, r);
    p = EXP_TAYLOR_2 + mul_rn(p, r);
    p = EXP_TAYLOR_3 + mul_rn(p, r);
    p = EXP_TAYLOR_4 + mul_rn(p, r);
    p = EXP_TAYLOR_5 + mul_rn(p, r);
    p = 1.0f + mul_rn(p, r);
    p = 1.0f + mul_rn(p, r);
    return scale_by_pow2(p, (int)n);
}

__device__ __forceinline__ float contract_recip(float x) {
    unsigned int bits = __float_as_uint(x);
    unsigned int sign = bits & F32_SIGN;
    unsigned int abs_bits = bits & F32_ABS;
    if (abs_bits > F32_EXPONENT) {
        return __uint_as_float(CANONICAL_NAN);
    }
    if (abs_bits == F32_EXPONENT) {
        return __uint_as_float(sign);
    }
    if ((abs_bits & F32_EXPONENT) == 0u) {
        return __uint_as_float(sign | F32_EXPONENT);
    }
    int e = (int)(abs_bits >> 23) - 127;
    float m = __uint_as_float((abs_bits & ~F32_EXPONENT) | 0x3f800000u);
    float y = RECIP_SEED_A - mul_rn(RECIP_SEED_B, m);
    for (int i = 0; i < 3; ++i) {
        float err = 1.0f - mul_rn(m, y);
        y = y + mul_rn(y, err);
    }
    return __uint_as_float(__float_as_uint(scale_by_pow2(y, -e)) | sign);
}

__device__ __forceinline__ float contract_div(float a, float b) {
    return mul_rn(a, contract_recip(b));
}

__device__ __forceinline__ float contract_rsqrt(float x) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return __uint_as_float(CANONICAL_NAN);
    }
    if ((bits & F32_EXPONENT) == 0u) {
        return __uint_as_float(F32_EXPONENT);
    }
    if ((bits & F32_SIGN) != 0u) {
        return __uint_as_float(CANONICAL_NAN);
    }
    if (bits == F32_EXPONENT) {
        return 0.0f;
    }
    int e = (int)(bits >> 23) - 127;
    // Arithmetic shift (floor division by 2) as in Rust's `i32 >> 1`; NVCC shifts signed ints
    // arithmetically.
    int k = e >> 1;
    float m = __uint_as_float((bits & ~F32_EXPONENT) | ((unsigned int)(127 + e - 2 * k) << 23));
    float half_m = mul_rn(m, 0.5f);
    float y = __uint_as_float(RSQRT_MAGIC - (__float_as_uint(m) >> 1));
    for (int i = 0; i < 3; ++i) {
        float h = mul_rn(mul_rn(half_m, y), y);
        y = y + mul_rn(y, 0.5f - h);
    }
    return scale_by_pow2(y, -k);
}

__device__ __forceinline__ float contract_silu(float x) {
    return mul_rn(x, contract_recip(1.0f + contract_exp(-x)));
}

// The maximum fold step of the contract: `x > m ? x : m`.
__device__ __forceinline__ float max_step(float m, float x) {
    return x > m ? x : m;
}

// The one step that combines chunk partials (contract::combine_chunk_partials): ascending chunk
// order, from +0.0. Every kernel calls this, so a later contract changes only this line.
__device__ __forceinline__ float combine_chunk_partials(float total, float partial) {
    return total + partial;
}

// Four values rounded to bf16 and packed in 8 bytes, element 0 in the low half of `x` (the
// layout unpack_bf16x8 reads).
__device__ __forceinline__ uint2 round_pack_bf16x4(const float v[4]) {
    return make_uint2(round_bf16_bits(v[0]) | (round_bf16_bits(v[1]) << 16),
                      round_bf16_bits(v[2]) | (round_bf16_bits(v[3]) << 16));
}

// Eight bf16 values packed in 16 bytes (little-endian: element 0 is the low half of `x`).
__device__ __forceinline__ void unpack_bf16x8(uint4 v, float out[8]) {
    out[0] = __uint_as_float(v.x << 16);
    out[1] = __uint_as_float(v.x & 0xffff0000u);
    out[2] = __uint_as_float(v.y << 16);
    out[3] = __uint_as_float(v.y & 0xffff0000u);
    out[4] = __uint_as_float(v.z << 16);
    out[5] = __uint_as_float(v.z & 0xffff0000u);
    out[6] = __uint_as_float(v.w << 16);
    out[7] = __uint_as_float(v.w & 0xffff0000u);
}
