//! Quantized linear weights: one canonical representation ([`QuantWeight`]), its exact f32
//! dequantization (the CPU reference), the fp8 e4m3fn codec, round-to-nearest quantize-on-load,
//! and importers from the layouts published checkpoints use (GPTQ, AWQ GEMM,
//! compressed-tensors pack-quantized / int-quantized / float-quantized, fbgemm_fp8,
//! fine-grained block fp8).
//!
//! # Layout (`QuantWeight`)
//!
//! A linear weight is `[N out, K in]`, row-major, as in Hugging Face checkpoints (`y = W x`).
//! Every format is stored **row-major along K**:
//!
//! * int8: `qdata` is `[N, K]` i8 codes (stored as bytes);
//! * int4: `qdata` is `[N, K/2]` bytes, byte `j` of row `n` holds `k = 2j` in its low nibble
//!   and `k = 2j + 1` in its high nibble, unsigned codes 0..=15;
//! * fp8: `qdata` is `[N, K]` e4m3fn codes.
//!
//! Why: a decode GEMV gives each output row (or a few) to a warp that walks K; with codes
//! contiguous along K each lane's 16-byte load is 16 int8 / 32 int4 / 16 fp8 consecutive inputs
//! of one row, fully coalesced across the warp, and the group scale changes only every `group`
//! inputs (128 int4 = 64 bytes = 4 lanes' loads share one scale). The checkpoint layouts are
//! not this: GPTQ packs along K but stores `[K/8, N]` (K-major), AWQ packs along N with an
//! interleave, compressed-tensors packs along K row-major (the closest), so every importer
//! repacks once at load. A tensor-core (Marlin-style) tiling for prefill is a later transform
//! of this layout on the device.
//!
//! Scales are f32 `[N, K/group]` (per channel: `group == K`, one scale per row); f16/bf16
//! checkpoint scales convert exactly. Integer zero points, where the format has them, are
//! `i16` `[N, K/group]` (int4 zeros are 0..=15 from every importer; int8 zeros are signed,
//! and quantizers or hand-built weights may use any integer). Without zero points int8 is
//! symmetric around 0 and int4 around 8.
//! `g_idx` (GPTQ act-order) maps input column `k` to its group; it is only kept when it is not
//! the trivial `k / group`. It has `B·K` entries for `B` equal blocks of rows (`B` divides N):
//! one shared map (`B = 1`) for a single weight or for fused parts that share their input's
//! act-order (q|k|v, gate|up), one per expert for stacked MoE experts (each expert saw its own
//! tokens, so its Hessian and its order differ). Row `r` uses block `r / (N / B)`. (A GPU kernel would rather permute K at load so groups become
//! contiguous, and permute activations the same way: later work.)
//!
//! # Dequantization (exact in f32)
//!
//! * int: `w[n,k] = scale[n, g] * (q[n,k] - zero[n, g])`, `g = g_idx[k]` or `k / group`.
//!   `q - zero` is an integer of at most 9 bits and scales come from f16/bf16/f32 values, so
//!   for f16/bf16 scales the product is exact in f32 (at most 11 + 9 significant bits).
//! * fp8: `w[n,k] = decode(q[n,k]) * scale` with the scale per tensor, per row, or per
//!   `[bn, bk]` block (`scale[n / bn, k / bk]`, ragged last blocks allowed).

use super::{DType, WeightStore};
use crate::par;
use anyhow::{anyhow, bail, ensure, Result};
use serde_json::Value;
use std::ops::Range;

// ---------------------------------------------------------------------------------------
// fp8 e4m3fn codec
// ---------------------------------------------------------------------------------------

/// Largest finite e4m3fn value.
pub const FP8_E4M3_MAX: f32 = 448.0;

/// Exact value of an e4m3fn code (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no
/// infinities; `S.1111.111` is NaN; exponent 0 is subnormal `m * 2^-9`).
pub fn fp8_e4m3_decode(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((code >> 3) & 0x0F) as i32;
    let m = (code & 0x07) as f32;
    if e == 15 && code & 7 == 7 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m * (2.0f32).powi(-9)
    } else {
        sign * (1.0 + m / 8.0) * (2.0f32).powi(e - 7)
    }
}

/// The 256 decoded codes (a lookup table for hot loops).
pub fn fp8_e4m3_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = fp8_e4m3_decode(i as u8);
    }
    t
}

/// Nearest e4m3fn code, ties to even; magnitudes beyond 448 (and ±inf) saturate to ±448; NaN
/// gives 0x7F (or 0xFF for a negative NaN). This is what torch's `.to(torch.float8_e4m3fn)`
/// does (checked on all codes, their midpoints and random values by tests/quant.rs).
pub fn fp8_e4m3_encode(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = x.abs();
    if a.is_nan() {
        return sign | 0x7F;
    }
    if a >= FP8_E4M3_MAX {
        return sign | 0x7E;
    }
    if a < 0.015_625 {
        // below 2^-6
        // subnormal (or zero): a multiple of 2^-9; scaling by 2^9 is exact
        let q = rne(a * 512.0) as u8; // 0..=8, and 8 is the smallest normal
        return sign | q;
    }
    // normal: rebias the exponent (127 -> 7) and round the 23-bit mantissa to 3 bits
    let abits = a.to_bits();
    let keep = (abits - ((127 - 7) << 23)) >> 20;
    let rem = abits & 0xF_FFFF;
    let half = 0x8_0000;
    // `|` and `&`, not `||` and `&&`: the round-up test is a coin flip on real weights, and
    // as a branch it cost ~3 ns a code in mispredictions.
    let up = (rem > half) | ((rem == half) & (keep & 1 == 1));
    let code = keep + up as u32; // a carry moves into the exponent, as it should
    sign | (code.min(0x7E) as u8)
}

// ---------------------------------------------------------------------------------------
// The canonical representation
// ---------------------------------------------------------------------------------------

/// How the fp8 scales are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Scale {
    /// One scale.
    Tensor,
    /// One scale per output row (`[N]`).
    Channel,
    /// One scale per `[bn, bk]` block: `[ceil(N/bn), ceil(K/bk)]`.
    Block { bn: usize, bk: usize },
}

/// Which numbers `QuantWeight::qdata` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantScheme {
    /// i8 codes `[N, K]`, scales `[N, K/group]`; `group == K` is per channel.
    Int8 { group: usize },
    /// u4 codes packed two per byte along K `[N, K/2]`, scales `[N, K/group]`.
    Int4 { group: usize },
    /// e4m3fn codes `[N, K]`.
    Fp8E4M3 { scale: Fp8Scale },
}

/// A quantized linear weight `[n out, k in]`; see the module docs for the layout.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantWeight {
    pub n: usize,
    pub k: usize,
    pub scheme: QuantScheme,
    pub qdata: Vec<u8>,
    pub scales: Vec<f32>,
    /// Integer zero points `[N, K/group]` (int schemes only). `None`: symmetric (int8 zero 0,
    /// int4 zero 8).
    pub zeros: Option<Vec<i16>>,
    /// Group of each input column `[K]` (int schemes only), when not `k / group`.
    pub g_idx: Option<Vec<u32>>,
}

impl QuantWeight {
    /// Number of scale groups along K (int schemes), or of scale columns (fp8 blocks).
    pub fn groups(&self) -> usize {
        match self.scheme {
            QuantScheme::Int8 { group } | QuantScheme::Int4 { group } => self.k / group,
            QuantScheme::Fp8E4M3 { scale } => match scale {
                Fp8Scale::Tensor | Fp8Scale::Channel => 1,
                Fp8Scale::Block { bk, .. } => self.k.div_ceil(bk),
            },
        }
    }

