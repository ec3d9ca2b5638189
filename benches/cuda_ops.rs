//! criterion benches of flint's dense CUDA kernels through `Backend` on `CudaBackend`, at
//! Llama-3-8B shapes (hidden 4096, 32 q heads / 8 kv heads of 128, intermediate 14336):
//!
//! - `rms_norm_residual/t{1,512,4096}`, `rope_kv_write/t{..}`, `act_mul_silu/t{..}`;
//! - `matmul/{qkv,down}/t{1,8}/{gemv,cublaslt}` (both dense paths forced) and
//!   `matmul_flop/{qkv,down}/t512/cublaslt`;
//! - `attention_decode/b32_c4096` (32 sequences of one new token over 4096 cached keys);
//! - `attention_prefill_flop/t2048/{Fma,Mma}` (one causal sequence, both `PrefillPath`s, Mma
//!   last: it is opt-in and a fault in it cannot cost the other rows);
//! - group `cuda_quant_llama3_8b`: `quant/{qkv,down}/{int8,int4,fp8}/t1/gemv` (decode) and
//!   `t8/{gemv,mma,dequant}` as GB/s, `quant_flop/{qkv,down}/{fmt}/t512/{mma,wgmma,dequant}`
//!   as FLOPs (wgmma only where it runs: sm_90 with the sm_90a image).
//!
//! Throughput: the fewest bytes an op must move (bf16, each input read and each output written
//! once; `flint bench-ops`' formula for matmul and attention), shown as GB/s; ids with `_flop`
//! report FLOPs as elements (read "elem/s" as FLOP/s). Matmul weights are rotated past the L2
//! as in `flint bench-ops`; norm/rope/act inputs are not, so at 1 and 512 rows they sit in the
//! L2 (50 MB on an H100) and those rows time launch latency and the L2, not device memory.
//!
//! Each sample enqueues its iterations back to back and synchronizes the stream before the
//! clock stops (criterion times the host). Needs a GPU; without one (or without kernels in the
//! build) it says so and registers nothing. Steps and the Llama shape come from
//! `flint::bench_ops`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flint::backend::cuda::attention::PrefillPath;
use flint::backend::cuda::quant::QuantForce;
use flint::backend::cuda::{CudaBackend, CudaTensor, DensePath};
use flint::backend::{Backend, KvShape, StepInput};
use flint::bench_ops::{attention_step, attn_params, copies_for, quant_weight, Case, QUANT_FMTS};
use flint::config::Activation;
use flint::sampling::Rng;
use std::time::{Duration, Instant};

const HIDDEN: usize = 4096;
const INTER: usize = 14336;
const BLOCK: usize = 16;
const ROWS: &[usize] = &[1, 512, 4096];
/// (name, N, K) of the projections timed: qkv and down.
const MATMULS: &[(&str, usize, usize)] = &[("qkv", 6144, HIDDEN), ("down", HIDDEN, INTER)];
const PREFILL: usize = 2048;
const DECODE_BATCH: usize = 32;
const DECODE_CTX: usize = 4096;

/// `[rows, cols]` of `pattern`'s values repeated (as `flint bench-ops` fills its inputs).
fn filled(be: &CudaBackend, pattern: &CudaTensor, rows: usize, cols: usize) -> CudaTensor {
    let mut t = be.alloc(rows, cols).unwrap();
    be.fill_tensor_from(pattern, &mut t).unwrap();
    t.rows = rows;
    t
}

/// Times `iters` calls of `f(i)` back to back, the stream synchronized before the clock
/// starts and before it stops.
fn timed(be: &CudaBackend, iters: u64, mut f: impl FnMut(usize)) -> Duration {
    be.synchronize().unwrap();
    let t0 = Instant::now();
    for i in 0..iters {
        f(i as usize);
    }
    be.synchronize().unwrap();
    t0.elapsed()
}

/// 1 Mi random values in [-1.7, 1.7), tiled into every input (as `flint bench-ops`).
fn pattern(be: &CudaBackend) -> CudaTensor {
    let mut rng = Rng::new(7);
    let vals: Vec<f32> = (0..1 << 20)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * 1.7)
        .collect();
    be.tensor_from(&vals, 1 << 10, 1 << 10).unwrap()
}

/// The backend, or `None` after saying why the benches of `what` register nothing.
fn gpu(what: &str) -> Option<CudaBackend> {
    CudaBackend::new()
        .map_err(|e| eprintln!("{what}: skipped, no usable GPU: {e:#}"))
        .ok()
}

