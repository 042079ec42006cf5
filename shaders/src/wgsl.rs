//! Assembly of WGSL sources: generated constants, then `numerics.wgsl`, then the kernel.

use crate::SourceConstant;
use std::fmt::Write;

/// The primitives every kernel uses; see `numerics.wgsl`.
pub const NUMERICS: &str = include_str!("../numerics.wgsl");

/// Every WGSL kernel, by name. Each is compiled as `constants() + NUMERICS + source`.
pub const KERNELS: &[(&str, &str)] = &[
    ("numerics_probe", include_str!("../numerics_probe.wgsl")),
    ("embedding", include_str!("../embedding.wgsl")),
    ("rms_norm", include_str!("../rms_norm.wgsl")),
    ("matmul", include_str!("../matmul.wgsl")),
    ("matmul_default", include_str!("../matmul_default.wgsl")),
    ("rope", include_str!("../rope.wgsl")),
    ("elementwise", include_str!("../elementwise.wgsl")),
    ("kv_write", include_str!("../kv_write.wgsl")),
    ("attention_inputs", include_str!("../attention_inputs.wgsl")),
    ("attention", include_str!("../attention.wgsl")),
    ("argmax", include_str!("../argmax.wgsl")),
];

/// The source of kernel `name`, ready for the shader compiler. Panics on an unknown name, which
/// is a programming error caught by the unit tests.
pub fn source(name: &str) -> String {
    let kernel = KERNELS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no WGSL kernel named {name}"))
        .1;
    format!("{}{}{}", constants(), NUMERICS, kernel)
}

/// WGSL declarations of the contract's constants, generated from [`crate::contract`]. Floats are
/// written by Rust's shortest round-trip formatting, so the compiled constant has the same bits.
pub fn constants() -> String {
    let mut s = String::from("// Generated from shaders/src/contract.rs.\n");
    for (name, value) in crate::source_constants() {
        match value {
            SourceConstant::U32(v) => writeln!(s, "const {name}: u32 = {v}u;"),
            SourceConstant::F32(v) => writeln!(s, "const {name}: f32 = {};", wgsl_f32(v)),
        }
        .expect("writing to a String");
    }
    s
}

/// A finite f32 as a WGSL literal that parses back to the same bits.
pub fn wgsl_f32(v: f32) -> String {
    assert!(v.is_finite(), "WGSL has no literal for {v}");
    format!("{v:e}f")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::*;

    #[test]
    fn every_kernel_validates_with_naga() {
        for (name, _) in KERNELS {
            let src = source(name);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        }
    }

    /// The wgpu backend builds every module without wgpu's forced loop bound, which is sound only
    /// if no loop can run forever: every loop must be a `for` whose step is `++`, `+=` a constant
    /// (an upper-case name or a literal), or a halving `>>= 1u`. The one step read from the
    /// parameters, gemv_vec's `seg` (`seg_chunks`, at least 1 by the host's GemvPlan), is named.
    #[test]
    fn every_loop_is_counted() {
        const PARAMETER_STEPS: &[&str] = &["s0 += seg"];
        let counted = |step: &str| {
            if step.ends_with("++") || step.ends_with(">>= 1u") || PARAMETER_STEPS.contains(&step) {
                return true;
            }
            step.split_once("+=").is_some_and(|(_, by)| {
                let by = by.trim();
                !by.is_empty()
                    && by.chars().all(|c| {
                        c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == 'u'
                    })
                    && !by.starts_with('u')
            })
        };
        let mut loops = 0;
        for (name, _) in KERNELS {
            let src = source(name);
            for (n, line) in src.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                let words: Vec<&str> = code
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .collect();
                assert!(
                    !words.contains(&"loop") && !words.contains(&"while"),
                    "{name}.wgsl line {}: only counted `for` loops are allowed: {line}",
                    n + 1
                );
                if let Some(header) = code.trim_start().strip_prefix("for (") {
                    loops += 1;
                    let step = header
                        .rsplit(';')
                        .next()
                        .and_then(|s| s.split(')').next())
                        .unwrap_or("")
                        .trim();
                    assert!(
                        counted(step),
                        "{name}.wgsl line {}: loop step `{step}` is not a constant count: {line}",
                        n + 1
                    );
                }
            }
        }
        assert!(loops > 40, "found only {loops} loops: the scan is broken");
    }

    #[test]
    fn float_literals_round_trip() {
        for v in EXP_TAYLOR
            .iter()
            .chain(&[EXP_LOG2E, EXP_LN2_HI, EXP_LN2_LO, RECIP_SEED_A])
        {
            let lit = wgsl_f32(*v);
            let parsed: f32 = lit.trim_end_matches('f').parse().unwrap();
            assert_eq!(parsed.to_bits(), v.to_bits(), "{lit}");
        }
    }
}
