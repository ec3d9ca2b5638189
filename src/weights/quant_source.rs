//! Quantized weights into the decoder: the two sources `model.rs` reads linear weights
//! through when they are quantized.
//!
//! * [`QuantStore`]: a published quantized checkpoint (config.json has `quantization_config`).
//!   A linear weight whose `{prefix}.weight` is a float tensor is dense (what the format left
//!   unquantized: embeddings, norms, routers, usually lm_head, anything in an `ignore` list);
//!   otherwise it is read by the importer of the checkpoint's format (`quant::load_quantized`).
//! * [`QuantizeOnLoad`]: `--quant int8|int4[-asym][-g<group>]|fp8` on an f32/f16/bf16 checkpoint or a
//!   synthetic model: every decoder linear weight (attention, MLP, experts, shared experts) is
//!   quantized with round-to-nearest as it is read. Embeddings, norms and routers stay dense.
//!   A separate lm_head gets 8 bits whatever the body's width ([`HeadQuant::Auto`]: int8 per
//!   channel under int8 and int4, fp8 per channel under fp8), as llama.cpp gives its output
//!   tensor more bits than a 4-bit body: it is the most error-sensitive matrix, and at batch 1
//!   its 1.05 GB of bf16 (Llama-3-8B) would be a fifth of an int4 step's bytes.
//!   `--lm-head bf16` keeps it as loaded; a head tied to the embeddings always stays dense.
//!
//! Every scheme flint quantizes on load is per output row (int8 per channel, int4 group-wise
//! along K, fp8 per channel), so quantizing the fused q|k|v or a stacked `[E·2I, D]` expert
//! tensor equals quantizing each part on its own and stacking.

use super::quant::{
    concat_rows, load_quantized, quantize_fp8, quantize_int4, quantize_int8, Linear, QuantConfig,
};
use super::{names, TensorSource, WeightStore};
use anyhow::{bail, ensure, Result};
use std::fmt;
use std::str::FromStr;

/// What `--quant` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMode {
    /// Symmetric int8, one scale per output channel.
    Int8,
    /// int4 with one scale per `group` inputs along K (`None`: 128, or see [`int4_group`]
    /// where 128 does not divide K); symmetric, or asymmetric with an integer zero point per
    /// group.
    Int4 {
        symmetric: bool,
        group: Option<usize>,
    },
    /// fp8 e4m3, one scale per output channel.
    Fp8,
}

impl FromStr for QuantMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "--quant `{s}` is not one of int8, int4[-asym][-g<group>] (e.g. int4, \
                 int4-asym-g64, int4-g32), fp8"
            )
        };
        Ok(match s {
            "int8" => QuantMode::Int8,
            "fp8" => QuantMode::Fp8,
            _ => {
                let mut parts = s.split('-');
                if parts.next() != Some("int4") {
                    return Err(bad());
                }
                let (mut symmetric, mut group) = (true, None);
                for p in parts {
                    match p {
                        "asym" => symmetric = false,
                        "sym" => symmetric = true,
                        g => {
                            let n: usize = g
                                .strip_prefix('g')
                                .and_then(|n| n.parse().ok())
                                .ok_or_else(bad)?;
                            ensure!(
                                n > 0 && n % 2 == 0,
                                "--quant `{s}`: the int4 group must be even and positive"
                            );
                            group = Some(n);
                        }
                    }
                }
                QuantMode::Int4 { symmetric, group }
            }
        })
    }
}

impl fmt::Display for QuantMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantMode::Int8 => f.write_str("int8"),
            QuantMode::Fp8 => f.write_str("fp8"),
            QuantMode::Int4 { symmetric, group } => {
                f.write_str(if *symmetric { "int4" } else { "int4-asym" })?;
                match group {
                    Some(g) => write!(f, "-g{g}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What quantize-on-load does with a separate (untied) lm_head (`--lm-head`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadQuant {
    /// 8 bits in the body's family: int8 per channel under `--quant int8` and `int4`, fp8 per
    /// channel under `--quant fp8`.
    #[default]
    Auto,
    /// As loaded (bf16 on the GPU).
    Bf16,
    /// int8, one scale per output channel.
    Int8,
    /// fp8 e4m3, one scale per output channel.
    Fp8,
}

impl HeadQuant {
    /// How the head is quantized under a body quantized as `body` (`None`: dense).
    pub fn mode(self, body: QuantMode) -> Option<QuantMode> {
        match self {
            HeadQuant::Auto => Some(match body {
                QuantMode::Fp8 => QuantMode::Fp8,
                QuantMode::Int8 | QuantMode::Int4 { .. } => QuantMode::Int8,
            }),
            HeadQuant::Bf16 => None,
            HeadQuant::Int8 => Some(QuantMode::Int8),
            HeadQuant::Fp8 => Some(QuantMode::Fp8),
        }
    }
}

impl FromStr for HeadQuant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => HeadQuant::Auto,
            "bf16" => HeadQuant::Bf16,
            "int8" => HeadQuant::Int8,
            "fp8" => HeadQuant::Fp8,
            _ => bail!("--lm-head `{s}` is not one of auto, bf16, int8, fp8"),
        })
    }
}

impl fmt::Display for HeadQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadQuant::Auto => "auto",
            HeadQuant::Bf16 => "bf16",
            HeadQuant::Int8 => "int8",
            HeadQuant::Fp8 => "fp8",
        })
    }
}

