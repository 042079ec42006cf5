//! The `ditto` binary on bad input: a message on stderr, a non-zero exit, never a panic.
//!
//! The binary target is declared by this (root) package, so cargo builds it before these tests
//! and passes its path in `CARGO_BIN_EXE_ditto`.

mod common;

use ditto_engine::loader::Architecture;
use ditto_engine::loader::LoadedModel;
use ditto_engine::testing::{model_with_config, tiny_config, tiny_model, write_hf_dir};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};

fn ditto(args: &[OsString]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ditto"))
        .args(args)
        .output()
        .expect("the ditto binary runs")
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A tiny random model written as a Hugging Face directory in a fresh temporary folder, removed
/// when dropped.
struct TinyModelDir(PathBuf);

impl TinyModelDir {
    fn new(name: &str) -> Self {
        Self::with_model(name, tiny_model(Architecture::Llama, 5).unwrap())
    }
    fn with_model(name: &str, model: LoadedModel) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ditto-cli-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_hf_dir(&model, &dir).unwrap();
        TinyModelDir(dir)
    }
    fn path(&self) -> OsString {
        self.0.clone().into_os_string()
    }
}

impl Drop for TinyModelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `ditto` with `args`, which must succeed and print one JSON object: that object.
fn ditto_json(args: &[OsString]) -> serde_json::Value {
    let out = ditto(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Fails the test unless the run failed cleanly: non-zero status, no panic, stderr containing
/// `needle`.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

#[test]
fn missing_model() {
    let out = ditto(&os(&[
        "generate",
        "--model",
        "/definitely/not/a/model",
        "--prompt",
        "hi",
        "--backend",
        "cpu",
    ]));
    assert_clean_failure(&out, "model not found");
}

#[test]
fn empty_prompt() {
    let dir = TinyModelDir::new("empty");
    let mut args = os(&["generate", "--backend", "cpu", "--prompt", "", "--model"]);
    args.push(dir.path());
    assert_clean_failure(&ditto(&args), "prompt is empty");
}

#[cfg(unix)]
#[test]
fn non_utf8_prompt() {
    use std::os::unix::ffi::OsStringExt;
    let dir = TinyModelDir::new("utf8");
    let mut args = os(&["generate", "--backend", "cpu", "--model"]);
    args.push(dir.path());
    args.push("--prompt".into());
    args.push(OsString::from_vec(vec![b'h', 0xff, b'i']));
    assert_clean_failure(&ditto(&args), "not valid UTF-8");
}

#[test]
fn bad_usage() {
    assert_clean_failure(&ditto(&os(&["generate", "--prompt", "x"])), "--model");
    assert_clean_failure(&ditto(&os(&["frobnicate"])), "frobnicate");
    let out = ditto(&os(&[
        "generate",
        "--model",
        "m",
        "--prompt",
        "x",
        "--max-tokens",
        "lots",
    ]));
    assert_clean_failure(&out, "lots");
}

#[test]
fn devices_lists_cpu() {
    let out = ditto(&os(&["devices"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cpu"));
}

#[test]
fn prompt_longer_than_context() {
    // The tiny model's context is 640 positions.
    let dir = TinyModelDir::new("long");
    let mut args = os(&[
        "generate",
        "--backend",
        "cpu",
        "--max-tokens",
        "8",
        "--model",
    ]);
    args.push(dir.path());
    args.push("--prompt".into());
    args.push("a".repeat(700).into());
    assert_clean_failure(&ditto(&args), "longer than the context");
}

/// The whole path, JSON output, determinism.
#[test]
fn generate_json_is_deterministic() {
    let dir = TinyModelDir::new("json");
    let mut args = os(&[
        "generate",
        "--backend",
        "cpu",
        "--json",
        "--max-tokens",
        "5",
        "--model",
    ]);
    args.push(dir.path());
    args.extend(os(&["--prompt", "hello"]));
    let a = ditto(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let text = String::from_utf8(a.stdout).unwrap();
    for key in [
        "\"tokens\"",
        "\"text\"",
        "\"backend\":\"cpu\"",
        "\"kernels\":\"invariant\"",
        "\"contract\"",
        "\"logits_sha256\"",
        "\"prompt_tokens\":6",
    ] {
        assert!(text.contains(key), "{key} missing in {text}");
    }
    // Everything but the timings must repeat exactly.
    let without_timings = |json: &str| {
        let mut v: serde_json::Value = serde_json::from_str(json).expect("--json prints JSON");
        let object = v.as_object_mut().expect("a JSON object");
        object.retain(|key, _| !key.ends_with("_per_s"));
        v
    };
    let b = ditto(&args);
    assert_eq!(
        without_timings(&text),
        without_timings(&String::from_utf8(b.stdout).unwrap())
    );
}

/// `ditto bench determinism` on the cpu backend with a tiny model: every sample agrees (greedy
/// and sampled), the JSON has the promised fields, and bad arguments fail cleanly.
#[test]
fn bench_determinism_json() {
    let dir = TinyModelDir::new("bench");
    for temperature in ["0", "0.8"] {
        let mut args = os(&["bench", "determinism", "--model"]);
        args.push(dir.path());
        args.extend(os(&[
            "--prompt",
            "hello world",
            "--samples",
            "6",
            "--max-batch",
            "3",
            "--max-tokens",
            "4",
            "--prefill-chunk",
            "3",
            "--temperature",
            temperature,
            "--seed",
            "9",
            "--backend",
            "cpu",
            "--json",
        ]));
        let v = ditto_json(&args);
        assert_eq!(v["samples"], 6);
        assert_eq!(v["distinct_completions"], 1, "{v}");
        assert_eq!(v["distinct_logits_sha256"], 1, "{v}");
        assert!(v["seconds"].as_f64().is_some());
        assert!(v["batch_size_max"].as_u64().unwrap() > 1, "{v}");
    }
    let mut args = os(&["bench", "determinism", "--model"]);
    args.push(dir.path());
    args.extend(os(&[
        "--prompt",
        "hi",
        "--samples",
        "0",
        "--backend",
        "cpu",
    ]));
    assert_clean_failure(&ditto(&args), "--samples");
}

fn wgpu_required() -> bool {
    std::env::var("DITTO_REQUIRE_WGPU").as_deref() == Ok("1")
}

/// Runs `ditto verify --json` with `extra` arguments; returns the exit success and the JSON.
fn verify_json(model: OsString, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut args = os(&["verify", "--json", "--model"]);
    args.push(model);
    args.extend(os(extra));
    let out = ditto(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stderr: {stderr}"));
    (out.status.success(), v)
}

/// The backends of a verify report that ran.
fn ran(v: &serde_json::Value) -> Vec<String> {
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "ok")
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// `ditto verify` on the test model, on the cpu backend and every wgpu adapter (lavapipe on CI:
/// one short prompt and two tokens, as lavapipe takes seconds per forward call): every
/// composition on every backend gives one fingerprint.
#[test]
fn verify_test_model_on_every_backend() {
    let Some(model) = common::test_model(true) else {
        return;
    };
    let prompts = TempFile::new("verify-smollm2", "2 + 2 =\n");
    let (ok, v) = verify_json(
        model.into_os_string(),
        &[
            "--prompts",
            prompts.path(),
            "--max-tokens",
            "2",
            "--chunk",
            "3",
            "--all-adapters",
        ],
    );
    assert!(ok, "{v}");
    assert_eq!(v["verdict"], "pass", "{v}");
    assert_eq!(v["kernels"], "invariant");
    assert_eq!(v["mismatches"].as_array().unwrap().len(), 0);
    assert_eq!(v["prompts"][0]["distinct_fingerprints"], 1, "{v}");
    let ran = ran(&v);
    assert!(ran.contains(&"cpu".to_string()), "{v}");
    if wgpu_required() {
        assert!(ran.iter().any(|b| b.starts_with("wgpu")), "{v}");
    }
    for b in v["backends"].as_array().unwrap() {
        if b["status"] == "ok" {
            assert_eq!(b["fingerprints"].as_array().unwrap().len(), 3, "{b}");
            assert!(b["batched_max_sequences"].as_u64().unwrap() >= 2, "{b}");
            assert!(b["batched_mixed_calls"].as_u64().unwrap() >= 1, "{b}");
        } else {
            assert!(b["reason"].is_string(), "{b}");
        }
    }
}

/// Writes `text` to a fresh temporary file, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("ditto-cli-test-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The negative control of `verify`: on the wgpu backend the `default` kernels (a split-K GEMV
/// for calls of up to 8 rows, the invariant GEMM above) give other bits for a prompt prefilled
/// in small chunks than for one prefilled whole, and `verify` must say so and fail. The
/// invariant kernels, on the same model, prompt and adapters, pass; the cpu backend, which has
/// no default kernels, is unavailable. The model is random, with dot products of 512 and 1024
/// terms (the tiny model's 64-term sums of bf16 products are often exact in any order, so they
/// would not show the difference).
#[test]
fn verify_fails_when_kernels_disagree() {
    let config = ditto_engine::loader::ModelConfig {
        hidden_size: 512,
        intermediate_size: 1024,
        num_heads: 8,
        num_kv_heads: 2,
        head_dim: 64,
        ..tiny_config(Architecture::Llama)
    };
    let dir = TinyModelDir::with_model("verify", model_with_config(config, 7).unwrap());
    let prompts = TempFile::new("verify-prompts", "2 + 2 = 4, and 3 + 3 =\n");
    let common = ["--all-adapters", "--max-tokens", "2", "--chunk", "4"];
    let (ok, v) = verify_json(
        dir.path(),
        &[&common[..], &["--prompts", prompts.path()]].concat(),
    );
    assert!(ok, "{v}");
    assert_eq!(v["verdict"], "pass");
    let invariant_ran = ran(&v);

    let (ok, v) = verify_json(
        dir.path(),
        &[
            &common[..],
            &["--prompts", prompts.path(), "--kernels", "default"],
        ]
        .concat(),
    );
    assert!(!ok, "{v}");
    assert_eq!(v["verdict"], "fail", "{v}");
    let cpu = &v["backends"][0];
    assert_eq!(cpu["name"], "cpu");
    assert_eq!(cpu["status"], "unavailable", "{v}");
    if ran(&v).is_empty() {
        assert!(!wgpu_required(), "no wgpu backend ran: {v}");
        assert!(!invariant_ran.iter().any(|b| b.starts_with("wgpu")));
        eprintln!("skipped the wgpu part: no wgpu adapter");
        return;
    }
    let mismatches = v["mismatches"].as_array().unwrap();
    assert!(!mismatches.is_empty(), "{v}");
    for m in mismatches {
        assert_ne!(m["logits_sha256"], m["reference"]["logits_sha256"], "{m}");
    }
}

/// `ditto bench speed` on the test model with tiny sizes: one JSON row per test, with
/// positive rates, the repetitions asked for, and B×N tokens for tgN@B.
#[test]
fn bench_speed_json() {
    let Some(model) = common::test_model(true) else {
        return;
    };
    let mut args = os(&["bench", "speed", "--model"]);
    args.push(model.into_os_string());
    args.extend(os(&[
        "--backend",
        "cpu",
        "--tests",
        "pp16,tg4,tg2@3",
        "--reps",
        "1",
        "--json",
    ]));
    let v = ditto_json(&args);
    let rows = v["rows"].as_array().unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp16", "tg4", "tg2@3"]);
    for (r, (tokens, batch)) in rows.iter().zip([(16, 1), (4, 1), (6, 3)]) {
        assert_eq!(r["backend"], "cpu", "{r}");
        assert_eq!(r["kernels"], "invariant", "{r}");
        assert_eq!(r["tokens"], tokens, "{r}");
        assert_eq!(r["batch"], batch, "{r}");
        assert_eq!(r["reps"], 1, "{r}");
        assert_eq!(r["seconds"].as_array().unwrap().len(), 1, "{r}");
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["tokens_per_s_stddev"].as_f64(), Some(0.0), "{r}");
    }
    assert!(v["params"].as_u64().unwrap() > 100_000_000);
    assert_eq!(v["ratios"].as_array().unwrap().len(), 0);

    let mut bad = os(&["bench", "speed", "--model", "m", "--tests", "tg4@0"]);
    assert_clean_failure(&ditto(&bad), "tg4@0");
    bad = os(&["bench", "speed", "--model", "m", "--reps", "0"]);
    assert_clean_failure(&ditto(&bad), "--reps");
}

/// `--kernels both`: the cpu backend has no default kernels, a clean error before anything
/// runs; on wgpu (the tiny model) both runs are reported with their times and the ratio, and
/// the invariant one is deterministic.
#[test]
fn bench_kernels_both() {
    let dir = TinyModelDir::new("both");
    for extra in [&["determinism", "--prompt", "hi"][..], &["speed"]] {
        let mut args = os(&["bench"]);
        args.extend(os(extra));
        args.extend(os(&["--kernels", "both", "--backend", "cpu", "--model"]));
        args.push(dir.path());
        assert_clean_failure(&ditto(&args), "only the invariant kernels");
    }
    let opened = ditto(&os(&["devices"]));
    if !String::from_utf8_lossy(&opened.stdout).contains("wgpu 0") {
        assert!(!wgpu_required(), "no wgpu adapter");
        eprintln!("skipped the wgpu part: no wgpu adapter");
        return;
    }
    let mut args = os(&["bench", "determinism", "--model"]);
    args.push(dir.path());
    args.extend(os(&[
        "--prompt",
        "hello",
        "--samples",
        "3",
        "--max-batch",
        "2",
        "--max-tokens",
        "3",
        "--backend",
        "wgpu",
        "--kernels",
        "both",
        "--json",
    ]));
    let v = ditto_json(&args);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["kernels"], "invariant");
    assert_eq!(runs[1]["kernels"], "default");
    assert_eq!(runs[0]["distinct_completions"], 1, "{v}");
    assert_eq!(runs[0]["distinct_logits_sha256"], 1, "{v}");
    for r in runs {
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
        assert!(r["batch_size_max"].as_u64().unwrap() >= 1);
    }
    assert!(v["seconds_ratio_invariant_over_default"].as_f64().unwrap() > 0.0);

    let mut args = os(&["bench", "speed", "--model"]);
    args.push(dir.path());
    args.extend(os(&[
        "--backend",
        "wgpu",
        "--kernels",
        "both",
        "--tests",
        "pp8,tg2",
        "--reps",
        "1",
        "--json",
    ]));
    let v = ditto_json(&args);
    assert_eq!(v["rows"].as_array().unwrap().len(), 4);
    let ratios = v["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 2);
    assert!(ratios[0]["invariant_over_default_time"].as_f64().unwrap() > 0.0);
}
