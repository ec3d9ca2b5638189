//! criterion benches of the CUDA MoE kernels at one Mixtral-8x7B layer (8 experts top-2,
//! hidden 4096, expert width 14336): `moe_route` + `moe_experts` at 1..4096 tokens on the path
//! the backend picks, both paths forced at the small counts where they meet, and on sm_90 the
//! mma.sync grouped GEMM beside its wgmma form. Reported as
//! FLOP/s of the routed experts (2 · T · k · 3 · D · I). Needs a GPU; without one (or without
//! kernels in the build) it says so and registers nothing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flint::backend::cuda::{CudaBackend, CudaTensor, MoePath};
use flint::backend::{Backend, MoeExperts, MoeRouting};
use flint::config::Activation;
use flint::sampling::Rng;
use std::time::Instant;

const E: usize = 8;
const K: usize = 2;
const D: usize = 4096;
const I: usize = 14336;

fn rand(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * std * 3f32.sqrt())
        .collect()
}

/// One expert's values repeated for every expert (timing does not depend on the values).
fn stacked(one: &[f32], copies: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(one.len() * copies);
    for _ in 0..copies {
        v.extend_from_slice(one);
    }
    v
}

struct Layer {
    router: CudaTensor,
    gate_up: CudaTensor,
    down: CudaTensor,
}

fn moe(c: &mut Criterion) {
    let be = match CudaBackend::new() {
        Ok(be) => be,
        Err(e) => {
            eprintln!("moe_cuda: skipped, no usable GPU: {e:#}");
            return;
        }
    };
    let mut rng = Rng::new(3);
    let layer = {
        let gu = rand(&mut rng, 2 * I * D, 1.0 / (D as f32).sqrt());
        let dn = rand(&mut rng, D * I, 1.0 / (I as f32).sqrt());
        Layer {
            router: be
                .upload_weight(
                    "router",
                    &rand(&mut rng, E * D, 1.0 / (D as f32).sqrt()),
                    E,
                    D,
                )
                .unwrap(),
            gate_up: be
                .upload_weight("gate_up", &stacked(&gu, E), E * 2 * I, D)
                .unwrap(),
            down: be
                .upload_weight("down", &stacked(&dn, E), E * D, I)
                .unwrap(),
        }
    };
    let routing = MoeRouting {
        num_experts: E,
        top_k: K,
        norm_topk_prob: true,
    };
    let shape = MoeExperts {
        num_experts: E,
        top_k: K,
        hidden: D,
        intermediate: I,
        act: Activation::Silu,
    };
    let mut g = c.benchmark_group("moe_cuda_mixtral");
    g.sample_size(10);
    for t in [1usize, 8, 64, 512, 4096] {
        let x = be.tensor_from(&rand(&mut rng, t * D, 1.0), t, D).unwrap();
        let mut logits = be.alloc(t, E).unwrap();
        let mut ids = be.alloc(t, K).unwrap();
        let mut w = be.alloc(t, K).unwrap();
        let mut scratch = be.alloc(t * K, 2 * I).unwrap();
        let mut out = be.alloc(t, D).unwrap();
        be.matmul(&x, &layer.router, None, &mut logits).unwrap();
        be.moe_route(&logits, &routing, &mut ids, &mut w).unwrap();
        g.throughput(Throughput::Elements((2 * t * K * 3 * D * I) as u64));
        let mut paths = vec![be.moe_default_path(t)];
        if t <= 64 {
            paths = vec![MoePath::Gemv, MoePath::Grouped];
        }
        // The wgmma grouped GEMM beside mma.sync where it runs.
        if paths.contains(&MoePath::Wgmma) {
            paths.push(MoePath::Grouped);
        }
        for path in paths {
            g.bench_function(format!("experts/t{t}/{path:?}"), |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        be.moe_experts_with(
                            &x,
                            &ids,
                            &w,
                            &layer.gate_up,
                            &layer.down,
                            &shape,
                            &mut scratch,
                            &mut out,
                            path,
                        )
                        .unwrap();
                    }
                    be.synchronize().unwrap();
                    t0.elapsed()
                })
            });
        }
        g.bench_function(format!("route/t{t}"), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    be.moe_route(&logits, &routing, &mut ids, &mut w).unwrap();
                }
                be.synchronize().unwrap();
                t0.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, moe);
criterion_main!(benches);
