//! The `ditto` command: `ditto generate`, `ditto verify`, `ditto bench` and `ditto devices`.
//!
//! Text goes to stdout as it is generated; the summary (load time, throughput, backend, contract
//! version) goes to stderr, so stdout holds only the text (or, with `--json`, one JSON object).
//! Every failure is a message on stderr and a non-zero exit status: 1 for errors while running,
//! 2 for bad usage (clap's convention).

pub mod backend_select;
mod bench;
pub mod load;
mod verify;

use backend_select::{select, BackendChoice, BackendJob};
use clap::{Parser, Subcommand, ValueEnum};
use ditto_engine::generate::{GenerateRequest, Generator, StopReason};
use ditto_engine::loader::LoadedModel;
use ditto_engine::sampling::SamplingParams;
use ditto_engine::{Backend, Error, KernelMode};
use ditto_shaders::contract::CONTRACT_VERSION;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "ditto",
    version,
    about = "Deterministic LLM inference: the same bits on every backend and at every batch size"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kernels {
    /// The numerics contract: the same bits everywhere.
    Invariant,
    /// The backend's fastest kernels, without the contract (for comparisons).
    Default,
}

/// `--kernels` of the benchmarks: one mode, or both one after the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KernelsChoice {
    Invariant,
    Default,
    /// Invariant, then default, with the ratio of their times.
    Both,
}

impl KernelsChoice {
    fn list(self) -> Vec<Kernels> {
        match self {
            KernelsChoice::Invariant => vec![Kernels::Invariant],
            KernelsChoice::Default => vec![Kernels::Default],
            KernelsChoice::Both => vec![Kernels::Invariant, Kernels::Default],
        }
    }
}

