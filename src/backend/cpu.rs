//! The f32 reference backend: plain loops, obviously right, the oracle for every CUDA kernel.
//! Math follows transformers' float32 path (f32 accumulation, exact GELU/tanh/exp).

use super::{
    check_weight_len, AttnParams, Backend, KvShape, MatIn, MatOut, MoeExperts, MoeOperands,
    MoeRouting, QkNorm, StepInput,
};
use crate::config::Activation;
use anyhow::{anyhow, bail, Context, Result};

/// A row-major f32 matrix with a fixed row capacity.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub capacity: usize,
}

impl CpuTensor {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    /// Sets the logical row count, failing (not growing) past the capacity.
    fn set_rows(&mut self, rows: usize, op: &str) -> Result<()> {
        if rows > self.capacity {
            bail!(
                "{op}: output needs {rows} rows but was allocated for {}",
                self.capacity
            );
        }
        self.rows = rows;
        self.data.resize(rows * self.cols, 0.0);
        Ok(())
    }
}

pub struct CpuKvCache {
    pub shape: KvShape,
    /// Per layer: `[num_blocks, block_size, kv_heads, head_dim]`.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

#[derive(Default)]
pub struct CpuBackend;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums: vectorizes, and sums in a fixed order.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn rms_scale(r: &[f32], eps: f32) -> f32 {
    let ms = r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32;
    1.0 / (ms + eps).sqrt()
}

pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2) as f32)
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// erf to ~1e-15 (Abramowitz–Stegun 7.1.26 is too coarse for a reference): series for small
/// |x|, continued fraction via erfc for large.
fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series: erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = ax;
        let mut sum = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (ax + f);
        }
        1.0 - (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f)
    };
    r.copysign(x)
}