/// How a model is loaded (the Rust API's side of `--quant` and `--lm-head`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Quantize the decoder's linear weights on load (float checkpoints only).
    pub quant: Option<QuantMode>,
    /// With `quant`: what happens to a separate lm_head (ignored without `quant`).
    pub lm_head: HeadQuant,
}

/// The int4 group size `--quant int4` uses for an input width `k`: 128, else 64 or 32, else
/// (widths such as 172) the largest even divisor of `k` up to 128, which the GPU kernels take
/// on their per-code path.
pub fn int4_group(name: &str, k: usize) -> Result<usize> {
    [128, 64, 32]
        .into_iter()
        .chain((2..=128.min(k)).rev())
        .find(|g| g % 2 == 0 && k % g == 0)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--quant int4: `{name}` has {k} input columns; int4 groups need an even width"
            )
        })
}

/// Round-to-nearest quantization of one dense `[rows, cols]` weight as `mode` says.
pub fn quantize(
    mode: QuantMode,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    let q = match mode {
        QuantMode::Int8 => quantize_int8(w, rows, cols, cols),
        QuantMode::Int4 { symmetric, group } => {
            let g = match group {
                Some(g) => {
                    ensure!(
                        cols % g == 0,
                        "--quant {mode}: `{name}` has {cols} input columns, which the int4 \
                         group size {g} does not divide"
                    );
                    g
                }
                None => int4_group(name, cols)?,
            };
            quantize_int4(w, rows, cols, g, symmetric)
        }
        QuantMode::Fp8 => quantize_fp8(w, rows, cols, true),
    };
    q.map(Linear::Quant)
        .map_err(|e| e.context(format!("--quant {mode}: `{name}`")))
}

/// Stacks the parts of a fused projection along rows: dense with dense, quantized with
/// quantized ([`concat_rows`]); a mix is an error naming the first part.
pub fn stack_linear(name: &str, parts: Vec<Linear>) -> Result<Linear> {
    let quantized = parts
        .iter()
        .filter(|p| matches!(p, Linear::Quant(_)))
        .count();
    if quantized == 0 {
        // The first part's buffer grows to hold the rest (growing a large allocation moves no
        // data): a fused gate|up of an 8B model is 470 MB of f32, not worth copying twice.
        let total: usize = parts
            .iter()
            .map(|p| match p {
                Linear::Dense(v) => v.len(),
                Linear::Quant(_) => 0,
            })
            .sum();
        let mut parts = parts.into_iter();
        let mut d = match parts.next() {
            Some(Linear::Dense(v)) => v,
            _ => Vec::new(),
        };
        d.reserve_exact(total - d.len());
        for p in parts {
            if let Linear::Dense(v) = p {
                d.extend(v);
            }
        }
        return Ok(Linear::Dense(d));
    }
    ensure!(
        quantized == parts.len(),
        "{name}: the fused projection mixes quantized and unquantized weights ({quantized} of \
         {} parts quantized); flint fuses them into one weight and needs one format",
        parts.len()
    );
    let q = parts
        .into_iter()
        .filter_map(|p| match p {
            Linear::Quant(q) => Some(q),
            Linear::Dense(_) => None,
        })
        .collect();
    Ok(Linear::Quant(concat_rows(name, q)?))
}

/// A published quantized checkpoint: the store and its parsed `quantization_config`.
pub struct QuantStore {
    pub store: WeightStore,
    pub cfg: QuantConfig,
}

impl TensorSource for QuantStore {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.store.load_f32(name, shape)
    }
    fn contains(&self, name: &str) -> bool {
        self.store.contains(name)
    }
    fn load_linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        if let Ok(info) = self.store.info(name) {
            if info.dtype.is_float() {
                return Ok(Linear::Dense(self.store.load_f32(name, &[rows, cols])?));
            }
        }
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let w = load_quantized(&self.store, prefix, &self.cfg)?;
        ensure!(
            w.n == rows && w.k == cols,
            "quantized weight `{prefix}` is [{}, {}], expected [{rows}, {cols}]",
            w.n,
            w.k
        );
        Ok(Linear::Quant(w))
    }
}

/// Quantize-on-load over any float source.
pub struct QuantizeOnLoad<'a> {
    pub inner: &'a dyn TensorSource,
    pub mode: QuantMode,
    /// How a separate lm_head is quantized (`None`: left dense).
    pub head: Option<QuantMode>,
}

impl TensorSource for QuantizeOnLoad<'_> {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.inner.load(name, shape)
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn load_linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let lin = self.inner.load_linear(name, rows, cols)?;
        let mode = if name == names::LM_HEAD {
            match self.head {
                Some(m) => m,
                None => return Ok(lin),
            }
        } else {
            self.mode
        };
        match lin {
            Linear::Dense(d) => quantize(mode, name, &d, rows, cols),
            Linear::Quant(_) => bail!(
                "--quant {}: `{name}` is already quantized in the checkpoint; quantize-on-load \
                 applies to f32, f16 and bf16 checkpoints only",
                self.mode
            ),
        }
    }
    fn finish_linear(
        &self,
        name: &str,
        data: Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<Linear> {
        quantize(self.mode, name, &data, rows, cols)
    }
}
