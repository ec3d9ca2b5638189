//! The attention kernels (kernels/attention_prefill.cu, attention_decode.cu + its reduce, and the
//! tensor-core kernels/attention_prefill_mma.cu, its mma.sync and ldmatrix done by the shim's
//! `shim::mma16816` and `shim::ldmatrix_x4` in PTX's lane-fragment layouts) run on the host
//! (tests/attention_emulation: CTAs as std::threads) for the launches the real planner (`AttnPlan`)
//! makes, against a float64 reference read straight from the paged cache: ragged prefill, split-K
//! decode, GQA, soft-cap, sliding window, every head dim; decode (kernels/attention_decode.cu) at
//! batch 1-4 with ragged contexts (1, 31, 32, 33, 1000, 4097), GQA groups 1-16, one split (out
//! written by the decode kernel) and up to 64. Every prefill case runs both prefill paths
//! (`PrefillPath::Fma` and `Mma`). It checks the planner/kernel contract and the kernels' index
//! math without a GPU (not their speed). Planted errors must fail: a wrong block-table row, and (a
//! second build with FLINT_SHIM_MMA_SWAP_B) every lane's two B fragment registers swapped, and (a
//! third, FLINT_SHIM_LDMATRIX_NO_TRANS) V's ldmatrix without .trans. Needs a
//! C++20 compiler and the CUDA headers scripts/setup.sh installs; skips without them unless
//! FLINT_REQUIRE_KERNELS=1.

mod common;

use common::build_emulation;
use flint::backend::cuda::attention::{
    split_counters_len, AttnKernel, AttnPlan, AttnPtrs, FusedRope, PrefillPath,
};
use flint::backend::{AttnParams, SeqStep, StepInput};
use flint::sampling::Rng;
use std::path::Path;

fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

struct Case {
    name: &'static str,
    seqs: Vec<(usize, usize)>,    // (ctx_len, q_len)
    heads: (usize, usize, usize), // (H, KV, hd)
    softcap: Option<f32>,
    window: Option<usize>,
    num_sms: u32,
    /// Decode only: the rope prologue fused into the decode kernel, (rotary dim, qk-norm).
    rope: Option<(usize, bool)>,
}

const BS: usize = 16;
const Q: u64 = 1 << 40;
const K: u64 = 2 << 40;
const V: u64 = 3 << 40;
const OUT: u64 = 4 << 40;
const META: u64 = 5 << 40;
const WS: u64 = 6 << 40;
const COUNTERS: u64 = 7 << 40;
const QKV: u64 = 8 << 40;
const POSITIONS: u64 = 9 << 40;
const SLOTS: u64 = 10 << 40;
const INV_FREQ: u64 = 11 << 40;
const Q_NORM: u64 = 12 << 40;
const K_NORM: u64 = 13 << 40;
const EPS: f32 = 1e-6;
const W_OFFSET: f32 = 0.5;

/// One emulated run.
struct Run {
    kernel: AttnKernel,
    /// Relative L2 error against float64 (NaN when an output was not written).
    err: f64,
    max_abs: f64,
    /// The output's bf16 bits, to compare two runs bit for bit.
    bits: Vec<u16>,
    /// The split counters after the launch (the kernel must leave them 0).
    counters: Vec<i32>,
}

/// How a case runs: the prefill path, a planted block-table swap, CTAs in reverse order.
#[derive(Clone, Copy)]
struct How {
    path: PrefillPath,
    broken_table: bool,
    reverse_ctas: bool,
}

/// The CUDA-core prefill (each prefill case then runs the tensor-core path too), CTAs in grid
/// order, tables intact.
impl Default for How {
    fn default() -> Self {
        How {
            path: PrefillPath::Fma,
            broken_table: false,
            reverse_ctas: false,
        }
    }
}

