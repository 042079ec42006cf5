//! The numerics contract, written down once.
//!
//! Every kernel of every backend (the CPU reference in `ditto-engine`, the WGSL sources and the
//! CUDA sources beside them in `shaders/`) computes exactly the orders and primitives defined
//! here. This module is the reference: the CPU backend calls these functions directly, and the
//! GPU kernels are tested bit for bit against them.
//!
//! The rules, in short (see DESIGN.md for why):
//! - Dot products and row reductions walk K in consecutive chunks of [`DOT_CHUNK`]; inside a
//!   chunk one f32 accumulator starts at +0.0 and runs k ascending; chunk partials are added in
//!   ascending chunk order ([`chunked_sum`]).
//! - Attention walks positions in blocks of [`ATTN_BLOCK`] aligned at multiples of it; each block
//!   yields a partial ([`attention_block`]); partials merge in ascending block order with
//!   [`attention_merge`].
//! - A product feeding a sum is either exact (two bf16 values) or explicitly rounded
//!   ([`mul_rn`]); transcendental functions are ours ([`exp`], [`recip`], [`rsqrt`]), built from
//!   +, −, [`mul_rn`] and integer bit operations.
//! - Subnormals never arise: [`round_bf16`] flushes magnitudes below 2^-63, [`mul_rn`] and every
//!   primitive flush subnormal results to a signed zero.
//!
//! Changing any constant or primitive here changes bits: bump [`CONTRACT_VERSION`].

/// Version of the numerics contract; printed with every fingerprint ditto emits.
pub const CONTRACT_VERSION: u32 = 1;

/// Size of the consecutive K chunks of every dot product and row reduction.
pub const DOT_CHUNK: usize = 256;

/// Size of the aligned KV-position blocks of attention.
pub const ATTN_BLOCK: usize = 256;

/// bf16 values whose magnitude is below 2^-63 are flushed to zero, so that the product of two
/// bf16 values is never subnormal (2^-63 · 2^-63 = 2^-126, the smallest normal f32).
/// Expressed as the smallest biased f32 exponent field kept.
pub const BF16_MIN_EXPONENT_FIELD: u32 = 127 - 63;

/// The one NaN every primitive returns (inputs' NaN payloads are not propagated, so that
/// drivers that canonicalise NaNs agree with those that do not).
pub const CANONICAL_NAN: u32 = 0x7fc0_0000;

const SIGN: u32 = 0x8000_0000;
const EXPONENT: u32 = 0x7f80_0000;
const ABS: u32 = 0x7fff_ffff;

// ---------------------------------------------------------------------------------------------
// Primitives
// ---------------------------------------------------------------------------------------------

/// A subnormal becomes a zero of the same sign and any NaN the canonical NaN; every other value
/// is returned unchanged. (Which operand's NaN payload a product keeps is left open by IEEE 754
/// and differs between compilers, so payloads are never let through.)
#[inline]
pub fn flush_subnormal(x: f32) -> f32 {
    let bits = x.to_bits();
    if bits & EXPONENT == 0 {
        f32::from_bits(bits & SIGN)
    } else if bits & ABS > EXPONENT {
        f32::from_bits(CANONICAL_NAN)
    } else {
        x
    }
}

/// The explicitly rounded product: `a * b` rounded once to f32, never fused into a following
/// addition, with a subnormal result flushed and a NaN made canonical. (rustc never contracts
/// `*` and `+` into an FMA.) Its operands must not be subnormal — no value ditto makes is — since
/// backends disagree on those (seen 2026-11-23: NVIDIA's Vulkan driver flushes them, CUDA and the
/// CPU do not).
#[inline]
pub fn mul_rn(a: f32, b: f32) -> f32 {
    flush_subnormal(a * b)
}

/// Rounds to bf16 (round to nearest, ties to even) and returns the bf16 bits. Results whose
/// magnitude is below 2^-63 become a zero of the same sign; NaN becomes the quiet NaN 0x7fc0
/// with its sign kept.
#[inline]
pub fn round_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & ABS > EXPONENT {
        return (((bits & SIGN) >> 16) | 0x7fc0) as u16;
    }
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7fff + lsb) & 0xffff_0000;
    if (rounded & EXPONENT) >> 23 < BF16_MIN_EXPONENT_FIELD {
        return ((bits & SIGN) >> 16) as u16;
    }
    (rounded >> 16) as u16
}

/// The f32 value of bf16 bits (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// [`round_bf16_bits`] as an f32 value.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    bf16_to_f32(round_bf16_bits(x))
}

