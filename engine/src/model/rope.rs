//! Rotary frequencies, in f64 on the host, so that the tables
//! ([`ditto_shaders::contract::rope_tables`]) have the same bits on every OS.

use crate::loader::{Llama3RopeScaling, ModelConfig};

/// `inv_freq[i] = theta^(-2i / head_dim)` for `i < head_dim / 2`, with Llama 3's frequency
/// scaling applied when the config has it. Every step is f64 arithmetic and the pure-Rust `libm`
/// `pow`, so the result is the same everywhere (it can differ in the last bits from Hugging
/// Face's, which computes in f32 with the platform's `pow`).
pub fn rope_inv_freq(config: &ModelConfig) -> Vec<f64> {
    let d = config.head_dim as f64;
    let base: Vec<f64> = (0..config.head_dim / 2)
        .map(|i| 1.0 / libm::pow(config.rope_theta, (2 * i) as f64 / d))
        .collect();
    match &config.rope_scaling {
        None => base,
        Some(s) => base.into_iter().map(|f| llama3_scale(f, s)).collect(),
    }
}

/// Llama 3's scaling of one frequency: wavelengths longer than `original / low_freq_factor` are
/// slowed by `factor`, shorter than `original / high_freq_factor` are kept, and the band between
/// is interpolated linearly in `original / wavelength`.
fn llama3_scale(inv_freq: f64, s: &Llama3RopeScaling) -> f64 {
    let original = s.original_max_position_embeddings as f64;
    let low_freq_wavelen = original / s.low_freq_factor;
    let high_freq_wavelen = original / s.high_freq_factor;
    let wavelen = 2.0 * core::f64::consts::PI / inv_freq;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / s.factor
    } else {
        let smooth =
            (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::Architecture;

    fn config(scaling: Option<Llama3RopeScaling>) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: scaling,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn plain_frequencies() {
        let f = rope_inv_freq(&config(None));
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        let expected = 1.0 / 500000f64.powf(2.0 * 10.0 / 128.0);
        assert!((f[10] - expected).abs() <= expected * 1e-15);
    }

    #[test]
    fn llama3_scaling_bands() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = rope_inv_freq(&config(None));
        let scaled = rope_inv_freq(&config(Some(s)));
        // High frequencies (short wavelengths) are kept, the lowest are divided by the factor,
        // and the band between lies between the two.
        assert_eq!(scaled[0].to_bits(), plain[0].to_bits());
        assert_eq!(scaled[63], plain[63] / 8.0);
        let mut saw_band = false;
        for i in 0..64 {
            let wavelen = 2.0 * core::f64::consts::PI / plain[i];
            if wavelen >= 2048.0 && wavelen <= 8192.0 {
                saw_band = true;
                assert!(scaled[i] <= plain[i] && scaled[i] >= plain[i] / 8.0);
            }
        }
        assert!(saw_band);
    }
}
