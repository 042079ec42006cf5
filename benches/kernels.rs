//! Kernel benchmarks at the shapes of a model: matmul (GEMV for decode, GEMM for prefill and
//! large batches), attention (decode and prefill) and RMSNorm, in the invariant and the default
//! kernels, with throughput as a fraction of ceilings measured in the same run (CUDA: device copy
//! bandwidth, cuBLAS bf16 and fp32 GEMM, and for each GEMV the time to stream its weights).
//!
//! ```sh
//! cargo bench --bench kernels -- [--backend cpu|wgpu|cuda|all] [--shapes qwen3-8b|smollm2]
//!                                [--reps N] [--filter OP] [--rows M,M,..] [--quick] [--json]
//! ```
//! `--rows` times the matmuls at these rows only (default: 1, 4 and 8 for the GEMV, and 64, 256
//! and 512 for the GEMM).
//! `--quick` is CI's smoke run: small shapes, one repetition. A backend that does not open is
//! reported and skipped.

#[path = "../tests/common/mod.rs"]
mod common;

use common::Rng;
use ditto::cuda::ceilings::{cold_copies, GemmPrecision};
use ditto::cuda::CudaBackend;
use ditto::engine::cpu::CpuBackend;
use ditto::engine::wgpu::WgpuBackend;
use ditto::engine::{AttnGeometry, AttnSeq, Backend, DType, KernelMode, MatmulShape, Result};
use ditto::shaders::contract;
use std::time::{Duration, Instant};

/// The dimensions the benchmark takes from a model.
#[derive(Clone, Copy)]
struct Shapes {
    name: &'static str,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
}

const QWEN3_8B: Shapes = Shapes {
    name: "qwen3-8b",
    hidden: 4096,
    intermediate: 12288,
    heads: 32,
    kv_heads: 8,
    head_dim: 128,
    vocab: 49152,
};

const SMOLLM2: Shapes = Shapes {
    name: "smollm2",
    hidden: 576,
    intermediate: 1536,
    heads: 9,
    kv_heads: 3,
    head_dim: 64,
    vocab: 49152,
};

struct Options {
    backends: Vec<String>,
    shapes: Shapes,
    reps: usize,
    quick: bool,
    json: bool,
    /// Only operations whose name contains this text.
    filter: Option<String>,
    /// Only matmuls of these rows.
    rows: Option<Vec<usize>>,
}

fn parse_options() -> std::result::Result<Options, String> {
    let mut o = Options {
        backends: vec!["cuda".into(), "wgpu".into()],
        shapes: QWEN3_8B,
        reps: 20,
        quick: false,
        json: false,
        filter: None,
        rows: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--backend" => {
                let v = value()?;
                o.backends = match v.as_str() {
                    "all" => vec!["cpu".into(), "wgpu".into(), "cuda".into()],
                    "cpu" | "wgpu" | "cuda" => vec![v],
                    _ => return Err(format!("unknown backend {v}")),
                }
            }
            "--shapes" => {
                o.shapes = match value()?.as_str() {
                    "qwen3-8b" => QWEN3_8B,
                    "smollm2" => SMOLLM2,
                    v => return Err(format!("unknown shapes {v}")),
                }
            }
            "--reps" => o.reps = value()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--filter" => o.filter = Some(value()?),
            "--rows" => {
                let list = value()?
                    .split(',')
                    .map(|r| r.trim().parse().map_err(|e| format!("--rows: {e}")))
                    .collect::<std::result::Result<Vec<usize>, String>>()?;
                if list.contains(&0) {
                    return Err("--rows: a matmul has at least one row".into());
                }
                o.rows = Some(list);
            }
            "--quick" => o.quick = true,
            "--json" => o.json = true,
            // `cargo bench` passes --bench to every bench binary.
            "--bench" => {}
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.quick {
        o.shapes = SMOLLM2;
        o.reps = 1;
        o.backends = vec!["cpu".into(), "wgpu".into(), "cuda".into()];
    }
    Ok(o)
}

