//! The MoE ops' selftest cases (a child module of `selftest.rs`): `moe_route`,
//! `moe_experts` on both the gather-GEMV and the grouped-GEMM path, `sigmoid_gate_add`, each
//! against the CPU backend on the same bf16-rounded inputs.
//!
//! Routing for `moe_experts` is made on the host and given to both backends, so the experts
//! are compared on identical assignments: random (with many experts idle at few tokens),
//! every token on the same experts, and two hot experts. Shapes follow the real models'
//! proportions at a size the CPU reference runs in seconds (Mixtral: 8 experts top-2, I/D =
//! 3.5; Qwen3-MoE: 128 experts top-8, I < D; Grok-1: tanh-GELU), plus a ragged one whose
//! widths are not multiples of 8 (the kernels' scalar paths).
//!
//! `quant_moe_cases`: the same with quantized experts (every scheme of `quant_cases`), both
//! paths, against the CPU backend's exactly dequantized experts.

use super::{Case, Tester, OP_TOL};
use crate::backend::cuda::MoePath;
use crate::backend::{Backend, MoeExperts, MoeRouting};
use crate::config::Activation;
use anyhow::{bail, Result};

/// How the host routes tokens for a `moe_experts` case.
#[derive(Clone, Copy, Debug)]
enum Routing {
    /// Distinct random experts per token.
    Random,
    /// Every token picks experts 0..k (all other experts idle; one expert holds every token).
    AllOnOne,
    /// Tokens alternate between two disjoint hot sets.
    TwoHot,
}

