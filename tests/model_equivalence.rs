//! Model-level equivalence: for several prompts (ASCII, code, Unicode and emoji), the greedy
//! tokens and the bits of every step's logits are identical on every backend, whether a prompt
//! runs alone with one prefill or inside a batch of other prompts, prefilled in chunks of varied
//! sizes while the others decode.
//!
//! The model is SmolLM2 (`scripts/fetch-test-model.sh`), or the model directory or GGUF file named
//! by `DITTO_TEST_MODEL` (how the GPU machine runs this on larger random models). Without a model
//! the tests skip and say so, unless `DITTO_REQUIRE_MODEL=1` (CI).

mod common;

use common::{cuda_backend, wgpu_backend};
use ditto::cuda::CudaBackend;
use ditto::engine::cpu::CpuBackend;
use ditto::engine::kv_cache::SeqId;
use ditto::engine::loader::{self, LoadedModel};
use ditto::engine::model::{LogitsRows, Model, SeqInput};
use ditto::engine::wgpu::WgpuBackend;
use ditto::engine::{Backend, KernelMode};
use ditto::shaders::contract;
use std::sync::OnceLock;

const PROMPTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. Once upon a time,",
    "fn fibonacci(n: u64) -> u64 {\n    match n {\n        0 => 0,",
    "Ünïcödé façade, 東京の天気は 🌧️ and emoji 🚀🎉👩‍💻 —",
    "1, 2, 3, 5, 8, 13,",
];

/// Greedy steps per prompt. Small, because lavapipe runs this on CI's two cores.
const STEPS: usize = 5;

/// One prompt's greedy continuation and the bits of the logits of each of its steps.
#[derive(Debug, PartialEq)]
struct Run {
    tokens: Vec<u32>,
    logits_bits: Vec<Vec<u32>>,
}

/// The loaded model and the prompts' token ids, read once for all tests.
fn loaded() -> Option<&'static (LoadedModel, Vec<Vec<u32>>)> {
    static LOADED: OnceLock<Option<(LoadedModel, Vec<Vec<u32>>)>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = common::test_model(true)?;
            let model = loader::load(&path, false).expect("loading the test model");
            let prompts = PROMPTS
                .iter()
                .map(|p| {
                    let mut ids = Vec::new();
                    if model.generation.add_bos {
                        ids.extend(model.generation.bos_token_id);
                    }
                    ids.extend(model.tokenizer.encode(p).expect("tokenizing"));
                    ids
                })
                .collect();
            Some((model, prompts))
        })
        .as_ref()
}

/// Runs every prompt greedily for [`STEPS`] steps, all in one batch: sequence i prefills its
/// prompt in chunks of `chunks[i % chunks.len()]` tokens (0: all at once), and sequences that
/// finished their prompt decode in the same forward calls as those still prefilling.
fn greedy_batched<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    chunks: &[usize],
) -> Vec<Run> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + STEPS;
    let mut cache = model.new_cache(prompts.len(), longest).expect("cache");
    let seqs: Vec<SeqId> = prompts.iter().map(|_| cache.add_sequence()).collect();
    let mut fed = vec![0usize; prompts.len()];
    let mut runs: Vec<Run> = prompts
        .iter()
        .map(|_| Run {
            tokens: Vec::new(),
            logits_bits: Vec::new(),
        })
        .collect();
    loop {
        // Each unfinished sequence contributes its next prompt chunk or its last token.
        let mut inputs: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            if runs[i].tokens.len() == STEPS {
                continue;
            }
            let tokens = if fed[i] < prompt.len() {
                let chunk = match chunks[i % chunks.len()] {
                    0 => prompt.len(),
                    c => c,
                };
                let end = (fed[i] + chunk).min(prompt.len());
                let part = prompt[fed[i]..end].to_vec();
                fed[i] = end;
                part
            } else {
                vec![*runs[i].tokens.last().expect("decoding after the prompt")]
            };
            inputs.push((i, tokens));
        }
        if inputs.is_empty() {
            return runs;
        }
        let batch: Vec<SeqInput> = inputs
            .iter()
            .map(|(i, tokens)| SeqInput {
                seq: seqs[*i],
                tokens,
            })
            .collect();
        let logits = model
            .forward(&mut cache, &batch, LogitsRows::Last)
            .expect("forward");
        for (row, (i, _)) in inputs.iter().enumerate() {
            // Logits count once the whole prompt is in: from then on each row yields a token.
            if fed[*i] == prompts[*i].len() {
                let l = logits.row(row);
                runs[*i].tokens.push(contract::argmax(l));
                runs[*i]
                    .logits_bits
                    .push(l.iter().map(|v| v.to_bits()).collect());
            }
        }
    }
}