fn bytes(n: usize) -> Throughput {
    Throughput::BytesDecimal(n as u64)
}

fn ops(c: &mut Criterion) {
    let Some(be) = gpu("cuda_ops") else {
        return;
    };
    let pattern = pattern(&be);
    let attn = attn_params();
    let (h, kv, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
    let qkv_cols = (h + 2 * kv) * hd;
    let cache_for = |step: &StepInput, layers: usize| {
        let num_blocks = step.seqs.iter().map(|s| s.block_table.len()).sum();
        let mut cache = be
            .alloc_kv_cache(KvShape {
                layers,
                num_blocks,
                block_size: BLOCK,
                kv_heads: kv,
                head_dim: hd,
            })
            .unwrap();
        be.fill_cache_from(&pattern, &mut cache).unwrap();
        cache
    };

    let mut g = c.benchmark_group("cuda_llama3_8b");
    for &t in ROWS {
        let x = filled(&be, &pattern, t, HIDDEN);
        let mut res = filled(&be, &pattern, t, HIDDEN);
        let w = filled(&be, &pattern, 1, HIDDEN);
        let mut out = be.alloc(t, HIDDEN).unwrap();
        // Reads x, residual, w; writes residual, out.
        g.throughput(bytes(2 * (4 * t * HIDDEN + HIDDEN)));
        g.bench_function(format!("rms_norm_residual/t{t}"), |b| {
            b.iter_custom(|n| {
                timed(&be, n, |_| {
                    be.rms_norm(&x, Some(&mut res), &w, 1e-5, 0.0, &mut out)
                        .unwrap()
                })
            })
        });
    }
    for &t in ROWS {
        let step = attention_step(1, t, t);
        let st = be.upload_step(&step).unwrap();
        let mut cache = cache_for(&step, 1);
        let qkv = filled(&be, &pattern, t, qkv_cols);
        let mut q = be.alloc(t, h * hd).unwrap();
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 500000f32.powf(-2.0 * i as f32 / hd as f32))
            .collect();
        let rope = be.upload_rope(&inv_freq).unwrap();
        // Reads qkv; writes q, K and V.
        g.throughput(bytes(2 * (t * qkv_cols + t * h * hd + 2 * t * kv * hd)));
        g.bench_function(format!("rope_kv_write/t{t}"), |b| {
            b.iter_custom(|n| {
                timed(&be, n, |_| {
                    be.rope_kv_write(&qkv, &st, &rope, None, &attn, &mut cache, 0, &mut q)
                        .unwrap()
                })
            })
        });
    }
    for &t in ROWS {
        let gate_up = filled(&be, &pattern, t, 2 * INTER);
        let mut out = be.alloc(t, INTER).unwrap();
        // Reads gate and up; writes out.
        g.throughput(bytes(2 * 3 * t * INTER));
        g.bench_function(format!("act_mul_silu/t{t}"), |b| {
            b.iter_custom(|n| {
                timed(&be, n, |_| {
                    be.act_mul(&gate_up, Activation::Silu, &mut out).unwrap()
                })
            })
        });
    }

    let before = be.dense_path_override();
    for &(name, n, k) in MATMULS {
        let ws: Vec<CudaTensor> = (0..copies_for(2 * n * k))
            .map(|_| filled(&be, &pattern, n, k))
            .collect();
        for t in [1usize, 8, 512] {
            let x = filled(&be, &pattern, t, k);
            let mut out = be.alloc(t, n).unwrap();
            let case = Case::Gemm {
                id: String::new(),
                t,
                n,
                k,
                path: None,
            };
            let forced: &[Option<DensePath>] = if t <= 8 {
                &[Some(DensePath::Gemv), Some(DensePath::CublasLt)]
            } else {
                &[None]
            };
            for &force in forced {
                be.set_dense_path(force);
                // The path that runs (a forced GEMV past its token limit would not).
                let path = be.dense_path_for(t, n, k).name();
                let id = if t <= 8 {
                    g.throughput(bytes(case.bytes() as usize));
                    format!("matmul/{name}/t{t}/{path}")
                } else {
                    g.throughput(Throughput::Elements(case.flops() as u64));
                    format!("matmul_flop/{name}/t{t}/{path}")
                };
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        timed(&be, iters, |i| {
                            be.matmul(&x, &ws[i % ws.len()], None, &mut out).unwrap()
                        })
                    })
                });
            }
        }
    }
    be.set_dense_path(before);

    {
        let case = Case::Decode {
            batch: DECODE_BATCH,
            ctx: DECODE_CTX,
        };
        let step = attention_step(DECODE_BATCH, 1, DECODE_CTX);
        let layers = copies_for(case.bytes() as usize);
        let cache = cache_for(&step, layers);
        let st = be.upload_step(&step).unwrap();
        let q = filled(&be, &pattern, DECODE_BATCH, h * hd);
        let mut out = be.alloc(DECODE_BATCH, h * hd).unwrap();
        g.throughput(bytes(case.bytes() as usize));
        g.bench_function(
            format!("attention_decode/b{DECODE_BATCH}_c{DECODE_CTX}"),
            |b| {
                b.iter_custom(|n| {
                    timed(&be, n, |i| {
                        be.attention(&q, &st, &cache, i % layers, &attn, &mut out)
                            .unwrap()
                    })
                })
            },
        );
    }

    let step = attention_step(1, PREFILL, PREFILL);
    let cache = cache_for(&step, 1);
    let st = be.upload_step(&step).unwrap();
    let q = filled(&be, &pattern, PREFILL, h * hd);
    let mut out = be.alloc(PREFILL, h * hd).unwrap();
    for path in [PrefillPath::Fma, PrefillPath::Mma] {
        let case = Case::Prefill {
            tokens: PREFILL,
            path,
        };
        be.set_prefill_path(path);
        g.throughput(Throughput::Elements(case.flops() as u64));
        g.bench_function(format!("attention_prefill_flop/t{PREFILL}/{path:?}"), |b| {
            b.iter_custom(|n| {
                timed(&be, n, |_| {
                    be.attention(&q, &st, &cache, 0, &attn, &mut out).unwrap()
                })
            })
        });
    }
    be.set_prefill_path(PrefillPath::default());
    g.finish();
}