/// Scales a positive normal `m` by 2^`n` through its exponent field; a result below the smallest
/// normal becomes +0.0 and one past the largest finite value +inf.
#[inline]
fn scale_by_pow2(m: f32, n: i32) -> f32 {
    let bits = m.to_bits();
    let e = ((bits & EXPONENT) >> 23) as i32 + n;
    if e <= 0 {
        0.0
    } else if e >= 255 {
        f32::INFINITY
    } else {
        f32::from_bits((bits & !EXPONENT) | ((e as u32) << 23))
    }
}

/// log2(e), rounded to f32.
pub const EXP_LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
/// ln 2 split in a high part with 12 trailing zero bits (so `n * EXP_LN2_HI` is exact for the
/// |n| ≤ 128 used here) and the f32 rounding of the rest.
pub const EXP_LN2_HI: f32 = f32::from_bits(0x3f31_7200);
pub const EXP_LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
/// Above this, e^x is +inf; below [`EXP_MIN_INPUT`], e^x < 2^-126 and flushes to +0.0.
pub const EXP_MAX_INPUT: f32 = 89.0;
pub const EXP_MIN_INPUT: f32 = -88.0;
/// Taylor coefficients 1/k! for k = 2..=7, rounded to f32, highest degree first.
pub const EXP_TAYLOR: [f32; 6] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];

/// e^x. Steps: n = floor(x·log2e + 1/2); r = x − n·ln2 (Cody–Waite, two parts); e^r by a
/// degree-7 Taylor polynomial in Horner form (|r| ≤ 0.35); the result scaled by 2^n through its
/// exponent field. NaN gives NaN, results below 2^-126 give +0.0, overflow gives +inf.
#[inline]
pub fn exp(x: f32) -> f32 {
    let bits = x.to_bits();
    if bits & ABS > EXPONENT {
        return f32::from_bits(CANONICAL_NAN);
    }
    if x > EXP_MAX_INPUT {
        return f32::INFINITY;
    }
    if x < EXP_MIN_INPUT {
        return 0.0;
    }
    let n = libm::floorf(mul_rn(x, EXP_LOG2E) + 0.5);
    let r = (x - mul_rn(n, EXP_LN2_HI)) - mul_rn(n, EXP_LN2_LO);
    let mut p = EXP_TAYLOR[0];
    for c in &EXP_TAYLOR[1..] {
        p = *c + mul_rn(p, r);
    }
    p = 1.0 + mul_rn(p, r);
    p = 1.0 + mul_rn(p, r);
    scale_by_pow2(p, n as i32)
}

/// Splits a positive finite normal `x` into (m, e) with x = m · 2^e and m in [1, 2).
#[inline]
fn split_exponent(bits: u32) -> (f32, i32) {
    let e = ((bits & EXPONENT) >> 23) as i32 - 127;
    (f32::from_bits((bits & !EXPONENT & ABS) | (127 << 23)), e)
}

/// 1/x. The mantissa m in [1, 2) gets a linear seed 24/17 − 8/17·m and three Newton steps
/// y ← y + y·(1 − m·y); the exponent is applied through the bit field. ±0 (and subnormals, which
/// count as zero) give ±inf, ±inf gives ±0, NaN gives NaN, results below 2^-126 give ±0.
#[inline]
pub fn recip(x: f32) -> f32 {
    let bits = x.to_bits();
    let sign = bits & SIGN;
    let abs = bits & ABS;
    if abs > EXPONENT {
        return f32::from_bits(CANONICAL_NAN);
    }
    if abs == EXPONENT {
        return f32::from_bits(sign);
    }
    if abs & EXPONENT == 0 {
        return f32::from_bits(sign | EXPONENT);
    }
    let (m, e) = split_exponent(abs);
    let mut y = RECIP_SEED_A - mul_rn(RECIP_SEED_B, m);
    for _ in 0..3 {
        let err = 1.0 - mul_rn(m, y);
        y = y + mul_rn(y, err);
    }
    // y is in (0.5, 1]: scale by 2^-e.
    f32::from_bits(scale_by_pow2(y, -e).to_bits() | sign)
}

/// 24/17 and 8/17 rounded to f32: the minimax linear seed of 1/m on [1, 2].
pub const RECIP_SEED_A: f32 = 24.0 / 17.0;
pub const RECIP_SEED_B: f32 = 8.0 / 17.0;

/// a / b as `mul_rn(a, recip(b))`.
#[inline]
pub fn div(a: f32, b: f32) -> f32 {
    mul_rn(a, recip(b))
}

