//! Rough wgpu timings: a GEMV (m rows of x against an [n, k] bf16 weight), and the cost of many
//! small dispatches. `cargo run --release --example wgpu_timing -- [n] [k] [m] [iters]`.
//! On a CPU driver (lavapipe) the ratios only hint at what a GPU gains.

use ditto::engine::wgpu::WgpuBackend;
use ditto::engine::{Backend, DType, KernelMode, MatmulShape};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let n = args.first().copied().unwrap_or(4096);
    let k = args.get(1).copied().unwrap_or(4096);
    let m = args.get(2).copied().unwrap_or(1);
    let iters = args.get(3).copied().unwrap_or(10);
    for mode in [KernelMode::Invariant, KernelMode::Default] {
        let b = WgpuBackend::new(mode).expect("wgpu");
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i % 97) as f32 - 48.0) / 17.0)
            .collect();
        let w: Vec<u16> = (0..n * k)
            .map(|i| 0x3c00 + ((i * 2654435761) % 0x800) as u16)
            .collect();
        let (tx, tw) = (b.upload_f32(&x).unwrap(), b.upload_bf16(&w).unwrap());
        let shape = MatmulShape { m, n, k };
        let warm = b.matmul(&tx, &tw, shape, DType::F32).unwrap();
        b.download_f32(&warm).unwrap();
        let t = Instant::now();
        let mut last = warm;
        for _ in 0..iters {
            last = b.matmul(&tx, &tw, shape, DType::F32).unwrap();
        }
        b.download_f32(&last).unwrap();
        let s = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{mode:?}: gemv m={m} n={n} k={k}: {:.3} ms, {:.1} GB/s of weights",
            s * 1e3,
            (n * k * 2) as f64 / s / 1e9
        );
        // Dispatch overhead: a chain of tiny adds.
        let a = b.upload_f32(&[1.0; 64]).unwrap();
        let mut acc = b.add(&a, &a).unwrap();
        b.download_f32(&acc).unwrap();
        let count = 2000;
        let t = Instant::now();
        for _ in 0..count {
            acc = b.add(&acc, &a).unwrap();
        }
        let recorded = t.elapsed();
        b.download_f32(&acc).unwrap();
        println!(
            "{mode:?}: {count} small dispatches recorded (host) in {:.1} µs each",
            recorded.as_secs_f64() / count as f64 * 1e6
        );
        println!(
            "{mode:?}: {count} small dispatches: {:.1} µs each",
            t.elapsed().as_secs_f64() / count as f64 * 1e6
        );
    }
}
