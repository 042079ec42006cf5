//! The transformer forward pass (Llama, Qwen2, Qwen3) over any [`Backend`].
//!
//! One [`Model::forward`] call runs a batch of sequences: each brings new tokens and continues
//! from its own cached context (prefill: empty context; decode: one token; chunked prefill: a
//! piece of a prompt after earlier pieces). Every kernel follows the numerics contract, whose
//! orders depend on neither the batch nor the chunking, so a sequence's logits have the same bits
//! however it was batched or split.
//!
//! The residual stream is f32; matmul inputs are rounded to bf16 inside the kernels; K and V are
//! cached as bf16.

use crate::backend::{
    AttentionInputs, AttnGeometry, AttnSeq, Backend, DType, MatmulShape, RopeTables,
};
use crate::kv_cache::{KvCache, SeqId};
use crate::loader::{Architecture, HostTensor, LoadedModel, ModelConfig};
use crate::{Error, Result};
use ditto_shaders::contract;
use std::collections::{HashMap, HashSet};

/// One sequence's part of a forward batch: `tokens` continue the sequence after its cached
/// positions.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
}

/// Which rows of logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsRows {
    /// One row per sequence: its last new token (what generation samples from).
    Last,
    /// One row per new token, sequences in batch order.
    All,
}

/// Logits on the host: f32 `[rows, vocab]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

/// The weights of one decoder layer on the device.
struct Layer<T> {
    input_norm: T,
    post_attention_norm: T,
    /// The q, k and v projections stacked into one `[q + 2 kv, hidden]` weight, so that one
    /// matmul reads them (the contract computes each output column alone, so stacking changes
    /// no bits).
    qkv: T,
    o: T,
    /// Qwen2's q/k/v biases, stacked as `qkv` is (used for any architecture whose checkpoint
    /// has them).
    qkv_bias: Option<T>,
    /// Qwen3's per-head RMSNorm weights of q and k.
    qk_norm: Option<(T, T)>,
    /// The gate and up projections stacked into one `[2 intermediate, hidden]` weight.
    gate_up: T,
    down: T,
}

/// A model whose weights live on a backend.
pub struct Model<B: Backend> {
    backend: B,
    config: ModelConfig,
    embed: B::Tensor,
    /// `None` when the output projection is tied to the embeddings.
    lm_head: Option<B::Tensor>,
    final_norm: B::Tensor,
    layers: Vec<Layer<B::Tensor>>,
    rope: RopeTables<B::Tensor>,
    /// Positions the rope tables cover: the context this model runs with.
    context: usize,
    /// 1/√head_dim, computed in f64 and rounded once to f32.
    attn_scale: f32,
}

/// Checks that the config describes a model the forward pass can run.
pub fn validate_config(c: &ModelConfig) -> Result<()> {
    let bad = |what: String| Err(Error::Format(format!("model config: {what}")));
    for (name, v) in [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_layers),
        ("num_attention_heads", c.num_heads),
        ("num_key_value_heads", c.num_kv_heads),
        ("head_dim", c.head_dim),
        ("max_position_embeddings", c.max_position_embeddings),
    ] {
        if v == 0 {
            return bad(format!("{name} is 0"));
        }
    }
    if c.num_heads / c.num_kv_heads * c.num_kv_heads != c.num_heads {
        return bad(format!(
            "{} attention heads cannot share {} KV heads",
            c.num_heads, c.num_kv_heads
        ));
    }
    if c.head_dim % 2 == 1 {
        return bad(format!(
            "head_dim {} is odd (rotary needs pairs)",
            c.head_dim
        ));
    }
    if c.vocab_size > u32::MAX as usize || c.max_position_embeddings > u32::MAX as usize {
        return bad("vocabulary or context does not fit u32 indices".into());
    }
    if !(c.rms_norm_eps.is_finite() && c.rms_norm_eps >= 0.0) {
        return bad(format!(
            "rms_norm_eps {} is not a finite non-negative number",
            c.rms_norm_eps
        ));
    }
    if !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        return bad(format!("rope_theta {} is not positive", c.rope_theta));
    }
    if let Some(s) = &c.rope_scaling {
        let ok = s.factor.is_finite()
            && s.factor > 0.0
            && s.low_freq_factor > 0.0
            && s.high_freq_factor > s.low_freq_factor
            && s.original_max_position_embeddings > 0;
        if !ok {
            return bad(format!("invalid llama3 rope scaling {s:?}"));
        }
    }
    Ok(())
}

/// Takes weights out of a loaded model's tensor map, checking shapes.
struct WeightSource<'a, B: Backend> {
    backend: &'a B,
    tensors: &'a HashMap<String, HostTensor>,
}