/// Quantized matmul (group `cuda_quant_llama3_8b`): q|k|v and down at int8 per channel, int4
/// sym g128 and fp8 per channel (`flint::bench_ops::quant_weight`, as `flint bench-ops` makes
/// them), each path forced where it runs (`CudaBackend::set_quant_path`).
fn quant(c: &mut Criterion) {
    let Some(be) = gpu("cuda_ops (quant)") else {
        return;
    };
    let wgmma = be.quant_wgmma_unavailable();
    if let Some(why) = &wgmma {
        eprintln!("cuda_ops (quant): no wgmma rows: {why}");
    }
    let pattern = pattern(&be);
    let before = be.quant_path_override();
    let mut g = c.benchmark_group("cuda_quant_llama3_8b");
    for &(name, n, k) in MATMULS {
        for &fmt in QUANT_FMTS {
            let q = quant_weight(fmt, n, k).unwrap();
            let ws: Vec<CudaTensor> = (0..copies_for(q.qdata.len()))
                .map(|_| be.upload_quantized(fmt, &q).unwrap())
                .collect();
            use QuantForce::{Dequant, Gemv, Mma, Wgmma};
            let runs: [(usize, &[QuantForce]); 3] = [
                (1, &[Gemv]),
                (8, &[Gemv, Mma, Dequant]),
                (512, &[Mma, Wgmma, Dequant]),
            ];
            for (t, paths) in runs {
                let x = filled(&be, &pattern, t, k);
                let mut out = be.alloc(t, n).unwrap();
                for &path in paths {
                    if path == Wgmma && wgmma.is_some() {
                        continue;
                    }
                    let case = Case::Quant {
                        id: String::new(),
                        t,
                        n,
                        k,
                        fmt,
                        path,
                    };
                    let id = if t <= 8 {
                        g.throughput(Throughput::BytesDecimal(case.bytes() as u64));
                        format!("quant/{name}/{fmt}/t{t}/{}", path.name())
                    } else {
                        g.throughput(Throughput::Elements(case.flops() as u64));
                        format!("quant_flop/{name}/{fmt}/t{t}/{}", path.name())
                    };
                    be.set_quant_path(Some(path));
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            timed(&be, iters, |i| {
                                be.matmul(&x, &ws[i % ws.len()], None, &mut out).unwrap()
                            })
                        })
                    });
                }
            }
        }
    }
    g.finish();
    be.set_quant_path(before);
}

criterion_group! {
    name = benches;
    // Short by default (22 dense benches, 42 quantized: 36 without wgmma); `--warm-up-time` /
    // `--measurement-time` override, a name filter picks (`cargo bench --bench cuda_ops -- quant`).
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = ops, quant
}
criterion_main!(benches);
