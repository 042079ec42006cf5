//! `ditto bench determinism`: many copies of one prompt arrive at seeded random steps among
//! filler requests, all through the continuous-batching scheduler; every copy has the same seed
//! and the same sampler `request_id`, so every copy must produce the same tokens and the same
//! logits fingerprint whatever it was batched with. Prints how many distinct completions and
//! fingerprints came out (1 and 1 is the contract), the batch sizes seen, and throughput.

use super::{utf8_arg, Kernels, KernelsChoice};
use crate::backend_select::{select, BackendChoice, BackendJob, Selected};
use crate::load;
use ditto_engine::generate::plain_prompt_tokens;
use ditto_engine::loader::LoadedModel;
use ditto_engine::model::{LogitsRows, Model, SeqInput};
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
    /// `both` runs invariant, then default, and reports the ratio of their times; its exit
    /// status reflects the invariant run only (default kernels may disagree: that is the point).
    #[arg(long, value_enum, default_value_t = KernelsChoice::Invariant)]
    kernels: KernelsChoice,
    /// Print one JSON object on stdout (with `--kernels both`: `{"runs": [...], ...}`).
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
    let backends = open_backends(args.backend, args.kernels)?;
    let loaded = load::load_model(&args.model)?;
    let mut reports = Vec::new();
    for (kernels, backend) in backends {
        eprintln!(
            "ditto: backend {} ({}), kernels {}, contract v{CONTRACT_VERSION}",
            backend.name(),
            backend.describe(),
            kernels.name()
        );
        let backend_name = backend.name();
        let report = backend.run(Job {
            loaded: &loaded,
            prompt: &prompt,
            backend_name,
            kernels,
            args: &args,
        })?;
        if args.json {
            // The JSON comes at the end; a run cut short still leaves this line.
            eprintln!(
                "ditto: {} completions, {} logits_sha256 over {} samples in {:.2} s",
                report["distinct_completions"],
                report["distinct_logits_sha256"],
                report["samples"],
                report["seconds"].as_f64().unwrap_or_default()
            );
        } else {
            if args.kernels == KernelsChoice::Both {
                println!("kernels {}:", kernels.name());
            }
            print_determinism(&report);
        }
        reports.push((kernels, report));
    }
    let seconds = |k: Kernels| {
        reports
            .iter()
            .find(|(kernels, _)| *kernels == k)
            .and_then(|(_, r)| r["seconds"].as_f64())
    };
    let ratio = match (seconds(Kernels::Invariant), seconds(Kernels::Default)) {
        (Some(i), Some(d)) if d > 0.0 => Some(i / d),
        _ => None,
    };
    if args.json {
        if reports.len() == 1 {
            println!("{}", reports[0].1);
        } else {
            let runs: Vec<&serde_json::Value> = reports.iter().map(|(_, r)| r).collect();
            println!(
                "{}",
                serde_json::json!({
                    "runs": runs,
                    "seconds_ratio_invariant_over_default": ratio,
                })
            );
        }
    } else if let Some(r) = ratio {
        println!("invariant/default time: {r:.2}");
    }
    // The exit status: the invariant run's verdict, or the one run's.
    let judged = reports
        .iter()
        .find(|(k, _)| *k == Kernels::Invariant)
        .unwrap_or(&reports[0]);
    let r = &judged.1;
    if r["distinct_completions"] != 1 || r["distinct_logits_sha256"] != 1 {
        return Err(Error::Input(format!(
            "not deterministic ({} kernels): {} distinct completions, {} distinct logits \
             fingerprints",
            judged.0.name(),
            r["distinct_completions"],
            r["distinct_logits_sha256"]
        )));
    }
    Ok(())
}

/// The text form of one determinism report.
fn print_determinism(v: &serde_json::Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    println!(
        "samples:                {} (+{} filler requests)",
        v["samples"], v["filler_requests"]
    );
    println!("distinct completions:   {}", v["distinct_completions"]);
    println!("distinct logits_sha256: {}", v["distinct_logits_sha256"]);
    for h in v["logits_sha256"].as_array().into_iter().flatten() {
        println!("  {}", h.as_str().unwrap_or_default());
    }
    println!(
        "completion:             {:?}",
        v["completion"].as_str().unwrap_or_default()
    );
    println!(
        "batch sizes:            min {}, max {}, mean {:.2} over {} forward calls",
        v["batch_size_min"],
        v["batch_size_max"],
        f("batch_size_mean"),
        v["forward_calls"]
    );
    println!("wall time:              {:.2} s", f("seconds"));
    println!(
        "tokens/s:               {:.1} generated, {:.1} processed (prompt + generated)",
        f("generated_tokens_per_s"),
        f("processed_tokens_per_s")
    );
}