impl<B: Backend> WeightSource<'_, B> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<B::Tensor> {
        self.backend.upload_bf16(self.checked(name, shape)?)
    }

    /// Several row-major tensors stacked along their first dimension, as one upload.
    fn stacked(&self, parts: &[(&str, &[usize])]) -> Result<B::Tensor> {
        let mut data = Vec::new();
        for (name, shape) in parts {
            data.extend_from_slice(self.checked(name, shape)?);
        }
        self.backend.upload_bf16(&data)
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The bf16 bits of tensor `name`, checked to have `shape`.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<&[u16]> {
        let t: &HostTensor = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Format(format!("missing tensor {name}")))?;
        if t.shape != shape {
            return Err(Error::Format(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        if t.data.len() != shape.iter().product::<usize>() {
            return Err(Error::Format(format!(
                "tensor {name} holds {} values for shape {shape:?}",
                t.data.len()
            )));
        }
        Ok(&t.data)
    }
}

impl<B: Backend> Model<B> {
    /// Uploads `loaded`'s weights to `backend`, with rope tables for the model's whole context.
    pub fn new(backend: B, loaded: &LoadedModel) -> Result<Self> {
        Self::with_context(backend, loaded, None)
    }

    /// As [`Model::new`], with the context limited to `context` positions (smaller rope tables;
    /// sequences cannot grow past it).
    pub fn with_context(backend: B, loaded: &LoadedModel, context: Option<usize>) -> Result<Self> {
        let c = loaded.config.clone();
        validate_config(&c)?;
        let context = context
            .unwrap_or(c.max_position_embeddings)
            .min(c.max_position_embeddings);
        if context == 0 {
            return Err(Error::Input(
                "the context must hold at least one position".into(),
            ));
        }
        let src = WeightSource {
            backend: &backend,
            tensors: &loaded.tensors,
        };
        let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
        let embed = src.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(src.get("lm_head.weight", &[c.vocab_size, h])?)
        };
        let final_norm = src.get("model.norm.weight", &[h])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let attn = |n: &str| format!("{p}.self_attn.{n}");
            let (q_name, k_name, v_name) = (attn("q_proj"), attn("k_proj"), attn("v_proj"));
            let bias = |n: &str| format!("{n}.bias");
            let qkv_bias = match [&q_name, &k_name, &v_name].map(|n| src.has(&bias(n))) {
                [true, true, true] => Some(src.stacked(&[
                    (&bias(&q_name), &[q_out]),
                    (&bias(&k_name), &[kv_out]),
                    (&bias(&v_name), &[kv_out]),
                ])?),
                [false, false, false] if c.architecture != Architecture::Qwen2 => None,
                _ => {
                    return Err(Error::Format(format!(
                        "layer {l}: q/k/v projection biases missing or incomplete"
                    )))
                }
            };
            let qk_norm = if c.architecture == Architecture::Qwen3 {
                Some((
                    src.get(&attn("q_norm.weight"), &[hd])?,
                    src.get(&attn("k_norm.weight"), &[hd])?,
                ))
            } else {
                None
            };
            let weight = |n: &String| format!("{n}.weight");
            let mlp = |n: &str| format!("{p}.mlp.{n}_proj.weight");
            layers.push(Layer {
                input_norm: src.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_attention_norm: src
                    .get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                qkv: src.stacked(&[
                    (&weight(&q_name), &[q_out, h]),
                    (&weight(&k_name), &[kv_out, h]),
                    (&weight(&v_name), &[kv_out, h]),
                ])?,
                o: src.get(&attn("o_proj.weight"), &[h, q_out])?,
                qkv_bias,
                qk_norm,
                gate_up: src.stacked(&[(&mlp("gate"), &[i, h]), (&mlp("up"), &[i, h])])?,
                down: src.get(&mlp("down"), &[h, i])?,
            });
        }
        let (cos, sin) = contract::rope_tables(&c.rope_inv_freq(), context);
        let rope = RopeTables {
            cos: backend.upload_f32(&cos)?,
            sin: backend.upload_f32(&sin)?,
            positions: context,
            half_dim: hd / 2,
        };
        let attn_scale = (1.0 / (hd as f64).sqrt()) as f32;
        Ok(Model {
            backend,
            config: c,
            embed,
            lm_head,
            final_norm,
            layers,
            rope,
            context,
            attn_scale,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The most positions one sequence may reach.
    pub fn context(&self) -> usize {
        self.context
    }

    /// A KV cache of this model for `sequences` sequences of up to `positions` positions each.
    pub fn new_cache(&self, sequences: usize, positions: usize) -> Result<KvCache<B>> {
        if positions > self.context {
            return Err(Error::Input(format!(
                "{positions} positions are longer than the context of {}",
                self.context
            )));
        }
        KvCache::for_sequences(&self.backend, &self.config, sequences, positions)
    }

    /// Runs `batch` through the model, appends its K/V to `cache`, and returns the requested
    /// logits rows. On error the cached lengths are unchanged.
    pub fn forward(
        &self,
        cache: &mut KvCache<B>,
        batch: &[SeqInput],
        rows: LogitsRows,
    ) -> Result<Logits> {
        let c = &self.config;
        let b = &self.backend;
        if batch.is_empty() {
            return Err(Error::Input("forward: empty batch".into()));
        }
        let mut seen = HashSet::new();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut seqs = Vec::with_capacity(batch.len());
        let mut block_table = Vec::new();
        let mut new_lens = Vec::with_capacity(batch.len());
        for s in batch {
            if !seen.insert(s.seq) {
                return Err(Error::Input(format!(
                    "forward: sequence {:?} appears twice in one batch",
                    s.seq
                )));
            }
            if s.tokens.is_empty() {
                return Err(Error::Input(format!(
                    "forward: no tokens for sequence {:?}",
                    s.seq
                )));
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(Error::Input(format!(
                    "token id {t} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            let ctx = cache.seq_len(s.seq)?;
            let end = ctx + s.tokens.len();
            if end > self.context {
                return Err(Error::Input(format!(
                    "{end} positions are longer than the context of {}",
                    self.context
                )));
            }
            cache.reserve(s.seq, end)?;
            seqs.push(AttnSeq {
                q_start: ids.len(),
                q_len: s.tokens.len(),
                ctx_len: ctx,
                block_table_start: block_table.len(),
            });
            block_table.extend_from_slice(cache.block_table(s.seq)?);
            for p in ctx..end {
                positions.push(p as u32);
                slots.push(cache.slot(s.seq, p)?);
            }
            ids.extend_from_slice(s.tokens);
            new_lens.push(end);
        }

        let t = ids.len();
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
        let (q_out, kv_out) = (heads * hd, kv_heads * hd);
        let eps = c.rms_norm_eps;
        let mm = |x: &B::Tensor, w: &B::Tensor, n: usize, k: usize| {
            b.matmul(x, w, MatmulShape { m: t, n, k }, DType::F32)
        };
        let geometry = AttnGeometry {
            heads,
            kv_heads,
            head_dim: hd,
            page_size: cache.page_size(),
            scale: self.attn_scale,
        };

        let mut x = b.embedding(&self.embed, &ids, h)?;
        // The RMSNorm that starts each block is fused with the residual add that ends the block
        // before it.
        let mut normed = b.rms_norm(&x, &self.layers[0].input_norm, t, h, eps)?;
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention block.
            let qkv_out = q_out + 2 * kv_out;
            let mut qkv = mm(&normed, &layer.qkv, qkv_out, h)?;
            if let Some(bias) = &layer.qkv_bias {
                qkv = b.add_bias(&qkv, bias, t, qkv_out)?;
            }
            let inputs = AttentionInputs {
                qk_norm: layer.qk_norm.as_ref().map(|(qn, kn)| (qn, kn, eps)),
                positions: &positions,
                slots: &slots,
                tables: &self.rope,
                heads,
                kv_heads,
                head_dim: hd,
            };
            let attn = {
                let (kc, vc) = cache.layer_mut(l);
                let q = b.attention_inputs(&qkv, kc, vc, &inputs)?;
                b.attention(&q, kc, vc, &seqs, &block_table, geometry)?
            };
            let o = mm(&attn, &layer.o, h, q_out)?;
            (x, normed) = b.add_rms_norm(&x, &o, &layer.post_attention_norm, t, h, eps)?;

            // MLP block.
            let i = c.intermediate_size;
            let act = b.matmul_silu_mul(&normed, &layer.gate_up, t, i, h)?;
            let down = mm(&act, &layer.down, h, i)?;
            match self.layers.get(l + 1) {
                Some(next) => {
                    (x, normed) = b.add_rms_norm(&x, &down, &next.input_norm, t, h, eps)?
                }
                None => x = b.add(&x, &down)?,
            }
        }

        // Only the requested rows go through the final norm and the (large) output projection.
        // The contract makes each row's numbers independent of the others, so selecting rows
        // first changes no bits.
        let wanted: Vec<usize> = match rows {
            LogitsRows::All => (0..t).collect(),
            LogitsRows::Last => seqs.iter().map(|s| s.q_start + s.q_len - 1).collect(),
        };
        let x = if wanted.len() == t {
            x
        } else {
            // No gather kernel in the Backend trait: a host round trip of `t * hidden` floats.
            let all = b.download_f32(&x)?;
            let mut picked = Vec::with_capacity(wanted.len() * h);
            for &r in &wanted {
                picked.extend_from_slice(&all[r * h..(r + 1) * h]);
            }
            b.upload_f32(&picked)?
        };
        let m = wanted.len();
        let normed = b.rms_norm(&x, &self.final_norm, m, h, eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let logits = b.matmul(
            &normed,
            head,
            MatmulShape {
                m,
                n: c.vocab_size,
                k: h,
            },
            DType::F32,
        )?;
        let data = b.download_f32(&logits)?;

        for (s, len) in batch.iter().zip(new_lens) {
            cache.set_seq_len(s.seq, len)?;
        }
        Ok(Logits {
            rows: m,
            vocab: c.vocab_size,
            data,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
