//! The test model (SmolLM2-135M-Instruct, Q4_1 GGUF): loading, config, weights decoded
//! independently from the raw file, and the tokenizer rebuilt from GGUF metadata against
//! SmolLM2's Hugging Face tokenizer.
//!
//! Needs `models/SmolLM2-135M-Instruct.Q4_1.gguf` (scripts/fetch-test-model.sh); skips with a
//! message when absent unless `DITTO_REQUIRE_MODEL=1`. The full cross-check against the
//! reference `tokenizer.json` also needs that file (`DITTO_REFERENCE_TOKENIZER`, default
//! `../shared/models/smollm2-tokenizer/tokenizer.json` beside the repository); without it the
//! committed golden ids in `tests/data/smollm2_tokens.json` (made from that file) are used.

mod common;

use ditto_engine::loader::{self, gguf, Architecture, LoadedModel};
use ditto_engine::tokenizer::Tokenizer;
use ditto_shaders::contract::round_bf16_bits;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

fn model() -> Option<&'static LoadedModel> {
    static M: OnceLock<Option<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| {
        let p = common::test_model()?;
        let t = Instant::now();
        let m = loader::load(&p, false).expect("loading the test model");
        eprintln!("loaded {} in {:.2?}", p.display(), t.elapsed());
        Some(m)
    })
    .as_ref()
}

fn reference_tokenizer() -> Option<Tokenizer> {
    let p = match std::env::var_os("DITTO_REFERENCE_TOKENIZER") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/models/smollm2-tokenizer/tokenizer.json"),
    };
    if !p.is_file() {
        eprintln!("no reference tokenizer at {}: golden ids only", p.display());
        return None;
    }
    Some(Tokenizer::from_file(&p).expect("reference tokenizer"))
}

