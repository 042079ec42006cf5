//! `ditto bench determinism`: many copies of one prompt arrive at seeded random steps among
//! filler requests, all through the continuous-batching scheduler; every copy has the same seed
//! and the same sampler `request_id`, so every copy must produce the same tokens and the same
//! logits fingerprint whatever it was batched with. Prints how many distinct completions and
//! fingerprints came out (1 and 1 is the contract), the batch sizes seen, and throughput.

use super::{utf8_arg, Kernels};
use crate::backend_select::{select, BackendChoice, BackendJob};
use crate::load;
use ditto_engine::generate::{GenerateRequest, Generator};
use ditto_engine::loader::LoadedModel;
use ditto_engine::sampling::SamplingParams;
use ditto_engine::scheduler::{Event, Request, RequestId, Scheduler, SchedulerConfig};
use ditto_engine::{Backend, Error};
use ditto_shaders::contract::CONTRACT_VERSION;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub(crate) struct DeterminismArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt every sample runs.
    #[arg(long, value_parser = clap::value_parser!(OsString))]
    prompt: OsString,
    /// Copies of the prompt.
    #[arg(long, default_value_t = 32)]
    samples: usize,
    /// Most requests in one forward call.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most tokens in one forward call.
    #[arg(long, default_value_t = 256)]
    max_batch_tokens: usize,
    /// Most prompt tokens of one request in one forward call.
    #[arg(long, default_value_t = 32)]
    prefill_chunk: usize,
    /// Tokens to generate per sample.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed of the sampler and of the arrival steps.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    #[arg(long, value_enum, default_value_t = Kernels::Invariant)]
    kernels: Kernels,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Other prompts and lengths batched with the samples.
const FILLERS: &[&str] = &[
    "Write a haiku about the sea.",
    "fn main() {\n    let x =",
    "List three prime numbers:",
    "Ünïcödé façade, 東京 🚀 —",
    "Once upon a time, in a kingdom by the mountains, there lived a",
];

/// The sampler's `request_id` of every sample: shared so that sampled runs must agree too.
const SAMPLE_REQUEST_ID: u64 = 0;

pub(crate) fn determinism(args: DeterminismArgs) -> Result<(), Error> {
    let prompt = utf8_arg("--prompt", args.prompt.clone())?;
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    if args.samples == 0 || args.max_tokens == 0 {
        return Err(Error::Input(
            "--samples and --max-tokens must be at least 1".into(),
        ));
    }
    load::check_model_path(&args.model)?;
    let (backend, notes) = select(args.backend, args.kernels.mode())?;
    for note in notes {
        eprintln!("ditto: {note}");
    }
    eprintln!(
        "ditto: backend {} ({}), kernels {}, contract v{CONTRACT_VERSION}",
        backend.name(),
        backend.describe(),
        args.kernels.name()
    );
    let loaded = load::load_model(&args.model)?;
    let backend_name = backend.name();
    backend.run(Job {
        loaded,
        prompt,
        backend_name,
        args,
    })
}

struct Job {
    loaded: LoadedModel,
    prompt: String,
    backend_name: &'static str,
    args: DeterminismArgs,
}

