//! The sparse MLP of a mixture-of-experts layer: router → top-k → stacked experts, plus
//! Qwen2-MoE's gated shared expert. Loaded into the `[E, 2I, D]` / `[E, D, I]` stacked layout
//! whatever layout the checkpoint uses (see `weights::names::ExpertLayout`).

use super::{upload, upload_linear, upload_linear_data};
use crate::backend::{Backend, MoeExperts, MoeRouting};
use crate::config::ModelSpec;
use crate::weights::names::{ExpertLayout, MoeNames};
use crate::weights::TensorSource;
use anyhow::{bail, Context, Result};

/// Activation buffers of the MoE layers, sized once for the largest step.
pub struct MoeWorkspace<B: Backend> {
    router_logits: B::Tensor,
    ids: B::Tensor,
    weights: B::Tensor,
    scratch: B::Tensor,
    shared_gate: B::Tensor,
    shared_gate_up: B::Tensor,
    shared_act: B::Tensor,
    shared_out: B::Tensor,
    tap: Option<RouteTap>,
}

impl<B: Backend> MoeWorkspace<B> {
    pub(super) fn new(be: &B, spec: &ModelSpec, t: usize) -> Result<Option<Self>> {
        let Some(m) = spec.moe.as_ref() else {
            return Ok(None);
        };
        let s = m.shared_expert_intermediate.unwrap_or(1);
        // The backend's own MoE workspace, sized once for the largest step.
        be.reserve_moe(
            t,
            &MoeExperts {
                num_experts: m.num_experts,
                top_k: m.top_k,
                hidden: spec.hidden,
                intermediate: m.expert_intermediate,
                act: spec.activation,
            },
        )?;
        Ok(Some(MoeWorkspace {
            router_logits: be.alloc(t, m.num_experts)?,
            ids: be.alloc(t, m.top_k)?,
            weights: be.alloc(t, m.top_k)?,
            scratch: be.alloc(t * m.top_k, 2 * m.expert_intermediate)?,
            shared_gate: be.alloc(t, 1)?,
            shared_gate_up: be.alloc(t, 2 * s)?,
            shared_act: be.alloc(t, s)?,
            shared_out: be.alloc(t, spec.hidden)?,
            tap: None,
        }))
    }
}

impl<B: Backend> MoeWorkspace<B> {
    /// Expert ids `[T, k]` chosen by the last sparse layer run (for tests and reports).
    pub fn last_expert_ids(&self, be: &B) -> Result<Vec<f32>> {
        be.to_host(&self.ids)
    }

    pub(super) fn set_tap(&mut self, tap: Option<RouteTap>) {
        self.tap = tap;
    }

    pub(super) fn take_tap(&mut self) -> Option<RouteTap> {
        self.tap.take()
    }
}

/// How far below the k-th router logit a followed choice may lie, relative to the row's
/// largest |logit| (at least 1): a few bf16 roundings of the hidden state (2^-8 each) move a
/// router logit by about 1% of that scale.
pub const ROUTE_TIE_REL: f32 = 0.02;

/// Routing decisions of one run, recorded, or followed by another run of the same prompt.
///
/// The selftest compares a bf16 GPU forward with the f32 CPU reference. Where a token's k-th
/// and (k+1)-th router logits nearly tie, bf16 rounding may pick the other expert, and one
/// other expert moves that token's hidden state (and every later token attending to it) far
/// past any logits tolerance, whatever the kernels' accuracy. So the GPU run records its
/// experts and the CPU run follows them where, and only where, its own logits make the GPU's
/// choice a near tie ([`ROUTE_TIE_REL`]); its weights stay its own softmax of its own logits.
/// The comparison then tests every kernel, and `ties` says where routing was followed. A
/// choice that is not a near tie is an error naming the layer and token.
#[derive(Debug)]
pub enum RouteTap {
    /// Each sparse layer call's expert ids `[T·k]`, in order.
    Record(Vec<Vec<u32>>),
    /// Follows `script` (a recording), `next` its next call.
    Follow {
        script: Vec<Vec<u32>>,
        next: usize,
        ties: Vec<RouteTie>,
    },
}

/// One token whose routing the follower took from the recording.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteTie {
    /// Sparse layer call (0 = the first sparse layer of the forward).
    pub call: usize,
    pub token: usize,
    /// This run's own choice, and the recorded one it took.
    pub own: Vec<u32>,
    pub taken: Vec<u32>,
    /// Largest logit left out minus the smallest taken (≤ the tolerance), and the scale.
    pub gap: f32,
    pub scale: f32,
}

