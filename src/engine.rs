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

use crate::backend::{Backend, MemoryInfo, StepInput};
use crate::kv_cache::{BlockAllocator, PrefixCacheStats, SeqCache};
use crate::model::{Model, RouteTap, Workspace};
use crate::sampling::{SampleRow, Sampler, SamplingParams};
use crate::scheduler::{Chunk, Scheduler, Sequence};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
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
    Ok(prompt_logits_tapped(be, model, prompt, all_positions, None)?.0)
}

/// [`prompt_logits`] with a routing tap on the sparse layers (see [`RouteTap`]: the
/// selftest records the GPU's expert choices and has the CPU follow them at near ties).
/// Returns the tap as the forward left it.
pub fn prompt_logits_tapped<B: Backend>(
    be: &B,
    model: &Model<B>,
    prompt: &[u32],
    all_positions: bool,
    tap: Option<RouteTap>,
) -> Result<(Vec<f32>, Option<RouteTap>)> {
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
    let dense = tap.and_then(|t| ws.set_route_tap(t));
    let logits = model.forward(be, &step, &mut cache, &mut ws, all_positions)?;
    Ok((logits, dense.or_else(|| ws.take_route_tap())))
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
    // Saturating: `max_new_tokens` may be "no limit" (usize::MAX); the context bounds it.
    let total = prompt
        .len()
        .saturating_add(opts.max_new_tokens)
        .min(model.spec.max_position);
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
        model.forward_device(be, &step, &mut cache, &mut ws, false, None)?;
        let row = [(0, sampler.next_row())];
        let next = be.sample(ws.logits(), model.spec.vocab_size, &row)?[0];
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
    /// KV cache blocks. `None`: sized after a warm-up step from the backend's free memory and
    /// [`EngineConfig::gpu_memory_fraction`] (vLLM's rule); a backend that reports no memory
    /// (the CPU reference) then gets [`DEFAULT_NUM_BLOCKS`], so give it an explicit count.
    pub num_blocks: Option<usize>,
    pub block_size: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step (decodes plus prefill chunks); sizes the workspace.
    pub max_batch_tokens: usize,
    /// Share of the device's total memory flint may use (weights, workspace and KV cache
    /// together) when `num_blocks` is `None`; vLLM's `--gpu-memory-utilization`.
    pub gpu_memory_fraction: f64,
    /// Share full KV blocks between requests with the same prefix (on by default).
    pub enable_prefix_caching: bool,
    /// Replay decode steps from CUDA graphs captured per batch-size bucket (every bucket is
    /// captured in `Engine::new`). On by default since an H200 ran them (`flint selftest`:
    /// replays bitwise equal to eager, the same greedy tokens with graphs on and off);
    /// ignored by backends without graphs (the CPU). `false` is vLLM's `--enforce-eager`.
    pub cuda_graphs: bool,
}

/// KV cache blocks on a backend that reports no free memory, when none are asked for.
pub const DEFAULT_NUM_BLOCKS: usize = 256;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            num_blocks: None,
            block_size: BLOCK_SIZE,
            max_num_seqs: 32,
            max_batch_tokens: 512,
            gpu_memory_fraction: 0.9,
            enable_prefix_caching: true,
            cuda_graphs: true,
        }
    }
}

/// How the KV cache was sized, for logs and reports.
#[derive(Clone, Debug, PartialEq)]
pub struct KvCacheInfo {
    pub num_blocks: usize,
    pub block_size: usize,
    pub bytes: usize,
    /// Tokens the whole cache holds (all running sequences together).
    pub max_concurrent_tokens: usize,
    /// How many requests of the model's full context fit at once.
    pub max_concurrency_at_full_context: f64,
    /// Where the size came from: "configured", "default" or "measured: ...".
    pub source: String,
}

