//! Kernel-by-kernel conformance checks of any [`Backend`] against the `cpu` reference, generic
//! over the backend so that one corpus serves every backend (the CUDA tests, the
//! `cuda_selftest` example, and later the shared per-backend test macro).
//!
//! Each check runs a kernel on random inputs of many shapes on both backends and compares the
//! results bit for bit (`to_bits`). A failure names the kernel, the shape and the first
//! mismatching element.

use ditto_engine::cpu::CpuBackend;
use ditto_engine::{AttnGeometry, AttnSeq, Backend, DType, MatmulShape, Result, RopeTables};
use ditto_shaders::{contract, ProbeOp};

/// SplitMix64: a small, seedable generator (the checks must be reproducible).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }
    pub fn f32s(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym(a)).collect()
    }
    /// bf16 bits of values uniform in [-a, a), rounded (and flushed) by the contract.
    pub fn bf16s(&mut self, n: usize, a: f32) -> Vec<u16> {
        (0..n)
            .map(|_| contract::round_bf16_bits(self.sym(a)))
            .collect()
    }
}

/// The outcome of one check: how many cases passed, or the first failure.
pub type Check = std::result::Result<usize, String>;

/// A kernel run on one backend from host inputs (x, cos, sin) to host output.
type HostRun<'a> = &'a dyn Fn(&[f32], &[f32], &[f32]) -> Result<Vec<f32>>;

fn err(e: ditto_engine::Error) -> String {
    format!("backend error: {e}")
}

/// Equal bits, or both NaN. The contract fixes the NaN of its primitives and of `mul_rn`
/// (CANONICAL_NAN) but not the NaN that a plain IEEE `+` makes of NaN or infinite inputs: x86
/// keeps an input NaN's payload, NVIDIA GPUs give 0x7fffffff. So where a plain sum sees NaN or
/// inf (only the special-value inputs of the elementwise checks), the payload is not compared.
pub fn same_value(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

/// Bitwise comparison of two f32 slices ([`same_value`]); the first mismatch is described.
pub fn same_f32(what: &str, got: &[f32], want: &[f32]) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(g, w)| !same_value(*g, *w)) {
        None => Ok(()),
        Some(i) => {
            let bad = got
                .iter()
                .zip(want)
                .filter(|(g, w)| !same_value(**g, **w))
                .count();
            Err(format!(
                "{what}: {bad} of {} elements differ; first at {i}: got {:e} ({:#010x}), want {:e} ({:#010x})",
                got.len(),
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits()
            ))
        }
    }
}

/// Bitwise comparison of two integer slices (bf16 bits, indices).
pub fn same_bits<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &[T],
    want: &[T],
) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: first difference at {i}: got {:?}, want {:?}",
            got[i], want[i]
        )),
    }
}

/// For `KernelMode::Default` kernels, which are not the contract: largest difference relative
/// to the largest reference magnitude, which must stay below `tol`.
pub fn close_f32(
    what: &str,
    got: &[f32],
    want: &[f32],
    tol: f32,
) -> std::result::Result<f32, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(0f32, |m, w| m.max(w.abs())).max(1e-30);
    let mut worst = (0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs() / scale;
        if d.is_nan() || d > worst.0 {
            worst = (if d.is_nan() { f32::INFINITY } else { d }, i);
        }
    }
    if worst.0 > tol {
        return Err(format!(
            "{what}: relative error {:e} at {} (got {:e}, want {:e})",
            worst.0, worst.1, got[worst.1], want[worst.1]
        ));
    }
    Ok(worst.0)
}

