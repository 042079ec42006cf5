//! Continuous batching with SmolLM2 on the cpu backend: 32 requests of one prompt arrive at
//! seeded random steps among filler requests of other prompts and lengths, under a small batch
//! and token budget with chunked prefill. Every copy of the prompt must give the same tokens and
//! the same `logits_sha256` as a solo `Generator` run, greedy and sampled (the same seed and the
//! same `request_id` for all copies: the sampler's key is `(seed, request_id, position)`), and
//! every filler must equal its own solo run.
//!
//! The model is `models/SmolLM2-135M-Instruct.Q4_1.gguf` (`scripts/fetch-test-model.sh`), or
//! `DITTO_TEST_MODEL`. Without it the test skips, unless `DITTO_REQUIRE_MODEL=1`.

mod common;

use ditto::engine::cpu::CpuBackend;
use ditto::engine::generate::{GenerateRequest, Generator};
use ditto::engine::loader;
use ditto::engine::sampling::SamplingParams;
use ditto::engine::scheduler::{Completion, Event, Request, RequestId, Scheduler, SchedulerConfig};
use std::collections::{BTreeSet, HashMap};

const TARGET: &str = "The capital of France is";
const FILLERS: &[(&str, usize)] = &[
    ("fn main() {", 3),
    ("Once upon a time, in a land far away, there lived", 6),
    ("1, 2, 3,", 2),
    ("Ünïcödé 東京 🚀", 5),
    ("The quick brown fox", 1),
    ("Water boils at", 4),
];
const SAMPLES: usize = 32;
const TARGET_TOKENS: usize = 4;

/// SplitMix64: the seeded arrival steps.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Mixed {
    /// Completions of the target prompt.
    targets: Vec<Completion>,
    /// Completions of the fillers, by filler index.
    fillers: Vec<(usize, Completion)>,
    batch_sizes: Vec<usize>,
}

fn request(
    gen: &Generator<CpuBackend>,
    prompt: &str,
    max_tokens: usize,
    sampling: SamplingParams,
    request_id: u64,
) -> (GenerateRequest, Request) {
    let g = GenerateRequest {
        sampling,
        seed: 7,
        request_id,
        ..GenerateRequest::new(prompt, max_tokens)
    };
    let r = Request {
        prompt_tokens: gen.prompt_tokens(&g).expect("tokenizing"),
        max_tokens,
        sampling,
        seed: g.seed,
        request_id,
        stop_tokens: gen.defaults().eos_token_ids.clone(),
    };
    (g, r)
}

/// The target prompt `SAMPLES` times (request id 1000 for all) and each filler twice (request ids
/// by filler), arriving at seeded random steps.
fn run_mixed(gen: &Generator<CpuBackend>, sampling: SamplingParams, seed: u64) -> Mixed {
    let mut arrivals: Vec<(usize, Option<usize>)> = Vec::new();
    let mut state = seed;
    for _ in 0..SAMPLES {
        arrivals.push(((next(&mut state) % 40) as usize, None));
    }
    for copy in 0..2 {
        for f in 0..FILLERS.len() {
            arrivals.push(((next(&mut state) % 40) as usize + copy, Some(f)));
        }
    }
    arrivals.sort_by_key(|a| a.0);
    let config = SchedulerConfig {
        max_batch: 6,
        max_batch_tokens: 24,
        prefill_chunk: 5,
    };
    let mut sched = Scheduler::new(gen.model(), config, 6 * 32).expect("scheduler");
    let mut kinds: HashMap<RequestId, Option<usize>> = HashMap::new();
    let mut out = Mixed {
        targets: Vec::new(),
        fillers: Vec::new(),
        batch_sizes: Vec::new(),
    };
    let mut step = 0usize;
    let mut next_arrival = 0;
    while next_arrival < arrivals.len() || !sched.is_idle() {
        while next_arrival < arrivals.len() && arrivals[next_arrival].0 <= step {
            let kind = arrivals[next_arrival].1;
            let (_, r) = match kind {
                None => request(gen, TARGET, TARGET_TOKENS, sampling, 1000),
                Some(f) => request(gen, FILLERS[f].0, FILLERS[f].1, sampling, f as u64),
            };
            kinds.insert(sched.submit(r).expect("submit"), kind);
            next_arrival += 1;
        }
        for event in sched.step().expect("step") {
            match event {
                Event::Finished { id, completion } => match kinds[&id] {
                    None => out.targets.push(completion),
                    Some(f) => out.fillers.push((f, completion)),
                },
                Event::Failed { error, .. } => panic!("a request failed: {error}"),
                Event::Token { .. } => {}
            }
        }
        if let Some(b) = sched.last_batch() {
            out.batch_sizes.push(b.sequences);
        }
        step += 1;
    }
    assert_eq!(sched.free_pages(), 12, "every page is returned");
    out
}

fn check(gen: &Generator<CpuBackend>, sampling: SamplingParams, seed: u64) {
    let mixed = run_mixed(gen, sampling, seed);
    assert_eq!(mixed.targets.len(), SAMPLES);
    assert_eq!(mixed.fillers.len(), 2 * FILLERS.len());
    let max_batch = *mixed.batch_sizes.iter().max().unwrap();
    assert!(max_batch > 1, "requests were never batched together");

    let completions: BTreeSet<&Vec<u32>> = mixed.targets.iter().map(|c| &c.tokens).collect();
    let hashes: BTreeSet<&String> = mixed.targets.iter().map(|c| &c.logits_sha256).collect();
    assert_eq!(
        completions.len(),
        1,
        "distinct completions: {completions:?}"
    );
    assert_eq!(hashes.len(), 1, "distinct logits_sha256: {hashes:?}");

    // The solo Generator run of the target prompt.
    let (g, _) = request(gen, TARGET, TARGET_TOKENS, sampling, 1000);
    let solo = gen.generate(&g, &mut |_| {}).expect("solo run");
    assert_eq!(solo.tokens, mixed.targets[0].tokens);
    assert_eq!(solo.logits_sha256, mixed.targets[0].logits_sha256);

    // Each filler against its solo run (both copies share the request id, so agree too).
    for (f, (prompt, max_tokens)) in FILLERS.iter().enumerate() {
        let (g, _) = request(gen, prompt, *max_tokens, sampling, f as u64);
        let solo = gen.generate(&g, &mut |_| {}).expect("solo filler");
        for (_, c) in mixed.fillers.iter().filter(|(i, _)| *i == f) {
            assert_eq!(c.tokens, solo.tokens, "filler {f}: tokens");
            assert_eq!(c.logits_sha256, solo.logits_sha256, "filler {f}: logits");
        }
        assert_ne!(solo.logits_sha256, mixed.targets[0].logits_sha256);
    }
    let mean = mixed.batch_sizes.iter().sum::<usize>() as f64 / mixed.batch_sizes.len() as f64;
    eprintln!(
        "{} steps, batch sizes {}..={max_batch} (mean {mean:.2}); target: {:?}",
        mixed.batch_sizes.len(),
        mixed.batch_sizes.iter().min().unwrap(),
        mixed.targets[0].tokens
    );
}

#[test]
fn arrivals_at_random_steps_give_one_completion() {
    let Some(path) = common::test_model(true) else {
        return;
    };
    let loaded = loader::load(&path, false).expect("loading the test model");
    let gen = Generator::new(CpuBackend::new(), loaded, Some(256)).expect("generator");
    check(&gen, SamplingParams::default(), 1);
    let sampled = SamplingParams {
        temperature: 0.8,
        ..SamplingParams::default()
    };
    check(&gen, sampled, 2);
}
