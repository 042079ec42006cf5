//! Sampling: a pure function of (logits, parameters, seed, request id, position).
//!
//! No generator carries state from one token to the next: the random number of a step is a
//! hash (SplitMix64's finalizer) of the seed, the request id and the position, so a request
//! samples the same tokens however it is batched, restarted or interleaved with others. Every
//! float operation is a contract primitive in a fixed order, so the same logits give the same
//! token on every machine:
//!
//! 1. Temperature 0: greedy, [`contract::argmax`] (lowest index among equal maxima).
//! 2. Otherwise the candidates are sorted by (logit descending, index ascending), NaN counting
//!    as −∞; `top_k > 0` keeps the first `top_k`.
//! 3. `z_i = contract::div(logit_i, temperature)`, `p_i = contract::exp(z_i − z_0)` (z_0 is the
//!    largest), in candidate order.
//! 4. Prefix sums in the [`contract::chunked_sum`] order ([`chunked_prefix_sums`]): the last one
//!    is exactly `chunked_sum` of all p_i.
//! 5. `top_p < 1` keeps the shortest prefix whose prefix sum reaches `mul_rn(top_p, total)`.
//! 6. A uniform `u = k · 2^-24` (k the top 24 bits of the hash) gives the target
//!    `mul_rn(u, kept_total)`; the token is the first candidate whose prefix sum exceeds it.

use crate::{Error, Result};
use ditto_shaders::contract;

/// How to pick a token from logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy; otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps
    /// all. Must be in (0, 1].
    pub top_p: f32,
}

impl Default for SamplingParams {
    /// Greedy.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Input(format!(
                "temperature {} must be a finite number >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// SplitMix64's output function (Steele, Lea and Flood, 2014): a bijective 64-bit mix.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The golden-ratio increment of SplitMix64, used to separate the three key words.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The random 64 bits of one sampling step: a hash of (seed, request id, position), each word
/// folded in by SplitMix64's mix with a distinct offset.
pub fn step_random(seed: u64, request_id: u64, position: u64) -> u64 {
    let mut h = mix64(seed.wrapping_add(GAMMA));
    h = mix64(h ^ request_id.wrapping_add(GAMMA.wrapping_mul(2)));
    mix64(h ^ position.wrapping_add(GAMMA.wrapping_mul(3)))
}

/// A uniform value in [0, 1) with 24 random bits: exact in f32.
pub fn step_uniform(seed: u64, request_id: u64, position: u64) -> f32 {
    let k = (step_random(seed, request_id, position) >> 40) as u32;
    k as f32 * (1.0 / 16_777_216.0)
}

/// Prefix sums in the [`contract::chunked_sum`] order: within each chunk of
/// [`contract::DOT_CHUNK`] a running partial from +0.0, added to the total of the earlier chunks
/// by [`contract::combine_chunk_partials`]. The last prefix sum equals `chunked_sum` of all the
/// values bit for bit, and for non-negative values the sums never decrease.
pub fn chunked_prefix_sums(values: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len());
    let mut total = 0.0f32;
    for chunk in values.chunks(contract::DOT_CHUNK) {
        let mut partial = 0.0f32;
        for &v in chunk {
            partial += v;
            out.push(contract::combine_chunk_partials(total, partial));
        }
        total = contract::combine_chunk_partials(total, partial);
    }
    out
}

