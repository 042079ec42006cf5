//! Turning stored tensor bytes (f32, f16, bf16, and GGUF's Q8_0/Q4_0/Q4_1 blocks) into the
//! contract's bf16 bits, in parallel, with an optional progress bar.
//!
//! Every value goes through f32 and then [`round_bf16_bits`]: bf16 inputs are re-rounded too,
//! because the contract flushes bf16 values below 2^-63 to zero and a checkpoint may hold them.
//! Dequantization products (a 4- or 8-bit integer times an f16 scale) are exact in f32, so the
//! only rounding in `q * d + m` is the final addition: the result does not depend on whether a
//! compiler would fuse it (and rustc never does).

use crate::loader::HostTensor;
use crate::{Error, Result};
use ditto_shaders::contract::round_bf16_bits;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The element encodings the loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceType {
    F32,
    F16,
    BF16,
    /// GGUF blocks of 32: f16 scale `d`, 32 × i8; value = q·d.
    Q8_0,
    /// GGUF blocks of 32: f16 scale `d`, 16 bytes of nibbles; value = (q − 8)·d.
    Q4_0,
    /// GGUF blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles; value = q·d + m.
    Q4_1,
}

/// Elements per quantization block (all supported quantized types use 32).
pub(crate) const QK: usize = 32;

impl SourceType {
    /// Bytes taken by `numel` elements whose innermost dimension is `row_len`, or a message
    /// saying why the shape does not fit the type. Overflow is an error, not a wrap.
    pub(crate) fn byte_len(self, numel: usize, row_len: usize) -> Result<usize, String> {
        let (block, block_bytes) = match self {
            SourceType::F32 => (1, 4),
            SourceType::F16 | SourceType::BF16 => (1, 2),
            SourceType::Q8_0 => (QK, 2 + QK),
            SourceType::Q4_0 => (QK, 2 + QK / 2),
            SourceType::Q4_1 => (QK, 4 + QK / 2),
        };
        if block > 1 && !row_len.is_multiple_of(block) {
            return Err(format!(
                "{self:?} needs rows that are a multiple of {block} elements, got {row_len}"
            ));
        }
        (numel / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| "tensor size overflows".to_string())
    }
}

/// One tensor to convert: where its bytes are and what to do with them.
pub(crate) struct Job<'a> {
    /// The Hugging Face name it is stored under.
    pub name: String,
    /// Row-major shape, `[out, in]` for matrices.
    pub shape: Vec<usize>,
    /// Exactly the tensor's bytes (length already checked against shape and type).
    pub bytes: &'a [u8],
    pub dtype: SourceType,
    /// `Some(n_heads)`: undo llama.cpp's rotary row permutation of q/k with this head count.
    pub unpermute_heads: Option<usize>,
}

fn f16_to_f32(lo: u8, hi: u8) -> f32 {
    // Exact: every f16 (subnormals included) is an f32.
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Decodes `bytes` of type `dtype` into bf16 bits appended to `out`.
pub(crate) fn to_bf16(dtype: SourceType, bytes: &[u8], out: &mut Vec<u16>) {
    match dtype {
        SourceType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| round_bf16_bits(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        SourceType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| round_bf16_bits(f16_to_f32(c[0], c[1]))),
        ),
        SourceType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| {
            let bits = u16::from_le_bytes([c[0], c[1]]);
            round_bf16_bits(f32::from_bits((bits as u32) << 16))
        })),
        SourceType::Q8_0 => {
            for b in bytes.chunks_exact(2 + QK) {
                let d = f16_to_f32(b[0], b[1]);
                out.extend(b[2..].iter().map(|&q| round_bf16_bits(q as i8 as f32 * d)));
            }
        }
        SourceType::Q4_0 => {
            for b in bytes.chunks_exact(2 + QK / 2) {
                let d = f16_to_f32(b[0], b[1]);
                let qs = &b[2..];
                // Low nibbles are elements 0..16 of the block, high nibbles 16..32.
                out.extend(
                    qs.iter()
                        .map(|&q| round_bf16_bits(((q & 0xf) as f32 - 8.0) * d)),
                );
                out.extend(
                    qs.iter()
                        .map(|&q| round_bf16_bits(((q >> 4) as f32 - 8.0) * d)),
                );
            }
        }
        SourceType::Q4_1 => {
            for b in bytes.chunks_exact(4 + QK / 2) {
                let d = f16_to_f32(b[0], b[1]);
                let m = f16_to_f32(b[2], b[3]);
                let qs = &b[4..];
                out.extend(
                    qs.iter()
                        .map(|&q| round_bf16_bits((q & 0xf) as f32 * d + m)),
                );
                out.extend(qs.iter().map(|&q| round_bf16_bits((q >> 4) as f32 * d + m)));
            }
        }
    }
}

