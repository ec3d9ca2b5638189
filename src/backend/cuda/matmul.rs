//! `Backend::matmul_ex` on the GPU: the one place that decides whether a matmul's computed
//! input (the pre-norm, the activation) is fused into the GEMV's x staging
//! (`kernels/gemv/fuse.cuh`) or materialized first by `rms_norm_bf16` / `act_mul_bf16_*`.
//! It fuses exactly where the matmul runs a GEMV: `gemm::dense_path` for bf16 weights,
//! `quant::quant_path` for quantized ones (so those two stay the only path choices), and
//! only while fusion is on (`FLINT_FUSE`, `CudaBackend::set_fuse`). The residual add
//! (`MatOut::AddTo`) is always the matmul's own: the GEMV's epilogue, or cuBLASLt's beta = 1.
//! The act·mul output (`MatOut::ActMul`, the gate|up matmul writing `act(gate) * up`) is the
//! dense GEMV's epilogue where the bf16 weight takes the GEMV, or the tensor-core quantized
//! GEMV's, and `FLINT_FUSE_OUT` is on (the default, [`FUSE_OUT_DEFAULT`]); elsewhere
//! (cuBLASLt, the other quantized paths, switched off) the product goes to the scratch and
//! `act_mul_bf16_*` runs after it. UNVERIFIED on a GPU. The output norm (`MatOut::AddToNorm`,
//! the o and down matmuls writing the next pre-norm too) is the last CTA's work in the same
//! GEMVs under the same switch (`fuses_norm_out`); elsewhere `rms_norm_bf16` runs after the
//! add. UNVERIFIED on a GPU as well.
//! On an H200 (2026-11-28) the fused GEMVs matched the CPU and their unfused twins (bf16 at
//! 1, 2 and 8 tokens, the quantized formats at 1) but ran the decode 5-6.5% slower, so fusion
//! is off unless asked for ([`FUSE_DEFAULT`]).

use super::super::gemm::{DensePath, GemvIn, GemvOut, OutNorm};
use super::{CudaBackend, CudaTensor};
use crate::backend::{unfused_act_mul_out, unfused_add_norm, unfused_input, MatIn, MatOut};
use anyhow::{bail, Result};

/// The environment variable that turns the fused GEMV inputs and decode attention's fused
/// rope prologue (`rope_attention`) on (`1`) or off (`0`, the default), read once when a
/// `CudaBackend` starts.
pub const FUSE_ENV: &str = "FLINT_FUSE";

/// Whether a backend starts fused when `FLINT_FUSE` is unset: no. On the H200
/// (bench/results/2026-11-28-h200-core) `tg128+graphs+unfused` ran 6.5% faster than the
/// fused `tg128+graphs` at batch 1 (213.5 against 200.4 tok/s) and 5% at batch 32: each fused
/// GEMV recomputes its norm or act·mul per CTA before its first product, which lengthens
/// exactly the latency a one-token GEMV is bound by, by more than the ~2-3 µs kernel and
/// boundary it saves (bench/NOTES.md, prediction 10's outcome).
pub const FUSE_DEFAULT: bool = false;

/// `FLINT_FUSE`'s value: `0` or `1` (empty: the default, [`FUSE_DEFAULT`]); anything else is
/// an error naming the choices.
pub fn parse_fuse(v: &str) -> Result<bool> {
    match v.trim() {
        "" => Ok(FUSE_DEFAULT),
        "1" => Ok(true),
        "0" => Ok(false),
        other => bail!("{FUSE_ENV}={other:?}: expected 0 (unfused: rms_norm, act_mul and rope_kv_write kernels, the default) or 1 (fused into the GEMVs and decode attention)"),
    }
}

/// The environment variable that turns the fused outputs on (`1`, the default) or off (`0`),
/// read once when a `CudaBackend` starts: the act·mul output (`MatOut::ActMul` in the GEMV's
/// epilogue: the gate|up GEMV writes `act(gate) * up`, no `act_mul_bf16_*` kernel runs) and
/// the output norm (`MatOut::AddToNorm`: the o / down GEMV's last CTA writes the next
/// pre-norm, no `rms_norm_bf16` kernel runs). Apart from `FLINT_FUSE` (the inputs).
pub const FUSE_OUT_ENV: &str = "FLINT_FUSE_OUT";

