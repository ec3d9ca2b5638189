//! Mixture of experts on the CPU reference: the MoE fixtures against their references
//! (transformers 5.24 for mixtral / qwen2_moe / qwen3_moe; for grok1 the float64 numpy forward
//! in tests/fixtures/make_grok1_fixture.py, written from xai-org/grok-1's model.py since
//! transformers has no Grok-1 class), the routing op's semantics, the experts op against a
//! per-expert dense computation, and shrunk synthetic Mixtral / Qwen3-MoE presets whose
//! routing spreads tokens over several experts.

mod common;

use common::{build_emulation, fixtures_dir, max_rel_err, reference, run_emulation_to_pass};
use flint::backend::cpu::{CpuBackend, CpuTensor};
use flint::backend::{Backend, MoeExperts, MoeRouting, StepInput};
use flint::config::{Activation, ModelSpec};
use flint::engine::{self, GenerateOptions, BLOCK_SIZE};
use flint::kv_cache::{BlockAllocator, SeqCache};
use flint::model::{Model, RouteTap, RouteTie, Workspace};
use flint::sampling::SamplingParams;
use flint::weights::synthetic::{SyntheticSource, PRESETS};
use flint::weights::WeightStore;
use flint::ModelRef;

const MOE_FIXTURES: &[&str] = &["grok1", "mixtral", "qwen2_moe", "qwen3_moe"];

fn t(be: &CpuBackend, rows: usize, cols: usize, data: &[f32]) -> CpuTensor {
    be.upload_weight("t", data, rows, cols).unwrap()
}

#[test]
fn moe_fixtures_match_their_references() {
    for name in MOE_FIXTURES {
        let be = CpuBackend;
        let m = ModelRef::Dir(fixtures_dir().join(name))
            .load(&be)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(m.spec.moe.is_some(), "{name}: no MoE in the spec");
        let r = reference(name);
        let mut worst = 0f32;
        for (p, want) in r.prompts.iter().zip(&r.logits_last) {
            let got = engine::prompt_logits(&be, &m, p, false).unwrap();
            let e = max_rel_err(&got, want);
            worst = worst.max(e);
            assert!(
                e < 1e-4,
                "{name}: prompt of {} tokens: relative error {e:.2e}",
                p.len()
            );
        }
        let longest = r.prompts.iter().max_by_key(|p| p.len()).unwrap();
        let got = engine::prompt_logits(&be, &m, longest, true).unwrap();
        let v = m.spec.vocab_size;
        for (i, want) in r.logits_all.iter().enumerate() {
            let e = max_rel_err(&got[i * v..(i + 1) * v], want);
            worst = worst.max(e);
            assert!(e < 1e-4, "{name}: position {i}: relative error {e:.2e}");
        }
        eprintln!("{name}: max relative logit error {worst:.2e}");
        let opts = GenerateOptions {
            max_new_tokens: 16,
            sampling: SamplingParams::default(),
            eos_ids: m.spec.eos_token_ids.clone(),
            ignore_eos: true,
        };
        for (p, want) in r.prompts.iter().zip(&r.greedy) {
            let g = engine::generate(&be, &m, p, &opts).unwrap();
            assert_eq!(&g.tokens, want, "{name}: greedy after {p:?}");
        }
    }
}

#[test]
fn fixture_specs_have_the_moe_quirks() {
    let spec = |n: &str| ModelSpec::from_dir(&fixtures_dir().join(n)).unwrap();
    let mx = spec("mixtral");
    let m = mx.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.top_k, m.norm_topk_prob), (8, 2, true));
    let q2 = spec("qwen2_moe");
    let m = q2.moe.as_ref().unwrap();
    assert_eq!(m.shared_expert_intermediate, Some(48));
    assert!(!m.norm_topk_prob && q2.qkv_bias);
    assert_eq!(
        m.sparse_layers,
        vec![false, true, false, true],
        "decoder_sparse_step 2"
    );
    let q3 = spec("qwen3_moe");
    let m = q3.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.top_k, m.norm_topk_prob), (16, 4, true));
    assert_eq!(
        m.sparse_layers,
        vec![true, false, true],
        "mlp_only_layers [1]"
    );
    let g = spec("grok1");
    let m = g.moe.as_ref().unwrap();
    assert!(!m.norm_topk_prob && g.sandwich_norms);
    assert_eq!(g.activation, Activation::GeluTanh);
    assert_eq!((g.attn_scale, g.attn_softcap), (0.5, Some(30.0)));
    assert_eq!(g.embed_scale, 6.0);
    assert!((g.logit_scale - 0.577_350_26).abs() < 1e-7);
    // qwen3_moe is stored in transformers 5's fused layout, mixtral in the published one.
    let st = WeightStore::open(&fixtures_dir().join("qwen3_moe")).unwrap();
    assert!(st.contains("model.layers.0.mlp.experts.gate_up_proj"));
    let st = WeightStore::open(&fixtures_dir().join("mixtral")).unwrap();
    assert!(st.contains("model.layers.0.block_sparse_moe.experts.7.w2.weight"));
}