    /// Bytes of the codes plus scales and zeros as stored here.
    pub fn bytes(&self) -> usize {
        self.qdata.len()
            + 4 * self.scales.len()
            + 2 * self.zeros.as_ref().map_or(0, |z| z.len())
            + 4 * self.g_idx.as_ref().map_or(0, |g| g.len())
    }

    /// Checks every length and index against the scheme (importers and quantizers produce
    /// valid weights; this guards hand-built ones). `name` goes into the error.
    pub fn validate(&self, name: &str) -> Result<()> {
        let (n, k) = (self.n, self.k);
        ensure!(n > 0 && k > 0, "{name}: empty weight [{n}, {k}]");
        match self.scheme {
            QuantScheme::Int8 { group } | QuantScheme::Int4 { group } => {
                let int4 = matches!(self.scheme, QuantScheme::Int4 { .. });
                ensure!(
                    group > 0 && k % group == 0,
                    "{name}: group size {group} does not divide K = {k}"
                );
                ensure!(!int4 || k % 2 == 0, "{name}: int4 needs an even K, got {k}");
                let want = if int4 { n * k / 2 } else { n * k };
                ensure!(
                    self.qdata.len() == want,
                    "{name}: {} code bytes, expected {want}",
                    self.qdata.len()
                );
                let g = k / group;
                ensure!(
                    self.scales.len() == n * g,
                    "{name}: {} scales, expected {}",
                    self.scales.len(),
                    n * g
                );
                if let Some(z) = &self.zeros {
                    ensure!(
                        z.len() == n * g,
                        "{name}: {} zero points, expected {}",
                        z.len(),
                        n * g
                    );
                }
                if let Some(gi) = &self.g_idx {
                    ensure!(
                        !gi.is_empty() && gi.len() % k == 0 && n % (gi.len() / k) == 0,
                        "{name}: g_idx has {} entries, expected K = {k} per equal block of the \
                         {n} rows",
                        gi.len()
                    );
                    if let Some((i, v)) = gi.iter().enumerate().find(|(_, v)| **v as usize >= g) {
                        bail!("{name}: g_idx[{i}] = {v} is not a group index below {g}");
                    }
                }
            }
            QuantScheme::Fp8E4M3 { scale } => {
                ensure!(
                    self.qdata.len() == n * k,
                    "{name}: {} fp8 codes, expected {}",
                    self.qdata.len(),
                    n * k
                );
                let want = match scale {
                    Fp8Scale::Tensor => 1,
                    Fp8Scale::Channel => n,
                    Fp8Scale::Block { bn, bk } => {
                        ensure!(bn > 0 && bk > 0, "{name}: zero fp8 block size");
                        n.div_ceil(bn) * k.div_ceil(bk)
                    }
                };
                ensure!(
                    self.scales.len() == want,
                    "{name}: {} fp8 scales, expected {want}",
                    self.scales.len()
                );
                ensure!(
                    self.zeros.is_none() && self.g_idx.is_none(),
                    "{name}: fp8 weights have no zero points or g_idx"
                );
            }
        }
        Ok(())
    }

