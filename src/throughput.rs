//! `flint throughput`: N requests through the batched [`Engine`], submitted at once or at a
//! Poisson rate; completed and failed counts, tokens/s, TTFT and ITL percentiles.

use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig, FinishReason, Request};
use crate::sampling::{Rng, SamplingParams};
use crate::weights::quant_source::LoadOptions;
use crate::ModelRef;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ThroughputOptions {
    pub num_requests: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Lengths drawn uniformly from [len·(1-r), len·(1+r)], as vLLM's `--range-ratio`.
    pub range_ratio: f64,
    /// Requests per second (Poisson arrivals); `None` submits all at once.
    pub request_rate: Option<f64>,
    pub seed: u64,
    /// Every request's sampling; request i's generator is seeded with `sampling.seed + i`.
    pub sampling: SamplingParams,
    pub config: EngineConfig,
    /// How the model is loaded (`--quant`: quantize the linear weights on load).
    pub load: LoadOptions,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ThroughputReport {
    pub completed: usize,
    pub failed: usize,
    pub elapsed_s: f64,
    pub input_tokens: usize,
    pub output_tokens: usize,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    pub ttft_ms: Percentiles,
    pub itl_ms: Percentiles,
    pub preemptions: usize,
    /// The engine's KV cache: blocks, tokens it holds at once, how it was sized.
    pub kv_cache: Option<crate::engine::KvCacheInfo>,
    /// Prompt tokens served from the prefix cache (their prefill skipped).
    pub prefix_cache_hit_tokens: usize,
    /// Decode steps replayed from CUDA graphs.
    pub graph_steps: usize,
    /// Quantize-on-load mode the model ran with ("none" without `--quant`).
    pub quant: String,
    /// Every request's generated tokens, in submission order (empty for a request that
    /// failed to be added). Not printed; for checks against the Engine API.
    pub outputs: Vec<Vec<u32>>,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

/// The longest length [`draw_len`] can draw.
fn max_len(len: usize, ratio: f64) -> usize {
    if ratio <= 0.0 {
        return len.max(1);
    }
    ((len as f64 * (1.0 + ratio)).ceil() as usize).max(1)
}

impl ThroughputOptions {
    /// Checks the options against a model's context before anything is loaded or drawn: a
    /// rate of 0 made the first arrival infinitely late (a panic converting it to a
    /// `Duration`), and lengths past the context were allocated as prompts (`--input-len
    /// 10^12`: an allocator abort) only for every request to fail.
    pub fn check(&self, max_position: usize) -> Result<()> {
        if let Some(r) = self.request_rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("throughput: --request-rate must be a positive number of requests per second, got {r}");
            }
        }
        if !(0.0..=1.0).contains(&self.range_ratio) {
            bail!(
                "throughput: --range-ratio must be in [0, 1], got {}",
                self.range_ratio
            );
        }
        let longest = max_len(self.input_len, self.range_ratio);
        if longest > max_position {
            bail!(
                "throughput: --input-len {} with --range-ratio {} draws prompts of up to {longest} \
                 tokens; the model's context is {max_position}",
                self.input_len,
                self.range_ratio
            );
        }
        Ok(())
    }
}

fn draw_len(rng: &mut Rng, len: usize, ratio: f64) -> usize {
    if ratio <= 0.0 {
        return len.max(1);
    }
    let lo = (len as f64 * (1.0 - ratio)).floor().max(1.0) as usize;
    let hi = ((len as f64 * (1.0 + ratio)).ceil() as usize).max(lo);
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
}

/// The benchmark's requests for a model of `vocab` tokens, with their arrival offsets: the
/// same for the same options (seeded), so a run can be replayed through the Engine API.
/// An error when the host cannot hold `num_requests` of them.
pub fn requests(opt: &ThroughputOptions, vocab: usize) -> Result<Vec<(Duration, Request)>> {
    let vocab = vocab.max(1) as u64;
    let mut rng = Rng::new(opt.seed);
    let mut reqs = Vec::new();
    reqs.try_reserve_exact(opt.num_requests).map_err(|_| {
        anyhow!(
            "throughput: the host cannot hold {} requests",
            opt.num_requests
        )
    })?;
    let mut arrival = 0.0f64;
    for n in 0..opt.num_requests {
        let i = draw_len(&mut rng, opt.input_len, opt.range_ratio);
        let o = draw_len(&mut rng, opt.output_len, opt.range_ratio);
        let prompt = (0..i).map(|_| (rng.next_u64() % vocab) as u32).collect();
        if let Some(rate) = opt.request_rate {
            arrival += -(1.0 - rng.next_f32() as f64).max(1e-12).ln() / rate;
        }
        let req = Request {
            prompt,
            max_new_tokens: o,
            ignore_eos: true,
            sampling: SamplingParams {
                seed: opt.sampling.seed.wrapping_add(n as u64),
                ..opt.sampling
            },
            ..Default::default()
        };
        let at = Duration::try_from_secs_f64(arrival).map_err(|_| {
            anyhow!(
                "throughput: request {n} would arrive after {arrival} s (--request-rate too low)"
            )
        })?;
        reqs.push((at, req));
    }
    Ok(reqs)
}