/// 1/√x. x is written m · 2^(2k) with m in [1, 4); a bit-trick seed for 1/√m gets three Newton
/// steps y ← y + y·(1/2 − (m/2)·y·y); the result is scaled by 2^-k. +0 (and subnormals) give +inf,
/// negative values and NaN give NaN, +inf gives +0.
#[inline]
pub fn rsqrt(x: f32) -> f32 {
    let bits = x.to_bits();
    if bits & ABS > EXPONENT {
        return f32::from_bits(CANONICAL_NAN);
    }
    if bits & EXPONENT == 0 {
        // ±0 and subnormals.
        return f32::INFINITY;
    }
    if bits & SIGN != 0 {
        return f32::from_bits(CANONICAL_NAN);
    }
    if bits == EXPONENT {
        return 0.0;
    }
    let e = ((bits & EXPONENT) >> 23) as i32 - 127;
    // Even exponent k2 = 2k with e − k2 in {0, 1}: m = x / 2^(2k) in [1, 4).
    let k = e >> 1;
    let m = f32::from_bits((bits & !EXPONENT) | (((127 + e - 2 * k) as u32) << 23));
    let half_m = mul_rn(m, 0.5);
    let mut y = f32::from_bits(RSQRT_MAGIC - (m.to_bits() >> 1));
    for _ in 0..3 {
        let h = mul_rn(mul_rn(half_m, y), y);
        y = y + mul_rn(y, 0.5 - h);
    }
    scale_by_pow2(y, -k)
}

/// The classic bit-level seed for 1/√m.
pub const RSQRT_MAGIC: u32 = 0x5f37_59df;

/// x · σ(x) = x / (1 + e^-x), the SiLU activation.
#[inline]
pub fn silu(x: f32) -> f32 {
    mul_rn(x, recip(1.0 + exp(-x)))
}

// ---------------------------------------------------------------------------------------------
// Reduction orders
// ---------------------------------------------------------------------------------------------

/// The one order of every dot product and row reduction: terms `term(0..n)` in chunks of
/// [`DOT_CHUNK`]; inside a chunk an accumulator from +0.0 adds k ascending; the chunk partials are
/// then combined by [`combine_chunk_partials`].
#[inline]
pub fn chunked_sum(n: usize, mut term: impl FnMut(usize) -> f32) -> f32 {
    let mut total = 0.0f32;
    let mut start = 0;
    while start < n {
        let end = (start + DOT_CHUNK).min(n);
        let mut partial = 0.0f32;
        for k in start..end {
            partial += term(k);
        }
        total = combine_chunk_partials(total, partial);
        start = end;
    }
    total
}

/// The step that combines chunk partials: ascending chunk order, `total + partial`, from +0.0.
/// Kept in one place in every kernel so that a later contract (a fixed tree over K segments for
/// tensor parallelism) changes only this step.
#[inline]
pub fn combine_chunk_partials(total: f32, partial: f32) -> f32 {
    total + partial
}

/// Dot product of two rows of bf16 values (held as f32): products are exact.
#[inline]
pub fn dot_bf16(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    chunked_sum(a.len(), |k| a[k] * b[k])
}

/// The maximum fold: `m = x > m ? x : m` over the values in order, from the first. Fixes ties
/// and ±0 (the first of equal values wins).
#[inline]
pub fn max_fold(values: impl IntoIterator<Item = f32>) -> f32 {
    let mut iter = values.into_iter();
    let mut m = iter.next().unwrap_or(f32::NEG_INFINITY);
    for x in iter {
        m = if x > m { x } else { m };
    }
    m
}

/// Greedy argmax: the lowest index of the largest value; NaN counts as −inf. Any split of the
/// row into consecutive pieces, each folded the same way and combined in ascending order with a
/// strict `>`, gives the same index.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0u32;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &x) in row.iter().enumerate() {
        let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
        if i == 0 || x > best_value {
            best = i as u32;
            best_value = x;
        }
    }
    best
}

/// RMSNorm of one row: sum of squares (each square [`mul_rn`]) in the chunked order, times
/// `inv_dim` (1/dim rounded to f32, computed by IEEE division on the host), plus `eps`, through
/// [`rsqrt`]; then `out[i] = (x[i] · r) · w[i]`, each product [`mul_rn`].
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum = chunked_sum(x.len(), |i| mul_rn(x[i], x[i]));
    let r = rsqrt(mul_rn(sum, rms_inv_dim(x.len())) + eps);
    for i in 0..x.len() {
        out[i] = mul_rn(mul_rn(x[i], r), weight[i]);
    }
}

/// 1/dim as an f32, the constant RMSNorm multiplies its sum of squares by.
pub fn rms_inv_dim(dim: usize) -> f32 {
    1.0 / dim as f32
}