/// The token sampled from one row of logits at `position` of request `request_id`.
pub fn sample(
    logits: &[f32],
    params: &SamplingParams,
    seed: u64,
    request_id: u64,
    position: u64,
) -> Result<u32> {
    params.validate()?;
    if logits.is_empty() {
        return Err(Error::Input("sampling from an empty row of logits".into()));
    }
    if logits.len() > u32::MAX as usize {
        return Err(Error::Input(
            "vocabulary too large for u32 token ids".into(),
        ));
    }
    if params.is_greedy() {
        return Ok(contract::argmax(logits));
    }
    let candidates = sorted_candidates(logits, params.top_k);
    let first = candidates[0];
    if logits[first as usize].is_nan() || logits[first as usize] == f32::NEG_INFINITY {
        // Nothing has a finite weight: all NaN or −∞. Greedy's answer is the only sane one.
        return Ok(contract::argmax(logits));
    }

    let z: Vec<f32> = candidates
        .iter()
        .map(|&i| contract::div(nan_as_neg_inf(logits[i as usize]), params.temperature))
        .collect();
    // z is sorted descending (division by a positive number rounds monotonically), so z[0] is
    // the maximum; the fold is kept for the case of +∞ logits, where z[0] − z[0] is NaN.
    let max = contract::max_fold(z.iter().copied());
    let p: Vec<f32> = z
        .iter()
        .map(|&v| {
            let e = contract::exp(v - max);
            if e.is_nan() {
                0.0
            } else {
                e
            }
        })
        .collect();
    let prefix = chunked_prefix_sums(&p);
    let total = *prefix.last().expect("at least one candidate");
    if total.is_nan() || total <= 0.0 {
        return Ok(candidates[0]);
    }

    let kept = if params.top_p < 1.0 {
        let threshold = contract::mul_rn(params.top_p, total);
        prefix
            .iter()
            .position(|&c| c >= threshold)
            .map_or(p.len(), |j| j + 1)
    } else {
        p.len()
    };
    // The prefix sums of the kept candidates are a prefix of `prefix`: the same order.
    let kept_total = prefix[kept - 1];
    let u = step_uniform(seed, request_id, position);
    let target = contract::mul_rn(u, kept_total);
    let j = prefix[..kept]
        .iter()
        .position(|&c| c > target)
        // Only reachable if u·total rounds up to total: take the last kept candidate with
        // weight.
        .unwrap_or_else(|| p[..kept].iter().rposition(|&w| w > 0.0).unwrap_or(0));
    Ok(candidates[j])
}