    /// The f32 weight `[N, K]` row-major, exactly as the format defines it. Importers and
    /// quantizers return validated weights; a hand-built one must pass [`Self::validate`]
    /// first (this indexes without further checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![0.0f32; n * k];
        match self.scheme {
            QuantScheme::Int8 { group } | QuantScheme::Int4 { group } => {
                let int4 = matches!(self.scheme, QuantScheme::Int4 { .. });
                let g = k / group;
                let default_zero: i32 = if int4 { 8 } else { 0 };
                let gi_rows = self.g_idx.as_ref().map_or(n, |gx| n / (gx.len() / k));
                for (r, row) in out.chunks_exact_mut(k).enumerate() {
                    let gmap = self
                        .g_idx
                        .as_ref()
                        .map(|gx| &gx[(r / gi_rows) * k..(r / gi_rows + 1) * k]);
                    let scales = &self.scales[r * g..(r + 1) * g];
                    let zeros = self.zeros.as_ref().map(|z| &z[r * g..(r + 1) * g]);
                    for (c, w) in row.iter_mut().enumerate() {
                        let q = if int4 {
                            let b = self.qdata[r * (k / 2) + c / 2];
                            ((b >> (4 * (c & 1))) & 0x0F) as i32
                        } else {
                            self.qdata[r * k + c] as i8 as i32
                        };
                        let gi = match gmap {
                            Some(gx) => gx[c] as usize,
                            None => c / group,
                        };
                        let z = zeros.map_or(default_zero, |z| z[gi] as i32);
                        *w = scales[gi] * (q - z) as f32;
                    }
                }
            }
            QuantScheme::Fp8E4M3 { scale } => {
                let t = fp8_e4m3_table();
                for (r, row) in out.chunks_exact_mut(k).enumerate() {
                    let codes = &self.qdata[r * k..(r + 1) * k];
                    for (c, (w, &q)) in row.iter_mut().zip(codes).enumerate() {
                        let s = match scale {
                            Fp8Scale::Tensor => self.scales[0],
                            Fp8Scale::Channel => self.scales[r],
                            Fp8Scale::Block { bn, bk } => {
                                self.scales[(r / bn) * k.div_ceil(bk) + c / bk]
                            }
                        };
                        *w = t[q as usize] * s;
                    }
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Quantize on load (round to nearest, ties to even)
// ---------------------------------------------------------------------------------------

fn check_dense(w: &[f32], n: usize, k: usize, blocks: &[Range<usize>]) -> Result<()> {
    ensure!(
        n > 0 && k > 0 && n.checked_mul(k) == Some(w.len()),
        "quantize: weight has {} values, expected [{n}, {k}]",
        w.len()
    );
    let items: Vec<_> = blocks.iter().map(|b| &w[b.start * k..b.end * k]).collect();
    let first = par::map(items, |x| x.iter().position(|v| !v.is_finite()));
    if let Some(i) = blocks
        .iter()
        .zip(first)
        .find_map(|(b, f)| f.map(|f| b.start * k + f))
    {
        bail!(
            "quantize: weight element [{}, {}] is {}, not finite",
            i / k,
            i % k,
            w[i]
        );
    }
    Ok(())
}

/// How the quantizers split a `[n, k]` weight across threads (see [`crate::par`]); every
/// row is quantized on its own, so the blocks do not change the result.
fn default_blocks(n: usize, k: usize) -> Vec<Range<usize>> {
    par::row_blocks(n, k, par::threads())
}

/// Round to nearest, ties to even, for |x| <= 2^22 (the default IEEE rounding of the add does
/// it; `f32::round_ties_even` is a libm call on baseline x86-64, about 10x slower here).
#[inline(always)]
fn rne(x: f32) -> f32 {
    const M: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + M) - M
}

fn safe_inv(s: f32) -> f32 {
    if s > 0.0 {
        1.0 / s
    } else {
        0.0
    }
}

/// Symmetric int8, `group` inputs per scale (`group == k`: per output channel):
/// `scale = max|w| / 127`, `q = rne(w / scale)`. Error per element at most `scale / 2`.
pub fn quantize_int8(w: &[f32], n: usize, k: usize, group: usize) -> Result<QuantWeight> {
    quantize_int8_blocks(w, n, k, group, &default_blocks(n, k))
}

fn quantize_int8_blocks(
    w: &[f32],
    n: usize,
    k: usize,
    group: usize,
    blocks: &[Range<usize>],
) -> Result<QuantWeight> {
    check_dense(w, n, k, blocks)?;
    ensure!(
        group > 0 && k % group == 0,
        "quantize_int8: group size {group} does not divide K = {k}"
    );
    let g = k / group;
    let mut qdata = vec![0u8; n * k];
    let mut scales = vec![0.0f32; n * g];
    let items: Vec<_> = blocks
        .iter()
        .zip(par::split_rows(&mut qdata, k, blocks))
        .zip(par::split_rows(&mut scales, g, blocks))
        .collect();
    par::map(items, |((b, qdata), scales)| {
        for ((row, qrow), srow) in w[b.start * k..b.end * k]
            .chunks_exact(k)
            .zip(qdata.chunks_exact_mut(k))
            .zip(scales.chunks_exact_mut(g))
        {
            for ((x, q), s) in row
                .chunks_exact(group)
                .zip(qrow.chunks_exact_mut(group))
                .zip(srow.iter_mut())
            {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                *s = amax / 127.0;
                let inv = safe_inv(*s);
                for (v, qq) in x.iter().zip(q.iter_mut()) {
                    *qq = (rne((v * inv).clamp(-127.0, 127.0)) as i8) as u8;
                }
            }
        }
    });
    Ok(QuantWeight {
        n,
        k,
        scheme: QuantScheme::Int8 { group },
        qdata,
        scales,
        zeros: None,
        g_idx: None,
    })
}

/// int4, `group` inputs per scale. Symmetric: `scale = max|w| / 7`, codes `rne(w/scale) + 8`
/// clamped to 0..=15 (the code 0 = -8 is unused, as GPTQ/AWQ symmetric do). Asymmetric:
/// the range `[min(w, 0), max(w, 0)]` over 15 steps, integer zero `rne(-min/scale)`.
/// Error per element at most `scale / 2` either way.
pub fn quantize_int4(
    w: &[f32],
    n: usize,
    k: usize,
    group: usize,
    symmetric: bool,
) -> Result<QuantWeight> {
    quantize_int4_blocks(w, n, k, group, symmetric, &default_blocks(n, k))
}

fn quantize_int4_blocks(
    w: &[f32],
    n: usize,
    k: usize,
    group: usize,
    symmetric: bool,
    blocks: &[Range<usize>],
) -> Result<QuantWeight> {
    check_dense(w, n, k, blocks)?;
    ensure!(
        group > 0 && k % group == 0 && group % 2 == 0,
        "quantize_int4: group size {group} must be even and divide K = {k}"
    );
    let g = k / group;
    let mut qdata = vec![0u8; n * k / 2];
    let mut scales = vec![0.0f32; n * g];
    let mut zeros = if symmetric {
        None
    } else {
        Some(vec![0i16; n * g])
    };
    let zero_parts: Vec<Option<&mut [i16]>> = match zeros.as_mut() {
        Some(z) => par::split_rows(z, g, blocks)
            .into_iter()
            .map(Some)
            .collect(),
        None => blocks.iter().map(|_| None).collect(),
    };
    let items: Vec<_> = blocks
        .iter()
        .zip(par::split_rows(&mut qdata, k / 2, blocks))
        .zip(par::split_rows(&mut scales, g, blocks))
        .zip(zero_parts)
        .collect();
    // `r` counts rows within the block; its parts of the outputs start at its first row.
    par::map(items, |(((b, qdata), scales), mut zeros)| {
        for (r, row) in w[b.start * k..b.end * k].chunks_exact(k).enumerate() {
            for (gi, x) in row.chunks_exact(group).enumerate() {
                let (s, z) = if symmetric {
                    (x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 7.0, 8.0f32)
                } else {
                    let lo = x.iter().fold(0.0f32, |m, v| m.min(*v));
                    let hi = x.iter().fold(0.0f32, |m, v| m.max(*v));
                    let s = (hi - lo) / 15.0;
                    (s, rne((-lo * safe_inv(s)).clamp(0.0, 15.0)))
                };
                scales[r * g + gi] = s;
                if let Some(zs) = zeros.as_mut() {
                    zs[r * g + gi] = z as i16;
                }
                let inv = safe_inv(s);
                let base = r * k / 2 + gi * group / 2;
                for (j, pair) in x.chunks_exact(2).enumerate() {
                    let lo = (rne((pair[0] * inv).clamp(-16.0, 16.0)) + z).clamp(0.0, 15.0) as u8;
                    let hi = (rne((pair[1] * inv).clamp(-16.0, 16.0)) + z).clamp(0.0, 15.0) as u8;
                    qdata[base + j] = lo | (hi << 4);
                }
            }
        }
    });
    Ok(QuantWeight {
        n,
        k,
        scheme: QuantScheme::Int4 { group },
        qdata,
        scales,
        zeros,
        g_idx: None,
    })
}

/// fp8 e4m3 with a per-tensor or per-row scale `max|w| / 448`; relative error at most 2^-4
/// for values in the normal range (absolute `2^-10 * scale` below it).
pub fn quantize_fp8(w: &[f32], n: usize, k: usize, per_channel: bool) -> Result<QuantWeight> {
    quantize_fp8_blocks(w, n, k, per_channel, &default_blocks(n, k))
}

fn quantize_fp8_blocks(
    w: &[f32],
    n: usize,
    k: usize,
    per_channel: bool,
    blocks: &[Range<usize>],
) -> Result<QuantWeight> {
    check_dense(w, n, k, blocks)?;
    let amax_of = |x: &[f32]| x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let rows_of = |b: &Range<usize>| &w[b.start * k..b.end * k];
    let mut scales: Vec<f32> = if per_channel {
        vec![0.0; n]
    } else {
        // The maximum of the blocks' maxima: max is exact, so this is the one-pass fold's.
        let amax = par::map(blocks.iter().map(rows_of).collect(), amax_of)
            .into_iter()
            .fold(0.0f32, f32::max);
        vec![amax / FP8_E4M3_MAX]
    };
    let tensor_scale = (!per_channel).then(|| scales[0]);
    let scale_parts: Vec<Option<&mut [f32]>> = if per_channel {
        par::split_rows(&mut scales, 1, blocks)
            .into_iter()
            .map(Some)
            .collect()
    } else {
        blocks.iter().map(|_| None).collect()
    };
    let mut qdata = vec![0u8; n * k];
    let items: Vec<_> = blocks
        .iter()
        .zip(par::split_rows(&mut qdata, k, blocks))
        .zip(scale_parts)
        .collect();
    par::map(items, |((b, qdata), mut scales)| {
        for (r, (row, q)) in rows_of(b)
            .chunks_exact(k)
            .zip(qdata.chunks_exact_mut(k))
            .enumerate()
        {
            let s = match scales.as_mut() {
                Some(s) => {
                    s[r] = amax_of(row) / FP8_E4M3_MAX;
                    s[r]
                }
                None => tensor_scale.unwrap_or(0.0),
            };
            let inv = safe_inv(s);
            for (v, c) in row.iter().zip(q.iter_mut()) {
                *c = fp8_e4m3_encode(v * inv);
            }
        }
    });
    Ok(QuantWeight {
        n,
        k,
        scheme: QuantScheme::Fp8E4M3 {
            scale: if per_channel {
                Fp8Scale::Channel
            } else {
                Fp8Scale::Tensor
            },
        },
        qdata,
        scales,
        zeros: None,
        g_idx: None,
    })
}

// ---------------------------------------------------------------------------------------
// quantization_config
// ---------------------------------------------------------------------------------------

/// compressed-tensors weight strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtStrategy {
    Tensor,
    Channel,
    Group(usize),
    Block(usize, usize),
}

/// A checkpoint's `quantization_config`, reduced to what the importers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantConfig {
    /// GPTQ (AutoGPTQ / GPTQModel / optimum): `group` None means one group (`group_size: -1`).
    Gptq {
        bits: u32,
        group: Option<usize>,
        desc_act: bool,
        sym: bool,
        /// `checkpoint_format: gptq_v2` stores zeros as is; v1 ("gptq") stores `zero - 1`.
        v2: bool,
    },
    /// AWQ, GEMM layout.
    Awq { group: usize, zero_point: bool },
    /// compressed-tensors with integer weights, `pack-quantized` (packed into int32) or
    /// `int-quantized` / `naive-quantized` (one int8 per weight).
    CompressedInt {
        bits: u32,
        strategy: CtStrategy,
        symmetric: bool,
        packed: bool,
    },
    /// compressed-tensors `float-quantized` fp8 e4m3 weights.
    CompressedFp8 { strategy: CtStrategy },
    /// fbgemm_fp8: per-row `weight_scale`.
    FbgemmFp8,
    /// `quant_method: fp8` (fine-grained): `weight_scale_inv` per block, or per tensor when no
    /// `weight_block_size` is given.
    Fp8 { block: Option<(usize, usize)> },
}

/// A bit width: the integer as written (a cast to u32 would read 2^32 + 4 as 4), checked
/// against the supported widths by the caller.
fn get_bits(v: &Value, key: &str, what: &str) -> Result<u32> {
    let b = get_u64(v, key, what)?;
    u32::try_from(b).map_err(|_| {
        anyhow!("quantization_config: {what} with {b} bits is not supported (`{key}`)")
    })
}

fn get_u64(v: &Value, key: &str, what: &str) -> Result<u64> {
    v.get(key)
        .and_then(|x| x.as_u64())
        .ok_or_else(|| anyhow!("quantization_config: {what} needs a non-negative integer `{key}`"))
}

fn get_bool(v: &Value, key: &str, default: bool) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!("quantization_config: `{key}` must be true or false, got {other}"),
    }
}

fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|x| x.as_str())
}

impl QuantConfig {
    /// The `quantization_config` of `dir/config.json`, if it has one (errors name the file).
    pub fn from_dir(dir: &std::path::Path) -> Result<Option<Self>> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
        match v.get("quantization_config") {
            None | Some(Value::Null) => Ok(None),
            Some(q) => Self::parse(q)
                .map(Some)
                .map_err(|e| anyhow!("{}: {e}", path.display())),
        }
    }

    /// Parses `quantization_config` (the object, or a whole config.json that holds one).
    pub fn parse(v: &Value) -> Result<Self> {
        let v = v.get("quantization_config").unwrap_or(v);
        let method = get_str(v, "quant_method")
            .ok_or_else(|| anyhow!("quantization_config: missing string `quant_method`"))?;
        match method {
            "gptq" => {
                let bits = get_bits(v, "bits", "GPTQ")?;
                if bits != 4 && bits != 8 {
                    bail!("quantization_config: GPTQ with {bits} bits is not supported (4 or 8)");
                }
                let group = match v.get("group_size").and_then(|g| g.as_i64()) {
                    Some(-1) => None,
                    Some(g) if g > 0 => Some(g as usize),
                    _ => bail!("quantization_config: gptq `group_size` must be -1 or positive"),
                };
                let fmt = get_str(v, "checkpoint_format")
                    .or_else(|| get_str(v, "format"))
                    .unwrap_or("gptq");
                let v2 = match fmt {
                    "gptq" => false,
                    "gptq_v2" => true,
                    other => bail!(
                        "quantization_config: GPTQ checkpoint_format `{other}` is not supported \
                         (gptq, gptq_v2)"
                    ),
                };
                Ok(QuantConfig::Gptq {
                    bits,
                    group,
                    desc_act: get_bool(v, "desc_act", false)?,
                    sym: get_bool(v, "sym", true)?,
                    v2,
                })
            }
            "awq" => {
                let bits = get_u64(v, "bits", "awq").or_else(|_| get_u64(v, "w_bit", "awq"))?;
                if bits != 4 {
                    bail!("quantization_config: AWQ with {bits} bits is not supported (4)");
                }
                let version = get_str(v, "version").unwrap_or("gemm").to_ascii_lowercase();
                if version != "gemm" {
                    bail!(
                        "quantization_config: AWQ version `{version}` is not supported (only the \
                         GEMM layout; GEMV / GEMV_fast / marlin / exllama store weights differently)"
                    );
                }
                let group = get_u64(v, "group_size", "awq")
                    .or_else(|_| get_u64(v, "q_group_size", "awq"))?
                    as usize;
                ensure!(
                    group > 0,
                    "quantization_config: awq group_size must be positive"
                );
                if !get_bool(v, "zero_point", true)? {
                    bail!(
                        "quantization_config: AWQ without zero_point is not supported (the GEMM \
                         layout always stores qzeros)"
                    );
                }
                Ok(QuantConfig::Awq {
                    group,
                    zero_point: true,
                })
            }
            "compressed-tensors" => Self::parse_compressed(v),
            "fbgemm_fp8" => Ok(QuantConfig::FbgemmFp8),
            "fp8" => {
                let block = match v.get("weight_block_size") {
                    None | Some(Value::Null) => None,
                    Some(b) => {
                        let a = b.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                            anyhow!("quantization_config: `weight_block_size` must be [bn, bk]")
                        })?;
                        let bn = a[0].as_u64().unwrap_or(0) as usize;
                        let bk = a[1].as_u64().unwrap_or(0) as usize;
                        ensure!(
                            bn > 0 && bk > 0,
                            "quantization_config: `weight_block_size` must be two positive integers"
                        );
                        Some((bn, bk))
                    }
                };
                Ok(QuantConfig::Fp8 { block })
            }
            other => bail!(
                "quantization_config: quant_method `{other}` is not supported (gptq, awq, \
                 compressed-tensors, fbgemm_fp8, fp8)"
            ),
        }
    }

    fn parse_compressed(v: &Value) -> Result<Self> {
        let groups = v
            .get("config_groups")
            .and_then(|g| g.as_object())
            .ok_or_else(|| {
                anyhow!("quantization_config: compressed-tensors needs `config_groups`")
            })?;
        let mut parsed: Option<(QuantConfig, String)> = None;
        for (gname, grp) in groups {
            let w = grp.get("weights").filter(|w| !w.is_null()).ok_or_else(|| {
                anyhow!("quantization_config: config_groups.{gname} has no `weights` scheme")
            })?;
            let fmt = get_str(grp, "format")
                .or_else(|| get_str(v, "format"))
                .unwrap_or("");
            let bits = get_bits(w, "num_bits", &format!("config_groups.{gname}"))?;
            let ty = get_str(w, "type").unwrap_or("int");
            let strategy = match get_str(w, "strategy").unwrap_or("") {
                "tensor" => CtStrategy::Tensor,
                "channel" => CtStrategy::Channel,
                "group" => {
                    CtStrategy::Group(
                        get_u64(w, "group_size", "compressed-tensors group strategy")? as usize,
                    )
                }
                "block" => {
                    let b = w
                        .get("block_structure")
                        .and_then(|b| b.as_array())
                        .filter(|a| a.len() == 2)
                        .ok_or_else(|| {
                            anyhow!(
                                "quantization_config: config_groups.{gname}: block strategy \
                                 needs `block_structure` [bn, bk]"
                            )
                        })?;
                    let bn = b[0].as_u64().unwrap_or(0) as usize;
                    let bk = b[1].as_u64().unwrap_or(0) as usize;
                    ensure!(bn > 0 && bk > 0, "quantization_config: bad block_structure");
                    CtStrategy::Block(bn, bk)
                }
                other => bail!(
                    "quantization_config: config_groups.{gname}: weight strategy `{other}` is \
                     not supported (tensor, channel, group, block)"
                ),
            };
            if matches!(strategy, CtStrategy::Group(0)) {
                bail!("quantization_config: config_groups.{gname}: group_size 0");
            }
            if w.get("actorder")
                .is_some_and(|a| !a.is_null() && a != false)
            {
                bail!(
                    "quantization_config: config_groups.{gname}: actorder is not supported yet \
                     (needs weight_g_idx)"
                );
            }
            let symmetric = get_bool(w, "symmetric", true)?;
            let cfg = match (ty, fmt) {
                ("int", "pack-quantized" | "int-quantized" | "naive-quantized") => {
                    let packed = fmt == "pack-quantized";
                    ensure!(
                        bits == 8 || (bits == 4 && packed),
                        "quantization_config: config_groups.{gname}: {bits}-bit {fmt} is not \
                         supported (4- or 8-bit pack-quantized, 8-bit int-quantized)"
                    );
                    ensure!(
                        matches!(strategy, CtStrategy::Channel | CtStrategy::Group(_)),
                        "quantization_config: config_groups.{gname}: integer weights need the \
                         channel or group strategy"
                    );
                    QuantConfig::CompressedInt {
                        bits,
                        strategy,
                        symmetric,
                        packed,
                    }
                }
                ("float", "float-quantized" | "naive-quantized") => {
                    ensure!(
                        bits == 8,
                        "quantization_config: config_groups.{gname}: {bits}-bit float weights \
                         are not supported (fp8)"
                    );
                    ensure!(
                        !matches!(strategy, CtStrategy::Group(_)),
                        "quantization_config: config_groups.{gname}: group-wise fp8 is not supported"
                    );
                    QuantConfig::CompressedFp8 { strategy }
                }
                _ => bail!(
                    "quantization_config: config_groups.{gname}: `{ty}` weights in format \
                     `{fmt}` are not supported (int pack-quantized/int-quantized, float \
                     float-quantized)"
                ),
            };
            if let Some((prev, pname)) = &parsed {
                if *prev != cfg {
                    bail!(
                        "quantization_config: config_groups {pname} and {gname} use different \
                         schemes; mixed schemes are not supported"
                    );
                }
            }
            parsed = Some((cfg, gname.clone()));
        }
        parsed
            .map(|p| p.0)
            .ok_or_else(|| anyhow!("quantization_config: `config_groups` is empty"))
    }
}