/// Runs the benchmark on `be`.
pub fn run<B: Backend>(
    be: &B,
    model: &ModelRef,
    opt: &ThroughputOptions,
) -> Result<ThroughputReport> {
    opt.sampling.validate()?; // before loading a model every request would then fail on
    opt.check(model.spec()?.max_position)?;
    let m = model.load_with(&be, &opt.load)?;
    let vocab = m.spec.vocab_size;
    let mut engine = Engine::new(be, m, opt.config.clone())?;
    eprintln!("flint throughput: {}", engine.kv_cache_info());
    if opt.config.cuda_graphs && !engine.graphs_enabled() && be.supports_graphs() {
        eprintln!("flint throughput: CUDA graphs are off (see above): decoding eagerly");
    }
    let reqs = requests(opt, vocab)?;
    let mut rep = ThroughputReport::default();
    let start = Instant::now();
    let mut next = 0;
    rep.quant = opt.load.quant.map_or("none".into(), |q| q.to_string());
    rep.outputs = vec![Vec::new(); reqs.len()];
    // id -> (request index, submitted, last token time)
    let mut live: HashMap<u64, (usize, Instant, Option<Instant>)> = HashMap::new();
    let (mut ttft, mut itl) = (Vec::new(), Vec::new());
    // Finished requests (completed, failed or refused) out of all.
    let bar = crate::progress::count(reqs.len() as u64, "requests", "throughput");
    while next < reqs.len() || engine.has_unfinished() {
        while next < reqs.len() && start.elapsed() >= reqs[next].0 {
            let (_, r) = &reqs[next];
            rep.input_tokens += r.prompt.len();
            match engine.add_request(r.clone()) {
                Ok(id) => {
                    live.insert(id, (next, Instant::now(), None));
                }
                Err(_) => {
                    rep.failed += 1;
                    bar.inc(1);
                }
            }
            next += 1;
        }
        if !engine.has_unfinished() {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let out = engine.step()?;
        let now = Instant::now();
        for (id, _) in &out.tokens {
            rep.output_tokens += 1;
            if let Some((_, sub, last)) = live.get_mut(id) {
                match last {
                    None => ttft.push((now - *sub).as_secs_f64() * 1e3),
                    Some(l) => itl.push((now - *l).as_secs_f64() * 1e3),
                }
                *last = Some(now);
            }
        }
        for f in out.finished {
            if let Some((i, _, _)) = live.remove(&f.id) {
                rep.outputs[i] = f.tokens.clone();
            }
            match f.reason {
                FinishReason::Error | FinishReason::Aborted => rep.failed += 1,
                _ => rep.completed += 1,
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    rep.elapsed_s = start.elapsed().as_secs_f64();
    let t = rep.elapsed_s.max(1e-9);
    rep.output_tokens_per_s = rep.output_tokens as f64 / t;
    rep.total_tokens_per_s = (rep.input_tokens + rep.output_tokens) as f64 / t;
    rep.ttft_ms = percentiles(ttft);
    rep.itl_ms = percentiles(itl);
    rep.preemptions = engine.num_preemptions();
    rep.graph_steps = engine.num_graph_steps();
    rep.kv_cache = Some(engine.kv_cache_info().clone());
    rep.prefix_cache_hit_tokens = engine.prefix_cache_stats().hits;
    Ok(rep)
}

pub fn to_json(r: &ThroughputReport) -> serde_json::Value {
    let p = |p: &Percentiles| serde_json::json!({"p50": p.p50, "p90": p.p90, "p99": p.p99});
    serde_json::json!({
        "quant": r.quant,
        "completed": r.completed,
        "failed": r.failed,
        "elapsed_s": r.elapsed_s,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "output_tokens_per_s": r.output_tokens_per_s,
        "total_tokens_per_s": r.total_tokens_per_s,
        "ttft_ms": p(&r.ttft_ms),
        "itl_ms": p(&r.itl_ms),
        "preemptions": r.preemptions,
        "prefix_cache_hit_tokens": r.prefix_cache_hit_tokens,
        "graph_steps": r.graph_steps,
        "kv_cache": r.kv_cache.as_ref().map(|k| serde_json::json!({
            "num_blocks": k.num_blocks,
            "block_size": k.block_size,
            "bytes": k.bytes,
            "max_concurrent_tokens": k.max_concurrent_tokens,
            "max_concurrency_at_full_context": k.max_concurrency_at_full_context,
            "source": k.source,
        })),
    })
}

pub fn to_table(r: &ThroughputReport) -> String {
    let row = |n: &str, p: &Percentiles| {
        format!("{n:<10} {:>10.2} {:>10.2} {:>10.2}\n", p.p50, p.p90, p.p99)
    };
    let kv = match &r.kv_cache {
        Some(k) => format!("{k}\n"),
        None => String::new(),
    };
    format!(
        "{kv}completed {}  failed {}  elapsed {:.2} s  preemptions {}  prefix-cache hit tokens {}\n\
         output tokens/s {:.1}  total tokens/s {:.1}\n\
         {:<10} {:>10} {:>10} {:>10}\n{}{}",
        r.completed,
        r.failed,
        r.elapsed_s,
        r.preemptions,
        r.prefix_cache_hit_tokens,
        r.output_tokens_per_s,
        r.total_tokens_per_s,
        "ms",
        "p50",
        "p90",
        "p99",
        row("ttft", &r.ttft_ms),
        row("itl", &r.itl_ms),
    )
}
