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
    /// Also run every tg test with its decode steps replayed from a CUDA graph (rows named
    /// `tg<n>+graphs`), beside the eager rows.
    pub cuda_graphs: bool,
    /// Also run every tg test (and tg+graphs test) with programmatic dependent launch on
    /// (rows `tg<n>+pdl`, `tg<n>+graphs+pdl`); the other rows then run with it off.
    pub pdl: bool,
    /// Also run every tg+graphs test (every tg test without `cuda_graphs`) with the fused
    /// GEMV inputs off (`Backend::set_fuse(false)`: the norms and act·mul as kernels of their
    /// own), as a row `tg<n>+graphs+unfused` beside it (and `tg<n>+graphs+pdl+unfused` with
    /// `pdl`): what the fusion saves, same run.
    /// The act·mul output of the gate|up GEMV (`FLINT_FUSE_OUT`, `Backend::set_fuse_out`) is
    /// not switched here: compare it with `FLINT_FUSE_OUT=0` in a second run.
    pub unfused: bool,
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

/// Graph keys of `flint bench` (one per decode shape; the backend recaptures a key whose
/// buffers moved), apart from any engine's.
const BENCH_GRAPH_KEY: u64 = 0xBE7C_0000_0000;

/// A case's (batch, depth, pp, tg).
type Shape = (usize, usize, usize, usize);

/// The KV cache and workspace a case of `shape` runs in: made once per case and reused by
/// its repetitions (a CUDA graph bakes their addresses in).
fn buffers<B: Backend>(
    be: &B,
    model: &Model<B>,
    (batch, depth, pp, tg): Shape,
) -> Result<(B::KvCache, Workspace<B>)> {
    let spec = &model.spec;
    // The lists are the user's numbers: sums and products are checked, not wrapped.
    let per_seq = depth.saturating_add(pp).saturating_add(tg);
    if per_seq > spec.max_position {
        bail!(
            "bench: depth {depth} + {} tokens exceeds the model's context {}",
            pp.saturating_add(tg),
            spec.max_position
        );
    }
    let blocks = per_seq.div_ceil(BLOCK_SIZE).max(1).checked_mul(batch);
    let widest = depth.max(pp).max(1).checked_mul(batch);
    let (Some(blocks), Some(widest)) = (blocks, widest) else {
        bail!("bench: batch {batch} of {per_seq} tokens each overflows the address space");
    };
    let cache = be.alloc_kv_cache(model.kv_shape(blocks, BLOCK_SIZE))?;
    Ok((cache, Workspace::new(be, spec, widest)?))
}