/// Dispatches a `dispatch chain` call queues.
const DISPATCH_CHAIN: usize = 256;

/// What one measured operation moves and computes.
struct Work {
    op: String,
    shape: String,
    bytes: f64,
    flops: f64,
}

/// One line of the report.
struct Row {
    backend: String,
    work: Work,
    invariant_s: f64,
    /// Host time per call of the invariant kernel (queuing, before any wait).
    host_s: f64,
    default_s: Option<f64>,
    /// For a GEMV: the time a kernel takes to stream its weights and compute nothing.
    read_s: Option<f64>,
}

/// The ceilings of the device, when a backend can measure them.
#[derive(Clone, Copy, Default)]
struct Ceilings {
    /// Copy bandwidth, bytes read plus bytes written per second.
    copy_bytes_per_s: Option<f64>,
    /// cuBLAS fp32 GEMM (no TF32) FLOP/s at the benchmark's largest GEMM.
    fp32_flops: Option<f64>,
    bf16_flops: Option<f64>,
}

/// How long `time_op` keeps the device busy before it times: an idle GPU lowers its clocks,
/// and the NVIDIA Vulkan driver raised them back only after the first timed calls (H100,
/// 2026-11-25: the SM clock at 345 MHz in a third of the wgpu kernel bench's samples, and the
/// same one-row GEMV measured 104 µs in one run and 255 in another).
const WARM_UP: Duration = Duration::from_millis(250);

/// Seconds per call of `op` on `b`: warm-up calls for at least [`WARM_UP`] (one at least), then
/// `reps` calls queued back to back and one wait for the last (`finish`), so launch overhead
/// counts as it does in a model. Also returns the host's share: seconds per call spent queuing
/// (before the wait).
fn time_op<B: Backend>(
    b: &B,
    reps: usize,
    finish: &dyn Fn(&B, &B::Tensor) -> Result<()>,
    op: &mut dyn FnMut() -> Result<B::Tensor>,
) -> Result<(f64, f64)> {
    let warming = Instant::now();
    loop {
        let warm = op()?;
        finish(b, &warm)?;
        if warming.elapsed() >= WARM_UP {
            break;
        }
    }
    let start = Instant::now();
    let mut last = op()?;
    for _ in 1..reps {
        last = op()?;
    }
    let queued = start.elapsed().as_secs_f64();
    finish(b, &last)?;
    let n = reps as f64;
    Ok((start.elapsed().as_secs_f64() / n, queued / n))
}

/// Waits for a tensor by reading it back (backends without an explicit synchronize).
fn finish_by_download<B: Backend>(b: &B, t: &B::Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 => b.download_f32(t).map(|_| ()),
        DType::Bf16 => b.download_bf16(t).map(|_| ()),
    }
}

fn finish_cuda(b: &CudaBackend, _: &<CudaBackend as Backend>::Tensor) -> Result<()> {
    b.synchronize()
}

use ditto::engine::backend::Tensor as _;