impl Kernels {
    fn mode(self) -> KernelMode {
        match self {
            Kernels::Invariant => KernelMode::Invariant,
            Kernels::Default => KernelMode::Default,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kernels::Invariant => "invariant",
            Kernels::Default => "default",
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// List the backends and adapters this machine offers.
    Devices,
    /// Check the contract here: prompts on every backend, alone, batched and chunked, must give
    /// the same bits.
    Verify(verify::VerifyArgs),
    /// Benchmarks and checks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Many copies of one prompt arriving among other requests must agree bit for bit.
    Determinism(bench::DeterminismArgs),
    /// Throughput, llama-bench style: prefill (ppN), decode (tgN) and batched decode (tgN@B).
    Speed(bench::SpeedArgs),
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (with --chat, the user message).
    #[arg(long, value_parser = clap::value_parser!(OsString))]
    prompt: OsString,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens when sampling (0: all). Default: the model's.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1]. Default: the model's, else 1.
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed of the sampler (with the request id and position it keys every random draw).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    #[arg(long, value_enum, default_value_t = Kernels::Invariant)]
    kernels: Kernels,
    /// Render the prompt through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long, value_parser = clap::value_parser!(OsString), requires = "chat")]
    system: Option<OsString>,
    /// Print one JSON object on stdout instead of streaming the text.
    #[arg(long)]
    json: bool,
}

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    run_args(std::env::args_os())
}

/// Runs a command line (the first item is the program name).
pub fn run_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Help and version are "errors" that exit 0; clap prints each where it belongs.
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let result = match cli.command {
        Command::Devices => {
            for line in backend_select::list_devices() {
                println!("{line}");
            }
            Ok(())
        }
        Command::Generate(args) => generate(args),
        Command::Verify(args) => verify::verify(args),
        Command::Bench(BenchCommand::Determinism(args)) => bench::determinism(args),
        Command::Bench(BenchCommand::Speed(args)) => bench::speed(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ditto: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn utf8_arg(name: &str, value: OsString) -> Result<String, Error> {
    value
        .into_string()
        .map_err(|_| Error::Input(format!("{name} is not valid UTF-8")))
}

fn generate(args: GenerateArgs) -> Result<(), Error> {
    // Cheap checks first, before a model is read.
    let prompt = utf8_arg("--prompt", args.prompt)?;
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    let system = args.system.map(|s| utf8_arg("--system", s)).transpose()?;
    if args.max_tokens == 0 {
        return Err(Error::Input("--max-tokens must be at least 1".into()));
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

    let load_start = Instant::now();
    let loaded = load::load_model(&args.model)?;
    let read_secs = load_start.elapsed().as_secs_f64();

    let defaults = &loaded.generation;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k.or(defaults.top_k).unwrap_or(0),
        top_p: args.top_p.or(defaults.top_p).unwrap_or(1.0),
    };
    let request = GenerateRequest {
        prompt,
        chat: args.chat,
        system,
        max_tokens: args.max_tokens,
        sampling,
        seed: args.seed,
        ..GenerateRequest::new("", 0)
    };
    let job = GenerateJob {
        loaded,
        request,
        json: args.json,
        backend_name: backend.name(),
        backend_description: backend.describe(),
        kernels: args.kernels,
        read_secs,
    };
    backend.run(job)
}

/// One `generate` run on whichever backend was selected.
struct GenerateJob {
    loaded: LoadedModel,
    request: GenerateRequest,
    json: bool,
    backend_name: &'static str,
    backend_description: String,
    kernels: Kernels,
    read_secs: f64,
}

impl BackendJob for GenerateJob {
    type Output = Result<(), Error>;

    fn run<B: Backend>(self, backend: B) -> Result<(), Error> {
        let source = self.loaded.source.clone();
        let upload_start = Instant::now();
        let generator = Generator::new(backend, self.loaded, None)?;
        let upload_secs = upload_start.elapsed().as_secs_f64();
        eprintln!(
            "ditto: loaded {source} in {:.2} s (read {:.2} s, upload {upload_secs:.2} s)",
            self.read_secs + upload_secs,
            self.read_secs
        );

        let json = self.json;
        let mut stdout = std::io::stdout().lock();
        let mut write_error = None;
        let out = generator.generate(&self.request, &mut |piece| {
            if json || write_error.is_some() {
                return;
            }
            // A closed pipe (`ditto … | head`) ends the output, not the process with a panic.
            if let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
            {
                write_error = Some(e);
            }
        })?;

        let t = &out.timings;
        if json {
            let value = serde_json::json!({
                "tokens": out.tokens,
                "text": out.text,
                "prompt_tokens": out.prompt_tokens,
                "generated_tokens": out.tokens.len(),
                "stop": match out.stop { StopReason::Eos => "eos", StopReason::MaxTokens => "max_tokens" },
                "backend": self.backend_name,
                "adapter": self.backend_description,
                "kernels": self.kernels.name(),
                "contract": CONTRACT_VERSION,
                "logits_sha256": out.logits_sha256,
                "seed": self.request.seed,
                "temperature": self.request.sampling.temperature,
                "top_k": self.request.sampling.top_k,
                "top_p": self.request.sampling.top_p,
                "prompt_tokens_per_s": t.prompt_tokens_per_s(out.prompt_tokens),
                "generated_tokens_per_s": t.generated_tokens_per_s(),
            });
            writeln!(stdout, "{value}").map_err(|e| Error::Io {
                path: "stdout".into(),
                source: e,
            })?;
        } else if write_error.is_none() {
            let _ = writeln!(stdout);
        }
        eprintln!(
            "ditto: prompt {} tokens in {:.3} s ({:.1} tokens/s); generated {} tokens ({}), \
             decode {:.1} tokens/s",
            out.prompt_tokens,
            t.prefill.as_secs_f64(),
            t.prompt_tokens_per_s(out.prompt_tokens),
            out.tokens.len(),
            match out.stop {
                StopReason::Eos => "end of sequence",
                StopReason::MaxTokens => "max tokens",
            },
            t.generated_tokens_per_s()
        );
        eprintln!(
            "ditto: contract v{CONTRACT_VERSION}, logits sha256 {}",
            out.logits_sha256
        );
        Ok(())
    }
}
