//! `flint bench --moe-layer`: one MoE layer's routed experts at several token counts, beside
//! two references timed in the same run on the same backend:
//!
//! - flint: router GEMM → `moe_route` → `moe_experts` (dispatch, expert kernels, combine),
//!   everything on the device (on CUDA the path it took is reported: gemv, grouped or wgmma);
//! - loop: per expert, `[c_e, D] · gate_upᵀ` → `act_mul` → `· downᵀ` with the backend's dense
//!   GEMM (cuBLASLt on CUDA) over each expert's own token count c_e. The counts come from the
//!   same routing, computed once on the host outside the timing, and the loop does no
//!   gather/scatter: a lower bound for the naive loop, which is what it should beat;
//! - dense: the same GEMMs over the active parameters as one dense layer, `[T, D] · [k·2I, D]ᵀ`
//!   → `act_mul` → `· [D, k·I]ᵀ` (all T tokens through k experts' worth of weights): the
//!   roofline a grouped GEMM can at best match.
//!
//! `--quant int8|int4[-asym][-g<group>]|fp8`: flint's stacked experts are quantized (round to
//! nearest, as `--quant` on load; one expert quantized and repeated) and run on the quantized
//! expert kernels; the loop and dense references stay bf16 (the comparison is then "quantized
//! MoE layer vs the bf16 alternatives"), and the GB/s counts the quantized bytes read.
//!
//! Weights: the router is the synthetic source's (uniform, std 1/√D) and inputs are N(0, 1)
//! like a normed hidden state, so router logits have std ~1 and the routing spreads over the
//! experts (the report gives the fewest and most tokens any expert got). Expert weights hold
//! the same values in every expert (timing does not depend on the values), so the host
//! generates one expert's worth.

use crate::backend::{Backend, MoeExperts, MoeRouting};
use crate::config::ModelSpec;
use crate::sampling::Rng;
use crate::weights::quant::concat_rows;
use crate::weights::quant_source::{quantize, QuantMode};
use crate::weights::synthetic::SyntheticSource;
use crate::weights::TensorSource;
use anyhow::{bail, Context, Result};
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct MoeBenchRow {
    pub tokens: usize,
    /// flint's experts: `bf16` or the `--quant` mode.
    pub experts: String,
    /// `gemv` / `grouped` on CUDA, the backend name elsewhere.
    pub path: String,
    pub flint_ms: f64,
    pub flint_std_ms: f64,
    pub loop_ms: f64,
    pub dense_ms: f64,
    /// Fewest and most assignments any expert received.
    pub expert_tokens_min: usize,
    pub expert_tokens_max: usize,
    /// Experts that received no token.
    pub idle_experts: usize,
    /// Expert weight bytes flint had to read (every used expert once) per flint_ms, in GB/s:
    /// the decode-time figure of merit (compare with the card's copy bandwidth).
    pub flint_weight_gbps: f64,
}

/// Default token counts.
pub const TOKENS: &[usize] = &[1, 8, 64, 512, 4096];

fn random(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    // Uniform with the given std: cheap, and enough for timing and for routing spread.
    (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * std * 3f32.sqrt())
        .collect()
}

/// Mean and sample std of per-iteration milliseconds over `reps` timed batches of `iters`
/// runs each (after one untimed warm-up batch, which also grows any workspace).
fn time<B: Backend>(
    be: &B,
    sync: &B::Tensor,
    reps: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    f()?;
    be.to_host(sync)?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        be.to_host(sync)?; // waits for the queued work
        ms.push(t0.elapsed().as_secs_f64() * 1e3 / iters as f64);
    }
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let var = ms.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (ms.len().max(2) - 1) as f64;
    Ok((mean, var.sqrt()))
}

