//! Loading a Hugging Face model directory: `config.json`, `model.safetensors` (or shards listed
//! in `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json` and `chat_template.jinja`.

use super::convert::{Job, SourceType};
use super::{
    expected_tensors, unsupported_bias_check, Architecture, GenerationDefaults, Llama3RopeScaling,
    LoadedModel, ModelConfig,
};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads and parses a JSON file; `Ok(None)` when it does not exist.
fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Format(format!("{}: {e}", path.display())))
}

fn read_json(path: &Path) -> Result<Json> {
    read_json_opt(path)?.ok_or_else(|| {
        io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        )
    })
}

/// Typed lookups in a JSON object, with messages naming the file and key.
struct Obj<'a> {
    v: &'a Json,
    what: String,
}

impl Obj<'_> {
    fn get(&self, key: &str) -> Option<&Json> {
        self.v.get(key).filter(|v| !v.is_null())
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::Format(format!(
                        "{}: {key} should be an unsigned integer, got {v}",
                        self.what
                    ))
                }),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| Error::Format(format!("{}: missing {key}", self.what)))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::Format(format!("{}: {key} should be a number, got {v}", self.what))
            }),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                Error::Format(format!(
                    "{}: {key} should be true or false, got {v}",
                    self.what
                ))
            }),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                Error::Format(format!("{}: {key} should be a string, got {v}", self.what))
            }),
        }
    }
    /// Token ids given as one integer or a list of integers.
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Json| {
            Error::Format(format!(
                "{}: {key} should be a token id or a list of them, got {v}",
                self.what
            ))
        };
        let one = |v: &Json| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(v))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Json::Array(a)) => a.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

/// `rope_scaling` (or transformers 5's `rope_parameters`): only Llama 3's kind is supported.
fn rope_scaling(c: &Obj) -> Result<Option<Llama3RopeScaling>> {
    let Some(rs) = c.get("rope_scaling").or_else(|| c.get("rope_parameters")) else {
        return Ok(None);
    };
    let o = Obj {
        v: rs,
        what: format!("{} rope_scaling", c.what),
    };
    let kind = match o.str_opt("rope_type")? {
        Some(k) => Some(k),
        None => o.str_opt("type")?,
    };
    match kind {
        None | Some("default") => Ok(None),
        Some("llama3") => {
            let need = |k: &str| {
                o.f64_opt(k)?
                    .ok_or_else(|| Error::Format(format!("{}: missing {k}", o.what)))
            };
            let s = Llama3RopeScaling {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: o.usize("original_max_position_embeddings")?,
            };
            if !(s.factor > 0.0
                && s.high_freq_factor > s.low_freq_factor
                && s.low_freq_factor > 0.0)
                || s.original_max_position_embeddings == 0
            {
                return Err(Error::Format(format!(
                    "{}: invalid llama3 parameters {s:?}",
                    o.what
                )));
            }
            Ok(Some(s))
        }
        Some(other) => Err(Error::Unsupported(format!(
            "{}: rope scaling type {other:?} (supported: llama3)",
            c.what
        ))),
    }
}

