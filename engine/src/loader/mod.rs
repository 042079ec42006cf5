//! Loading models: Hugging Face directories (safetensors) and GGUF files, into one
//! [`LoadedModel`] with Hugging Face tensor names and bf16 weights.
//!
//! Tensor names (Hugging Face): `model.embed_tokens.weight`, `model.norm.weight`,
//! `lm_head.weight` (absent when embeddings are tied), and per layer i
//! `model.layers.{i}.input_layernorm.weight`, `model.layers.{i}.post_attention_layernorm.weight`,
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`, `model.layers.{i}.self_attn.{q,k,v}_proj.bias`
//! (Qwen2), `model.layers.{i}.self_attn.{q,k}_norm.weight` (Qwen3),
//! `model.layers.{i}.mlp.{gate,up,down}_proj.weight`. Matrices are `[out, in]` row-major.

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

mod convert;
pub mod gguf;
mod gguf_tokenizer;
mod hf;

/// The transformer families ditto runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2.
    Llama,
    /// Qwen2 and Qwen2.5: biases on the q/k/v projections.
    Qwen2,
    /// Qwen3: RMSNorm of each q and k head before rotary embedding.
    Qwen3,
}

/// Llama 3's rotary frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// What the forward pass needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// The context length: prompts plus generated tokens may not exceed it.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// A weight in host memory: bf16 bits (already rounded with the contract's
/// [`ditto_shaders::contract::round_bf16_bits`], so tiny values are flushed), row-major `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<u16>,
}

/// Defaults from `generation_config.json` / GGUF metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// Whether the tokenizer prepends BOS to a plain prompt.
    pub add_bos: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

/// A model ready to upload: config, weights by Hugging Face name, tokenizer, chat template.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub tensors: HashMap<String, HostTensor>,
    pub tokenizer: Tokenizer,
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    pub generation: GenerationDefaults,
    /// Where it came from, for messages: a directory or a .gguf file.
    pub source: String,
}

/// Loads a model: a Hugging Face directory or a GGUF file. With `progress`, a progress bar on
/// stderr follows the weight conversion.
///
/// Errors: [`Error::Io`] (with the path) for missing or unreadable files, [`Error::Format`] for
/// corrupt or inconsistent files (truncated, wrong tensor shapes, missing tensors),
/// [`Error::Unsupported`] for valid models ditto cannot run (architectures, tensor types).
pub fn load(path: &Path, progress: bool) -> Result<LoadedModel> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let model = if meta.is_dir() {
        hf::load(path, progress)?
    } else {
        gguf::load(path, progress)?
    };
    Ok(model)
}

impl ModelConfig {
    /// Rotary inverse frequencies, one per pair of head dimensions: `theta^(-2i/head_dim)` for
    /// i in `0..head_dim/2`, in f64 with the `libm` crate (the same bits on every OS), then
    /// Llama 3's scaling when configured, as transformers computes it. Feed the result to
    /// [`ditto_shaders::contract::rope_tables`].
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / libm::pow(self.rope_theta, (2 * i) as f64 / d))
            .collect();
        let Some(s) = self.rope_scaling else {
            return base;
        };
        // Wavelengths shorter than the high-frequency bound keep their frequency, longer than
        // the low-frequency bound are slowed by `factor`, and those between blend the two.
        let old = s.original_max_position_embeddings as f64;
        let low_freq_wavelen = old / s.low_freq_factor;
        let high_freq_wavelen = old / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_freq_wavelen {
                    f
                } else if wavelen > low_freq_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }

    /// Checks the relations the forward pass relies on.
    fn check(&self, what: &str) -> Result<()> {
        let bad = |m: String| Err(Error::Format(format!("{what}: {m}")));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_layers == 0
            || self.num_heads == 0
            || self.num_kv_heads == 0
            || self.head_dim == 0
        {
            return bad(format!("a zero dimension in {self:?}"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} heads do not divide into {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "odd head_dim {} (rotary needs pairs)",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!("rms_norm_eps {}", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta {}", self.rope_theta));
        }
        Ok(())
    }
}

/// Every tensor the forward pass reads for `config`, with its shape, by Hugging Face name.
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let q = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    let ff = config.intermediate_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, h],
    )];
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        if config.architecture == Architecture::Qwen2 {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        if config.architecture == Architecture::Qwen3 {
            out.push((
                format!("{p}.self_attn.q_norm.weight"),
                vec![config.head_dim],
            ));
            out.push((
                format!("{p}.self_attn.k_norm.weight"),
                vec![config.head_dim],
            ));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![ff, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![ff, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, ff]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![config.vocab_size, h]));
    }
    out
}

/// Rejects biases the forward pass would silently ignore: attention biases outside Qwen2's
/// q/k/v, and MLP biases. `has_bias(proj)` says whether any layer stores a bias for `proj`.
/// Also validates the config, which both loaders call this with.
fn unsupported_bias_check(
    config: &ModelConfig,
    what: &str,
    has_bias: impl Fn(&str) -> bool,
) -> Result<()> {
    config.check(what)?;
    let mut projs = vec!["o_proj", "gate_proj", "up_proj", "down_proj"];
    if config.architecture != Architecture::Qwen2 {
        projs.extend(["q_proj", "k_proj", "v_proj"]);
    }
    for p in projs {
        if has_bias(p) {
            return Err(Error::Unsupported(format!(
                "{what}: {p} biases on {:?}",
                config.architecture
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: Option<Llama3RopeScaling>) -> ModelConfig {
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
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn rope_inv_freq_plain() {
        let f = cfg(None).rope_inv_freq();
        assert_eq!(f.len(), 64);
        assert_eq!(f[0].to_bits(), 1.0f64.to_bits());
        for (i, &x) in f.iter().enumerate() {
            let want = 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
            assert!((x - want).abs() <= want * 1e-14, "{i}: {x} vs {want}");
        }
    }

    #[test]
    fn rope_inv_freq_llama3_regions() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = cfg(None).rope_inv_freq();
        let scaled = cfg(Some(s)).rope_inv_freq();
        let tau = 2.0 * std::f64::consts::PI;
        let mut seen = [false; 3];
        for (&p, &q) in plain.iter().zip(&scaled) {
            let wl = tau / p;
            if wl < 8192.0 / 4.0 {
                assert_eq!(q.to_bits(), p.to_bits());
                seen[0] = true;
            } else if wl > 8192.0 {
                assert_eq!(q.to_bits(), (p / 8.0).to_bits());
                seen[1] = true;
            } else {
                // Between the two: a blend, strictly between p/8 and p.
                assert!(q > p / 8.0 && q < p, "{p} {q}");
                seen[2] = true;
            }
        }
        assert_eq!(seen, [true; 3]);
    }
}
