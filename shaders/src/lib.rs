//! ditto's kernels: the numerics contract ([`contract`]) and every kernel's source, WGSL beside
//! CUDA, in this folder. Each source implements the orders that [`contract`] defines; the
//! constants reach the sources from that module ([`wgsl::constants`]), never retyped.

pub mod contract;
pub mod cuda;
pub mod wgsl;

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
