//! Assembly of CUDA sources: generated constants, then `numerics.cuh`, `dependent_launch.cuh`
//! and `async_copy.cuh`, then the kernel family.
//! The CUDA backend compiles each family with NVRTC (see `ditto-cuda`).

use crate::SourceConstant;
use std::fmt::Write;

/// The primitives every contract kernel uses; see `numerics.cuh`.
pub const NUMERICS: &str = include_str!("../numerics.cuh");

/// The launch-overlap helpers (programmatic dependent launch); see `dependent_launch.cuh`.
pub const DEPENDENT_LAUNCH: &str = include_str!("../dependent_launch.cuh");

/// Copies from global to shared memory that hold no registers (cp.async); see `async_copy.cuh`.
pub const ASYNC_COPY: &str = include_str!("../async_copy.cuh");

/// Every CUDA kernel family of the contract, by name. Each is compiled as
/// `constants() + NUMERICS + DEPENDENT_LAUNCH + ASYNC_COPY + source`.
pub const KERNELS: &[(&str, &str)] = &[
    ("embedding", include_str!("../embedding.cu")),
    ("rms_norm", include_str!("../rms_norm.cu")),
    ("matmul", include_str!("../matmul.cu")),
    ("rope", include_str!("../rope.cu")),
    // The fused attention inputs use the row helpers of rms_norm.cu and rope.cu.
    (
        "attention_inputs",
        concat!(
            include_str!("../rms_norm.cu"),
            include_str!("../rope.cu"),
            include_str!("../attention_inputs.cu")
        ),
    ),
    ("elementwise", include_str!("../elementwise.cu")),
    ("kv_write", include_str!("../kv_write.cu")),
    ("attention", include_str!("../attention.cu")),
    ("argmax", include_str!("../argmax.cu")),
    ("numerics_probe", include_str!("../numerics_probe.cu")),
    // The benchmarks' read-bandwidth ceiling (not a contract kernel; it computes nothing).
    ("read_bandwidth", include_str!("../read_bandwidth.cu")),
];

/// `KernelMode::Default` kernels that are not the contract (compiled with fast math, without
/// the constants or `numerics.cuh`).
pub const DEFAULT_MODE_KERNELS: &[(&str, &str)] =
    &[("attention_default", include_str!("../attention_default.cu"))];

/// The full source of contract kernel family `name`, or `None` for an unknown name.
pub fn source(name: &str) -> Option<String> {
    let kernel = KERNELS.iter().find(|(n, _)| *n == name)?.1;
    Some(format!(
        "{}{}\n{}\n{}\n{}",
        constants(),
        NUMERICS,
        DEPENDENT_LAUNCH,
        ASYNC_COPY,
        kernel
    ))
}

/// CUDA `#define`s of the contract's constants, generated from [`crate::contract`]. Floats are
/// written as their bit patterns (`__uint_as_float(0x…u)`), so no decimal parsing is involved.
pub fn constants() -> String {
    let mut s = String::from("// Generated from shaders/src/contract.rs.\n");
    for (name, value) in crate::source_constants() {
        match value {
            SourceConstant::U32(v) => writeln!(s, "#define {name} {v}u"),
            SourceConstant::F32(v) => writeln!(s, "#define {name} {}", cuda_f32(v)),
        }
        .expect("writing to a String");
    }
    s
}

/// An f32 as a CUDA device expression with exactly its bits.
pub fn cuda_f32(v: f32) -> String {
    format!("__uint_as_float(0x{:08x}u)", v.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::*;

    #[test]
    fn every_family_assembles() {
        for (name, _) in KERNELS {
            let src = source(name).unwrap();
            assert!(src.contains("#define DOT_CHUNK 256u"), "{name}");
            assert!(src.contains("extern \"C\" __global__"), "{name}");
        }
        assert!(source("no_such_kernel").is_none());
    }

    #[test]
    fn constants_carry_exact_bits() {
        let c = constants();
        assert!(c.contains(&format!(
            "#define EXP_LOG2E __uint_as_float(0x{:08x}u)",
            EXP_LOG2E.to_bits()
        )));
        for (i, t) in EXP_TAYLOR.iter().enumerate() {
            assert!(c.contains(&format!(
                "EXP_TAYLOR_{i} __uint_as_float(0x{:08x}u)",
                t.to_bits()
            )));
        }
    }

    /// Cheap structural checks that stand in for a compiler where there is no NVRTC: balanced
    /// braces and parentheses, and no vendor transcendental or fast-math intrinsic in a contract
    /// kernel (DESIGN.md rule 3).
    #[test]
    fn contract_sources_are_balanced_and_use_no_vendor_math() {
        let banned = [
            "__expf",
            "expf(",
            "exp2f",
            "__fdividef",
            "rsqrtf",
            "__frsqrt",
            "sqrtf",
            "__logf",
            "logf(",
            "__fmaf_rn(",
            "__saturatef",
        ];
        for (name, _) in KERNELS {
            let src = source(name).unwrap();
            let count = |c: char| src.chars().filter(|&x| x == c).count();
            assert_eq!(count('{'), count('}'), "{name}: braces");
            assert_eq!(count('('), count(')'), "{name}: parentheses");
            for b in banned {
                assert!(!src.contains(b), "{name} uses {b}");
            }
        }
    }
}
