//! `ditto verify`: the numerics contract checked on this machine, end to end.
//!
//! Every prompt runs greedy for `--max-tokens` steps on every backend found (the cpu backend,
//! each CUDA device, each wgpu adapter), in three batch compositions:
//! - `alone`: the prompt by itself, its whole prompt in one forward call, then decode at batch 1;
//! - `batched`: all prompts plus a filler request through the continuous-batching scheduler,
//!   arriving one per step, so prompt chunks are mixed with other requests' decode steps;
//! - `chunked`: the prompt by itself, prefilled a few tokens per forward call, then decode.
//!
//! A run's fingerprint is its tokens and its `logits_sha256` (the SHA-256 of the little-endian
//! bits of every step's logits row, as `ditto generate --json` prints it). The contract says all
//! fingerprints of one prompt are equal, whatever the composition and the backend; `verify`
//! prints them as a table and fails (exit status 1) if any differs. A backend that cannot open
//! (no driver, no device, the model does not fit) is listed as unavailable, not as a failure.
//!
//! CPU wgpu adapters (lavapipe, WARP) are skipped unless `--all-adapters` or `--backend wgpu`:
//! they run the same kernels as a GPU, but about 30 times slower than the cpu backend (measured
//! 2026-11-23 on a 2-core machine: 0.19 tokens/s on SmolLM2-135M).

use super::Kernels;
use crate::backend_select::{open_cpu, BackendJob, Selected};
use crate::load;
use ditto_cuda::CudaBackend;
use ditto_engine::generate::plain_prompt_tokens;
use ditto_engine::loader::LoadedModel;
use ditto_engine::model::Model;
use ditto_engine::sampling::SamplingParams;
use ditto_engine::scheduler::{Event, Request, RequestId, Scheduler, SchedulerConfig};
use ditto_engine::wgpu::{list_adapters, WgpuBackend};
use ditto_engine::{Backend, Error, KernelMode, Result};
use ditto_shaders::contract::CONTRACT_VERSION;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Compositions: alone (whole prompt in one call), batched (all prompts and a filler request \
arriving one per step through the scheduler: prefill mixed with decode), chunked (prompt fed \
--chunk tokens per call). Every fingerprint of a prompt must agree; the exit status is 1 if one \
differs (or a backend fails while running), 0 otherwise. Backends that cannot open are listed as \
unavailable. CPU wgpu adapters (lavapipe) are about 30x slower than the cpu backend, so they \
are skipped unless --all-adapters or --backend wgpu.")]
pub(crate) struct VerifyArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A file of prompts, one per line (blank lines are skipped). Default: four short built-in
    /// prompts (English, code, Unicode with emoji, digits).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Greedy steps per run.
    #[arg(long, default_value_t = 8)]
    max_tokens: usize,
    /// Only these backends (comma-separated or repeated). Default: every backend found.
    #[arg(long, value_enum, value_delimiter = ',')]
    backend: Vec<BackendKind>,
    /// Also run CPU wgpu adapters (lavapipe, WARP), skipped by default as slow.
    #[arg(long)]
    all_adapters: bool,
    /// `default` shows what the fastest kernels do (the cpu backend has none, so it is listed as
    /// unavailable); the exit status still reflects mismatches.
    #[arg(long, value_enum, default_value_t = Kernels::Invariant)]
    kernels: Kernels,
    /// Prompt tokens per forward call in the `chunked` composition.
    #[arg(long, default_value_t = 3)]
    chunk: usize,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
}

/// Built-in prompts: short, so that a CPU adapter can run them, and varied.
const PROMPTS: &[&str] = &[
    "The capital of France is",
    "fn fibonacci(n: u64) -> u64 {",
    "Ünïcödé: 東京 🚀 naïve café —",
    "3.14159 + 2.71828 = 5.",
];

/// The request batched with the prompts in the `batched` composition (not fingerprinted).
const FILLER: &str = "Once upon a time, there lived a";

/// How a prompt was batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Composition {
    Alone,
    Batched,
    Chunked,
}

impl Composition {
    const ALL: [Composition; 3] = [
        Composition::Alone,
        Composition::Batched,
        Composition::Chunked,
    ];
    fn name(self) -> &'static str {
        match self {
            Composition::Alone => "alone",
            Composition::Batched => "batched",
            Composition::Chunked => "chunked",
        }
    }
}

