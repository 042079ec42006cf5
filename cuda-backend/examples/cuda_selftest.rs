//! Self-test of the CUDA backend on a GPU machine: builds the backend (printing NVRTC logs if a
//! kernel fails to compile), then runs every kernel against the cpu reference and prints PASS or
//! FAIL per kernel with the first mismatch. Exit status 1 on any failure.
//!
//!     cargo run --release -p ditto-cuda --example cuda_selftest

use ditto_cuda::conformance::{self, Check};
use ditto_cuda::{AttentionPath, CudaBackend};
use ditto_engine::{Backend, KernelMode};
use ditto_shaders::ProbeOp;
use std::time::Instant;

fn report(failures: &mut usize, name: &str, r: Check, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    match r {
        Ok(cases) => println!("PASS {name:<28} {cases:>3} cases  {secs:6.2} s"),
        Err(e) => {
            *failures += 1;
            println!("FAIL {name:<28} {secs:6.2} s\n     {e}");
        }
    }
}

fn main() {
    let t0 = Instant::now();
    match ditto_cuda::list_devices() {
        Ok(d) => println!("devices: {d:?}"),
        Err(e) => {
            println!("no CUDA: {e}");
            std::process::exit(2);
        }
    }
    let mut failures = 0;
    let mut b = match CudaBackend::new(KernelMode::Invariant) {
        Ok(b) => b,
        Err(e) => {
            println!("FAIL backend construction (invariant):\n{e}");
            std::process::exit(1);
        }
    };
    println!(
        "{} (ready in {:.2} s)",
        b.describe(),
        t0.elapsed().as_secs_f64()
    );

    let (a, x) = conformance::probe_inputs(&mut conformance::Rng::new(3));
    for op in ProbeOp::ALL {
        let t = Instant::now();
        let r = b
            .numerics_probe(op, &a, &x)
            .map_err(|e| e.to_string())
            .and_then(|got| conformance::check_probe(op, &a, &x, &got))
            .map(|()| a.len());
        report(&mut failures, &format!("numerics_probe {op:?}"), r, t);
    }
    for path in [
        AttentionPath::Auto,
        AttentionPath::Fused,
        AttentionPath::Staged,
        AttentionPath::Split,
    ] {
        b.set_attention_path(path);
        if path == AttentionPath::Auto {
            for (name, r) in conformance::run_all(&b, true, 1) {
                report(&mut failures, name, r, Instant::now());
            }
        } else {
            let t = Instant::now();
            let cpu = ditto_engine::cpu::CpuBackend::new();
            let r = conformance::check_attention(&b, &cpu, &mut conformance::Rng::new(7), true);
            report(&mut failures, &format!("attention ({path:?})"), r, t);
        }
    }
    drop(b);

    println!("-- KernelMode::Default (cuBLAS, split-KV): compared within tolerance, not bitwise");
    match CudaBackend::new(KernelMode::Default) {
        Ok(d) => {
            for (name, r) in conformance::run_all(&d, false, 2) {
                report(&mut failures, &format!("default {name}"), r, Instant::now());
            }
        }
        Err(e) => {
            failures += 1;
            println!("FAIL backend construction (default):\n{e}");
        }
    }
    println!(
        "{} in {:.1} s",
        if failures == 0 {
            "ALL PASS".to_string()
        } else {
            format!("{failures} FAILED")
        },
        t0.elapsed().as_secs_f64()
    );
    std::process::exit(if failures == 0 { 0 } else { 1 });
}