/// Runs the comparison for every token count; `on_row` sees each row as it completes. Needs a
/// backend whose tensors and weights are one type (inputs are uploaded as weights).
pub fn run<W, B: Backend<Tensor = W, Weight = W>>(
    be: &B,
    spec: &ModelSpec,
    tokens: &[usize],
    reps: usize,
    quant: Option<QuantMode>,
    mut on_row: impl FnMut(&MoeBenchRow),
) -> Result<Vec<MoeBenchRow>> {
    let Some(m) = spec.moe.as_ref() else {
        bail!("bench --moe-layer: {} has no MoE layers", spec.model_type);
    };
    if reps == 0 {
        bail!("bench: -r must be at least 1");
    }
    let (ne, k, d, i) = (m.num_experts, m.top_k, spec.hidden, m.expert_intermediate);
    let act = spec.activation;
    let routing = MoeRouting {
        num_experts: ne,
        top_k: k,
        norm_topk_prob: m.norm_topk_prob,
    };
    let shape = MoeExperts {
        num_experts: ne,
        top_k: k,
        hidden: d,
        intermediate: i,
        act,
    };
    let mut rng = Rng::new(0x006d_6f65);
    let src = SyntheticSource::new(spec, 7);
    let router_data = src.load("moe_bench.router.weight", &[ne, d])?;
    let router = be.upload_weight("moe_bench.router", &router_data, ne, d)?;
    // One expert's weights, repeated for every expert of the stacked tensors.
    let gu_one = random(&mut rng, 2 * i * d, 1.0 / (d as f32).sqrt());
    let dn_one = random(&mut rng, d * i, 1.0 / (i as f32).sqrt());
    let stacked = |one: &[f32], copies: usize| -> Vec<f32> {
        let mut v = Vec::with_capacity(one.len() * copies);
        for _ in 0..copies {
            v.extend_from_slice(one);
        }
        v
    };
    // Expert weight bytes per expert (what a decode step reads per used expert).
    let (gate_up, down, expert_bytes) = match quant {
        None => (
            be.upload_weight("moe_bench.gate_up", &stacked(&gu_one, ne), ne * 2 * i, d)?,
            be.upload_weight("moe_bench.down", &stacked(&dn_one, ne), ne * d, i)?,
            3 * d * i * 2,
        ),
        Some(mode) => {
            // Quantize one expert, stack E copies (the kernels do not look at the values).
            let one = |name: &str, w: &[f32], rows: usize, cols: usize| match quantize(
                mode, name, w, rows, cols,
            )? {
                crate::weights::quant::Linear::Quant(q) => Ok(q),
                crate::weights::quant::Linear::Dense(_) => {
                    bail!("bench --moe-layer --quant {mode}: `{name}` stayed dense")
                }
            };
            let gq = one("moe_bench.gate_up", &gu_one, 2 * i, d)?;
            let dq = one("moe_bench.down", &dn_one, d, i)?;
            let bytes = |q: &crate::weights::quant::QuantWeight| {
                q.qdata.len()
                    + 4 * q.scales.len()
                    + 4 * q.zeros.as_ref().map_or(0, |z| z.len())
                    + 4 * q.g_idx.as_ref().map_or(0, |g| g.len())
            };
            let per_expert = bytes(&gq) + bytes(&dq);
            let gs = concat_rows("moe_bench.gate_up", vec![gq; ne])?;
            let ds = concat_rows("moe_bench.down", vec![dq; ne])?;
            (
                be.upload_quantized("moe_bench.gate_up", &gs)?,
                be.upload_quantized("moe_bench.down", &ds)?,
                per_expert,
            )
        }
    };
    let experts = quant.map_or("bf16".to_string(), |q| q.to_string());
    // The loop's per-expert weights (one upload each, as a per-expert checkpoint holds them).
    let mut loop_w = Vec::with_capacity(ne);
    for e in 0..ne {
        loop_w.push((
            be.upload_weight(&format!("moe_bench.e{e}.gate_up"), &gu_one, 2 * i, d)?,
            be.upload_weight(&format!("moe_bench.e{e}.down"), &dn_one, d, i)?,
        ));
    }
    drop(gu_one);
    // The dense equivalent: k experts' gate|up rows and down columns as one layer.
    let dense_gu = be.upload_weight(
        "moe_bench.dense.gate_up",
        &random(&mut rng, k * 2 * i * d, 1.0 / (d as f32).sqrt()),
        k * 2 * i,
        d,
    )?;
    let dense_dn = be.upload_weight(
        "moe_bench.dense.down",
        &random(&mut rng, d * k * i, 1.0 / ((k * i) as f32).sqrt()),
        d,
        k * i,
    )?;
    drop(dn_one);
    let sync = be.upload_weight("moe_bench.sync", &[0.0], 1, 1)?;

    let mut rows = Vec::new();
    for &t in tokens {
        if t == 0 {
            continue;
        }
        let x_data: Vec<f32> = (0..t * d)
            .map(|_| {
                // Sum of 4 uniforms: close enough to N(0, 1) for a normed hidden state.
                (0..4).map(|_| rng.next_f32() - 0.5).sum::<f32>() * 3f32.sqrt()
            })
            .collect();
        let x = be.upload_weight("moe_bench.x", &x_data, t, d)?;
        let mut logits = be.alloc(t, ne)?;
        let mut ids = be.alloc(t, k)?;
        let mut weights = be.alloc(t, k)?;
        let mut scratch = be.alloc(t * k, 2 * i)?;
        let mut out = be.alloc(t, d)?;
        let iters = (64 / t).clamp(2, 16);
        let (flint_ms, flint_std_ms) = time(be, &sync, reps, iters, || {
            be.matmul(&x, &router, None, &mut logits)?;
            be.moe_route(&logits, &routing, &mut ids, &mut weights)?;
            be.moe_experts(
                &x,
                &ids,
                &weights,
                &gate_up,
                &down,
                &shape,
                &mut scratch,
                &mut out,
            )
        })
        .context("bench --moe-layer: flint's MoE layer")?;

        // Routing as the device made it: the loop's per-expert counts and the spread.
        let host_ids = be.to_host(&ids)?;
        let mut counts = vec![0usize; ne];
        for &id in &host_ids {
            let e = id as usize;
            if id < 0.0 || e >= ne {
                bail!("bench --moe-layer: the router produced expert id {id}");
            }
            counts[e] += 1;
        }
        let mut loop_bufs = Vec::new();
        for (e, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let xe = be.upload_weight("moe_bench.xe", &x_data[..c.min(t) * d], c.min(t), d)?;
            // c <= t: each token picks an expert at most once.
            loop_bufs.push((e, xe, be.alloc(c, 2 * i)?, be.alloc(c, i)?, be.alloc(c, d)?));
        }
        let (loop_ms, _) = time(be, &sync, reps, iters, || {
            for (e, xe, gu, h, y) in loop_bufs.iter_mut() {
                be.matmul(xe, &loop_w[*e].0, None, gu)?;
                be.act_mul(gu, act, h)?;
                be.matmul(h, &loop_w[*e].1, None, y)?;
            }
            Ok(())
        })
        .context("bench --moe-layer: the cuBLAS loop")?;
        drop(loop_bufs);

        let mut dgu = be.alloc(t, k * 2 * i)?;
        let mut dh = be.alloc(t, k * i)?;
        let mut dy = be.alloc(t, d)?;
        let (dense_ms, _) = time(be, &sync, reps, iters, || {
            be.matmul(&x, &dense_gu, None, &mut dgu)?;
            // act over the k·I columns: the gate half is k·I wide, as in the fused layer.
            be.act_mul(&dgu, act, &mut dh)?;
            be.matmul(&dh, &dense_dn, None, &mut dy)
        })
        .context("bench --moe-layer: the dense equivalent")?;

        let path = be.moe_path_name(t);
        let used = counts.iter().filter(|&&c| c > 0).count();
        let weight_bytes = (used * expert_bytes) as f64;
        let row = MoeBenchRow {
            tokens: t,
            experts: experts.clone(),
            path,
            flint_ms,
            flint_std_ms,
            loop_ms,
            dense_ms,
            expert_tokens_min: counts.iter().copied().min().unwrap_or(0),
            expert_tokens_max: counts.iter().copied().max().unwrap_or(0),
            idle_experts: ne - used,
            flint_weight_gbps: weight_bytes / (flint_ms * 1e-3) / 1e9,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

pub fn markdown_header() -> String {
    "| model | backend | experts | tokens | path | flint MoE layer ms | per-expert GEMM loop ms | dense-equivalent ms | loop / flint | dense / flint | flint expert weights GB/s | expert tokens min..max (idle) |\n\
     | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        .to_string()
}

pub fn markdown_row(model: &str, backend: &str, r: &MoeBenchRow) -> String {
    format!(
        "| {model} | {backend} | {} | {} | {} | {:.3} ± {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} | {}..{} ({}) |",
        r.experts,
        r.tokens,
        r.path,
        r.flint_ms,
        r.flint_std_ms,
        r.loop_ms,
        r.dense_ms,
        r.loop_ms / r.flint_ms,
        r.dense_ms / r.flint_ms,
        r.flint_weight_gbps,
        r.expert_tokens_min,
        r.expert_tokens_max,
        r.idle_experts
    )
}

pub fn csv_header() -> String {
    "model,backend,experts,tokens,path,flint_ms,flint_std_ms,loop_ms,dense_ms,flint_weight_gbps,expert_tokens_min,expert_tokens_max,idle_experts".to_string()
}

pub fn csv_row(model: &str, backend: &str, r: &MoeBenchRow) -> String {
    format!(
        "{model},{backend},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.1},{},{},{}",
        r.experts,
        r.tokens,
        r.path,
        r.flint_ms,
        r.flint_std_ms,
        r.loop_ms,
        r.dense_ms,
        r.flint_weight_gbps,
        r.expert_tokens_min,
        r.expert_tokens_max,
        r.idle_experts
    )
}
