//! Tiny random models for tests (this crate's, the facade's cross-backend tests, the CLI tests):
//! built in memory as a [`LoadedModel`], or written to disk as a Hugging Face directory.
//!
//! The tokenizer is byte-level BPE with no merges: token id b (0..256) is the byte b, then `<s>`
//! (256) and `</s>` (257). Every text encodes, one token per UTF-8 byte, so multi-byte
//! characters span several tokens (what incremental detokenization must handle).

use crate::backend::{AttnGeometry, AttnSeq, Backend, DType, MatmulShape, RopeTables};
use crate::loader::{Architecture, GenerationDefaults, HostTensor, LoadedModel, ModelConfig};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use ditto_shaders::contract;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

pub const BOS_ID: u32 = 256;
pub const EOS_ID: u32 = 257;
/// 256 bytes, BOS, EOS and two unused ids (so the model's vocabulary is larger than the
/// tokenizer's, as in real checkpoints).
pub const TINY_VOCAB: usize = 260;

/// The configuration of a tiny model of `arch`: two layers, grouped-query attention (4 heads on
/// 2 KV heads), an MLP wider than one dot-product chunk, and for Qwen3 a head_dim whose heads
/// do not add up to the hidden size.
pub fn tiny_config(arch: Architecture) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        vocab_size: TINY_VOCAB,
        hidden_size: 64,
        intermediate_size: 320,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: if arch == Architecture::Qwen3 { 32 } else { 16 },
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 640,
        tie_word_embeddings: arch != Architecture::Qwen3,
    }
}

/// Deterministic pseudo-random numbers for weights (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

fn random_tensor(rng: &mut Rng, shape: &[usize], center: f32, spread: f32) -> HostTensor {
    let n = shape.iter().product();
    HostTensor {
        shape: shape.to_vec(),
        data: (0..n)
            .map(|_| contract::round_bf16_bits(center + spread * rng.uniform()))
            .collect(),
    }
}

/// Random weights with Hugging Face names for `config` (biases for Qwen2, q/k norms for Qwen3,
/// `lm_head.weight` when embeddings are not tied).
pub fn random_tensors(config: &ModelConfig, seed: u64) -> HashMap<String, HostTensor> {
    let mut rng = Rng(seed);
    let c = config;
    let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
    // Spreads of about 1/√fan_in keep activations of order one through the layers.
    let w = |fan_in: usize| 1.7 / (fan_in as f32).sqrt();
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize], center: f32, spread: f32| {
        t.insert(name, random_tensor(&mut rng, shape, center, spread));
    };
    put(
        "model.embed_tokens.weight".into(),
        &[c.vocab_size, h],
        0.0,
        1.0,
    );
    put("model.norm.weight".into(), &[h], 1.0, 0.2);
    if !c.tie_word_embeddings {
        put("lm_head.weight".into(), &[c.vocab_size, h], 0.0, w(h));
    }
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h], 1.0, 0.2);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            1.0,
            0.2,
        );
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[q_out, h],
            0.0,
            w(h),
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[kv_out, h],
            0.0,
            w(h),
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[kv_out, h],
            0.0,
            w(h),
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, q_out],
            0.0,
            w(q_out),
        );
        put(format!("{p}.mlp.gate_proj.weight"), &[i, h], 0.0, w(h));
        put(format!("{p}.mlp.up_proj.weight"), &[i, h], 0.0, w(h));
        put(format!("{p}.mlp.down_proj.weight"), &[h, i], 0.0, w(i));
        if c.architecture == Architecture::Qwen2 {
            put(format!("{p}.self_attn.q_proj.bias"), &[q_out], 0.0, 0.5);
            put(format!("{p}.self_attn.k_proj.bias"), &[kv_out], 0.0, 0.5);
            put(format!("{p}.self_attn.v_proj.bias"), &[kv_out], 0.0, 0.5);
        }
        if c.architecture == Architecture::Qwen3 {
            put(format!("{p}.self_attn.q_norm.weight"), &[hd], 1.0, 0.2);
            put(format!("{p}.self_attn.k_norm.weight"), &[hd], 1.0, 0.2);
        }
    }
    t
}

/// GPT-2's byte-to-character map of byte-level BPE: printable bytes stand for themselves, the
/// others for the characters from U+0100 on.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("valid char")
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `tokenizer.json` of the tiny byte-level tokenizer.
pub fn tiny_tokenizer_json() -> String {
    let vocab: Vec<String> = (0..=255u8)
        .map(|b| format!("{}: {b}", json_string(&byte_char(b).to_string())))
        .chain([format!("\"<s>\": {BOS_ID}"), format!("\"</s>\": {EOS_ID}")])
        .collect();
    let added = |id: u32, content: &str| {
        format!(
            r#"{{"id": {id}, "content": "{content}", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#
        )
    };
    let byte_level = r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#;
    format!(
        r#"{{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [{}, {}],
  "normalizer": null,
  "pre_tokenizer": {byte_level},
  "post_processor": null,
  "decoder": {byte_level},
  "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": {{{}}}, "merges": []}}
}}"#,
        added(BOS_ID, "<s>"),
        added(EOS_ID, "</s>"),
        vocab.join(", ")
    )
}