/// Whether a backend starts with the fused outputs when `FLINT_FUSE_OUT` is unset: yes.
/// UNVERIFIED on a GPU: they compile (0 spills) and their host emulations match the unfused
/// path bit for bit (tests/fused_gemv_emulation, tests/quant_mma_emulation); the predicted
/// saving is the `act_mul` kernel and both `rms_norm` kernels of a one-token decode layer,
/// ~2-3 µs each in a graph, ~0.2-0.3 ms of the 4.68 ms batch-1 Llama-3-8B step on an H200
/// (bench/NOTES.md, predictions 22 and 25). Unlike the fused inputs they add no work before
/// the first product: the act·mul is one activation per output in the epilogue, the norm the
/// last CTA's work after its own rows (what the norm kernel did, without its launch).
pub const FUSE_OUT_DEFAULT: bool = true;

/// `FLINT_FUSE_OUT`'s value: `0` or `1` (empty: the default, [`FUSE_OUT_DEFAULT`]); anything
/// else is an error naming the choices.
pub fn parse_fuse_out(v: &str) -> Result<bool> {
    match v.trim() {
        "" => Ok(FUSE_OUT_DEFAULT),
        "1" => Ok(true),
        "0" => Ok(false),
        other => bail!("{FUSE_OUT_ENV}={other:?}: expected 1 (act(gate) * up and the next pre-norm in the GEMVs' epilogues, the default) or 0 (act_mul and rms_norm kernels after them)"),
    }
}

impl CudaBackend {
    /// Whether a `[tokens, k] x w^T` matmul into `MatOut::ActMul` computes the act·mul in the
    /// GEMV's epilogue now (else: the product into the scratch, then `act_mul_bf16_*`): bf16
    /// weights on the GEMV path (`gemm::dense_path`), an even N, `FLINT_FUSE_OUT` on.
    /// Quantized weights do where they take the tensor-core GEMV (`quant::QuantPath::GemvTc`,
    /// kernels/quant_gemv_tc.cu; UNVERIFIED on a GPU).
    pub fn fuses_act_out(&self, w: &CudaTensor, tokens: usize) -> bool {
        w.rows % 2 == 0 && self.fuses_norm_out(w, tokens)
    }

    /// Whether a `[tokens, k] x w^T` matmul into `MatOut::AddToNorm` computes the norm in the
    /// GEMV's epilogue now (the last CTA: `GemvFuse::norm_out`; else `AddTo`, then
    /// `rms_norm_bf16`): where the act·mul output would be (`fuses_act_out`'s paths and
    /// switch, `FLINT_FUSE_OUT`), any N.
    pub fn fuses_norm_out(&self, w: &CudaTensor, tokens: usize) -> bool {
        self.fuse_out.get()
            && match &w.quant {
                Some(q) => {
                    self.quant_kernels().path(q.layout(), tokens)
                        == super::super::quant::QuantPath::GemvTc
                }
                None => matches!(
                    self.gemm.path(tokens, w.rows, w.cols),
                    DensePath::Gemv | DensePath::GemvTc
                ),
            }
    }

    /// Whether a `[tokens, k] x w^T` matmul with a computed input runs it fused into the
    /// GEMV now (else: materialized by its own kernel, then the plain matmul).
    pub fn fuses_input(&self, w: &CudaTensor, tokens: usize) -> bool {
        if !self.fuse.get() {
            return false;
        }
        match &w.quant {
            Some(q) => super::super::quant::is_gemv(self.quant_kernels(), q, tokens),
            None => self.gemm.path(tokens, w.rows, w.cols) == DensePath::Gemv,
        }
    }

