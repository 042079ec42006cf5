//! The GPU primitives (numerics.wgsl and numerics.cuh, through their probe kernels) against the Rust contract,
//! bit for bit, over about a million inputs spanning the f32 range plus the edge cases.
//! The cpu backend *is* the Rust contract.

mod common;

use common::{compare_bits, cuda_backend, wgpu_backend};
use ditto::shaders::{contract, ProbeOp};

/// ±0, the smallest and largest subnormals, the smallest normal and its neighbours, values
/// around the bf16 flush threshold 2^-63 and rounding ties, exp's cut-offs, huge values, ±inf
/// and NaN.
fn edge_cases() -> Vec<f32> {
    let mut bits = vec![
        0x0000_0000u32,
        0x8000_0000,
        0x0000_0001,
        0x8000_0001,
        0x007f_ffff,
        0x807f_ffff,
        0x0040_0000,
        0x0080_0000,
        0x8080_0000,
        0x0080_0001,
        0x1f80_0000, // 2^-64
        0x1fff_8000, // rounds up to 2^-63 in bf16
        0x2000_0000, // 2^-63
        0x3f80_8000, // bf16 tie, to even (down)
        0x3f81_8000, // bf16 tie, to even (up)
        0x3f80_0000,
        0xbf80_0000,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x7f7f_8000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_0000,
        0x7f80_0001,
        0x7fff_ffff,
    ];
    for v in [
        88.0f32, -88.0, 89.0, -89.0, 88.72, -87.33, 0.5, -0.5, 2.0, 1e-30, -1e-30, 1e30, 3e38,
        0.3465736, -0.3465736, 1e-7, 100.0, -100.0,
    ] {
        bits.push(v.to_bits());
        bits.push(v.to_bits() + 1);
        bits.push(v.to_bits() - 1);
    }
    bits.into_iter().map(f32::from_bits).collect()
}

#[test]
fn wgsl_primitives_match_rust_bit_for_bit() {
    let Some(b) = wgpu_backend() else { return };
    primitives_match_rust("WGSL", |op, a, b2| b.probe(op, a, b2));
}

#[test]
fn cuda_primitives_match_rust_bit_for_bit() {
    let Some(b) = cuda_backend() else { return };
    primitives_match_rust("CUDA", |op, a, b2| b.numerics_probe(op, a, b2));
}

/// Runs every probe op of one backend over the inputs and compares with the Rust contract.
fn primitives_match_rust(
    name: &str,
    probe: impl Fn(ProbeOp, &[f32], &[f32]) -> ditto::engine::Result<Vec<u32>>,
) {
    let edges = edge_cases();
    // Every 4099th bit pattern (a million inputs over the whole range), then the edge cases;
    // the second operand is a different walk through the bit patterns, then every edge pair.
    let mut a: Vec<f32> = (0..=u32::MAX / 4099)
        .map(|i| f32::from_bits(i.wrapping_mul(4099)))
        .collect();
    let mut second: Vec<f32> = (0..a.len() as u32)
        .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
        .collect();
    for &x in &edges {
        for &y in &edges {
            a.push(x);
            second.push(y);
        }
    }
    println!("{} inputs per operation", a.len());
    for op in ProbeOp::ALL {
        // mul_rn's operands are never subnormal in ditto (every value it makes is flushed), and
        // drivers disagree on subnormal operands (NVIDIA's Vulkan flushes them, the CPU and CUDA
        // do not), so the ops that end in a bare product get their operands flushed first.
        let operand_domain = |v: &[f32]| -> Vec<f32> {
            if matches!(op, ProbeOp::MulRn | ProbeOp::Div) {
                v.iter().map(|&x| contract::flush_subnormal(x)).collect()
            } else {
                v.to_vec()
            }
        };
        let (a, second) = (operand_domain(&a), operand_domain(&second));
        let got = probe(op, &a, &second).expect("probe");
        let want: Vec<u32> = a
            .iter()
            .zip(&second)
            .map(|(&x, &y)| op.reference(x, y))
            .collect();
        if let Err(e) = compare_bits(&got, &want) {
            panic!("{op:?}: {name} differs from Rust: {e}");
        }
        println!("{op:?}: {} inputs identical", a.len());
    }
}
