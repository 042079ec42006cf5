//! A GGUF reader (versions 2 and 3, little-endian): header, metadata, tensor table, and the
//! mapping of llama.cpp tensor names and layouts onto Hugging Face ones.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count; metadata entries
//! (string key, u32 value type, value); tensor infos (string name, u32 n_dims, u64 dims
//! innermost first, u32 ggml type, u64 offset relative to the data section); then the data
//! section, which starts at the next multiple of `general.alignment` (default 32). Strings are a
//! u64 byte length followed by UTF-8 bytes. Every read is bounds-checked: a truncated or corrupt
//! file gives an [`Error::Format`], never a panic or a huge allocation.

use super::convert::{Job, SourceType};
use super::{
    expected_tensors, unsupported_bias_check, Architecture, GenerationDefaults, LoadedModel,
    ModelConfig,
};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF header.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

/// GGML type ids (ggml.h) for messages; only some are supported.
fn ggml_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// The supported GGML types.
pub(crate) fn source_type(t: u32) -> Option<SourceType> {
    Some(match t {
        0 => SourceType::F32,
        1 => SourceType::F16,
        2 => SourceType::Q4_0,
        3 => SourceType::Q4_1,
        8 => SourceType::Q8_0,
        30 => SourceType::BF16,
        _ => return None,
    })
}

/// Bounds-checked little-endian reads over the file bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'a str,
}

/// Arrays may nest; corrupt files must not recurse without end.
const MAX_ARRAY_DEPTH: usize = 8;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Format(format!(
                "{}: truncated GGUF header: needs {n} bytes at offset {}, file has {}",
                self.what,
                self.pos,
                self.bytes.len()
            ))),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| {
            Error::Format(format!(
                "{}: GGUF string at offset {} is not UTF-8",
                self.what,
                self.pos - len
            ))
        })
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(Error::Format(format!(
                        "{}: GGUF bool with value {b} at offset {}",
                        self.what,
                        self.pos - 1
                    )))
                }
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::Format(format!(
                        "{}: GGUF arrays nested deeper than {MAX_ARRAY_DEPTH}",
                        self.what
                    )));
                }
                let elem = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count beyond the bytes left is
                // corrupt, and checking it first keeps a bad count from allocating gigabytes.
                if n > self.remaining() as u64 {
                    return Err(Error::Format(format!(
                        "{}: GGUF array of {n} elements at offset {} exceeds the file",
                        self.what, self.pos
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => {
                return Err(Error::Format(format!(
                    "{}: unknown GGUF metadata value type {t} at offset {}",
                    self.what,
                    self.pos - 4
                )))
            }
        })
    }
}