/// One timed case in `bufs` (from [`buffers`] for this shape): `batch` sequences at `depth`,
/// then `pp` prompt tokens or `tg` decode steps (from a CUDA graph with `graphs`, planned for
/// the case's longest context).
fn run_case<B: Backend>(
    be: &B,
    model: &Model<B>,
    (batch, depth, pp, tg): Shape,
    graphs: bool,
    (cache, ws): &mut (B::KvCache, Workspace<B>),
) -> Result<f64> {
    let spec = &model.spec;
    let per_seq = depth + pp + tg;
    let blocks = batch * per_seq.div_ceil(BLOCK_SIZE).max(1);
    let mut alloc = BlockAllocator::new(blocks, BLOCK_SIZE);
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
        if graphs && step.num_tokens() == batch {
            let padded = crate::engine::pad_decode_step(step, batch, per_seq);
            let key = BENCH_GRAPH_KEY + ((batch as u64) << 20) + per_seq as u64;
            model.forward_device(be, &padded, cache, ws, false, Some(key))?;
        } else {
            model.forward_device(be, step, cache, ws, false, None)?;
        }
        be.sample(ws.logits(), spec.vocab_size, &greedy)?;
        Ok(())
    };
    if depth > 0 {
        let step = step_of(&mut seqs, &mut alloc, depth)?;
        run(&step, cache, ws)?;
    }
    let start = Instant::now();
    if pp > 0 {
        let step = step_of(&mut seqs, &mut alloc, pp)?;
        run(&step, cache, ws)?;
    }
    for _ in 0..tg {
        let step = step_of(&mut seqs, &mut alloc, 1)?;
        run(&step, cache, ws)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The options' errors that need no model (so a caller can say them before printing anything).
pub fn check_options<B: Backend>(be: &B, opt: &BenchOptions) -> Result<()> {
    if opt.reps == 0 {
        bail!("bench: -r must be at least 1");
    }
    if opt.batch.contains(&0) {
        bail!("bench: -b 0: a tg test decodes at least one sequence");
    }
    if opt.cuda_graphs && !be.supports_graphs() {
        bail!(
            "bench: --cuda-graphs needs the CUDA backend ({} has no graphs)",
            be.name()
        );
    }
    if opt.pdl {
        if let Some(why) = be.pdl_unavailable() {
            bail!("bench: --pdl cannot run here: {why}");
        }
    }
    if opt.unfused {
        if let Some(why) = be.fuse_unavailable() {
            bail!("bench: --unfused cannot run here: {why}");
        }
    }
    Ok(())
}

/// Runs every combination; `on_row` sees each row as it completes.
pub fn run<B: Backend>(
    be: &B,
    model: &Model<B>,
    opt: &BenchOptions,
    mut on_row: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    check_options(be, opt)?;
    let (was_pdl, was_fused) = (be.pdl(), be.fuse());
    let rows = run_cases(be, model, opt, &mut on_row);
    if opt.pdl {
        be.set_pdl(was_pdl)?;
    }
    if opt.unfused {
        be.set_fuse(was_fused)?;
    }
    rows
}

/// A test of [`run`]: (name, batch, depth, pp, tg, graphs, pdl, fused).
type BenchCase = (String, usize, usize, usize, usize, bool, bool, bool);

/// The tests of `opt`, in the order they run: per depth, the pp tests, then per batch and
/// tg length `tg`, `tg+pdl`, `tg+graphs`, `tg+graphs+pdl` (as the options ask), and with
/// `unfused` `+unfused` twins of the last (graphs) rows right after them, PDL off, then on
/// with `pdl`.
fn bench_cases(opt: &BenchOptions) -> Vec<BenchCase> {
    let mut cases = Vec::new();
    let pdl = if opt.pdl {
        &[false, true][..]
    } else {
        &[false][..]
    };
    let graphs = if opt.cuda_graphs {
        &[false, true][..]
    } else {
        &[false][..]
    };
    for &d in &opt.depth {
        for &p in opt.prompt.iter().filter(|&&p| p > 0) {
            cases.push((format!("pp{p}"), 1, d, p, 0, false, false, true));
        }
        for &b in &opt.batch {
            for &n in opt.gen.iter().filter(|&&n| n > 0) {
                for &g in graphs {
                    for &on in pdl {
                        let name = format!(
                            "tg{n}{}{}",
                            if g { "+graphs" } else { "" },
                            if on { "+pdl" } else { "" }
                        );
                        cases.push((name, b, d, 0, n, g, on, true));
                    }
                }
                if opt.unfused {
                    // The unfused twin of the last tg row, with PDL off and (with --pdl) on:
                    // the default decode is unfused, with PDL where the device can.
                    let g = opt.cuda_graphs;
                    for &on in pdl {
                        let name = format!(
                            "tg{n}{}{}+unfused",
                            if g { "+graphs" } else { "" },
                            if on { "+pdl" } else { "" }
                        );
                        cases.push((name, b, d, 0, n, g, on, false));
                    }
                }
            }
        }
    }
    cases
}

fn run_cases<B: Backend>(
    be: &B,
    model: &Model<B>,
    opt: &BenchOptions,
    on_row: &mut impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let cases = bench_cases(opt);
    let mut rows = Vec::new();
    // Timed runs done of all (test × repetition); rows print to stdout with it suspended.
    let runs = (cases.len() * opt.reps) as u64;
    let bar = crate::progress::count(runs, "runs", "bench");
    for (name, b, d, p, n, graphs, pdl, fused) in cases {
        if opt.pdl {
            // Drops the graphs captured the other way when it changes (pp tests run it off).
            be.set_pdl(pdl)?;
        }
        if opt.unfused {
            be.set_fuse(fused)?;
        }
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
        // One untimed warm-up (with graphs: at the timed shape, so it captures the graph the
        // timed runs replay), then the timed repetitions.
        let shape = (b, d, p, n);
        let mut bufs = buffers(be, model, shape)?;
        let timed = |bufs: &mut _| -> Result<Vec<f64>> {
            if graphs {
                run_case(be, model, shape, true, bufs)?;
            } else {
                let small = (b, d, p.min(16), n.min(2));
                run_case(be, model, small, false, &mut buffers(be, model, small)?)?;
            }
            let mut secs = Vec::new();
            for _ in 0..opt.reps {
                secs.push(run_case(be, model, shape, graphs, bufs)?);
                bar.inc(1);
            }
            Ok(secs)
        };
        let secs = match timed(&mut bufs) {
            Ok(s) => s,
            // A graph or PDL failure (on a card they have not run on) costs the row, not
            // the run.
            Err(e) if graphs || pdl => {
                be.clear_graphs();
                let what = if pdl { "with PDL" } else { "CUDA graphs" };
                bar.suspend(|| eprintln!("flint bench: {name} x{b}: no row, {what} failed: {e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        if graphs {
            be.clear_graphs();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(graphs: bool, pdl: bool) -> BenchOptions {
        BenchOptions {
            prompt: vec![512],
            gen: vec![128],
            depth: vec![0],
            batch: vec![1, 32],
            reps: 3,
            cuda_graphs: graphs,
            pdl,
            unfused: false,
        }
    }

    fn names(o: &BenchOptions) -> Vec<String> {
        bench_cases(o)
            .into_iter()
            .map(|c| format!("{} b{}", c.0, c.1))
            .collect()
    }

    #[test]
    fn pdl_rows_sit_beside_their_tg_rows() {
        assert_eq!(
            names(&opt(false, false)),
            ["pp512 b1", "tg128 b1", "tg128 b32"]
        );
        assert_eq!(
            names(&opt(true, true)),
            [
                "pp512 b1",
                "tg128 b1",
                "tg128+pdl b1",
                "tg128+graphs b1",
                "tg128+graphs+pdl b1",
                "tg128 b32",
                "tg128+pdl b32",
                "tg128+graphs b32",
                "tg128+graphs+pdl b32",
            ]
        );
        // The flags each row runs with match its name.
        for (name, _, _, _, _, graphs, pdl, fused) in bench_cases(&opt(true, true)) {
            assert_eq!(name.contains("+graphs"), graphs, "{name}");
            assert_eq!(name.contains("+pdl"), pdl, "{name}");
            assert!(fused, "{name}");
        }
        assert_eq!(names(&opt(false, true))[1..3], ["tg128 b1", "tg128+pdl b1"]);
    }

    #[test]
    fn unfused_rows_follow_the_row_they_twin() {
        let mut o = opt(true, true);
        o.unfused = true;
        assert_eq!(
            names(&o)[1..7],
            [
                "tg128 b1",
                "tg128+pdl b1",
                "tg128+graphs b1",
                "tg128+graphs+pdl b1",
                "tg128+graphs+unfused b1",
                "tg128+graphs+pdl+unfused b1",
            ]
        );
        for (name, _, _, _, _, graphs, pdl, fused) in bench_cases(&o) {
            assert_eq!(name.contains("+unfused"), !fused, "{name}");
            assert_eq!(name.contains("+pdl"), pdl, "{name}");
            if !fused {
                assert!(graphs, "{name}");
            }
        }
        let mut eager = opt(false, false);
        eager.unfused = true;
        assert_eq!(
            names(&eager),
            [
                "pp512 b1",
                "tg128 b1",
                "tg128+unfused b1",
                "tg128 b32",
                "tg128+unfused b32"
            ]
        );
        let e = check_options(&crate::backend::cpu::CpuBackend, &eager)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--unfused") && e.contains("cpu"), "{e}");
    }

    #[test]
    fn pdl_on_the_cpu_is_a_clear_error() {
        let e = check_options(&crate::backend::cpu::CpuBackend, &opt(false, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--pdl") && e.contains("cpu"), "{e}");
    }
}