/// Each prompt alone, prefilled in one call.
fn greedy_alone<B: Backend>(model: &Model<B>, prompts: &[Vec<u32>]) -> Vec<Run> {
    prompts
        .iter()
        .flat_map(|p| greedy_batched(model, std::slice::from_ref(p), &[0]))
        .collect()
}

/// The reference: the cpu backend, each prompt alone.
fn reference() -> Option<&'static Vec<Run>> {
    static REFERENCE: OnceLock<Option<Vec<Run>>> = OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let (loaded, prompts) = loaded()?;
            let model = Model::new(CpuBackend::new(), loaded).expect("cpu model");
            Some(greedy_alone(&model, prompts))
        })
        .as_ref()
}

fn assert_runs_equal(what: &str, got: &[Run], want: &[Run]) {
    for (p, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.tokens, w.tokens,
            "{what}: prompt {p}: greedy tokens differ"
        );
        for (step, (gl, wl)) in g.logits_bits.iter().zip(&w.logits_bits).enumerate() {
            if let Some(i) = gl.iter().zip(wl).position(|(a, b)| a != b) {
                panic!(
                    "{what}: prompt {p}, step {step}: logit {i} is {:#010x}, reference {:#010x}",
                    gl[i], wl[i]
                );
            }
        }
    }
    assert_eq!(got.len(), want.len());
}

/// The body run on each backend: alone and in two batch compositions, against the cpu reference.
fn same_bits_alone_and_batched<B: Backend>(backend: B) {
    let Some((loaded, prompts)) = loaded() else {
        return;
    };
    let want = reference().expect("reference");
    let name = backend.describe();
    let model = Model::new(backend, loaded).expect("model");
    assert_runs_equal(
        &format!("{name}, alone"),
        &greedy_alone(&model, prompts),
        want,
    );
    // All prompts together: chunk sizes that cross and miss page and block boundaries.
    assert_runs_equal(
        &format!("{name}, batched in chunks of 7/3/0/11"),
        &greedy_batched(&model, prompts, &[7, 3, 0, 11]),
        want,
    );
    // The same prompts in another order with other chunks: each prompt's neighbours change.
    let reversed: Vec<Vec<u32>> = prompts.iter().rev().cloned().collect();
    let mut got = greedy_batched(&model, &reversed, &[1, 0, 5]);
    got.reverse();
    assert_runs_equal(&format!("{name}, reversed, chunks of 1/0/5"), &got, want);
    eprintln!(
        "{name}: {} prompts x {STEPS} steps identical to the cpu reference",
        prompts.len()
    );
}

#[test]
fn cpu_alone_and_batched() {
    same_bits_alone_and_batched(CpuBackend::new());
}

#[test]
fn wgpu_alone_and_batched_equal_cpu() {
    if loaded().is_none() {
        return;
    }
    // The shared backend of the kernel tests only says whether an adapter exists; a model owns
    // its backend.
    if wgpu_backend().is_some() {
        same_bits_alone_and_batched(WgpuBackend::new(KernelMode::Invariant).expect("wgpu"));
    }
}

#[test]
fn cuda_alone_and_batched_equal_cpu() {
    if loaded().is_none() {
        return;
    }
    if cuda_backend().is_some() {
        same_bits_alone_and_batched(CudaBackend::new(KernelMode::Invariant).expect("cuda"));
    }
}

/// The test catches a difference: one logit bit flipped at one step is reported.
#[test]
fn a_flipped_bit_is_caught() {
    let Some(want) = reference() else { return };
    let mut bad: Vec<Run> = want
        .iter()
        .map(|r| Run {
            tokens: r.tokens.clone(),
            logits_bits: r.logits_bits.clone(),
        })
        .collect();
    bad[0].logits_bits[STEPS - 1][7] ^= 1;
    let caught = std::panic::catch_unwind(|| assert_runs_equal("control", &bad, want));
    assert!(caught.is_err(), "a flipped logit bit went unnoticed");
}