struct Job<'a> {
    loaded: &'a LoadedModel,
    prompt: &'a str,
    backend_name: &'static str,
    kernels: Kernels,
    args: &'a DeterminismArgs,
}

/// SplitMix64, for the arrival steps.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl BackendJob for Job<'_> {
    type Output = Result<serde_json::Value, Error>;

    fn run<B: Backend>(self, backend: B) -> Self::Output {
        let a = self.args;
        let model = Model::new(backend, self.loaded)?;
        let sampling = SamplingParams {
            temperature: a.temperature,
            ..SamplingParams::default()
        };
        let stop = self.loaded.generation.eos_token_ids.clone();
        let tokens_of = |text: &str, _max_tokens: usize| {
            let ids = plain_prompt_tokens(&self.loaded.tokenizer, &self.loaded.generation, text)?;
            if ids.is_empty() {
                return Err(Error::Input(format!("the prompt {text:?} has no tokens")));
            }
            Ok(ids)
        };
        // (arrival step, sample?, request): the samples plus one filler per four samples (at
        // least two), of varied lengths, arriving at random steps over a span in which about
        // `max_batch` requests are alive at once (each lives about max_tokens + 1 steps): the
        // batch fills, drains and queues, so sizes and chunk boundaries vary.
        let fillers = (a.samples / 4).max(2);
        let spread =
            ((a.samples + fillers) * (a.max_tokens + 1) / a.max_batch.max(1)).max(1) as u64;
        let mut rng = a.seed ^ 0x6469_7474_6f00_0000;
        let mut arrivals = Vec::new();
        let sample_tokens = tokens_of(self.prompt, a.max_tokens)?;
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
        let mut sched = Scheduler::new(&model, config, positions)?;

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
            Some(t) => self.loaded.tokenizer.decode(t)?,
            None => String::new(),
        };
        Ok(serde_json::json!({
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
            "kernels": self.kernels.name(),
            "contract": CONTRACT_VERSION,
            "temperature": a.temperature,
            "seed": a.seed,
        }))
    }
}

/// One `ditto bench speed` test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpeedTest {
    /// `ppN`: one forward call prefilling an N-token prompt.
    Prefill(usize),
    /// `tgN` (batch 1) or `tgN@B`: B sequences decoding N steps together after a short prompt.
    Decode { steps: usize, batch: usize },
}

impl SpeedTest {
    fn name(self) -> String {
        match self {
            SpeedTest::Prefill(n) => format!("pp{n}"),
            SpeedTest::Decode { steps, batch: 1 } => format!("tg{steps}"),
            SpeedTest::Decode { steps, batch } => format!("tg{steps}@{batch}"),
        }
    }
    /// Tokens one repetition processes (what tokens/s counts).
    fn tokens(self) -> usize {
        match self {
            SpeedTest::Prefill(n) => n,
            SpeedTest::Decode { steps, batch } => steps * batch,
        }
    }
    /// Positions one sequence reaches.
    fn positions(self) -> usize {
        match self {
            SpeedTest::Prefill(n) => n,
            SpeedTest::Decode { steps, .. } => DECODE_PROMPT + steps,
        }
    }
}

fn parse_speed_test(s: &str) -> Result<SpeedTest, String> {
    let number = |t: &str| match t.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{s:?}: expected ppN, tgN or tgN@B with positive N and B"
        )),
    };
    if let Some(n) = s.strip_prefix("pp") {
        return Ok(SpeedTest::Prefill(number(n)?));
    }
    if let Some(rest) = s.strip_prefix("tg") {
        let (steps, batch) = match rest.split_once('@') {
            Some((n, b)) => (number(n)?, number(b)?),
            None => (number(rest)?, 1),
        };
        return Ok(SpeedTest::Decode { steps, batch });
    }
    Err(format!("{s:?}: expected ppN, tgN or tgN@B"))
}

/// Prompt tokens of each sequence before a decode test (prefilled, not timed).
const DECODE_PROMPT: usize = 16;

#[derive(clap::Args, Debug)]
pub(crate) struct SpeedArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// `both` runs invariant, then default, and prints the ratio of their times per test.
    #[arg(long, value_enum, default_value_t = KernelsChoice::Invariant)]
    kernels: KernelsChoice,
    /// Comma-separated: ppN (prefill an N-token prompt in one forward call), tgN (N decode
    /// steps at batch 1 after a 16-token prompt), tgN@B (B sequences decoding N steps together;
    /// tokens/s counts all B×N tokens).
    #[arg(long, value_delimiter = ',', value_parser = parse_speed_test, default_value = "pp512,tg128")]
    tests: Vec<SpeedTest>,
    /// Timed repetitions of each test (after one untimed warm-up repetition).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seed of the random token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// One row of `bench speed`: a test on one backend with one kernel mode.