/// Rotary embedding of one head, Hugging Face rotate-half layout: with h = head_dim/2,
/// `out[i] = x[i]·c[i] − x[i+h]·s[i]` and `out[i+h] = x[i+h]·c[i] + x[i]·s[i]`, products
/// [`mul_rn`].
pub fn rope_head(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let h = x.len() / 2;
    for i in 0..h {
        let (a, b) = (x[i], x[i + h]);
        out[i] = mul_rn(a, cos[i]) - mul_rn(b, sin[i]);
        out[i + h] = mul_rn(b, cos[i]) + mul_rn(a, sin[i]);
    }
}

/// Host tables for rotary embedding: for each position p and frequency i, cos and sin of
/// p·inv_freq[i] evaluated in f64 with the pure-Rust `libm` (same bits on every OS), rounded to
/// f32. Row-major [positions, inv_freq.len()].
pub fn rope_tables(inv_freq: &[f64], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions * inv_freq.len());
    let mut sin = Vec::with_capacity(positions * inv_freq.len());
    for p in 0..positions {
        for &f in inv_freq {
            let angle = p as f64 * f;
            cos.push(libm::cos(angle) as f32);
            sin.push(libm::sin(angle) as f32);
        }
    }
    (cos, sin)
}

/// One block's contribution to the attention of one query: the block max of the scores, the sum
/// of their exponentials, and the exponential-weighted sum of the values.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnPartial {
    pub max: f32,
    pub sum: f32,
    pub acc: Vec<f32>,
}

/// The partial of one block of positions (all unmasked, ascending) for query `q` (bf16 values).
/// `key(j)` and `value(j)` give the bf16 rows of the block's j-th position.
/// - score_j = [`dot_bf16`](q, k_j) · scale (product [`mul_rn`]);
/// - max = [`max_fold`] of the scores in position order;
/// - p_j = [`exp`](score_j − max); sum = p_0 + p_1 + … from +0.0;
/// - acc[d] = Σ_j p_j · v_j[d] ([`mul_rn`]) from +0.0, j ascending.
pub fn attention_block<'a>(
    q: &[f32],
    scale: f32,
    positions: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
) -> AttnPartial {
    debug_assert!(positions > 0 && positions <= ATTN_BLOCK);
    let scores: Vec<f32> = (0..positions)
        .map(|j| mul_rn(dot_bf16(q, key(j)), scale))
        .collect();
    let max = max_fold(scores.iter().copied());
    let mut sum = 0.0f32;
    let mut acc = vec![0.0f32; q.len()];
    for (j, &s) in scores.iter().enumerate() {
        let p = exp(s - max);
        sum += p;
        for (a, &v) in acc.iter_mut().zip(value(j)) {
            *a += mul_rn(p, v);
        }
    }
    AttnPartial { max, sum, acc }
}

/// Merges the next block's partial into the running state (the first block's partial is the
/// initial state): m = [`max_fold`](state.max, next.max); α = exp(state.max − m),
/// β = exp(next.max − m); sum = state.sum·α + next.sum·β; acc[d] = state.acc[d]·α + next.acc[d]·β
/// (products [`mul_rn`]).
pub fn attention_merge(state: &mut AttnPartial, next: &AttnPartial) {
    let m = max_fold([state.max, next.max]);
    let alpha = exp(state.max - m);
    let beta = exp(next.max - m);
    state.sum = mul_rn(state.sum, alpha) + mul_rn(next.sum, beta);
    for (a, &b) in state.acc.iter_mut().zip(&next.acc) {
        *a = mul_rn(*a, alpha) + mul_rn(b, beta);
    }
    state.max = m;
}

/// The attention output from the merged state: acc[d] · [`recip`](sum).
pub fn attention_finish(state: &AttnPartial, out: &mut [f32]) {
    let inv = recip(state.sum);
    for (o, &a) in out.iter_mut().zip(&state.acc) {
        *o = mul_rn(a, inv);
    }
}