pub fn tiny_tokenizer() -> Result<Tokenizer> {
    let inner: tokenizers::Tokenizer = tiny_tokenizer_json()
        .parse()
        .map_err(|e| Error::Format(format!("tiny tokenizer: {e}")))?;
    Ok(Tokenizer::new(inner))
}

/// A chat template in the ChatML style (as SmolLM2 and Qwen use).
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] | trim }}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}";

/// A tiny random model of `arch`, with the byte-level tokenizer, a chat template, BOS added to
/// raw prompts and `</s>` as end of sequence.
pub fn tiny_model(arch: Architecture, seed: u64) -> Result<LoadedModel> {
    model_with_config(tiny_config(arch), seed)
}

/// As [`tiny_model`], with another shape (the vocabulary must hold the tiny tokenizer's 258
/// ids): for tests that need longer dot products than the tiny model's.
pub fn model_with_config(config: ModelConfig, seed: u64) -> Result<LoadedModel> {
    if config.vocab_size < TINY_VOCAB - 2 {
        return Err(Error::Input(format!(
            "a vocabulary of {} cannot hold the tiny tokenizer",
            config.vocab_size
        )));
    }
    let arch = config.architecture;
    let tensors = random_tensors(&config, seed);
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer: tiny_tokenizer()?,
        chat_template: Some(TINY_CHAT_TEMPLATE.into()),
        generation: GenerationDefaults {
            eos_token_ids: vec![EOS_ID],
            bos_token_id: Some(BOS_ID),
            add_bos: true,
            temperature: None,
            top_k: None,
            top_p: None,
        },
        source: format!("tiny random {arch:?} (seed {seed})"),
    })
}

/// Writes `model` as a Hugging Face directory: `config.json`, `model.safetensors` (bf16),
/// `tokenizer.json` (the tiny tokenizer), `tokenizer_config.json` (chat template, BOS/EOS) and
/// `generation_config.json`.
pub fn write_hf_dir(model: &LoadedModel, dir: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let c = &model.config;
    let (model_type, arch_name) = match c.architecture {
        Architecture::Llama => ("llama", "LlamaForCausalLM"),
        Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Architecture::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
    };
    let config = format!(
        r#"{{
  "architectures": ["{arch_name}"],
  "model_type": "{model_type}",
  "vocab_size": {},
  "hidden_size": {},
  "intermediate_size": {},
  "num_hidden_layers": {},
  "num_attention_heads": {},
  "num_key_value_heads": {},
  "head_dim": {},
  "rms_norm_eps": {:e},
  "rope_theta": {:?},
  "max_position_embeddings": {},
  "tie_word_embeddings": {},
  "hidden_act": "silu",
  "torch_dtype": "bfloat16",
  "bos_token_id": {BOS_ID},
  "eos_token_id": {EOS_ID}
}}
"#,
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_layers,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.rms_norm_eps,
        c.rope_theta,
        c.max_position_embeddings,
        c.tie_word_embeddings,
    );
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    };
    write("config.json", config.as_bytes())?;
    write("tokenizer.json", tiny_tokenizer_json().as_bytes())?;
    let template = model.chat_template.as_deref().unwrap_or("");
    write(
        "tokenizer_config.json",
        format!(
            "{{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_bos_token\": true, \"chat_template\": {}}}\n",
            json_string(template)
        )
        .as_bytes(),
    )?;
    write(
        "generation_config.json",
        format!("{{\"bos_token_id\": {BOS_ID}, \"eos_token_id\": {EOS_ID}}}\n").as_bytes(),
    )?;
    write("model.safetensors", &safetensors_bytes(&model.tensors))?;
    Ok(())
}