pub fn check_embedding<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng) -> Check {
    let mut cases = 0;
    for &(vocab, dim, n) in &[(1000usize, 576usize, 37usize), (5, 1, 9), (300, 130, 1)] {
        let table = rng.bf16s(vocab * dim, 2.0);
        let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
        ids[0] = (vocab - 1) as u32;
        let d = dev.upload_bf16(&table).map_err(err)?;
        let c = cpu.upload_bf16(&table).map_err(err)?;
        let got = dev
            .download_f32(&dev.embedding(&d, &ids, dim).map_err(err)?)
            .map_err(err)?;
        let want = cpu
            .download_f32(&cpu.embedding(&c, &ids, dim).map_err(err)?)
            .map_err(err)?;
        same_f32(&format!("embedding vocab {vocab} dim {dim}"), &got, &want)?;
        if dev.embedding(&d, &[vocab as u32], dim).is_ok() {
            return Err("embedding accepted a token id past the vocabulary".into());
        }
        cases += 1;
    }
    Ok(cases)
}

pub fn check_rms_norm<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng) -> Check {
    let shapes = [
        (1usize, 1usize),
        (1, 576),
        (3, 4096),
        (5, 12289),
        (300, 100),
        (2, 65539),
        (7, 255),
    ];
    for (i, &(rows, dim)) in shapes.iter().enumerate() {
        let scale = [1.0f32, 1e-3, 30.0][i % 3];
        let x = rng.f32s(rows * dim, scale);
        let w = rng.bf16s(dim, 1.5);
        let eps = if i % 2 == 0 { 1e-5 } else { 1e-6 };
        let got = {
            let (x, w) = (
                dev.upload_f32(&x).map_err(err)?,
                dev.upload_bf16(&w).map_err(err)?,
            );
            dev.download_f32(&dev.rms_norm(&x, &w, rows, dim, eps).map_err(err)?)
                .map_err(err)?
        };
        let want = {
            let (x, w) = (
                cpu.upload_f32(&x).map_err(err)?,
                cpu.upload_bf16(&w).map_err(err)?,
            );
            cpu.download_f32(&cpu.rms_norm(&x, &w, rows, dim, eps).map_err(err)?)
                .map_err(err)?
        };
        same_f32(&format!("rms_norm rows {rows} dim {dim}"), &got, &want)?;
    }
    Ok(shapes.len())
}

/// Matmul shapes (m, n, k): K up to 12289, non-multiples of 256 and of 8, m from 1 to 300
/// (both the small-m and the tiled path of a GPU backend).
pub const MATMUL_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 3),
    (1, 64, 12288),
    (2, 33, 257),
    (2, 50, 520),
    // x over the GEMV's 64 KB of shared memory, so K runs in phases, over several column
    // blocks (f32 x at 2 and 3 rows, bf16 at 4 and 8; three phases at 8 rows).
    (2, 80, 12288),
    (3, 40, 12288),
    (3, 130, 1000),
    (4, 16, 12289),
    (4, 96, 12288),
    (5, 300, 8),
    (7, 96, 4097),
    (8, 40, 576),
    (8, 70, 12288),
    (9, 70, 257),
    (16, 64, 256),
    (33, 65, 2048),
    (64, 64, 512),
    (65, 129, 300),
    (100, 48, 3000),
    (128, 96, 1536),
    (257, 3, 100),
    (300, 40, 12288),
    (300, 129, 300),
];

