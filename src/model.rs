//! The one decoder. Every family is this file run over a different `ModelSpec`: embedding,
//! then per layer [norm → fused qkv → (q/k norm) rope + cache write → attention → o-proj
//! (→ post-norm)] and [norm → fused gate|up → act·mul → down (→ post-norm)], each added to
//! the residual stream, then the final norm, lm_head and the optional soft-cap. The norms,
//! the act·mul and the residual adds are inputs and outputs of the matmuls where they can be
//! (`Backend::matmul_ex`: the CUDA GEMVs fuse them, so decode runs no kernel of its own for them). A layer's
//! MLP is dense or a mixture of experts (`moe.rs`) as `MoeSpec::sparse_layers` says.

mod moe;

use crate::backend::{AttnParams, Backend, KvShape, MatIn, MatOut, QkNorm, StepInput};
use crate::config::ModelSpec;
use crate::weights::names::{self, LayerNames};
use crate::weights::quant::Linear;
use crate::weights::quant_source::stack_linear;
use crate::weights::TensorSource;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use moe::{MoeLayer, MoeWorkspace};
pub use moe::{RouteTap, RouteTie, ROUTE_TIE_REL};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Parameters from which loading draws a progress bar: 256 MiB as bf16. Test fixtures and
/// `synthetic:tiny` load without one.
const LOAD_BAR_FROM: u64 = 128 << 20;

/// The load progress hook: a source that advances the bar by the parameters of every tensor
/// read through it. `Model::load` uploads each tensor (or fused group) right after reading
/// it, so the bar follows the upload on either backend. Dense, quantized and synthetic
/// sources alike pass through, unchanged.
/// It also adds up the time spent inside the source ([`LoadTime::source`]).
struct Counted<'a> {
    inner: &'a dyn TensorSource,
    bar: ProgressBar,
    source_time: Cell<Duration>,
}

impl Counted<'_> {
    fn new(inner: &dyn TensorSource, bar: ProgressBar) -> Counted<'_> {
        Counted {
            inner,
            bar,
            source_time: Cell::new(Duration::ZERO),
        }
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let v = f();
        self.source_time.set(self.source_time.get() + t.elapsed());
        v
    }
}

impl TensorSource for Counted<'_> {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let data = self.timed(|| self.inner.load(name, shape))?;
        self.bar.inc(data.len() as u64);
        Ok(data)
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn load_linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let lin = self.timed(|| self.inner.load_linear(name, rows, cols))?;
        self.bar.inc((rows * cols) as u64);
        Ok(lin)
    }
    // Counted when it was read (`load`).
    fn finish_linear(
        &self,
        name: &str,
        data: Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<Linear> {
        self.timed(|| self.inner.finish_linear(name, data, rows, cols))
    }
}

/// Where [`Model::load`] spent its time (`flint bench` reports it on stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadTime {
    /// The whole load.
    pub total: Duration,
    /// Inside the tensor source, on the host: reading a checkpoint (and converting it to
    /// f32), generating synthetic weights, quantizing on load.
    pub source: Duration,
}

impl LoadTime {
    /// The rest: fusing parts, converting to the backend's type (bf16 on CUDA) and copying
    /// to the device.
    pub fn upload(&self) -> Duration {
        self.total.saturating_sub(self.source)
    }
}

struct Layer<B: Backend> {
    attn_norm: B::Weight,
    qkv: B::Weight,
    qkv_bias: Option<B::Weight>,
    qk_norm: Option<(B::Weight, B::Weight)>,
    o: B::Weight,
    o_bias: Option<B::Weight>,
    post_attn_norm: Option<B::Weight>,
    mlp_norm: B::Weight,
    mlp: Mlp<B>,
    post_mlp_norm: Option<B::Weight>,
    attn: AttnParams,
    rope: usize,
}

/// A dense gated MLP: fused gate|up → act·mul → down.
struct DenseMlp<B: Backend> {
    gate_up: B::Weight,
    gate_up_bias: Option<B::Weight>,
    down: B::Weight,
    down_bias: Option<B::Weight>,
}