/// Every benchmarked operation on one backend; `default` is the same backend in default mode.
/// `read_ceiling(bytes)`: seconds to stream `bytes` bytes, where the backend measures it.
fn bench_backend<B: Backend>(
    name: &str,
    invariant: &B,
    default: Option<&B>,
    finish: &dyn Fn(&B, &B::Tensor) -> Result<()>,
    read_ceiling: Option<&dyn Fn(usize) -> Result<f64>>,
    o: &Options,
) -> Result<Vec<Row>> {
    let s = o.shapes;
    let mut rng = Rng::new(7);
    let mut rows = Vec::new();
    // Read ceilings by bytes: the GEMVs of one projection at every row count stream the same
    // weights, so their ceiling is measured once.
    let mut read_by_bytes = std::collections::HashMap::new();
    let mut measure = |work: Work,
                       read_bytes: Option<usize>,
                       run: &dyn Fn(&B) -> Result<B::Tensor>|
     -> Result<()> {
        if o.filter
            .as_ref()
            .is_some_and(|f| !work.op.contains(f.as_str()))
        {
            return Ok(());
        }
        let (inv, host) = time_op(invariant, o.reps, finish, &mut || run(invariant))?;
        let def = match default {
            Some(d) => Some(time_op(d, o.reps, finish, &mut || run(d))?.0),
            None => None,
        };
        rows.push(Row {
            backend: name.to_string(),
            work,
            invariant_s: inv,
            host_s: host,
            default_s: def,
            read_s: match (read_ceiling, read_bytes) {
                (Some(read), Some(bytes)) => Some(match read_by_bytes.get(&bytes) {
                    Some(&seconds) => seconds,
                    None => {
                        let seconds = read(bytes)?;
                        read_by_bytes.insert(bytes, seconds);
                        seconds
                    }
                }),
                _ => None,
            },
        });
        Ok(())
    };

    // Matmuls: the projections of one layer (q/k/v and gate/up stacked, as the model runs
    // them) and the output head.
    let (q_out, kv_out) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut projections = vec![
        ("q/k/v", q_out + 2 * kv_out, s.hidden),
        ("o", s.hidden, q_out),
        ("gate/up", 2 * s.intermediate, s.hidden),
        ("down", s.hidden, s.intermediate),
        ("lm_head", s.vocab, s.hidden),
    ];
    if o.quick {
        projections.truncate(3);
    }
    let gemv_rows: &[usize] = if o.quick { &[1] } else { &[1, 4, 8] };
    let gemm_rows: &[usize] = if o.quick { &[64] } else { &[64, 256, 512] };
    for &(what, n, k) in &projections {
        let w = rng.bf16s(n * k, 0.05);
        // In a model each layer's weights were pushed out of the caches by the other layers'
        // by the time they are read again, so consecutive calls take turns over copies that
        // together exceed a GPU's last-level cache, as the read ceiling does.
        let copies = cold_copies(n * k * 2);
        let upload =
            |b: &B| -> Result<Vec<B::Tensor>> { (0..copies).map(|_| b.upload_bf16(&w)).collect() };
        let (wi, wd) = (upload(invariant)?, default.map(upload).transpose()?);
        let turn = std::cell::Cell::new(0usize);
        let mut ms: Vec<usize> = gemv_rows.to_vec();
        if what == "gate/up" {
            ms.extend_from_slice(gemm_rows);
        }
        if let Some(rows) = &o.rows {
            ms = rows.clone();
        }
        for m in ms {
            // The activations come out of an RMSNorm, as in the model, so that a backend whose
            // kernels hand their outputs over already rounded for the matmul (cuda) does so here.
            let x = rng.f32s(m * k, 1.0);
            let ones = vec![contract::round_bf16_bits(1.0); k];
            let normed = |b: &B| -> Result<B::Tensor> {
                b.rms_norm(&b.upload_f32(&x)?, &b.upload_bf16(&ones)?, m, k, 1e-6)
            };
            let (xi, xd) = (normed(invariant)?, default.map(normed).transpose()?);
            let shape = MatmulShape { m, n, k };
            let work = Work {
                op: format!("matmul {what}"),
                shape: format!("m={m} n={n} k={k}"),
                bytes: (n * k * 2 + m * k * 4 + m * n * 4) as f64,
                flops: 2.0 * (m * n * k) as f64,
            };
            let run = |b: &B| {
                let (x, ws) = if std::ptr::eq(b, invariant) {
                    (&xi, &wi)
                } else {
                    (xd.as_ref().unwrap_or(&xi), wd.as_ref().unwrap_or(&wi))
                };
                turn.set(turn.get() + 1);
                b.matmul(x, &ws[turn.get() % copies], shape, DType::F32)
            };
            // A GEMV's floor: streaming its weights.
            measure(work, (m <= 8).then_some(n * k * 2), &run)?;
        }
    }

    // RMSNorm of one row (decode) and of a prefill's rows.
    for rows_n in [1usize, 512] {
        let x = rng.f32s(rows_n * s.hidden, 1.0);
        let wt = rng.bf16s(s.hidden, 1.0);
        let (xi, wi) = (invariant.upload_f32(&x)?, invariant.upload_bf16(&wt)?);
        let dd = match default {
            Some(d) => Some((d.upload_f32(&x)?, d.upload_bf16(&wt)?)),
            None => None,
        };
        let work = Work {
            op: "rms_norm".into(),
            shape: format!("rows={rows_n} dim={}", s.hidden),
            bytes: (rows_n * s.hidden * 8) as f64,
            flops: 0.0,
        };
        let run = |b: &B| {
            let (x, w) = if std::ptr::eq(b, invariant) {
                (&xi, &wi)
            } else {
                let (x, w) = dd.as_ref().expect("default tensors");
                (x, w)
            };
            b.rms_norm(x, w, rows_n, s.hidden, 1e-6)
        };
        measure(work, None, &run)?;
    }

    // Dispatches that compute almost nothing, 256 a call: what every kernel of a decode step
    // pays before and after its own work. A decode step of Qwen3-8B runs about 290 kernels, each
    // waiting for the one before it (its launch or dispatch, and the barrier or drain after the
    // kernel before it): the dependent chain measures that. The independent dispatches (each
    // reading the same inputs into an output of its own, all kept) need no barrier between
    // them, which tells what the barrier costs.
    {
        let x = rng.f32s(s.hidden, 1.0);
        let upload = |b: &B| -> Result<(B::Tensor, B::Tensor)> {
            Ok((b.upload_f32(&x)?, b.upload_f32(&x)?))
        };
        let ti = upload(invariant)?;
        let td = default.map(upload).transpose()?;
        for dependent in [true, false] {
            let work = Work {
                op: "dispatch chain".into(),
                shape: format!(
                    "{DISPATCH_CHAIN} {} adds of {} (time ÷ {DISPATCH_CHAIN} a dispatch)",
                    if dependent {
                        "dependent"
                    } else {
                        "independent"
                    },
                    s.hidden
                ),
                bytes: (DISPATCH_CHAIN * s.hidden * 12) as f64,
                flops: 0.0,
            };
            let run = |b: &B| {
                let (a, one) = if std::ptr::eq(b, invariant) {
                    &ti
                } else {
                    td.as_ref().expect("default tensors")
                };
                let mut sum = b.add(a, one)?;
                let mut kept = Vec::with_capacity(DISPATCH_CHAIN);
                for _ in 1..DISPATCH_CHAIN {
                    let next = b.add(if dependent { &sum } else { a }, one)?;
                    kept.push(std::mem::replace(&mut sum, next));
                }
                Ok(sum)
            };
            measure(work, None, &run)?;
        }
    }

    // Attention over a paged cache: decode of 1 and of 8 sequences, and a 512-token prefill.
    let page = 16;
    let cases: &[(&str, usize, usize, usize)] = if o.quick {
        &[("decode", 1, 1, 300)]
    } else {
        // (name, sequences, new tokens per sequence, context before them)
        &[
            ("decode", 1, 1, 511),
            ("decode", 1, 1, 4095),
            ("decode", 8, 1, 1023),
            ("prefill", 1, 512, 0),
        ]
    };
    for &(what, seqs_n, q_len, ctx) in cases {
        let positions = ctx + q_len;
        let pages_per_seq = positions.div_ceil(page);
        let slots = seqs_n * pages_per_seq * page;
        let kv = rng.bf16s(slots * kv_out, 1.0);
        let vv = rng.bf16s(slots * kv_out, 1.0);
        let q = rng.f32s(seqs_n * q_len * q_out, 1.0);
        let block_table: Vec<u32> = (0..(seqs_n * pages_per_seq) as u32).collect();
        let seqs: Vec<AttnSeq> = (0..seqs_n)
            .map(|i| AttnSeq {
                q_start: i * q_len,
                q_len,
                ctx_len: ctx,
                block_table_start: i * pages_per_seq,
            })
            .collect();
        let geometry = AttnGeometry {
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
            page_size: page,
            scale: (1.0 / (s.head_dim as f64).sqrt()) as f32,
        };
        let up = |b: &B| -> Result<_> {
            Ok((b.upload_f32(&q)?, b.upload_bf16(&kv)?, b.upload_bf16(&vv)?))
        };
        let ti = up(invariant)?;
        let td = default.map(up).transpose()?;
        // Keys and values read once per sequence (the ideal), plus queries and outputs.
        let kv_bytes = seqs_n * positions * kv_out * 2 * 2;
        let work = Work {
            op: format!("attention {what}"),
            shape: format!("seqs={seqs_n} q={q_len} ctx={ctx}"),
            bytes: (kv_bytes + 2 * seqs_n * q_len * q_out * 4) as f64,
            flops: 4.0
                * (seqs_n * q_len * s.heads * s.head_dim) as f64
                * (ctx as f64 + 0.5 * q_len as f64),
        };
        let run = |b: &B| {
            let (q, k, v) = if std::ptr::eq(b, invariant) {
                &ti
            } else {
                td.as_ref().expect("default tensors")
            };
            b.attention(q, k, v, &seqs, &block_table, geometry)
        };
        measure(work, None, &run)?;
    }
    Ok(rows)
}

