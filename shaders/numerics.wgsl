// The contract's primitives in WGSL: the twin of shaders/src/contract.rs, function for function.
// The constants (DOT_CHUNK, EXP_LOG2E, …) are generated from that module and prepended.
//
// `opaque_zero` is 0, read by each entry point from its parameters before any arithmetic
// (`opaque_zero = params.opaque_zero;`). OR-ing it into a value's bits hides the value from the
// driver's float optimiser: a product passed through it cannot be fused into an FMA, and a sum
// passed through it cannot be reassociated or folded (DESIGN.md, rule 2).
var<private> opaque_zero: u32;

const F32_SIGN: u32 = 0x80000000u;
const F32_EXPONENT: u32 = 0x7f800000u;
const F32_ABS: u32 = 0x7fffffffu;

fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | opaque_zero);
}

fn flush_subnormal(x: f32) -> f32 {
    let bits = bitcast<u32>(x) | opaque_zero;
    if ((bits & F32_EXPONENT) == 0u) {
        return bitcast<f32>(bits & F32_SIGN);
    }
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return bitcast<f32>(CANONICAL_NAN);
    }
    return bitcast<f32>(bits);
}

fn mul_rn(a: f32, b: f32) -> f32 {
    return flush_subnormal(a * b);
}

fn round_bf16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return ((bits & F32_SIGN) >> 16u) | 0x7fc0u;
    }
    let lsb = (bits >> 16u) & 1u;
    let rounded = (bits + 0x7fffu + lsb) & 0xffff0000u;
    if (((rounded & F32_EXPONENT) >> 23u) < BF16_MIN_EXPONENT_FIELD) {
        return (bits & F32_SIGN) >> 16u;
    }
    return rounded >> 16u;
}

fn bf16_to_f32(bits: u32) -> f32 {
    return bitcast<f32>(bits << 16u);
}

// The high bf16 value of a storage word, as f32 (bf16_to_f32 of the word gives the low one).
fn bf16_hi(word: u32) -> f32 {
    return bitcast<f32>(word & 0xffff0000u);
}

fn round_bf16(x: f32) -> f32 {
    return bf16_to_f32(round_bf16_bits(x));
}

// Two values rounded to bf16 and packed as one storage word, `lo` in the low half: the layout of
// every bf16 tensor (two values a u32, element 2w in the low half of word w).
fn bf16_pair(lo: f32, hi: f32) -> u32 {
    return round_bf16_bits(lo) | (round_bf16_bits(hi) << 16u);
}

fn scale_by_pow2(m: f32, n: i32) -> f32 {
    let bits = bitcast<u32>(m);
    let e = i32((bits & F32_EXPONENT) >> 23u) + n;
    if (e <= 0) {
        return 0.0;
    }
    if (e >= 255) {
        return bitcast<f32>(F32_EXPONENT);
    }
    return bitcast<f32>((bits & ~F32_EXPONENT) | (u32(e) << 23u));
}

fn contract_exp(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return bitcast<f32>(CANONICAL_NAN);
    }
    if (x > EXP_MAX_INPUT) {
        return bitcast<f32>(F32_EXPONENT);
    }
    if (x < EXP_MIN_INPUT) {
        return 0.0;
    }
    let n = floor(opaque(mul_rn(x, EXP_LOG2E) + 0.5));
    let r = opaque(x - mul_rn(n, EXP_LN2_HI)) - mul_rn(n, EXP_LN2_LO);
    var p = EXP_TAYLOR_0;
    p = EXP_TAYLOR_1 + mul_rn(p, r);
    p = EXP_TAYLOR_2 + mul_rn(p, r);
    p = EXP_TAYLOR_3 + mul_rn(p, r);
    p = EXP_TAYLOR_4 + mul_rn(p, r);
    p = EXP_TAYLOR_5 + mul_rn(p, r);
    p = 1.0 + mul_rn(p, r);
    p = 1.0 + mul_rn(p, r);
    return scale_by_pow2(opaque(p), i32(n));
}

fn contract_recip(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let sign = bits & F32_SIGN;
    let abs = bits & F32_ABS;
    if (abs > F32_EXPONENT) {
        return bitcast<f32>(CANONICAL_NAN);
    }
    if (abs == F32_EXPONENT) {
        return bitcast<f32>(sign);
    }
    if ((abs & F32_EXPONENT) == 0u) {
        return bitcast<f32>(sign | F32_EXPONENT);
    }
    let e = i32(abs >> 23u) - 127;
    let m = bitcast<f32>((abs & ~F32_EXPONENT) | 0x3f800000u);
    var y = RECIP_SEED_A - mul_rn(RECIP_SEED_B, m);
    for (var i = 0; i < 3; i++) {
        let err = 1.0 - mul_rn(m, y);
        y = opaque(y + mul_rn(y, err));
    }
    return bitcast<f32>(bitcast<u32>(scale_by_pow2(y, -e)) | sign);
}

fn contract_div(a: f32, b: f32) -> f32 {
    return mul_rn(a, contract_recip(b));
}

fn contract_rsqrt(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    if ((bits & F32_ABS) > F32_EXPONENT) {
        return bitcast<f32>(CANONICAL_NAN);
    }
    if ((bits & F32_EXPONENT) == 0u) {
        return bitcast<f32>(F32_EXPONENT);
    }
    if ((bits & F32_SIGN) != 0u) {
        return bitcast<f32>(CANONICAL_NAN);
    }
    if (bits == F32_EXPONENT) {
        return 0.0;
    }
    let e = i32(bits >> 23u) - 127;
    let k = e >> 1u;
    let m = bitcast<f32>((bits & ~F32_EXPONENT) | (u32(127 + e - 2 * k) << 23u));
    let half_m = mul_rn(m, 0.5);
    var y = bitcast<f32>(RSQRT_MAGIC - (bitcast<u32>(m) >> 1u));
    for (var i = 0; i < 3; i++) {
        let h = mul_rn(mul_rn(half_m, y), y);
        y = opaque(y + mul_rn(y, 0.5 - h));
    }
    return scale_by_pow2(y, -k);
}

fn contract_silu(x: f32) -> f32 {
    return mul_rn(x, contract_recip(opaque(1.0 + contract_exp(-x))));
}

// The maximum fold step of the contract: `x > m ? x : m`.
fn max_step(m: f32, x: f32) -> f32 {
    return select(m, x, x > m);
}

// The step that combines chunk partials (contract::combine_chunk_partials): ascending chunk
// order, `total + partial`, from +0.0. Every kernel combines its chunk partials only through this
// function, so a later contract (a fixed tree over K segments) changes one place. The sum passes
// through `opaque` so that a driver cannot reassociate it with the next chunk's.
fn combine_chunk_partials(total: f32, partial: f32) -> f32 {
    return opaque(total + partial);
}
