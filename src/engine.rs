//! The batched [`Engine`] (continuous batching over a paged KV cache, scheduled by
//! [`crate::scheduler`]) and the single-sequence helpers [`generate`] and [`prompt_logits`].
//!
//! ```
//! use flint::backend::cpu::CpuBackend;
//! use flint::engine::{Engine, EngineConfig, FinishReason, Request};
//! use flint::ModelRef;
//!
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama3");
//! let model = ModelRef::Dir(dir).load(&CpuBackend).unwrap();
//! let mut engine = Engine::new(CpuBackend, model, EngineConfig::default()).unwrap();
//! let id = engine
//!     .add_request(Request { prompt: vec![1, 2, 3], max_new_tokens: 4, ..Default::default() })
//!     .unwrap();
//! // Step by step (streaming) ...
//! while engine.has_unfinished() {
//!     let out = engine.step().unwrap();
//!     for (req, token) in out.tokens { assert_eq!(req, id); let _ = token; }
//! }
//! // ... or all at once.
//! let done = engine
//!     .generate(vec![Request { prompt: vec![4, 5], max_new_tokens: 2, ignore_eos: true, ..Default::default() }])
//!     .unwrap();
//! assert_eq!((done[0].reason, done[0].tokens.len()), (FinishReason::Length, 2));
//! ```

use crate::backend::{Backend, StepInput};
use crate::kv_cache::{BlockAllocator, SeqCache};
use crate::model::{Model, Workspace};
use crate::sampling::{Sampler, SamplingParams};
use crate::scheduler::{Scheduler, Sequence};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::collections::HashMap;

pub const BLOCK_SIZE: usize = 16;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end generation (the model's EOS ids).
    pub eos_ids: Vec<u32>,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Eos,
    Length,
    /// The model's context (max_position_embeddings) is full.
    ContextFull,
    /// One of the request's stop token ids (or stop strings) was produced.
    Stop,
    Aborted,
    /// The request could not run; [`Finished::error`] says why.
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context",
            FinishReason::Stop => "stop",
            FinishReason::Aborted => "aborted",
            FinishReason::Error => "error",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// New tokens only (an EOS that ended generation included).
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Checks prompt ids against the model before any work is done.
pub fn validate_prompt<B: Backend>(model: &Model<B>, prompt: &[u32]) -> Result<()> {
    let spec = &model.spec;
    if prompt.is_empty() {
        bail!("the prompt is empty: give at least one token");
    }
    if let Some((i, t)) = prompt
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= spec.vocab_size)
    {
        bail!(
            "prompt token {t} at index {i} is outside the vocabulary (size {})",
            spec.vocab_size
        );
    }
    if prompt.len() > spec.max_position {
        bail!(
            "the prompt has {} tokens; the model's context is {}",
            prompt.len(),
            spec.max_position
        );
    }
    Ok(())
}

/// Logits of one prompt run from an empty cache: the last position's, or every position's.
pub fn prompt_logits<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompt: &[u32],
    all_positions: bool,
) -> Result<Vec<f32>> {
    validate_prompt(model, prompt)?;
    let num_blocks = prompt.len().div_ceil(BLOCK_SIZE);
    let mut alloc = BlockAllocator::new(num_blocks, BLOCK_SIZE);
    let mut cache = be.alloc_kv_cache(model.kv_shape(num_blocks, BLOCK_SIZE))?;
    let mut ws = Workspace::new(be, &model.spec, prompt.len())?;
    let mut seq = SeqCache::default();
    let mut step = StepInput {
        block_size: BLOCK_SIZE,
        ..Default::default()
    };
    seq.push_to_step(&mut alloc, prompt, &mut step)?;
    model.forward(be, &step, &mut cache, &mut ws, all_positions)
}

/// Generates up to `max_new_tokens` after `prompt`.
pub fn generate<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Generation> {
    generate_with(be, model, prompt, opts, |_| {})
}