/// One run's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cell {
    /// Index into the list of backends.
    pub backend: usize,
    pub prompt: usize,
    pub composition: Composition,
    pub tokens: Vec<u32>,
    pub logits_sha256: String,
}

impl Cell {
    fn same_as(&self, other: &Cell) -> bool {
        self.tokens == other.tokens && self.logits_sha256 == other.logits_sha256
    }
}

/// A cell that differs from its prompt's reference cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// Index into the cells.
    pub cell: usize,
    /// Index of the prompt's reference cell: its first cell (the first backend's `alone` run).
    pub reference: usize,
}

/// The comparison: every cell that differs from the first cell of its prompt, and how many
/// distinct fingerprints each of `prompts` prompts has (0 where it has no cell).
pub(crate) fn compare(cells: &[Cell], prompts: usize) -> (Vec<Mismatch>, Vec<usize>) {
    let mut reference: Vec<Option<usize>> = vec![None; prompts];
    let mut distinct: Vec<BTreeSet<(&[u32], &str)>> = vec![BTreeSet::new(); prompts];
    let mut mismatches = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        distinct[c.prompt].insert((&c.tokens, &c.logits_sha256));
        match reference[c.prompt] {
            None => reference[c.prompt] = Some(i),
            Some(r) if !c.same_as(&cells[r]) => mismatches.push(Mismatch {
                cell: i,
                reference: r,
            }),
            Some(_) => {}
        }
    }
    (mismatches, distinct.iter().map(BTreeSet::len).collect())
}

/// What happened to one backend.
enum Status {
    Ran {
        seconds: f64,
        batched: BatchedShape,
    },
    /// Not run on purpose.
    Skipped(String),
    /// Could not open, or the model could not be uploaded.
    Unavailable(String),
    /// Opened, then failed while running: a failure of the verification.
    Failed(String),
}

struct BackendReport {
    name: String,
    description: String,
    status: Status,
}

/// A backend to try.
enum Target {
    Cpu,
    Cuda(usize),
    Wgpu(usize),
}

/// The shapes the `batched` composition produced: evidence that it batched.
#[derive(Clone, Copy, Debug, Default)]
struct BatchedShape {
    max_sequences: usize,
    /// Forward calls mixing a prompt chunk with another request's decode step.
    mixed_calls: usize,
}