impl Tester<'_> {
    /// The bf16 expert paths this card runs: the gather-GEMV, the mma.sync grouped GEMM, and
    /// on sm_90 its wgmma form.
    fn bf16_moe_paths(&self) -> Vec<MoePath> {
        let mut paths = vec![MoePath::Gemv, MoePath::Grouped];
        if self.gpu.moe_wgmma_unavailable().is_none() {
            paths.push(MoePath::Wgmma);
        }
        paths
    }

    pub(super) fn moe_cases(&self, quick: bool) -> Vec<Case> {
        let mut out = Vec::new();
        if let Some(why) = self.gpu.moe_wgmma_unavailable() {
            out.push(Case {
                group: "moe_experts",
                name: "the grouped GEMM on wgmma (every moe_experts shape)".into(),
                err: f64::NAN,
                tol: 0.0,
                note: None,
                error: None,
                skipped: Some(why),
            });
        }
        // (tokens, experts, top-k, norm_topk_prob, tied logits)
        let mut routes = vec![
            (1, 8, 2, true, false),
            (64, 8, 2, true, true),
            (512, 128, 8, true, false),
            (33, 60, 4, false, false),
            (64, 128, 8, false, true),
            (7, 256, 32, true, true),
            (5, 3, 3, false, false),
        ];
        if quick {
            routes.truncate(2);
        }
        for (t, e, k, norm, ties) in routes {
            out.push(self.case(
                "moe_route",
                format!("tokens {t} experts {e} top-{k} norm {norm} ties {ties}"),
                OP_TOL,
                || self.moe_route(t, e, k, norm, ties),
            ));
        }
        // (label, experts, top-k, hidden, intermediate, activation)
        let shapes = [
            ("mixtral-ish", 8, 2, 512, 1792, Activation::Silu),
            ("qwen3-moe-ish", 128, 8, 512, 200, Activation::Silu),
            ("grok1-ish", 8, 2, 256, 136, Activation::GeluTanh),
            ("ragged", 5, 3, 100, 36, Activation::Gelu),
        ];
        let tokens: &[usize] = if quick { &[1, 64] } else { &[1, 8, 64, 512] };
        for &(label, e, k, d, i, act) in &shapes {
            for &t in tokens {
                let name = format!("{label} E {e} top-{k} D {d} I {i} {act:?} tokens {t}");
                out.extend(self.moe_experts_cases(name, t, e, k, d, i, act, Routing::Random));
            }
        }
        let skewed: &[(usize, Routing)] = if quick {
            &[(64, Routing::AllOnOne)]
        } else {
            &[
                (8, Routing::AllOnOne),
                (200, Routing::AllOnOne),
                (130, Routing::TwoHot),
            ]
        };
        for &(t, r) in skewed {
            let name = format!("mixtral-ish tokens {t} {r:?}");
            out.extend(self.moe_experts_cases(name, t, 8, 2, 512, 1792, Activation::Silu, r));
        }
        for (t, d) in [(1, 4096), (7, 1000), (5, 33)] {
            out.push(
                self.case("sigmoid_gate_add", format!("[{t}, {d}]"), OP_TOL, || {
                    self.sigmoid_gate_add(t, d)
                }),
            );
        }
        out
    }

    fn moe_route(&self, t: usize, e: usize, k: usize, norm: bool, ties: bool) -> Result<f64> {
        let logits = if ties {
            // Three levels: most experts tie with several others.
            let d: Vec<f32> = {
                let mut r = self.rng.borrow_mut();
                (0..t * e).map(|_| (r.next() % 3) as f32 * 0.5).collect()
            };
            super::Both {
                cpu: self.cpu.upload_weight("logits", &d, t, e)?,
                gpu: self.gpu.tensor_from(&d, t, e)?,
            }
        } else {
            self.input(t, e, 2.0)?
        };
        let routing = MoeRouting {
            num_experts: e,
            top_k: k,
            norm_topk_prob: norm,
        };
        let (mut ci, mut gi) = self.output(t, k)?;
        let (mut cw, mut gw) = self.output(t, k)?;
        self.cpu
            .moe_route(&logits.cpu, &routing, &mut ci, &mut cw)?;
        self.gpu
            .moe_route(&logits.gpu, &routing, &mut gi, &mut gw)?;
        let (ch, gh) = (self.cpu.to_host(&ci)?, self.gpu.to_host(&gi)?);
        if let Some(a) = (0..ch.len()).find(|&a| ch[a] != gh.get(a).copied().unwrap_or(-1.0)) {
            bail!(
                "expert ids differ at token {} choice {}: cpu {} gpu {}",
                a / k,
                a % k,
                ch[a],
                gh.get(a).copied().unwrap_or(f32::NAN)
            );
        }
        self.compare(&cw, &gw)
    }

    /// One case per path, both on the same inputs against one CPU reference run.
    #[allow(clippy::too_many_arguments)]
    fn moe_experts_cases(
        &self,
        name: String,
        t: usize,
        e: usize,
        k: usize,
        d: usize,
        i: usize,
        act: Activation,
        routing: Routing,
    ) -> Vec<Case> {
        let paths = self.bf16_moe_paths();
        let errs = self.moe_experts(t, e, k, d, i, act, &paths, routing);
        paths
            .iter()
            .enumerate()
            .map(|(n, path)| {
                let r = match &errs {
                    Ok(v) => Ok(v[n]),
                    Err(err) => Err(anyhow::anyhow!("{err:#}")),
                };
                self.case("moe_experts", format!("{name} {path:?}"), OP_TOL, || r)
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn moe_experts(
        &self,
        t: usize,
        e: usize,
        k: usize,
        d: usize,
        i: usize,
        act: Activation,
        paths: &[MoePath],
        routing: Routing,
    ) -> Result<Vec<f64>> {
        let gate_up = self.input(e * 2 * i, d, 1.0 / (d as f32).sqrt())?;
        let down = self.input(e * d, i, 1.0 / (i as f32).sqrt())?;
        let shape = MoeExperts {
            num_experts: e,
            top_k: k,
            hidden: d,
            intermediate: i,
            act,
        };
        self.run_experts(t, &shape, &gate_up, &down, paths, routing)
    }

    /// Routes t tokens on the host, runs the CPU reference once and each GPU path on the same
    /// inputs; the rel-L2 of each path.
    fn run_experts(
        &self,
        t: usize,
        shape: &MoeExperts,
        gate_up: &super::Both,
        down: &super::Both,
        paths: &[MoePath],
        routing: Routing,
    ) -> Result<Vec<f64>> {
        let (e, k, d, i) = (
            shape.num_experts,
            shape.top_k,
            shape.hidden,
            shape.intermediate,
        );
        let x = self.input(t, d, 1.0)?;
        let mut ids = Vec::with_capacity(t * k);
        let mut w = Vec::with_capacity(t * k);
        {
            let mut r = self.rng.borrow_mut();
            for tok in 0..t {
                let mut chosen: Vec<usize> = Vec::with_capacity(k);
                while chosen.len() < k {
                    let c = match routing {
                        Routing::Random => (r.next() % e as u64) as usize,
                        Routing::AllOnOne => chosen.len(),
                        Routing::TwoHot => (tok % 2 * k + chosen.len()) % e,
                    };
                    if !chosen.contains(&c) {
                        chosen.push(c);
                    }
                }
                for c in chosen {
                    ids.push(c as f32);
                    w.push(super::round_bf16(0.1 + r.uniform() as f32));
                }
            }
        }
        let up = |name: &str, data: &[f32], cols: usize| -> Result<super::Both> {
            Ok(super::Both {
                cpu: self.cpu.upload_weight(name, data, t, cols)?,
                gpu: self.gpu.tensor_from(data, t, cols)?,
            })
        };
        let ids = up("ids", &ids, k)?;
        let w = up("weights", &w, k)?;
        let mut cs = self.cpu.alloc(t * k, 2 * i)?;
        let mut c = self.cpu.alloc(t, d)?;
        self.cpu.moe_experts(
            &x.cpu,
            &ids.cpu,
            &w.cpu,
            &gate_up.cpu,
            &down.cpu,
            shape,
            &mut cs,
            &mut c,
        )?;
        let mut errs = Vec::with_capacity(paths.len());
        for &path in paths {
            // Fresh poisoned buffers per path: nothing one path wrote can hide a gap in another.
            let mut gs = self.gpu.alloc(t * k, 2 * i)?;
            self.gpu.poison(&mut gs)?;
            let mut g = self.gpu.alloc(t, d)?;
            self.gpu.poison(&mut g)?;
            self.gpu.moe_experts_with(
                &x.gpu,
                &ids.gpu,
                &w.gpu,
                &gate_up.gpu,
                &down.gpu,
                shape,
                &mut gs,
                &mut g,
                path,
            )?;
            errs.push(self.compare(&c, &g)?);
        }
        Ok(errs)
    }

    /// `moe_experts` with quantized experts, every scheme of `quant_cases`, both paths, against
    /// the CPU backend (whose experts are the exactly dequantized weights): random routing
    /// (idle experts at few tokens), every token on the same experts, and act-order maps that
    /// differ per expert and per gate/up part (as GPTQ MoE checkpoints stack them).
    pub(super) fn quant_moe_cases(&self, quick: bool) -> Vec<Case> {
        // (label, experts, top-k, hidden, intermediate, activation, routings)
        let shapes: &[(&str, usize, usize, usize, usize, Activation)] = &[
            ("mixtral-ish", 8, 2, 512, 1792, Activation::Silu),
            ("ragged", 5, 3, 100, 36, Activation::Gelu),
        ];
        let runs: &[(usize, Routing)] = if quick {
            &[(1, Routing::Random), (64, Routing::AllOnOne)]
        } else {
            &[
                (1, Routing::Random),
                (8, Routing::Random),
                (8, Routing::AllOnOne),
                (64, Routing::Random),
                (64, Routing::AllOnOne),
            ]
        };
        let schemes: &[&str] = if quick {
            &["int8 channel", "int4 act-order g32", "fp8 block 128"]
        } else {
            &super::QUANT_SCHEMES
        };
        let mut out = Vec::new();
        for &(label, e, k, d, i, act) in shapes {
            let shape = MoeExperts {
                num_experts: e,
                top_k: k,
                hidden: d,
                intermediate: i,
                act,
            };
            let gu = self.data(e * 2 * i * d, 1.0 / (d as f32).sqrt());
            let dn = self.data(e * d * i, 1.0 / (i as f32).sqrt());
            for &what in schemes {
                // Each stacked weight made and uploaded once per scheme.
                let weights = (|| {
                    let qgu = quant_experts(what, &gu, e * 2, i, d)?;
                    let qdn = quant_experts(what, &dn, e, d, i)?;
                    Ok::<_, anyhow::Error>((
                        super::Both {
                            cpu: self.cpu.upload_quantized(what, &qgu)?,
                            gpu: self.gpu.upload_quantized(what, &qgu)?,
                        },
                        super::Both {
                            cpu: self.cpu.upload_quantized(what, &qdn)?,
                            gpu: self.gpu.upload_quantized(what, &qdn)?,
                        },
                    ))
                })();
                for &(t, routing) in runs {
                    let paths = [MoePath::Gemv, MoePath::Grouped];
                    let errs = match &weights {
                        Ok((g, d)) => self.run_experts(t, &shape, g, d, &paths, routing),
                        Err(err) => Err(anyhow::anyhow!("building the experts: {err:#}")),
                    };
                    for (n, path) in paths.iter().enumerate() {
                        let r = match &errs {
                            Ok(v) => Ok(v[n]),
                            Err(err) => Err(anyhow::anyhow!("{err:#}")),
                        };
                        out.push(self.case(
                            "moe quant",
                            format!("{what} {label} E {e} top-{k} D {d} I {i} tokens {t} {routing:?} {path:?}"),
                            OP_TOL,
                            || r,
                        ));
                    }
                }
            }
        }
        out
    }

    fn sigmoid_gate_add(&self, t: usize, d: usize) -> Result<f64> {
        let x = self.input(t, d, 1.0)?;
        let gate = self.input(t, 1, 2.0)?;
        let mut o = self.input(t, d, 1.0)?;
        self.cpu.sigmoid_gate_add(&x.cpu, &gate.cpu, &mut o.cpu)?;
        self.gpu.sigmoid_gate_add(&x.gpu, &gate.gpu, &mut o.gpu)?;
        self.compare(&o.cpu, &o.gpu)
    }
}

/// A stacked expert weight of `parts` blocks of `rows` rows (gate_up: 2E parts of I rows;
/// down: E parts of D rows), quantized with `what`. Act-order schemes quantize each part on
/// its own and give each its own column scramble, then stack them (one g_idx per part, as
/// a GPTQ MoE checkpoint loads); the others quantize the stack as one weight.
pub(crate) fn quant_experts(
    what: &str,
    w: &[f32],
    parts: usize,
    rows: usize,
    cols: usize,
) -> Result<crate::weights::quant::QuantWeight> {
    if !what.contains("act-order") {
        return super::quant_weight(what, w, parts * rows, cols);
    }
    let mut qs = Vec::with_capacity(parts);
    for p in 0..parts {
        let mut q =
            super::quant_weight(what, &w[p * rows * cols..(p + 1) * rows * cols], rows, cols)?;
        if let Some(g) = q.g_idx.as_mut() {
            g.rotate_left((5 * p + 1) % cols);
        }
        q.validate(what)?;
        qs.push(q);
    }
    crate::weights::quant::concat_rows(what, qs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::quant::DeviceLayout;

    /// The quantized experts the selftest uploads must be valid and, for act-order, keep one
    /// distinct map per part (a GPU run is rare: it must not fail on its own inputs).
    #[test]
    fn quant_experts_are_valid_with_one_map_per_part() {
        let (parts, rows, cols) = (6, 40, 512);
        let w: Vec<f32> = (0..parts * rows * cols)
            .map(|j| ((j * 7919 % 1000) as f32 / 1000.0) - 0.5)
            .collect();
        for what in crate::selftest::QUANT_SCHEMES {
            let q = quant_experts(what, &w, parts, rows, cols).unwrap();
            assert_eq!((q.n, q.k), (parts * rows, cols), "{what}");
            q.validate(what).unwrap();
            let l = DeviceLayout::new(what, &q).unwrap();
            if what.contains("act-order") {
                assert_eq!(l.gidx_rows, rows, "{what}: one map per part");
                let g = l.g_idx.as_ref().unwrap();
                assert_ne!(g[..cols], g[cols..2 * cols], "{what}: parts share a map");
            } else {
                assert_eq!(l.gidx_rows, q.n, "{what}");
            }
        }
    }
}