/// A safetensors file of bf16 tensors: an 8-byte little-endian header length, the JSON header
/// (names sorted, so the file is reproducible), then the data.
fn safetensors_bytes(tensors: &HashMap<String, HostTensor>) -> Vec<u8> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut header = String::from("{");
    let mut offset = 0usize;
    for (i, name) in names.iter().enumerate() {
        let t = &tensors[*name];
        let bytes = t.data.len() * 2;
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        if i > 0 {
            header.push(',');
        }
        let _ = write!(
            header,
            "{}:{{\"dtype\":\"BF16\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            json_string(name),
            shape.join(","),
            offset + bytes
        );
        offset += bytes;
    }
    header.push('}');
    // The data must start 8-byte aligned: pad the header with spaces.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for name in names {
        out.extend(tensors[name].data.iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

/// A backend that fails on demand: it runs `inner`, except that after [`FailingBackend::fail_matmul`]
/// armed it, the chosen matmul call returns [`Error::Device`] (in the middle of a forward call,
/// after some layers wrote their K/V). For tests of what callers do when a forward call fails.
pub struct FailingBackend<B> {
    pub inner: B,
    /// Matmul calls left before the failing one; `usize::MAX` when disarmed.
    countdown: std::sync::atomic::AtomicUsize,
}

impl<B: Backend> FailingBackend<B> {
    pub fn new(inner: B) -> Self {
        FailingBackend {
            inner,
            countdown: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }

    /// Makes the matmul call after `skip` more calls fail (0: the next one), once.
    pub fn fail_matmul(&self, skip: usize) {
        self.countdown
            .store(skip, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<B: Backend> Backend for FailingBackend<B> {
    type Tensor = B::Tensor;

    fn describe(&self) -> String {
        format!("failing({})", self.inner.describe())
    }
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Tensor> {
        self.inner.upload_f32(data)
    }
    fn upload_bf16(&self, bits: &[u16]) -> Result<Self::Tensor> {
        self.inner.upload_bf16(bits)
    }
    fn zeros(&self, dtype: DType, len: usize) -> Result<Self::Tensor> {
        self.inner.zeros(dtype, len)
    }
    fn download_f32(&self, t: &Self::Tensor) -> Result<Vec<f32>> {
        self.inner.download_f32(t)
    }
    fn download_bf16(&self, t: &Self::Tensor) -> Result<Vec<u16>> {
        self.inner.download_bf16(t)
    }
    fn embedding(&self, table: &Self::Tensor, ids: &[u32], dim: usize) -> Result<Self::Tensor> {
        self.inner.embedding(table, ids, dim)
    }
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<Self::Tensor> {
        self.inner.rms_norm(x, weight, rows, dim, eps)
    }
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        shape: MatmulShape,
        out: DType,
    ) -> Result<Self::Tensor> {
        use std::sync::atomic::Ordering;
        let left = self.countdown.load(Ordering::SeqCst);
        if left != usize::MAX {
            if left == 0 {
                self.countdown.store(usize::MAX, Ordering::SeqCst);
                return Err(Error::Device("injected matmul failure".into()));
            }
            self.countdown.store(left - 1, Ordering::SeqCst);
        }
        self.inner.matmul(x, w, shape, out)
    }
    fn rope(
        &self,
        x: &Self::Tensor,
        positions: &[u32],
        tables: &RopeTables<Self::Tensor>,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self::Tensor> {
        self.inner.rope(x, positions, tables, heads, head_dim)
    }
    fn silu_mul(&self, gate_up: &Self::Tensor, rows: usize, n: usize) -> Result<Self::Tensor> {
        self.inner.silu_mul(gate_up, rows, n)
    }
    fn split_qkv(
        &self,
        qkv: &Self::Tensor,
        rows: usize,
        q: usize,
        kv: usize,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)> {
        self.inner.split_qkv(qkv, rows, q, kv)
    }
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        self.inner.add(a, b)
    }
    fn add_bias(
        &self,
        x: &Self::Tensor,
        bias: &Self::Tensor,
        rows: usize,
        n: usize,
    ) -> Result<Self::Tensor> {
        self.inner.add_bias(x, bias, rows, n)
    }
    fn write_kv(
        &self,
        k_cache: &mut Self::Tensor,
        v_cache: &mut Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        slots: &[u32],
        row_len: usize,
    ) -> Result<()> {
        self.inner.write_kv(k_cache, v_cache, k, v, slots, row_len)
    }
    fn attention(
        &self,
        q: &Self::Tensor,
        k_cache: &Self::Tensor,
        v_cache: &Self::Tensor,
        seqs: &[AttnSeq],
        block_table: &[u32],
        geometry: AttnGeometry,
    ) -> Result<Self::Tensor> {
        self.inner
            .attention(q, k_cache, v_cache, seqs, block_table, geometry)
    }
    fn argmax(&self, logits: &Self::Tensor, rows: usize, vocab: usize) -> Result<Vec<u32>> {
        self.inner.argmax(logits, rows, vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_dir_round_trips_what_can_be_read_here() {
        let model = tiny_model(Architecture::Qwen2, 3).unwrap();
        let dir = std::env::temp_dir().join(format!("ditto-testing-{}", std::process::id()));
        write_hf_dir(&model, &dir).unwrap();
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.encode("hé").unwrap(), [b'h' as u32, 0xc3, 0xa9]);
        assert_eq!(tok.token_id("</s>"), Some(EOS_ID));
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let data: usize = model.tensors.values().map(|t| t.data.len() * 2).sum();
        assert_eq!(bytes.len(), 8 + header_len + data);
        assert_eq!(header_len % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        assert!(header.contains("\"model.layers.1.self_attn.k_proj.bias\":{\"dtype\":\"BF16\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
