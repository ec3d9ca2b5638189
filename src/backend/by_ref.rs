//! A borrowed backend is a backend: `Engine<&B>` runs on a backend the caller keeps (a model
//! loaded through `&be`), so one device context can serve several engines or a selftest.
//! Every method forwards, including the defaulted ones (a missed default would silently
//! turn an op or a feature off).

use super::*;
use crate::config::Activation;
use anyhow::Result;

/// Forwards every op to `B` (see the module docs).
impl<B: Backend> Backend for &B {
    type Tensor = B::Tensor;
    type Weight = B::Weight;
    type Step = B::Step;
    type Rope = B::Rope;
    type KvCache = B::KvCache;
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn upload_weight(&self, n: &str, d: &[f32], r: usize, c: usize) -> Result<Self::Weight> {
        (**self).upload_weight(n, d, r, c)
    }
    fn upload_quantized(
        &self,
        n: &str,
        w: &crate::weights::quant::QuantWeight,
    ) -> Result<Self::Weight> {
        (**self).upload_quantized(n, w)
    }
    fn upload_rope(&self, f: &[f32]) -> Result<Self::Rope> {
        (**self).upload_rope(f)
    }
    fn upload_step(&self, s: &StepInput) -> Result<Self::Step> {
        (**self).upload_step(s)
    }
    fn alloc(&self, r: usize, c: usize) -> Result<Self::Tensor> {
        (**self).alloc(r, c)
    }
    fn alloc_kv_cache(&self, s: KvShape) -> Result<Self::KvCache> {
        (**self).alloc_kv_cache(s)
    }
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>> {
        (**self).to_host(t)
    }
    fn write_rows(&self, t: &mut Self::Tensor, data: &[f32]) -> Result<()> {
        (**self).write_rows(t, data)
    }
    fn weight_bytes(&self, w: &Self::Weight) -> usize {
        (**self).weight_bytes(w)
    }
    fn sample(
        &self,
        l: &Self::Tensor,
        v: usize,
        r: &[(usize, crate::sampling::SampleRow)],
    ) -> Result<Vec<u32>> {
        (**self).sample(l, v, r)
    }
    fn memory_info(&self) -> Result<Option<MemoryInfo>> {
        (**self).memory_info()
    }
    fn moe_path_name(&self, t: usize) -> String {
        (**self).moe_path_name(t)
    }
    fn prepare_attention(&self, s: &Self::Step, a: &AttnParams) -> Result<()> {
        (**self).prepare_attention(s, a)
    }
    fn act_scalar(&self, v: f32) -> f32 {
        (**self).act_scalar(v)
    }
    fn supports_graphs(&self) -> bool {
        (**self).supports_graphs()
    }
    fn graph_begin(&self, key: u64) -> Result<()> {
        (**self).graph_begin(key)
    }
    fn graph_end(&self, ok: bool) -> Result<()> {
        (**self).graph_end(ok)
    }
    fn clear_graphs(&self) {
        (**self).clear_graphs()
    }
    fn kv_cache_bytes(&self, s: KvShape) -> usize {
        (**self).kv_cache_bytes(s)
    }
    fn embed(&self, s: &Self::Step, t: &Self::Weight, k: f32, o: &mut Self::Tensor) -> Result<()> {
        (**self).embed(s, t, k, o)
    }
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        r: Option<&mut Self::Tensor>,
        w: &Self::Weight,
        eps: f32,
        off: f32,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).rms_norm(x, r, w, eps, off, o)
    }
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).matmul(x, w, b, o)
    }
    fn matmul_ex(
        &self,
        x: MatIn<'_, Self::Tensor, Self::Weight>,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        o: MatOut<'_, Self::Tensor, Self::Weight>,
    ) -> Result<()> {
        (**self).matmul_ex(x, w, b, o)
    }
    fn rope_kv_write(
        &self,
        qkv: &Self::Tensor,
        s: &Self::Step,
        rope: &Self::Rope,
        qk: Option<QkNorm<'_, Self::Weight>>,
        a: &AttnParams,
        c: &mut Self::KvCache,
        l: usize,
        q: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).rope_kv_write(qkv, s, rope, qk, a, c, l, q)
    }
    fn rope_attention(
        &self,
        qkv: &Self::Tensor,
        s: &Self::Step,
        rope: &Self::Rope,
        qk: Option<QkNorm<'_, Self::Weight>>,
        a: &AttnParams,
        c: &mut Self::KvCache,
        l: usize,
        q: &mut Self::Tensor,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).rope_attention(qkv, s, rope, qk, a, c, l, q, o)
    }
    fn attention(
        &self,
        q: &Self::Tensor,
        s: &Self::Step,
        c: &Self::KvCache,
        l: usize,
        a: &AttnParams,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).attention(q, s, c, l, a, o)
    }
    fn act_mul(&self, g: &Self::Tensor, a: Activation, o: &mut Self::Tensor) -> Result<()> {
        (**self).act_mul(g, a, o)
    }
    fn gather_last(&self, x: &Self::Tensor, s: &Self::Step, o: &mut Self::Tensor) -> Result<()> {
        (**self).gather_last(x, s, o)
    }
    fn softcap(&self, x: &mut Self::Tensor, cap: f32) -> Result<()> {
        (**self).softcap(x, cap)
    }
    fn moe_route(
        &self,
        l: &Self::Tensor,
        r: &MoeRouting,
        ids: &mut Self::Tensor,
        w: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).moe_route(l, r, ids, w)
    }
    #[allow(clippy::too_many_arguments)]
    fn moe_experts(
        &self,
        x: &Self::Tensor,
        ids: &Self::Tensor,
        w: &Self::Tensor,
        gate_up: &Self::Weight,
        down: &Self::Weight,
        shape: &MoeExperts,
        scratch: &mut Self::Tensor,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).moe_experts(x, ids, w, gate_up, down, shape, scratch, o)
    }
    fn reserve_moe(&self, max_tokens: usize, shape: &MoeExperts) -> Result<()> {
        (**self).reserve_moe(max_tokens, shape)
    }
    fn fuse_unavailable(&self) -> Option<String> {
        (**self).fuse_unavailable()
    }
    fn set_fuse(&self, on: bool) -> Result<()> {
        (**self).set_fuse(on)
    }
    fn fuse(&self) -> bool {
        (**self).fuse()
    }
    fn set_fuse_out(&self, on: bool) -> Result<()> {
        (**self).set_fuse_out(on)
    }
    fn fuse_out(&self) -> bool {
        (**self).fuse_out()
    }
    fn pdl_unavailable(&self) -> Option<String> {
        (**self).pdl_unavailable()
    }
    fn set_pdl(&self, on: bool) -> Result<()> {
        (**self).set_pdl(on)
    }
    fn pdl(&self) -> bool {
        (**self).pdl()
    }
    fn sigmoid_gate_add(
        &self,
        x: &Self::Tensor,
        g: &Self::Tensor,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).sigmoid_gate_add(x, g, o)
    }
}

#[cfg(test)]
mod tests {
    /// Names of the `fn`s declared in `src`, between `start` and the end of that block.
    fn fns_in(src: &str, start: &str) -> Vec<String> {
        let body = &src[src.find(start).expect("block present")..];
        let mut depth = 0i32;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut names: Vec<String> = body[..end]
            .split("fn ")
            .skip(1)
            .map(|s| s.split(['(', '<']).next().unwrap().trim().to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn every_backend_method_is_forwarded() {
        let decl = fns_in(include_str!("mod.rs"), "pub trait Backend");
        let fwd = fns_in(include_str!("by_ref.rs"), "impl<B: Backend> Backend for &B");
        let missing: Vec<_> = decl.iter().filter(|n| !fwd.contains(n)).collect();
        assert!(missing.is_empty(), "&B does not forward {missing:?}");
    }
}