impl std::fmt::Display for RouteTie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sparse layer {} token {}: experts {:?} for {:?} (logit gap {:.2e} of {:.2e})",
            self.call, self.token, self.taken, self.own, self.gap, self.scale
        )
    }
}

impl RouteTap {
    pub fn record() -> Self {
        RouteTap::Record(Vec::new())
    }

    /// A follower of this recording.
    pub fn into_follower(self) -> Result<Self> {
        match self {
            RouteTap::Record(script) => Ok(RouteTap::Follow {
                script,
                next: 0,
                ties: Vec::new(),
            }),
            RouteTap::Follow { .. } => bail!("routing tap: only a recording can be followed"),
        }
    }

    /// Where the follower took the recorded routing (empty for a recording).
    pub fn ties(&self) -> &[RouteTie] {
        match self {
            RouteTap::Record(_) => &[],
            RouteTap::Follow { ties, .. } => ties,
        }
    }

    /// After `moe_route` wrote `ids` and `weights` from `logits`: records them, or follows
    /// the recording (rewriting both where it differs by a near tie).
    pub fn after_route<B: Backend>(
        &mut self,
        be: &B,
        routing: &MoeRouting,
        logits: &B::Tensor,
        ids: &mut B::Tensor,
        weights: &mut B::Tensor,
    ) -> Result<()> {
        let own: Vec<u32> = be.to_host(ids)?.iter().map(|&v| v as u32).collect();
        let (script, next, ties) = match self {
            RouteTap::Record(calls) => {
                calls.push(own);
                return Ok(());
            }
            RouteTap::Follow { script, next, ties } => (script, next, ties),
        };
        let call = *next;
        *next += 1;
        let Some(want) = script.get(call) else {
            bail!(
                "routing follower: the recorded run made {} sparse layer calls, this one more",
                script.len()
            );
        };
        let (e, k) = (routing.num_experts, routing.top_k);
        if want.len() != own.len() {
            bail!(
                "routing follower: sparse layer {call} routed {} tokens in the recorded run, {} here",
                want.len() / k.max(1),
                own.len() / k.max(1)
            );
        }
        let mut new_ids: Vec<f32> = own.iter().map(|&v| v as f32).collect();
        let mut new_w = be.to_host(weights)?;
        let logits = be.to_host(logits)?;
        let before = ties.len();
        for t in 0..own.len() / k {
            let (mine, theirs) = (&own[t * k..][..k], &want[t * k..][..k]);
            let sorted = |v: &[u32]| {
                let mut v = v.to_vec();
                v.sort_unstable();
                v
            };
            if sorted(mine) == sorted(theirs) {
                continue;
            }
            if let Some(&bad) = theirs.iter().find(|&&x| x as usize >= e) {
                bail!(
                    "routing follower: sparse layer {call} token {t}: recorded expert {bad} of {e}"
                );
            }
            let row = &logits[t * e..][..e];
            let taken = |x: usize| theirs.contains(&(x as u32));
            let lowest_in = theirs
                .iter()
                .map(|&x| row[x as usize])
                .fold(f32::INFINITY, f32::min);
            let highest_out = (0..e)
                .filter(|&x| !taken(x))
                .map(|x| row[x])
                .fold(f32::NEG_INFINITY, f32::max);
            let gap = highest_out - lowest_in;
            let scale = row.iter().fold(1f32, |a, v| a.max(v.abs()));
            let tie = RouteTie {
                call,
                token: t,
                own: mine.to_vec(),
                taken: theirs.to_vec(),
                gap,
                scale,
            };
            if gap > ROUTE_TIE_REL * scale {
                bail!("routing differs beyond a near tie at {tie}");
            }
            // This run's probabilities (the softmax moe_route computes), for the taken ids.
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&l| (l - m).exp()).sum();
            let p = |x: u32| (row[x as usize] - m).exp() / sum;
            let norm = if routing.norm_topk_prob {
                theirs.iter().map(|&x| p(x)).sum()
            } else {
                1.0
            };
            for (j, &x) in theirs.iter().enumerate() {
                new_ids[t * k + j] = x as f32;
                new_w[t * k + j] = p(x) / norm;
            }
            ties.push(tie);
        }
        if ties.len() > before {
            be.write_rows(ids, &new_ids)?;
            be.write_rows(weights, &new_w)?;
        }
        Ok(())
    }
}

pub(super) struct SharedExpert<B: Backend> {
    gate_up: B::Weight,
    down: B::Weight,
    gate: B::Weight,
}