/// Parses the header of a GGUF file held in `bytes` (the whole file). `what` names the file
/// in messages.
pub fn parse_header(bytes: &[u8], what: &str) -> Result<GgufHeader> {
    let mut r = Reader {
        bytes,
        pos: 0,
        what,
    };
    let magic = r.take(4).map_err(|_| {
        Error::Format(format!(
            "{what}: not a GGUF file (only {} bytes)",
            bytes.len()
        ))
    })?;
    if magic != b"GGUF" {
        return Err(Error::Format(format!(
            "{what}: not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
        )));
    }
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::Unsupported(format!(
                "{what}: GGUF version 1 (re-convert it with a current llama.cpp)"
            )))
        }
        // A big-endian file stores its version byte-swapped.
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::Unsupported(format!("{what}: big-endian GGUF")))
        }
        v => {
            return Err(Error::Format(format!(
                "{what}: unknown GGUF version {v} (expected 2 or 3)"
            )))
        }
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // A metadata entry is at least 8 + 4 + 1 bytes, a tensor info at least 8 + 4 + 4 + 8.
    if n_kv > r.remaining() as u64 / 13 || n_tensors > r.remaining() as u64 / 24 {
        return Err(Error::Format(format!(
            "{what}: GGUF header claims {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold"
        )));
    }
    let mut metadata = HashMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Error::Format(format!(
                "{what}: duplicate GGUF metadata key {key}"
            )));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(Error::Format(format!(
                    "{what}: general.alignment must be a power of two, got {v:?}"
                )))
            }
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 4 {
            return Err(Error::Format(format!(
                "{what}: tensor {name} has {n_dims} dimensions (GGUF allows at most 4)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        if !offset.is_multiple_of(alignment) {
            return Err(Error::Format(format!(
                "{what}: tensor {name} offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Where a tensor's bytes lie in the file, checked against the file length.
fn tensor_bytes<'a>(
    h: &GgufHeader,
    t: &TensorInfo,
    file: &'a [u8],
    what: &str,
) -> Result<(SourceType, Vec<usize>, &'a [u8])> {
    let ty = source_type(t.ggml_type).ok_or_else(|| {
        Error::Unsupported(match ggml_type_name(t.ggml_type) {
            Some(n) => format!(
                "{what}: tensor {} has type {n} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                t.name
            ),
            None => format!(
                "{what}: tensor {} has unknown GGML type id {}",
                t.name, t.ggml_type
            ),
        })
    })?;
    let mut numel: usize = 1;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in t.dims.iter().rev() {
        let d = usize::try_from(d)
            .map_err(|_| Error::Format(format!("{what}: tensor {} dimension too large", t.name)))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| Error::Format(format!("{what}: tensor {} size overflows", t.name)))?;
        shape.push(d);
    }
    let row_len = shape.last().copied().unwrap_or(1);
    let len = ty
        .byte_len(numel, row_len)
        .map_err(|e| Error::Format(format!("{what}: tensor {}: {e}", t.name)))?;
    let start = h.data_offset.checked_add(t.offset);
    let end = start.and_then(|s| s.checked_add(len as u64));
    match (start, end) {
        (Some(s), Some(e)) if e <= file.len() as u64 => {
            Ok((ty, shape, &file[s as usize..e as usize]))
        }
        _ => Err(Error::Format(format!(
            "{what}: tensor {} needs bytes {}..{} but the file has {} (truncated?)",
            t.name,
            h.data_offset as u128 + t.offset as u128,
            h.data_offset as u128 + t.offset as u128 + len as u128,
            file.len()
        ))),
    }
}

/// The Hugging Face name of a GGUF tensor name, if it is one ditto knows.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Typed metadata lookups with messages that name the key.
struct Meta<'a> {
    h: &'a GgufHeader,
    what: &'a str,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.h.metadata.get(key)
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|x| usize::try_from(x).ok()) {
                Some(x) => Ok(Some(x)),
                None if v.as_array().is_some() => Err(Error::Unsupported(format!(
                    "{}: per-layer {key} (an array)",
                    self.what
                ))),
                None => Err(Error::Format(format!(
                    "{}: {key} should be an unsigned integer, got {v:?}",
                    self.what
                ))),
            },
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| Error::Format(format!("{}: missing GGUF metadata {key}", self.what)))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::Format(format!(
                    "{}: {key} should be a number, got {v:?}",
                    self.what
                ))
            }),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                Error::Format(format!(
                    "{}: {key} should be a string, got {v:?}",
                    self.what
                ))
            }),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                Error::Format(format!("{}: {key} should be a bool, got {v:?}", self.what))
            }),
        }
    }
    fn u32_opt(&self, key: &str) -> Result<Option<u32>> {
        Ok(match self.usize_opt(key)? {
            Some(x) => {
                Some(u32::try_from(x).map_err(|_| {
                    Error::Format(format!("{}: {key} = {x} is too large", self.what))
                })?)
            }
            None => None,
        })
    }
}