enum Mlp<B: Backend> {
    Dense(DenseMlp<B>),
    Moe(MoeLayer<B>),
}

pub struct Model<B: Backend> {
    pub spec: ModelSpec,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    final_norm: B::Weight,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Weight>,
    ropes: Vec<B::Rope>,
    /// Bytes the uploaded weights occupy on the backend.
    pub weight_bytes: usize,
    /// How long `load` took.
    pub load_time: LoadTime,
}

/// Activation buffers sized once for the largest step; reused by every forward.
pub struct Workspace<B: Backend> {
    x: B::Tensor,
    delta: B::Tensor,
    h: B::Tensor,
    qkv: B::Tensor,
    q: B::Tensor,
    attn_out: B::Tensor,
    proj: B::Tensor,
    gate_up: B::Tensor,
    act: B::Tensor,
    last: B::Tensor,
    logits: B::Tensor,
    moe: Option<MoeWorkspace<B>>,
    pub max_tokens: usize,
}

impl<B: Backend> Workspace<B> {
    pub fn new(be: &B, spec: &ModelSpec, max_tokens: usize) -> Result<Self> {
        let t = max_tokens;
        let inter = spec
            .intermediate
            .max(spec.moe.as_ref().map_or(0, |m| m.expert_intermediate));
        // The widest buffer, in f32 bytes: a token budget too large to address is an error
        // here, before a backend multiplies it out.
        let widest = [spec.hidden, spec.qkv_dim(), 2 * inter, spec.vocab_size]
            .into_iter()
            .max()
            .unwrap_or(0);
        if t.checked_mul(widest)
            .and_then(|n| n.checked_mul(4))
            .is_none()
        {
            bail!("workspace: {t} tokens × {widest} columns of activations overflow the address space; lower the token budget");
        }
        Ok(Workspace {
            x: be.alloc(t, spec.hidden)?,
            delta: be.alloc(t, spec.hidden)?,
            h: be.alloc(t, spec.hidden)?,
            qkv: be.alloc(t, spec.qkv_dim())?,
            q: be.alloc(t, spec.q_dim())?,
            attn_out: be.alloc(t, spec.q_dim())?,
            proj: be.alloc(t, spec.hidden)?,
            gate_up: be.alloc(t, 2 * inter)?,
            act: be.alloc(t, inter)?,
            last: be.alloc(t, spec.hidden)?,
            logits: be.alloc(t, spec.vocab_size)?,
            moe: MoeWorkspace::new(be, spec, t)?,
            max_tokens,
        })
    }
}

impl<B: Backend> Workspace<B> {
    /// The last forward's logits, on the device: `[rows, vocab]` (see
    /// [`Model::forward_device`]).
    pub fn logits(&self) -> &B::Tensor {
        &self.logits
    }

    /// Expert ids `[T, top_k]` (as f32) chosen by the last sparse layer of the last forward;
    /// `None` for a dense model.
    pub fn last_expert_ids(&self, be: &B) -> Option<Result<Vec<f32>>> {
        self.moe.as_ref().map(|m| m.last_expert_ids(be))
    }

    /// Puts a routing tap on the sparse layers (see [`RouteTap`]); a dense model has none
    /// and hands the tap back.
    pub fn set_route_tap(&mut self, tap: RouteTap) -> Option<RouteTap> {
        match self.moe.as_mut() {
            Some(m) => {
                m.set_tap(Some(tap));
                None
            }
            None => Some(tap),
        }
    }

    /// Takes the routing tap back (as the forwards since `set_route_tap` left it).
    pub fn take_route_tap(&mut self) -> Option<RouteTap> {
        self.moe.as_mut().and_then(|m| m.take_tap())
    }
}