/// The kernel's output against float64 (kernel kind, errors, bits, counters).
fn run(exe: &Path, c: &Case, how: How) -> Run {
    let How {
        path,
        broken_table,
        reverse_ctas,
    } = how;
    let (h, kv, hd) = c.heads;
    let mut rng = Rng::new(7);
    let total_blocks: usize = c.seqs.iter().map(|s| s.0.div_ceil(BS)).sum();
    let mut free: Vec<u32> = (0..total_blocks as u32).collect();
    // Shuffled physical blocks: logical and physical order differ.
    for i in (1..free.len()).rev() {
        free.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut step = StepInput {
        block_size: BS,
        ..Default::default()
    };
    for &(ctx, q) in &c.seqs {
        let table: Vec<u32> = (0..ctx.div_ceil(BS)).map(|_| free.pop().unwrap()).collect();
        let q_start = step.token_ids.len();
        for p in ctx - q..ctx {
            step.token_ids.push(0);
            step.positions.push(p as u32);
            step.slots
                .push((table[p / BS] as usize * BS + p % BS) as i64);
        }
        step.seqs.push(SeqStep {
            q_start,
            q_len: q,
            ctx_len: ctx,
            block_table: table,
        });
    }
    let t = step.num_tokens();
    let plan = AttnPlan::new(&step, h, kv, hd, c.num_sms)
        .unwrap()
        .with_prefill_path(path);
    let attn = AttnParams {
        num_heads: h,
        num_kv_heads: kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        softcap: c.softcap,
        window: c.window,
    };
    let rot = c.rope.map_or(0, |r| r.0);
    let ptrs = AttnPtrs {
        q: Q,
        k_cache: K,
        v_cache: V,
        out: OUT,
        metadata: META,
        workspace: WS,
        split_counters: COUNTERS,
        rope: c.rope.map(|(rot, qk_norm)| FusedRope {
            qkv: QKV,
            positions: POSITIONS,
            slot_mapping: SLOTS,
            inv_freq: INV_FREQ,
            q_norm: if qk_norm { Q_NORM } else { 0 },
            k_norm: if qk_norm { K_NORM } else { 0 },
            rotary_dim: rot,
            num_blocks: total_blocks,
            eps: EPS,
            w_offset: W_OFFSET,
        }),
    };
    let launches = plan.launches(&attn, &ptrs).unwrap();
    let rand = |rng: &mut Rng, n: usize| -> Vec<f32> {
        (0..n).map(|_| bf16((rng.next_f32() - 0.5) * 4.0)).collect()
    };
    let q = rand(&mut rng, t * h * hd);
    let kc = rand(&mut rng, total_blocks * BS * kv * hd);
    let vc = rand(&mut rng, total_blocks * BS * kv * hd);
    // The rope prologue's inputs, and what the float64 reference reads: q rotated from qkv,
    // and the cache with each sequence's new key (rotated) and value at its slot.
    let qkv = rand(&mut rng, t * (h + 2 * kv) * hd);
    let inv_freq: Vec<f32> = (0..rot / 2)
        .map(|i| 10000f32.powf(-2.0 * i as f32 / rot as f32))
        .collect();
    let q_norm = rand(&mut rng, hd);
    let k_norm = rand(&mut rng, hd);
    let mut q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let mut k64: Vec<f64> = kc.iter().map(|&x| x as f64).collect();
    let mut v64: Vec<f64> = vc.iter().map(|&x| x as f64).collect();
    let mut new_slots = Vec::new();
    if let Some((_, qk_norm)) = c.rope {
        // Norm (optional) and rotate_half rotation of one head, in float64.
        let rope = |x: &[f32], w: &[f32], pos: f64| -> Vec<f64> {
            let mut v: Vec<f64> = x.iter().map(|&a| a as f64).collect();
            if qk_norm {
                let ms = v.iter().map(|a| a * a).sum::<f64>() / hd as f64;
                let r = 1.0 / (ms + EPS as f64).sqrt();
                for (a, &wi) in v.iter_mut().zip(w) {
                    *a *= r * (W_OFFSET as f64 + wi as f64);
                }
            }
            let mut o = v.clone();
            for i in 0..rot / 2 {
                let (sn, cs) = (pos * inv_freq[i] as f64).sin_cos();
                o[i] = v[i] * cs - v[i + rot / 2] * sn;
                o[i + rot / 2] = v[i + rot / 2] * cs + v[i] * sn;
            }
            o
        };
        let row_len = (h + 2 * kv) * hd;
        for tok in 0..t {
            let row = &qkv[tok * row_len..(tok + 1) * row_len];
            let pos = step.positions[tok] as f64;
            for hh in 0..h {
                let r = rope(&row[hh * hd..(hh + 1) * hd], &q_norm, pos);
                q64[(tok * h + hh) * hd..(tok * h + hh + 1) * hd].copy_from_slice(&r);
            }
            let slot = step.slots[tok] as usize;
            new_slots.push(slot);
            for g in 0..kv {
                let kr = rope(&row[(h + g) * hd..(h + g + 1) * hd], &k_norm, pos);
                let at = (slot * kv + g) * hd;
                k64[at..at + hd].copy_from_slice(&kr);
                for d in 0..hd {
                    v64[at + d] = row[(h + kv + g) * hd + d] as f64;
                }
            }
        }
    }
    let mut meta: Vec<i32> = plan.metadata().to_vec();
    if broken_table {
        // Swap the first two block-table rows: sequences read each other's keys.
        let s = c.seqs.len();
        let mb = plan.max_blocks();
        for j in 0..mb {
            meta.swap(3 * s + j, 3 * s + mb + j);
        }
    }

    let mut b = Vec::new();
    let u32le = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    u32le(&mut b, launches.len() as u32);
    for l in &launches {
        u32le(&mut b, l.kernel.len() as u32);
        b.extend_from_slice(l.kernel.as_bytes());
        for v in [
            l.grid.0, l.grid.1, l.grid.2, l.block.0, l.block.1, l.block.2,
        ] {
            u32le(&mut b, v);
        }
        assert_eq!(l.shared_bytes, 0, "dynamic shared memory is not emulated");
        b.extend_from_slice(&l.params);
    }
    let bf = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
            .collect()
    };
    let bufs: Vec<(u64, Vec<u8>)> = vec![
        (Q, bf(&q)),
        (K, bf(&kc)),
        (V, bf(&vc)),
        (OUT, vec![0xFF; t * h * hd * 2]), // NaN: an unwritten output shows
        (META, meta.iter().flat_map(|v| v.to_le_bytes()).collect()),
        (WS, vec![0xFF; plan.workspace_bytes().max(4)]),
        (COUNTERS, vec![0; 4 * split_counters_len(c.num_sms)]),
        (QKV, bf(&qkv)),
        (
            POSITIONS,
            step.positions
                .iter()
                .flat_map(|&p| (p as i32).to_le_bytes())
                .collect(),
        ),
        (
            SLOTS,
            step.slots.iter().flat_map(|s| s.to_le_bytes()).collect(),
        ),
        (
            INV_FREQ,
            inv_freq
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .chain([0; 4])
                .collect(),
        ),
        (Q_NORM, bf(&q_norm)),
        (K_NORM, bf(&k_norm)),
    ];
    u32le(&mut b, bufs.len() as u32);
    for (base, data) in &bufs {
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&(data.len() as u64).to_le_bytes());
        b.extend_from_slice(data);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Per binary: the two tests run at the same time.
    let tag = exe.file_name().unwrap().to_string_lossy();
    let (case, out) = (
        dir.join(format!("{tag}_case.bin")),
        dir.join(format!("{tag}_out.bin")),
    );
    std::fs::write(&case, b).unwrap();
    let r = std::process::Command::new(exe)
        .arg(&case)
        .arg(&out)
        .arg(format!("{OUT},{COUNTERS},{K},{V}"))
        .env(
            "FLINT_SHIM_REVERSE_CTAS",
            if reverse_ctas { "1" } else { "0" },
        )
        .output()
        .expect("runs the emulation");
    assert!(
        r.status.success(),
        "{}: {}",
        c.name,
        String::from_utf8_lossy(&r.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let (out_bytes, rest) = bytes.split_at(t * h * hd * 2);
    let (counter_bytes, rest) = rest.split_at(4 * split_counters_len(c.num_sms));
    let (k_bytes, v_bytes) = rest.split_at(kc.len() * 2);
    // The cache after the launch: the new slots as the reference rotated them (to bf16), every
    // other slot as it was (the fused prologue writes nothing else; the unfused kernels nothing).
    let from_bf16 = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(2)
            .map(|x| half::bf16::from_bits(u16::from_le_bytes([x[0], x[1]])).to_f32())
            .collect()
    };
    for (name, after, before, want) in [
        ("K", from_bf16(k_bytes), &kc, &k64),
        ("V", from_bf16(v_bytes), &vc, &v64),
    ] {
        for (i, (&a, &b)) in after.iter().zip(before.iter()).enumerate() {
            let slot = i / (kv * hd);
            if new_slots.contains(&slot) {
                let w = want[i];
                assert!(
                    (a as f64 - w).abs() <= 1e-2 * w.abs() + 1e-3,
                    "{}: new {name} at slot {slot}: {a} against {w}",
                    c.name
                );
            } else {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "{}: {name} at slot {slot} changed",
                    c.name
                );
            }
        }
    }
    let bits: Vec<u16> = out_bytes
        .chunks_exact(2)
        .map(|x| u16::from_le_bytes([x[0], x[1]]))
        .collect();
    let counters: Vec<i32> = counter_bytes
        .chunks_exact(4)
        .map(|x| i32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .collect();
    let got: Vec<f32> = bits
        .iter()
        .map(|&b| half::bf16::from_bits(b).to_f32())
        .collect();

    // float64 reference, straight from the paged cache.
    let group = h / kv;
    let (mut num, mut den, mut max_abs) = (0f64, 0f64, 0f64);
    for s in &step.seqs {
        for i in 0..s.q_len {
            let row = s.q_start + i;
            let p = s.ctx_len - s.q_len + i;
            let first = c.window.map_or(0, |w| (p + 1).saturating_sub(w));
            for hh in 0..h {
                let g = hh / group;
                let qv = &q64[(row * h + hh) * hd..(row * h + hh + 1) * hd];
                let at =
                    |j: usize| (s.block_table[j / BS] as usize * BS + j % BS) * kv * hd + g * hd;
                let scores: Vec<f64> = (first..=p)
                    .map(|j| {
                        let k = &k64[at(j)..at(j) + hd];
                        let d: f64 = qv.iter().zip(k).map(|(a, b)| a * b).sum();
                        let x = d * attn.scale as f64;
                        c.softcap
                            .map_or(x, |cap| cap as f64 * (x / cap as f64).tanh())
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for d in 0..hd {
                    let want: f64 = (first..=p)
                        .zip(&w)
                        .map(|(j, wj)| wj * v64[at(j) + d])
                        .sum::<f64>()
                        / z;
                    let gv = got[(row * h + hh) * hd + d] as f64;
                    num += (gv - want).powi(2);
                    // NaN (an unwritten output) compares false: max_abs must not hide it.
                    max_abs = if (gv - want).abs() <= max_abs {
                        max_abs
                    } else {
                        (gv - want).abs()
                    };
                    den += want.powi(2);
                }
            }
        }
    }
    Run {
        kernel: plan.kernel(),
        err: (num / den).sqrt(),
        max_abs,
        bits,
        counters,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "decode, split-K over long contexts, GQA 8/2, hd 64",
            seqs: vec![(1, 1), (37, 1), (300, 1), (1000, 1)],
            heads: (8, 2, 64),
            softcap: None,
            window: None,
            num_sms: 8,
            rope: None,
        },
        Case {
            name: "decode, window 64 + soft-cap 30, GQA 8/1, hd 128",
            seqs: vec![(200, 1), (90, 1)],
            heads: (8, 1, 128),
            softcap: Some(30.0),
            window: Some(64),
            num_sms: 4,
            rope: None,
        },
        Case {
            name:
                "decode b4, contexts 1/31/32/33, one split (out written directly), GQA 8/2, hd 128",
            seqs: vec![(1, 1), (31, 1), (32, 1), (33, 1)],
            heads: (8, 2, 128),
            softcap: None,
            window: None,
            num_sms: 132,
            rope: None,
        },
        Case {
            name: "decode b3, contexts 4097/1000/32, 64 splits, GQA 8/1, hd 64",
            seqs: vec![(4097, 1), (1000, 1), (32, 1)],
            heads: (8, 1, 64),
            softcap: None,
            window: None,
            num_sms: 132,
            rope: None,
        },
        Case {
            name: "decode b1, context 4097, window 1000 + soft-cap 20, MHA 2/2, hd 256",
            seqs: vec![(4097, 1)],
            heads: (2, 2, 256),
            softcap: Some(20.0),
            window: Some(1000),
            num_sms: 16,
            rope: None,
        },
        Case {
            name: "decode b2, contexts 1000/33, few splits, GQA 4/1, hd 128, soft-cap 30",
            seqs: vec![(1000, 1), (33, 1)],
            heads: (4, 1, 128),
            softcap: Some(30.0),
            window: None,
            num_sms: 4,
            rope: None,
        },
        Case {
            name: "decode b2, group 16 (two row tiles per kv head), window 40, hd 64",
            seqs: vec![(300, 1), (31, 1)],
            heads: (32, 2, 64),
            softcap: None,
            window: Some(40),
            num_sms: 16,
            rope: None,
        },
        Case {
            name: "decode b3, group 3 (a padded register row), GQA 6/2, hd 32",
            seqs: vec![(100, 1), (1, 1), (65, 1)],
            heads: (6, 2, 32),
            softcap: Some(10.0),
            window: None,
            num_sms: 8,
            rope: None,
        },
        Case {
            name: "decode b4 with the rope prologue fused, GQA 8/2, hd 128, split-K",
            seqs: vec![(1, 1), (37, 1), (300, 1), (1000, 1)],
            heads: (8, 2, 128),
            softcap: None,
            window: None,
            num_sms: 8,
            rope: Some((128, false)),
        },
        Case {
            name: "decode b2 with the rope prologue fused, qk-norm, partial rotary 32 of hd 64, group 16",
            seqs: vec![(300, 1), (31, 1)],
            heads: (32, 2, 64),
            softcap: None,
            window: Some(40),
            num_sms: 16,
            rope: Some((32, true)),
        },
        Case {
            name: "decode b1 with the rope prologue fused, qk-norm, MHA 2/2, hd 256, 64 splits",
            seqs: vec![(4097, 1)],
            heads: (2, 2, 256),
            softcap: Some(20.0),
            window: None,
            num_sms: 132,
            rope: Some((256, true)),
        },
        Case {
            name: "decode b3 with the rope prologue fused, hd 16 (2 lanes a key), one split",
            seqs: vec![(60, 1), (18, 1), (1, 1)],
            heads: (2, 1, 16),
            softcap: None,
            window: None,
            num_sms: 132,
            rope: Some((16, false)),
        },
        Case {
            name: "ragged prefill with cached prefix, MHA 4/4, hd 128",
            seqs: vec![(5, 5), (40, 17), (100, 33)],
            heads: (4, 4, 128),
            softcap: None,
            window: None,
            num_sms: 8,
            rope: None,
        },
        Case {
            name: "prefill, window 8 + soft-cap, hd 32",
            seqs: vec![(50, 20), (3, 3)],
            heads: (4, 2, 32),
            softcap: Some(5.0),
            window: Some(8),
            num_sms: 8,
            rope: None,
        },
        Case {
            name: "decode-shaped step, hd 16",
            seqs: vec![(70, 1), (18, 1)],
            heads: (2, 1, 16),
            softcap: None,
            window: None,
            num_sms: 2,
            rope: None,
        },
        Case {
            name: "chunked prefill after a prefix, GQA 8/1, hd 64",
            seqs: vec![(300, 40), (70, 70)],
            heads: (8, 1, 64),
            softcap: None,
            window: None,
            num_sms: 8,
            rope: None,
        },
        Case {
            name: "prefill, window 20 + soft-cap, GQA 4/1, hd 16",
            seqs: vec![(130, 65), (9, 9)],
            heads: (8, 2, 16),
            softcap: Some(10.0),
            window: Some(20),
            num_sms: 4,
            rope: None,
        },
        Case {
            name: "long ragged prefill, several 64-row tiles per sequence, MHA 2/2, hd 32",
            seqs: vec![(150, 150), (230, 100), (7, 7)],
            heads: (2, 2, 32),
            softcap: None,
            window: None,
            num_sms: 8,
            rope: None,
        },
        Case {
            name: "prefill after a prefix, window 50, GQA 4/1, hd 128",
            seqs: vec![(120, 90), (33, 33)],
            heads: (8, 2, 128),
            softcap: None,
            window: Some(50),
            num_sms: 8,
            rope: None,
        },
        Case {
            name: "prefill hd 256 after a prefix, GQA 8/1, soft-cap",
            seqs: vec![(60, 21)],
            heads: (8, 1, 256),
            softcap: Some(20.0),
            window: None,
            num_sms: 2,
            rope: None,
        },
        Case {
            name: "prefill hd 256",
            seqs: vec![(20, 20)],
            heads: (2, 1, 256),
            softcap: None,
            window: None,
            num_sms: 2,
            rope: None,
        },
    ]
}

#[test]
fn attention_kernels_match_float64_on_the_host() {
    let Some(exe) = build_emulation(
        "attention_kernels_match_float64_on_the_host",
        "tests/attention_emulation/main.cpp",
        "attention_emulation",
        &[],
    ) else {
        return;
    };
    let mut kinds = (false, false);
    let mut decode_splits = Vec::new();
    for c in cases() {
        let r = run(&exe, &c, How::default());
        let (err, max_abs) = (r.err, r.max_abs);
        match r.kernel {
            AttnKernel::Prefill => kinds.0 = true,
            AttnKernel::Decode { splits } => {
                kinds.1 = true;
                decode_splits.push(splits);
                eprintln!("{}: {splits} splits", c.name);
                // The last split CTA of each group merges, whichever it is: CTAs in reverse
                // order give the same bits, and every counter is back at 0 both ways.
                let rev = run(
                    &exe,
                    &c,
                    How {
                        reverse_ctas: true,
                        ..How::default()
                    },
                );
                assert!(
                    rev.bits == r.bits,
                    "{}: CTA order changed the output",
                    c.name
                );
                for x in [&r, &rev] {
                    assert!(
                        x.counters.iter().all(|&n| n == 0),
                        "{}: split counters left at {:?}",
                        c.name,
                        x.counters.iter().filter(|&&n| n != 0).collect::<Vec<_>>()
                    );
                }
            }
        }
        assert!(err < 1e-2, "{}: relative error {err:.2e}", c.name);
        eprintln!("{}: rel-L2 {err:.2e}, max abs {max_abs:.2e}", c.name);
        if r.kernel == AttnKernel::Prefill {
            // The tensor-core kernel on its own tile map (attention.rs `tile_rows`).
            let m = run(
                &exe,
                &c,
                How {
                    path: PrefillPath::Mma,
                    ..How::default()
                },
            );
            assert!(
                m.err < 1e-2,
                "{} (mma): relative error {:.2e}",
                c.name,
                m.err
            );
            eprintln!(
                "{} (mma): rel-L2 {:.2e}, max abs {:.2e}",
                c.name, m.err, m.max_abs
            );
        }
    }
    assert!(kinds.0 && kinds.1, "both kernels ran: {kinds:?}");
    // The decode kernel writing out itself (one split) and through the split merge (64 splits).
    assert!(
        decode_splits.contains(&1) && decode_splits.contains(&64),
        "{decode_splits:?}"
    );
    // The check can fail: sequences reading each other's block tables.
    let r = run(
        &exe,
        &cases()[0],
        How {
            broken_table: true,
            ..How::default()
        },
    );
    assert!(
        r.err > 0.1,
        "a swapped block table went unnoticed ({:.2e})",
        r.err
    );
}

/// The split merge's "last CTA" test can fail: built with FLINT_PLANT_EARLY_SPLIT_MERGE the
/// next-to-last split CTA of a group to count merges (before the last one wrote its partials)
/// and the last one leaves its count behind: the output or the counters must show it, in
/// both CTA orders.
#[test]
fn attention_decode_planted_early_merge_fails() {
    let Some(exe) = build_emulation(
        "attention_decode_planted_early_merge_fails",
        "tests/attention_emulation/main.cpp",
        "attention_emulation_early_merge",
        &["FLINT_PLANT_EARLY_SPLIT_MERGE"],
    ) else {
        return;
    };
    let mut ran = 0;
    for c in cases() {
        let fwd = run(&exe, &c, How::default());
        let AttnKernel::Decode { splits } = fwd.kernel else {
            continue;
        };
        if splits < 3 {
            continue; // at 2 splits the next-to-last count is 0: every count merges
        }
        ran += 1;
        let rev = run(
            &exe,
            &c,
            How {
                reverse_ctas: true,
                ..How::default()
            },
        );
        for (order, r) in [("grid order", &fwd), ("reverse order", &rev)] {
            let caught = r.err.is_nan() || r.err >= 1e-2 || r.counters.iter().any(|&n| n != 0);
            eprintln!(
                "{} ({order}, next-to-last split merges): rel-L2 {:.2e}",
                c.name, r.err
            );
            assert!(
                caught,
                "{} ({order}): an early merge went unnoticed",
                c.name
            );
        }
    }
    assert!(ran > 0, "no split decode case ran");
}

/// The mma check can fail: with FLINT_SHIM_MMA_SWAP_B every lane's b0 and b1 trade places (a
/// kernel passing its B fragment registers in the wrong order), on every prefill case.
#[test]
fn attention_mma_planted_fragment_swap_fails() {
    let Some(exe) = build_emulation(
        "attention_mma_planted_fragment_swap_fails",
        "tests/attention_emulation/main.cpp",
        "attention_emulation_mma_swap_b",
        &["FLINT_SHIM_MMA_SWAP_B"],
    ) else {
        return;
    };
    let mut ran = 0;
    for c in cases() {
        let r = run(
            &exe,
            &c,
            How {
                path: PrefillPath::Mma,
                ..How::default()
            },
        );
        let (kind, err) = (r.kernel, r.err);
        if kind != AttnKernel::Prefill {
            continue;
        }
        ran += 1;
        eprintln!("{} (mma, b0/b1 swapped): rel-L2 {err:.2e}", c.name);
        assert!(
            err > 0.1,
            "{}: swapped B fragments went unnoticed ({err:.2e})",
            c.name
        );
    }
    assert!(ran > 0, "no prefill case ran");
}

/// The ldmatrix stand-in is on the checked path: with FLINT_SHIM_LDMATRIX_NO_TRANS its .trans is
/// ignored (V's B fragment read as stored, a kernel that forgot .trans), which must fail at a
/// 4-warp head dim and at the one-warp hd 256.
#[test]
fn attention_mma_planted_ldmatrix_no_trans_fails() {
    let Some(exe) = build_emulation(
        "attention_mma_planted_ldmatrix_no_trans_fails",
        "tests/attention_emulation/main.cpp",
        "attention_emulation_ldmatrix_no_trans",
        &["FLINT_SHIM_LDMATRIX_NO_TRANS"],
    ) else {
        return;
    };
    let all = cases();
    let picked: Vec<&Case> = all
        .iter()
        .filter(|c| c.name.starts_with("ragged prefill") || c.name == "prefill hd 256")
        .collect();
    assert_eq!(picked.len(), 2);
    for c in picked {
        let r = run(
            &exe,
            c,
            How {
                path: PrefillPath::Mma,
                ..How::default()
            },
        );
        let (kind, err) = (r.kernel, r.err);
        assert_eq!(kind, AttnKernel::Prefill);
        eprintln!(
            "{} (mma, ldmatrix without .trans): rel-L2 {err:.2e}",
            c.name
        );
        assert!(
            err > 0.1,
            "{}: V read without .trans went unnoticed ({err:.2e})",
            c.name
        );
    }
}