/// The model config from GGUF metadata (`{arch}.*` keys). `vocab_size` comes from the
/// tokenizer's token list; `tie` from whether an `output.weight` tensor exists.
fn config_from_metadata(h: &GgufHeader, what: &str, tie: bool) -> Result<ModelConfig> {
    let m = Meta { h, what };
    let arch = m
        .str_opt("general.architecture")?
        .ok_or_else(|| Error::Format(format!("{what}: missing general.architecture")))?;
    let architecture = match arch {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        other => {
            return Err(Error::Unsupported(format!(
                "{what}: architecture {other:?} (supported: llama, qwen2, qwen3)"
            )))
        }
    };
    let k = |s: &str| format!("{arch}.{s}");
    let hidden_size = m.usize(&k("embedding_length"))?;
    let num_heads = m.usize(&k("attention.head_count"))?;
    if num_heads == 0 || hidden_size == 0 {
        return Err(Error::Format(format!(
            "{what}: zero hidden size or head count"
        )));
    }
    let num_kv_heads = m
        .usize_opt(&k("attention.head_count_kv"))?
        .unwrap_or(num_heads);
    let head_dim = match m.usize_opt(&k("attention.key_length"))? {
        Some(d) => d,
        None => hidden_size / num_heads,
    };
    if let Some(v) = m.usize_opt(&k("attention.value_length"))? {
        if v != head_dim {
            return Err(Error::Unsupported(format!(
                "{what}: value head size {v} differs from key head size {head_dim}"
            )));
        }
    }
    if let Some(r) = m.usize_opt(&k("rope.dimension_count"))? {
        if r != head_dim {
            return Err(Error::Unsupported(format!(
                "{what}: partial rotary embedding ({r} of {head_dim} dimensions)"
            )));
        }
    }
    if let Some(t) = m.str_opt(&k("rope.scaling.type"))? {
        if t != "none" {
            return Err(Error::Unsupported(format!(
                "{what}: rope scaling {t:?} in GGUF"
            )));
        }
    }
    let vocab = tokens(h, what)?.len();
    let rms_norm_eps = m
        .f64_opt(&k("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            Error::Format(format!(
                "{what}: missing GGUF metadata {}",
                k("attention.layer_norm_rms_epsilon")
            ))
        })? as f32;
    Ok(ModelConfig {
        architecture,
        vocab_size: vocab,
        hidden_size,
        intermediate_size: m.usize(&k("feed_forward_length"))?,
        num_layers: m.usize(&k("block_count"))?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta: m.f64_opt(&k("rope.freq_base"))?.unwrap_or(10000.0),
        rope_scaling: None,
        max_position_embeddings: m.usize(&k("context_length"))?,
        tie_word_embeddings: tie,
    })
}

/// `tokenizer.ggml.tokens` as strings.
pub(crate) fn tokens<'a>(h: &'a GgufHeader, what: &str) -> Result<Vec<&'a str>> {
    let arr = h
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Format(format!("{what}: missing tokenizer.ggml.tokens")))?;
    arr.iter()
        .map(|v| {
            v.as_str().ok_or_else(|| {
                Error::Format(format!("{what}: tokenizer.ggml.tokens holds a non-string"))
            })
        })
        .collect()
}