impl std::fmt::Display for KvCacheInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KV cache: {} blocks of {} tokens ({:.1} MiB), {} tokens at once, {:.2}x concurrency at the full context ({})",
            self.num_blocks,
            self.block_size,
            self.bytes as f64 / (1u64 << 20) as f64,
            self.max_concurrent_tokens,
            self.max_concurrency_at_full_context,
            self.source
        )
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
    /// Every generated token, the one that completed a stop string or stop token included.
    pub tokens: Vec<u32>,
    /// The tokens decoded (special tokens skipped) when the engine has a tokenizer. After a
    /// stop string the text ends just before it: the stop string is not included (vLLM's
    /// default, `include_stop_str_in_output=False`), while `tokens` keep the whole of it.
    pub text: Option<String>,
    /// Prompt tokens whose prefill was skipped at admission because the prefix cache held them.
    pub cached_tokens: usize,
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
    /// The configuration, `num_blocks` filled in with the size chosen.
    pub config: EngineConfig,
    kv_info: KvCacheInfo,
    sched: Scheduler,
    cache: B::KvCache,
    ws: Workspace<B>,
    tokenizer: Option<Tokenizer>,
    stops: HashMap<u64, Vec<String>>,
    next_id: u64,
    pending_finished: Vec<Finished>,
    /// Decode batch sizes with a graph (empty: every step eager).
    graph_buckets: Vec<usize>,
    /// Keys this engine's graphs take in the backend: `graph_base + bucket`.
    graph_base: u64,
    graph_replays: usize,
}

/// Decode graph batch sizes nano-vllm uses: 1, 2, 4, 8, then multiples of 16, up to `max`.
pub fn graph_buckets(max: usize) -> Vec<usize> {
    let mut b: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|&x| x <= max).collect();
    b.extend((16..=max).step_by(16));
    if b.last().is_some_and(|&l| l < max) {
        b.push(max);
    }
    b
}

/// A pure decode `step` padded to `bucket` sequences with a fixed launch shape: padded rows
/// are token 0 at position 0 of a one-key sequence over block 0 with slot -1 (their K/V is
/// written nowhere, their logits dropped), and kernels are planned for `plan_ctx` keys.
pub fn pad_decode_step(step: &StepInput, bucket: usize, plan_ctx: usize) -> StepInput {
    let mut p = step.clone();
    for i in step.num_tokens()..bucket {
        p.token_ids.push(0);
        p.positions.push(0);
        p.slots.push(-1);
        p.seqs.push(crate::backend::SeqStep {
            q_start: i,
            q_len: 1,
            ctx_len: 1,
            block_table: vec![0],
        });
    }
    p.plan_ctx = plan_ctx;
    p
}

