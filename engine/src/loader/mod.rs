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
use std::collections::HashMap;

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