/// Attention of one query at absolute position `t` over positions 0..=t, in the contract's
/// blocks. `q` must already be rounded to bf16.
pub fn attention_query<'a>(
    q: &[f32],
    scale: f32,
    t: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    let mut state: Option<AttnPartial> = None;
    let mut start = 0;
    while start <= t {
        let end = (start + ATTN_BLOCK).min(t + 1);
        let block = attention_block(
            q,
            scale,
            end - start,
            |j| key(start + j),
            |j| value(start + j),
        );
        match &mut state {
            None => state = Some(block),
            Some(s) => attention_merge(s, &block),
        }
        start = end;
    }
    attention_finish(&state.expect("t >= 0 gives one block"), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulp_distance(a: f32, b: f64) -> f64 {
        let exponent_field = ((b.abs() as f32).to_bits() >> 23).max(1) as i32;
        let ulp = 2f64.powi(exponent_field - 150);
        ((a as f64) - b).abs() / ulp
    }

    fn sweep() -> impl Iterator<Item = f32> {
        // Every 4099th bit pattern: about a million inputs over the whole f32 range.
        (0..=u32::MAX / 4099).map(|i| f32::from_bits(i.wrapping_mul(4099)))
    }

    #[test]
    fn exp_error_is_bounded() {
        let mut worst = 0.0f64;
        for x in sweep().filter(|x| x.is_finite() && (-87.3..88.7).contains(x)) {
            let e = exp(x);
            let r = (x as f64).exp();
            if r < f32::MIN_POSITIVE as f64 {
                continue;
            }
            worst = worst.max(ulp_distance(e, r));
        }
        println!("exp: worst error {worst} ulp");
        assert!(worst <= EXP_MAX_ULP, "exp worst error {worst} ulp");
    }

    #[test]
    fn recip_and_rsqrt_error_is_bounded() {
        let (mut worst_recip, mut worst_rsqrt) = (0.0f64, 0.0f64);
        for x in sweep().filter(|x| x.is_normal()) {
            let r = 1.0 / x as f64;
            if r.abs() >= f32::MIN_POSITIVE as f64 {
                worst_recip = worst_recip.max(ulp_distance(recip(x), r));
            }
            if x > 0.0 {
                worst_rsqrt = worst_rsqrt.max(ulp_distance(rsqrt(x), 1.0 / (x as f64).sqrt()));
            }
        }
        println!("recip: worst {worst_recip} ulp; rsqrt: worst {worst_rsqrt} ulp");
        assert!(worst_recip <= RECIP_MAX_ULP, "recip {worst_recip} ulp");
        assert!(worst_rsqrt <= RSQRT_MAX_ULP, "rsqrt {worst_rsqrt} ulp");
    }

    #[test]
    fn special_values() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-100.0).to_bits(), 0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(recip(0.0), f32::INFINITY);
        assert_eq!(recip(-0.0), f32::NEG_INFINITY);
        assert_eq!(recip(f32::INFINITY).to_bits(), 0);
        assert_eq!(recip(f32::NEG_INFINITY).to_bits(), SIGN);
        assert_eq!(recip(f32::MAX).to_bits(), 0, "subnormal result flushes");
        assert_eq!(recip(1.0), 1.0);
        assert_eq!(recip(-4.0), -0.25);
        assert_eq!(rsqrt(4.0), 0.5);
        assert_eq!(rsqrt(0.0), f32::INFINITY);
        assert!(rsqrt(-1.0).is_nan());
        assert_eq!(rsqrt(f32::INFINITY), 0.0);
        assert_eq!(round_bf16_bits(1.0), 0x3f80);
        assert_eq!(
            round_bf16_bits(f32::from_bits(0x3f80_8000)),
            0x3f80,
            "tie to even"
        );
        assert_eq!(
            round_bf16_bits(f32::from_bits(0x3f81_8000)),
            0x3f82,
            "tie to even"
        );
        assert_eq!(round_bf16_bits(1e-20), 0, "below 2^-63 flushes");
        assert_eq!(round_bf16_bits(-1e-20), 0x8000);
        assert_eq!(round_bf16_bits(f32::MAX), 0x7f80, "overflow rounds to inf");
        assert_eq!(mul_rn(1e-30, 1e-10).to_bits(), 0);
    }

    #[test]
    fn chunk_order_is_not_plain_order() {
        // A sum where the chunked order and one running sum differ: the contract is specific.
        // Plain: every 1.0 is lost against 1e8. Chunked: the second chunk's 256 survive.
        let n = 2 * DOT_CHUNK;
        let term = |k: usize| if k == 0 { 1.0e8 } else { 1.0 };
        let plain: f32 = (0..n).map(term).sum();
        assert_ne!(chunked_sum(n, term).to_bits(), plain.to_bits());
    }
}

/// Error bounds of the primitives against f64, in units in the last place of the f32 result,
/// over about a million inputs spanning the f32 range (tested in this module and stated in the
/// README).
pub const EXP_MAX_ULP: f64 = 1.5;
pub const RECIP_MAX_ULP: f64 = 1.5;
pub const RSQRT_MAX_ULP: f64 = 1.5;