/// Distinct graph keys for every engine in the process (engines may share a backend).
static NEXT_GRAPH_BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<B: Backend> Engine<B> {
    /// Builds the engine. Start-up order as nano-vllm's: workspace, then (when
    /// `config.num_blocks` is `None` and the backend reports memory) a warm-up step of
    /// `max_batch_tokens` tokens, then the KV cache from what the memory fraction leaves.
    pub fn new(backend: B, model: Model<B>, config: EngineConfig) -> Result<Self> {
        let c = &config;
        if c.num_blocks == Some(0)
            || c.block_size == 0
            || c.max_num_seqs == 0
            || c.max_batch_tokens == 0
        {
            bail!("engine config: num_blocks, block_size, max_num_seqs and max_batch_tokens must all be ≥ 1, got {c:?}");
        }
        if !(c.gpu_memory_fraction > 0.0 && c.gpu_memory_fraction <= 1.0) {
            bail!(
                "engine config: gpu_memory_fraction must be in (0, 1], got {}",
                c.gpu_memory_fraction
            );
        }
        // Sizes the backends multiply out (and the scheduler's token count): the caller's
        // numbers, so an overflow is an error naming them rather than a wrapped size.
        let kv_fits = |blocks: usize| {
            model
                .kv_shape(blocks, c.block_size)
                .checked_num_elements()
                .and_then(|n| n.checked_mul(4))
                .is_some()
        };
        if !kv_fits(c.num_blocks.unwrap_or(1)) {
            bail!(
                "engine config: a KV cache of {} blocks of {} tokens overflows the address space",
                c.num_blocks.unwrap_or(1),
                c.block_size
            );
        }
        let mut ws = Workspace::new(&backend, &model.spec, c.max_batch_tokens)?;
        let block_bytes = backend.kv_cache_bytes(model.kv_shape(1, c.block_size));
        let (num_blocks, source) = match c.num_blocks {
            Some(n) => (n, "configured".to_string()),
            None => size_kv_cache(&backend, &model, &mut ws, c, block_bytes)?,
        };
        if !kv_fits(num_blocks) {
            bail!(
                "KV cache: {num_blocks} blocks of {} tokens overflow the address space ({source})",
                c.block_size
            );
        }
        let cache = backend
            .alloc_kv_cache(model.kv_shape(num_blocks, c.block_size))
            .with_context(|| format!("allocating the KV cache ({num_blocks} blocks, {source})"))?;
        let sched = Scheduler::with_prefix_caching(
            num_blocks,
            c.block_size,
            c.max_num_seqs,
            c.max_batch_tokens,
            c.enable_prefix_caching,
        );
        let tokens = num_blocks * c.block_size;
        let kv_info = KvCacheInfo {
            num_blocks,
            block_size: c.block_size,
            bytes: num_blocks * block_bytes,
            max_concurrent_tokens: tokens,
            max_concurrency_at_full_context: tokens as f64 / model.spec.max_position.max(1) as f64,
            source,
        };
        let config = EngineConfig {
            num_blocks: Some(num_blocks),
            ..config
        };
        let graph_buckets = if config.cuda_graphs && backend.supports_graphs() {
            graph_buckets(config.max_num_seqs.min(config.max_batch_tokens))
        } else {
            Vec::new()
        };
        let graph_base = NEXT_GRAPH_BASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 32;
        let mut engine = Engine {
            graph_buckets,
            graph_base,
            graph_replays: 0,
            backend,
            model,
            config,
            kv_info,
            sched,
            cache,
            ws,
            tokenizer: None,
            stops: HashMap::new(),
            next_id: 0,
            pending_finished: Vec::new(),
        };
        engine.capture_graphs();
        Ok(engine)
    }

    /// Captures every decode bucket's graph now, after the KV cache is sized, so the first
    /// requests do not pay for captures (vLLM captures at start too; largest bucket first, as
    /// it does). Each capture runs a decode step of padding rows only: token 0 at position 0
    /// reading one key of block 0, writing no K/V (slot -1), its logits dropped. A failure
    /// turns graphs off for this engine, says so, and leaves it decoding eagerly: it is not
    /// an error. A backend may still recapture a bucket later when its inputs moved.
    fn capture_graphs(&mut self) {
        let buckets: Vec<usize> = self.graph_buckets.iter().rev().copied().collect();
        let empty = StepInput {
            block_size: self.config.block_size,
            ..Default::default()
        };
        for b in buckets {
            let step = self.graph_step(&empty, b);
            let key = self.graph_base + b as u64;
            let be = &self.backend;
            if let Err(e) = self.model.forward_device(
                be,
                &step,
                &mut self.cache,
                &mut self.ws,
                false,
                Some(key),
            ) {
                eprintln!(
                    "flint: capturing the CUDA graph for decode batch {b} at start failed ({e:#}); decoding eagerly"
                );
                self.graph_buckets.clear();
                self.backend.clear_graphs();
                return;
            }
        }
    }

    /// Lets requests use stop strings, and fills [`Finished::text`].
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// The KV cache's size and where it came from.
    pub fn kv_cache_info(&self) -> &KvCacheInfo {
        &self.kv_info
    }

    /// Blocks no request holds (including freed blocks the prefix cache still remembers).
    pub fn num_free_blocks(&self) -> usize {
        self.sched.alloc.num_free()
    }

    /// Blocks currently findable in the prefix cache.
    pub fn num_cached_blocks(&self) -> usize {
        self.sched.alloc.num_cached()
    }

    /// Sum of the blocks' reference counts: 0 once every request has finished.
    pub fn num_block_references(&self) -> usize {
        self.sched.alloc.num_references()
    }

    /// Prompt tokens looked up in the prefix cache and found there, so far.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.sched.alloc.stats
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
            cached_tokens: None,
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
                let mut f = finished(&s, FinishReason::Aborted, None);
                f.text = self.decode(&f.tokens);
                self.pending_finished.push(f);
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
        let v = self.model.spec.vocab_size;
        // One row of logits per chunk; the chunks that end a prompt or decode sample theirs
        // on the device (each from its own generator, so the batch does not matter).
        let sampled = self.forward(step, &chunks).and_then(|()| {
            let rows: Vec<(usize, SampleRow)> = chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.sample)
                .map(|(row, c)| (row, self.sched.running[c.idx].sampler.next_row()))
                .collect();
            self.backend.sample(self.ws.logits(), v, &rows)
        });
        let tokens = match sampled {
            Ok(t) => t,
            Err(e) => {
                // The step's sequences cannot be trusted: end them with the error.
                let mut idx: Vec<usize> = chunks.iter().map(|c| c.idx).collect();
                idx.sort_unstable();
                for &i in idx.iter().rev() {
                    let s = self.sched.remove_running(i);
                    self.stops.remove(&s.id);
                    out.finished
                        .push(finished(&s, FinishReason::Error, Some(format!("{e:#}"))));
                }
                return Ok(out);
            }
        };
        // The K/V of every chunk is written: completed full blocks join the prefix cache.
        self.sched.commit(&chunks);
        // (running index, reason, text cut at a stop string)
        let mut done: Vec<(usize, FinishReason, Option<String>)> = Vec::new();
        for (c, &t) in chunks.iter().filter(|c| c.sample).zip(&tokens) {
            let s = &mut self.sched.running[c.idx];
            s.tokens.push(t);
            out.tokens.push((s.id, t));
            let s = &self.sched.running[c.idx];
            let stop_text = self.stop_string_hit(s);
            let reason = if s.eos_ids.contains(&t) {
                Some(FinishReason::Eos)
            } else if s.stop_ids.contains(&t) || stop_text.is_some() {
                Some(FinishReason::Stop)
            } else if s.num_generated() >= s.max_new_tokens {
                Some(FinishReason::Length)
            } else if s.tokens.len() > self.model.spec.max_position {
                Some(FinishReason::ContextFull)
            } else {
                None
            };
            if let Some(r) = reason {
                done.push((c.idx, r, stop_text));
            }
        }
        done.sort_unstable_by_key(|d| d.0);
        for (i, r, text) in done.into_iter().rev() {
            let s = self.sched.remove_running(i);
            self.stops.remove(&s.id);
            let mut f = finished(&s, r, None);
            f.text = text.or_else(|| self.decode(&f.tokens));
            out.finished.push(f);
        }
        Ok(out)
    }

    /// Runs the step's forward: a pure decode step of at most the largest bucket replays
    /// the bucket's graph (padded rows write nowhere), anything else runs eagerly. A graph
    /// failure turns graphs off for this engine, says so once, and reruns the step eagerly
    /// (a failed capture ran nothing; a rerun rewrites the same K/V).
    fn forward(&mut self, step: StepInput, chunks: &[Chunk]) -> Result<()> {
        let n = chunks.len();
        let decode = chunks.iter().all(|c| c.len == 1 && c.sample);
        let bucket = self.graph_buckets.iter().copied().find(|&b| b >= n);
        if let (true, Some(b)) = (decode, bucket) {
            let padded = self.graph_step(&step, b);
            let key = self.graph_base + b as u64;
            let be = &self.backend;
            match self.model.forward_device(
                be,
                &padded,
                &mut self.cache,
                &mut self.ws,
                false,
                Some(key),
            ) {
                Ok(()) => {
                    self.graph_replays += 1;
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("flint: CUDA graph for decode batch {b} failed ({e:#}); running eagerly from now on");
                    self.graph_buckets.clear();
                    self.backend.clear_graphs();
                }
            }
        }
        self.model.forward_device(
            &self.backend,
            &step,
            &mut self.cache,
            &mut self.ws,
            false,
            None,
        )
    }

    /// `step` (pure decode) as graph bucket `bucket` runs it (see [`pad_decode_step`]),
    /// planned for the longest context the cache can hold: at shorter contexts most of the
    /// decode kernel's key splits are empty, and such a CTA reads nothing (no q, no keys) but
    /// its empty partial and its count for the in-launch merge.
    pub fn graph_step(&self, step: &StepInput, bucket: usize) -> StepInput {
        let cap = self.config.num_blocks.unwrap_or(0) * self.config.block_size;
        pad_decode_step(step, bucket, self.model.spec.max_position.min(cap))
    }

    /// The latest step's logits on the host (a row per scheduled chunk, plus a graph
    /// bucket's padding rows): for checks that compare two runs bit for bit (the selftest's
    /// PDL cases). Synchronizes.
    pub fn last_logits(&self) -> Result<Vec<f32>> {
        self.backend.to_host(self.ws.logits())
    }

    /// Decode steps run from a CUDA graph so far.
    pub fn num_graph_steps(&self) -> usize {
        self.graph_replays
    }

    /// Whether decode steps still use graphs (false when off, unsupported, or after a failure).
    pub fn graphs_enabled(&self) -> bool {
        !self.graph_buckets.is_empty()
    }

    /// The generated text, when the engine has a tokenizer and it decodes.
    fn decode(&self, tokens: &[u32]) -> Option<String> {
        self.tokenizer.as_ref()?.decode(tokens, true).ok()
    }

    /// When the sequence's generated text now holds one of its stop strings: the text before
    /// the earliest one. The whole generated text is decoded (a window could split a
    /// multi-byte character or a sentencepiece space); only requests with stop strings pay.
    fn stop_string_hit(&self, s: &Sequence) -> Option<String> {
        let strings = self.stops.get(&s.id)?;
        let text = self.decode(&s.tokens[s.prompt_len..])?;
        let at = strings.iter().filter_map(|x| text.find(x.as_str())).min()?;
        Some(text[..at].to_string())
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

/// Blocks for a KV cache sized from measured memory: runs one warm-up step of the largest
/// batch (so every lazily sized buffer exists), then gives the cache what
/// `gpu_memory_fraction · total` leaves beyond what is in use. Backends reporting no memory
/// get [`DEFAULT_NUM_BLOCKS`].
fn size_kv_cache<B: Backend>(
    be: &B,
    model: &Model<B>,
    ws: &mut Workspace<B>,
    c: &EngineConfig,
    block_bytes: usize,
) -> Result<(usize, String)> {
    if be.memory_info()?.is_none() {
        return Ok((
            DEFAULT_NUM_BLOCKS,
            format!("default: the {} backend reports no free memory", be.name()),
        ));
    }
    // Warm-up: one sequence of the step token budget through a throw-away cache.
    let n = c.max_batch_tokens.min(model.spec.max_position).max(1);
    let blocks = n.div_ceil(c.block_size);
    {
        let mut alloc = BlockAllocator::new(blocks, c.block_size);
        let mut cache = be
            .alloc_kv_cache(model.kv_shape(blocks, c.block_size))
            .context("warm-up before sizing the KV cache")?;
        let mut step = StepInput {
            block_size: c.block_size,
            ..Default::default()
        };
        // Token 0 is in every vocabulary; the values do not matter, the buffers do.
        SeqCache::default().push_to_step(&mut alloc, &vec![0; n], &mut step)?;
        model
            .forward(be, &step, &mut cache, ws, false)
            .context("warm-up step before sizing the KV cache")?;
    }
    let m = be.memory_info()?.expect("reported above");
    let num_blocks = blocks_for_memory(m, c.gpu_memory_fraction, block_bytes)?;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    Ok((
        num_blocks,
        format!(
            "measured: {:.2} of {:.2} GiB in use after warm-up, fraction {}",
            gib(m.total - m.free.min(m.total)),
            gib(m.total),
            c.gpu_memory_fraction
        ),
    ))
}

/// KV blocks that fit in `fraction · total` beyond the memory already in use (weights,
/// workspace, the warm-up's buffers, other processes): vLLM's rule. An error when none fits.
pub fn blocks_for_memory(m: MemoryInfo, fraction: f64, block_bytes: usize) -> Result<usize> {
    let allowed = (m.total as f64 * fraction) as usize;
    let used = m.total.saturating_sub(m.free);
    let budget = allowed.saturating_sub(used);
    let num_blocks = budget / block_bytes.max(1);
    if num_blocks == 0 {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        bail!(
            "KV cache: gpu_memory_fraction {fraction} of {:.2} GiB allows {:.2} GiB, but {:.2} GiB are in use after loading and a warm-up step: not one block ({block_bytes} bytes) fits; raise the fraction or lower max_batch_tokens",
            gib(m.total),
            gib(allowed),
            gib(used),
        );
    }
    Ok(num_blocks)
}

fn finished(s: &Sequence, reason: FinishReason, error: Option<String>) -> Finished {
    Finished {
        id: s.id,
        reason,
        tokens: s.tokens[s.prompt_len..].to_vec(),
        text: None,
        cached_tokens: s.cached_tokens.unwrap_or(0),
        error,
    }
}