#[inline]
fn nan_as_neg_inf(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Token indices sorted by (logit descending, index ascending), NaN as −∞; only the first
/// `top_k` when `top_k > 0`. The order is total, so any correct selection or sort agrees.
fn sorted_candidates(logits: &[f32], top_k: usize) -> Vec<u32> {
    let key = |i: &u32| nan_as_neg_inf(logits[*i as usize]);
    let order = |a: &u32, b: &u32| {
        key(b)
            .partial_cmp(&key(a))
            .expect("no NaN after nan_as_neg_inf")
            .then(a.cmp(b))
    };
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    if top_k > 0 && top_k < idx.len() {
        idx.select_nth_unstable_by(top_k - 1, order);
        idx.truncate(top_k);
    }
    idx.sort_unstable_by(order);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
        }
    }

    #[test]
    fn greedy_takes_lowest_index_of_max() {
        let l = [1.0, 3.0, -2.0, 3.0];
        for seed in 0..10 {
            assert_eq!(
                sample(&l, &SamplingParams::default(), seed, 0, 0).unwrap(),
                1
            );
        }
    }

    #[test]
    fn deterministic_and_keyed() {
        let l: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.05).collect();
        let p = params(1.0, 0, 1.0);
        let a: Vec<u32> = (0..64)
            .map(|pos| sample(&l, &p, 7, 3, pos).unwrap())
            .collect();
        let b: Vec<u32> = (0..64)
            .map(|pos| sample(&l, &p, 7, 3, pos).unwrap())
            .collect();
        assert_eq!(a, b);
        // Another seed or request id gives another stream.
        let c: Vec<u32> = (0..64)
            .map(|pos| sample(&l, &p, 8, 3, pos).unwrap())
            .collect();
        let d: Vec<u32> = (0..64)
            .map(|pos| sample(&l, &p, 7, 4, pos).unwrap())
            .collect();
        assert_ne!(a, c);
        assert_ne!(a, d);
        // The uniform is a fixed function: pin one value so a change of the RNG is noticed.
        assert_eq!(step_random(0, 0, 0), step_random(0, 0, 0));
        assert_ne!(step_random(0, 0, 0), step_random(0, 0, 1));
    }

    #[test]
    fn frequencies_follow_softmax() {
        let l = [2.0f32, 1.0, 0.0, -1.0, 0.5];
        let t = 0.8f32;
        let weights: Vec<f64> = l.iter().map(|&x| ((x / t) as f64).exp()).collect();
        let z: f64 = weights.iter().sum();
        let n = 40_000u64;
        let mut counts = [0u64; 5];
        for seed in 0..n {
            counts[sample(&l, &params(t, 0, 1.0), seed, 0, 0).unwrap() as usize] += 1;
        }
        for i in 0..5 {
            let expected = weights[i] / z;
            let got = counts[i] as f64 / n as f64;
            // ~5 standard deviations of a binomial proportion at n = 40000.
            let tol = 5.0 * (expected * (1.0 - expected) / n as f64).sqrt() + 1e-4;
            assert!(
                (got - expected).abs() < tol,
                "token {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn top_k_restricts_and_breaks_ties_by_index() {
        // Indices 1 and 3 tie; top_k = 2 keeps 0 (largest) and 1 (lower index of the tie).
        let l = [5.0f32, 4.0, -3.0, 4.0, 1.0];
        let mut seen = [false; 5];
        for seed in 0..2000 {
            seen[sample(&l, &params(2.0, 2, 1.0), seed, 1, 9).unwrap() as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false, false]);
        // top_k = 1 is greedy whatever the temperature.
        for seed in 0..50 {
            assert_eq!(sample(&l, &params(100.0, 1, 1.0), seed, 0, 0).unwrap(), 0);
        }
        // top_k larger than the vocabulary keeps everything.
        let mut all = [false; 5];
        for seed in 0..4000 {
            all[sample(&l, &params(50.0, 99, 1.0), seed, 0, 0).unwrap() as usize] = true;
        }
        assert_eq!(all, [true; 5]);
    }

    #[test]
    fn top_p_keeps_the_smallest_reaching_prefix() {
        // Probabilities about 0.665, 0.245, 0.090 at T = 1.
        let l = [2.0f32, 1.0, 0.0];
        let kept = |top_p: f32| {
            let mut seen = [false; 3];
            for seed in 0..3000 {
                seen[sample(&l, &params(1.0, 0, top_p), seed, 0, 0).unwrap() as usize] = true;
            }
            seen
        };
        assert_eq!(kept(0.5), [true, false, false]);
        assert_eq!(kept(0.8), [true, true, false]);
        assert_eq!(kept(1.0), [true, true, true]);
        // A tiny top_p still keeps the most likely token.
        assert_eq!(kept(1e-6), [true, false, false]);
    }

    #[test]
    fn special_rows() {
        let p = params(1.0, 0, 1.0);
        // −∞ and NaN never get picked while a finite logit exists.
        let l = [f32::NEG_INFINITY, f32::NAN, 0.0, f32::NEG_INFINITY];
        for seed in 0..200 {
            assert_eq!(sample(&l, &p, seed, 0, 0).unwrap(), 2);
        }
        // All NaN: falls back to greedy (index 0), no panic.
        assert_eq!(sample(&[f32::NAN; 3], &p, 1, 0, 0).unwrap(), 0);
        // +∞ wins.
        assert_eq!(sample(&[0.0, f32::INFINITY], &p, 1, 0, 0).unwrap(), 1);
        assert!(sample(&[], &p, 0, 0, 0).is_err());
        assert!(sample(&[1.0], &params(-1.0, 0, 1.0), 0, 0, 0).is_err());
        assert!(sample(&[1.0], &params(1.0, 0, 0.0), 0, 0, 0).is_err());
        assert!(sample(&[1.0], &params(f32::NAN, 0, 1.0), 0, 0, 0).is_err());
    }

    #[test]
    fn prefix_sums_match_chunked_sum() {
        let v: Vec<f32> = (0..1000).map(|i| 1.0 / (1.0 + i as f32)).collect();
        let prefix = chunked_prefix_sums(&v);
        for n in [1, 255, 256, 257, 600, 1000] {
            let expected = contract::chunked_sum(n, |k| v[k]);
            assert_eq!(prefix[n - 1].to_bits(), expected.to_bits(), "n = {n}");
        }
        assert!(prefix.windows(2).all(|w| w[1] >= w[0]));
    }
}
