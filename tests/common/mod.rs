//! Shared helpers of the kernel tests: a seeded random source, bitwise comparison, the backends,
//! and [`backend_tests!`], which instantiates one generic test body per backend.
//!
//! Every test body has the shape `fn body<B: Backend>(b: &B)`; `backend_tests!(body, …)` makes
//! a `#[test]` of it in module `cpu` and one in module `wgpu`. Adding a backend (CUDA) is one
//! line in that macro plus an accessor here.

#![allow(dead_code)]

use ditto::cuda::CudaBackend;
use ditto::engine::cpu::CpuBackend;
use ditto::engine::wgpu::WgpuBackend;
use ditto::engine::{Backend, KernelMode};
use ditto::shaders::contract;
use std::path::PathBuf;
use std::sync::OnceLock;

/// SplitMix64: a tiny, seeded, portable generator, so every run sees the same inputs.
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

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [-1, 1), 24 random bits.
    pub fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }

    /// `n` values in [-scale, scale).
    pub fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }

    /// `n` bf16 values (bits) in [-scale, scale), rounded by the contract.
    pub fn bf16s(&mut self, n: usize, scale: f32) -> Vec<u16> {
        (0..n)
            .map(|_| contract::round_bf16_bits(self.unit() * scale))
            .collect()
    }
}

/// Bits of a value, for the comparison helpers.
pub trait Bits: Copy {
    fn bits(self) -> u32;
}
impl Bits for f32 {
    fn bits(self) -> u32 {
        self.to_bits()
    }
}
impl Bits for u32 {
    fn bits(self) -> u32 {
        self
    }
}
impl Bits for u16 {
    fn bits(self) -> u32 {
        self as u32
    }
}

/// Compares two slices bit for bit; the error names the first mismatch and counts them all.
pub fn compare_bits<T: Bits + std::fmt::Debug>(got: &[T], want: &[T]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("lengths differ: {} vs {}", got.len(), want.len()));
    }
    let mut mismatches = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g.bits() != w.bits());
    if let Some((i, (g, w))) = mismatches.next() {
        let more = mismatches.count();
        return Err(format!(
            "first mismatch at {i}: got {g:?} ({:#010x}), want {w:?} ({:#010x}); {more} more",
            g.bits(),
            w.bits()
        ));
    }
    Ok(())
}

/// Panics with the first mismatch unless `got` and `want` have the same bits.
#[track_caller]
pub fn assert_bits<T: Bits + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) {
    if let Err(e) = compare_bits(got, want) {
        panic!("{what}: {e}");
    }
}

/// The reference backend, shared by every test of a binary.
pub fn cpu_backend() -> Option<&'static CpuBackend> {
    static CPU: OnceLock<CpuBackend> = OnceLock::new();
    Some(CPU.get_or_init(CpuBackend::new))
}

/// The wgpu backend, opened once per test binary. Without an adapter the test is skipped with a
/// printed reason, unless `DITTO_REQUIRE_WGPU=1` (set by CI, which installs lavapipe): then it
/// fails.
pub fn wgpu_backend() -> Option<&'static WgpuBackend> {
    static WGPU: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    let opened = WGPU.get_or_init(|| {
        WgpuBackend::new(KernelMode::Invariant)
            .inspect(|b| eprintln!("wgpu tests run on: {}", b.describe()))
            .map_err(|e| e.to_string())
    });
    match opened {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var("DITTO_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("DITTO_REQUIRE_WGPU=1 but the wgpu backend is unavailable: {e}");
            }
            eprintln!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}

/// `backend_tests!(body_a, body_b, …)` makes `cpu::body_a`, `wgpu::body_a`, … each a `#[test]`
/// that runs `body_a(backend)`. A new backend is one more `@backend` line.
/// The CUDA backend, or `None` with a printed reason where there is no driver or GPU (as on CI).
/// With `DITTO_REQUIRE_CUDA=1` (set on the GPU machine) a missing backend fails instead.
pub fn cuda_backend() -> Option<&'static CudaBackend> {
    static CUDA: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    let opened = CUDA.get_or_init(|| {
        CudaBackend::new(KernelMode::Invariant)
            .inspect(|b| eprintln!("cuda tests run on: {}", b.describe()))
            .map_err(|e| e.to_string())
    });
    match opened {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var("DITTO_REQUIRE_CUDA").as_deref() == Ok("1") {
                panic!("DITTO_REQUIRE_CUDA=1 but the cuda backend is unavailable: {e}");
            }
            eprintln!("skipped: no CUDA ({e})");
            None
        }
    }
}

#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        backend_tests!(@backend cpu, $crate::common::cpu_backend(), $($name),*);
        backend_tests!(@backend wgpu, $crate::common::wgpu_backend(), $($name),*);
        backend_tests!(@backend cuda, $crate::common::cuda_backend(), $($name),*);
    };
    (@backend $module:ident, $get:expr, $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    if let Some(b) = $get {
                        super::$name(b);
                    }
                }
            )*
        }
    };
}

/// Reference matmul: each output is `dot_bf16` of a bf16-rounded row of x and a row of w.
pub fn reference_matmul(x: &[f32], w: &[u16], m: usize, n: usize, k: usize) -> Vec<f32> {
    let xr: Vec<f32> = x.iter().map(|&v| contract::round_bf16(v)).collect();
    let wf: Vec<f32> = w.iter().map(|&b| contract::bf16_to_f32(b)).collect();
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = contract::dot_bf16(&xr[i * k..(i + 1) * k], &wf[j * k..(j + 1) * k]);
        }
    }
    out
}

/// Uploads, runs and downloads in one line, panicking with context on an error value.
pub fn ok<T>(what: &str, r: ditto::engine::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The test model: `DITTO_TEST_MODEL` where `overridable` and set, else SmolLM2 at
/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` (fetched by `scripts/fetch-test-model.sh`). When it
/// is missing the test is skipped with a printed reason (`None`), unless `DITTO_REQUIRE_MODEL=1`
/// (set by CI): then it fails.
pub fn test_model(overridable: bool) -> Option<PathBuf> {
    let path = match std::env::var_os("DITTO_TEST_MODEL").filter(|_| overridable) {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if path.exists() {
        return Some(path);
    }
    if std::env::var("DITTO_REQUIRE_MODEL").as_deref() == Ok("1") {
        panic!(
            "DITTO_REQUIRE_MODEL=1 but {} is missing (scripts/fetch-test-model.sh)",
            path.display()
        );
    }
    eprintln!(
        "skipped: no test model at {} (run scripts/fetch-test-model.sh)",
        path.display()
    );
    None
}
