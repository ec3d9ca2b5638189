//! The sparse MLP of a mixture-of-experts layer: router → top-k → stacked experts, plus
//! Qwen2-MoE's gated shared expert. Loaded into the `[E, 2I, D]` / `[E, D, I]` stacked layout
//! whatever layout the checkpoint uses (see `weights::names::ExpertLayout`).

use super::{upload, upload_linear, upload_linear_data};
use crate::backend::{Backend, MoeExperts, MoeRouting};
use crate::config::ModelSpec;
use crate::weights::names::{ExpertLayout, MoeNames};
use crate::weights::TensorSource;
use anyhow::{Context, Result};

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
        }))
    }
}

impl<B: Backend> MoeWorkspace<B> {
    /// Expert ids `[T, k]` chosen by the last sparse layer run (for tests and reports).
    pub fn last_expert_ids(&self, be: &B) -> Result<Vec<f32>> {
        be.to_host(&self.ids)
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
