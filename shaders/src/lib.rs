//! ditto's kernels: the numerics contract ([`contract`]) and every kernel's source, WGSL beside
//! CUDA, in this folder. Each source implements the orders that [`contract`] defines; the
//! constants reach the sources from that module ([`wgsl::constants`]), never retyped.

pub mod contract;
pub mod cuda;
pub mod wgsl;

/// A constant of the contract as the kernel sources see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SourceConstant {
    U32(u32),
    F32(f32),
}

/// Every constant of [`contract`] that a kernel source uses, by the name the sources use. The
/// WGSL and CUDA generators ([`wgsl::constants`], [`cuda::constants`]) write this one list.
pub fn source_constants() -> Vec<(String, SourceConstant)> {
    use contract::*;
    use SourceConstant::{F32, U32};
    let mut list = vec![
        ("CONTRACT_VERSION".to_string(), U32(CONTRACT_VERSION)),
        ("DOT_CHUNK".into(), U32(DOT_CHUNK as u32)),
        ("ATTN_BLOCK".into(), U32(ATTN_BLOCK as u32)),
        (
            "BF16_MIN_EXPONENT_FIELD".into(),
            U32(BF16_MIN_EXPONENT_FIELD),
        ),
        ("CANONICAL_NAN".into(), U32(CANONICAL_NAN)),
        ("RSQRT_MAGIC".into(), U32(RSQRT_MAGIC)),
        ("EXP_LOG2E".into(), F32(EXP_LOG2E)),
        ("EXP_LN2_HI".into(), F32(EXP_LN2_HI)),
        ("EXP_LN2_LO".into(), F32(EXP_LN2_LO)),
        ("EXP_MAX_INPUT".into(), F32(EXP_MAX_INPUT)),
        ("EXP_MIN_INPUT".into(), F32(EXP_MIN_INPUT)),
    ];
    for (i, c) in EXP_TAYLOR.iter().enumerate() {
        list.push((format!("EXP_TAYLOR_{i}"), F32(*c)));
    }
    list.push(("RECIP_SEED_A".into(), F32(RECIP_SEED_A)));
    list.push(("RECIP_SEED_B".into(), F32(RECIP_SEED_B)));
    list
}

/// The operations of the `numerics_probe` kernels, which apply one primitive elementwise so that
/// tests can compare a backend's primitives with [`contract`] bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ProbeOp {
    Exp = 0,
    Recip = 1,
    Rsqrt = 2,
    /// Returns the bf16 bits in the low half of the u32.
    RoundBf16 = 3,
    MulRn = 4,
    Div = 5,
    Silu = 6,
}

impl ProbeOp {
    pub const ALL: [ProbeOp; 7] = [
        ProbeOp::Exp,
        ProbeOp::Recip,
        ProbeOp::Rsqrt,
        ProbeOp::RoundBf16,
        ProbeOp::MulRn,
        ProbeOp::Div,
        ProbeOp::Silu,
    ];

    /// The reference result (as bits) of this operation.
    pub fn reference(self, a: f32, b: f32) -> u32 {
        use contract::*;
        match self {
            ProbeOp::Exp => exp(a).to_bits(),
            ProbeOp::Recip => recip(a).to_bits(),
            ProbeOp::Rsqrt => rsqrt(a).to_bits(),
            ProbeOp::RoundBf16 => round_bf16_bits(a) as u32,
            ProbeOp::MulRn => mul_rn(a, b).to_bits(),
            ProbeOp::Div => div(a, b).to_bits(),
            ProbeOp::Silu => silu(a).to_bits(),
        }
    }
}
