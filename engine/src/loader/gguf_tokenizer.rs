//! Rebuilding a Hugging Face `tokenizers::Tokenizer` from GGUF tokenizer metadata.
//!
//! Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE: Llama 3, Qwen2/3, SmolLM2, …).
//! The tokenizer is written as a `tokenizer.json` document and parsed by the `tokenizers`
//! crate, so the result is exactly what a Hugging Face file with the same content would give.
//!
//! The pre-tokenizer depends on `tokenizer.ggml.pre`, the name llama.cpp gives each family's
//! splitting regex:
//! - `gpt-2`, `smollm`: GPT-2's regex (the `ByteLevel` pre-tokenizer's own);
//! - `starcoder`, `refact`: every digit split off alone, then GPT-2's regex;
//! - `llama-bpe` (Llama 3): Llama 3's regex (digits in runs of up to 3);
//! - `qwen2` (Qwen2, Qwen2.5, Qwen3): Qwen2's regex (single digits), after NFC normalization.
//!
//! Token types (llama.cpp): 3 = control (added, special: skipped when decoding), 4 = user
//! defined (added, not special).

use super::gguf::{tokens, GgufHeader, Value};
use crate::{Error, Result};
use serde_json::{json, Value as Json};

const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// Llama 3's split regex (as in its `tokenizer.json`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// (normalizer, pre-tokenizer) for a `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str, what: &str) -> Result<(Json, Json)> {
    Ok(match pre {
        // llama.cpp also splits off every numeric character for `smollm`, but transformers'
        // rebuild of SmolLM2's GGUF tokenizer (ditto's reference, shared with the Hugging Face
        // benchmark models) does not; the two differ when whitespace runs precede a digit.
        // ditto follows transformers so the GGUF and Hugging Face paths tokenize alike.
        "gpt-2" | "smollm" => (Json::Null, byte_level(true)),
        "starcoder" | "refact" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
        ),
        "llama-bpe" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
        ),
        other => {
            return Err(Error::Unsupported(format!(
                "{what}: tokenizer.ggml.pre {other:?} (supported: gpt-2, smollm, starcoder, refact, llama-bpe, qwen2)"
            )))
        }
    })
}

/// Builds the tokenizer described by the GGUF metadata of `h`.
pub(crate) fn build(h: &GgufHeader, what: &str) -> Result<tokenizers::Tokenizer> {
    let doc = tokenizer_json(h, what)?;
    let text = serde_json::to_vec(&doc)
        .map_err(|e| Error::Format(format!("{what}: serializing the tokenizer: {e}")))?;
    tokenizers::Tokenizer::from_bytes(text)
        .map_err(|e| Error::Format(format!("{what}: rebuilding the tokenizer: {e}")))
}

/// The `tokenizer.json` document equivalent to the GGUF metadata.
pub(crate) fn tokenizer_json(h: &GgufHeader, what: &str) -> Result<Json> {
    let meta = |k: &str| h.metadata.get(k);
    let model = meta("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Format(format!("{what}: missing tokenizer.ggml.model")))?;
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "{what}: tokenizer model {model:?} (supported: gpt2, byte-level BPE)"
        )));
    }
    let pre = meta("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("gpt-2");
    let (normalizer, pre_tokenizer) = pre_tokenizer(pre, what)?;

    let toks = tokens(h, what)?;
    let types: Vec<u64> = match meta("tokenizer.ggml.token_type") {
        None => vec![1; toks.len()],
        Some(v) => {
            let arr = v.as_array().ok_or_else(|| {
                Error::Format(format!("{what}: tokenizer.ggml.token_type is not an array"))
            })?;
            arr.iter()
                .map(|t| {
                    t.as_u64().ok_or_else(|| {
                        Error::Format(format!(
                            "{what}: tokenizer.ggml.token_type holds a non-integer"
                        ))
                    })
                })
                .collect::<Result<_>>()?
        }
    };
    if types.len() != toks.len() {
        return Err(Error::Format(format!(
            "{what}: {} token types for {} tokens",
            types.len(),
            toks.len()
        )));
    }

    let mut vocab = serde_json::Map::with_capacity(toks.len());
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in toks.iter().zip(&types).enumerate() {
        if vocab.insert(tok.to_string(), json!(id)).is_some() {
            return Err(Error::Unsupported(format!(
                "{what}: token {tok:?} appears twice in the vocabulary"
            )));
        }
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id,
                "content": tok,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }

    let merges_v = meta("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Format(format!("{what}: missing tokenizer.ggml.merges")))?;
    let mut merges = Vec::with_capacity(merges_v.len());
    for m in merges_v {
        let s = m.as_str().ok_or_else(|| {
            Error::Format(format!("{what}: tokenizer.ggml.merges holds a non-string"))
        })?;
        // Byte-level tokens never contain a space (it is mapped to 'Ġ'), so the one space
        // separates the pair.
        let (a, b) = s
            .split_once(' ')
            .filter(|(_, b)| !b.contains(' '))
            .ok_or_else(|| Error::Format(format!("{what}: malformed merge {s:?}")))?;
        merges.push(json!([a, b]));
    }

    // Post-processing adds BOS only when the model asks for it (and only when a caller asks
    // for special tokens; ditto's wrapper adds BOS itself from `GenerationDefaults`).
    let add_bos = meta("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let bos = meta("tokenizer.ggml.bos_token_id").and_then(Value::as_u64);
    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => {
            let tok = toks.get(id as usize).copied().ok_or_else(|| {
                Error::Format(format!(
                    "{what}: bos_token_id {id} is outside the vocabulary"
                ))
            })?;
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {tok: {"id": tok, "ids": [id], "tokens": [tok]}},
            })
        }
        _ => Json::Null,
    };

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}