/// `exact`: compare bit for bit (the contract); otherwise within `tol` (default-mode kernels).
pub fn check_matmul<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng, exact: bool) -> Check {
    let mut cases = 0;
    for &(m, n, k) in MATMUL_SHAPES {
        let x = rng.f32s(m * k, 3.0);
        let w = rng.bf16s(n * k, 0.5);
        let (dx, dw) = (
            dev.upload_f32(&x).map_err(err)?,
            dev.upload_bf16(&w).map_err(err)?,
        );
        let (cx, cw) = (
            cpu.upload_f32(&x).map_err(err)?,
            cpu.upload_bf16(&w).map_err(err)?,
        );
        let shape = MatmulShape { m, n, k };
        let what = format!("matmul m {m} n {n} k {k}");
        let got = dev
            .download_f32(&dev.matmul(&dx, &dw, shape, DType::F32).map_err(err)?)
            .map_err(err)?;
        let want = cpu
            .download_f32(&cpu.matmul(&cx, &cw, shape, DType::F32).map_err(err)?)
            .map_err(err)?;
        if exact {
            same_f32(&format!("{what} f32 out"), &got, &want)?;
        } else {
            close_f32(&format!("{what} f32 out"), &got, &want, 1e-3)?;
        }
        let got = dev
            .download_bf16(&dev.matmul(&dx, &dw, shape, DType::Bf16).map_err(err)?)
            .map_err(err)?;
        let want = cpu
            .download_bf16(&cpu.matmul(&cx, &cw, shape, DType::Bf16).map_err(err)?)
            .map_err(err)?;
        if exact {
            same_bits(&format!("{what} bf16 out"), &got, &want)?;
        } else {
            let f =
                |v: &[u16]| -> Vec<f32> { v.iter().map(|&b| contract::bf16_to_f32(b)).collect() };
            close_f32(&format!("{what} bf16 out"), &f(&got), &f(&want), 1e-2)?;
        }
        cases += 2;
    }
    Ok(cases)
}

pub fn check_rope<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng) -> Check {
    let mut cases = 0;
    for &(tokens, heads, head_dim, theta) in &[
        (5usize, 3usize, 64usize, 10000.0f64),
        (17, 9, 128, 1e6),
        (1, 1, 2, 10000.0),
    ] {
        let half = head_dim / 2;
        let positions_in_table = 4096;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        let (cos, sin) = contract::rope_tables(&inv_freq, positions_in_table);
        let x = rng.f32s(tokens * heads * head_dim, 4.0);
        let positions: Vec<u32> = (0..tokens)
            .map(|_| rng.below(positions_in_table) as u32)
            .collect();
        let run = |b: HostRun| b(&x, &cos, &sin);
        let got = run(&|x, c, s| {
            let t = RopeTables {
                cos: dev.upload_f32(c)?,
                sin: dev.upload_f32(s)?,
                positions: positions_in_table,
                half_dim: half,
            };
            dev.download_f32(&dev.rope(&dev.upload_f32(x)?, &positions, &t, heads, head_dim)?)
        })
        .map_err(err)?;
        let want = run(&|x, c, s| {
            let t = RopeTables {
                cos: cpu.upload_f32(c)?,
                sin: cpu.upload_f32(s)?,
                positions: positions_in_table,
                half_dim: half,
            };
            cpu.download_f32(&cpu.rope(&cpu.upload_f32(x)?, &positions, &t, heads, head_dim)?)
        })
        .map_err(err)?;
        same_f32(
            &format!("rope tokens {tokens} heads {heads} head_dim {head_dim}"),
            &got,
            &want,
        )?;
        cases += 1;
    }
    Ok(cases)
}

/// Inputs for the elementwise kernels: a wide range, plus the special values.
fn elementwise_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    let specials = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        88.5,
        -88.5,
        100.0,
        -100.0,
        1e-40,
        f32::MAX,
    ];
    (0..n)
        .map(|i| {
            if i < specials.len() {
                specials[i]
            } else {
                let scale = [1.0f32, 10.0, 100.0, 1e-3][i % 4];
                rng.sym(scale)
            }
        })
        .collect()
}

