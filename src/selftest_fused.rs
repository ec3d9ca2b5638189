//! The fused GEMV inputs and outputs (`Backend::matmul_ex`; kernels/gemv/fuse.cuh) on the GPU,
//! at Llama-3-8B's decode shapes, in the roles the decoder gives them: q|k|v and gate|up with
//! the pre-norm as input, o with the residual add as output, down with act·mul as input and the
//! residual add. Each case runs the GPU twice, fused (`set_fuse(true)`, checked to take the
//! fused GEMV) and unfused (the rms_norm / act_mul kernels, then the plain matmul), and
//! reports two rows: fused against the CPU reference at OP_TOL, and fused against unfused at
//! FUSED_TOL (the same roundings: at these shapes the two should agree bit for bit).
//! gate|up is also run in the decoder's other role, the act·mul output (`MatOut::ActMul`, the
//! GEMV epilogue of `FLINT_FUSE_OUT`; bf16, and the quantized q|k|v shape on the tensor-core
//! GEMV at 1 and 8 tokens): fused (`set_fuse_out(true)`) against the CPU at OP_TOL and
//! against unfused (the plain GEMV, then act_mul) at ACT_OUT_TOL; the input fusion is off for
//! both. UNVERIFIED: not yet run on a GPU.
//! o (bf16, 1 / 2 / 8 tokens on the GEMV) and the quantized down shape (the tensor-core GEMV
//! at 1 and 8 tokens) also run as the output norm (`MatOut::AddToNorm`, the last CTA writing
//! the next pre-norm; `FLINT_FUSE_OUT`): the new residual and the norm, fused against the CPU
//! at OP_TOL and against unfused (the add, then rms_norm_bf16) bit for bit. UNVERIFIED too.

use super::{Case, Tester, OP_TOL};
use crate::backend::cpu::CpuTensor;
use crate::backend::cuda::quant::QuantForce;
use crate::backend::cuda::{dense_path, CudaTensor, DensePath};
use crate::backend::{Backend, MatIn, MatOut};
use crate::config::Activation;
use anyhow::{bail, Result};

/// Fused against unfused on the GPU (rel-L2).
const FUSED_TOL: f64 = 1e-3;

/// What a case feeds the matmul and where its result goes.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// `MatIn::Norm`, `MatOut::Write` (q|k|v, gate|up, lm_head).
    NormWrite,
    /// `MatIn::Plain`, `MatOut::AddTo` (o).
    PlainAdd,
    /// `MatIn::ActMul`, `MatOut::AddTo` (down).
    ActAdd(Activation),
    /// `MatIn::Norm`, `MatOut::ActMul` (gate|up writing act(gate) * up; switched by
    /// `set_fuse_out`).
    NormActOut(Activation),
    /// `MatIn::Plain`, `MatOut::AddToNorm` (o or down adding into the residual and writing
    /// the next pre-norm; switched by `set_fuse_out`).
    PlainAddNorm,
}

/// Fused against unfused for the act·mul output: bit for bit (the same roundings by design).
const ACT_OUT_TOL: f64 = 0.0;

