//! Text generation: prompt (or chat) to tokens, prefill, the decode loop, streaming text, and a
//! fingerprint of every logit the run produced.
//!
//! ## `logits_sha256`
//! SHA-256 over, for each generated token in order, the logits row it was sampled from: `vocab`
//! f32 values, each as its 4 IEEE-754 bytes in little-endian order (`f32::to_bits().to_le_bytes()`),
//! rows concatenated with nothing between them. The first row is the prefill's last position;
//! a run that generates n tokens hashes n rows (`n * vocab * 4` bytes). Nothing else (no token
//! ids, no contract version) is hashed; print the contract version beside it.

use crate::backend::Backend;
use crate::kv_cache::KvCache;
use crate::loader::{GenerationDefaults, LoadedModel};
use crate::model::{LogitsRows, Model, SeqInput};
use crate::sampling::{sample, SamplingParams};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Prompt positions per forward call during prefill, unless the request says otherwise.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The user's text. With `chat`, the user message; otherwise the raw prompt.
    pub prompt: String,
    /// Render the prompt through the model's chat template (system + user message, generation
    /// prompt added).
    pub chat: bool,
    /// The system message, with `chat`.
    pub system: Option<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Keys the sampler's random numbers together with `seed` and the position.
    pub request_id: u64,
    /// Prompt tokens per prefill forward call (0: the whole prompt in one call). The numbers do
    /// not depend on it.
    pub prefill_chunk: usize,
}

impl GenerateRequest {
    /// A greedy request for `max_tokens` tokens of a raw prompt.
    pub fn new(prompt: impl Into<String>, max_tokens: usize) -> Self {
        GenerateRequest {
            prompt: prompt.into(),
            chat: false,
            system: None,
            max_tokens,
            sampling: SamplingParams::default(),
            seed: 0,
            request_id: 0,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced one of the end-of-sequence tokens (included in `tokens`).
    Eos,
    MaxTokens,
}

/// Wall-clock time of the phases of one request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Prefill: every prompt position through the model, plus sampling the first token.
    pub prefill: Duration,
    /// Decode: the forward calls of the later tokens, plus their sampling.
    pub decode: Duration,
    /// Forward calls in the decode phase (one per generated token after the first).
    pub decode_steps: usize,
}

impl Timings {
    pub fn prompt_tokens_per_s(&self, prompt_tokens: usize) -> f64 {
        per_second(prompt_tokens, self.prefill)
    }
    /// Decode throughput: decode steps per second (the first token comes from prefill).
    pub fn generated_tokens_per_s(&self) -> f64 {
        per_second(self.decode_steps, self.decode)
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// The result of one request.
#[derive(Clone, Debug)]
pub struct GenerateOutput {
    /// Generated token ids (an end-of-sequence token that stopped generation included).
    pub tokens: Vec<u32>,
    /// The generated text (special tokens skipped): exactly the concatenation of the streamed
    /// pieces.
    pub text: String,
    pub prompt_tokens: usize,
    /// Lowercase hex; see the module documentation for what is hashed.
    pub logits_sha256: String,
    pub stop: StopReason,
    pub timings: Timings,
}

/// Incremental detokenization: turns a growing list of token ids into text pieces, emitting
/// only text that is final (never the U+FFFD of a multi-byte character whose bytes have not all
/// arrived). Each piece is a `&str`, so a character is never split.
///
/// It decodes the whole generated list at every step and emits what extends the text already
/// emitted; O(n²) in the generated length, negligible next to a forward pass.
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    emitted: String,
}

impl<'t> TextStream<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            emitted: String::new(),
        }
    }

    /// Adds a token; returns the new final text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            // Possibly an incomplete character: wait for more tokens (or `finish`).
            return Ok(None);
        }
        Ok(self.take_new(text))
    }

    /// The remaining text at the end of generation, incomplete characters included (as U+FFFD:
    /// the model really produced invalid UTF-8).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids)?;
        Ok(self.take_new(text))
    }

    /// Everything emitted so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }

    fn take_new(&mut self, text: String) -> Option<String> {
        // A decoder could in principle rewrite earlier text (none of the Hugging Face decoders
        // ditto meets do once a character is complete); what was emitted cannot be taken back,
        // so such a rewrite is not streamed.
        let piece = text.strip_prefix(self.emitted.as_str())?;
        if piece.is_empty() {
            return None;
        }
        let piece = piece.to_string();
        self.emitted.push_str(&piece);
        Some(piece)
    }
}

/// Renders a chat template (Jinja, through minijinja) with a system and a user message and the
/// generation prompt. The template sees `messages`, `add_generation_prompt`, `bos_token`,
/// `eos_token` and `raise_exception(msg)`.
pub fn render_chat(
    template: &str,
    system: Option<&str>,
    user: &str,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    use minijinja::{context, Environment, ErrorKind, Value};
    let mut env = Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.set_unknown_method_callback(python_string_methods);
    let template_error = |e: minijinja::Error| Error::Input(format!("chat template: {e:#}"));
    env.add_template("chat", template).map_err(template_error)?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(context! { role => "system", content => s });
    }
    messages.push(context! { role => "user", content => user });
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => bos_token,
                eos_token => eos_token,
            })
        })
        .map_err(template_error)
}