// ---------------------------------------------------------------------------------------
// Raw tensors and importers
// ---------------------------------------------------------------------------------------

/// One tensor as read from safetensors: its name (for errors), type, shape and bytes.
#[derive(Clone, Copy, Debug)]
pub struct Raw<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl<'a> Raw<'a> {
    fn check(&self, dtypes: &[DType], shape: &[usize]) -> Result<()> {
        ensure!(
            dtypes.contains(&self.dtype),
            "tensor `{}` has dtype {:?}, expected one of {:?}",
            self.name,
            self.dtype,
            dtypes
        );
        ensure!(
            self.shape == shape,
            "tensor `{}` has shape {:?}, expected {:?}",
            self.name,
            self.shape,
            shape
        );
        ensure!(
            self.bytes.len() == shape.iter().product::<usize>() * self.dtype.size(),
            "tensor `{}`: {} bytes do not match shape {:?} and dtype {:?}",
            self.name,
            self.bytes.len(),
            shape,
            self.dtype
        );
        Ok(())
    }

    fn rank2(&self) -> Result<(usize, usize)> {
        match self.shape {
            [a, b] => Ok((*a, *b)),
            s => bail!(
                "tensor `{}` has shape {s:?}, expected two dimensions",
                self.name
            ),
        }
    }

    fn i32s(&self) -> Vec<i32> {
        self.bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// A float tensor (f32/f16/bf16) as f32 (exact).
    fn floats(&self, shape: &[usize]) -> Result<Vec<f32>> {
        self.check(&[DType::F32, DType::F16, DType::BF16], shape)?;
        let v = super::to_f32(self.dtype, self.bytes);
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("tensor `{}`: element {i} is not finite", self.name);
        }
        Ok(v)
    }
}

fn unpack_bits(word: i32, bits: u32, j: usize) -> i32 {
    ((word as u32 >> (bits as usize * j)) & ((1u32 << bits) - 1)) as i32
}

/// Builds the canonical int weight from unsigned codes `q(n, k)` (0..2^bits), unsigned zeros
/// and f32 scales `[N, G]`. Zeros equal to the symmetric midpoint everywhere are dropped.
#[allow(clippy::too_many_arguments)]
fn build_int(
    name: &str,
    n: usize,
    k: usize,
    bits: u32,
    group: usize,
    q: impl Fn(usize, usize) -> i32,
    zeros_u: Option<Vec<i32>>,
    scales: Vec<f32>,
    g_idx: Option<Vec<u32>>,
) -> Result<QuantWeight> {
    let mid = 1i32 << (bits - 1);
    let (scheme, qdata, shift) = if bits == 4 {
        ensure!(k % 2 == 0, "{name}: int4 needs an even K, got {k}");
        let mut d = vec![0u8; n * k / 2];
        for r in 0..n {
            for c in (0..k).step_by(2) {
                d[r * k / 2 + c / 2] = (q(r, c) as u8 & 0x0F) | ((q(r, c + 1) as u8 & 0x0F) << 4);
            }
        }
        (QuantScheme::Int4 { group }, d, 0)
    } else {
        let mut d = vec![0u8; n * k];
        for r in 0..n {
            for c in 0..k {
                d[r * k + c] = ((q(r, c) - mid) as i8) as u8;
            }
        }
        (QuantScheme::Int8 { group }, d, mid)
    };
    let zeros = zeros_u.and_then(|z| {
        if z.iter().all(|&v| v == mid) {
            None
        } else {
            Some(z.iter().map(|&v| (v - shift) as i16).collect())
        }
    });
    let g_idx = g_idx.filter(|gi| gi.iter().enumerate().any(|(c, &g)| g as usize != c / group));
    let w = QuantWeight {
        n,
        k,
        scheme,
        qdata,
        scales,
        zeros,
        g_idx,
    };
    w.validate(name)?;
    Ok(w)
}

