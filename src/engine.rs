//! The decode loop. For now one sequence at a time: prefill the prompt in one step, then
//! one token per step until EOS, the token limit or the context limit. The batched engine
//! (scheduler, continuous batching, graphs) grows from here.

use crate::backend::{Backend, StepInput};
use crate::kv_cache::{BlockAllocator, SeqCache};
use crate::model::{Model, Workspace};
use crate::sampling::{Sampler, SamplingParams};
use anyhow::{bail, Result};

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
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context",
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