#[test]
fn smollm2_config_and_tensors() {
    let Some(m) = model() else { return };
    let c = &m.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(c.num_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(c.rms_norm_eps.to_bits(), 1e-5f32.to_bits());
    assert!(c.rope_scaling.is_none());
    assert_eq!(m.tensors.len(), 1 + 30 * 9 + 1);
    assert!(!m.tensors.contains_key("lm_head.weight"));
    for (name, shape) in loader::expected_tensors(c) {
        assert_eq!(m.tensors[&name].shape, shape, "{name}");
    }
    assert_eq!(m.generation.eos_token_ids, vec![2]);
    assert_eq!(m.generation.bos_token_id, Some(1));
    assert!(!m.generation.add_bos);
    let tpl = m.chat_template.as_deref().unwrap();
    assert!(tpl.contains("<|im_start|>") && tpl.contains("add_generation_prompt"));
    assert_eq!(c.rope_inv_freq().len(), 32);
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Decodes row `row` of a GGUF matrix straight from the file bytes (Q8_0 or Q4_1), written
/// here independently of the loader's decoder.
fn raw_row(file: &[u8], h: &gguf::GgufHeader, name: &str, row: usize) -> Vec<u16> {
    let t = h.tensors.iter().find(|t| t.name == name).unwrap();
    let cols = t.dims[0] as usize;
    let start = (h.data_offset + t.offset) as usize;
    let mut out = Vec::with_capacity(cols);
    match t.ggml_type {
        8 => {
            let rb = cols / 32 * 34;
            for blk in file[start + row * rb..start + (row + 1) * rb].chunks(34) {
                let d = f16(&blk[0..2]);
                for &q in &blk[2..] {
                    out.push(round_bf16_bits((q as i8) as f32 * d));
                }
            }
        }
        3 => {
            let rb = cols / 32 * 20;
            for blk in file[start + row * rb..start + (row + 1) * rb].chunks(20) {
                let (d, m) = (f16(&blk[0..2]), f16(&blk[2..4]));
                let mut vals = [0u16; 32];
                for j in 0..16 {
                    vals[j] = round_bf16_bits((blk[4 + j] & 15) as f32 * d + m);
                    vals[j + 16] = round_bf16_bits((blk[4 + j] >> 4) as f32 * d + m);
                }
                out.extend(vals);
            }
        }
        t => panic!("type {t}"),
    }
    out
}

#[test]
fn smollm2_weights_match_raw_file() {
    let Some(m) = model() else { return };
    let path = common::test_model().unwrap();
    let file = std::fs::read(&path).unwrap();
    let h = gguf::parse_header(&file, "test model").unwrap();
    let row = |name: &str, r: usize| {
        let t = &m.tensors[name];
        let cols = t.shape[1];
        t.data[r * cols..(r + 1) * cols].to_vec()
    };
    for r in [0, 1, 2, 1000, 49151] {
        assert_eq!(
            row("model.embed_tokens.weight", r),
            raw_row(&file, &h, "token_embd.weight", r)
        );
    }
    for r in [0, 63, 191] {
        assert_eq!(
            row("model.layers.0.self_attn.v_proj.weight", r),
            raw_row(&file, &h, "blk.0.attn_v.weight", r)
        );
    }
    // q (9 heads) and k (3 heads) of head_dim 64: HF row h·64 + i·32 + j is GGUF row h·64 + 2j + i.
    for (hf, g, heads) in [
        (
            "model.layers.7.self_attn.q_proj.weight",
            "blk.7.attn_q.weight",
            9,
        ),
        (
            "model.layers.7.self_attn.k_proj.weight",
            "blk.7.attn_k.weight",
            3,
        ),
    ] {
        for head in 0..heads {
            for (i, j) in [(0, 0), (0, 31), (1, 0), (1, 17)] {
                let hf_row = head * 64 + i * 32 + j;
                let g_row = head * 64 + 2 * j + i;
                assert_eq!(
                    row(hf, hf_row),
                    raw_row(&file, &h, g, g_row),
                    "{hf} row {hf_row}"
                );
            }
        }
    }
}

/// Fixed test strings: ASCII, code, whitespace runs, Unicode, emoji, special tokens.
fn fixed_strings() -> Vec<String> {
    [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure you'll see they've done it, don't you?",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "def f(x):\n\treturn x ** 2  # square\n",
        "    leading spaces and trailing   ",
        "a  b   c    d\n\n\n e\t\t f\r\n g",
        "\n",
        " ",
        "",
        "1234567890 3.14159 -42 1e-5 0x1F",
        "Café naïve façade résumé Straße",
        "日本語のテキスト、中文文本。",
        "Привет, мир! Γειά σου Κόσμε مرحبا بالعالم שלום",
        "emoji 😀👍🏽🏳️‍🌈👨‍👩‍👧 ❤️ ✨",
        "zero\u{200b}width e\u{301} combining",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|><repo_name>x<file_sep>y<|im_end|>",
        "text<|im_start|>glued<|im_end|>text",
        "<|im_start |> not special <im_start>",
        "https://example.com/path?q=1&r=two#frag",
        "SELECT * FROM users WHERE id = 42;",
        "~!@#$%^&*()_+`-=[]{}|;':\",./<>?",
        "ALLCAPS MixedCase camelCase snake_case kebab-case",
        "\u{feff}BOM and \u{0}nul and \u{7f}del",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Deterministic random strings from mixed pieces.
fn random_strings(n: usize, seed: u64) -> Vec<String> {
    let pieces = [
        "a",
        "Z",
        "the",
        " the",
        "Hello",
        "don't",
        "'s",
        "'LL",
        "42",
        "7",
        ".",
        ",",
        "!?",
        "(",
        ")",
        "{",
        "}",
        "==",
        "->",
        "//",
        "/*",
        "::",
        "\"",
        "'",
        "`",
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\t",
        "\r\n",
        " \n ",
        "é",
        "ß",
        "ñ",
        "日本",
        "語",
        "Привет",
        "مرحبا",
        "😀",
        "👍🏽",
        "🏳️‍🌈",
        "\u{200b}",
        "e\u{301}",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<repo_name>",
        "<|im_start",
        "|>",
        "fn",
        "return",
        "    ",
        "_",
        "-",
        "#",
        "$",
        "€",
        "½",
        "①",
        "٣",
    ];
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    (0..n)
        .map(|_| {
            let len = next() % 24;
            (0..len).map(|_| pieces[next() % pieces.len()]).collect()
        })
        .collect()
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2_tokens.json")
}

fn golden_strings() -> Vec<String> {
    let mut v = fixed_strings();
    v.extend(random_strings(300, 7));
    v
}

/// Regenerates tests/data/smollm2_tokens.json from the reference tokenizer.json:
/// `cargo test --release -p ditto-engine --test loader_smollm2 -- --ignored regenerate`.
#[test]
#[ignore]
fn regenerate_golden() {
    let r = reference_tokenizer().expect("the reference tokenizer is needed to regenerate");
    let entries: Vec<serde_json::Value> = golden_strings()
        .iter()
        .map(|s| {
            let ids = r.encode(s).unwrap();
            let decoded = r.decode(&ids).unwrap();
            serde_json::json!({"text": s, "ids": ids, "decoded": decoded})
        })
        .collect();
    let text = serde_json::to_string_pretty(&entries).unwrap();
    std::fs::write(golden_path(), text + "\n").unwrap();
}

#[test]
fn smollm2_tokenizer_matches_golden_ids() {
    let Some(m) = model() else { return };
    let text = std::fs::read_to_string(golden_path()).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(entries.len(), golden_strings().len());
    for e in &entries {
        let s = e["text"].as_str().unwrap();
        let want: Vec<u32> = e["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = m.tokenizer.encode(s).unwrap();
        assert_eq!(ids, want, "encoding {s:?}");
        assert_eq!(
            m.tokenizer.decode(&ids).unwrap(),
            e["decoded"].as_str().unwrap(),
            "decoding {s:?}"
        );
    }
}

#[test]
fn smollm2_tokenizer_matches_reference_tokenizer() {
    let Some(m) = model() else { return };
    let Some(r) = reference_tokenizer() else {
        return;
    };
    let ours = &m.tokenizer;
    assert_eq!(ours.vocab_size(), r.vocab_size());
    let mut strings = fixed_strings();
    strings.extend(random_strings(3000, 12345));
    let mut tokens = 0;
    for s in &strings {
        let a = ours.encode(s).unwrap();
        let b = r.encode(s).unwrap();
        assert_eq!(a, b, "encoding {s:?}");
        assert_eq!(ours.decode(&a).unwrap(), r.decode(&b).unwrap(), "{s:?}");
        assert_eq!(
            ours.decode_with_special_tokens(&a).unwrap(),
            r.decode_with_special_tokens(&b).unwrap(),
            "{s:?}"
        );
        assert_eq!(
            ours.encode_with_special_tokens(s).unwrap(),
            r.encode_with_special_tokens(s).unwrap()
        );
        tokens += a.len();
    }
    // Every single id decodes alike, with and without special tokens.
    for id in 0..r.vocab_size() as u32 {
        assert_eq!(ours.id_to_token(id), r.id_to_token(id), "id {id}");
        assert_eq!(
            ours.decode(&[id]).unwrap(),
            r.decode(&[id]).unwrap(),
            "id {id}"
        );
        assert_eq!(
            ours.decode_with_special_tokens(&[id]).unwrap(),
            r.decode_with_special_tokens(&[id]).unwrap(),
            "id {id}"
        );
    }
    eprintln!(
        "tokenizer cross-check: {} strings ({tokens} tokens) and all {} ids identical",
        strings.len(),
        r.vocab_size()
    );
}
