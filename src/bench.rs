//! `flint bench`: throughput in the shape llama-bench users know. `pp<N>`: a prompt of N
//! tokens in one step; `tg<N>`: N decode steps of one token per sequence; `@ d<D>`: with D
//! tokens already in the cache. Every combination of the lists runs; each `-r` times, reported
//! as mean ± std tokens/s. Token ids are fixed pseudo-random; no tokenizing or sampling is
//! timed.

use crate::backend::{Backend, StepInput};
use crate::engine::BLOCK_SIZE;
use crate::kv_cache::{BlockAllocator, SeqCache};
use crate::model::{Model, Workspace};
use crate::sampling::{Rng, SampleRow};
use anyhow::{bail, Result};
use std::time::Instant;

// `flint bench --moe-layer` (owned by the MoE kernels' author).
#[path = "bench_moe.rs"]
pub mod moe;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub prompt: Vec<usize>,
    pub gen: Vec<usize>,
    pub depth: Vec<usize>,
    pub batch: Vec<usize>,
    pub reps: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub test: String,
    pub batch: usize,
    pub depth: usize,
    pub tokens: usize,
    pub mean_tps: f64,
    pub std_tps: f64,
    pub samples_ms: Vec<f64>,
}

fn ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

/// One timed case: `batch` sequences at `depth`, then `pp` prompt tokens or `tg` decode steps.
fn run_case<B: Backend>(
    be: &B,
    model: &Model<B>,
    batch: usize,
    depth: usize,
    pp: usize,
    tg: usize,
) -> Result<f64> {
    let spec = &model.spec;
    let per_seq = depth + pp + tg;
    if per_seq > spec.max_position {
        bail!(
            "bench: depth {depth} + {} tokens exceeds the model's context {}",
            pp + tg,
            spec.max_position
        );
    }
    let blocks = batch * per_seq.div_ceil(BLOCK_SIZE).max(1);
    let mut alloc = BlockAllocator::new(blocks, BLOCK_SIZE);
    let mut cache = be.alloc_kv_cache(model.kv_shape(blocks, BLOCK_SIZE))?;
    let widest = (batch * depth.max(pp)).max(batch).max(1);
    let mut ws = Workspace::new(be, spec, widest)?;
    let mut seqs = vec![SeqCache::default(); batch];
    let mut rng = Rng::new(1234);
    let mut step_of =
        |seqs: &mut [SeqCache], alloc: &mut BlockAllocator, n: usize| -> Result<StepInput> {
            let mut step = StepInput {
                block_size: BLOCK_SIZE,
                ..Default::default()
            };
            for s in seqs.iter_mut() {
                s.push_to_step(alloc, &ids(&mut rng, n, spec.vocab_size), &mut step)?;
            }
            Ok(step)
        };
    // A step as a server runs it: the forward, then a greedy token per sequence picked on the
    // device (only the ids come back, as with transformers' generate), not [batch, vocab]
    // logits copied to the host.
    let greedy: Vec<(usize, SampleRow)> = (0..batch)
        .map(|r| {
            let row = SampleRow {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                key: 0,
            };
            (r, row)
        })
        .collect();
    let run = |step: &StepInput, cache: &mut B::KvCache, ws: &mut Workspace<B>| -> Result<()> {
        model.forward_device(be, step, cache, ws, false, None)?;
        be.sample(ws.logits(), spec.vocab_size, &greedy)?;
        Ok(())
    };
    if depth > 0 {
        let step = step_of(&mut seqs, &mut alloc, depth)?;
        run(&step, &mut cache, &mut ws)?;
    }
    let start = Instant::now();
    if pp > 0 {
        let step = step_of(&mut seqs, &mut alloc, pp)?;
        run(&step, &mut cache, &mut ws)?;
    }
    for _ in 0..tg {
        let step = step_of(&mut seqs, &mut alloc, 1)?;
        run(&step, &mut cache, &mut ws)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Runs every combination; `on_row` sees each row as it completes.
pub fn run<B: Backend>(
    be: &B,
    model: &Model<B>,
    opt: &BenchOptions,
    mut on_row: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    if opt.reps == 0 {
        bail!("bench: -r must be at least 1");
    }
    let mut cases = Vec::new();
    for &d in &opt.depth {
        for &p in opt.prompt.iter().filter(|&&p| p > 0) {
            cases.push((format!("pp{p}"), 1, d, p, 0));
        }
        for &b in &opt.batch {
            for &n in opt.gen.iter().filter(|&&n| n > 0) {
                cases.push((format!("tg{n}"), b, d, 0, n));
            }
        }
    }
    let mut rows = Vec::new();
    // Timed runs done of all (test × repetition); rows print to stdout with it suspended.
    let runs = (cases.len() * opt.reps) as u64;
    let bar = crate::progress::count(runs, "runs", "bench");
    for (name, b, d, p, n) in cases {
        let batch = if b > 1 {
            format!(" x{b}")
        } else {
            String::new()
        };
        let depth = if d > 0 {
            format!(" @ d{d}")
        } else {
            String::new()
        };
        bar.set_message(format!("bench {name}{batch}{depth}"));
        // One untimed warm-up, then the timed repetitions.
        run_case(be, model, b, d, p.min(16), n.min(2))?;
        let mut secs = Vec::new();
        for _ in 0..opt.reps {
            secs.push(run_case(be, model, b, d, p, n)?);
            bar.inc(1);
        }
        let tokens = b * (p + n);
        let tps: Vec<f64> = secs.iter().map(|s| tokens as f64 / s).collect();
        let mean = tps.iter().sum::<f64>() / tps.len() as f64;
        let var =
            tps.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (tps.len().max(2) - 1) as f64;
        let test = if d > 0 {
            format!("{name} @ d{d}")
        } else {
            name
        };
        let row = BenchRow {
            test,
            batch: b,
            depth: d,
            tokens,
            mean_tps: mean,
            std_tps: var.sqrt(),
            samples_ms: secs.iter().map(|s| s * 1e3).collect(),
        };
        bar.suspend(|| on_row(&row));
        rows.push(row);
    }
    bar.finish_and_clear();
    Ok(rows)
}

pub fn markdown_header() -> String {
    "| model | backend | test | batch | t/s |\n| --- | --- | --- | ---: | ---: |".to_string()
}

pub fn markdown_row(model: &str, backend: &str, r: &BenchRow) -> String {
    format!(
        "| {model} | {backend} | {} | {} | {:.2} ± {:.2} |",
        r.test, r.batch, r.mean_tps, r.std_tps
    )
}

pub fn csv_header() -> String {
    "model,backend,test,batch,depth,tokens,mean_tps,std_tps".to_string()
}

pub fn csv_row(model: &str, backend: &str, r: &BenchRow) -> String {
    format!(
        "{model},{backend},{},{},{},{},{:.4},{:.4}",
        r.test, r.batch, r.depth, r.tokens, r.mean_tps, r.std_tps
    )
}