fn route(logits: &[f32], e: usize, k: usize, norm: bool) -> (Vec<f32>, Vec<f32>) {
    let (ids, w, _) = route_following(logits, e, k, norm, None).unwrap();
    (ids, w)
}

/// Routes `logits` on the CPU, then, with a `script` (ids `[T·k]` of one sparse layer),
/// follows it as the selftest's CPU run follows the GPU's (`RouteTap`).
fn route_following(
    logits: &[f32],
    e: usize,
    k: usize,
    norm: bool,
    script: Option<Vec<u32>>,
) -> anyhow::Result<(Vec<f32>, Vec<f32>, Vec<RouteTie>)> {
    let be = CpuBackend;
    let rows = logits.len() / e;
    let l = t(&be, rows, e, logits);
    let (mut ids, mut w) = (be.alloc(rows, k)?, be.alloc(rows, k)?);
    let r = MoeRouting {
        num_experts: e,
        top_k: k,
        norm_topk_prob: norm,
    };
    be.moe_route(&l, &r, &mut ids, &mut w)?;
    let mut ties = Vec::new();
    if let Some(script) = script {
        let mut tap = RouteTap::Record(vec![script]).into_follower()?;
        tap.after_route(&be, &r, &l, &mut ids, &mut w)?;
        ties = tap.ties().to_vec();
    }
    Ok((be.to_host(&ids)?, be.to_host(&w)?, ties))
}

#[test]
fn routing_is_softmax_then_top_k_then_optional_renormalization() {
    let logits = [0.5f32, 2.0, -1.0, 1.0];
    let z: f32 = logits.iter().map(|x| x.exp()).sum();
    let p: Vec<f32> = logits.iter().map(|x| x.exp() / z).collect();
    let (ids, w) = route(&logits, 4, 2, false);
    assert_eq!(ids, vec![1.0, 3.0]);
    assert!(
        (w[0] - p[1]).abs() < 1e-7 && (w[1] - p[3]).abs() < 1e-7,
        "{w:?} vs {p:?}"
    );
    let (ids, w) = route(&logits, 4, 2, true);
    assert_eq!(ids, vec![1.0, 3.0]);
    assert!((w[0] + w[1] - 1.0).abs() < 1e-6);
    assert!((w[0] / w[1] - p[1] / p[3]).abs() < 1e-5);
    // top-k = all experts, renormalized: the full softmax.
    let (_, w) = route(&logits, 4, 4, true);
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    for (a, b) in w.iter().zip(&sorted) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn routing_ties_pick_the_lower_expert_id_first() {
    let (ids, w) = route(&[1.0, 2.0, 2.0, 2.0, 0.0, 2.0], 6, 3, false);
    assert_eq!(ids, vec![1.0, 2.0, 3.0]);
    assert!(w[0] == w[1] && w[1] == w[2]);
    let (ids, w) = route(&[0.0; 8], 8, 2, true);
    assert_eq!(ids, vec![0.0, 1.0]);
    assert_eq!(w, vec![0.5, 0.5]);
}

fn follow(
    logits: &[f32],
    e: usize,
    k: usize,
    script: Vec<u32>,
) -> anyhow::Result<(Vec<f32>, Vec<f32>, Vec<RouteTie>)> {
    route_following(logits, e, k, true, Some(script))
}

#[test]
fn routing_follower_takes_a_near_tie_with_its_own_weights_and_rejects_any_other_choice() {
    // Token 0: experts 0 and 1 within 1% of the scale (3.0); token 1: a clear order.
    let logits = [3.0f32, 2.98, -1.0, 0.5, 0.0, 1.0, 2.0, -2.0];
    let (own, w0) = route(&logits, 4, 1, true);
    assert_eq!(own, vec![0.0, 2.0]);
    // The recording took expert 1 for token 0 (and agrees on token 1).
    let (ids, w, ties) = follow(&logits, 4, 1, vec![1, 2]).unwrap();
    assert_eq!(ids, vec![1.0, 2.0]);
    assert_eq!(w, w0, "top-1 renormalized: both weights 1");
    assert_eq!(ties.len(), 1);
    assert_eq!((ties[0].call, ties[0].token), (0, 0));
    assert_eq!(
        (ties[0].own.clone(), ties[0].taken.clone()),
        (vec![0], vec![1])
    );
    assert!(
        (ties[0].gap - 0.02).abs() < 1e-5 && ties[0].scale == 3.0,
        "{:?}",
        ties[0]
    );
    // Top-2 without a tie at the boundary of the set, in another order: nothing to follow.
    let (ids, _, ties) = follow(&logits[..4], 4, 2, vec![1, 0]).unwrap();
    assert_eq!((ids, ties.len()), (vec![0.0, 1.0], 0));
    // Top-2 {0, 1} vs a recording of {0, 3}: 3 is 2.48 below expert 1, not a near tie.
    let e = follow(&logits[..4], 4, 2, vec![0, 3])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("beyond a near tie") && e.contains("token 0") && e.contains("[0, 3]"),
        "{e}"
    );
    // The near tie with weights that are this run's own probabilities, renormalized.
    let l = [1.0f32, 0.995, 0.99, -3.0];
    let (ids, w, ties) = follow(&l, 4, 2, vec![0, 2]).unwrap();
    assert_eq!((ids, ties.len()), (vec![0.0, 2.0], 1));
    let (p0, p2) = (1.0f32.exp(), 0.99f32.exp());
    assert!((w[0] - p0 / (p0 + p2)).abs() < 1e-6 && (w[1] - p2 / (p0 + p2)).abs() < 1e-6);
    // A recording of another length, or of an expert that does not exist, is an error.
    let e = follow(&l, 4, 2, vec![0]).unwrap_err().to_string();
    assert!(
        e.contains("routed 0 tokens in the recorded run, 1 here"),
        "{e}"
    );
    let e = follow(&l, 4, 2, vec![0, 9]).unwrap_err().to_string();
    assert!(e.contains("recorded expert 9 of 4"), "{e}");
}