/// Undoes the row permutation llama.cpp's converter applies to `llama` q/k projections.
///
/// The converter views the rows of each head as `[2, head_dim/2]` and transposes that to
/// `[head_dim/2, 2]`, interleaving the two rotary halves. So GGUF row `h·hd + 2j + i` holds
/// Hugging Face row `h·hd + i·hd/2 + j`; this puts every row back. Works for weights
/// (`row_len` = in-features) and biases (`row_len` = 1).
pub(crate) fn unpermute_rows(
    data: &[u16],
    rows: usize,
    row_len: usize,
    n_heads: usize,
) -> Result<Vec<u16>, String> {
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(format!(
            "cannot undo the rotary permutation: {rows} rows do not split into {n_heads} heads of even size"
        ));
    }
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0u16; data.len()];
    for h in 0..n_heads {
        for i in 0..2 {
            for j in 0..half {
                let src = (h * hd + 2 * j + i) * row_len;
                let dst = (h * hd + i * half + j) * row_len;
                out[dst..dst + row_len].copy_from_slice(&data[src..src + row_len]);
            }
        }
    }
    Ok(out)
}

fn run_job(job: &Job) -> Result<HostTensor> {
    let numel: usize = job.shape.iter().product();
    let mut data = Vec::with_capacity(numel);
    to_bf16(job.dtype, job.bytes, &mut data);
    if data.len() != numel {
        // The callers check byte lengths first; this guards the invariant rather than panicking.
        return Err(Error::Format(format!(
            "{}: decoded {} values, expected {numel}",
            job.name,
            data.len()
        )));
    }
    if let Some(heads) = job.unpermute_heads {
        let rows = job.shape.first().copied().unwrap_or(0);
        let row_len = numel.checked_div(rows).unwrap_or(0);
        data = unpermute_rows(&data, rows, row_len, heads)
            .map_err(|e| Error::Format(format!("{}: {e}", job.name)))?;
    }
    Ok(HostTensor {
        shape: job.shape.clone(),
        data,
    })
}

/// Converts every job, spreading them over the machine's cores (largest first, so the big
/// embedding does not finish last), with a byte-count progress bar on stderr when `progress`.
pub(crate) fn convert_all(
    mut jobs: Vec<Job<'_>>,
    progress: bool,
    what: &str,
) -> Result<HashMap<String, HostTensor>> {
    jobs.sort_by(|a, b| b.bytes.len().cmp(&a.bytes.len()).then(a.name.cmp(&b.name)));
    let total: u64 = jobs.iter().map(|j| j.bytes.len() as u64).sum();
    let bar = if progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("loading {what}"));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Vec<Vec<(usize, Result<HostTensor>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        done.push((i, run_job(job)));
                        bar.inc(job.bytes.len() as u64);
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![(
                        usize::MAX,
                        Err(Error::Format("a conversion thread panicked".into())),
                    )]
                })
            })
            .collect()
    });
    bar.finish_and_clear();

    let mut all: Vec<(usize, Result<HostTensor>)> = results.into_iter().flatten().collect();
    // Report the first failure in a fixed order, whatever thread hit it.
    all.sort_by_key(|(i, _)| *i);
    let mut out = HashMap::with_capacity(all.len());
    for (i, r) in all {
        let t = r?;
        out.insert(jobs[i].name.clone(), t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_decodes_low_nibbles_first() {
        // d = 0.5, m = -1.0; nibble pairs (lo, hi) = (j, 15 - j).
        let mut b = Vec::new();
        b.extend(half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b.extend(half::f16::from_f32(-1.0).to_bits().to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut out = Vec::new();
        to_bf16(SourceType::Q4_1, &b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], round_bf16_bits(j as f32 * 0.5 - 1.0));
            assert_eq!(out[16 + j], round_bf16_bits((15 - j) as f32 * 0.5 - 1.0));
        }
    }

    #[test]
    fn q4_0_and_q8_0_blocks() {
        let mut b = half::f16::from_f32(0.25).to_bits().to_le_bytes().to_vec();
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let mut out = Vec::new();
        to_bf16(SourceType::Q4_0, &b, &mut out);
        assert_eq!(out[3], round_bf16_bits(-5.0 * 0.25));
        assert_eq!(out[16 + 15], round_bf16_bits(7.0 * 0.25));

        let mut b = half::f16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
        b.extend((0..32i8).map(|j| (j - 16) as u8));
        out.clear();
        to_bf16(SourceType::Q8_0, &b, &mut out);
        for (j, &v) in out.iter().enumerate() {
            assert_eq!(v, round_bf16_bits((j as f32 - 16.0) * 2.0));
        }
        assert_eq!(out.len(), 32);
    }

    #[test]
    fn bf16_input_is_reflushed() {
        // 2^-100 is a normal bf16 but below the contract's 2^-63 floor: it must become +0.
        let tiny = (2f32.powi(-100).to_bits() >> 16) as u16;
        let neg_tiny = tiny | 0x8000;
        let one = 0x3f80u16;
        let bytes: Vec<u8> = [tiny, neg_tiny, one]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        to_bf16(SourceType::BF16, &bytes, &mut out);
        assert_eq!(out, vec![0x0000, 0x8000, one]);
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // 2 heads of dim 4, rows of 3 values; GGUF row h*4 + 2j + i = HF row h*4 + i*2 + j.
        let hf: Vec<u16> = (0..24).collect();
        let mut gguf = vec![0u16; 24];
        for h in 0..2 {
            for i in 0..2 {
                for j in 0..2 {
                    let g = h * 4 + 2 * j + i;
                    let f = h * 4 + i * 2 + j;
                    gguf[g * 3..g * 3 + 3].copy_from_slice(&hf[f * 3..f * 3 + 3]);
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, 8, 3, 2).unwrap(), hf);
        assert!(unpermute_rows(&gguf, 8, 3, 3).is_err());
    }
}
