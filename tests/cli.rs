//! The `ditto` binary on bad input: a message on stderr, a non-zero exit, never a panic.
//!
//! The binary target is declared by this (root) package, so cargo builds it before these tests
//! and passes its path in `CARGO_BIN_EXE_ditto`.

use ditto_engine::loader::Architecture;
use ditto_engine::testing::{tiny_model, write_hf_dir};
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
        let dir =
            std::env::temp_dir().join(format!("ditto-cli-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_hf_dir(&tiny_model(Architecture::Llama, 5).unwrap(), &dir).unwrap();
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
        let out = ditto(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stderr: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
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