pub(crate) fn verify(args: VerifyArgs) -> Result<()> {
    if args.max_tokens == 0 || args.chunk == 0 {
        return Err(Error::Input(
            "--max-tokens and --chunk must be at least 1".into(),
        ));
    }
    let prompts: Vec<String> = match &args.prompts {
        None => PROMPTS.iter().map(|p| p.to_string()).collect(),
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| Error::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::Input(format!("{}: not valid UTF-8", path.display())))?;
            text.lines()
                .map(|l| l.strip_suffix('\r').unwrap_or(l))
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect()
        }
    };
    if prompts.is_empty() {
        return Err(Error::Input(
            "no prompts: the file has no non-blank line".into(),
        ));
    }
    load::check_model_path(&args.model)?;
    let mode = args.kernels.mode();
    let wanted = |k: BackendKind| args.backend.is_empty() || args.backend.contains(&k);

    let loaded = load::load_model(&args.model)?;
    let tokens: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| plain_prompt_tokens(&loaded.tokenizer, &loaded.generation, p))
        .collect::<Result<_>>()?;
    let filler = plain_prompt_tokens(&loaded.tokenizer, &loaded.generation, FILLER)?;
    let context = loaded.config.max_position_embeddings;
    for (p, t) in prompts.iter().zip(&tokens) {
        if t.is_empty() {
            return Err(Error::Input(format!("the prompt {p:?} has no tokens")));
        }
        if t.len() + args.max_tokens > context {
            return Err(Error::Input(format!(
                "the prompt {p:?} ({} tokens) plus --max-tokens ({}) is longer than the context \
                 of {context}",
                t.len(),
                args.max_tokens
            )));
        }
    }
    let filler_tokens = args.max_tokens + prompts.len();
    let filler: Vec<u32> = filler
        .into_iter()
        .take(context.saturating_sub(filler_tokens).max(1))
        .collect();

    // The backends, in order: cpu (the contract's reference), CUDA devices, wgpu adapters.
    let mut targets: Vec<(String, String, std::result::Result<Target, Status>)> = Vec::new();
    if wanted(BackendKind::Cpu) {
        targets.push(("cpu".into(), String::new(), Ok(Target::Cpu)));
    }
    if wanted(BackendKind::Cuda) {
        match ditto_cuda::list_devices() {
            Ok(devices) if devices.is_empty() => targets.push((
                "cuda".into(),
                String::new(),
                Err(Status::Unavailable("no CUDA device".into())),
            )),
            Ok(devices) => {
                for (i, d) in devices.into_iter().enumerate() {
                    targets.push((format!("cuda:{i}"), d, Ok(Target::Cuda(i))));
                }
            }
            Err(e) => targets.push((
                "cuda".into(),
                String::new(),
                Err(Status::Unavailable(e.to_string())),
            )),
        }
    }
    if wanted(BackendKind::Wgpu) {
        let adapters = list_adapters();
        if adapters.is_empty() {
            targets.push((
                "wgpu".into(),
                String::new(),
                Err(Status::Unavailable("no wgpu adapter found".into())),
            ));
        }
        let explicit = args.backend.contains(&BackendKind::Wgpu);
        for (i, a) in adapters.into_iter().enumerate() {
            let description = format!("{} ({}, {})", a.name, a.backend, a.device_type);
            let target = if a.device_type == "Cpu" && !(args.all_adapters || explicit) {
                Err(Status::Skipped(
                    "a CPU adapter, slow: --all-adapters or --backend wgpu runs it".into(),
                ))
            } else {
                Ok(Target::Wgpu(i))
            };
            targets.push((format!("wgpu:{i}"), description, target));
        }
    }

    let mut reports = Vec::new();
    let mut cells = Vec::new();
    for (name, description, target) in targets {
        let backend_index = reports.len();
        let mut report = BackendReport {
            name,
            description,
            status: Status::Skipped(String::new()),
        };
        let opened = match target {
            Err(status) => Err(status),
            Ok(t) => open(t, mode).map_err(|e| Status::Unavailable(e.to_string())),
        };
        report.status = match opened {
            Err(status) => status,
            Ok(backend) => {
                report.description = backend.describe();
                eprintln!(
                    "ditto: verifying on {} ({})",
                    report.name, report.description
                );
                let start = Instant::now();
                let job = Job {
                    loaded: &loaded,
                    prompts: &tokens,
                    filler: &filler,
                    filler_tokens,
                    max_tokens: args.max_tokens,
                    chunk: args.chunk,
                    context: tokens
                        .iter()
                        .chain(std::iter::once(&filler))
                        .map(Vec::len)
                        .max()
                        .unwrap_or(0)
                        + filler_tokens.max(args.max_tokens),
                };
                match backend.run(job) {
                    Ok((runs, batched)) => {
                        for (prompt, composition, tokens, logits_sha256) in runs {
                            cells.push(Cell {
                                backend: backend_index,
                                prompt,
                                composition,
                                tokens,
                                logits_sha256,
                            });
                        }
                        Status::Ran {
                            seconds: start.elapsed().as_secs_f64(),
                            batched,
                        }
                    }
                    Err(JobError::Upload(e)) => Status::Unavailable(e.to_string()),
                    Err(JobError::Run(e)) => Status::Failed(e.to_string()),
                }
            }
        };
        reports.push(report);
    }

    let (mismatches, distinct) = compare(&cells, prompts.len());
    let ran = reports
        .iter()
        .filter(|r| matches!(r.status, Status::Ran { .. }))
        .count();
    let failed = reports
        .iter()
        .filter(|r| matches!(r.status, Status::Failed(_)))
        .count();
    let pass = ran > 0 && failed == 0 && mismatches.is_empty();
    let summary = if ran == 0 {
        "no backend could run".to_string()
    } else if pass {
        format!(
            "all {} fingerprints agree ({} prompts x {} compositions x {ran} backend{})",
            cells.len(),
            prompts.len(),
            Composition::ALL.len(),
            if ran == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "{} of {} fingerprints differ from their prompt's reference{}",
            mismatches.len(),
            cells.len(),
            if failed > 0 {
                format!("; {failed} backend(s) failed while running")
            } else {
                String::new()
            }
        )
    };

    let texts: Vec<Option<String>> = (0..prompts.len())
        .map(|p| {
            cells
                .iter()
                .find(|c| c.prompt == p)
                .and_then(|c| loaded.tokenizer.decode(&c.tokens).ok())
        })
        .collect();
    if args.json {
        let backends: Vec<Value> = reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut v = json!({ "name": r.name, "description": r.description });
                let o = v.as_object_mut().expect("an object");
                match &r.status {
                    Status::Ran { seconds, batched } => {
                        o.insert("status".into(), "ok".into());
                        o.insert("seconds".into(), (*seconds).into());
                        o.insert("batched_max_sequences".into(), batched.max_sequences.into());
                        o.insert("batched_mixed_calls".into(), batched.mixed_calls.into());
                        let fingerprints: Vec<Value> = cells
                            .iter()
                            .filter(|c| c.backend == i)
                            .map(|c| {
                                json!({
                                    "prompt": c.prompt,
                                    "composition": c.composition.name(),
                                    "tokens": c.tokens,
                                    "logits_sha256": c.logits_sha256,
                                })
                            })
                            .collect();
                        o.insert("fingerprints".into(), fingerprints.into());
                    }
                    Status::Skipped(reason) => {
                        o.insert("status".into(), "skipped".into());
                        o.insert("reason".into(), reason.clone().into());
                    }
                    Status::Unavailable(reason) => {
                        o.insert("status".into(), "unavailable".into());
                        o.insert("reason".into(), reason.clone().into());
                    }
                    Status::Failed(reason) => {
                        o.insert("status".into(), "failed".into());
                        o.insert("reason".into(), reason.clone().into());
                    }
                }
                v
            })
            .collect();
        let cell_json = |c: &Cell| {
            json!({
                "prompt": c.prompt,
                "backend": reports[c.backend].name,
                "composition": c.composition.name(),
                "tokens": c.tokens,
                "logits_sha256": c.logits_sha256,
            })
        };
        let value = json!({
            "verdict": if pass { "pass" } else { "fail" },
            "summary": summary,
            "model": args.model.display().to_string(),
            "kernels": args.kernels.name(),
            "contract": CONTRACT_VERSION,
            "max_tokens": args.max_tokens,
            "chunk": args.chunk,
            "compositions": Composition::ALL.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "prompts": prompts.iter().zip(&tokens).enumerate().map(|(p, (text, t))| json!({
                "text": text,
                "prompt_tokens": t.len(),
                "distinct_fingerprints": distinct[p],
                "completion": texts[p],
            })).collect::<Vec<_>>(),
            "backends": backends,
            "backends_run": ran,
            "mismatches": mismatches.iter().map(|m| {
                let mut v = cell_json(&cells[m.cell]);
                v["reference"] = cell_json(&cells[m.reference]);
                v
            }).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        print_table(&args, &prompts, &reports, &cells, &mismatches, &texts);
        println!(
            "verdict: {} — {summary}",
            if pass { "PASS" } else { "FAIL" }
        );
    }
    if pass {
        Ok(())
    } else {
        Err(Error::Input(format!("verify failed: {summary}")))
    }
}