impl Tester<'_> {
    pub(super) fn fused_cases(&self, quick: bool) -> Vec<Case> {
        // (name, n, k, role): Llama-3-8B's projections.
        let shapes: &[(&str, usize, usize, Role)] = &[
            ("qkv", 6144, 4096, Role::NormWrite),
            ("o", 4096, 4096, Role::PlainAdd),
            ("gate_up", 28672, 4096, Role::NormWrite),
            ("down", 4096, 14336, Role::ActAdd(Activation::Silu)),
        ];
        // Quantized: the shapes the quant matmul cases quantize (q|k|v and down), a format each.
        let schemes: &[&str] = if quick {
            &["bf16", "int4 sym g128"]
        } else {
            &["bf16", "int8 channel", "int4 sym g128", "fp8 channel"]
        };
        // The cases switch fusion on and off; the end-to-end cases after them run the
        // backend's configured choice.
        let configured = self.gpu.fuse();
        let configured_out = self.gpu.fuse_out();
        let mut out = Vec::new();
        for &what in schemes {
            for &(name, n, k, role) in shapes {
                let dense = what == "bf16";
                if !dense && !matches!(name, "qkv" | "down") {
                    continue;
                }
                // A gelu down too, once (the activations share one code path otherwise).
                let roles: Vec<Role> = match role {
                    Role::ActAdd(_) if dense && !quick => vec![
                        role,
                        Role::ActAdd(Activation::GeluTanh),
                        Role::ActAdd(Activation::Gelu),
                    ],
                    // gate|up's act·mul output (the decoder's default role for it), each
                    // activation but in the quick run.
                    _ if dense && name == "gate_up" => {
                        let acts: &[Activation] = if quick {
                            &[Activation::Silu]
                        } else {
                            &[Activation::Silu, Activation::GeluTanh, Activation::Gelu]
                        };
                        let mut v = vec![role];
                        v.extend(acts.iter().map(|&a| Role::NormActOut(a)));
                        v
                    }
                    // Quantized q|k|v (an even N) in the act·mul output role too: the
                    // tensor-core GEMV's epilogue (kernels/quant_gemv_tc.cu).
                    _ if !dense && name == "qkv" => {
                        vec![role, Role::NormActOut(Activation::Silu)]
                    }
                    // The output norm: dense o, quantized down (the tensor-core GEMV).
                    _ if (dense && name == "o") || (!dense && name == "down") => {
                        vec![role, Role::PlainAddNorm]
                    }
                    _ => vec![role],
                };
                let w = self.data(n * k, 1.0 / (k as f32).sqrt());
                let weights = if dense {
                    self.cpu
                        .upload_weight(name, &w, n, k)
                        .and_then(|c| Ok((c, self.gpu.tensor_from(&w, n, k)?)))
                } else {
                    super::quant_weight(what, &w, n, k).and_then(|q| {
                        Ok((
                            self.cpu.upload_quantized(what, &q)?,
                            self.gpu.upload_quantized(what, &q)?,
                        ))
                    })
                };
                // bf16: 1 token (the default GEMV), 2 and 8 (forced); quantized (GEMV forced): 1 and 8 (one
                // GEMV pass), 9 (two passes: the second's x starts 8 rows in).
                let tokens: &[usize] = match (dense, quick) {
                    (true, true) => &[1],
                    (true, false) => &[1, 2, 8],
                    (false, true) => &[1, 9],
                    (false, false) => &[1, 8, 9],
                };
                for role in roles {
                    for &t in tokens {
                        let act_out = matches!(role, Role::NormActOut(_) | Role::PlainAddNorm);
                        if !dense && act_out && t > 8 {
                            continue; // the tensor-core GEMV takes 1..=8 tokens
                        }
                        let bias = t != 8;
                        let label =
                            format!("{what} {name} [{n}, {k}] {role:?} tokens {t} bias {bias}");
                        let r = match &weights {
                            Ok((wc, wg)) => {
                                // Fusion lives in the GEMV: force it (by default 2..=64
                                // quantized tokens take quant_mma or the tensor-core GEMV,
                                // which fuse no input); a quantized act·mul output is the
                                // tensor-core GEMV's.
                                let quant_before = self.gpu.quant_path_override();
                                if dense {
                                    self.gpu.set_dense_path(Some(DensePath::Gemv));
                                } else if act_out {
                                    self.gpu.set_quant_path(Some(QuantForce::GemvTc));
                                } else {
                                    self.gpu.set_quant_path(Some(QuantForce::Gemv));
                                }
                                let r = self.fused_matmul(wc, wg, role, t, bias);
                                self.gpu.set_dense_path(None);
                                self.gpu.set_quant_path(quant_before);
                                let restored = self
                                    .gpu
                                    .set_fuse(configured)
                                    .and_then(|_| self.gpu.set_fuse_out(configured_out));
                                r.and_then(|e| {
                                    restored?;
                                    self.gpu.synchronize()?;
                                    Ok(e)
                                })
                            }
                            Err(e) => Err(anyhow::anyhow!("building the weight: {e:#}")),
                        };
                        let (cpu, unfused) = match r {
                            Ok((a, b)) => (Ok(a), Ok(b)),
                            Err(e) => {
                                let s = format!("{e:#}");
                                (Err(s.clone()), Err(s))
                            }
                        };
                        let tol = match role {
                            Role::NormActOut(_) | Role::PlainAddNorm => ACT_OUT_TOL,
                            _ => FUSED_TOL,
                        };
                        out.push(case("fused matmul", label.clone(), OP_TOL, cpu));
                        out.push(case("fused=unfused", label, tol, unfused));
                    }
                }
            }
        }
        out
    }

    /// One role on both backends: (fused GPU vs CPU, fused GPU vs unfused GPU).
    fn fused_matmul(
        &self,
        wc: &CpuTensor,
        wg: &CudaTensor,
        role: Role,
        t: usize,
        bias: bool,
    ) -> Result<(f64, f64)> {
        let (n, k) = (wc.rows, wc.cols);
        if !wg.is_quantized() && dense_path(t, n, k, Some(DensePath::Gemv)) != DensePath::Gemv {
            bail!("{t} tokens do not take the GEMV");
        }
        let x_cols = if matches!(role, Role::ActAdd(_)) {
            2 * k
        } else {
            k
        };
        let x = self.input(t, x_cols, if x_cols == k { 1.0 } else { 1.5 })?;
        let nw = self.input(1, k, 0.5)?;
        // The output norm's weight (over the n outputs).
        let add_norm = matches!(role, Role::PlainAddNorm);
        let nwn = self.input(1, if add_norm { n } else { 1 }, 0.5)?;
        let b = self.input(1, n, 0.5)?;
        let b = bias.then_some(&b);
        let residual = self.data(t * n, 2.0);
        // The act·mul output: [t, n / 2], the product [t, n] in its scratch.
        let act_out = match role {
            Role::NormActOut(a) => Some(a),
            _ => None,
        };
        let out_cols = if act_out.is_some() { n / 2 } else { n };
        // The CPU reference.
        let mut c_scratch = self.cpu.alloc(t, k)?;
        let mut c_product = self.cpu.alloc(t, n)?;
        let mut c_out = match act_out {
            Some(_) => self.cpu.alloc(t, out_cols)?,
            None => self.cpu.upload_weight("residual", &residual, t, n)?,
        };
        let mut c_h = self.cpu.alloc(t, n)?;
        match role {
            Role::NormWrite => self.cpu.matmul_ex(
                MatIn::Norm {
                    x: &x.cpu,
                    w: &nw.cpu,
                    eps: 1e-5,
                    offset: 0.0,
                    scratch: &mut c_scratch,
                },
                wc,
                b.map(|b| &b.cpu),
                MatOut::Write(&mut c_out),
            )?,
            Role::PlainAdd => self.cpu.matmul_ex(
                MatIn::Plain(&x.cpu),
                wc,
                b.map(|b| &b.cpu),
                MatOut::AddTo(&mut c_out),
            )?,
            Role::ActAdd(act) => self.cpu.matmul_ex(
                MatIn::ActMul {
                    gate_up: &x.cpu,
                    act,
                    scratch: &mut c_scratch,
                },
                wc,
                b.map(|b| &b.cpu),
                MatOut::AddTo(&mut c_out),
            )?,
            Role::NormActOut(act) => self.cpu.matmul_ex(
                MatIn::Norm {
                    x: &x.cpu,
                    w: &nw.cpu,
                    eps: 1e-5,
                    offset: 0.0,
                    scratch: &mut c_scratch,
                },
                wc,
                b.map(|b| &b.cpu),
                MatOut::ActMul {
                    out: &mut c_out,
                    act,
                    scratch: &mut c_product,
                },
            )?,
            Role::PlainAddNorm => self.cpu.matmul_ex(
                MatIn::Plain(&x.cpu),
                wc,
                b.map(|b| &b.cpu),
                MatOut::AddToNorm {
                    out: &mut c_out,
                    w: &nwn.cpu,
                    eps: 1e-5,
                    offset: 0.0,
                    h: &mut c_h,
                },
            )?,
        }
        // The GPU, fused then unfused, each from the same residual into a poisoned scratch.
        // The act·mul output and the output norm switch the fused output (set_fuse_out), the
        // inputs unfused.
        let run = |fuse: bool| -> Result<(CudaTensor, CudaTensor)> {
            if act_out.is_some() || add_norm {
                self.gpu.set_fuse(false)?;
                self.gpu.set_fuse_out(fuse)?;
                let takes = if add_norm {
                    self.gpu.fuses_norm_out(wg, t)
                } else {
                    self.gpu.fuses_act_out(wg, t)
                };
                if takes != fuse {
                    bail!(
                        "set_fuse_out({fuse}) but the backend says it would fuse: {}",
                        !fuse
                    );
                }
            } else {
                self.gpu.set_fuse(fuse)?;
            }
            if matches!(role, Role::NormWrite | Role::ActAdd(_))
                && self.gpu.fuses_input(wg, t) != fuse
            {
                bail!(
                    "set_fuse({fuse}) but the backend says it would fuse: {}",
                    !fuse
                );
            }
            let mut scratch = self.gpu.alloc(t, k)?;
            self.gpu.poison(&mut scratch)?;
            let mut product = self.gpu.alloc(t, n)?;
            self.gpu.poison(&mut product)?;
            let mut h = self.gpu.alloc(t, n)?;
            self.gpu.poison(&mut h)?;
            let mut out = if act_out.is_some() {
                let mut o = self.gpu.alloc(t, out_cols)?;
                self.gpu.poison(&mut o)?;
                o
            } else {
                self.gpu.tensor_from(&residual, t, n)?
            };
            let bg = b.map(|b| &b.gpu);
            match role {
                Role::NormWrite => self.gpu.matmul_ex(
                    MatIn::Norm {
                        x: &x.gpu,
                        w: &nw.gpu,
                        eps: 1e-5,
                        offset: 0.0,
                        scratch: &mut scratch,
                    },
                    wg,
                    bg,
                    MatOut::Write(&mut out),
                )?,
                Role::PlainAdd => {
                    self.gpu
                        .matmul_ex(MatIn::Plain(&x.gpu), wg, bg, MatOut::AddTo(&mut out))?
                }
                Role::ActAdd(act) => self.gpu.matmul_ex(
                    MatIn::ActMul {
                        gate_up: &x.gpu,
                        act,
                        scratch: &mut scratch,
                    },
                    wg,
                    bg,
                    MatOut::AddTo(&mut out),
                )?,
                Role::NormActOut(act) => self.gpu.matmul_ex(
                    MatIn::Norm {
                        x: &x.gpu,
                        w: &nw.gpu,
                        eps: 1e-5,
                        offset: 0.0,
                        scratch: &mut scratch,
                    },
                    wg,
                    bg,
                    MatOut::ActMul {
                        out: &mut out,
                        act,
                        scratch: &mut product,
                    },
                )?,
                Role::PlainAddNorm => self.gpu.matmul_ex(
                    MatIn::Plain(&x.gpu),
                    wg,
                    bg,
                    MatOut::AddToNorm {
                        out: &mut out,
                        w: &nwn.gpu,
                        eps: 1e-5,
                        offset: 0.0,
                        h: &mut h,
                    },
                )?,
            }
            Ok((out, h))
        };
        let (fused, fused_h) = run(true)?;
        let (unfused, unfused_h) = run(false)?;
        let mut vs_cpu = self.compare(&c_out, &fused)?;
        let (f, u) = (self.gpu.to_host(&fused)?, self.gpu.to_host(&unfused)?);
        let mut vs_unfused = super::rel_l2(&f, &u);
        if add_norm {
            // The norm too (the residual above): against the CPU and bit for bit.
            vs_cpu = vs_cpu.max(self.compare(&c_h, &fused_h)?);
            let (f, u) = (self.gpu.to_host(&fused_h)?, self.gpu.to_host(&unfused_h)?);
            vs_unfused = vs_unfused.max(super::rel_l2(&f, &u));
        }
        Ok((vs_cpu, vs_unfused))
    }
}

fn case(group: &'static str, name: String, tol: f64, r: std::result::Result<f64, String>) -> Case {
    Case::of(group, name, tol, r)
}