#[test]
fn routing_tap_recorded_and_followed_on_a_fixture_reproduces_the_forward() {
    let cpu = CpuBackend;
    let m = ModelRef::Dir(fixtures_dir().join("qwen3_moe"))
        .load(&cpu)
        .unwrap();
    let p = &reference("qwen3_moe").prompts[1];
    let plain = engine::prompt_logits(&cpu, &m, p, true).unwrap();
    let (a, rec) =
        engine::prompt_logits_tapped(&cpu, &m, p, true, Some(RouteTap::record())).unwrap();
    assert_eq!(a, plain);
    let rec = rec.unwrap();
    let RouteTap::Record(calls) = &rec else {
        panic!("{rec:?}")
    };
    // Two sparse layers (layer 1 is dense: mlp_only_layers), each T·k ids.
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.len() == p.len() * 4));
    let script = calls.clone();
    let (b, fol) =
        engine::prompt_logits_tapped(&cpu, &m, p, true, Some(rec.into_follower().unwrap()))
            .unwrap();
    assert_eq!(b, plain);
    assert!(fol.unwrap().ties().is_empty());
    // Token 0's 4th and 5th router logits nearly tie in both sparse layers (0.0046 apart, the
    // flip a bf16 GPU run makes): a recording that took the 5th is followed, and changes the
    // logits, where any far choice is refused.
    let mut followed = 0;
    for alt in 0..16u32 {
        let mut s = script.clone();
        if s[0][..4].contains(&alt) {
            continue;
        }
        s[0][3] = alt;
        let tap = RouteTap::Record(s).into_follower().unwrap();
        match engine::prompt_logits_tapped(&cpu, &m, p, true, Some(tap)) {
            Ok((c, Some(t))) => {
                followed += 1;
                // (Token 0's second sparse layer may then follow the recording too.)
                assert_eq!((t.ties()[0].call, t.ties()[0].token), (0, 0));
                let d = max_rel_err(&c, &plain);
                assert!(
                    d > 1e-3,
                    "following expert {alt} changed the logits by only {d:.2e}"
                );
            }
            Ok((_, None)) => panic!("the tap was lost"),
            Err(e) => assert!(format!("{e:#}").contains("beyond a near tie"), "{e:#}"),
        }
    }
    // 12 alternatives: the one or two just below the top-4 are followed, the rest refused.
    assert!(
        (1..=2).contains(&followed),
        "{followed} of 12 experts followed as near ties of token 0's top-4"
    );
}

#[test]
fn routing_rejects_bad_shapes_by_name() {
    let be = CpuBackend;
    let l = t(&be, 1, 4, &[0.0; 4]);
    let (mut ids, mut w) = (be.alloc(1, 2).unwrap(), be.alloc(1, 2).unwrap());
    let r = MoeRouting {
        num_experts: 5,
        top_k: 2,
        norm_topk_prob: true,
    };
    let err = be
        .moe_route(&l, &r, &mut ids, &mut w)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("moe_route:"), "{err}");
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Experts {
    x: CpuTensor,
    gate_up: CpuTensor,
    down: CpuTensor,
    shape: MoeExperts,
}

fn experts(tokens: usize, ne: usize, k: usize, d: usize, i: usize) -> Experts {
    let be = CpuBackend;
    Experts {
        x: t(&be, tokens, d, &values(tokens * d, 1)),
        gate_up: t(&be, ne * 2 * i, d, &values(ne * 2 * i * d, 2)),
        down: t(&be, ne * d, i, &values(ne * d * i, 3)),
        shape: MoeExperts {
            num_experts: ne,
            top_k: k,
            hidden: d,
            intermediate: i,
            act: Activation::Silu,
        },
    }
}