fn open(target: Target, mode: KernelMode) -> Result<Selected> {
    match target {
        Target::Cpu => open_cpu(mode),
        Target::Cuda(i) => CudaBackend::on_device(i, mode).map(|b| Selected::Cuda(Box::new(b))),
        Target::Wgpu(i) => WgpuBackend::with_adapter(mode, i).map(|b| Selected::Wgpu(Box::new(b))),
    }
}

/// A prompt as a table label: escaped, at most 28 characters.
fn label(prompt: &str) -> String {
    let escaped: String = prompt.escape_debug().collect();
    if escaped.chars().count() <= 28 {
        format!("\"{escaped}\"")
    } else {
        format!("\"{}…\"", escaped.chars().take(26).collect::<String>())
    }
}

fn print_table(
    args: &VerifyArgs,
    prompts: &[String],
    reports: &[BackendReport],
    cells: &[Cell],
    mismatches: &[Mismatch],
    texts: &[Option<String>],
) {
    println!(
        "ditto verify: {}, kernels {}, contract v{CONTRACT_VERSION}, {} greedy tokens per run",
        args.model.display(),
        args.kernels.name(),
        args.max_tokens
    );
    println!("backends:");
    for r in reports {
        let status = match &r.status {
            Status::Ran { seconds, batched } => format!(
                "ran in {seconds:.1} s (batched: up to {} sequences, {} mixed calls)",
                batched.max_sequences, batched.mixed_calls
            ),
            Status::Skipped(reason) => format!("skipped: {reason}"),
            Status::Unavailable(reason) => format!("unavailable: {reason}"),
            Status::Failed(reason) => format!("FAILED: {reason}"),
        };
        let description = if r.description.is_empty() {
            String::new()
        } else {
            format!(" {}", r.description)
        };
        println!("  {}{description}: {status}", r.name);
    }
    let columns: Vec<usize> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.status, Status::Ran { .. }))
        .map(|(i, _)| i)
        .collect();
    if columns.is_empty() {
        return;
    }
    let bad: BTreeSet<usize> = mismatches.iter().map(|m| m.cell).collect();
    let index: HashMap<(usize, usize, Composition), usize> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| ((c.prompt, c.backend, c.composition), i))
        .collect();
    const HASH: usize = 12;
    let width = |i: usize| reports[i].name.chars().count().max(HASH + 1);
    println!();
    print!("{:<30} {:<11}", "prompt", "composition");
    for &b in &columns {
        print!(" {:<w$}", reports[b].name, w = width(b));
    }
    println!();
    for (p, prompt) in prompts.iter().enumerate() {
        for (k, composition) in Composition::ALL.iter().enumerate() {
            let first = if k == 0 { label(prompt) } else { String::new() };
            print!("{first:<30} {:<11}", composition.name());
            for &b in &columns {
                let cell = match index.get(&(p, b, *composition)) {
                    Some(&i) => format!(
                        "{}{}",
                        &cells[i].logits_sha256[..HASH.min(cells[i].logits_sha256.len())],
                        if bad.contains(&i) { "*" } else { "" }
                    ),
                    None => "-".into(),
                };
                print!(" {cell:<w$}", w = width(b));
            }
            println!();
        }
        if let Some(text) = &texts[p] {
            println!("{:<30} -> {}", "", label(text));
        }
    }
    println!();
    println!(
        "cells: the first {HASH} hex digits of logits_sha256{}",
        if bad.is_empty() {
            ""
        } else {
            "; * differs from its prompt's first cell (tokens or logits)"
        }
    );
}