/// GPTQ: `qweight` i32 `[K*bits/32, N]` (packed along K, element j at bit j*bits), `qzeros`
/// i32 `[G, N*bits/32]` (packed along N; v1 stores `zero - 1`, see below), `scales` f16 `[G, N]`,
/// optional `g_idx` i32 `[K]`. `w[n,k] = scales[g,n] * (q[k,n] - zero[g,n])`, `g = g_idx[k]`.
pub fn import_gptq(
    cfg: &QuantConfig,
    qweight: Raw,
    qzeros: Raw,
    scales: Raw,
    g_idx: Option<Raw>,
) -> Result<QuantWeight> {
    let QuantConfig::Gptq {
        bits,
        group,
        desc_act,
        v2,
        ..
    } = *cfg
    else {
        bail!("import_gptq: config is {cfg:?}, not GPTQ");
    };
    let per = (32 / bits) as usize;
    let (kp, n) = qweight.rank2()?;
    // A dimension of 0 lets safetensors accept any other, however large: K is checked.
    let k = kp.checked_mul(per).ok_or_else(|| {
        anyhow!(
            "tensor `{}` has shape {:?}: K = {kp} × {per} overflows",
            qweight.name,
            qweight.shape
        )
    })?;
    ensure!(
        n % per == 0,
        "tensor `{}`: N = {n} is not a multiple of {per} (qzeros packing)",
        qweight.name
    );
    let group = group.unwrap_or(k);
    ensure!(
        group > 0 && k % group == 0,
        "tensor `{}`: group_size {group} does not divide K = {k}",
        qweight.name
    );
    let g = k / group;
    qweight.check(&[DType::I32], &[kp, n])?;
    qzeros.check(&[DType::I32], &[g, n / per])?;
    let s = scales.floats(&[g, n])?;
    let gi = match g_idx {
        Some(raw) => {
            raw.check(&[DType::I32], &[k])?;
            let v = raw.i32s();
            if let Some((i, x)) = v
                .iter()
                .enumerate()
                .find(|(_, x)| **x < 0 || **x as usize >= g)
            {
                bail!(
                    "tensor `{}`: g_idx[{i}] = {x} is not a group index below {g}",
                    raw.name
                );
            }
            Some(v.into_iter().map(|x| x as u32).collect::<Vec<u32>>())
        }
        None => {
            ensure!(
                !desc_act,
                "tensor `{}`: desc_act is set but the checkpoint has no g_idx",
                qweight.name
            );
            None
        }
    };
    let qw = qweight.i32s();
    // v1 stores every zero minus one. GPTQModel (convert_gptq_v1_to_v2_format_module, the
    // loader transformers uses) undoes that with one wrapping add of 0x11111111 / 0x01010101
    // per int32 word, not field by field: a zero of 0, written as a borrow by its v2->v1
    // conversion, comes back as 0 and its neighbour is restored too. (A field-wise `+ 1`,
    // as exllama/vLLM do, reads such a field as 16 and the neighbour off by one.)
    let word_off: i32 = match (v2, bits) {
        (true, _) => 0,
        (false, 4) => 0x1111_1111,
        (false, _) => 0x0101_0101,
    };
    let qz: Vec<i32> = qzeros
        .i32s()
        .into_iter()
        .map(|w| w.wrapping_add(word_off))
        .collect();
    let mut zeros = vec![0i32; n * g];
    let mut sc = vec![0.0f32; n * g];
    for gg in 0..g {
        for c in 0..n {
            zeros[c * g + gg] = unpack_bits(qz[gg * (n / per) + c / per], bits, c % per);
            sc[c * g + gg] = s[gg * n + c];
        }
    }
    let q = |r: usize, c: usize| unpack_bits(qw[(c / per) * n + r], bits, c % per);
    build_int(qweight.name, n, k, bits, group, q, Some(zeros), sc, gi)
}

/// AutoAWQ's GEMM nibble order: nibble `i` of a word holds column `8c + AWQ_ORDER[i]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// AWQ GEMM: `qweight` i32 `[K, N/8]` and `qzeros` i32 `[G, N/8]` packed along N in
/// [`AWQ_ORDER`], `scales` f16 `[G, N]`. `w[n,k] = scales[g,n] * (q[k,n] - zero[g,n])`.
pub fn import_awq(
    cfg: &QuantConfig,
    qweight: Raw,
    qzeros: Option<Raw>,
    scales: Raw,
) -> Result<QuantWeight> {
    let QuantConfig::Awq { group, zero_point } = *cfg else {
        bail!("import_awq: config is {cfg:?}, not AWQ");
    };
    let (k, np) = qweight.rank2()?;
    let n = np.checked_mul(8).ok_or_else(|| {
        anyhow!(
            "tensor `{}` has shape {:?}: N = {np} × 8 overflows",
            qweight.name,
            qweight.shape
        )
    })?;
    ensure!(
        group > 0 && k % group == 0,
        "tensor `{}`: group_size {group} does not divide K = {k}",
        qweight.name
    );
    let g = k / group;
    qweight.check(&[DType::I32], &[k, np])?;
    let s = scales.floats(&[g, n])?;
    let mut nib = [0usize; 8];
    for (i, &col) in AWQ_ORDER.iter().enumerate() {
        nib[col] = i;
    }
    let zeros = if zero_point {
        let qzeros = qzeros.ok_or_else(|| {
            anyhow!(
                "tensor `{}`: zero_point is set but qzeros is missing",
                qweight.name
            )
        })?;
        qzeros.check(&[DType::I32], &[g, np])?;
        let qz = qzeros.i32s();
        let mut z = vec![0i32; n * g];
        for gg in 0..g {
            for c in 0..n {
                z[c * g + gg] = unpack_bits(qz[gg * np + c / 8], 4, nib[c % 8]);
            }
        }
        Some(z)
    } else {
        None
    };
    let mut sc = vec![0.0f32; n * g];
    for gg in 0..g {
        for c in 0..n {
            sc[c * g + gg] = s[gg * n + c];
        }
    }
    let qw = qweight.i32s();
    let q = |r: usize, c: usize| unpack_bits(qw[c * np + r / 8], 4, nib[r % 8]);
    build_int(qweight.name, n, k, 4, group, q, zeros, sc, None)
}

/// compressed-tensors integer weights. `pack-quantized`: `weight_packed` i32
/// `[N, ceil(K*bits/32)]` (element j of a row at bit j*bits, stored with +2^(bits-1)),
/// `weight_shape` `[N, K]`, `weight_scale` `[N, G]`, and for asymmetric schemes
/// `weight_zero_point` i32 `[ceil(N*bits/32), G]` packed along N the same way.
/// `int-quantized`: `weight` i8 `[N, K]`, `weight_zero_point` i8 `[N, G]` if asymmetric.
/// `w = (q - zp) * scale` with q, zp signed.
pub fn import_compressed_int(
    cfg: &QuantConfig,
    weight: Raw,
    weight_shape: Option<Raw>,
    scale: Raw,
    zero_point: Option<Raw>,
) -> Result<QuantWeight> {
    let QuantConfig::CompressedInt {
        bits,
        strategy,
        symmetric,
        packed,
    } = *cfg
    else {
        bail!("import_compressed_int: config is {cfg:?}, not compressed-tensors int");
    };
    let mid = 1i32 << (bits - 1);
    let per = (32 / bits) as usize;
    let (n, k) = if packed {
        let ws = weight_shape.ok_or_else(|| {
            anyhow!(
                "tensor `{}`: pack-quantized needs `weight_shape`",
                weight.name
            )
        })?;
        ws.check(&[DType::I64, DType::I32], &[2])?;
        let dims: Vec<i64> = if ws.dtype == DType::I64 {
            ws.bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect()
        } else {
            ws.i32s().into_iter().map(i64::from).collect()
        };
        ensure!(
            dims.iter().all(|&d| d > 0 && d < 1 << 40),
            "tensor `{}`: bad shape {dims:?}",
            ws.name
        );
        (dims[0] as usize, dims[1] as usize)
    } else {
        weight.rank2()?
    };
    ensure!(
        n > 0 && k > 0,
        "tensor `{}`: empty weight [{n}, {k}]",
        weight.name
    );
    let group = match strategy {
        CtStrategy::Channel => k,
        CtStrategy::Group(g) => g,
        other => bail!(
            "tensor `{}`: int strategy {other:?} is not supported",
            weight.name
        ),
    };
    ensure!(
        group > 0 && k % group == 0,
        "tensor `{}`: group_size {group} does not divide K = {k}",
        weight.name
    );
    let g = k / group;
    let sc = scale.floats(&[n, g])?;
    let zeros = if symmetric {
        None
    } else {
        let zp = zero_point.ok_or_else(|| {
            anyhow!(
                "tensor `{}`: asymmetric scheme needs `weight_zero_point`",
                weight.name
            )
        })?;
        let mut z = vec![0i32; n * g];
        if packed {
            let np = (n * bits as usize).div_ceil(32);
            zp.check(&[DType::I32], &[np, g])?;
            let v = zp.i32s();
            for r in 0..n {
                for gg in 0..g {
                    z[r * g + gg] = unpack_bits(v[(r / per) * g + gg], bits, r % per);
                }
            }
        } else {
            zp.check(&[DType::I8], &[n, g])?;
            for (zz, &b) in z.iter_mut().zip(zp.bytes) {
                *zz = b as i8 as i32 + mid;
            }
        }
        Some(z)
    };
    if packed {
        let kp = (k * bits as usize).div_ceil(32);
        weight.check(&[DType::I32], &[n, kp])?;
        ensure!(
            k % per == 0,
            "tensor `{}`: K = {k} is not a multiple of {per}",
            weight.name
        );
        let w = weight.i32s();
        let q = |r: usize, c: usize| unpack_bits(w[r * kp + c / per], bits, c % per);
        build_int(weight.name, n, k, bits, group, q, zeros, sc, None)
    } else {
        weight.check(&[DType::I8], &[n, k])?;
        let b = weight.bytes;
        let q = |r: usize, c: usize| b[r * k + c] as i8 as i32 + mid;
        build_int(weight.name, n, k, bits, group, q, zeros, sc, None)
    }
}

