//! Continuous batching: many requests share one model and one paged KV cache, and every
//! [`Scheduler::step`] runs one forward call that mixes the decode steps of running requests
//! with prefill chunks of newer ones.
//!
//! Because every kernel follows the numerics contract, a request's logits do not depend on what
//! else is in the batch or on how its prompt was chunked; and sampling is a pure function of the
//! logits row and the key `(seed, request_id, position)`. So each request produces exactly the
//! tokens and the `logits_sha256` it would produce alone (with [`crate::generate::Generator`]),
//! whenever it arrives and whatever it is batched with. Two requests with the same prompt, the
//! same sampling parameters, the same `seed` **and the same `request_id`** must therefore agree
//! bit for bit, sampled or greedy; give requests distinct `request_id`s to get independent
//! samples.
//!
//! ## Policy
//! - Admission is first come, first served: the oldest waiting request is admitted when fewer
//!   than `max_batch` requests run and the cache has free pages for its whole prompt plus
//!   `max_tokens`. Its pages are reserved up front, so a running request never waits for memory
//!   and nothing is ever preempted.
//! - Each step, running requests that are decoding contribute one token each (oldest first),
//!   then prefilling requests contribute prompt chunks of up to `prefill_chunk` tokens, all
//!   within `max_batch_tokens`.
//! - A request ends when it samples one of its stop tokens (kept in its output, as
//!   `Generator` does) or reaches `max_tokens`; its pages go back to the cache at once.
//!
//! ## Failures
//! If a step's forward call fails (a device error, a kernel that cannot run a shape), every
//! request in that call ends with [`Event::Failed`] carrying the error, and its pages go back to
//! the cache: no request is left half-advanced, and none retries a call that may fail again.
//! Requests that were running but not in that call, and waiting ones, are untouched, and the
//! scheduler stays usable: later steps and later requests run as if the failed ones had never
//! been submitted (the contract makes every request's numbers independent of the others). A
//! request whose sampling fails ends the same way, alone. [`Scheduler::step`] itself returns an
//! error only for a broken invariant of the scheduler, never for a failed forward call.

use crate::backend::Backend;
use crate::generate::StopReason;
use crate::kv_cache::{KvCache, SeqId, DEFAULT_PAGE_SIZE};
use crate::model::{LogitsRows, Model, SeqInput};
use crate::sampling::{sample, SamplingParams};
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;

/// One request to the scheduler.
#[derive(Clone, Debug)]
pub struct Request {
    /// The prompt's token ids (BOS or chat template already applied).
    pub prompt_tokens: Vec<u32>,
    /// The most tokens to generate (at least 1).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// With `request_id` and the position, the key of the sampler's random numbers.
    pub seed: u64,
    pub request_id: u64,
    /// Tokens that end generation (usually the model's end-of-sequence ids).
    pub stop_tokens: Vec<u32>,
}

/// The scheduler's handle of a submitted request (distinct from [`Request::request_id`], which
/// keys sampling and may be shared on purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Limits of one step.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Most requests running at once (sequences in one forward call).
    pub max_batch: usize,
    /// Most tokens in one forward call (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Most prompt tokens of one request in one forward call.
    pub prefill_chunk: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 8,
            max_batch_tokens: 256,
            prefill_chunk: 64,
        }
    }
}

/// A finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Lowercase hex; the same definition as [`crate::generate::GenerateOutput::logits_sha256`].
    pub logits_sha256: String,
    pub stop: StopReason,
}

/// What a step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request generated a token.
    Token { id: RequestId, token: u32 },
    /// A request ended (after its last `Token` event of the same step).
    Finished {
        id: RequestId,
        completion: Completion,
    },
    /// A request ended with an error: the forward call it was in, or its sampling, failed. Its
    /// pages are freed; the tokens it generated before came as `Token` events.
    Failed { id: RequestId, error: String },
}

/// The shape of the last forward call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Sequences in the call.
    pub sequences: usize,
    /// Tokens in the call.
    pub tokens: usize,
    /// Sequences that were still prefilling (the rest decoded).
    pub prefilling: usize,
}

/// How a request ended.
enum Outcome {
    Stopped(StopReason),
    Failed(String),
}

struct Running {
    id: RequestId,
    req: Request,
    seq: SeqId,
    /// Prompt tokens already through the model.
    fed: usize,
    tokens: Vec<u32>,
    hasher: Sha256,
}

