//! criterion benches of the CPU reference ops at a Llama-shaped layer (hidden 1024, GQA 16/4,
//! head_dim 64), reporting elements or FLOPs per second. The reference is built for clarity,
//! not speed; these numbers are the baseline the CUDA kernels are compared against.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flint::backend::cpu::CpuBackend;
use flint::backend::{AttnParams, Backend, KvShape, StepInput};
use flint::config::Activation;
use flint::kv_cache::{BlockAllocator, SeqCache};
use flint::sampling::Rng;

const D: usize = 1024;
const H: usize = 16;
const KV: usize = 4;
const HD: usize = 64;

fn rand(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}

fn tensor(
    be: &CpuBackend,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
) -> flint::backend::cpu::CpuTensor {
    be.upload_weight("bench", &rand(rng, rows * cols), rows, cols)
        .unwrap()
}

fn ops(c: &mut Criterion) {
    let be = CpuBackend;
    let mut rng = Rng::new(1);
    let mut g = c.benchmark_group("cpu");
    for t in [1usize, 64] {
        let x = tensor(&be, &mut rng, t, D);
        let w = tensor(&be, &mut rng, 1, D);
        let mut out = be.alloc(t, D).unwrap();
        g.throughput(Throughput::Elements((t * D) as u64));
        g.bench_function(format!("rms_norm/t{t}"), |b| {
            b.iter(|| be.rms_norm(&x, None, &w, 1e-5, 0.0, &mut out).unwrap())
        });

        let wm = tensor(&be, &mut rng, D, D);
        g.throughput(Throughput::Elements((2 * t * D * D) as u64));
        g.bench_function(format!("matmul_flop/t{t}"), |b| {
            b.iter(|| be.matmul(&x, &wm, None, &mut out).unwrap())
        });

        let gu = tensor(&be, &mut rng, t, 2 * D);
        g.throughput(Throughput::Elements((t * D) as u64));
        g.bench_function(format!("act_mul_silu/t{t}"), |b| {
            b.iter(|| be.act_mul(&gu, Activation::Silu, &mut out).unwrap())
        });
    }
    // Decode attention: one query over a 1024-token context.
    let ctx = 1024;
    let attn = AttnParams {
        num_heads: H,
        num_kv_heads: KV,
        head_dim: HD,
        scale: 0.125,
        softcap: None,
        window: None,
    };
    let shape = KvShape {
        layers: 1,
        num_blocks: ctx / 16,
        block_size: 16,
        kv_heads: KV,
        head_dim: HD,
    };
    let mut cache = be.alloc_kv_cache(shape).unwrap();
    let mut alloc = BlockAllocator::new(shape.num_blocks, 16);
    let mut seq = SeqCache::default();
    let mut fill = StepInput {
        block_size: 16,
        ..Default::default()
    };
    seq.push_to_step(&mut alloc, &vec![0; ctx], &mut fill)
        .unwrap();
    let qkv = tensor(&be, &mut rng, ctx, (H + 2 * KV) * HD);
    let rope = be.upload_rope(&[0.01; HD / 2]).unwrap();
    let mut q = be.alloc(ctx, H * HD).unwrap();
    be.rope_kv_write(&qkv, &fill, &rope, None, &attn, &mut cache, 0, &mut q)
        .unwrap();
    let mut last = StepInput {
        block_size: 16,
        ..Default::default()
    };
    let mut s2 = SeqCache {
        blocks: seq.blocks.clone(),
        len: ctx - 1,
        ..Default::default()
    };
    s2.push_to_step(&mut alloc, &[0], &mut last).unwrap();
    let q1 = tensor(&be, &mut rng, 1, H * HD);
    let mut out = be.alloc(1, H * HD).unwrap();
    g.throughput(Throughput::Bytes((2 * ctx * KV * HD * 4) as u64));
    g.bench_function("attention_decode_kv_bytes/ctx1024", |b| {
        b.iter(|| {
            be.attention(&q1, &last, &cache, 0, &attn, &mut out)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