/// fp8 e4m3 weight `[N, K]` with the given scale layout; `scale` is read as f32 and must have
/// one of the shapes that layout allows.
pub fn import_fp8(weight: Raw, scale: Raw, layout: Fp8Scale) -> Result<QuantWeight> {
    let (n, k) = weight.rank2()?;
    weight.check(&[DType::F8E4M3], &[n, k])?;
    let shapes: Vec<Vec<usize>> = match layout {
        Fp8Scale::Tensor => vec![vec![], vec![1], vec![1, 1]],
        Fp8Scale::Channel => vec![vec![n, 1], vec![n]],
        Fp8Scale::Block { bn, bk } => {
            ensure!(bn > 0 && bk > 0, "tensor `{}`: zero block size", scale.name);
            vec![vec![n.div_ceil(bn), k.div_ceil(bk)]]
        }
    };
    let shape = shapes
        .iter()
        .find(|s| s.as_slice() == scale.shape)
        .ok_or_else(|| {
            anyhow!(
                "tensor `{}` has shape {:?}, expected one of {:?} for {layout:?} scales of a \
                 [{n}, {k}] weight",
                scale.name,
                scale.shape,
                shapes
            )
        })?;
    let scales = scale.floats(shape)?;
    let w = QuantWeight {
        n,
        k,
        scheme: QuantScheme::Fp8E4M3 { scale: layout },
        qdata: weight.bytes.to_vec(),
        scales,
        zeros: None,
        g_idx: None,
    };
    w.validate(weight.name)?;
    Ok(w)
}