/// One expert on one token with the dense ops: down · (act(gate · x) * (up · x)).
fn dense_expert(ex: &Experts, tok: usize, e: usize) -> Vec<f32> {
    let be = CpuBackend;
    let (d, i) = (ex.shape.hidden, ex.shape.intermediate);
    let x = t(&be, 1, d, ex.x.row(tok));
    let gu = t(
        &be,
        2 * i,
        d,
        &ex.gate_up.data[e * 2 * i * d..(e + 1) * 2 * i * d],
    );
    let dn = t(&be, d, i, &ex.down.data[e * d * i..(e + 1) * d * i]);
    let (mut h, mut a, mut y) = (
        be.alloc(1, 2 * i).unwrap(),
        be.alloc(1, i).unwrap(),
        be.alloc(1, d).unwrap(),
    );
    be.matmul(&x, &gu, None, &mut h).unwrap();
    be.act_mul(&h, ex.shape.act, &mut a).unwrap();
    be.matmul(&a, &dn, None, &mut y).unwrap();
    be.to_host(&y).unwrap()
}

fn run_experts(ex: &Experts, ids: &[f32], w: &[f32]) -> anyhow::Result<Vec<f32>> {
    let be = CpuBackend;
    let (n, k) = (ex.x.rows, ex.shape.top_k);
    let ids = t(&be, n, k, ids);
    let w = t(&be, n, k, w);
    let mut scratch = be.alloc(n * k, 2 * ex.shape.intermediate)?;
    let mut out = be.alloc(n, ex.shape.hidden)?;
    be.moe_experts(
        &ex.x,
        &ids,
        &w,
        &ex.gate_up,
        &ex.down,
        &ex.shape,
        &mut scratch,
        &mut out,
    )?;
    be.to_host(&out)
}

#[test]
fn experts_op_equals_the_weighted_sum_of_dense_experts() {
    let (n, ne, k, d, i) = (5, 6, 2, 16, 8);
    let mut ex = experts(n, ne, k, d, i);
    // Experts 4 and 5 get no token: poison them, the op must never read them.
    for v in &mut ex.gate_up.data[4 * 2 * i * d..] {
        *v = f32::NAN;
    }
    for v in &mut ex.down.data[4 * d * i..] {
        *v = f32::NAN;
    }
    let ids = [0.0, 1.0, 1.0, 3.0, 2.0, 0.0, 3.0, 2.0, 1.0, 0.0];
    let w = [0.7, 0.3, 0.6, 0.4, 0.5, 0.5, 0.9, 0.1, 0.2, 0.8];
    let got = run_experts(&ex, &ids, &w).unwrap();
    for tok in 0..n {
        let mut want = vec![0f32; d];
        for j in 0..k {
            let y = dense_expert(&ex, tok, ids[tok * k + j] as usize);
            for (a, b) in want.iter_mut().zip(y) {
                *a += w[tok * k + j] * b;
            }
        }
        let e = max_rel_err(&got[tok * d..(tok + 1) * d], &want);
        assert!(e < 1e-6, "token {tok}: relative error {e:.2e}");
    }
}

#[test]
fn experts_op_with_every_token_on_one_expert() {
    let (n, ne, k, d, i) = (4, 8, 1, 16, 8);
    let ex = experts(n, ne, k, d, i);
    let got = run_experts(&ex, &[5.0; 4], &[1.0; 4]).unwrap();
    for tok in 0..n {
        let want = dense_expert(&ex, tok, 5);
        assert!(max_rel_err(&got[tok * d..(tok + 1) * d], &want) < 1e-6);
    }
    // And routed by moe_route: one dominant logit for every token.
    let mut logits = vec![0f32; n * ne];
    for tok in 0..n {
        logits[tok * ne + 5] = 10.0;
    }
    let (ids, w) = route(&logits, ne, 2, true);
    for tok in 0..n {
        assert_eq!(ids[tok * 2], 5.0);
        assert!(w[tok * 2] > 0.99);
    }
}

#[test]
fn experts_op_rejects_an_expert_id_out_of_range() {
    let ex = experts(2, 4, 1, 8, 4);
    let err = run_experts(&ex, &[1.0, 4.0], &[1.0, 1.0])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("moe_experts:") && err.contains("expert 4"),
        "{err}"
    );
}

#[test]
fn experts_op_rejects_mismatched_shapes_by_name() {
    // The stacked weights of 4 experts checked against a shape claiming 5.
    let mut ex = experts(2, 4, 1, 8, 4);
    ex.shape.num_experts = 5;
    let err = run_experts(&ex, &[1.0, 2.0], &[1.0, 1.0])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stacked weights are (32, 8) and (32, 4); expected [40, 8] and [40, 4]"),
        "{err}"
    );
    // top-k 2 in the shape, one id per token given.
    let mut ex = experts(2, 4, 1, 8, 4);
    ex.shape.top_k = 2;
    let be = CpuBackend;
    let ids = t(&be, 2, 1, &[0.0, 1.0]);
    let mut scratch = be.alloc(4, 8).unwrap();
    let mut out = be.alloc(2, 8).unwrap();
    let err = be
        .moe_experts(
            &ex.x,
            &ids,
            &ids,
            &ex.gate_up,
            &ex.down,
            &ex.shape,
            &mut scratch,
            &mut out,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected hidden 8, top-k 2"), "{err}");
}