struct SpeedRow {
    backend: &'static str,
    adapter: String,
    kernels: Kernels,
    test: SpeedTest,
    /// Wall-clock seconds of each timed repetition.
    seconds: Vec<f64>,
}

impl SpeedRow {
    fn rates(&self) -> Vec<f64> {
        rates(self.test, &self.seconds)
    }
    /// Mean and sample standard deviation of tokens/s over the repetitions.
    fn tokens_per_s(&self) -> (f64, f64) {
        mean_stddev(&self.rates())
    }
    fn mean_seconds(&self) -> f64 {
        mean_stddev(&self.seconds).0
    }
}

/// The backend for each kernel mode asked for, all opened before anything runs, so that a mode
/// the backend lacks fails first.
fn open_backends(
    choice: BackendChoice,
    kernels: KernelsChoice,
) -> Result<Vec<(Kernels, Selected)>, Error> {
    let mut backends = Vec::new();
    for k in kernels.list() {
        let (backend, notes) = select(choice, k.mode())?;
        for note in notes {
            eprintln!("ditto: {note}");
        }
        backends.push((k, backend));
    }
    Ok(backends)
}

/// Tokens per second of each repetition of `test`.
fn rates(test: SpeedTest, seconds: &[f64]) -> Vec<f64> {
    let tokens = test.tokens() as f64;
    seconds
        .iter()
        .map(|&s| if s > 0.0 { tokens / s } else { 0.0 })
        .collect()
}

