//! Perplexity of a token sequence, generic over the backend: the quality measure that
//! compares a quantized model with its float original on the same text.
//!
//! The tokens are cut into consecutive windows of `ctx` tokens (the last may be shorter);
//! each window runs as one prompt from an empty cache, and every position but the window's
//! last predicts the next token: `nll = -log softmax(logits[t])[ids[t + 1]]`, computed in f64.
//! Perplexity is `exp(mean nll)` over every scored token (`Σ (len_w - 1)` of them). Windows
//! do not overlap (llama.cpp's `perplexity` scores only each window's second half; we score
//! all of it, the simpler and more common definition; the two differ, so compare like with
//! like).

use crate::backend::Backend;
use crate::engine::prompt_logits;
use crate::model::Model;
use anyhow::{bail, Result};

/// The result of [`perplexity`].
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub tokens_scored: usize,
    /// Mean negative log-likelihood in nats.
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// `-log softmax(logits)[target]` in f64.
pub fn token_nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    (max + sum.ln()) - logits[target] as f64
}

/// Perplexity of `ids` in windows of `ctx` tokens (see the module docs).
pub fn perplexity<B: Backend>(
    be: &B,
    model: &Model<B>,
    ids: &[u32],
    ctx: usize,
) -> Result<Perplexity> {
    if ctx < 2 {
        bail!("perplexity: the window must hold at least 2 tokens, got {ctx}");
    }
    if ids.len() < 2 {
        bail!(
            "perplexity: needs at least 2 tokens to score, got {}",
            ids.len()
        );
    }
    let vocab = model.spec.vocab_size;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("perplexity: token id {bad} is outside the vocabulary of {vocab}");
    }
    let (mut total, mut n) = (0.0f64, 0usize);
    let bar = crate::progress::count(ids.len() as u64, "tokens", "perplexity");
    for w in ids.chunks(ctx) {
        bar.inc(w.len() as u64);
        if w.len() < 2 {
            continue;
        }
        let logits = prompt_logits(be, model, w, true)?;
        for (t, row) in logits.chunks_exact(vocab).take(w.len() - 1).enumerate() {
            let nll = token_nll(row, w[t + 1] as usize);
            if !nll.is_finite() {
                bail!("perplexity: non-finite log-likelihood at token {t} of a window");
            }
            total += nll;
            n += 1;
        }
    }
    bar.finish_and_clear();
    let mean = total / n as f64;
    Ok(Perplexity {
        tokens_scored: n,
        mean_nll: mean,
        perplexity: mean.exp(),
    })
}
