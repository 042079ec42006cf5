//! Loader tests on small synthetic GGUF and safetensors files written by the tests.

mod common;

use common::*;
use ditto_engine::loader::{self, Architecture, LoadedModel};
use ditto_engine::Error;
use ditto_shaders::contract::round_bf16_bits;
use std::collections::HashMap;

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const FF: usize = 64;
const LAYERS: usize = 2;
const TOKENS: [&str; 6] = ["<|endoftext|>", "<|im_start|>", "a", "b", "ab", "Ġ"];

/// Expected weights by Hugging Face name: shape and f32 values (before bf16 rounding).
type Expected = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// llama.cpp's converter permutation for llama q/k rows (what the loader must undo):
/// viewed as [heads, 2, hd/2, cols], axes 1 and 2 swapped.
fn permute_rows(v: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = v.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0.0; v.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..hd / 2 {
                let src = h * hd + i * (hd / 2) + j;
                let dst = h * hd + j * 2 + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A tiny model of `arch` ("llama", "qwen2", "qwen3") in F32 GGUF form, and what loading it
/// must give.
fn tiny(arch: &str, tied: bool) -> (Gguf, Expected) {
    let mut g = Gguf {
        version: 3,
        ..Default::default()
    };
    let k = |s: &str| format!("{arch}.{s}");
    g.kv("general.architecture", Val::Str(arch.into()));
    g.kv(&k("block_count"), Val::U32(LAYERS as u32));
    g.kv(&k("embedding_length"), Val::U32(HIDDEN as u32));
    g.kv(&k("feed_forward_length"), Val::U32(FF as u32));
    g.kv(&k("attention.head_count"), Val::U32(HEADS as u32));
    g.kv(&k("attention.head_count_kv"), Val::U32(KV_HEADS as u32));
    g.kv(&k("attention.layer_norm_rms_epsilon"), Val::F32(1e-5));
    g.kv(&k("rope.freq_base"), Val::F32(10000.0));
    g.kv(&k("context_length"), Val::U32(128));
    g.kv("tokenizer.ggml.model", Val::Str("gpt2".into()));
    g.kv("tokenizer.ggml.pre", Val::Str("gpt-2".into()));
    g.kv(
        "tokenizer.ggml.tokens",
        Val::StrArr(TOKENS.iter().map(|s| s.to_string()).collect()),
    );
    g.kv(
        "tokenizer.ggml.token_type",
        Val::I32Arr(vec![3, 3, 1, 1, 1, 1]),
    );
    g.kv("tokenizer.ggml.merges", Val::StrArr(vec!["a b".into()]));
    g.kv("tokenizer.ggml.bos_token_id", Val::U32(1));
    g.kv("tokenizer.ggml.eos_token_id", Val::U32(0));
    g.kv("tokenizer.ggml.add_bos_token", Val::Bool(false));
    g.kv("tokenizer.chat_template", Val::Str("{{ messages }}".into()));

    let mut exp = Expected::new();
    let mut seed = 0;
    let mut add =
        |g: &mut Gguf, gname: &str, hf: &str, shape: Vec<usize>, permute: Option<usize>| {
            seed += 1;
            let n: usize = shape.iter().product();
            let v = values(n, seed);
            let stored = match permute {
                Some(heads) => permute_rows(&v, heads, n / shape[0]),
                None => v.clone(),
            };
            g.tensors.push(GTensor {
                name: gname.into(),
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                ggml_type: 0,
                data: f32_bytes(&stored),
            });
            exp.insert(hf.into(), (shape, v));
        };
    let llama = arch == "llama";
    add(
        &mut g,
        "token_embd.weight",
        "model.embed_tokens.weight",
        vec![6, HIDDEN],
        None,
    );
    for i in 0..LAYERS {
        let b = format!("blk.{i}");
        let h = format!("model.layers.{i}");
        let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        add(
            &mut g,
            &format!("{b}.attn_norm.weight"),
            &format!("{h}.input_layernorm.weight"),
            vec![HIDDEN],
            None,
        );
        add(
            &mut g,
            &format!("{b}.ffn_norm.weight"),
            &format!("{h}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            None,
        );
        add(
            &mut g,
            &format!("{b}.attn_q.weight"),
            &format!("{h}.self_attn.q_proj.weight"),
            vec![q, HIDDEN],
            llama.then_some(HEADS),
        );
        add(
            &mut g,
            &format!("{b}.attn_k.weight"),
            &format!("{h}.self_attn.k_proj.weight"),
            vec![kv, HIDDEN],
            llama.then_some(KV_HEADS),
        );
        add(
            &mut g,
            &format!("{b}.attn_v.weight"),
            &format!("{h}.self_attn.v_proj.weight"),
            vec![kv, HIDDEN],
            None,
        );
        add(
            &mut g,
            &format!("{b}.attn_output.weight"),
            &format!("{h}.self_attn.o_proj.weight"),
            vec![HIDDEN, q],
            None,
        );
        if arch == "qwen2" {
            add(
                &mut g,
                &format!("{b}.attn_q.bias"),
                &format!("{h}.self_attn.q_proj.bias"),
                vec![q],
                None,
            );
            add(
                &mut g,
                &format!("{b}.attn_k.bias"),
                &format!("{h}.self_attn.k_proj.bias"),
                vec![kv],
                None,
            );
            add(
                &mut g,
                &format!("{b}.attn_v.bias"),
                &format!("{h}.self_attn.v_proj.bias"),
                vec![kv],
                None,
            );
        }
        if arch == "qwen3" {
            add(
                &mut g,
                &format!("{b}.attn_q_norm.weight"),
                &format!("{h}.self_attn.q_norm.weight"),
                vec![HEAD_DIM],
                None,
            );
            add(
                &mut g,
                &format!("{b}.attn_k_norm.weight"),
                &format!("{h}.self_attn.k_norm.weight"),
                vec![HEAD_DIM],
                None,
            );
        }
        add(
            &mut g,
            &format!("{b}.ffn_gate.weight"),
            &format!("{h}.mlp.gate_proj.weight"),
            vec![FF, HIDDEN],
            None,
        );
        add(
            &mut g,
            &format!("{b}.ffn_up.weight"),
            &format!("{h}.mlp.up_proj.weight"),
            vec![FF, HIDDEN],
            None,
        );
        add(
            &mut g,
            &format!("{b}.ffn_down.weight"),
            &format!("{h}.mlp.down_proj.weight"),
            vec![HIDDEN, FF],
            None,
        );
    }
    add(
        &mut g,
        "output_norm.weight",
        "model.norm.weight",
        vec![HIDDEN],
        None,
    );
    if !tied {
        add(
            &mut g,
            "output.weight",
            "lm_head.weight",
            vec![6, HIDDEN],
            None,
        );
    }
    (g, exp)
}

fn check_weights(m: &LoadedModel, exp: &Expected) {
    assert_eq!(m.tensors.len(), exp.len(), "tensor count");
    for (name, (shape, v)) in exp {
        let t = m
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(&t.shape, shape, "{name}");
        let want: Vec<u16> = v.iter().map(|&x| round_bf16_bits(x)).collect();
        assert!(t.data == want, "{name}: values differ");
    }
}

fn load_bytes(s: &Scratch, name: &str, bytes: &[u8]) -> ditto_engine::Result<LoadedModel> {
    let p = s.path(name);
    std::fs::write(&p, bytes).unwrap();
    loader::load(&p, false)
}

#[test]
fn gguf_llama_loads_and_unpermutes_q_k() {
    let s = Scratch::new("llama");
    let (g, exp) = tiny("llama", true);
    let m = load_bytes(&s, "m.gguf", &g.bytes()).unwrap();
    let c = &m.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_layers
        ),
        (6, HIDDEN, FF, LAYERS)
    );
    assert_eq!(
        (c.num_heads, c.num_kv_heads, c.head_dim),
        (HEADS, KV_HEADS, HEAD_DIM)
    );
    assert_eq!(c.rms_norm_eps.to_bits(), 1e-5f32.to_bits());
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.max_position_embeddings, 128);
    assert!(c.tie_word_embeddings);
    check_weights(&m, &exp);
    assert_eq!(m.generation.eos_token_ids, vec![0]);
    assert_eq!(m.generation.bos_token_id, Some(1));
    assert!(!m.generation.add_bos);
    assert_eq!(m.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(m.tokenizer.encode("ab a").unwrap(), vec![4, 5, 2]);
    assert_eq!(m.tokenizer.encode("<|im_start|>ab").unwrap(), vec![1, 4]);
    assert_eq!(m.tokenizer.decode(&[1, 4, 5, 3]).unwrap(), "ab b");
}

#[test]
fn gguf_v2_qwen2_and_qwen3_untied() {
    let s = Scratch::new("qwen");
    for arch in ["qwen2", "qwen3"] {
        let (mut g, exp) = tiny(arch, false);
        g.version = 2;
        let m = load_bytes(&s, "m.gguf", &g.bytes()).unwrap();
        assert!(!m.config.tie_word_embeddings);
        assert_eq!(
            m.config.architecture,
            if arch == "qwen2" {
                Architecture::Qwen2
            } else {
                Architecture::Qwen3
            }
        );
        // No permutation for qwen: the stored rows are the Hugging Face rows.
        check_weights(&m, &exp);
    }
}

fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

#[test]
fn gguf_tensor_types_dequantize() {
    let s = Scratch::new("types");
    let n = 6 * HIDDEN; // 6 rows of 32: one block per row.
    let vals = values(n, 99);
    type Case = (u32, Vec<u8>, Vec<u16>);
    let mut cases: Vec<Case> = Vec::new();
    // F16 and BF16.
    cases.push((
        1,
        vals.iter().flat_map(|&x| f16_bits(x)).collect(),
        vals.iter()
            .map(|&x| round_bf16_bits(half::f16::from_f32(x).to_f32()))
            .collect(),
    ));
    let bf: Vec<u16> = vals.iter().map(|&x| (x.to_bits() >> 16) as u16).collect();
    cases.push((
        30,
        bf.iter().flat_map(|b| b.to_le_bytes()).collect(),
        bf.iter()
            .map(|&b| round_bf16_bits(f32::from_bits((b as u32) << 16)))
            .collect(),
    ));
    // Quantized blocks with hand-chosen scales and integer codes.
    let (mut q8, mut q8w, mut q40, mut q40w, mut q41, mut q41w) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for row in 0..6 {
        let d = 0.01 * (row + 1) as f32;
        let dd = half::f16::from_f32(d).to_f32();
        let m = -0.3 * row as f32;
        let mm = half::f16::from_f32(m).to_f32();
        q8.extend(f16_bits(d));
        q40.extend(f16_bits(d));
        q41.extend(f16_bits(d));
        q41.extend(f16_bits(m));
        let codes: Vec<i32> = (0..32).map(|j| ((j * 7 + row * 3) % 255) - 127).collect();
        for &c in &codes {
            q8.push(c as i8 as u8);
            q8w.push(round_bf16_bits(c as f32 * dd));
        }
        let nib: Vec<u8> = (0..32).map(|j| ((j * 5 + row) % 16) as u8).collect();
        for j in 0..16 {
            q40.push(nib[j] | (nib[j + 16] << 4));
            q41.push(nib[j] | (nib[j + 16] << 4));
        }
        for &q in &nib {
            q40w.push(round_bf16_bits((q as f32 - 8.0) * dd));
            q41w.push(round_bf16_bits(q as f32 * dd + mm));
        }
    }
    cases.push((8, q8, q8w));
    cases.push((2, q40, q40w));
    cases.push((3, q41, q41w));

    for (ty, data, want) in cases {
        let (mut g, _) = tiny("llama", true);
        let t = g.tensor("token_embd.weight");
        t.ggml_type = ty;
        t.data = data;
        let m = load_bytes(&s, "m.gguf", &g.bytes()).unwrap_or_else(|e| panic!("type {ty}: {e}"));
        assert!(
            m.tensors["model.embed_tokens.weight"].data == want,
            "type {ty}"
        );
    }
}

fn expect_format(r: ditto_engine::Result<LoadedModel>, needle: &str) {
    match r {
        Err(Error::Format(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
        Err(e) => panic!("expected a Format error with {needle:?}, got {e:?}"),
        Ok(_) => panic!("expected a Format error with {needle:?}, got a model"),
    }
}

fn expect_unsupported(r: ditto_engine::Result<LoadedModel>, needle: &str) {
    match r {
        Err(Error::Unsupported(m)) => assert!(m.contains(needle), "message {m:?} lacks {needle:?}"),
        Err(e) => panic!("expected Unsupported with {needle:?}, got {e:?}"),
        Ok(_) => panic!("expected Unsupported with {needle:?}, got a model"),
    }
}

#[test]
fn missing_path_is_io_error_with_path() {
    let s = Scratch::new("missing");
    for p in [s.path("nope.gguf"), s.path("nodir")] {
        match loader::load(&p, false) {
            Err(Error::Io { path, .. }) => {
                assert!(path.contains("nope.gguf") || path.contains("nodir"))
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("loaded a missing file"),
        }
    }
}

#[test]
fn gguf_truncated_anywhere_is_an_error() {
    let s = Scratch::new("trunc");
    let (g, _) = tiny("llama", true);
    let full = g.bytes();
    let mut cuts: Vec<usize> = (0..full.len()).step_by(61).collect();
    cuts.push(full.len() - 1);
    for cut in cuts {
        match load_bytes(&s, "t.gguf", &full[..cut]) {
            Err(Error::Format(_)) => {}
            other => panic!("cut at {cut}: {:?}", other.err()),
        }
    }
}

#[test]
fn gguf_header_errors() {
    let s = Scratch::new("header");
    let (g, _) = tiny("llama", true);
    let mut b = g.bytes();
    b[0] = b'X';
    expect_format(load_bytes(&s, "m.gguf", &b), "not a GGUF file");

    let mut g4 = g.clone();
    g4.version = 7;
    expect_format(load_bytes(&s, "m.gguf", &g4.bytes()), "version 7");
    g4.version = 1;
    expect_unsupported(load_bytes(&s, "m.gguf", &g4.bytes()), "version 1");

    // A count far beyond the file must not allocate or loop: a clean error.
    let mut b = g.bytes();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_format(load_bytes(&s, "m.gguf", &b), "more than the file can hold");

    // An unknown metadata value type.
    let mut b = g.bytes();
    let first_type_at = 24 + 8 + "general.architecture".len();
    b[first_type_at..first_type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    expect_format(load_bytes(&s, "m.gguf", &b), "value type 77");

    let mut ga = g.clone();
    ga.kv("general.alignment", Val::U32(24));
    expect_format(load_bytes(&s, "m.gguf", &ga.bytes()), "power of two");
}

#[test]
fn gguf_model_errors() {
    let s = Scratch::new("model");
    let (g, _) = tiny("llama", true);

    let mut x = g.clone();
    x.kv("general.architecture", Val::Str("gpt2".into()));
    expect_unsupported(
        load_bytes(&s, "m.gguf", &x.bytes()),
        "architecture \"gpt2\"",
    );

    let mut x = g.clone();
    x.tensor("blk.1.ffn_up.weight").ggml_type = 12;
    expect_unsupported(load_bytes(&s, "m.gguf", &x.bytes()), "Q4_K");
    x.tensor("blk.1.ffn_up.weight").ggml_type = 1234;
    expect_unsupported(
        load_bytes(&s, "m.gguf", &x.bytes()),
        "unknown GGML type id 1234",
    );

    // Wrong shape vs the config (same byte count, transposed dims).
    let mut x = g.clone();
    x.tensor("blk.0.ffn_down.weight").dims = vec![32, 64];
    expect_format(
        load_bytes(&s, "m.gguf", &x.bytes()),
        "blk.0.ffn_down.weight has shape",
    );

    let mut x = g.clone();
    x.kv("llama.feed_forward_length", Val::U32(48));
    expect_format(load_bytes(&s, "m.gguf", &x.bytes()), "the config implies");

    let mut x = g.clone();
    x.tensors.retain(|t| t.name != "blk.1.attn_v.weight");
    expect_format(
        load_bytes(&s, "m.gguf", &x.bytes()),
        "missing tensor model.layers.1.self_attn.v_proj.weight (GGUF name blk.1.attn_v.weight)",
    );

    let mut x = g.clone();
    x.remove_kv("llama.block_count");
    expect_format(load_bytes(&s, "m.gguf", &x.bytes()), "llama.block_count");

    let mut x = g.clone();
    x.kv("llama.attention.head_count_kv", Val::U32(3));
    expect_format(load_bytes(&s, "m.gguf", &x.bytes()), "key/value heads");

    // Quantized rows must be whole blocks.
    let mut x = g.clone();
    let t = x.tensor("blk.0.attn_norm.weight");
    t.ggml_type = 8;
    t.dims = vec![32];
    t.data = vec![0; 34];
    assert!(load_bytes(&s, "m.gguf", &x.bytes()).is_ok());
    x.tensor("token_embd.weight").dims = vec![16, 12];
    x.tensor("token_embd.weight").ggml_type = 8;
    expect_format(load_bytes(&s, "m.gguf", &x.bytes()), "multiple of 32");

    let mut x = g.clone();
    x.kv("tokenizer.ggml.pre", Val::Str("mystery".into()));
    expect_unsupported(load_bytes(&s, "m.gguf", &x.bytes()), "mystery");

    let mut x = g.clone();
    x.tensors.push(GTensor {
        name: "blk.0.attn_q.bias".into(),
        dims: vec![32],
        ggml_type: 0,
        data: vec![0; 128],
    });
    expect_unsupported(load_bytes(&s, "m.gguf", &x.bytes()), "q_proj biases");
}

/// Tokenizer pre-tokenizer variants: digits "12345" with merges that tell them apart.
#[test]
fn gguf_pre_tokenizers_split_digits_as_their_families() {
    let s = Scratch::new("pre");
    let toks: Vec<String> = [
        "<|endoftext|>",
        "1",
        "2",
        "3",
        "4",
        "5",
        "12",
        "123",
        "34",
        "45",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    let merges: Vec<String> = ["3 4", "1 2", "12 3", "4 5"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    let cases: [(&str, Vec<u32>); 5] = [
        ("gpt-2", vec![6, 8, 5]),
        ("smollm", vec![6, 8, 5]),
        ("starcoder", vec![1, 2, 3, 4, 5]),
        ("llama-bpe", vec![7, 9]),
        ("qwen2", vec![1, 2, 3, 4, 5]),
    ];
    for (pre, want) in cases {
        let (mut g, _) = tiny("llama", true);
        g.kv("tokenizer.ggml.pre", Val::Str(pre.into()));
        g.kv("tokenizer.ggml.tokens", Val::StrArr(toks.clone()));
        g.kv(
            "tokenizer.ggml.token_type",
            Val::I32Arr(vec![3, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        );
        g.kv("tokenizer.ggml.merges", Val::StrArr(merges.clone()));
        let rows = toks.len() as u64;
        let t = g.tensor("token_embd.weight");
        t.dims = vec![HIDDEN as u64, rows];
        t.data = f32_bytes(&values(HIDDEN * rows as usize, 5));
        let m = load_bytes(&s, "m.gguf", &g.bytes()).unwrap_or_else(|e| panic!("{pre}: {e}"));
        assert_eq!(m.tokenizer.encode("12345").unwrap(), want, "pre {pre}");
        assert_eq!(m.tokenizer.decode(&want).unwrap(), "12345");
    }
}

// ---- Hugging Face directories ----

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<|endoftext|>": 0, "<|im_start|>": 1, "a": 2, "b": 3, "ab": 4, "Ġ": 5},
            "merges": [["a", "b"]]}
}"#;

fn hf_config(arch: &str, tied: bool) -> serde_json::Value {
    serde_json::json!({
        "architectures": [arch],
        "vocab_size": 6,
        "hidden_size": HIDDEN,
        "intermediate_size": FF,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "eos_token_id": 0,
    })
}

/// Writes an HF directory for `arch` from the expected weights; dtypes cycle F32/BF16/F16.
/// Returns the expected bf16 bits by name.
fn write_hf(
    s: &Scratch,
    arch: &str,
    gguf_arch: &str,
    tied: bool,
    shards: bool,
) -> HashMap<String, Vec<u16>> {
    let (_, exp) = tiny(gguf_arch, tied);
    let mut names: Vec<&String> = exp.keys().collect();
    names.sort();
    let mut files: Vec<Vec<StTensor>> = vec![vec![], vec![]];
    let mut want = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let (shape, v) = &exp[*name];
        let (dtype, data, w): (&str, Vec<u8>, Vec<u16>) = match i % 3 {
            0 => (
                "F32",
                f32_bytes(v),
                v.iter().map(|&x| round_bf16_bits(x)).collect(),
            ),
            1 => {
                let b: Vec<u16> = v.iter().map(|&x| (x.to_bits() >> 16) as u16).collect();
                (
                    "BF16",
                    b.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    b.iter()
                        .map(|&x| round_bf16_bits(f32::from_bits((x as u32) << 16)))
                        .collect(),
                )
            }
            _ => (
                "F16",
                v.iter().flat_map(|&x| f16_bits(x)).collect(),
                v.iter()
                    .map(|&x| round_bf16_bits(half::f16::from_f32(x).to_f32()))
                    .collect(),
            ),
        };
        files[if shards { i % 2 } else { 0 }].push(((*name).clone(), dtype, shape.clone(), data));
        want.insert((*name).clone(), w);
    }
    if shards {
        let mut map = serde_json::Map::new();
        for (k, f) in files.iter().enumerate() {
            let fname = format!("model-0000{}-of-00002.safetensors", k + 1);
            std::fs::write(s.path(&fname), safetensors_bytes(f)).unwrap();
            for t in f {
                map.insert(t.0.clone(), serde_json::Value::String(fname.clone()));
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(s.path("model.safetensors.index.json"), index.to_string()).unwrap();
    } else {
        std::fs::write(s.path("model.safetensors"), safetensors_bytes(&files[0])).unwrap();
    }
    std::fs::write(s.path("config.json"), hf_config(arch, tied).to_string()).unwrap();
    std::fs::write(s.path("tokenizer.json"), TOKENIZER_JSON).unwrap();
    want
}

fn check_bits(m: &LoadedModel, want: &HashMap<String, Vec<u16>>) {
    assert_eq!(m.tensors.len(), want.len());
    for (k, w) in want {
        assert!(&m.tensors[k].data == w, "{k}");
    }
}

#[test]
fn hf_directory_loads() {
    let s = Scratch::new("hf");
    let want = write_hf(
        &s,
        "LlamaForCausalLM",
        "qwen3", /* unpermuted layout */
        true,
        false,
    );
    // qwen3's extra q/k norms are ignored by a Llama config; drop them from the expectation.
    let want: HashMap<_, _> = want
        .into_iter()
        .filter(|(k, _)| !k.contains("_norm."))
        .collect();
    std::fs::write(
        s.path("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|endoftext|>", "add_bos_token": true, "chat_template": "T1"}"#,
    )
    .unwrap();
    std::fs::write(
        s.path("generation_config.json"),
        r#"{"eos_token_id": [0, 1, 0], "do_sample": true, "temperature": 0.6, "top_k": 20, "top_p": 0.95}"#,
    )
    .unwrap();
    let m = loader::load(&s.0, false).unwrap();
    check_bits(&m, &want);
    let c = &m.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(c.head_dim, HIDDEN / HEADS);
    assert_eq!(c.rope_theta, 500000.0);
    assert!(c.tie_word_embeddings && c.rope_scaling.is_none());
    assert_eq!(m.chat_template.as_deref(), Some("T1"));
    let g = &m.generation;
    assert_eq!(g.eos_token_ids, vec![0, 1]);
    assert_eq!(g.bos_token_id, Some(1));
    assert!(g.add_bos);
    assert_eq!(
        (g.temperature, g.top_k, g.top_p),
        (Some(0.6), Some(20), Some(0.95))
    );

    // chat_template.jinja wins; eos as a single int; greedy configs give no sampling defaults.
    std::fs::write(s.path("chat_template.jinja"), "T2").unwrap();
    std::fs::write(
        s.path("generation_config.json"),
        r#"{"eos_token_id": 1, "temperature": 0.6}"#,
    )
    .unwrap();
    std::fs::remove_file(s.path("tokenizer_config.json")).unwrap();
    let m = loader::load(&s.0, false).unwrap();
    assert_eq!(m.chat_template.as_deref(), Some("T2"));
    assert_eq!(m.generation.eos_token_ids, vec![1]);
    assert_eq!(m.generation.temperature, None);
    // No add_bos_token and a post-processor that adds nothing: no BOS.
    assert!(!m.generation.add_bos);
}

#[test]
fn hf_sharded_qwen2_and_llama3_rope() {
    let s = Scratch::new("hf-shards");
    let want = write_hf(&s, "Qwen2ForCausalLM", "qwen2", false, true);
    let m = loader::load(&s.0, true).unwrap();
    assert_eq!(m.config.architecture, Architecture::Qwen2);
    check_bits(&m, &want);

    let s = Scratch::new("hf-llama3");
    write_hf(&s, "LlamaForCausalLM", "llama", true, false);
    let mut cfg = hf_config("LlamaForCausalLM", true);
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    cfg["head_dim"] = serde_json::json!(HEAD_DIM);
    std::fs::write(s.path("config.json"), cfg.to_string()).unwrap();
    let m = loader::load(&s.0, false).unwrap();
    let r = m.config.rope_scaling.unwrap();
    assert_eq!((r.factor, r.original_max_position_embeddings), (8.0, 8192));

    cfg["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
    std::fs::write(s.path("config.json"), cfg.to_string()).unwrap();
    expect_unsupported(loader::load(&s.0, false), "yarn");
}

#[test]
fn hf_errors() {
    let s = Scratch::new("hf-err");
    write_hf(&s, "LlamaForCausalLM", "qwen3", true, false);
    let good = std::fs::read(s.path("model.safetensors")).unwrap();

    // Truncated safetensors.
    std::fs::write(s.path("model.safetensors"), &good[..good.len() - 3]).unwrap();
    expect_format(loader::load(&s.0, false), "safetensors");
    std::fs::write(s.path("model.safetensors"), &good[..5]).unwrap();
    expect_format(loader::load(&s.0, false), "safetensors");
    std::fs::write(s.path("model.safetensors"), &good).unwrap();

    let mut cfg = hf_config("GPTNeoXForCausalLM", true);
    std::fs::write(s.path("config.json"), cfg.to_string()).unwrap();
    expect_unsupported(loader::load(&s.0, false), "GPTNeoXForCausalLM");

    cfg = hf_config("LlamaForCausalLM", true);
    cfg["intermediate_size"] = serde_json::json!(48);
    std::fs::write(s.path("config.json"), cfg.to_string()).unwrap();
    expect_format(loader::load(&s.0, false), "the config implies");

    // Untied but no lm_head.
    std::fs::write(
        s.path("config.json"),
        hf_config("LlamaForCausalLM", false).to_string(),
    )
    .unwrap();
    expect_format(loader::load(&s.0, false), "missing tensor lm_head.weight");

    cfg = hf_config("LlamaForCausalLM", true);
    cfg.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(s.path("config.json"), cfg.to_string()).unwrap();
    expect_format(loader::load(&s.0, false), "missing hidden_size");

    // An unsupported dtype.
    let st = safetensors_bytes(&[(
        "model.embed_tokens.weight".into(),
        "I32",
        vec![6, HIDDEN],
        vec![0; 6 * HIDDEN * 4],
    )]);
    std::fs::write(
        s.path("config.json"),
        hf_config("LlamaForCausalLM", true).to_string(),
    )
    .unwrap();
    std::fs::write(s.path("model.safetensors"), st).unwrap();
    expect_unsupported(loader::load(&s.0, false), "I32");

    std::fs::remove_file(s.path("model.safetensors")).unwrap();
    match loader::load(&s.0, false) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("model.safetensors")),
        other => panic!("{:?}", other.err()),
    }
    std::fs::remove_file(s.path("config.json")).unwrap();
    match loader::load(&s.0, false) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("config.json")),
        other => panic!("{:?}", other.err()),
    }
}