pub fn check_elementwise<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng) -> Check {
    let mut cases = 0;
    for &n in &[1usize, 100, 100_003] {
        let a = elementwise_inputs(rng, n);
        let b = elementwise_inputs(rng, n);
        let (da, db) = (
            dev.upload_f32(&a).map_err(err)?,
            dev.upload_f32(&b).map_err(err)?,
        );
        let (ca, cb) = (
            cpu.upload_f32(&a).map_err(err)?,
            cpu.upload_f32(&b).map_err(err)?,
        );
        // One row: a's values as the gates, b's as the ups.
        let gate_up = [a.as_slice(), b.as_slice()].concat();
        let got = dev
            .download_f32(
                &dev.silu_mul(&dev.upload_f32(&gate_up).map_err(err)?, 1, n)
                    .map_err(err)?,
            )
            .map_err(err)?;
        let want = cpu
            .download_f32(
                &cpu.silu_mul(&cpu.upload_f32(&gate_up).map_err(err)?, 1, n)
                    .map_err(err)?,
            )
            .map_err(err)?;
        same_f32(&format!("silu_mul n {n}"), &got, &want)?;
        let got = dev
            .download_f32(&dev.add(&da, &db).map_err(err)?)
            .map_err(err)?;
        let want = cpu
            .download_f32(&cpu.add(&ca, &cb).map_err(err)?)
            .map_err(err)?;
        same_f32(&format!("add n {n}"), &got, &want)?;
        cases += 2;
    }
    for &(rows, n) in &[(1usize, 1usize), (3, 896), (300, 129)] {
        let x = rng.f32s(rows * n, 5.0);
        let bias = rng.bf16s(n, 2.0);
        let got = dev
            .download_f32(
                &dev.add_bias(
                    &dev.upload_f32(&x).map_err(err)?,
                    &dev.upload_bf16(&bias).map_err(err)?,
                    rows,
                    n,
                )
                .map_err(err)?,
            )
            .map_err(err)?;
        let want = cpu
            .download_f32(
                &cpu.add_bias(
                    &cpu.upload_f32(&x).map_err(err)?,
                    &cpu.upload_bf16(&bias).map_err(err)?,
                    rows,
                    n,
                )
                .map_err(err)?,
            )
            .map_err(err)?;
        same_f32(&format!("add_bias rows {rows} n {n}"), &got, &want)?;
        cases += 1;
    }
    Ok(cases)
}

pub fn check_write_kv<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng) -> Check {
    let mut cases = 0;
    for &(cache_slots, row_len, n) in &[(64usize, 256usize, 10usize), (1000, 192, 300), (4, 8, 1)] {
        // Distinct slots, then one slot named twice (the later row must win).
        let mut all: Vec<u32> = (0..cache_slots as u32).collect();
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i + 1));
        }
        let mut slots: Vec<u32> = all[..n].to_vec();
        if n >= 2 {
            slots[n - 1] = slots[0];
        }
        let k = elementwise_inputs(rng, n * row_len);
        let v = rng.f32s(n * row_len, 1e3);
        let init_k = rng.bf16s(cache_slots * row_len, 1.0);
        let init_v = rng.bf16s(cache_slots * row_len, 1.0);
        let (got_k, got_v) = {
            let mut kc = dev.upload_bf16(&init_k).map_err(err)?;
            let mut vc = dev.upload_bf16(&init_v).map_err(err)?;
            let (k, v) = (
                dev.upload_f32(&k).map_err(err)?,
                dev.upload_f32(&v).map_err(err)?,
            );
            dev.write_kv(&mut kc, &mut vc, &k, &v, &slots, row_len)
                .map_err(err)?;
            (
                dev.download_bf16(&kc).map_err(err)?,
                dev.download_bf16(&vc).map_err(err)?,
            )
        };
        let (want_k, want_v) = {
            let mut kc = cpu.upload_bf16(&init_k).map_err(err)?;
            let mut vc = cpu.upload_bf16(&init_v).map_err(err)?;
            let (k, v) = (
                cpu.upload_f32(&k).map_err(err)?,
                cpu.upload_f32(&v).map_err(err)?,
            );
            cpu.write_kv(&mut kc, &mut vc, &k, &v, &slots, row_len)
                .map_err(err)?;
            (
                cpu.download_bf16(&kc).map_err(err)?,
                cpu.download_bf16(&vc).map_err(err)?,
            )
        };
        same_bits(&format!("write_kv k, row_len {row_len}"), &got_k, &want_k)?;
        same_bits(&format!("write_kv v, row_len {row_len}"), &got_v, &want_v)?;
        cases += 1;
    }
    Ok(cases)
}