/// Reads the quantized linear weight `prefix` (e.g. `model.layers.0.mlp.down_proj`) from a
/// checkpoint, by the tensor names its `quantization_config` implies. Errors name the file and
/// the tensor.
pub fn load_quantized(store: &WeightStore, prefix: &str, cfg: &QuantConfig) -> Result<QuantWeight> {
    // (suffix, required)
    let wanted: &[(&str, bool)] = match cfg {
        QuantConfig::Gptq { .. } => &[
            ("qweight", true),
            ("qzeros", true),
            ("scales", true),
            ("g_idx", false),
        ],
        QuantConfig::Awq { zero_point, .. } => {
            &[("qweight", true), ("qzeros", *zero_point), ("scales", true)]
        }
        QuantConfig::CompressedInt { packed: true, .. } => &[
            ("weight_packed", true),
            ("weight_shape", true),
            ("weight_scale", true),
            ("weight_zero_point", false),
        ],
        QuantConfig::CompressedInt { packed: false, .. } => &[
            ("weight", true),
            ("weight_scale", true),
            ("weight_zero_point", false),
        ],
        QuantConfig::CompressedFp8 { .. } | QuantConfig::FbgemmFp8 => {
            &[("weight", true), ("weight_scale", true)]
        }
        QuantConfig::Fp8 { .. } => &[("weight", true), ("weight_scale_inv", true)],
    };
    let full: Vec<String> = wanted
        .iter()
        .map(|(s, _)| format!("{prefix}.{s}"))
        .collect();
    let mut got: Vec<Option<Raw>> = Vec::new();
    let mut file = String::new();
    for ((_, required), name) in wanted.iter().zip(&full) {
        if !required && !store.contains(name) {
            got.push(None);
            continue;
        }
        let (info, bytes) = store.bytes(name)?;
        file = store.file_of(info).display().to_string();
        got.push(Some(Raw {
            name,
            dtype: info.dtype,
            shape: &info.shape,
            bytes,
        }));
    }
    let need = |i: usize| got[i].ok_or_else(|| anyhow!("tensor `{}` not found", full[i]));
    let res = match *cfg {
        QuantConfig::Gptq { .. } => import_gptq(cfg, need(0)?, need(1)?, need(2)?, got[3]),
        QuantConfig::Awq { .. } => import_awq(cfg, need(0)?, got[1], need(2)?),
        QuantConfig::CompressedInt { packed: true, .. } => {
            import_compressed_int(cfg, need(0)?, Some(need(1)?), need(2)?, got[3])
        }
        QuantConfig::CompressedInt { packed: false, .. } => {
            import_compressed_int(cfg, need(0)?, None, need(1)?, got[2])
        }
        QuantConfig::CompressedFp8 { strategy } => {
            let layout = match strategy {
                CtStrategy::Tensor => Fp8Scale::Tensor,
                CtStrategy::Channel => Fp8Scale::Channel,
                CtStrategy::Block(bn, bk) => Fp8Scale::Block { bn, bk },
                CtStrategy::Group(_) => bail!("{prefix}: group-wise fp8 is not supported"),
            };
            import_fp8(need(0)?, need(1)?, layout)
        }
        QuantConfig::FbgemmFp8 => import_fp8(need(0)?, need(1)?, Fp8Scale::Channel),
        QuantConfig::Fp8 { block } => {
            let layout = match block {
                Some((bn, bk)) => Fp8Scale::Block { bn, bk },
                None => Fp8Scale::Tensor,
            };
            import_fp8(need(0)?, need(1)?, layout)
        }
    };
    res.map_err(|e| anyhow!("{file}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Fused projections
// ---------------------------------------------------------------------------------------

/// A linear weight `[N, K]` as a source serves it: dense f32, or quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum Linear {
    Dense(Vec<f32>),
    Quant(QuantWeight),
}

/// Stacks quantized weights along the output rows (the decoder's fused q|k|v and gate|up, and
/// the stacked MoE experts), keeping them quantized. This is exact when the parts share one
/// group layout along K, which is what a row concatenation can express:
///
/// * int: the same scheme and group size, and the same `g_idx` (GPTQ act-order orders K by
///   the Hessian of the layer's *input*, which q/k/v (and gate/up) share, so published
///   checkpoints agree); zero points are materialized where only some parts have them;
/// * fp8: per-tensor scales stay per tensor when equal and otherwise become per-row (exact:
///   the same scale repeated); blocks need the same `[bn, bk]` and every part but the last a
///   multiple of `bn` rows, so no block straddles two parts.
///
/// Anything else is an error naming `name` and the reason (rather than silently dequantizing,
/// which would lose the memory and speed the user asked for).
pub fn concat_rows(name: &str, parts: Vec<QuantWeight>) -> Result<QuantWeight> {
    ensure!(!parts.is_empty(), "{name}: nothing to fuse");
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_else(|| unreachable!()));
    }
    let k = parts[0].k;
    let scheme = parts[0].scheme;
    for p in &parts {
        ensure!(
            p.k == k,
            "{name}: fused parts have different input widths ({} and {k})",
            p.k
        );
    }
    let n: usize = parts.iter().map(|p| p.n).sum();
    let qdata: Vec<u8> = parts.iter().flat_map(|p| p.qdata.iter().copied()).collect();
    let out = match scheme {
        QuantScheme::Int8 { .. } | QuantScheme::Int4 { .. } => {
            for p in &parts {
                ensure!(
                    p.scheme == scheme,
                    "{name}: fused parts are quantized differently ({:?} and {:?}); flint fuses \
                     q|k|v and gate|up into one weight and needs one scheme and group size",
                    p.scheme,
                    scheme
                );
            }
            let same_gidx = parts.iter().all(|p| p.g_idx == parts[0].g_idx);
            let g_idx = if same_gidx {
                parts[0].g_idx.clone()
            } else {
                // One map per part (stacked experts): the parts must be equal row blocks.
                let rows = parts[0].n;
                let mut all = Vec::with_capacity(parts.len() * k);
                for p in &parts {
                    ensure!(
                        p.n == rows,
                        "{name}: fused parts have different g_idx (act-order permutations) and \
                         different row counts ({} and {rows}); flint fuses q|k|v and gate|up \
                         into one weight and can keep one g_idx per part only for equal parts",
                        p.n
                    );
                    let g = match p.scheme {
                        QuantScheme::Int8 { group } | QuantScheme::Int4 { group } => group,
                        QuantScheme::Fp8E4M3 { .. } => k,
                    };
                    match &p.g_idx {
                        Some(gx) if gx.len() == k => all.extend_from_slice(gx),
                        Some(_) => bail!(
                            "{name}: a fused part already holds several g_idx blocks; stacking \
                             it with differently ordered parts is not supported"
                        ),
                        None => all.extend((0..k).map(|c| (c / g) as u32)),
                    }
                }
                Some(all)
            };
            let default_zero: i16 = if matches!(scheme, QuantScheme::Int4 { .. }) {
                8
            } else {
                0
            };
            let zeros = if parts.iter().any(|p| p.zeros.is_some()) {
                let mut z = Vec::new();
                for p in &parts {
                    match &p.zeros {
                        Some(pz) => z.extend_from_slice(pz),
                        None => z.extend(std::iter::repeat_n(default_zero, p.scales.len())),
                    }
                }
                Some(z)
            } else {
                None
            };
            QuantWeight {
                n,
                k,
                scheme,
                qdata,
                scales: parts
                    .iter()
                    .flat_map(|p| p.scales.iter().copied())
                    .collect(),
                zeros,
                g_idx,
            }
        }
        QuantScheme::Fp8E4M3 { .. } => {
            let layouts: Vec<Fp8Scale> = parts
                .iter()
                .map(|p| match p.scheme {
                    QuantScheme::Fp8E4M3 { scale } => Ok(scale),
                    other => bail!(
                        "{name}: fused parts mix fp8 and {other:?} weights; flint fuses q|k|v \
                         and gate|up into one weight and needs one format"
                    ),
                })
                .collect::<Result<_>>()?;
            let (layout, scales) = if let Fp8Scale::Block { bn, bk } = layouts[0] {
                for (i, (p, l)) in parts.iter().zip(&layouts).enumerate() {
                    ensure!(
                        *l == layouts[0],
                        "{name}: fused parts have different fp8 scale layouts ({l:?} and {:?})",
                        layouts[0]
                    );
                    ensure!(
                        i + 1 == parts.len() || p.n % bn == 0,
                        "{name}: fused part {i} has {} rows, not a multiple of the fp8 block \
                         height {bn}, so its last scale block would straddle two projections",
                        p.n
                    );
                }
                let s = parts.iter().flat_map(|p| p.scales.iter().copied());
                (Fp8Scale::Block { bn, bk }, s.collect())
            } else {
                ensure!(
                    layouts.iter().all(|l| !matches!(l, Fp8Scale::Block { .. })),
                    "{name}: fused parts mix block-scaled and per-tensor/per-row fp8 weights"
                );
                let first = parts[0].scales[0];
                let all_tensor = layouts.iter().all(|l| *l == Fp8Scale::Tensor);
                if all_tensor
                    && parts
                        .iter()
                        .all(|p| p.scales[0].to_bits() == first.to_bits())
                {
                    (Fp8Scale::Tensor, vec![first])
                } else {
                    let mut s = Vec::with_capacity(n);
                    for (p, l) in parts.iter().zip(&layouts) {
                        match l {
                            Fp8Scale::Tensor => s.extend(std::iter::repeat_n(p.scales[0], p.n)),
                            _ => s.extend_from_slice(&p.scales),
                        }
                    }
                    (Fp8Scale::Channel, s)
                }
            };
            QuantWeight {
                n,
                k,
                scheme: QuantScheme::Fp8E4M3 { scale: layout },
                qdata,
                scales,
                zeros: None,
                g_idx: None,
            }
        }
    };
    out.validate(name)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight with a spread of magnitudes, exact zeros and rows of different ranges.
    fn weight(n: usize, k: usize) -> Vec<f32> {
        let mut rng = crate::sampling::Rng::new(11);
        (0..n * k)
            .map(|i| {
                let v = (rng.next_f32() * 2.0 - 1.0) * (1 + i / k % 5) as f32;
                if i % 97 == 0 {
                    0.0
                } else {
                    v * 10f32.powi((i % 7) as i32 - 4)
                }
            })
            .collect()
    }

    /// Quantizing on several threads gives the one-thread result bit for bit: 7 rows over 2,
    /// 3 and 4 threads leave blocks of unequal length.
    #[test]
    fn threads_do_not_change_the_codes() {
        let (n, k) = (7, 256);
        let w = weight(n, k);
        let one = par::even_blocks(n, 1);
        for t in [2, 3, 4] {
            let b = par::even_blocks(n, t);
            assert!(b.iter().any(|r| r.len() != b[0].len()), "{b:?}");
            for group in [k, 64] {
                assert_eq!(
                    quantize_int8_blocks(&w, n, k, group, &b).unwrap(),
                    quantize_int8_blocks(&w, n, k, group, &one).unwrap(),
                    "int8 g{group}, {t} threads"
                );
            }
            for symmetric in [true, false] {
                assert_eq!(
                    quantize_int4_blocks(&w, n, k, 32, symmetric, &b).unwrap(),
                    quantize_int4_blocks(&w, n, k, 32, symmetric, &one).unwrap(),
                    "int4 symmetric {symmetric}, {t} threads"
                );
            }
            for per_channel in [true, false] {
                assert_eq!(
                    quantize_fp8_blocks(&w, n, k, per_channel, &b).unwrap(),
                    quantize_fp8_blocks(&w, n, k, per_channel, &one).unwrap(),
                    "fp8 per channel {per_channel}, {t} threads"
                );
            }
        }
        // The public entry points, on as many threads as this machine gives them.
        let (n, k) = (1001, 512);
        let w = weight(n, k);
        let one = par::even_blocks(n, 1);
        assert_eq!(
            quantize_int8(&w, n, k, k).unwrap(),
            quantize_int8_blocks(&w, n, k, k, &one).unwrap()
        );
        assert_eq!(
            quantize_int4(&w, n, k, 128, false).unwrap(),
            quantize_int4_blocks(&w, n, k, 128, false, &one).unwrap()
        );
        assert_eq!(
            quantize_fp8(&w, n, k, true).unwrap(),
            quantize_fp8_blocks(&w, n, k, true, &one).unwrap()
        );
    }

    #[test]
    fn the_first_non_finite_element_is_named_whatever_the_blocks() {
        let (n, k) = (7, 8);
        let mut w = weight(n, k);
        w[5 * k + 3] = f32::NAN;
        w[6 * k] = f32::INFINITY;
        for t in [1, 3, 7] {
            let e = quantize_int8_blocks(&w, n, k, k, &par::even_blocks(n, t)).unwrap_err();
            assert!(e.to_string().contains("[5, 3] is NaN"), "{e}");
        }
    }
}