/// The few Python string methods chat templates call (`strip`, `lstrip`, `rstrip`,
/// `startswith`, `endswith`), which Jinja2 gets from Python and minijinja does not have.
fn python_string_methods(
    _state: &mut minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    use minijinja::{Error as JError, ErrorKind, Value};
    let Some(s) = value.as_str() else {
        return Err(JError::from(ErrorKind::UnknownMethod));
    };
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str().map(str::to_string));
    let strip_set = arg(0);
    let in_set = |c: char| match &strip_set {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    Ok(match method {
        "strip" => Value::from(s.trim_matches(in_set)),
        "lstrip" => Value::from(s.trim_start_matches(in_set)),
        "rstrip" => Value::from(s.trim_end_matches(in_set)),
        "startswith" => Value::from(arg(0).is_some_and(|p| s.starts_with(&p))),
        "endswith" => Value::from(arg(0).is_some_and(|p| s.ends_with(&p))),
        _ => return Err(JError::from(ErrorKind::UnknownMethod)),
    })
}

/// The tokens of a plain (non-chat) prompt, as [`Generator::prompt_tokens`] makes them: BOS when
/// the model adds one, then the encoded text. Needs only the tokenizer, not a model on a backend.
pub fn plain_prompt_tokens(
    tokenizer: &Tokenizer,
    defaults: &GenerationDefaults,
    text: &str,
) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    if defaults.add_bos {
        if let Some(bos) = defaults.bos_token_id {
            ids.push(bos);
        }
    }
    ids.extend(tokenizer.encode(text)?);
    Ok(ids)
}

/// A model on a backend with everything generation needs: tokenizer, chat template, defaults.
pub struct Generator<B: Backend> {
    model: Model<B>,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    defaults: GenerationDefaults,
}

impl<B: Backend> Generator<B> {
    /// Uploads the weights of `loaded` and keeps the rest; the host copy of the weights is
    /// dropped. `context` limits the positions a request may use (default: the model's).
    pub fn new(backend: B, loaded: LoadedModel, context: Option<usize>) -> Result<Self> {
        let model = Model::with_context(backend, &loaded, context)?;
        let LoadedModel {
            tokenizer,
            chat_template,
            generation,
            ..
        } = loaded;
        Ok(Generator {
            model,
            tokenizer,
            chat_template,
            defaults: generation,
        })
    }

    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    /// The prompt's token ids: rendered through the chat template if asked, BOS prepended to a
    /// raw prompt if the model wants it (chat templates write their own).
    pub fn prompt_tokens(&self, req: &GenerateRequest) -> Result<Vec<u32>> {
        if req.prompt.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        let token_text = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let mut ids = Vec::new();
        if req.chat {
            let template = self.chat_template.as_deref().ok_or_else(|| {
                Error::Input("this model has no chat template (run without --chat)".into())
            })?;
            let text = render_chat(
                template,
                req.system.as_deref(),
                &req.prompt,
                &token_text(self.defaults.bos_token_id),
                &token_text(self.defaults.eos_token_ids.first().copied()),
            )?;
            ids.extend(self.tokenizer.encode(&text)?);
        } else {
            ids = plain_prompt_tokens(&self.tokenizer, &self.defaults, &req.prompt)?;
        }
        if ids.is_empty() {
            return Err(Error::Input("the prompt has no tokens".into()));
        }
        Ok(ids)
    }

    /// Runs one request, calling `on_text` with each final piece of text as it is produced.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerateOutput> {
        req.sampling.validate()?;
        let prompt = self.prompt_tokens(req)?;
        let context = self.model.context();
        let needed = prompt.len() + req.max_tokens;
        if needed > context {
            return Err(Error::Input(format!(
                "the prompt ({} tokens) plus max tokens ({}) is longer than the context of {context}",
                prompt.len(),
                req.max_tokens
            )));
        }
        let mut cache: KvCache<B> = self.model.new_cache(1, needed)?;
        let seq = cache.add_sequence();
        let mut hasher = Sha256::new();
        let mut stream = TextStream::new(&self.tokenizer);
        let mut tokens = Vec::with_capacity(req.max_tokens);
        let mut timings = Timings::default();
        let mut stop = StopReason::MaxTokens;
        let chunk = if req.prefill_chunk == 0 {
            prompt.len()
        } else {
            req.prefill_chunk
        };

        let start = Instant::now();
        let mut phase_start = start;
        let mut next_input: Vec<u32> = Vec::new();
        let mut bytes = Vec::new();
        for step in 0..req.max_tokens {
            let logits = if step == 0 {
                let mut last = None;
                for piece in prompt.chunks(chunk) {
                    let input = [SeqInput { seq, tokens: piece }];
                    last = Some(self.model.forward(&mut cache, &input, LogitsRows::Last)?);
                }
                last.expect("the prompt is not empty")
            } else {
                let input = [SeqInput {
                    seq,
                    tokens: &next_input,
                }];
                timings.decode_steps += 1;
                self.model.forward(&mut cache, &input, LogitsRows::Last)?
            };
            let row = logits.row(0);
            bytes.clear();
            bytes.extend(row.iter().flat_map(|v| v.to_bits().to_le_bytes()));
            hasher.update(&bytes);
            let position = (prompt.len() + step) as u64;
            let token = sample(row, &req.sampling, req.seed, req.request_id, position)?;
            tokens.push(token);
            if step == 0 {
                let now = Instant::now();
                timings.prefill = now - phase_start;
                phase_start = now;
            }
            if self.defaults.eos_token_ids.contains(&token) {
                stop = StopReason::Eos;
                break;
            }
            if let Some(piece) = stream.push(token)? {
                on_text(&piece);
            }
            next_input.clear();
            next_input.push(token);
        }
        if !tokens.is_empty() && timings.decode_steps > 0 {
            timings.decode = phase_start.elapsed();
        }
        if let Some(piece) = stream.finish()? {
            on_text(&piece);
        }
        cache.free_sequence(seq)?;
        let logits_sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(GenerateOutput {
            tokens,
            text: stream.text().to_string(),
            prompt_tokens: prompt.len(),
            logits_sha256,
            stop,
            timings,
        })
    }
}

#[cfg(test)]
mod tests;