/// One attention case: geometry and the sequences' (q_len, ctx_len).
pub struct AttnCase {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub page_size: usize,
    pub seqs: &'static [(usize, usize)],
}

/// Head dims 64 and 128 (and one that is not a multiple of 32), GQA groups 1, 3 and 4; decode
/// at block edges (0, 255, 256, 257 …), long decode, prefill of 300, chunked prefill.
pub const ATTN_CASES: &[AttnCase] = &[
    AttnCase {
        heads: 8,
        kv_heads: 2,
        head_dim: 128,
        page_size: 16,
        seqs: &[
            (1, 0),
            (1, 1),
            (1, 255),
            (1, 256),
            (1, 257),
            (1, 1000),
            (1, 3000),
        ],
    },
    AttnCase {
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        page_size: 7,
        seqs: &[(300, 0)],
    },
    AttnCase {
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        page_size: 32,
        seqs: &[(50, 700), (1, 20), (3, 510)],
    },
    AttnCase {
        heads: 4,
        kv_heads: 4,
        head_dim: 128,
        page_size: 256,
        seqs: &[(1, 513), (20, 250)],
    },
    AttnCase {
        heads: 2,
        kv_heads: 1,
        head_dim: 80,
        page_size: 16,
        seqs: &[(1, 600), (4, 0)],
    },
];

pub fn check_attention<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng, exact: bool) -> Check {
    let mut cases = 0;
    for case in ATTN_CASES {
        if !exact && case.head_dim % 32 != 0 {
            continue;
        }
        let g = AttnGeometry {
            heads: case.heads,
            kv_heads: case.kv_heads,
            head_dim: case.head_dim,
            page_size: case.page_size,
            scale: 1.0 / (case.head_dim as f32).sqrt(),
        };
        // Pages: each sequence gets its own, in a shuffled order, plus a few unused ones.
        let pages_needed: Vec<usize> = case
            .seqs
            .iter()
            .map(|&(q, c)| (q + c).div_ceil(case.page_size))
            .collect();
        let total_pages: usize = pages_needed.iter().sum::<usize>() + 3;
        let mut pages: Vec<u32> = (0..total_pages as u32).collect();
        for i in (1..pages.len()).rev() {
            pages.swap(i, rng.below(i + 1));
        }
        let mut block_table = Vec::new();
        let mut seqs = Vec::new();
        let mut q_rows = 0;
        for (&(q_len, ctx_len), &np) in case.seqs.iter().zip(&pages_needed) {
            seqs.push(AttnSeq {
                q_start: q_rows,
                q_len,
                ctx_len,
                block_table_start: block_table.len(),
            });
            let start = block_table.len();
            block_table.extend_from_slice(&pages[start..start + np]);
            q_rows += q_len;
        }
        // One extra query row that no sequence names: it must stay zero.
        let rows = q_rows + 1;
        let cache_len = total_pages * case.page_size * case.kv_heads * case.head_dim;
        let kc = rng.bf16s(cache_len, 1.0);
        let vc = rng.bf16s(cache_len, 2.0);
        let q = rng.f32s(rows * case.heads * case.head_dim, 4.0);
        let got = {
            let (q, k, v) = (
                dev.upload_f32(&q).map_err(err)?,
                dev.upload_bf16(&kc).map_err(err)?,
                dev.upload_bf16(&vc).map_err(err)?,
            );
            dev.download_f32(
                &dev.attention(&q, &k, &v, &seqs, &block_table, g)
                    .map_err(err)?,
            )
            .map_err(err)?
        };
        let want = {
            let (q, k, v) = (
                cpu.upload_f32(&q).map_err(err)?,
                cpu.upload_bf16(&kc).map_err(err)?,
                cpu.upload_bf16(&vc).map_err(err)?,
            );
            cpu.download_f32(
                &cpu.attention(&q, &k, &v, &seqs, &block_table, g)
                    .map_err(err)?,
            )
            .map_err(err)?
        };
        let what = format!(
            "attention heads {} kv_heads {} head_dim {} page {} seqs {:?}",
            case.heads, case.kv_heads, case.head_dim, case.page_size, case.seqs
        );
        if exact {
            same_f32(&what, &got, &want)?;
        } else {
            close_f32(&what, &got, &want, 1e-2)?;
        }
        cases += 1;
    }
    Ok(cases)
}