/// A vector with room for `capacity` f32 (`None`: the size overflowed), `len` of them zero:
/// an allocation the machine cannot make is an error, not an abort.
fn try_zeroed(capacity: Option<usize>, len: usize) -> Result<Vec<f32>> {
    let cap = capacity.ok_or_else(|| anyhow!("the element count overflows usize"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(cap).map_err(|_| {
        anyhow!(
            "cannot allocate {cap} f32 ({:.1} GiB) on the host",
            cap as f64 * 4.0 / (1u64 << 30) as f64
        )
    })?;
    v.resize(len, 0.0);
    Ok(v)
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuTensor;
    type Step = StepInput;
    type Rope = Vec<f32>;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload_weight(
        &self,
        name: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<CpuTensor> {
        check_weight_len(name, data.len(), rows, cols)?;
        Ok(CpuTensor {
            data: data.to_vec(),
            rows,
            cols,
            capacity: rows,
        })
    }

    fn upload_rope(&self, inv_freq: &[f32]) -> Result<Vec<f32>> {
        Ok(inv_freq.to_vec())
    }

    fn upload_step(&self, step: &StepInput) -> Result<StepInput> {
        step.validate()?;
        Ok(step.clone())
    }

    fn alloc(&self, capacity_rows: usize, cols: usize) -> Result<CpuTensor> {
        let data = try_zeroed(capacity_rows.checked_mul(cols), 0)
            .with_context(|| format!("alloc: [{capacity_rows}, {cols}] f32"))?;
        Ok(CpuTensor {
            data,
            rows: 0,
            cols,
            capacity: capacity_rows,
        })
    }

    fn alloc_kv_cache(&self, shape: KvShape) -> Result<CpuKvCache> {
        let n = shape
            .checked_num_elements()
            .map(|_| shape.num_blocks * shape.block_size * shape.kv_heads * shape.head_dim);
        let layer = || {
            try_zeroed(n, n.unwrap_or(0))
                .with_context(|| format!("alloc_kv_cache: {shape:?}, one layer's K or V"))
        };
        Ok(CpuKvCache {
            shape,
            k: (0..shape.layers).map(|_| layer()).collect::<Result<_>>()?,
            v: (0..shape.layers).map(|_| layer()).collect::<Result<_>>()?,
        })
    }

    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data[..t.rows * t.cols].to_vec())
    }

    fn write_rows(&self, t: &mut CpuTensor, data: &[f32]) -> Result<()> {
        if t.cols == 0 || data.len() % t.cols != 0 {
            bail!(
                "write_rows: {} values are not whole rows of {} columns",
                data.len(),
                t.cols
            );
        }
        t.set_rows(data.len() / t.cols, "write_rows")?;
        t.data.copy_from_slice(data);
        Ok(())
    }

    fn weight_bytes(&self, w: &CpuTensor) -> usize {
        w.data.len() * 4
    }

    fn embed(
        &self,
        step: &StepInput,
        table: &CpuTensor,
        scale: f32,
        out: &mut CpuTensor,
    ) -> Result<()> {
        if out.cols != table.cols {
            bail!(
                "embed: table has {} columns, output {}",
                table.cols,
                out.cols
            );
        }
        out.set_rows(step.num_tokens(), "embed")?;
        for (t, &id) in step.token_ids.iter().enumerate() {
            if id as usize >= table.rows {
                bail!(
                    "embed: token id {id} at position {t} is outside the vocabulary of {}",
                    table.rows
                );
            }
            let src = table.row(id as usize);
            for (o, s) in out.data[t * out.cols..(t + 1) * out.cols]
                .iter_mut()
                .zip(src)
            {
                *o = s * scale;
            }
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        residual: Option<&mut CpuTensor>,
        w: &CpuTensor,
        eps: f32,
        offset: f32,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let c = x.cols;
        if w.data.len() != c || out.cols != c {
            bail!(
                "rms_norm: x has {c} columns, weight {} and output {}",
                w.data.len(),
                out.cols
            );
        }
        out.set_rows(x.rows, "rms_norm")?;
        let norm = |r: &[f32], o: &mut [f32]| {
            let s = rms_scale(r, eps);
            for ((o, v), g) in o.iter_mut().zip(r).zip(&w.data) {
                *o = v * s * (offset + g);
            }
        };
        match residual {
            Some(res) => {
                if res.cols != c || res.rows != x.rows {
                    bail!(
                        "rms_norm: residual is [{}, {}], x is [{}, {c}]",
                        res.rows,
                        res.cols,
                        x.rows
                    );
                }
                for r in 0..x.rows {
                    let rr = &mut res.data[r * c..(r + 1) * c];
                    for (a, b) in rr.iter_mut().zip(x.row(r)) {
                        *a += b;
                    }
                    norm(rr, &mut out.data[r * c..(r + 1) * c]);
                }
            }
            None => {
                for r in 0..x.rows {
                    norm(x.row(r), &mut out.data[r * c..(r + 1) * c]);
                }
            }
        }
        Ok(())
    }

    fn matmul(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let (k, n) = (w.cols, w.rows);
        if x.cols != k || out.cols != n {
            bail!(
                "matmul: x is [{}, {}], weight [{n}, {k}], output has {} columns",
                x.rows,
                x.cols,
                out.cols
            );
        }
        if let Some(b) = bias {
            if b.data.len() != n {
                bail!("matmul: bias has {} values for {n} outputs", b.data.len());
            }
        }
        out.set_rows(x.rows, "matmul")?;
        // Blocks of weight rows over the cores (the selftest's references at Llama-3-8B
        // shapes and 64 tokens are GFLOPs each); weight row outermost in a block, so each is
        // read once for all tokens. Each element is the same `dot` whatever the split.
        let t_rows = x.rows;
        let blocks = crate::par::row_blocks(n, k * t_rows.max(1), crate::par::threads());
        let parts = crate::par::map(blocks, |r| {
            let mut part = Vec::with_capacity(r.len() * t_rows);
            for j in r.clone() {
                let wr = w.row(j);
                let b = bias.map_or(0.0, |b| b.data[j]);
                part.extend((0..t_rows).map(|t| dot(x.row(t), wr) + b));
            }
            (r, part)
        });
        for (r, part) in parts {
            for (i, j) in r.enumerate() {
                for t in 0..t_rows {
                    out.data[t * n + j] = part[i * t_rows + t];
                }
            }
        }
        Ok(())
    }

    /// The unfused ops, in f32: the input materialized into its scratch by `rms_norm` /
    /// `act_mul`, then `matmul`'s sums; `AddTo` adds `x · wᵀ + b` to each element (the same
    /// f32 operations as `matmul` into a delta, then `rms_norm`'s residual add); `ActMul` is
    /// the product into its scratch, then `act_mul`; `AddToNorm` is `AddTo`, then `rms_norm`.
    fn matmul_ex(
        &self,
        input: MatIn<'_, CpuTensor, CpuTensor>,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        out: MatOut<'_, CpuTensor, CpuTensor>,
    ) -> Result<()> {
        let out = match out {
            MatOut::Write(o) => return self.matmul(super::unfused_input(self, input)?, w, bias, o),
            MatOut::AddTo(o) => o,
            MatOut::ActMul { out, act, scratch } => {
                return super::unfused_act_mul_out(self, input, w, bias, (out, act, scratch));
            }
            MatOut::AddToNorm {
                out,
                w: nw,
                eps,
                offset,
                h,
            } => {
                return super::unfused_add_norm(self, input, w, bias, (out, nw, eps, offset, h));
            }
        };
        let x = super::unfused_input(self, input)?;
        let (k, n) = (w.cols, w.rows);
        if x.cols != k || out.cols != n || out.rows != x.rows {
            bail!(
                "matmul_ex: x is [{}, {}], weight [{n}, {k}], accumulated output [{}, {}]",
                x.rows,
                x.cols,
                out.rows,
                out.cols
            );
        }
        if let Some(b) = bias {
            if b.data.len() != n {
                bail!(
                    "matmul_ex: bias has {} values for {n} outputs",
                    b.data.len()
                );
            }
        }
        for j in 0..n {
            let wr = w.row(j);
            let b = bias.map_or(0.0, |b| b.data[j]);
            for t in 0..x.rows {
                out.data[t * n + j] += dot(x.row(t), wr) + b;
            }
        }
        Ok(())
    }

    fn rope_kv_write(
        &self,
        qkv: &CpuTensor,
        step: &StepInput,
        rope: &Vec<f32>,
        qk_norm: Option<QkNorm<'_, CpuTensor>>,
        attn: &AttnParams,
        cache: &mut CpuKvCache,
        layer: usize,
        q_out: &mut CpuTensor,
    ) -> Result<()> {
        let (h, kv, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        let sh = cache.shape;
        if qkv.cols != (h + 2 * kv) * hd || q_out.cols != h * hd || qkv.rows != step.num_tokens() {
            bail!("rope_kv_write: qkv is [{}, {}] for {} tokens, {h} heads, {kv} kv heads, head_dim {hd}",
                qkv.rows, qkv.cols, step.num_tokens());
        }
        if sh.kv_heads != kv
            || sh.head_dim != hd
            || layer >= sh.layers
            || sh.block_size != step.block_size
        {
            bail!("rope_kv_write: cache shape {sh:?} does not match layer {layer} with {kv} kv heads of {hd}");
        }
        let rot = rope.len() * 2;
        if rot > hd {
            bail!("rope_kv_write: rotary dim {rot} exceeds head_dim {hd}");
        }
        q_out.set_rows(qkv.rows, "rope_kv_write")?;
        let rotate = |x: &mut [f32], pos: u32| {
            for (i, f) in rope.iter().enumerate() {
                let angle = pos as f32 * f;
                let (s, c) = angle.sin_cos();
                let (x1, x2) = (x[i], x[i + rot / 2]);
                x[i] = x1 * c - x2 * s;
                x[i + rot / 2] = x2 * c + x1 * s;
            }
        };
        let normed = |x: &mut [f32], w: &CpuTensor, eps: f32, off: f32| {
            let s = rms_scale(x, eps);
            for (v, g) in x.iter_mut().zip(&w.data) {
                *v = *v * s * (off + g);
            }
        };
        let cap = sh.num_blocks * sh.block_size;
        for t in 0..qkv.rows {
            let row = qkv.row(t);
            let pos = step.positions[t];
            for head in 0..h {
                let mut x = row[head * hd..(head + 1) * hd].to_vec();
                if let Some(n) = &qk_norm {
                    normed(&mut x, n.q, n.eps, n.offset);
                }
                rotate(&mut x, pos);
                q_out.data[t * h * hd + head * hd..][..hd].copy_from_slice(&x);
            }
            let slot = step.slots[t];
            if slot < 0 {
                continue;
            }
            let slot = slot as usize;
            if slot >= cap {
                bail!("rope_kv_write: slot {slot} of token {t} is outside the cache ({cap} slots)");
            }
            for head in 0..kv {
                let mut k = row[(h + head) * hd..(h + head + 1) * hd].to_vec();
                if let Some(n) = &qk_norm {
                    normed(&mut k, n.k, n.eps, n.offset);
                }
                rotate(&mut k, pos);
                let at = (slot * kv + head) * hd;
                cache.k[layer][at..at + hd].copy_from_slice(&k);
                let v = &row[(h + kv + head) * hd..(h + kv + head + 1) * hd];
                cache.v[layer][at..at + hd].copy_from_slice(v);
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuTensor,
        step: &StepInput,
        cache: &CpuKvCache,
        layer: usize,
        attn: &AttnParams,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let (h, kv, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        if q.cols != h * hd
            || out.cols != h * hd
            || q.rows != step.num_tokens()
            || layer >= cache.shape.layers
        {
            bail!(
                "attention: q is [{}, {}] for {} tokens and {h} heads of {hd}",
                q.rows,
                q.cols,
                step.num_tokens()
            );
        }
        out.set_rows(q.rows, "attention")?;
        let group = h / kv;
        let bs = step.block_size;
        let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
        let mut scores = Vec::new();
        for s in &step.seqs {
            let slot_of = |j: usize| s.block_table[j / bs] as usize * bs + j % bs;
            for i in 0..s.q_len {
                let t = s.q_start + i;
                let p = s.ctx_len - s.q_len + i;
                let lo = attn.window.map_or(0, |w| (p + 1).saturating_sub(w));
                for head in 0..h {
                    let qh = &q.row(t)[head * hd..(head + 1) * hd];
                    let kvh = head / group;
                    scores.clear();
                    for j in lo..=p {
                        let at = (slot_of(j) * kv + kvh) * hd;
                        let mut sc = dot(qh, &kc[at..at + hd]) * attn.scale;
                        if let Some(cap) = attn.softcap {
                            sc = cap * (sc / cap).tanh();
                        }
                        scores.push(sc);
                    }
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for sc in scores.iter_mut() {
                        *sc = (*sc - m).exp();
                        sum += *sc;
                    }
                    let o = &mut out.data[t * h * hd + head * hd..][..hd];
                    o.fill(0.0);
                    for (jj, j) in (lo..=p).enumerate() {
                        let at = (slot_of(j) * kv + kvh) * hd;
                        let pr = scores[jj] / sum;
                        for (ov, vv) in o.iter_mut().zip(&vc[at..at + hd]) {
                            *ov += pr * vv;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn act_mul(&self, gate_up: &CpuTensor, act: Activation, out: &mut CpuTensor) -> Result<()> {
        let i = out.cols;
        if gate_up.cols != 2 * i {
            bail!(
                "act_mul: gate_up has {} columns, output {i} (expected half)",
                gate_up.cols
            );
        }
        out.set_rows(gate_up.rows, "act_mul")?;
        let f = match act {
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
            Activation::Gelu => gelu_erf,
        };
        for t in 0..gate_up.rows {
            let r = gate_up.row(t);
            for j in 0..i {
                out.data[t * i + j] = f(r[j]) * r[i + j];
            }
        }
        Ok(())
    }

    fn gather_last(&self, x: &CpuTensor, step: &StepInput, out: &mut CpuTensor) -> Result<()> {
        if out.cols != x.cols {
            bail!("gather_last: x has {} columns, output {}", x.cols, out.cols);
        }
        let rows = step.last_rows();
        out.set_rows(rows.len(), "gather_last")?;
        for (i, r) in rows.into_iter().enumerate() {
            if r >= x.rows {
                bail!("gather_last: row {r} outside x of {} rows", x.rows);
            }
            out.data[i * x.cols..(i + 1) * x.cols].copy_from_slice(x.row(r));
        }
        Ok(())
    }

    fn softcap(&self, x: &mut CpuTensor, cap: f32) -> Result<()> {
        for v in x.data.iter_mut() {
            *v = cap * (*v / cap).tanh();
        }
        Ok(())
    }

    fn moe_route(
        &self,
        logits: &CpuTensor,
        routing: &MoeRouting,
        ids: &mut CpuTensor,
        weights: &mut CpuTensor,
    ) -> Result<()> {
        let (e, k) = (routing.num_experts, routing.top_k);
        if k == 0 || k > e || logits.cols != e || ids.cols != k || weights.cols != k {
            bail!(
                "moe_route: logits have {} columns for {e} experts, top-k {k}, ids {} and weights {} columns",
                logits.cols,
                ids.cols,
                weights.cols
            );
        }
        ids.set_rows(logits.rows, "moe_route")?;
        weights.set_rows(logits.rows, "moe_route")?;
        let mut p = vec![0f32; e];
        let mut order: Vec<usize> = Vec::with_capacity(e);
        for t in 0..logits.rows {
            let row = logits.row(t);
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (pi, &l) in p.iter_mut().zip(row) {
                *pi = (l - m).exp();
                sum += *pi;
            }
            for pi in p.iter_mut() {
                *pi /= sum;
            }
            // Stable sort on descending probability: equal values keep the lower id first.
            order.clear();
            order.extend(0..e);
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let top = &order[..k];
            let norm = if routing.norm_topk_prob {
                top.iter().map(|&i| p[i]).sum::<f32>()
            } else {
                1.0
            };
            for (j, &i) in top.iter().enumerate() {
                ids.data[t * k + j] = i as f32;
                weights.data[t * k + j] = p[i] / norm;
            }
        }
        Ok(())
    }

    fn moe_experts(
        &self,
        x: &CpuTensor,
        ids: &CpuTensor,
        weights: &CpuTensor,
        gate_up: &CpuTensor,
        down: &CpuTensor,
        shape: &MoeExperts,
        scratch: &mut CpuTensor,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let (ne, k, d, i) = (
            shape.num_experts,
            shape.top_k,
            shape.hidden,
            shape.intermediate,
        );
        let t_rows = x.rows;
        shape.check(&MoeOperands {
            x: (x.rows, x.cols),
            ids: (ids.rows, ids.cols),
            weights: (weights.rows, weights.cols),
            gate_up: (gate_up.rows, gate_up.cols),
            down: (down.rows, down.cols),
            scratch_cols: scratch.cols,
            out_cols: out.cols,
        })?;
        scratch.set_rows(t_rows * k, "moe_experts (scratch)")?;
        out.set_rows(t_rows, "moe_experts")?;
        out.data.fill(0.0);
        let f = match shape.act {
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
            Activation::Gelu => gelu_erf,
        };
        // Assignment a = t·k + j: token t's j-th choice. Group them by expert.
        let mut by_expert: Vec<Vec<usize>> = vec![Vec::new(); ne];
        for (a, &id) in ids.data[..t_rows * k].iter().enumerate() {
            if !(id >= 0.0 && id.fract() == 0.0 && (id as usize) < ne) {
                bail!(
                    "moe_experts: token {} selects expert {id}, outside 0..{ne}",
                    a / k
                );
            }
            by_expert[id as usize].push(a);
        }
        for (e, assigned) in by_expert.iter().enumerate() {
            if assigned.is_empty() {
                continue;
            }
            // gate|up for every assigned token, each weight row read once.
            for r in 0..2 * i {
                let wr = gate_up.row(e * 2 * i + r);
                for &a in assigned {
                    scratch.data[a * 2 * i + r] = dot(x.row(a / k), wr);
                }
            }
            for &a in assigned {
                let s = &mut scratch.data[a * 2 * i..(a + 1) * 2 * i];
                for c in 0..i {
                    s[c] = f(s[c]) * s[i + c];
                }
            }
            for r in 0..d {
                let wr = down.row(e * d + r);
                for &a in assigned {
                    let y = dot(&scratch.data[a * 2 * i..a * 2 * i + i], wr);
                    out.data[(a / k) * d + r] += weights.data[a] * y;
                }
            }
        }
        Ok(())
    }

    fn sigmoid_gate_add(&self, x: &CpuTensor, gate: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        if gate.cols != 1 || gate.rows != x.rows || out.cols != x.cols || out.rows != x.rows {
            bail!(
                "sigmoid_gate_add: x is [{}, {}], gate [{}, {}], output [{}, {}]",
                x.rows,
                x.cols,
                gate.rows,
                gate.cols,
                out.rows,
                out.cols
            );
        }
        for t in 0..x.rows {
            let g = 1.0 / (1.0 + (-gate.data[t]).exp());
            for (o, v) in out.data[t * x.cols..(t + 1) * x.cols]
                .iter_mut()
                .zip(x.row(t))
            {
                *o += g * v;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_that_does_not_fill_its_shape_is_an_error_naming_it() {
        let e = CpuBackend
            .upload_weight("model.norm.weight", &[1.0; 5], 2, 3)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "weight `model.norm.weight`: 5 values for shape [2, 3]"
        );
        assert!(CpuBackend.upload_weight("w", &[1.0; 6], 2, 3).is_ok());
        assert!(check_weight_len("w", 0, usize::MAX, 2).is_err());
    }

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5), erf(1), erf(2), erf(3) to 1e-12.
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!(
                (erf(x) - want).abs() < 1e-12,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn matmul_rejects_wrong_shape_by_name() {
        let be = CpuBackend;
        let x = be.upload_weight("x", &[1.0; 6], 2, 3).unwrap();
        let w = be.upload_weight("w", &[1.0; 8], 2, 4).unwrap();
        let mut out = be.alloc(2, 2).unwrap();
        let err = be.matmul(&x, &w, None, &mut out).unwrap_err().to_string();
        assert!(err.starts_with("matmul:"), "{err}");
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// `matmul_ex` is the unfused ops, bit for bit: the decoder's results must not move when
    /// it switches to it (the HF fixture tests hold the CPU to transformers).
    #[test]
    fn matmul_ex_is_the_unfused_ops_bit_for_bit() {
        let be = CpuBackend;
        let (t, k, n) = (3, 20, 7);
        let up = |v: Vec<f32>, r, c| be.upload_weight("t", &v, r, c).unwrap();
        let x = up(vals(t * k, 1), t, k);
        let gate_up = up(vals(t * 2 * k, 2), t, 2 * k);
        let w = up(vals(n * k, 3), n, k);
        let nw = up(vals(k, 4), 1, k);
        let b = up(vals(n, 5), 1, n);
        let res = up(vals(t * n, 6), t, n);
        for (offset, act) in [(0.0, Activation::Silu), (1.0, Activation::GeluTanh)] {
            // Norm input, written: rms_norm into h, then matmul.
            let (mut h, mut want) = (be.alloc(t, k).unwrap(), be.alloc(t, n).unwrap());
            be.rms_norm(&x, None, &nw, 1e-5, offset, &mut h).unwrap();
            be.matmul(&h, &w, Some(&b), &mut want).unwrap();
            let (mut scratch, mut got) = (be.alloc(t, k).unwrap(), be.alloc(t, n).unwrap());
            let input = MatIn::Norm {
                x: &x,
                w: &nw,
                eps: 1e-5,
                offset,
                scratch: &mut scratch,
            };
            be.matmul_ex(input, &w, Some(&b), MatOut::Write(&mut got))
                .unwrap();
            assert_eq!(got, want, "norm offset {offset}");
            assert_eq!(scratch, h, "the scratch holds the norm");
            // act·mul input, added: act_mul, matmul into a delta, rms_norm's residual add.
            let mut a = be.alloc(t, k).unwrap();
            be.act_mul(&gate_up, act, &mut a).unwrap();
            let mut delta = be.alloc(t, n).unwrap();
            be.matmul(&a, &w, Some(&b), &mut delta).unwrap();
            let (mut want, mut normed) = (res.clone(), be.alloc(t, n).unwrap());
            let ones = up(vec![1.0; n], 1, n);
            be.rms_norm(&delta, Some(&mut want), &ones, 1e-5, 0.0, &mut normed)
                .unwrap();
            let mut got = res.clone();
            let input = MatIn::ActMul {
                gate_up: &gate_up,
                act,
                scratch: &mut scratch,
            };
            be.matmul_ex(input, &w, Some(&b), MatOut::AddTo(&mut got))
                .unwrap();
            assert_eq!(got, want, "act·mul {act:?} added");
            // act·mul output (w2 = gate|up [2n, k]): matmul into the scratch, then act_mul.
            let w2 = up(vals(2 * n * k, 7), 2 * n, k);
            let b2 = up(vals(2 * n, 8), 1, 2 * n);
            let (mut product, mut want) = (be.alloc(t, 2 * n).unwrap(), be.alloc(t, n).unwrap());
            be.matmul(&x, &w2, Some(&b2), &mut product).unwrap();
            be.act_mul(&product, act, &mut want).unwrap();
            let (mut scratch2, mut got) = (be.alloc(t, 2 * n).unwrap(), be.alloc(t, n).unwrap());
            let out = MatOut::ActMul {
                out: &mut got,
                act,
                scratch: &mut scratch2,
            };
            be.matmul_ex(MatIn::Plain(&x), &w2, Some(&b2), out).unwrap();
            assert_eq!(got, want, "act·mul {act:?} output");
            assert_eq!(scratch2, product, "the scratch holds the product");
        }
        // Plain, added, no bias.
        let mut delta = be.alloc(t, n).unwrap();
        be.matmul(&x, &w, None, &mut delta).unwrap();
        let mut got = res.clone();
        be.matmul_ex(MatIn::Plain(&x), &w, None, MatOut::AddTo(&mut got))
            .unwrap();
        for (i, g) in got.data.iter().enumerate() {
            assert_eq!(g.to_bits(), (res.data[i] + delta.data[i]).to_bits(), "{i}");
        }
    }

    #[test]
    fn matmul_ex_checks_its_operands_by_name() {
        let be = CpuBackend;
        let x = be.upload_weight("x", &[1.0; 6], 2, 3).unwrap();
        let w = be.upload_weight("w", &[1.0; 6], 2, 3).unwrap();
        // AddTo needs the output's rows to be x's already.
        let mut out = be.alloc(4, 2).unwrap();
        let err = be
            .matmul_ex(MatIn::Plain(&x), &w, None, MatOut::AddTo(&mut out))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("matmul_ex:"), "{err}");
        // act·mul takes gate|up of 2K columns and a scratch of K: act_mul names the mismatch.
        let mut scratch = be.alloc(2, 2).unwrap();
        let input = MatIn::ActMul {
            gate_up: &x,
            act: Activation::Silu,
            scratch: &mut scratch,
        };
        let err = be
            .matmul_ex(input, &w, None, MatOut::Write(&mut out))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("act_mul: gate_up has 3 columns"), "{err}");
    }

    #[test]
    fn output_capacity_is_enforced() {
        let be = CpuBackend;
        let x = be.upload_weight("x", &[1.0; 6], 3, 2).unwrap();
        let w = be.upload_weight("w", &[1.0; 4], 2, 2).unwrap();
        let mut out = be.alloc(2, 2).unwrap();
        let err = be.matmul(&x, &w, None, &mut out).unwrap_err().to_string();
        assert!(err.contains("allocated for 2"), "{err}");
    }
}