fn mean_stddev(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

pub(crate) fn speed(args: SpeedArgs) -> Result<(), Error> {
    if args.reps == 0 {
        return Err(Error::Input("--reps must be at least 1".into()));
    }
    if args.tests.is_empty() {
        return Err(Error::Input("--tests is empty".into()));
    }
    load::check_model_path(&args.model)?;
    let backends = open_backends(args.backend, args.kernels)?;
    let loaded = load::load_model(&args.model)?;
    let context = loaded.config.max_position_embeddings;
    if let Some(t) = args.tests.iter().find(|t| t.positions() > context) {
        return Err(Error::Input(format!(
            "{} needs {} positions; the model's context is {context}",
            t.name(),
            t.positions()
        )));
    }
    let model_name = args
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.model.display().to_string());
    let params: usize = loaded.tensors.values().map(|t| t.data.len()).sum();

    let mut rows = Vec::new();
    for (kernels, backend) in backends {
        let name = backend.name();
        let adapter = backend.describe();
        eprintln!(
            "ditto: backend {name} ({adapter}), kernels {}",
            kernels.name()
        );
        let seconds = backend.run(SpeedJob {
            loaded: &loaded,
            args: &args,
        })?;
        for (test, seconds) in args.tests.iter().zip(seconds) {
            rows.push(SpeedRow {
                backend: name,
                adapter: adapter.clone(),
                kernels,
                test: *test,
                seconds,
            });
        }
    }
    // invariant/default time per test, when both ran.
    let ratios: Vec<(SpeedTest, f64)> = args
        .tests
        .iter()
        .filter_map(|&t| {
            let time = |k: Kernels| {
                rows.iter()
                    .find(|r| r.test == t && r.kernels == k)
                    .map(SpeedRow::mean_seconds)
            };
            match (time(Kernels::Invariant), time(Kernels::Default)) {
                (Some(i), Some(d)) if d > 0.0 => Some((t, i / d)),
                _ => None,
            }
        })
        .collect();

    if args.json {
        let value = serde_json::json!({
            "model": model_name,
            "params": params,
            "contract": CONTRACT_VERSION,
            "reps": args.reps,
            "rows": rows.iter().map(|r| {
                let (tps, sd) = r.tokens_per_s();
                serde_json::json!({
                    "model": model_name,
                    "backend": r.backend,
                    "adapter": r.adapter,
                    "kernels": r.kernels.name(),
                    "test": r.test.name(),
                    "tokens": r.test.tokens(),
                    "batch": match r.test { SpeedTest::Prefill(_) => 1, SpeedTest::Decode { batch, .. } => batch },
                    "reps": r.seconds.len(),
                    "seconds": r.seconds,
                    "tokens_per_s": tps,
                    "tokens_per_s_stddev": sd,
                })
            }).collect::<Vec<_>>(),
            "ratios": ratios.iter().map(|(t, r)| serde_json::json!({
                "test": t.name(),
                "invariant_over_default_time": r,
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(());
    }
    let params_text = format!("{:.2} B", params as f64 / 1e9);
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let (tps, sd) = r.tokens_per_s();
            [
                model_name.clone(),
                params_text.clone(),
                r.backend.to_string(),
                r.kernels.name().to_string(),
                r.test.name(),
                format!("{tps:.2} ± {sd:.2}"),
            ]
        })
        .collect();
    let header = ["model", "params", "backend", "kernels", "test", "t/s"];
    print_markdown(&header, &table);
    if !ratios.is_empty() {
        println!();
        let table: Vec<[String; 2]> = ratios
            .iter()
            .map(|(t, r)| [t.name(), format!("{r:.2}")])
            .collect();
        print_markdown(&["test", "invariant/default time"], &table);
    }
    println!();
    println!(
        "contract v{CONTRACT_VERSION}; {} timed repetitions after one warm-up; {}",
        args.reps,
        rows.first().map(|r| r.adapter.as_str()).unwrap_or_default()
    );
    Ok(())
}

/// A Markdown table with padded columns.
fn print_markdown<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.to_vec());
    println!(
        "|{}|",
        width
            .iter()
            .map(|&w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

struct SpeedJob<'a> {
    loaded: &'a LoadedModel,
    args: &'a SpeedArgs,
}

impl BackendJob for SpeedJob<'_> {
    /// Seconds of each timed repetition, per test.
    type Output = Result<Vec<Vec<f64>>, Error>;

    fn run<B: Backend>(self, backend: B) -> Self::Output {
        let a = self.args;
        let context = a.tests.iter().map(|t| t.positions()).max().unwrap_or(1);
        let model = Model::with_context(backend, self.loaded, Some(context))?;
        let vocab = model.config().vocab_size as u64;
        let mut rng = a.seed ^ 0x7370_6565_6400_0000;
        let mut random_tokens = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|_| (next_random(&mut rng) % vocab) as u32)
                .collect()
        };
        let mut out = Vec::new();
        for &test in &a.tests {
            let (sequences, positions) = match test {
                SpeedTest::Prefill(n) => (1, n),
                SpeedTest::Decode { steps, batch } => (batch, DECODE_PROMPT + steps),
            };
            let mut cache = model.new_cache(sequences, positions)?;
            let mut times = Vec::with_capacity(a.reps);
            for rep in 0..=a.reps {
                let seqs: Vec<_> = (0..sequences).map(|_| cache.add_sequence()).collect();
                let seconds = match test {
                    SpeedTest::Prefill(n) => {
                        let tokens = random_tokens(n);
                        let start = Instant::now();
                        model.forward(
                            &mut cache,
                            &[SeqInput {
                                seq: seqs[0],
                                tokens: &tokens,
                            }],
                            LogitsRows::Last,
                        )?;
                        start.elapsed().as_secs_f64()
                    }
                    SpeedTest::Decode { steps, .. } => {
                        let prompts: Vec<Vec<u32>> =
                            seqs.iter().map(|_| random_tokens(DECODE_PROMPT)).collect();
                        let batch: Vec<SeqInput> = seqs
                            .iter()
                            .zip(&prompts)
                            .map(|(&seq, tokens)| SeqInput { seq, tokens })
                            .collect();
                        model.forward(&mut cache, &batch, LogitsRows::Last)?;
                        let inputs: Vec<Vec<u32>> =
                            (0..steps).map(|_| random_tokens(seqs.len())).collect();
                        let start = Instant::now();
                        for step in &inputs {
                            let batch: Vec<SeqInput> = seqs
                                .iter()
                                .zip(step)
                                .map(|(&seq, t)| SeqInput {
                                    seq,
                                    tokens: std::slice::from_ref(t),
                                })
                                .collect();
                            model.forward(&mut cache, &batch, LogitsRows::Last)?;
                        }
                        start.elapsed().as_secs_f64()
                    }
                };
                for seq in seqs {
                    cache.free_sequence(seq)?;
                }
                // Repetition 0 is the warm-up (pipelines compiled, buffers allocated).
                if rep > 0 {
                    times.push(seconds);
                }
            }
            // As each test ends, so that a run cut short still reports what it measured.
            let (mean, sd) = mean_stddev(&rates(test, &times));
            eprintln!("ditto: {}: {mean:.2} ± {sd:.2} tokens/s", test.name());
            out.push(times);
        }
        Ok(out)
    }
}