/// Loads `[rows, cols]` (or a vector when `cols == 0` means `[rows]`) and uploads it.
fn upload<B: Backend>(
    be: &B,
    src: &dyn TensorSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<B::Weight> {
    let shape: Vec<usize> = if cols == 0 {
        vec![rows]
    } else {
        vec![rows, cols]
    };
    let data = src.load(name, &shape)?;
    be.upload_weight(
        name,
        &data,
        if cols == 0 { 1 } else { rows },
        if cols == 0 { rows } else { cols },
    )
}

/// Loads several `[rows_i, cols]` matrices and uploads them stacked as one (fused projections).
fn upload_stacked<B: Backend>(
    be: &B,
    src: &dyn TensorSource,
    parts: &[(&str, usize)],
    cols: usize,
) -> Result<B::Weight> {
    let rows: usize = parts.iter().map(|p| p.1).sum();
    let mut data = Vec::with_capacity(rows * cols);
    for (name, r) in parts {
        let shape: Vec<usize> = if cols == 0 { vec![*r] } else { vec![*r, cols] };
        data.extend(src.load(name, &shape)?);
    }
    let (r, c) = if cols == 0 { (1, rows) } else { (rows, cols) };
    be.upload_weight(parts[0].0, &data, r, c)
}

/// Loads linear weights `[rows_i, cols]` and uploads them stacked along rows as one (fused
/// projections), dense or quantized as the source serves them (`TensorSource::load_linear`).
fn upload_linear<B: Backend, S: AsRef<str>>(
    be: &B,
    src: &dyn TensorSource,
    parts: &[(S, usize)],
    cols: usize,
) -> Result<B::Weight> {
    let first = parts.first().map_or("", |p| p.0.as_ref());
    let mut lin = Vec::with_capacity(parts.len());
    for (name, r) in parts {
        lin.push(src.load_linear(name.as_ref(), *r, cols)?);
    }
    upload_linear_data(be, first, stack_linear(first, lin)?, cols)
}

fn upload_linear_data<B: Backend>(
    be: &B,
    name: &str,
    lin: Linear,
    cols: usize,
) -> Result<B::Weight> {
    match lin {
        Linear::Dense(d) => be.upload_weight(name, &d, d.len() / cols.max(1), cols),
        Linear::Quant(q) => be.upload_quantized(name, &q),
    }
}

impl<B: Backend> Model<B> {
    /// Uploads every weight, one tensor at a time, fusing q|k|v and gate|up. A model of at
    /// least 128M parameters shows a progress bar (see [`crate::progress`]).
    pub fn load(be: &B, spec: ModelSpec, src: &dyn TensorSource) -> Result<Self> {
        let params = spec.param_count();
        let bar = if params >= LOAD_BAR_FROM {
            crate::progress::params(params, "loading weights")
        } else {
            ProgressBar::hidden()
        };
        let start = Instant::now();
        let counted = Counted::new(src, bar.clone());
        let model = Self::load_counted(be, spec, &counted);
        bar.finish_and_clear();
        let mut model = model?;
        model.load_time = LoadTime {
            total: start.elapsed(),
            source: counted.source_time.get(),
        };
        Ok(model)
    }

    /// `load` through the progress hook (`src` advances the bar).
    fn load_counted(be: &B, spec: ModelSpec, src: &Counted) -> Result<Self> {
        let src: &dyn TensorSource = src;
        let (d, hd) = (spec.hidden, spec.head_dim);
        let (qd, kvd, inter) = (spec.q_dim(), spec.kv_dim(), spec.intermediate);
        let mut layers = Vec::with_capacity(spec.num_layers);
        for (i, ls) in spec.layers.iter().enumerate() {
            let n = LayerNames::new(&spec, i, src);
            let w = |s: &str| format!("{s}.weight");
            let b = |s: &str| format!("{s}.bias");
            let qkv_parts = [(w(&n.q), qd), (w(&n.k), kvd), (w(&n.v), kvd)];
            let qkv = upload_linear(be, src, &qkv_parts, d)?;
            let qkv_bias = if spec.qkv_bias {
                let bp = [(b(&n.q), qd), (b(&n.k), kvd), (b(&n.v), kvd)];
                let parts: Vec<(&str, usize)> = bp.iter().map(|(s, r)| (s.as_str(), *r)).collect();
                Some(upload_stacked(be, src, &parts, 0)?)
            } else {
                None
            };
            let sparse = spec.moe.as_ref().is_some_and(|m| m.sparse_layers[i]);
            let mlp = if sparse {
                Mlp::Moe(MoeLayer::load(be, &spec, i, src)?)
            } else {
                let gu = [(w(&n.gate), inter), (w(&n.up), inter)];
                let gate_up = upload_linear(be, src, &gu, d)?;
                let (gate_up_bias, down_bias) = if spec.mlp_bias {
                    let gb = [(b(&n.gate), inter), (b(&n.up), inter)];
                    let parts: Vec<(&str, usize)> =
                        gb.iter().map(|(s, r)| (s.as_str(), *r)).collect();
                    (
                        Some(upload_stacked(be, src, &parts, 0)?),
                        Some(upload(be, src, &b(&n.down), d, 0)?),
                    )
                } else {
                    (None, None)
                };
                Mlp::Dense(DenseMlp {
                    gate_up,
                    gate_up_bias,
                    down: upload_linear(be, src, &[(w(&n.down), d)], inter)?,
                    down_bias,
                })
            };
            let sandwich = |name: &str| -> Result<Option<B::Weight>> {
                if spec.sandwich_norms {
                    Ok(Some(upload(be, src, name, d, 0)?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: upload(be, src, &n.attn_norm, d, 0)?,
                qkv,
                qkv_bias,
                qk_norm: if spec.qk_norm {
                    Some((
                        upload(be, src, &n.q_norm, hd, 0)?,
                        upload(be, src, &n.k_norm, hd, 0)?,
                    ))
                } else {
                    None
                },
                o: upload_linear(be, src, &[(w(&n.o), d)], qd)?,
                o_bias: if spec.o_bias {
                    Some(upload(be, src, &b(&n.o), d, 0)?)
                } else {
                    None
                },
                post_attn_norm: sandwich(&n.post_attn_norm)?,
                mlp_norm: upload(be, src, &n.mlp_norm, d, 0)?,
                mlp,
                post_mlp_norm: sandwich(&n.post_mlp_norm)?,
                attn: AttnParams {
                    num_heads: spec.num_heads,
                    num_kv_heads: spec.num_kv_heads,
                    head_dim: hd,
                    scale: spec.attn_scale,
                    softcap: spec.attn_softcap,
                    window: ls.sliding_window,
                },
                rope: ls.rope,
            });
        }
        let embed = upload(be, src, names::EMBED, spec.vocab_size, d)?;
        let lm_head = if spec.tie_embeddings {
            None
        } else {
            Some(upload_linear(be, src, &[(names::LM_HEAD, spec.vocab_size)], d).context(
                "the checkpoint has no separate output projection and config.json does not set tie_word_embeddings",
            )?)
        };
        // Grok-1's output multiplier is folded into the final norm's multiplier:
        // `(norm(x)·(off + w))·Eᵀ·s = (norm(x)·(off + w)·s)·Eᵀ`.
        let final_norm_name = names::final_norm(src);
        let final_norm = if spec.logit_scale == 1.0 {
            upload(be, src, final_norm_name, d, 0)?
        } else {
            let off = spec.norm_weight_offset;
            let w: Vec<f32> = src
                .load(final_norm_name, &[d])?
                .iter()
                .map(|g| (off + g) * spec.logit_scale - off)
                .collect();
            be.upload_weight(final_norm_name, &w, 1, d)?
        };
        let ropes = spec
            .ropes
            .iter()
            .map(|r| be.upload_rope(&r.inv_freq()))
            .collect::<Result<Vec<_>>>()?;
        let mut weight_bytes = be.weight_bytes(&embed) + be.weight_bytes(&final_norm);
        weight_bytes += lm_head.as_ref().map_or(0, |w| be.weight_bytes(w));
        for l in &layers {
            for w in [&l.attn_norm, &l.qkv, &l.o, &l.mlp_norm] {
                weight_bytes += be.weight_bytes(w);
            }
            weight_bytes += match &l.mlp {
                Mlp::Dense(m) => {
                    be.weight_bytes(&m.gate_up)
                        + be.weight_bytes(&m.down)
                        + [&m.gate_up_bias, &m.down_bias]
                            .iter()
                            .filter_map(|w| w.as_ref())
                            .map(|w| be.weight_bytes(w))
                            .sum::<usize>()
                }
                Mlp::Moe(m) => m.weight_bytes(be),
            };
            let opt = [&l.qkv_bias, &l.o_bias, &l.post_attn_norm, &l.post_mlp_norm];
            weight_bytes += opt
                .iter()
                .filter_map(|w| w.as_ref())
                .map(|w| be.weight_bytes(w))
                .sum::<usize>();
            weight_bytes += l
                .qk_norm
                .as_ref()
                .map_or(0, |(a, b)| be.weight_bytes(a) + be.weight_bytes(b));
        }
        Ok(Model {
            spec,
            embed,
            layers,
            final_norm,
            lm_head,
            ropes,
            weight_bytes,
            load_time: LoadTime::default(),
        })
    }

    /// Cache geometry for `num_blocks` blocks of `block_size` positions.
    pub fn kv_shape(&self, num_blocks: usize, block_size: usize) -> KvShape {
        KvShape {
            layers: self.spec.num_layers,
            num_blocks,
            block_size,
            kv_heads: self.spec.num_kv_heads,
            head_dim: self.spec.head_dim,
        }
    }

    /// Runs one step and returns its logits on the host: one row per sequence (its last new
    /// token), or one row per token with `all_positions`.
    pub fn forward(
        &self,
        be: &B,
        step: &StepInput,
        cache: &mut B::KvCache,
        ws: &mut Workspace<B>,
        all_positions: bool,
    ) -> Result<Vec<f32>> {
        self.forward_device(be, step, cache, ws, all_positions, None)?;
        be.to_host(&ws.logits)
    }

    /// Runs one step and leaves its logits on the device in `ws.logits` (for
    /// [`Backend::sample`], or [`Workspace::logits`]). With `graph = Some(key)` the device
    /// work after the step's upload runs as graph `key` of the backend (captured the first
    /// time, replayed after: see [`Backend::graph_begin`]).
    pub fn forward_device(
        &self,
        be: &B,
        step: &StepInput,
        cache: &mut B::KvCache,
        ws: &mut Workspace<B>,
        all_positions: bool,
        graph: Option<u64>,
    ) -> Result<()> {
        let n = step.num_tokens();
        if n == 0 || n > ws.max_tokens {
            bail!(
                "forward: step has {n} tokens; the workspace holds 1 to {}",
                ws.max_tokens
            );
        }
        let dstep = be.upload_step(step)?;
        // Logits of every row: every sequence one new token (decode), or all positions.
        let every_row = all_positions || step.seqs.len() == n;
        let Some(key) = graph else {
            return self.device_forward(be, &dstep, cache, ws, (all_positions, every_row));
        };
        // Plans and metadata uploads happen before the region: nothing inside may copy.
        for l in &self.layers {
            be.prepare_attention(&dstep, &l.attn)?;
        }
        be.graph_begin(key)?;
        let ran = self.device_forward(be, &dstep, cache, ws, (all_positions, every_row));
        let ended = be.graph_end(ran.is_ok());
        ran?;
        ended
    }

    /// Every kernel of one step, leaving the logits in `ws.logits`. `every_row`: every row of
    /// the step gets logits (all positions, or a decode step), so the final norm may run on
    /// all of them.
    fn device_forward(
        &self,
        be: &B,
        dstep: &B::Step,
        cache: &mut B::KvCache,
        ws: &mut Workspace<B>,
        (all_positions, every_row): (bool, bool),
    ) -> Result<()> {
        let spec = &self.spec;
        let (eps, off) = (spec.norm_eps, spec.norm_weight_offset);
        // The scale at the activation dtype (bf16 on CUDA), as transformers applies it.
        let embed_scale = be.act_scalar(spec.embed_scale);
        be.embed(dstep, &self.embed, embed_scale, &mut ws.x)?;
        // The residual stream is ws.x, plus ws.delta while `pending`. A dense layer without
        // post-norms keeps nothing pending: its pre-norms run inside the qkv and gate|up
        // matmuls and its o and down matmuls add into ws.x (`Backend::matmul_ex`). A post-norm
        // or a MoE MLP writes a delta instead, which the next norm adds (rms_norm's residual).
        // With the fused inputs off (the default) an o or down matmul that adds into ws.x
        // also writes the next pre-norm of it into ws.h (`MatOut::AddToNorm`: on CUDA the
        // GEMV's last CTA, no norm kernel) and `normed` says ws.h holds it.
        let mut pending = false;
        let mut normed = false;
        let out_norm = !be.fuse();
        let norm = |w| (w, eps, off);
        for (i, l) in self.layers.iter().enumerate() {
            // The pre-norm after this layer: the next layer's, or the final one (where every
            // row's logits are wanted: otherwise only the last rows are normed).
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => Some(&next.attn_norm),
                None if every_row => Some(&self.final_norm),
                None => None,
            };
            // Attention block.
            norm_matmul(
                be,
                (&mut ws.x, &ws.delta, &mut pending, &mut normed),
                norm(&l.attn_norm),
                &mut ws.h,
                (&l.qkv, l.qkv_bias.as_ref()),
                MatOut::Write(&mut ws.qkv),
            )?;
            let qk = l.qk_norm.as_ref().map(|(q, k)| QkNorm {
                q,
                k,
                eps,
                offset: off,
            });
            be.rope_attention(
                &ws.qkv,
                dstep,
                &self.ropes[l.rope],
                qk,
                &l.attn,
                cache,
                i,
                &mut ws.q,
                &mut ws.attn_out,
            )?;
            let o_in = MatIn::Plain(&ws.attn_out);
            match &l.post_attn_norm {
                Some(pn) => {
                    be.matmul_ex(o_in, &l.o, l.o_bias.as_ref(), MatOut::Write(&mut ws.proj))?;
                    be.rms_norm(&ws.proj, None, pn, eps, off, &mut ws.delta)?;
                    pending = true;
                }
                None if out_norm => {
                    let out = MatOut::AddToNorm {
                        out: &mut ws.x,
                        w: &l.mlp_norm,
                        eps,
                        offset: off,
                        h: &mut ws.h,
                    };
                    be.matmul_ex(o_in, &l.o, l.o_bias.as_ref(), out)?;
                    normed = true;
                }
                None => be.matmul_ex(o_in, &l.o, l.o_bias.as_ref(), MatOut::AddTo(&mut ws.x))?,
            }
            // MLP block.
            match &l.mlp {
                Mlp::Dense(m) => {
                    // act(gate) * up is the gate|up matmul's output (`MatOut::ActMul`: the
                    // GEMV's epilogue where the backend fuses it, else an act_mul after it)
                    // and down takes it plain. Only with the fused inputs on and the fused
                    // output off is it down's input instead (`MatIn::ActMul`, FLINT_FUSE=1
                    // FLINT_FUSE_OUT=0: the act·mul staged by the down GEMV).
                    let act_in_down = be.fuse() && !be.fuse_out();
                    let gate_up_out = if act_in_down {
                        MatOut::Write(&mut ws.gate_up)
                    } else {
                        MatOut::ActMul {
                            out: &mut ws.act,
                            act: spec.activation,
                            scratch: &mut ws.gate_up,
                        }
                    };
                    norm_matmul(
                        be,
                        (&mut ws.x, &ws.delta, &mut pending, &mut normed),
                        norm(&l.mlp_norm),
                        &mut ws.h,
                        (&m.gate_up, m.gate_up_bias.as_ref()),
                        gate_up_out,
                    )?;
                    let act = if act_in_down {
                        MatIn::ActMul {
                            gate_up: &ws.gate_up,
                            act: spec.activation,
                            scratch: &mut ws.act,
                        }
                    } else {
                        MatIn::Plain(&ws.act)
                    };
                    let bias = m.down_bias.as_ref();
                    match &l.post_mlp_norm {
                        Some(pn) => {
                            be.matmul_ex(act, &m.down, bias, MatOut::Write(&mut ws.proj))?;
                            be.rms_norm(&ws.proj, None, pn, eps, off, &mut ws.delta)?;
                            pending = true;
                        }
                        None => match next_norm {
                            Some(nw) if out_norm => {
                                let out = MatOut::AddToNorm {
                                    out: &mut ws.x,
                                    w: nw,
                                    eps,
                                    offset: off,
                                    h: &mut ws.h,
                                };
                                be.matmul_ex(act, &m.down, bias, out)?;
                                normed = true;
                            }
                            _ => be.matmul_ex(act, &m.down, bias, MatOut::AddTo(&mut ws.x))?,
                        },
                    }
                }
                Mlp::Moe(m) => {
                    // h feeds the router and the experts: the norm is materialized (by the
                    // o matmul already where `normed`).
                    if std::mem::take(&mut normed) {
                        debug_assert!(!pending);
                    } else if pending {
                        be.rms_norm(&ws.delta, Some(&mut ws.x), &l.mlp_norm, eps, off, &mut ws.h)?;
                    } else {
                        be.rms_norm(&ws.x, None, &l.mlp_norm, eps, off, &mut ws.h)?;
                    }
                    let mws = ws.moe.as_mut().context("workspace has no MoE buffers")?;
                    match &l.post_mlp_norm {
                        Some(pn) => {
                            m.forward(be, &ws.h, mws, &mut ws.proj)?;
                            be.rms_norm(&ws.proj, None, pn, eps, off, &mut ws.delta)?;
                        }
                        None => m.forward(be, &ws.h, mws, &mut ws.delta)?,
                    }
                    pending = true;
                }
            }
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let head_in = (head, None);
        if std::mem::take(&mut normed) {
            // ws.h holds the final norm of every row (the last down matmul's output norm), and
            // every row gets logits: with all positions, or in a decode step, where row i is
            // sequence i's last (gathering the last rows would copy them in place).
            debug_assert!(every_row && !pending);
            be.matmul(&ws.h, head, None, &mut ws.logits)?;
        } else if all_positions {
            let x = (&mut ws.x, &ws.delta, &mut pending, &mut normed);
            norm_matmul(
                be,
                x,
                norm(&self.final_norm),
                &mut ws.h,
                head_in,
                MatOut::Write(&mut ws.logits),
            )?;
        } else if pending {
            be.rms_norm(
                &ws.delta,
                Some(&mut ws.x),
                &self.final_norm,
                eps,
                off,
                &mut ws.h,
            )?;
            be.gather_last(&ws.h, dstep, &mut ws.last)?;
            be.matmul(&ws.last, head, None, &mut ws.logits)?;
        } else {
            // The norm is row by row: the last rows' norm is the norm's last rows.
            be.gather_last(&ws.x, dstep, &mut ws.last)?;
            let (mut no_delta, mut not_normed) = (false, false);
            let x = (&mut ws.last, &ws.delta, &mut no_delta, &mut not_normed);
            norm_matmul(
                be,
                x,
                norm(&self.final_norm),
                &mut ws.h,
                head_in,
                MatOut::Write(&mut ws.logits),
            )?;
        }
        if let Some(cap) = spec.final_softcap {
            be.softcap(&mut ws.logits, cap)?;
        }
        Ok(())
    }
}

/// `out = norm(x) · wᵀ (+ b)` for the residual stream `(x, delta, pending)`, which it leaves
/// up to date (nothing pending): a pending delta is added by `rms_norm`'s residual path (into
/// `h`, then a plain-input matmul); otherwise the norm is the matmul's input (`MatIn::Norm`,
/// with `h` as its scratch), which a backend may fuse. `out` is any `MatOut` but `AddTo` (the
/// gate|up matmul's is `ActMul`).
fn norm_matmul<B: Backend>(
    be: &B,
    (x, delta, pending, normed): (&mut B::Tensor, &B::Tensor, &mut bool, &mut bool),
    (nw, eps, offset): (&B::Weight, f32, f32),
    h: &mut B::Tensor,
    (w, bias): (&B::Weight, Option<&B::Weight>),
    out: MatOut<'_, B::Tensor, B::Weight>,
) -> Result<()> {
    if std::mem::take(normed) {
        // h already holds this norm of x (the previous matmul's `MatOut::AddToNorm`).
        debug_assert!(!*pending);
        return match out {
            MatOut::Write(o) => be.matmul(h, w, bias, o),
            out => be.matmul_ex(MatIn::Plain(h), w, bias, out),
        };
    }
    if std::mem::take(pending) {
        be.rms_norm(delta, Some(x), nw, eps, offset, h)?;
        return match out {
            MatOut::Write(o) => be.matmul(h, w, bias, o),
            out => be.matmul_ex(MatIn::Plain(h), w, bias, out),
        };
    }
    let input = MatIn::Norm {
        x,
        w: nw,
        eps,
        offset,
        scratch: h,
    };
    be.matmul_ex(input, w, bias, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::ModelRef;

    /// The load bar's total (`ModelSpec::param_count`) is what the hook counts: every tensor
    /// read, once (the bar neither stops short nor runs past its end).
    #[test]
    fn load_bar_counts_every_parameter_once() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
        let mut models = vec![ModelRef::Synthetic("tiny".into())];
        for e in std::fs::read_dir(&fixtures).unwrap() {
            let dir = e.unwrap().path();
            if dir.join("config.json").exists() {
                models.push(ModelRef::Dir(dir));
            }
        }
        assert!(
            models.len() > 5,
            "fixtures missing from {}",
            fixtures.display()
        );
        for m in models {
            let spec = m.spec().unwrap();
            let counted = |src: &dyn TensorSource| {
                let c = Counted::new(src, ProgressBar::hidden());
                Model::load_counted(&CpuBackend, spec.clone(), &c).unwrap();
                c.bar.position()
            };
            let read = match &m {
                ModelRef::Dir(d) => counted(&crate::weights::WeightStore::open(d).unwrap()),
                ModelRef::Synthetic(_) => {
                    counted(&crate::weights::synthetic::SyntheticSource::new(&spec, 0))
                }
            };
            assert_eq!(read, spec.param_count(), "{m:?}");
        }
        // Every bias a family may have (no fixture has o_bias or mlp_bias).
        let mut spec = ModelRef::Synthetic("tiny".into()).spec().unwrap();
        (spec.qkv_bias, spec.o_bias, spec.mlp_bias) = (true, true, true);
        let src = crate::weights::synthetic::SyntheticSource::new(&spec, 0);
        let c = Counted::new(&src, ProgressBar::hidden());
        Model::load_counted(&CpuBackend, spec.clone(), &c).unwrap();
        assert_eq!(c.bar.position(), spec.param_count(), "tiny with every bias");
    }

    #[test]
    fn load_time_splits_the_source_from_the_upload() {
        let m = ModelRef::Synthetic("tiny".into())
            .load(&CpuBackend)
            .unwrap();
        let t = m.load_time;
        assert!(t.source > Duration::ZERO && t.source <= t.total, "{t:?}");
        assert_eq!(t.upload(), t.total - t.source);
    }
}