/// Continuous batching over one model and one KV cache.
pub struct Scheduler<'m, B: Backend> {
    model: &'m Model<B>,
    cache: KvCache<B>,
    config: SchedulerConfig,
    waiting: VecDeque<(RequestId, Request)>,
    running: Vec<Running>,
    next_id: u64,
    last_batch: Option<BatchStats>,
}

impl<'m, B: Backend> Scheduler<'m, B> {
    /// A scheduler with a cache of `cache_positions` positions in all (rounded up to whole
    /// pages), shared by the running requests.
    pub fn new(
        model: &'m Model<B>,
        config: SchedulerConfig,
        cache_positions: usize,
    ) -> Result<Self> {
        if config.max_batch == 0 || config.max_batch_tokens == 0 || config.prefill_chunk == 0 {
            return Err(Error::Input(
                "scheduler: max_batch, max_batch_tokens and prefill_chunk must be positive".into(),
            ));
        }
        let pages = cache_positions.div_ceil(DEFAULT_PAGE_SIZE).max(1);
        let cache = KvCache::new(
            model.backend(),
            model.config(),
            pages,
            DEFAULT_PAGE_SIZE,
            model.context(),
        )?;
        Ok(Scheduler {
            model,
            cache,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            last_batch: None,
        })
    }

    /// Queues a request; it is admitted by a later [`Scheduler::step`]. Fails, queueing
    /// nothing, on a request that could never run.
    pub fn submit(&mut self, req: Request) -> Result<RequestId> {
        req.sampling.validate()?;
        if req.prompt_tokens.is_empty() {
            return Err(Error::Input("the prompt has no tokens".into()));
        }
        if req.max_tokens == 0 {
            return Err(Error::Input("max_tokens must be at least 1".into()));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(t) = req.prompt_tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let needed = req.prompt_tokens.len() + req.max_tokens;
        let context = self.cache.max_seq_len();
        if needed > context {
            return Err(Error::Input(format!(
                "the prompt ({} tokens) plus max tokens ({}) is longer than the context of {context}",
                req.prompt_tokens.len(),
                req.max_tokens
            )));
        }
        let pages = needed.div_ceil(self.cache.page_size());
        if pages > self.cache.num_pages() {
            return Err(Error::Input(format!(
                "a request of {needed} positions needs {pages} pages; the cache has {}",
                self.cache.num_pages()
            )));
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back((id, req));
        Ok(id)
    }

    /// Requests waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests admitted and not finished.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// No request waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// The shape of the forward call of the last step (`None` if that step ran none).
    pub fn last_batch(&self) -> Option<BatchStats> {
        self.last_batch
    }

    pub fn free_pages(&self) -> usize {
        self.cache.free_pages()
    }

    /// Admits what fits, runs one forward call, samples, and retires finished requests. Returns
    /// no events (and runs nothing) when idle. A failed forward call is not an error of `step`:
    /// its requests end with [`Event::Failed`] (see the module's "Failures").
    pub fn step(&mut self) -> Result<Vec<Event>> {
        self.last_batch = None;
        let events = self.admit()?;
        if self.running.is_empty() {
            return Ok(events);
        }

        // (index into `running`, token range): decodes first, then prefill chunks.
        let mut budget = self.config.max_batch_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, r) in self.running.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if r.fed == r.req.prompt_tokens.len() {
                plan.push((i, 1));
                budget -= 1;
            }
        }
        for (i, r) in self.running.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let left = r.req.prompt_tokens.len() - r.fed;
            if left > 0 {
                let n = left.min(self.config.prefill_chunk).min(budget);
                plan.push((i, n));
                budget -= n;
            }
        }
        let inputs: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, n)| {
                let r = &self.running[i];
                let prompt = &r.req.prompt_tokens;
                if r.fed < prompt.len() {
                    prompt[r.fed..r.fed + n].to_vec()
                } else {
                    vec![*r.tokens.last().expect("a decoding request has a token")]
                }
            })
            .collect();
        let batch: Vec<SeqInput> = plan
            .iter()
            .zip(&inputs)
            .map(|(&(i, _), tokens)| SeqInput {
                seq: self.running[i].seq,
                tokens,
            })
            .collect();
        self.last_batch = Some(BatchStats {
            sequences: plan.len(),
            tokens: inputs.iter().map(Vec::len).sum(),
            prefilling: plan
                .iter()
                .filter(|&&(i, _)| self.running[i].fed < self.running[i].req.prompt_tokens.len())
                .count(),
        });
        let logits = match self
            .model
            .forward(&mut self.cache, &batch, LogitsRows::Last)
        {
            Ok(logits) => logits,
            Err(e) => {
                // Every request of the call ends; the others keep running (see "Failures").
                let error = e.to_string();
                let ended = plan
                    .iter()
                    .map(|&(i, _)| (i, Outcome::Failed(error.clone())))
                    .collect();
                return self.retire(ended, events);
            }
        };

        let mut events = events;
        let mut ended = Vec::new();
        let mut bytes = Vec::new();
        for (row, &(i, n)) in plan.iter().enumerate() {
            let r = &mut self.running[i];
            let prompt_len = r.req.prompt_tokens.len();
            if r.fed < prompt_len {
                r.fed += n;
                if r.fed < prompt_len {
                    // A prompt chunk that is not the last: its logits are not sampled.
                    continue;
                }
            }
            let l = logits.row(row);
            let position = (prompt_len + r.tokens.len()) as u64;
            let token = match sample(l, &r.req.sampling, r.req.seed, r.req.request_id, position) {
                Ok(token) => token,
                Err(e) => {
                    ended.push((i, Outcome::Failed(e.to_string())));
                    continue;
                }
            };
            bytes.clear();
            bytes.extend(l.iter().flat_map(|v| v.to_bits().to_le_bytes()));
            r.hasher.update(&bytes);
            r.tokens.push(token);
            events.push(Event::Token { id: r.id, token });
            if r.req.stop_tokens.contains(&token) {
                ended.push((i, Outcome::Stopped(StopReason::Eos)));
            } else if r.tokens.len() == r.req.max_tokens {
                ended.push((i, Outcome::Stopped(StopReason::MaxTokens)));
            }
        }
        self.retire(ended, events)
    }

    /// Removes the `ended` requests (indices into `running`), frees their pages, and appends
    /// their `Finished` or `Failed` events, in admission order, to `events`.
    fn retire(
        &mut self,
        mut ended: Vec<(usize, Outcome)>,
        mut events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        // Remove from the back so the earlier indices stay valid; keep admission order.
        ended.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let mut done = Vec::with_capacity(ended.len());
        let mut broken = None;
        for (i, outcome) in ended {
            let r = self.running.remove(i);
            // Free every page before reporting a broken invariant, so nothing leaks even then.
            if let Err(e) = self.cache.free_sequence(r.seq) {
                broken.get_or_insert(e);
            }
            done.push(match outcome {
                Outcome::Stopped(stop) => Event::Finished {
                    id: r.id,
                    completion: Completion {
                        tokens: r.tokens,
                        prompt_tokens: r.req.prompt_tokens.len(),
                        logits_sha256: r
                            .hasher
                            .finalize()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect(),
                        stop,
                    },
                },
                Outcome::Failed(error) => Event::Failed { id: r.id, error },
            });
        }
        if let Some(e) = broken {
            return Err(e);
        }
        done.reverse();
        events.extend(done);
        Ok(events)
    }

    /// Admits waiting requests, oldest first, while the batch and the cache have room. Returns
    /// the `Failed` events of requests that could not be admitted.
    fn admit(&mut self) -> Result<Vec<Event>> {
        let mut failed = Vec::new();
        while self.running.len() < self.config.max_batch {
            let Some((_, req)) = self.waiting.front() else {
                break;
            };
            let needed = req.prompt_tokens.len() + req.max_tokens;
            if needed.div_ceil(self.cache.page_size()) > self.cache.free_pages() {
                break;
            }
            let (id, req) = self.waiting.pop_front().expect("checked above");
            let seq = self.cache.add_sequence();
            if let Err(e) = self.cache.reserve(seq, needed) {
                // Not expected (`submit` checked the request against the cache): the request
                // ends with the error rather than vanish.
                self.cache.free_sequence(seq)?;
                failed.push(Event::Failed {
                    id,
                    error: e.to_string(),
                });
                continue;
            }
            self.running.push(Running {
                id,
                req,
                seq,
                fed: 0,
                tokens: Vec::new(),
                hasher: Sha256::new(),
            });
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;
    use crate::generate::{GenerateRequest, Generator};
    use crate::loader::Architecture;
    use crate::testing::tiny_model;

    fn generator() -> Generator<CpuBackend> {
        Generator::new(
            CpuBackend::new(),
            tiny_model(Architecture::Llama, 3).unwrap(),
            None,
        )
        .unwrap()
    }

    fn requests(g: &Generator<CpuBackend>) -> Vec<(GenerateRequest, Request)> {
        let prompts = [
            "hello there",
            "a much longer prompt of many bytes, chunked",
            "x",
        ];
        let mut out = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            for sampled in [false, true] {
                let sampling = SamplingParams {
                    temperature: if sampled { 0.9 } else { 0.0 },
                    ..SamplingParams::default()
                };
                let gr = GenerateRequest {
                    sampling,
                    seed: 11,
                    request_id: i as u64,
                    ..GenerateRequest::new(*p, 3 + 2 * i)
                };
                let r = Request {
                    prompt_tokens: g.prompt_tokens(&gr).unwrap(),
                    max_tokens: gr.max_tokens,
                    sampling,
                    seed: gr.seed,
                    request_id: gr.request_id,
                    stop_tokens: g.defaults().eos_token_ids.clone(),
                };
                out.push((gr, r));
            }
        }
        out
    }

    /// Requests submitted between steps, batched with chunked prefill, equal their solo runs.
    #[test]
    fn batched_equals_solo() {
        let g = generator();
        let reqs = requests(&g);
        let config = SchedulerConfig {
            max_batch: 4,
            max_batch_tokens: 9,
            prefill_chunk: 4,
        };
        let mut s = Scheduler::new(g.model(), config, 4 * 64).unwrap();
        let mut ids = Vec::new();
        let mut done = std::collections::HashMap::new();
        let mut tokens_seen: std::collections::HashMap<RequestId, Vec<u32>> = Default::default();
        let mut max_batch = 0;
        let mut pending = reqs.iter();
        let mut step = 0;
        while !s.is_idle() || step == 0 || ids.len() < reqs.len() {
            // One arrival every other step.
            if step % 2 == 0 {
                if let Some((_, r)) = pending.next() {
                    ids.push(s.submit(r.clone()).unwrap());
                }
            }
            for e in s.step().unwrap() {
                match e {
                    Event::Token { id, token } => tokens_seen.entry(id).or_default().push(token),
                    Event::Finished { id, completion } => {
                        done.insert(id, completion);
                    }
                    Event::Failed { error, .. } => panic!("unexpected failure: {error}"),
                }
            }
            max_batch = max_batch.max(s.last_batch().map_or(0, |b| b.sequences));
            step += 1;
        }
        assert!(max_batch > 1);
        assert_eq!(s.free_pages(), s.cache.num_pages());
        for ((gr, _), id) in reqs.iter().zip(&ids) {
            let solo = g.generate(gr, &mut |_| {}).unwrap();
            let got = &done[id];
            assert_eq!(got.tokens, solo.tokens, "{gr:?}");
            assert_eq!(tokens_seen[id], solo.tokens, "token events");
            assert_eq!(got.logits_sha256, solo.logits_sha256, "{gr:?}");
            assert_eq!(got.stop, solo.stop);
        }
    }

    #[test]
    fn bad_requests_are_input_errors() {
        let g = generator();
        let mut s = Scheduler::new(g.model(), SchedulerConfig::default(), 32).unwrap();
        let ok = Request {
            prompt_tokens: vec![1, 2, 3],
            max_tokens: 2,
            sampling: SamplingParams::default(),
            seed: 0,
            request_id: 0,
            stop_tokens: vec![],
        };
        let bad = [
            Request {
                prompt_tokens: vec![],
                ..ok.clone()
            },
            Request {
                max_tokens: 0,
                ..ok.clone()
            },
            Request {
                prompt_tokens: vec![100_000],
                ..ok.clone()
            },
            // More positions than the whole cache holds: it could never be admitted.
            Request {
                max_tokens: 40,
                ..ok.clone()
            },
            Request {
                sampling: SamplingParams {
                    temperature: -1.0,
                    ..SamplingParams::default()
                },
                ..ok.clone()
            },
        ];
        for r in bad {
            assert!(matches!(s.submit(r), Err(Error::Input(_))));
        }
        assert!(s.is_idle());
        assert!(s.step().unwrap().is_empty());
        s.submit(ok).unwrap();
        assert!(Scheduler::new(
            g.model(),
            SchedulerConfig {
                max_batch: 0,
                ..Default::default()
            },
            32
        )
        .is_err());
    }

    /// A full cache delays admission instead of failing: two requests that each need the whole
    /// cache run one after the other.
    #[test]
    fn admission_waits_for_free_pages() {
        let g = generator();
        let mut s = Scheduler::new(g.model(), SchedulerConfig::default(), 16).unwrap();
        let r = Request {
            prompt_tokens: vec![1, 2, 3, 4, 5, 6, 7, 8],
            max_tokens: 8,
            sampling: SamplingParams::default(),
            seed: 0,
            request_id: 0,
            stop_tokens: vec![],
        };
        s.submit(r.clone()).unwrap();
        s.submit(r).unwrap();
        let mut finished = Vec::new();
        while !s.is_idle() {
            for e in s.step().unwrap() {
                if let Event::Finished { completion, .. } = e {
                    finished.push(completion);
                }
            }
            assert!(s.running() <= 1);
        }
        assert_eq!(finished.len(), 2);
        assert_eq!(finished[0], finished[1]);
    }
    /// A forward call that fails (here in its second layer, after the first wrote K/V) ends
    /// exactly the requests in it, with their pages freed; a request that was running but not
    /// in that call, and a request submitted afterwards, still equal their solo runs.
    #[test]
    fn failed_forward_ends_only_its_requests() {
        use crate::testing::FailingBackend;
        let g = Generator::new(
            FailingBackend::new(CpuBackend::new()),
            tiny_model(Architecture::Llama, 3).unwrap(),
            None,
        )
        .unwrap();
        let request = |prompt: &str, max_tokens: usize| {
            let gr = GenerateRequest::new(prompt, max_tokens);
            let r = Request {
                prompt_tokens: g.prompt_tokens(&gr).unwrap(),
                max_tokens,
                sampling: SamplingParams::default(),
                seed: 0,
                request_id: 0,
                stop_tokens: vec![],
            };
            (g.generate(&gr, &mut |_| {}).unwrap(), r)
        };
        let (solo_a, a) = request("hello there", 3);
        let (solo_b, b) = request("abc", 4);
        // Four tokens a step, so A's 12-token prompt leaves B out of the first two calls.
        let config = SchedulerConfig {
            max_batch: 2,
            max_batch_tokens: 4,
            prefill_chunk: 4,
        };
        let mut s = Scheduler::new(g.model(), config, 64).unwrap();
        let total = s.free_pages();
        let id_a = s.submit(a.clone()).unwrap();
        let id_b = s.submit(b).unwrap();
        assert!(s.step().unwrap().is_empty());
        assert_eq!(s.running(), 2);
        let pages_b = s.cache.block_table(s.running[1].seq).unwrap().len();

        // Four matmuls a layer: the fifth is layer 1's fused q/k/v projection.
        g.model().backend().fail_matmul(4);
        let events = s.step().unwrap();
        assert_eq!(
            events,
            vec![Event::Failed {
                id: id_a,
                error: "device: injected matmul failure".into()
            }]
        );
        assert_eq!(s.running(), 1);
        assert_eq!(s.free_pages(), total - pages_b, "A's pages are back");

        // B goes on, and a new request runs on the same scheduler.
        let id_c = s.submit(a).unwrap();
        let mut done = std::collections::HashMap::new();
        while !s.is_idle() {
            for e in s.step().unwrap() {
                match e {
                    Event::Finished { id, completion } => {
                        done.insert(id, completion);
                    }
                    Event::Failed { error, .. } => panic!("unexpected failure: {error}"),
                    Event::Token { .. } => {}
                }
            }
        }
        assert_eq!(done.len(), 2);
        for (id, solo) in [(id_b, &solo_b), (id_c, &solo_a)] {
            assert_eq!(done[&id].tokens, solo.tokens);
            assert_eq!(done[&id].logits_sha256, solo.logits_sha256);
        }
        assert_eq!(s.free_pages(), total, "no page leaked");
    }
}