/// SplitMix64, for the arrival steps.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl BackendJob for Job {
    type Output = Result<(), Error>;

    fn run<B: Backend>(self, backend: B) -> Result<(), Error> {
        let a = &self.args;
        let generator = Generator::new(backend, self.loaded, None)?;
        let sampling = SamplingParams {
            temperature: a.temperature,
            ..SamplingParams::default()
        };
        let stop = generator.defaults().eos_token_ids.clone();
        let tokens_of = |text: &str, max_tokens: usize| {
            generator.prompt_tokens(&GenerateRequest::new(text, max_tokens))
        };
        // (arrival step, sample?, request): the samples plus one filler per four samples (at
        // least two), of varied lengths, arriving over about twice as many steps as requests.
        let fillers = (a.samples / 4).max(2);
        let spread = 2 * (a.samples + fillers) as u64;
        let mut rng = a.seed ^ 0x6469_7474_6f00_0000;
        let mut arrivals = Vec::new();
        let sample_tokens = tokens_of(&self.prompt, a.max_tokens)?;
        for _ in 0..a.samples {
            let req = Request {
                prompt_tokens: sample_tokens.clone(),
                max_tokens: a.max_tokens,
                sampling,
                seed: a.seed,
                request_id: SAMPLE_REQUEST_ID,
                stop_tokens: stop.clone(),
            };
            arrivals.push(((next_random(&mut rng) % spread) as usize, true, req));
        }
        for f in 0..fillers {
            let max_tokens = 1 + (next_random(&mut rng) as usize % a.max_tokens);
            let req = Request {
                prompt_tokens: tokens_of(FILLERS[f % FILLERS.len()], max_tokens)?,
                max_tokens,
                sampling,
                seed: a.seed,
                request_id: 1 + f as u64,
                stop_tokens: stop.clone(),
            };
            arrivals.push(((next_random(&mut rng) % spread) as usize, false, req));
        }
        arrivals.sort_by_key(|x| x.0);
        let longest = arrivals
            .iter()
            .map(|(_, _, r)| r.prompt_tokens.len() + r.max_tokens)
            .max()
            .unwrap_or(1);
        let config = SchedulerConfig {
            max_batch: a.max_batch,
            max_batch_tokens: a.max_batch_tokens,
            prefill_chunk: a.prefill_chunk,
        };
        // Room for a full batch of the longest request, so admission is limited by max_batch.
        let positions = (longest.div_ceil(16) * 16).saturating_mul(a.max_batch.max(1));
        let mut sched = Scheduler::new(generator.model(), config, positions)?;

        let start = Instant::now();
        let mut is_sample: HashMap<RequestId, bool> = HashMap::new();
        let mut completions = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        let mut batch_sizes = Vec::new();
        let mut generated = 0usize;
        let mut processed = 0usize;
        let mut arrivals = arrivals.into_iter().peekable();
        let mut step = 0usize;
        while arrivals.peek().is_some() || !sched.is_idle() {
            while let Some((_, sample, req)) = arrivals.next_if(|x| x.0 <= step) {
                is_sample.insert(sched.submit(req)?, sample);
            }
            let events = sched.step()?;
            if let Some(b) = sched.last_batch() {
                batch_sizes.push(b.sequences);
                processed += b.tokens;
            }
            for e in events {
                match e {
                    Event::Token { .. } => generated += 1,
                    Event::Finished { id, completion } => {
                        if is_sample[&id] {
                            completions.insert(completion.tokens);
                            hashes.insert(completion.logits_sha256);
                        }
                    }
                    Event::Failed { error, .. } => {
                        return Err(Error::Input(format!("a request failed: {error}")))
                    }
                }
            }
            step += 1;
        }
        let seconds = start.elapsed().as_secs_f64();
        let (min, max) = (
            batch_sizes.iter().copied().min().unwrap_or(0),
            batch_sizes.iter().copied().max().unwrap_or(0),
        );
        let mean = if batch_sizes.is_empty() {
            0.0
        } else {
            batch_sizes.iter().sum::<usize>() as f64 / batch_sizes.len() as f64
        };
        let per_s = |n: usize| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let text = match completions.iter().next() {
            Some(t) => generator.tokenizer().decode(t)?,
            None => String::new(),
        };
        if a.json {
            let value = serde_json::json!({
                "samples": a.samples,
                "filler_requests": fillers,
                "distinct_completions": completions.len(),
                "distinct_logits_sha256": hashes.len(),
                "logits_sha256": hashes.iter().collect::<Vec<_>>(),
                "completion": text,
                "batch_size_min": min,
                "batch_size_max": max,
                "batch_size_mean": mean,
                "forward_calls": batch_sizes.len(),
                "seconds": seconds,
                "generated_tokens": generated,
                "generated_tokens_per_s": per_s(generated),
                "processed_tokens_per_s": per_s(processed),
                "backend": self.backend_name,
                "kernels": a.kernels.name(),
                "contract": CONTRACT_VERSION,
                "temperature": a.temperature,
                "seed": a.seed,
            });
            println!("{value}");
        } else {
            println!(
                "samples:                {} (+{fillers} filler requests)",
                a.samples
            );
            println!("distinct completions:   {}", completions.len());
            println!("distinct logits_sha256: {}", hashes.len());
            for h in &hashes {
                println!("  {h}");
            }
            println!("completion:             {text:?}");
            println!(
                "batch sizes:            min {min}, max {max}, mean {mean:.2} over {} forward calls",
                batch_sizes.len()
            );
            println!("wall time:              {seconds:.2} s");
            println!(
                "tokens/s:               {:.1} generated, {:.1} processed (prompt + generated)",
                per_s(generated),
                per_s(processed)
            );
        }
        if completions.len() != 1 || hashes.len() != 1 {
            return Err(Error::Input(format!(
                "not deterministic: {} distinct completions, {} distinct logits fingerprints",
                completions.len(),
                hashes.len()
            )));
        }
        Ok(())
    }
}
