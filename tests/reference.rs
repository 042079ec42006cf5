//! ditto against an independent implementation: Hugging Face transformers in float32 on the same
//! SmolLM2 GGUF (`tests/reference/`, made by `make_reference.py`). ditto computes with bf16
//! weights and bf16 matmul inputs, so logits agree within a tolerance, not bit for bit; the
//! tolerance and why are in `tests/reference/README.md`:
//! - tokenization identical, for every prompt and 35 tricky strings;
//! - teacher forced over the prompt and the reference's 24 greedy tokens: every stored logit
//!   (top-8, the chosen one, log-sum-exp, max |logit|, and two full 49152-logit rows) within
//!   [`LOGIT_TOLERANCE`];
//! - ditto's argmax equals the reference's at every step whose reference top-2 margin is at least
//!   [`MARGIN_CHECKED`] (measured: the bf16 emulation moved a top-2 gap by at most 0.21).
//!
//! Runs on the cpu backend: the other backends give the cpu's bits (tests/model_equivalence.rs).

mod common;

use base64::Engine;
use ditto::engine::cpu::CpuBackend;
use ditto::engine::loader;
use ditto::engine::model::{LogitsRows, Model, SeqInput};
use ditto::shaders::contract;
use serde_json::Value;
use std::path::PathBuf;

/// Largest |ditto − reference| allowed for any stored logit (observed worst in the emulation of
/// ditto's numerics: 0.56).
const LOGIT_TOLERANCE: f64 = 1.0;
/// Greedy tokens are compared where the reference's top-1 leads top-2 by at least this.
const MARGIN_CHECKED: f64 = 0.5;

fn reference() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference JSON"))
        .expect("reference JSON parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// log Σ exp(x), in f64 (only to compare with the reference's statistic).
fn logsumexp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

#[test]
fn tokenization_matches_transformers() {
    let Some(path) = common::test_model(false) else {
        return;
    };
    let model = loader::load(&path, false).expect("load");
    let r = reference();
    let mut checked = 0;
    for p in r["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(p["add_bos"], Value::Bool(model.generation.add_bos));
        let got = model
            .tokenizer
            .encode_with_special_tokens(text)
            .expect("encode");
        assert_eq!(got, ids(&p["token_ids"]), "prompt {}", p["name"]);
        checked += 1;
    }
    for t in r["tokenization"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let got = model
            .tokenizer
            .encode_with_special_tokens(text)
            .expect("encode");
        assert_eq!(got, ids(&t["ids"]), "string {text:?}");
        checked += 1;
    }
    eprintln!("{checked} tokenizations identical to transformers'");
}

#[test]
fn logits_agree_with_transformers_within_bf16_tolerance() {
    let Some(path) = common::test_model(false) else {
        return;
    };
    let loaded = loader::load(&path, false).expect("load");
    let model = Model::new(CpuBackend::new(), &loaded).expect("model");
    let r = reference();
    let (mut worst, mut greedy_checked, mut greedy_skipped) = (0.0f64, 0, 0);
    for p in r["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = ids(&p["token_ids"]);
        let generated = ids(&p["generated"]);
        let steps = p["steps"].as_array().unwrap();
        // Teacher forcing in one prefill: the rows at the prompt's last position and after
        // each fed token are the reference's steps.
        let mut tokens = prompt.clone();
        tokens.extend(&generated[..steps.len() - 1]);
        let mut cache = model.new_cache(1, tokens.len()).expect("cache");
        let seq = cache.add_sequence();
        let logits = model
            .forward(
                &mut cache,
                &[SeqInput {
                    seq,
                    tokens: &tokens,
                }],
                LogitsRows::All,
            )
            .expect("forward");
        let mut check = |what: String, got: f64, want: f64| {
            let d = (got - want).abs();
            worst = worst.max(d);
            assert!(
                d <= LOGIT_TOLERANCE,
                "{name}: {what}: ditto {got}, transformers {want} (|Δ| {d} > {LOGIT_TOLERANCE})"
            );
        };
        for (i, step) in steps.iter().enumerate() {
            let row = logits.row(prompt.len() - 1 + i);
            let top = step["top"].as_array().unwrap();
            for t in top {
                let (id, want) = (t[0].as_u64().unwrap() as usize, t[1].as_f64().unwrap());
                check(format!("step {i}, logit {id}"), row[id] as f64, want);
            }
            let chosen = step["token"].as_u64().unwrap() as usize;
            check(
                format!("step {i}, chosen logit"),
                row[chosen] as f64,
                step["chosen_logit"].as_f64().unwrap(),
            );
            check(
                format!("step {i}, logsumexp"),
                logsumexp(row),
                step["logsumexp"].as_f64().unwrap(),
            );
            let max_abs = row.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
            check(
                format!("step {i}, max |logit|"),
                max_abs,
                step["max_abs_logit"].as_f64().unwrap(),
            );
            let margin = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
            if margin >= MARGIN_CHECKED {
                assert_eq!(
                    contract::argmax(row) as usize,
                    chosen,
                    "{name}: step {i}: greedy token differs (reference margin {margin})"
                );
                greedy_checked += 1;
            } else {
                greedy_skipped += 1;
            }
        }
        if let Some(b64) = p["last_prompt_logits_f32le_b64"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64");
            let row = logits.row(prompt.len() - 1);
            assert_eq!(bytes.len(), row.len() * 4);
            for (j, (c, &got)) in bytes.chunks_exact(4).zip(row).enumerate() {
                let want = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                check(format!("full row, logit {j}"), got as f64, want as f64);
            }
        }
    }
    eprintln!(
        "worst |Δlogit| {worst:.3} (tolerance {LOGIT_TOLERANCE}); greedy tokens identical at \
         {greedy_checked} steps, {greedy_skipped} near-tie steps not compared"
    );
}