pub fn check_argmax<B: Backend>(dev: &B, cpu: &CpuBackend, rng: &mut Rng) -> Check {
    let mut cases = 0;
    for &(rows, vocab) in &[(1usize, 1usize), (3, 49152), (8, 1000), (2, 151_936)] {
        let mut l = rng.f32s(rows * vocab, 10.0);
        // Ties (the lowest index must win), ±0, NaN and an all-NaN row.
        if vocab > 100 {
            l[50] = 1e9;
            l[90] = 1e9;
            l[10] = f32::NAN;
        }
        if rows > 1 {
            for x in &mut l[vocab..2 * vocab] {
                *x = f32::NAN;
            }
        }
        if rows > 2 {
            for (i, x) in l[2 * vocab..3 * vocab].iter_mut().enumerate() {
                *x = if i % 2 == 0 { 0.0 } else { -0.0 };
            }
        }
        let got = dev
            .argmax(&dev.upload_f32(&l).map_err(err)?, rows, vocab)
            .map_err(err)?;
        let want = cpu
            .argmax(&cpu.upload_f32(&l).map_err(err)?, rows, vocab)
            .map_err(err)?;
        same_bits(&format!("argmax rows {rows} vocab {vocab}"), &got, &want)?;
        cases += 1;
    }
    Ok(cases)
}

/// Inputs for the numerics probe: every 4099th f32 bit pattern (about a million, over the
/// whole range, specials included) for `a`; random bit patterns for `b`.
pub fn probe_inputs(rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..=u32::MAX / 4099)
        .map(|i| f32::from_bits(i.wrapping_mul(4099)))
        .collect();
    let b: Vec<f32> = (0..a.len())
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    (a, b)
}

/// Compares a backend's probe results with [`ProbeOp::reference`].
pub fn check_probe(
    op: ProbeOp,
    a: &[f32],
    b: &[f32],
    got: &[u32],
) -> std::result::Result<(), String> {
    if got.len() != a.len() {
        return Err(format!(
            "{op:?}: {} results for {} inputs",
            got.len(),
            a.len()
        ));
    }
    let mut bad = 0usize;
    let mut first = None;
    for i in 0..a.len() {
        let want = op.reference(a[i], b[i]);
        // Every primitive, mul_rn included, returns the contract's canonical NaN: compared bit
        // for bit.
        if got[i] != want {
            bad += 1;
            first.get_or_insert((i, want));
        }
    }
    match first {
        None => Ok(()),
        Some((i, want)) => Err(format!(
            "{op:?}: {bad} of {} differ; first: a = {:#010x}, b = {:#010x}: got {:#010x}, want {want:#010x}",
            a.len(),
            a[i].to_bits(),
            b[i].to_bits(),
            got[i]
        )),
    }
}

/// Every kernel check, in order, with its name. `exact` as in [`check_matmul`].
pub fn run_all<B: Backend>(dev: &B, exact: bool, seed: u64) -> Vec<(&'static str, Check)> {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    vec![
        ("embedding", check_embedding(dev, &cpu, &mut rng)),
        ("rms_norm", check_rms_norm(dev, &cpu, &mut rng)),
        ("matmul", check_matmul(dev, &cpu, &mut rng, exact)),
        ("rope", check_rope(dev, &cpu, &mut rng)),
        ("elementwise", check_elementwise(dev, &cpu, &mut rng)),
        ("write_kv", check_write_kv(dev, &cpu, &mut rng)),
        ("attention", check_attention(dev, &cpu, &mut rng, exact)),
        ("argmax", check_argmax(dev, &cpu, &mut rng)),
    ]
}