/// As [`generate`], calling `on_token` with each new token as it is produced.
pub fn generate_with<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    validate_prompt(model, prompt)?;
    let mut sampler = Sampler::new(opts.sampling)?;
    let total = (prompt.len() + opts.max_new_tokens).min(model.spec.max_position);
    let num_blocks = total.div_ceil(BLOCK_SIZE).max(1);
    let mut alloc = BlockAllocator::new(num_blocks, BLOCK_SIZE);
    let mut cache = be.alloc_kv_cache(model.kv_shape(num_blocks, BLOCK_SIZE))?;
    let mut ws = Workspace::new(be, &model.spec, prompt.len())?;
    let mut seq = SeqCache::default();
    let mut tokens = Vec::new();
    let mut input: Vec<u32> = prompt.to_vec();
    loop {
        if tokens.len() >= opts.max_new_tokens {
            return Ok(Generation {
                tokens,
                finish: FinishReason::Length,
            });
        }
        if seq.len + input.len() > model.spec.max_position {
            return Ok(Generation {
                tokens,
                finish: FinishReason::ContextFull,
            });
        }
        let mut step = StepInput {
            block_size: BLOCK_SIZE,
            ..Default::default()
        };
        seq.push_to_step(&mut alloc, &input, &mut step)?;
        let logits = model.forward(be, &step, &mut cache, &mut ws, false)?;
        let next = sampler.sample(&logits);
        tokens.push(next);
        on_token(next);
        if !opts.ignore_eos && opts.eos_ids.contains(&next) {
            return Ok(Generation {
                tokens,
                finish: FinishReason::Eos,
            });
        }
        input = vec![next];
    }
}

/// Sizes of the paged KV cache and of each step.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub num_blocks: usize,
    pub block_size: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step (decodes plus prefill chunks); sizes the workspace.
    pub max_batch_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            num_blocks: 256,
            block_size: BLOCK_SIZE,
            max_num_seqs: 32,
            max_batch_tokens: 512,
        }
    }
}

/// One generation request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Tokens that end the request with [`FinishReason::Stop`] (besides the model's EOS).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end the request with [`FinishReason::Stop`]; need [`Engine::with_tokenizer`].
    pub stop_strings: Vec<String>,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
}

/// A request that ended, with every token it generated.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub id: u64,
    pub reason: FinishReason,
    pub tokens: Vec<u32>,
    /// Set when `reason` is [`FinishReason::Error`].
    pub error: Option<String>,
}

/// What one [`Engine::step`] produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    /// (request id, token) for every token sampled this step, in request order.
    pub tokens: Vec<(u64, u32)>,
    pub finished: Vec<Finished>,
    /// Tokens the forward ran over (0 when only bookkeeping happened).
    pub num_batched_tokens: usize,
}

/// The batched engine: owns the model, its backend, the KV cache and the scheduler.
pub struct Engine<B: Backend> {
    pub backend: B,
    pub model: Model<B>,
    pub config: EngineConfig,
    sched: Scheduler,
    cache: B::KvCache,
    ws: Workspace<B>,
    tokenizer: Option<Tokenizer>,
    stops: HashMap<u64, Vec<String>>,
    next_id: u64,
    pending_finished: Vec<Finished>,
}

impl<B: Backend> Engine<B> {
    pub fn new(backend: B, model: Model<B>, config: EngineConfig) -> Result<Self> {
        let c = &config;
        if c.num_blocks == 0 || c.block_size == 0 || c.max_num_seqs == 0 || c.max_batch_tokens == 0
        {
            bail!("engine config: num_blocks, block_size, max_num_seqs and max_batch_tokens must all be ≥ 1, got {c:?}");
        }
        let cache = backend.alloc_kv_cache(model.kv_shape(c.num_blocks, c.block_size))?;
        let ws = Workspace::new(&backend, &model.spec, c.max_batch_tokens)?;
        let sched = Scheduler::new(
            c.num_blocks,
            c.block_size,
            c.max_num_seqs,
            c.max_batch_tokens,
        );
        Ok(Engine {
            backend,
            model,
            config,
            sched,
            cache,
            ws,
            tokenizer: None,
            stops: HashMap::new(),
            next_id: 0,
            pending_finished: Vec::new(),
        })
    }

    /// Lets requests use stop strings.
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    pub fn num_free_blocks(&self) -> usize {
        self.sched.alloc.num_free()
    }

    /// Sequences preempted (blocks freed, requeued for recompute) so far.
    pub fn num_preemptions(&self) -> usize {
        self.sched.num_preemptions
    }

    /// Requests waiting or running.
    pub fn num_unfinished(&self) -> usize {
        self.sched.waiting.len() + self.sched.running.len()
    }

    pub fn has_unfinished(&self) -> bool {
        self.num_unfinished() > 0 || !self.pending_finished.is_empty()
    }