#[test]
fn sigmoid_gate_add_scales_and_accumulates() {
    let be = CpuBackend;
    let x = t(&be, 2, 3, &[1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
    let g = t(&be, 2, 1, &[0.0, 100.0]);
    let mut out = t(&be, 2, 3, &[1.0; 6]);
    be.sigmoid_gate_add(&x, &g, &mut out).unwrap();
    assert_eq!(
        be.to_host(&out).unwrap(),
        vec![1.5, 2.0, 2.5, 0.0, 1.0, 2.0]
    );
}

/// A preset's config with small dimensions but its own expert count, top-k and routing flags.
fn shrunk(preset: &str) -> ModelSpec {
    let (_, json) = PRESETS.iter().find(|p| p.0 == preset).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    let o = v.as_object_mut().unwrap();
    for (k, x) in [
        ("vocab_size", 512),
        ("hidden_size", 64),
        ("intermediate_size", 96),
        ("moe_intermediate_size", 32),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
        ("head_dim", 16),
    ] {
        if k != "head_dim" || o.contains_key(k) {
            o.insert(k.into(), x.into());
        }
    }
    ModelSpec::from_json_str(&v.to_string(), preset).unwrap()
}

#[test]
fn shrunk_synthetic_moe_presets_route_tokens_to_many_experts() {
    for preset in ["mixtral-8x7b", "qwen3-30b-a3b", "grok-1"] {
        let be = CpuBackend;
        let spec = shrunk(preset);
        let moe = spec.moe.clone().unwrap();
        let src = SyntheticSource::new(&spec, 0);
        let m = Model::load(&be, spec, &src).unwrap_or_else(|e| panic!("{preset}: {e:#}"));
        let prompt: Vec<u32> = (0..48).map(|i| (i * 37 + 11) % 512).collect();
        let n = prompt.len();
        let blocks = n.div_ceil(BLOCK_SIZE);
        let mut alloc = BlockAllocator::new(blocks, BLOCK_SIZE);
        let mut cache = be.alloc_kv_cache(m.kv_shape(blocks, BLOCK_SIZE)).unwrap();
        let mut ws = Workspace::new(&be, &m.spec, n).unwrap();
        let mut step = StepInput {
            block_size: BLOCK_SIZE,
            ..Default::default()
        };
        SeqCache::default()
            .push_to_step(&mut alloc, &prompt, &mut step)
            .unwrap();
        let logits = m.forward(&be, &step, &mut cache, &mut ws, false).unwrap();
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{preset}: non-finite logits"
        );
        let ids = ws.last_expert_ids(&be).unwrap().unwrap();
        assert_eq!(ids.len(), n * moe.top_k);
        let mut used = vec![0usize; moe.num_experts];
        for id in &ids {
            used[*id as usize] += 1;
        }
        let distinct = used.iter().filter(|&&c| c > 0).count();
        eprintln!(
            "{preset} (shrunk): {distinct} of {} experts used, the busiest takes {} of {} slots",
            moe.num_experts,
            used.iter().max().unwrap(),
            n * moe.top_k
        );
        let busiest = *used.iter().max().unwrap();
        assert!(
            distinct >= moe.num_experts.min(n * moe.top_k) / 2 && busiest < n,
            "{preset}: degenerate routing, tokens per expert {used:?}"
        );
    }
}

#[test]
fn full_size_moe_presets_parse_with_their_published_routing() {
    let spec = |p: &str| flint::weights::synthetic::preset_spec(p).unwrap();
    let mx = spec("mixtral-8x7b");
    let m = mx.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.top_k, m.norm_topk_prob), (8, 2, true));
    assert!(m.sparse_layers.iter().all(|&s| s));
    let q = spec("qwen3-30b-a3b");
    let m = q.moe.as_ref().unwrap();
    assert_eq!(
        (m.num_experts, m.top_k, m.expert_intermediate),
        (128, 8, 768)
    );
    assert!(m.norm_topk_prob);
    let g = spec("grok-1");
    assert!(!g.moe.as_ref().unwrap().norm_topk_prob);
    assert_eq!(g.attn_softcap, Some(30.0));
}

/// A fixture's weights under its config with one field changed.
fn load_with(name: &str, key: &str, value: serde_json::Value) -> anyhow::Result<Model<CpuBackend>> {
    let dir = fixtures_dir().join(name);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().insert(key.into(), value);
    let spec = ModelSpec::from_json_str(&v.to_string(), "edited config.json")?;
    let store = WeightStore::open(&dir)?;
    Model::load(&CpuBackend, spec, &store)
}

