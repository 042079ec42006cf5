//! Test helpers: a tiny GGUF writer, a tiny safetensors writer, scratch directories and the
//! location of the test model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A GGUF metadata value (the subset the tests write).
#[derive(Clone, Debug)]
pub enum Val {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_val(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::U32(x) => {
            out.extend(4u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Val::I32(x) => {
            out.extend(5u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Val::F32(x) => {
            out.extend(6u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Val::Bool(x) => {
            out.extend(7u32.to_le_bytes());
            out.push(*x as u8);
        }
        Val::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_str(out, s);
        }
        Val::StrArr(a) => {
            out.extend(9u32.to_le_bytes());
            out.extend(8u32.to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for s in a {
                put_str(out, s);
            }
        }
        Val::I32Arr(a) => {
            out.extend(9u32.to_le_bytes());
            out.extend(5u32.to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for x in a {
                out.extend(x.to_le_bytes());
            }
        }
    }
}

/// A tensor to write: GGUF name, GGUF dims (innermost first), GGML type id, raw bytes.
#[derive(Clone, Debug)]
pub struct GTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

/// A GGUF file in memory.
#[derive(Clone, Debug, Default)]
pub struct Gguf {
    pub version: u32,
    pub kvs: Vec<(String, Val)>,
    pub tensors: Vec<GTensor>,
}

pub const ALIGN: usize = 32;

impl Gguf {
    pub fn kv(&mut self, k: &str, v: Val) {
        self.kvs.retain(|(key, _)| key != k);
        self.kvs.push((k.to_string(), v));
    }
    pub fn remove_kv(&mut self, k: &str) {
        self.kvs.retain(|(key, _)| key != k);
    }
    pub fn tensor(&mut self, name: &str) -> &mut GTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .expect(name)
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            put_val(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ggml_type.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += t.data.len().div_ceil(ALIGN) * ALIGN;
        }
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        for t in &self.tensors {
            out.extend(&t.data);
            out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        out
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64), distinct per `seed`.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A fresh scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("ditto-loader-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors tensor: (name, dtype string, shape, raw little-endian bytes).
pub type StTensor<'a> = (String, &'a str, Vec<usize>, Vec<u8>);

/// A safetensors file of `tensors`.
pub fn safetensors_bytes(tensors: &[StTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
        );
        offset += data.len();
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    for (_, _, _, data) in tensors {
        out.extend(data);
    }
    out
}

/// The test model's path (fetched by scripts/fetch-test-model.sh), or `None` with a printed
/// reason when absent — a failure instead when `DITTO_REQUIRE_MODEL=1`.
pub fn test_model() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("DITTO_REQUIRE_MODEL").as_deref() == Ok("1") {
        panic!(
            "{} is missing and DITTO_REQUIRE_MODEL=1: run scripts/fetch-test-model.sh",
            p.display()
        );
    }
    eprintln!(
        "skipping: {} is absent (run scripts/fetch-test-model.sh)",
        p.display()
    );
    None
}