/// What a backend's run failed at.
enum JobError {
    /// Uploading the model (it may not fit): the backend is unavailable for this model.
    Upload(Error),
    /// Running it: a failure.
    Run(Error),
}

/// (prompt, composition, tokens, logits_sha256) of each run.
type Runs = Vec<(usize, Composition, Vec<u32>, String)>;

struct Job<'a> {
    loaded: &'a LoadedModel,
    prompts: &'a [Vec<u32>],
    filler: &'a [u32],
    filler_tokens: usize,
    max_tokens: usize,
    chunk: usize,
    context: usize,
}

impl BackendJob for Job<'_> {
    type Output = std::result::Result<(Runs, BatchedShape), JobError>;

    fn run<B: Backend>(self, backend: B) -> Self::Output {
        let model = Model::with_context(backend, self.loaded, Some(self.context))
            .map_err(JobError::Upload)?;
        let mut runs = Vec::new();
        let mut shape = BatchedShape::default();
        for composition in Composition::ALL {
            let out = self
                .composition(&model, composition, &mut shape)
                .map_err(JobError::Run)?;
            runs.extend(
                out.into_iter()
                    .enumerate()
                    .map(|(p, (tokens, hash))| (p, composition, tokens, hash)),
            );
        }
        Ok((runs, shape))
    }
}