    pub(super) fn matmul_ex_impl(
        &self,
        input: MatIn<'_, CudaTensor, CudaTensor>,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: MatOut<'_, CudaTensor, CudaTensor>,
    ) -> Result<()> {
        let (kk, n) = (w.cols, w.rows);
        // x's rows and columns, checked against the weight (ActMul: gate|up, twice K).
        let (rows, x_cols, want_cols) = match &input {
            MatIn::Plain(x) => (x.rows, x.cols, kk),
            MatIn::Norm { x, w: nw, .. } => {
                if nw.len() != kk {
                    bail!(
                        "matmul_ex: norm weight has {} values for K = {kk}",
                        nw.len()
                    );
                }
                (x.rows, x.cols, kk)
            }
            MatIn::ActMul { gate_up, .. } => (gate_up.rows, gate_up.cols, 2 * kk),
        };
        if x_cols != want_cols {
            bail!("matmul_ex: x is [{rows}, {x_cols}], weight [{n}, {kk}] (x needs {want_cols} columns)");
        }
        if let Some(b) = bias {
            if b.len() != n {
                bail!("matmul_ex: bias has {} values for {n} outputs", b.len());
            }
        }
        let fused_in = self.fuses_input(w, rows);
        let (out, mut epi, norm_out) = match out {
            MatOut::Write(o) => (o, GemvOut::default(), None),
            MatOut::AddTo(o) => (
                o,
                GemvOut {
                    add: true,
                    ..GemvOut::default()
                },
                None,
            ),
            MatOut::ActMul { out, act, scratch } => {
                if !self.fuses_act_out(w, rows) {
                    // The product into the scratch, then act_mul (each checks its shapes).
                    return unfused_act_mul_out(self, input, w, bias, (out, act, scratch));
                }
                let epi = GemvOut {
                    act: Some(act),
                    ..GemvOut::default()
                };
                (out, epi, None)
            }
            MatOut::AddToNorm {
                out,
                w: nw,
                eps,
                offset,
                h,
            } => {
                // Not with a fused input norm (the kernels' one set of norm fields).
                let fused_norm_in = fused_in && matches!(input, MatIn::Norm { .. });
                if !self.fuses_norm_out(w, rows) || fused_norm_in {
                    // AddTo, then rms_norm (each checks its shapes).
                    let out = (out, nw, eps, offset, h);
                    return unfused_add_norm(self, input, w, bias, out);
                }
                if nw.len() != n {
                    bail!(
                        "matmul_ex: output norm weight has {} values for N = {n}",
                        nw.len()
                    );
                }
                let epi = GemvOut {
                    add: true,
                    ..GemvOut::default()
                };
                (out, epi, Some((nw, eps, offset, h)))
            }
        };
        let out_cols = if epi.act.is_some() { n / 2 } else { n };
        if out.cols != out_cols {
            bail!(
                "matmul_ex: weight [{n}, {kk}], output has {} columns (expected {out_cols})",
                out.cols
            );
        }
        if epi.add {
            if out.rows != rows {
                bail!(
                    "matmul_ex: adding [{rows}, {n}] to an output of {} rows",
                    out.rows
                );
            }
        } else {
            out.set_rows(rows, "matmul")?;
        }
        if rows == 0 || n == 0 {
            return Ok(());
        }
        if kk == 0 {
            // cuBLASLt rejects K = 0; the product is the bias (or zeros).
            bail!("matmul: weight has no input features");
        }
        if let Some((nw, eps, offset, h)) = norm_out {
            h.set_rows(rows, "matmul (output norm)")?;
            if h.cols != n {
                bail!(
                    "matmul_ex: the output norm's h has {} columns for N = {n}",
                    h.cols
                );
            }
            epi.norm = Some(OutNorm {
                w: self.ptr(&nw.buf),
                eps,
                offset,
                out: self.ptr(&h.buf),
                done: self.ptr(&self.norm_done),
            });
        }
        let fused = fused_in;
        // The GEMV's input mode, and the tensor it reads (materialized when not fused; the
        // materializing ops do their own replay check).
        let (x, mode): (&CudaTensor, GemvIn) = match input {
            MatIn::Plain(x) => (x, GemvIn::Plain),
            MatIn::Norm {
                x,
                w: nw,
                eps,
                offset,
                ..
            } if fused => (
                x,
                GemvIn::Norm {
                    w: self.ptr(&nw.buf),
                    eps,
                    offset,
                },
            ),
            MatIn::ActMul { gate_up, act, .. } if fused => (gate_up, GemvIn::ActMul(act)),
            unfused => (unfused_input(self, unfused)?, GemvIn::Plain),
        };
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        if let Some(q) = &w.quant {
            // out_act only where fuses_act_out chose the tensor-core GEMV.
            return super::super::quant::matmul(self, x, mode, rows, q, bias, out, epi);
        }
        self.gemm.dense(
            &x.buf,
            mode,
            &w.buf,
            bias.map(|b| &b.buf),
            &mut out.buf,
            epi,
            (rows, n, kk),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_switch_parses_and_rejects_with_the_choices() {
        assert!(parse_fuse("1").unwrap());
        assert!(!parse_fuse("").unwrap(), "unset is unfused (FUSE_DEFAULT)");
        assert!(!parse_fuse(" 0 ").unwrap());
        let e = parse_fuse("yes").unwrap_err().to_string();
        assert!(e.contains("FLINT_FUSE") && e.contains("expected 0"), "{e}");
    }

    #[test]
    fn fuse_out_switch_parses_and_rejects_with_the_choices() {
        assert!(
            parse_fuse_out("").unwrap(),
            "unset is fused (FUSE_OUT_DEFAULT)"
        );
        assert!(parse_fuse_out(" 1").unwrap());
        assert!(!parse_fuse_out("0").unwrap());
        let e = parse_fuse_out("on").unwrap_err().to_string();
        assert!(
            e.contains("FLINT_FUSE_OUT") && e.contains("expected 1") && e.contains("or 0"),
            "{e}"
        );
    }
}