/// Generation defaults from GGUF metadata: eos (and end-of-turn) ids, bos, add_bos, and the
/// `general.sampling.*` keys newer converters write.
fn generation_from_metadata(h: &GgufHeader, what: &str) -> Result<GenerationDefaults> {
    let m = Meta { h, what };
    let mut eos = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = m.u32_opt(key)? {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    Ok(GenerationDefaults {
        eos_token_ids: eos,
        bos_token_id: m.u32_opt("tokenizer.ggml.bos_token_id")?,
        // llama.cpp's default for byte-level BPE vocabularies is not to add BOS.
        add_bos: m.bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        temperature: m.f64_opt("general.sampling.temp")?.map(|v| v as f32),
        top_k: m.usize_opt("general.sampling.top_k")?,
        top_p: m.f64_opt("general.sampling.top_p")?.map(|v| v as f32),
    })
}

/// Loads a `.gguf` file.
pub(crate) fn load(path: &Path, progress: bool) -> Result<LoadedModel> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: what.clone(),
        source: e,
    })?;
    // SAFETY: the map is read-only and lives only for this function. Another process truncating
    // or rewriting the file while we read it could fault or change bytes under us; like every
    // mmap-based loader we accept that (model files are not edited while being loaded).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Io {
        path: what.clone(),
        source: e,
    })?;
    let bytes: &[u8] = &map;
    let h = parse_header(bytes, &what)?;

    if h.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(Error::Unsupported(format!(
            "{what}: rope_freqs.weight (Llama 3 frequency scaling baked into GGUF); load the Hugging Face model instead"
        )));
    }

    // Map names, rejecting duplicates; unknown tensors are ignored (they are not needed).
    let mut by_hf: HashMap<String, &TensorInfo> = HashMap::new();
    for t in &h.tensors {
        if let Some(name) = hf_name(&t.name) {
            if by_hf.insert(name, t).is_some() {
                return Err(Error::Format(format!(
                    "{what}: duplicate tensor {}",
                    t.name
                )));
            }
        }
    }
    let tie = !by_hf.contains_key("lm_head.weight");
    let config = config_from_metadata(&h, &what, tie)?;
    let has_bias = |proj: &str| {
        (0..config.num_layers).any(|i| {
            by_hf.contains_key(&format!("model.layers.{i}.self_attn.{proj}.bias"))
                || by_hf.contains_key(&format!("model.layers.{i}.mlp.{proj}.bias"))
        })
    };
    unsupported_bias_check(&config, &what, has_bias)?;

    let mut jobs = Vec::new();
    for (name, shape) in expected_tensors(&config) {
        let t = by_hf.get(&name).ok_or_else(|| {
            Error::Format(format!(
                "{what}: missing tensor {name} (GGUF name {})",
                gguf_name_hint(&name)
            ))
        })?;
        let (dtype, got_shape, data) = tensor_bytes(&h, t, bytes, &what)?;
        if got_shape != shape {
            return Err(Error::Format(format!(
                "{what}: tensor {} has shape {got_shape:?} (as [out, in]), the config implies {shape:?}",
                t.name
            )));
        }
        // llama.cpp permutes the rows of llama q/k projections (weights and biases) for its
        // interleaved rotary layout; qwen2/qwen3 use the halves layout and are not permuted.
        let unpermute_heads = if config.architecture == Architecture::Llama {
            if name.contains(".self_attn.q_proj.") {
                Some(config.num_heads)
            } else if name.contains(".self_attn.k_proj.") {
                Some(config.num_kv_heads)
            } else {
                None
            }
        } else {
            None
        };
        jobs.push(Job {
            name,
            shape,
            bytes: data,
            dtype,
            unpermute_heads,
        });
    }

    let tokenizer = Tokenizer::new(super::gguf_tokenizer::build(&h, &what)?);
    if tokenizer.vocab_size() != config.vocab_size {
        return Err(Error::Format(format!(
            "{what}: tokenizer has {} tokens, vocabulary is {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let generation = generation_from_metadata(&h, &what)?;
    let chat_template = Meta { h: &h, what: &what }
        .str_opt("tokenizer.chat_template")?
        .map(str::to_string);
    let tensors = super::convert::convert_all(jobs, progress, &what)?;
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer,
        chat_template,
        generation,
        source: what,
    })
}

/// The GGUF name a Hugging Face name comes from, for "missing tensor" messages.
fn gguf_name_hint(hf: &str) -> String {
    for t in ["token_embd.weight", "output_norm.weight", "output.weight"] {
        if hf_name(t).as_deref() == Some(hf) {
            return t.to_string();
        }
    }
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        if let Some((layer, _)) = rest.split_once('.') {
            for part in [
                "attn_norm",
                "ffn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "attn_q_norm",
                "attn_k_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                for suffix in ["weight", "bias"] {
                    let g = format!("blk.{layer}.{part}.{suffix}");
                    if hf_name(&g).as_deref() == Some(hf) {
                        return g;
                    }
                }
            }
        }
    }
    "?".into()
}