fn open_cuda(mode: KernelMode) -> std::result::Result<CudaBackend, String> {
    CudaBackend::new(mode).map_err(|e| e.to_string())
}

fn main() {
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kernels bench: {e}");
            std::process::exit(2);
        }
    };
    let mut rows = Vec::new();
    let mut ceilings = Ceilings::default();
    let mut failed = false;
    // CUDA first: its ceilings are the device's, and they also frame the wgpu figures when both
    // run on the same GPU.
    if o.backends.iter().any(|b| b == "cuda") {
        match (
            open_cuda(KernelMode::Invariant),
            open_cuda(KernelMode::Default),
        ) {
            (Ok(inv), Ok(def)) => {
                let s = o.shapes;
                let copy_bytes = if o.quick { 64 << 20 } else { 1 << 30 };
                let big_m = if o.quick { 64 } else { 512 };
                let measured = (|| -> Result<Ceilings> {
                    let copy = inv.copy_seconds(copy_bytes, o.reps.max(3))?;
                    let fp32 = inv.cublas_gemm_seconds(
                        big_m,
                        s.intermediate,
                        s.hidden,
                        GemmPrecision::F32,
                        o.reps.max(3),
                    )?;
                    let bf16 = inv.cublas_gemm_seconds(
                        big_m.max(4096),
                        s.intermediate,
                        s.hidden,
                        GemmPrecision::Bf16,
                        o.reps.max(3),
                    )?;
                    let flops = |m: usize, t: f64| 2.0 * (m * s.intermediate * s.hidden) as f64 / t;
                    Ok(Ceilings {
                        copy_bytes_per_s: Some(2.0 * copy_bytes as f64 / copy),
                        fp32_flops: Some(flops(big_m, fp32)),
                        bf16_flops: Some(flops(big_m.max(4096), bf16)),
                    })
                })();
                match measured {
                    Ok(c) => ceilings = c,
                    Err(e) => eprintln!("cuda ceilings: {e}"),
                }
                let read = |bytes: usize| inv.read_seconds(bytes, o.reps.max(3));
                match bench_backend("cuda", &inv, Some(&def), &finish_cuda, Some(&read), &o) {
                    Ok(r) => rows.extend(r),
                    Err(e) => {
                        eprintln!("cuda: {e}");
                        failed = true;
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("cuda: skipped ({e})"),
        }
    }
    if o.backends.iter().any(|b| b == "wgpu") {
        match (
            WgpuBackend::new(KernelMode::Invariant),
            WgpuBackend::new(KernelMode::Default),
        ) {
            (Ok(inv), Ok(def)) => {
                let name = inv.describe();
                match bench_backend(&name, &inv, Some(&def), &finish_by_download, None, &o) {
                    Ok(r) => rows.extend(r),
                    Err(e) => {
                        eprintln!("wgpu: {e}");
                        failed = true;
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("wgpu: skipped ({e})"),
        }
    }
    if o.backends.iter().any(|b| b == "cpu") {
        let cpu = CpuBackend::new();
        match bench_backend::<CpuBackend>("cpu", &cpu, None, &finish_by_download, None, &o) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("cpu: {e}");
                failed = true;
            }
        }
    }
    report(&rows, &ceilings, &o);
    if failed || rows.is_empty() {
        std::process::exit(1);
    }
}

fn report(rows: &[Row], c: &Ceilings, o: &Options) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", 100.0 * v));
    if o.json {
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:e}"));
        println!(
            "{{\"shapes\":\"{}\",\"copy_bytes_per_s\":{},\"cublas_fp32_flops\":{},\"cublas_bf16_flops\":{},\"rows\":[",
            o.shapes.name,
            num(c.copy_bytes_per_s),
            num(c.fp32_flops),
            num(c.bf16_flops)
        );
        for (i, r) in rows.iter().enumerate() {
            println!(
                "{{\"backend\":\"{}\",\"op\":\"{}\",\"shape\":\"{}\",\"bytes\":{:e},\"flops\":{:e},\"invariant_s\":{:e},\"host_s\":{:e},\"default_s\":{},\"read_s\":{}}}{}",
                r.backend.replace('"', "'"),
                r.work.op,
                r.work.shape,
                r.work.bytes,
                r.work.flops,
                r.invariant_s,
                r.host_s,
                num(r.default_s),
                num(r.read_s),
                if i + 1 < rows.len() { "," } else { "" }
            );
        }
        println!("]}}");
        return;
    }
    println!("shapes: {}", o.shapes.name);
    if let Some(b) = c.copy_bytes_per_s {
        println!("ceiling: device copy {:.0} GB/s (read + write)", b / 1e9);
    }
    if let (Some(f), Some(h)) = (c.fp32_flops, c.bf16_flops) {
        println!(
            "ceiling: cuBLAS fp32 (no TF32) {:.1} TFLOP/s, bf16 {:.1} TFLOP/s",
            f / 1e12,
            h / 1e12
        );
    }
    println!(
        "| backend | op | shape | invariant µs | host µs | GB/s | % copy | read µs | % read | TFLOP/s | % fp32 | default µs | inv/def |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let t = r.invariant_s;
        let gbs = r.work.bytes / t;
        let flops = r.work.flops / t;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {:.2} | {} | {} | {} |",
            r.backend,
            r.work.op,
            r.work.shape,
            t * 1e6,
            r.host_s * 1e6,
            gbs / 1e9,
            pct(c.copy_bytes_per_s.map(|b| gbs / b)),
            r.read_s.map_or("-".into(), |d| format!("{:.1}", d * 1e6)),
            pct(r.read_s.map(|d| d / t)),
            flops / 1e12,
            pct(c
                .fp32_flops
                .filter(|_| r.work.flops > 0.0)
                .map(|f| flops / f)),
            r.default_s
                .map_or("-".into(), |d| format!("{:.1}", d * 1e6)),
            r.default_s.map_or("-".into(), |d| format!("{:.2}", t / d)),
        );
    }
}
