//! criterion benches of flint's quantized matmul on the GPU, at Llama-3-8B's q|k|v (6144 x
//! 4096) and down (4096 x 14336) projections, int8 per channel, int4 symmetric g128 and fp8 per
//! channel (`flint::bench_ops::quant_weight`, as `flint bench-ops` makes them), each path
//! forced where it runs (`CudaBackend::set_quant_path`):
//!
//! - `quant/{qkv,down}/{fmt}/t1/gemv` (decode) and `t8/{gemv,mma,dequant}`: bytes moved
//!   (the codes, the f32 scales, x and out: `flint bench-ops`' formula) as GB/s;
//! - `quant_flop/{qkv,down}/{fmt}/t512/{mma,wgmma,dequant}`: FLOPs as elements (read
//!   "elem/s" as FLOP/s); wgmma only where it runs (sm_90 with the sm_90a image; a line says
//!   why not elsewhere).
//!
//! Weights are replicated past the L2 as in `flint bench-ops`. Each sample enqueues its
//! iterations back to back and synchronizes the stream before the clock stops. Needs a GPU;
//! without one (or without kernels in the build) it says so and registers nothing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flint::backend::cuda::quant::QuantForce;
use flint::backend::cuda::{CudaBackend, CudaTensor};
use flint::backend::Backend;
use flint::bench_ops::{copies_for, quant_weight, Case};
use flint::sampling::Rng;
use std::time::{Duration, Instant};

/// (name, N, K) of the projections timed.
const MATMULS: &[(&str, usize, usize)] = &[("qkv", 6144, 4096), ("down", 4096, 14336)];
const FMTS: &[&str] = &["int8", "int4", "fp8"];

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

fn quant(c: &mut Criterion) {
    let be = match CudaBackend::new() {
        Ok(be) => be,
        Err(e) => {
            eprintln!("quant_cuda: skipped, no usable GPU: {e:#}");
            return;
        }
    };
    let wgmma = be.quant_wgmma_unavailable();
    if let Some(why) = &wgmma {
        eprintln!("quant_cuda: no wgmma rows: {why}");
    }
    let mut rng = Rng::new(7);
    let vals: Vec<f32> = (0..1 << 20)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * 1.7)
        .collect();
    let pattern = be.tensor_from(&vals, 1 << 10, 1 << 10).unwrap();
    let before = be.quant_path_override();
    let mut g = c.benchmark_group("cuda_quant_llama3_8b");
    for &(name, n, k) in MATMULS {
        for &fmt in FMTS {
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
                let mut x = be.alloc(t, k).unwrap();
                be.fill_tensor_from(&pattern, &mut x).unwrap();
                x.rows = t;
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
    // Short by default (42 benches, 36 without wgmma); `--warm-up-time` / `--measurement-time`
    // override.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = quant
}
criterion_main!(benches);