#[test]
fn misshapen_moe_tensors_are_errors_naming_them() {
    let err = |name: &str, key: &str, v: usize| {
        format!("{:#}", load_with(name, key, v.into()).err().unwrap())
    };
    // Router [E, D] against a config with one more expert.
    let e = err("mixtral", "num_local_experts", 9);
    assert!(
        e.contains("mixtral/model.safetensors")
            && e.contains("block_sparse_moe.gate.weight")
            && e.contains("[9, 64]"),
        "{e}"
    );
    // Per-expert layout: each expert's own tensor is checked.
    let e = err("mixtral", "intermediate_size", 32);
    assert!(
        e.contains("block_sparse_moe.experts.0.w1.weight") && e.contains("[32, 64]"),
        "{e}"
    );
    // Fused layout: the stacked [E, 2I, D] tensor is checked as a whole.
    let e = err("qwen3_moe", "moe_intermediate_size", 16);
    assert!(
        e.contains("mlp.experts.gate_up_proj") && e.contains("[16, 32, 64]"),
        "{e}"
    );
}

/// Grok-1's checkpoint with its norms spelled `.weight` (as vLLM renames the port's `.scale`).
struct NormsAsWeight(WeightStore);

impl flint::weights::TensorSource for NormsAsWeight {
    fn load(&self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        self.0
            .load_f32(&name.replace("norm.weight", "norm.scale"), shape)
    }
    fn contains(&self, name: &str) -> bool {
        !name.ends_with("norm.scale") && self.0.contains(&name.replace("norm.weight", "norm.scale"))
    }
}

#[test]
fn grok1_norms_load_under_either_spelling() {
    let dir = fixtures_dir().join("grok1");
    let spec = ModelSpec::from_dir(&dir).unwrap();
    let src = NormsAsWeight(WeightStore::open(&dir).unwrap());
    let m = Model::load(&CpuBackend, spec, &src).unwrap();
    let r = reference("grok1");
    let got = engine::prompt_logits(&CpuBackend, &m, &r.prompts[1], false).unwrap();
    assert!(max_rel_err(&got, &r.logits_last[1]) < 1e-4);
}

// --- The CUDA MoE ops and the MoE layer bench -------------------------------------------

/// The CUDA ops against the CPU backend on one routing (both expert paths), on a machine with
/// a GPU; elsewhere it says it skips (`flint selftest` is the full GPU check).
#[test]
fn cuda_moe_ops_match_the_cpu_backend_when_a_gpu_is_present() {
    use flint::backend::cuda::{CudaBackend, MoePath};
    let gpu = match CudaBackend::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("cuda_moe_ops_match_the_cpu_backend_when_a_gpu_is_present: skipped ({e:#})");
            return;
        }
    };
    let cpu = CpuBackend;
    let bf = |v: f32| half::bf16::from_f32(v).to_f32();
    let (tokens, ne, k, d, i) = (19, 6, 2, 72, 40);
    let logits: Vec<f32> = values(tokens * ne, 11).into_iter().map(bf).collect();
    let routing = MoeRouting {
        num_experts: ne,
        top_k: k,
        norm_topk_prob: true,
    };
    let (mut ci, mut cw) = (cpu.alloc(tokens, k).unwrap(), cpu.alloc(tokens, k).unwrap());
    let (mut gi, mut gw) = (gpu.alloc(tokens, k).unwrap(), gpu.alloc(tokens, k).unwrap());
    cpu.moe_route(&t(&cpu, tokens, ne, &logits), &routing, &mut ci, &mut cw)
        .unwrap();
    let gl = gpu.tensor_from(&logits, tokens, ne).unwrap();
    gpu.moe_route(&gl, &routing, &mut gi, &mut gw).unwrap();
    let ids = cpu.to_host(&ci).unwrap();
    assert_eq!(gpu.to_host(&gi).unwrap(), ids, "expert ids");
    assert!(max_rel_err(&gpu.to_host(&gw).unwrap(), &cpu.to_host(&cw).unwrap()) < 1e-2);

    let x: Vec<f32> = values(tokens * d, 12).into_iter().map(bf).collect();
    let gu: Vec<f32> = values(ne * 2 * i * d, 13).into_iter().map(bf).collect();
    let dn: Vec<f32> = values(ne * d * i, 14).into_iter().map(bf).collect();
    let w: Vec<f32> = cpu.to_host(&cw).unwrap().into_iter().map(bf).collect();
    let shape = MoeExperts {
        num_experts: ne,
        top_k: k,
        hidden: d,
        intermediate: i,
        act: Activation::Silu,
    };
    let mut cs = cpu.alloc(tokens * k, 2 * i).unwrap();
    let mut co = cpu.alloc(tokens, d).unwrap();
    cpu.moe_experts(
        &t(&cpu, tokens, d, &x),
        &ci,
        &t(&cpu, tokens, k, &w),
        &t(&cpu, ne * 2 * i, d, &gu),
        &t(&cpu, ne * d, i, &dn),
        &shape,
        &mut cs,
        &mut co,
    )
    .unwrap();
    let want = cpu.to_host(&co).unwrap();
    let up = |data: &[f32], r: usize, c: usize| gpu.tensor_from(data, r, c).unwrap();
    let mut paths = vec![MoePath::Gemv, MoePath::Grouped];
    if gpu.moe_wgmma_unavailable().is_none() {
        paths.push(MoePath::Wgmma);
    }
    for path in paths {
        let mut gs = gpu.alloc(tokens * k, 2 * i).unwrap();
        let mut go = gpu.alloc(tokens, d).unwrap();
        gpu.poison(&mut go).unwrap();
        gpu.moe_experts_with(
            &up(&x, tokens, d),
            &up(&ids, tokens, k),
            &up(&w, tokens, k),
            &up(&gu, ne * 2 * i, d),
            &up(&dn, ne * d, i),
            &shape,
            &mut gs,
            &mut go,
            path,
        )
        .unwrap();
        let got = gpu.to_host(&go).unwrap();
        let (num, den) = got.iter().zip(&want).fold((0f64, 0f64), |(n, d), (g, c)| {
            (n + (*g as f64 - *c as f64).powi(2), d + (*c as f64).powi(2))
        });
        let rel = (num / den).sqrt();
        assert!(rel < 1e-2, "{path:?}: rel-L2 {rel}");
    }
}