/// The model config from `config.json`.
pub(crate) fn parse_config(v: &Json, what: &str) -> Result<ModelConfig> {
    let c = Obj {
        v,
        what: what.to_string(),
    };
    let names: Vec<&str> = match c.get("architectures") {
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    };
    let from_arch = names.iter().find_map(|n| match *n {
        "LlamaForCausalLM" => Some(Architecture::Llama),
        "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
        "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
        _ => None,
    });
    let architecture = match (from_arch, c.str_opt("model_type")?) {
        (Some(a), _) => a,
        (None, Some("llama")) if names.is_empty() => Architecture::Llama,
        (None, Some("qwen2")) if names.is_empty() => Architecture::Qwen2,
        (None, Some("qwen3")) if names.is_empty() => Architecture::Qwen3,
        (None, mt) => {
            return Err(Error::Unsupported(format!(
                "{what}: architecture {names:?} (model_type {mt:?}); supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
            )))
        }
    };
    if let Some(act) = c.str_opt("hidden_act")? {
        if act != "silu" {
            return Err(Error::Unsupported(format!("{what}: hidden_act {act:?}")));
        }
    }
    if c.bool_opt("use_sliding_window")? == Some(true) {
        return Err(Error::Unsupported(format!(
            "{what}: sliding-window attention"
        )));
    }
    if c.bool_opt("attention_bias")? == Some(true) && architecture != Architecture::Qwen2 {
        return Err(Error::Unsupported(format!(
            "{what}: attention_bias on {architecture:?}"
        )));
    }
    if c.bool_opt("mlp_bias")? == Some(true) {
        return Err(Error::Unsupported(format!("{what}: mlp_bias")));
    }
    let hidden_size = c.usize("hidden_size")?;
    let num_heads = c.usize("num_attention_heads")?;
    if num_heads == 0 || hidden_size == 0 {
        return Err(Error::Format(format!(
            "{what}: zero hidden_size or num_attention_heads"
        )));
    }
    let rope_theta = match c.f64_opt("rope_theta")? {
        Some(t) => t,
        None => c
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .and_then(Json::as_f64)
            .unwrap_or(10000.0),
    };
    // transformers' defaults where a key is absent.
    let default_ctx = match architecture {
        Architecture::Llama => 2048,
        Architecture::Qwen2 | Architecture::Qwen3 => 32768,
    };
    Ok(ModelConfig {
        architecture,
        vocab_size: c.usize("vocab_size")?,
        hidden_size,
        intermediate_size: c.usize("intermediate_size")?,
        num_layers: c.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads: c.usize_opt("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim: c.usize_opt("head_dim")?.unwrap_or(hidden_size / num_heads),
        rms_norm_eps: c.f64_opt("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        rope_theta,
        rope_scaling: rope_scaling(&c)?,
        max_position_embeddings: c
            .usize_opt("max_position_embeddings")?
            .unwrap_or(default_ctx),
        tie_word_embeddings: c.bool_opt("tie_word_embeddings")?.unwrap_or(false),
    })
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// The chat template in `tokenizer_config.json`: a string, or a list of named templates of
/// which "default" is used.
fn chat_template_of(tc: &Json, what: &str) -> Result<Option<String>> {
    match tc.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => Ok(list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string)),
        Some(v) => Err(Error::Format(format!(
            "{what}: chat_template should be a string or a list, got {v}"
        ))),
    }
}

/// Loads a Hugging Face model directory.
pub(crate) fn load(dir: &Path, progress: bool) -> Result<LoadedModel> {
    let what = dir.display().to_string();
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?;
    let config = parse_config(&config_json, &config_path.display().to_string())?;

    // Which file holds which tensor.
    let index_path = dir.join("model.safetensors.index.json");
    let weight_map: Option<HashMap<String, String>> = match read_json_opt(&index_path)? {
        None => None,
        Some(index) => {
            let map = index
                .get("weight_map")
                .and_then(Json::as_object)
                .ok_or_else(|| {
                    Error::Format(format!("{}: missing weight_map", index_path.display()))
                })?;
            let mut m = HashMap::with_capacity(map.len());
            for (k, v) in map {
                let file = v.as_str().ok_or_else(|| {
                    Error::Format(format!(
                        "{}: weight_map values must be file names",
                        index_path.display()
                    ))
                })?;
                // Shards must lie in the model directory.
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(Error::Format(format!(
                        "{}: shard name {file:?} is not a plain file name",
                        index_path.display()
                    )));
                }
                m.insert(k.clone(), file.to_string());
            }
            Some(m)
        }
    };
    let files: Vec<String> = match &weight_map {
        Some(m) => m
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        None => vec!["model.safetensors".to_string()],
    };

    let mut maps = Vec::with_capacity(files.len());
    for f in &files {
        let p = dir.join(f);
        let file = std::fs::File::open(&p).map_err(|e| io_err(&p, e))?;
        // SAFETY: a read-only map that lives only while this function converts the weights.
        // Another process changing the file meanwhile could fault or alter bytes; like every
        // mmap-based loader we accept that (checkpoints are not edited while being loaded).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(&p, e))?;
        maps.push(map);
    }
    let mut parsed = Vec::with_capacity(files.len());
    for (f, map) in files.iter().zip(&maps) {
        let st = safetensors::SafeTensors::deserialize(map).map_err(|e| {
            Error::Format(format!(
                "{}: not a valid safetensors file: {e}",
                dir.join(f).display()
            ))
        })?;
        parsed.push(st);
    }
    // name → (file index, view); with an index, a tensor is looked up only in its shard.
    let mut views = HashMap::new();
    for (i, st) in parsed.iter().enumerate() {
        for (name, view) in st.iter() {
            let listed = match &weight_map {
                Some(m) => m.get(name) == Some(&files[i]),
                None => true,
            };
            if listed {
                views.insert(name.to_string(), (i, view));
            }
        }
    }

    let has_bias = |proj: &str| {
        (0..config.num_layers).any(|i| {
            views.contains_key(&format!("model.layers.{i}.self_attn.{proj}.bias"))
                || views.contains_key(&format!("model.layers.{i}.mlp.{proj}.bias"))
        })
    };
    unsupported_bias_check(&config, &what, has_bias)?;

    let mut jobs = Vec::new();
    for (name, shape) in expected_tensors(&config) {
        let (file_idx, view) = views.get(&name).ok_or_else(|| {
            let hint = match weight_map.as_ref().and_then(|m| m.get(&name)) {
                Some(f) => format!(" (the index names {f}, which lacks it)"),
                None => String::new(),
            };
            Error::Format(format!("{what}: missing tensor {name}{hint}"))
        })?;
        let file = dir.join(&files[*file_idx]).display().to_string();
        let dtype = match view.dtype() {
            safetensors::Dtype::BF16 => SourceType::BF16,
            safetensors::Dtype::F16 => SourceType::F16,
            safetensors::Dtype::F32 => SourceType::F32,
            other => {
                return Err(Error::Unsupported(format!(
                    "{file}: tensor {name} has dtype {other:?} (supported: BF16, F16, F32)"
                )))
            }
        };
        if view.shape() != shape.as_slice() {
            return Err(Error::Format(format!(
                "{file}: tensor {name} has shape {:?}, the config implies {shape:?}",
                view.shape()
            )));
        }
        jobs.push(Job {
            name,
            shape,
            bytes: view.data(),
            dtype,
            unpermute_heads: None,
        });
    }

    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::Format(format!(
            "{what}: tokenizer has {} tokens, more than the model's vocab_size {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_json_opt(&tc_path)?.unwrap_or(Json::Null);
    let tc_what = tc_path.display().to_string();

    // A separate chat_template.jinja is what newer transformers writes, and wins.
    let jinja = dir.join("chat_template.jinja");
    let chat_template = match std::fs::read_to_string(&jinja) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => chat_template_of(&tc, &tc_what)?,
        Err(e) => return Err(io_err(&jinja, e)),
    };

    let gc_path = dir.join("generation_config.json");
    let gc = read_json_opt(&gc_path)?.unwrap_or(Json::Null);
    let generation = generation_defaults(
        &Obj {
            v: &gc,
            what: gc_path.display().to_string(),
        },
        &Obj {
            v: &config_json,
            what: config_path.display().to_string(),
        },
        &Obj {
            v: &tc,
            what: tc_what,
        },
        &tokenizer,
    )?;

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

/// EOS/BOS with transformers' precedence (generation_config, then config, then the tokenizer's
/// special tokens); sampling defaults only when `do_sample` is true, as transformers ignores
/// them otherwise.
fn generation_defaults(
    gc: &Obj,
    config: &Obj,
    tc: &Obj,
    tokenizer: &Tokenizer,
) -> Result<GenerationDefaults> {
    let mut eos = gc.ids("eos_token_id")?;
    if eos.is_empty() {
        eos = config.ids("eos_token_id")?;
    }
    if eos.is_empty() {
        if let Some(id) = token_string(tc.get("eos_token")).and_then(|t| tokenizer.token_id(t)) {
            eos.push(id);
        }
    }
    let mut unique = Vec::with_capacity(eos.len());
    for id in eos {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    let bos = match gc.ids("bos_token_id")?.first() {
        Some(&id) => Some(id),
        None => match config.ids("bos_token_id")?.first() {
            Some(&id) => Some(id),
            None => token_string(tc.get("bos_token")).and_then(|t| tokenizer.token_id(t)),
        },
    };
    let add_bos = match tc.bool_opt("add_bos_token")? {
        Some(b) => b,
        // No explicit flag: a fast tokenizer adds BOS through its post-processor, so ask it.
        None => match bos {
            Some(b) => tokenizer.post_processor_adds(b),
            None => false,
        },
    };
    let sample = gc.bool_opt("do_sample")? == Some(true);
    Ok(GenerationDefaults {
        eos_token_ids: unique,
        bos_token_id: bos,
        add_bos,
        temperature: if sample {
            gc.f64_opt("temperature")?.map(|t| t as f32)
        } else {
            None
        },
        top_k: if sample { gc.usize_opt("top_k")? } else { None },
        top_p: if sample {
            gc.f64_opt("top_p")?.map(|t| t as f32)
        } else {
            None
        },
    })
}