impl Job<'_> {
    fn request(&self, prompt_tokens: &[u32], max_tokens: usize) -> Request {
        Request {
            prompt_tokens: prompt_tokens.to_vec(),
            max_tokens,
            sampling: SamplingParams::default(),
            seed: 0,
            request_id: 0,
            // Exactly `max_tokens` steps: the fingerprint covers a fixed number of tokens.
            stop_tokens: Vec::new(),
        }
    }

    /// Runs every prompt in one composition; returns (tokens, logits_sha256) per prompt.
    fn composition<B: Backend>(
        &self,
        model: &Model<B>,
        composition: Composition,
        shape: &mut BatchedShape,
    ) -> Result<Vec<(Vec<u32>, String)>> {
        let longest = self.prompts.iter().map(Vec::len).max().unwrap_or(1);
        let pages = |n: usize| n.div_ceil(16) * 16;
        let (config, positions) = match composition {
            Composition::Alone => (
                SchedulerConfig {
                    max_batch: 1,
                    max_batch_tokens: longest,
                    prefill_chunk: longest,
                },
                pages(longest + self.max_tokens),
            ),
            Composition::Chunked => (
                SchedulerConfig {
                    max_batch: 1,
                    max_batch_tokens: self.chunk,
                    prefill_chunk: self.chunk,
                },
                pages(longest + self.max_tokens),
            ),
            Composition::Batched => (
                SchedulerConfig {
                    max_batch: self.prompts.len() + 1,
                    max_batch_tokens: 4096,
                    // Other chunk boundaries than `chunked`'s, so long prompts are split too.
                    prefill_chunk: 8,
                },
                self.prompts
                    .iter()
                    .map(|p| pages(p.len() + self.max_tokens))
                    .sum::<usize>()
                    + pages(self.filler.len() + self.filler_tokens),
            ),
        };
        let mut sched = Scheduler::new(model, config, positions)?;
        let mut ids: HashMap<RequestId, usize> = HashMap::new();
        // Alone and chunked: every prompt queued at once, run one after another (max_batch 1).
        // Batched: the filler first, then, once it decodes, one prompt per step, each arriving
        // while the filler and the earlier prompts decode.
        let mut arrivals = self.prompts.iter().enumerate();
        if composition == Composition::Batched {
            sched.submit(self.request(self.filler, self.filler_tokens))?;
        } else {
            for (p, t) in arrivals.by_ref() {
                ids.insert(sched.submit(self.request(t, self.max_tokens))?, p);
            }
        }
        let mut out: Vec<Option<(Vec<u32>, String)>> = vec![None; self.prompts.len()];
        // Whether a request has sampled a token: the filler's prompt is through.
        let mut decoding = false;
        while !sched.is_idle() || arrivals.len() > 0 {
            let events = sched.step()?;
            if let Some(b) = sched.last_batch() {
                if composition == Composition::Batched {
                    shape.max_sequences = shape.max_sequences.max(b.sequences);
                    if b.prefilling > 0 && b.prefilling < b.sequences {
                        shape.mixed_calls += 1;
                    }
                }
            }
            for e in events {
                match e {
                    Event::Token { .. } => decoding = true,
                    Event::Finished { id, completion } => {
                        if let Some(&p) = ids.get(&id) {
                            out[p] = Some((completion.tokens, completion.logits_sha256));
                        }
                    }
                    Event::Failed { error, .. } => {
                        return Err(Error::Device(format!(
                            "{} composition: {error}",
                            composition.name()
                        )))
                    }
                }
            }
            if decoding {
                if let Some((p, t)) = arrivals.next() {
                    ids.insert(sched.submit(self.request(t, self.max_tokens))?, p);
                }
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| Error::Device("a request did not finish".into())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(backend: usize, prompt: usize, composition: Composition, hash: &str) -> Cell {
        Cell {
            backend,
            prompt,
            composition,
            tokens: vec![1, 2, 3],
            logits_sha256: hash.into(),
        }
    }

    #[test]
    fn agreeing_cells_pass() {
        let mut cells = Vec::new();
        for b in 0..2 {
            for p in 0..2 {
                for c in Composition::ALL {
                    cells.push(cell(b, p, c, if p == 0 { "aa" } else { "bb" }));
                }
            }
        }
        let (mismatches, distinct) = compare(&cells, 2);
        assert!(mismatches.is_empty());
        assert_eq!(distinct, vec![1, 1]);
    }

    /// A doctored fingerprint (one logits hash, one token) is found, and only it.
    #[test]
    fn a_doctored_cell_is_a_mismatch() {
        let mut cells = Vec::new();
        for b in 0..2 {
            for c in Composition::ALL {
                cells.push(cell(b, 0, c, "aa"));
                cells.push(cell(b, 1, c, "bb"));
            }
        }
        cells[7].logits_sha256 = "ab".into();
        cells[4].tokens[2] = 4;
        let (mismatches, distinct) = compare(&cells, 3);
        assert_eq!(
            mismatches,
            vec![
                Mismatch {
                    cell: 4,
                    reference: 0
                },
                Mismatch {
                    cell: 7,
                    reference: 1
                }
            ]
        );
        assert_eq!(distinct, vec![2, 2, 0]);
    }
}