pub(super) struct MoeLayer<B: Backend> {
    router: B::Weight,
    gate_up: B::Weight,
    down: B::Weight,
    routing: MoeRouting,
    experts: MoeExperts,
    shared: Option<SharedExpert<B>>,
}

impl<B: Backend> MoeLayer<B> {
    pub(super) fn load(be: &B, spec: &ModelSpec, i: usize, src: &dyn TensorSource) -> Result<Self> {
        let m = spec.moe.as_ref().expect("MoE layer of a spec without MoE");
        let (ne, d, inter) = (m.num_experts, spec.hidden, m.expert_intermediate);
        let names = MoeNames::new(spec, i, src);
        let router = upload(be, src, &names.router, ne, d)?;
        let (gate_up, down) = match &names.experts {
            ExpertLayout::Fused { gate_up, down } => {
                let gu = src.load(gate_up, &[ne, 2 * inter, d])?;
                let gu = src.finish_linear(gate_up, gu, ne * 2 * inter, d)?;
                let dn = src.load(down, &[ne, d, inter])?;
                let dn = src.finish_linear(down, dn, ne * d, inter)?;
                (
                    upload_linear_data(be, gate_up, gu, d)?,
                    upload_linear_data(be, down, dn, inter)?,
                )
            }
            layout @ ExpertLayout::PerExpert { .. } => {
                let mut gu = Vec::with_capacity(2 * ne);
                let mut dn = Vec::with_capacity(ne);
                for e in 0..ne {
                    let (g, u, dw) = layout.expert(e).expect("per-expert layout");
                    gu.push((g, inter));
                    gu.push((u, inter));
                    dn.push((dw, d));
                }
                (
                    upload_linear(be, src, &gu, d)?,
                    upload_linear(be, src, &dn, inter)?,
                )
            }
        };
        let shared = match m.shared_expert_intermediate {
            None => None,
            Some(s) => {
                let (g, u, dw) = &names.shared;
                Some(SharedExpert {
                    gate_up: upload_linear(be, src, &[(g.as_str(), s), (u.as_str(), s)], d)?,
                    down: upload_linear(be, src, &[(dw.as_str(), d)], s)?,
                    gate: upload(be, src, &names.shared_gate, 1, d)
                        .context("Qwen2-MoE shared expert needs its gate")?,
                })
            }
        };
        Ok(MoeLayer {
            router,
            gate_up,
            down,
            routing: MoeRouting {
                num_experts: ne,
                top_k: m.top_k,
                norm_topk_prob: m.norm_topk_prob,
            },
            experts: MoeExperts {
                num_experts: ne,
                top_k: m.top_k,
                hidden: d,
                intermediate: inter,
                act: spec.activation,
            },
            shared,
        })
    }

    pub(super) fn weight_bytes(&self, be: &B) -> usize {
        let mut n = be.weight_bytes(&self.router)
            + be.weight_bytes(&self.gate_up)
            + be.weight_bytes(&self.down);
        if let Some(s) = &self.shared {
            n += be.weight_bytes(&s.gate_up) + be.weight_bytes(&s.down) + be.weight_bytes(&s.gate);
        }
        n
    }

    /// `h` (the normed input `[T, D]`) → `out`: the routed experts plus the gated shared expert.
    pub(super) fn forward(
        &self,
        be: &B,
        h: &B::Tensor,
        ws: &mut MoeWorkspace<B>,
        out: &mut B::Tensor,
    ) -> Result<()> {
        be.matmul(h, &self.router, None, &mut ws.router_logits)?;
        be.moe_route(
            &ws.router_logits,
            &self.routing,
            &mut ws.ids,
            &mut ws.weights,
        )?;
        if let Some(tap) = ws.tap.as_mut() {
            let (logits, ids, w) = (&ws.router_logits, &mut ws.ids, &mut ws.weights);
            tap.after_route(be, &self.routing, logits, ids, w)?;
        }
        be.moe_experts(
            h,
            &ws.ids,
            &ws.weights,
            &self.gate_up,
            &self.down,
            &self.experts,
            &mut ws.scratch,
            out,
        )?;
        if let Some(s) = &self.shared {
            be.matmul(h, &s.gate_up, None, &mut ws.shared_gate_up)?;
            be.act_mul(&ws.shared_gate_up, self.experts.act, &mut ws.shared_act)?;
            be.matmul(&ws.shared_act, &s.down, None, &mut ws.shared_out)?;
            be.matmul(h, &s.gate, None, &mut ws.shared_gate)?;
            be.sigmoid_gate_add(&ws.shared_out, &ws.shared_gate, out)?;
        }
        Ok(())
    }
}