fn flint_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(args)
        .output()
        .expect("runs flint");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bench_moe_layer_reports_every_token_count_with_its_routing_spread() {
    let dir = fixtures_dir().join("mixtral");
    let (code, out, err) = flint_cli(&[
        "bench",
        "--moe-layer",
        "-m",
        dir.to_str().unwrap(),
        "--device",
        "cpu",
        "--moe-tokens",
        "1,9,40",
        "-r",
        "1",
        "-o",
        "json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    let rows = v["moe_layer"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    let spec = ModelRef::Dir(dir.clone()).spec().unwrap();
    let m = spec.moe.unwrap();
    for (r, t) in rows.iter().zip([1usize, 9, 40]) {
        assert_eq!(r["tokens"], t);
        for key in ["flint_ms", "loop_ms", "dense_ms"] {
            let ms = r[key].as_f64().unwrap();
            assert!(ms > 0.0 && ms.is_finite(), "{key} = {ms}");
        }
        let (lo, hi) = (
            r["expert_tokens_min"].as_u64().unwrap() as usize,
            r["expert_tokens_max"].as_u64().unwrap() as usize,
        );
        assert!(lo <= hi && hi <= t, "{r}");
        // The busiest expert holds at least its share of the t·k assignments.
        assert!(hi * m.num_experts >= t * m.top_k, "{r}");
    }
    // At 40 tokens the routing spreads: no expert takes every token.
    let last = &rows[2];
    assert!(last["expert_tokens_max"].as_u64().unwrap() < 40, "{last}");
}

#[test]
fn bench_moe_layer_rejects_a_dense_model_by_name() {
    let dir = fixtures_dir().join("llama3");
    let (code, out, err) = flint_cli(&[
        "bench",
        "--moe-layer",
        "-m",
        dir.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("has no MoE layers") && !err.contains("panicked"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

/// The MoE kernels (kernels/moe_route.cu, moe_gemm.cu, moe_gemv.cu, moe_wgmma.cu) compiled for
/// the host (tests/moe_emulation: CTAs as std::threads, warp shuffles, a wmma shim, lane-exact
/// mma.sync and ldmatrix, wgmma reading its operands through their descriptors, cp.async as a
/// plain copy) against a double-precision reference:
/// router ties, dispatch tables, every expert path (gather-GEMV, mma.sync and wgmma grouped
/// GEMMs) with the combine, the shared-expert gate,
/// and the quantized experts (int8, int4 sym/asym/act-order, fp8 per row and in blocks) on
/// both their paths; also kernels/quant_gemv.cu's dense GEMV (both its kernels) on the same
/// quantized layouts, and kernels/gemv.cu's bf16 GEMV (multi-chunk K, scalar path). It checks
/// the kernels' index math and barrier placement without a GPU (not their speed, nor
/// asynchronous-copy timing). Needs a C++20 compiler and the CUDA
/// headers that scripts/setup.sh installs; skips without them unless FLINT_REQUIRE_KERNELS=1.
#[test]
fn moe_kernels_pass_their_host_emulation() {
    let Some(exe) = build_emulation(
        "moe_kernels_pass_their_host_emulation",
        "tests/moe_emulation/main.cpp",
        "moe_emulation",
        &[],
    ) else {
        return;
    };
    let stdout = run_emulation_to_pass(&exe);
    assert!(
        stdout.contains("PASS  quant")
            && stdout.contains("PASS  dense-gemv")
            && stdout.contains("PASS  experts wgmma")
    );
}

/// One run of the MoE emulation built with a planted error: whether it exited successfully,
/// and its report (a `PASS  <group> ...` or `FAIL  <group> ...` line per case).
struct PlantedRun {
    passed: bool,
    stdout: String,
}

impl PlantedRun {
    /// How many of the report's lines start with `prefix`.
    fn count(&self, prefix: &str) -> usize {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

/// Builds tests/moe_emulation as `name` with `define` planted and runs its cases of `group`
/// (the planted-error tests below). None: the emulation cannot be built here
/// (build_emulation says why, and fails instead under FLINT_REQUIRE_KERNELS=1).
fn run_planted_emulation(test: &str, name: &str, define: &str, group: &str) -> Option<PlantedRun> {
    let exe = build_emulation(test, "tests/moe_emulation/main.cpp", name, &[define])?;
    let run = std::process::Command::new(&exe)
        .arg(group)
        .output()
        .expect("runs the emulation");
    Some(PlantedRun {
        passed: run.status.success(),
        stdout: String::from_utf8_lossy(&run.stdout).into_owned(),
    })
}

/// The emulation can fail: built with FLINT_EMULATE_BREAK_QUANT_INDEX, the quantized-expert
/// kernels read the next expert's rows, and every quantized case must then fail.
#[test]
fn moe_emulation_catches_a_broken_quantized_expert_index() {
    let Some(run) = run_planted_emulation(
        "moe_emulation_catches_a_broken_quantized_expert_index",
        "moe_emulation_broken",
        "FLINT_EMULATE_BREAK_QUANT_INDEX",
        "quant",
    ) else {
        return;
    };
    let stdout = &run.stdout;
    let cases = stdout.lines().filter(|l| l.contains(" quant ")).count();
    let failed = run.count("FAIL  quant");
    assert!(
        !run.passed && cases > 0 && failed == cases,
        "the broken build must fail every quantized case ({failed} of {cases} failed):\n{stdout}"
    );
}

/// The emulation sees the bf16 grouped GEMM's fragments: built with FLINT_SHIM_MMA_SWAP_B
/// (every mma.sync gets its two B registers swapped, as a kernel passing them in the wrong
/// order would), every grouped bf16 expert case must fail while the gather-GEMV cases (no
/// tensor cores) still pass.
#[test]
fn moe_emulation_catches_a_swapped_mma_fragment() {
    let Some(run) = run_planted_emulation(
        "moe_emulation_catches_a_swapped_mma_fragment",
        "moe_emulation_swap_b",
        "FLINT_SHIM_MMA_SWAP_B",
        "experts",
    ) else {
        return;
    };
    let count = |p: &str| run.count(p);
    let grouped = count("PASS  experts grouped") + count("FAIL  experts grouped");
    assert!(
        !run.passed
            && grouped > 0
            && count("FAIL  experts grouped") == grouped
            && count("PASS  experts gemv") > 0
            && count("FAIL  experts gemv") == 0,
        "the swapped build must fail every grouped case and no GEMV case:\n{}",
        run.stdout
    );
}

/// The emulation sees the wgmma kernels' shared-memory layout: built with
/// FLINT_SHIM_WGMMA_NO_SWIZZLE (the stand-in reads the operands as if the descriptors named
/// unswizzled tiles while the kernel stages them swizzled), every wgmma expert case must fail
/// while the mma.sync and GEMV cases still pass.
#[test]
fn moe_emulation_catches_a_wgmma_layout_mismatch() {
    let Some(run) = run_planted_emulation(
        "moe_emulation_catches_a_wgmma_layout_mismatch",
        "moe_emulation_no_swizzle",
        "FLINT_SHIM_WGMMA_NO_SWIZZLE",
        "experts",
    ) else {
        return;
    };
    let count = |p: &str| run.count(p);
    let wgmma = count("PASS  experts wgmma") + count("FAIL  experts wgmma");
    assert!(
        !run.passed
            && wgmma > 0
            && count("FAIL  experts wgmma") == wgmma
            && count("PASS  experts grouped") > 0
            && count("FAIL  experts grouped") == 0
            && count("FAIL  experts gemv") == 0,
        "the unswizzled build must fail every wgmma case and nothing else:\n{}",
        run.stdout
    );
}

#[test]
fn bench_moe_layer_runs_quantized_experts() {
    let dir = fixtures_dir().join("mixtral");
    for q in ["int4", "int8", "fp8"] {
        let (code, out, err) = flint_cli(&[
            "bench",
            "--moe-layer",
            "-m",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--moe-tokens",
            "1,9",
            "--quant",
            q,
            "-r",
            "1",
            "-o",
            "json",
        ]);
        assert_eq!(code, Some(0), "{q}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
        assert_eq!(v["experts"], q);
        let rows = v["moe_layer"].as_array().expect("rows");
        assert_eq!(rows.len(), 2);
        for r in rows {
            assert_eq!(r["experts"], q);
            assert!(r["flint_ms"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}