    /// Queues a request; bad input is an error naming it. A request too large for the cache
    /// or the model's context is accepted and finishes at the next step with an error.
    pub fn add_request(&mut self, req: Request) -> Result<u64> {
        validate_prompt(&self.model, &req.prompt)?;
        if req.max_new_tokens == 0 {
            bail!("max_new_tokens is 0: ask for at least one token");
        }
        let sampler = Sampler::new(req.sampling)?;
        if !req.stop_strings.is_empty() && self.tokenizer.is_none() {
            bail!("stop strings need a tokenizer: build the engine with_tokenizer");
        }
        if req.stop_strings.iter().any(|s| s.is_empty()) {
            bail!("a stop string is empty");
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut stop_ids = req.stop_token_ids.clone();
        let eos = if req.ignore_eos {
            vec![]
        } else {
            self.model.spec.eos_token_ids.clone()
        };
        stop_ids.retain(|t| !eos.contains(t));
        let seq = Sequence {
            id,
            tokens: req.prompt.clone(),
            prompt_len: req.prompt.len(),
            max_new_tokens: req.max_new_tokens,
            stop_ids,
            eos_ids: eos,
            cache: SeqCache::default(),
            sampler,
            preemptions: 0,
        };
        let cap = self.sched.capacity_tokens();
        let need = req.prompt.len() + 1;
        if need > cap || req.prompt.len() >= self.model.spec.max_position {
            let msg = if need > cap {
                format!("the request needs {need} tokens of KV cache (prompt + 1); the whole cache holds {cap}")
            } else {
                format!(
                    "the prompt has {} tokens; the model's context ({}) leaves no room for a new one",
                    req.prompt.len(),
                    self.model.spec.max_position
                )
            };
            self.sched.rejected.push((seq, msg));
        } else {
            if !req.stop_strings.is_empty() {
                self.stops.insert(id, req.stop_strings);
            }
            self.sched.waiting.push_back(seq);
        }
        Ok(id)
    }

    /// Ends a request; it is reported as aborted by the next step. False when unknown.
    pub fn abort(&mut self, id: u64) -> bool {
        match self.sched.remove(id) {
            Some(s) => {
                self.stops.remove(&id);
                self.pending_finished
                    .push(finished(&s, FinishReason::Aborted, None));
                true
            }
            None => false,
        }
    }

    /// Runs one scheduled step: the tokens it sampled and the requests that ended.
    pub fn step(&mut self) -> Result<StepOutput> {
        let mut out = StepOutput {
            finished: std::mem::take(&mut self.pending_finished),
            ..Default::default()
        };
        let mut step = StepInput {
            block_size: self.config.block_size,
            ..Default::default()
        };
        let chunks = self.sched.schedule(&mut step);
        for (s, msg) in self.sched.rejected.drain(..) {
            self.stops.remove(&s.id);
            out.finished
                .push(finished(&s, FinishReason::Error, Some(msg)));
        }
        if chunks.is_empty() {
            return Ok(out);
        }
        out.num_batched_tokens = step.num_tokens();
        let logits =
            match self
                .model
                .forward(&self.backend, &step, &mut self.cache, &mut self.ws, false)
            {
                Ok(l) => l,
                Err(e) => {
                    // The step's sequences cannot be trusted: end them with the error.
                    let mut idx: Vec<usize> = chunks.iter().map(|c| c.idx).collect();
                    idx.sort_unstable();
                    for &i in idx.iter().rev() {
                        let s = self.sched.remove_running(i);
                        self.stops.remove(&s.id);
                        out.finished.push(finished(
                            &s,
                            FinishReason::Error,
                            Some(format!("{e:#}")),
                        ));
                    }
                    return Ok(out);
                }
            };
        let v = self.model.spec.vocab_size;
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        for (row, c) in chunks.iter().enumerate() {
            if !c.sample {
                continue;
            }
            let s = &mut self.sched.running[c.idx];
            let t = s.sampler.sample(&logits[row * v..(row + 1) * v]);
            s.tokens.push(t);
            out.tokens.push((s.id, t));
            let reason = if s.eos_ids.contains(&t) {
                Some(FinishReason::Eos)
            } else if s.stop_ids.contains(&t) || self.stop_string_hit(c.idx) {
                Some(FinishReason::Stop)
            } else if self.sched.running[c.idx].num_generated()
                >= self.sched.running[c.idx].max_new_tokens
            {
                Some(FinishReason::Length)
            } else if self.sched.running[c.idx].tokens.len() > self.model.spec.max_position {
                Some(FinishReason::ContextFull)
            } else {
                None
            };
            if let Some(r) = reason {
                done.push((c.idx, r));
            }
        }
        done.sort_unstable_by_key(|d| d.0);
        for &(i, r) in done.iter().rev() {
            let s = self.sched.remove_running(i);
            self.stops.remove(&s.id);
            out.finished.push(finished(&s, r, None));
        }
        Ok(out)
    }

    fn stop_string_hit(&mut self, idx: usize) -> bool {
        let s = &self.sched.running[idx];
        let (Some(tok), Some(strings)) = (&self.tokenizer, self.stops.get(&s.id)) else {
            return false;
        };
        let longest = strings.iter().map(|x| x.len()).max().unwrap_or(0);
        // Decode a tail long enough to hold any stop string (a token is ≥ 1 byte).
        let gen = &s.tokens[s.prompt_len..];
        let tail = &gen[gen.len().saturating_sub(longest + 1)..];
        let Ok(text) = tok.decode(tail, false) else {
            return false;
        };
        strings.iter().any(|x| text.contains(x.as_str()))
    }

    /// Runs `requests` to completion; results in request order.
    pub fn generate(&mut self, requests: Vec<Request>) -> Result<Vec<Finished>> {
        let mut ids = Vec::new();
        for r in requests {
            ids.push(self.add_request(r)?);
        }
        let mut done: HashMap<u64, Finished> = HashMap::new();
        while ids.iter().any(|id| !done.contains_key(id)) {
            let out = self.step()?;
            if out.num_batched_tokens == 0 && out.finished.is_empty() && !self.has_unfinished() {
                bail!("engine stalled with requests unfinished");
            }
            for f in out.finished {
                done.insert(f.id, f);
            }
        }
        Ok(ids.iter().map(|id| done.remove(id).unwrap()).collect())
    }
}

fn finished(s: &Sequence, reason: FinishReason, error: Option<String>) -> Finished {
    Finished {
        id: s.id,
        reason,
        tokens: s.tokens[s.prompt_len..].to_vec(),
        error,
    }
}

/// A borrowed backend is a backend: lets an [`Engine`] run on a backend the caller keeps
/// (`Engine<&B>` with a model loaded through `&be`).
impl<B: Backend> Backend for &B {
    type Tensor = B::Tensor;
    type Weight = B::Weight;
    type Step = B::Step;
    type Rope = B::Rope;
    type KvCache = B::KvCache;
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn upload_weight(&self, n: &str, d: &[f32], r: usize, c: usize) -> Result<Self::Weight> {
        (**self).upload_weight(n, d, r, c)
    }
    fn upload_quantized(
        &self,
        n: &str,
        w: &crate::weights::quant::QuantWeight,
    ) -> Result<Self::Weight> {
        (**self).upload_quantized(n, w)
    }
    fn upload_rope(&self, f: &[f32]) -> Result<Self::Rope> {
        (**self).upload_rope(f)
    }
    fn upload_step(&self, s: &StepInput) -> Result<Self::Step> {
        (**self).upload_step(s)
    }
    fn alloc(&self, r: usize, c: usize) -> Result<Self::Tensor> {
        (**self).alloc(r, c)
    }
    fn alloc_kv_cache(&self, s: crate::backend::KvShape) -> Result<Self::KvCache> {
        (**self).alloc_kv_cache(s)
    }
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>> {
        (**self).to_host(t)
    }
    fn weight_bytes(&self, w: &Self::Weight) -> usize {
        (**self).weight_bytes(w)
    }
    fn embed(&self, s: &Self::Step, t: &Self::Weight, k: f32, o: &mut Self::Tensor) -> Result<()> {
        (**self).embed(s, t, k, o)
    }
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        r: Option<&mut Self::Tensor>,
        w: &Self::Weight,
        eps: f32,
        off: f32,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).rms_norm(x, r, w, eps, off, o)
    }
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).matmul(x, w, b, o)
    }
    fn rope_kv_write(
        &self,
        qkv: &Self::Tensor,
        s: &Self::Step,
        rope: &Self::Rope,
        qk: Option<crate::backend::QkNorm<'_, Self::Weight>>,
        a: &crate::backend::AttnParams,
        c: &mut Self::KvCache,
        l: usize,
        q: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).rope_kv_write(qkv, s, rope, qk, a, c, l, q)
    }
    fn attention(
        &self,
        q: &Self::Tensor,
        s: &Self::Step,
        c: &Self::KvCache,
        l: usize,
        a: &crate::backend::AttnParams,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).attention(q, s, c, l, a, o)
    }
    fn act_mul(
        &self,
        g: &Self::Tensor,
        a: crate::config::Activation,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).act_mul(g, a, o)
    }
    fn gather_last(&self, x: &Self::Tensor, s: &Self::Step, o: &mut Self::Tensor) -> Result<()> {
        (**self).gather_last(x, s, o)
    }
    fn softcap(&self, x: &mut Self::Tensor, cap: f32) -> Result<()> {
        (**self).softcap(x, cap)
    }
}
