//! The CPU reference forward against transformers' own float32 outputs, for every family's
//! fixture (made by tests/fixtures/make_hf_fixtures.py): logits within 1e-4 relative, the
//! 16-token greedy continuation identical. Then the KV cache's own invariants: token-by-token
//! decode, chunked prefill and ragged batches all give the full-sequence logits.

mod common;

use common::{fixture_names, fixtures_dir, max_rel_err, reference};
use flint::backend::cpu::CpuBackend;
use flint::backend::StepInput;
use flint::engine::{self, GenerateOptions, BLOCK_SIZE};
use flint::kv_cache::{BlockAllocator, SeqCache};
use flint::model::{Model, Workspace};
use flint::sampling::SamplingParams;
use flint::ModelRef;

const TOL: f32 = 1e-4;
const FAMILIES: &[&str] = &[
    "gemma",
    "gemma2",
    "gemma3",
    "grok1",
    "llama2",
    "llama3",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
];

fn load(name: &str) -> Model<CpuBackend> {
    ModelRef::Dir(fixtures_dir().join(name))
        .load(&CpuBackend)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

#[test]
fn every_family_has_a_fixture() {
    let names = fixture_names();
    for f in FAMILIES {
        assert!(
            names.iter().any(|n| n == f),
            "missing fixture {f}; have {names:?}"
        );
    }
}

#[test]
fn logits_match_transformers() {
    for name in fixture_names() {
        let (be, m, r) = (CpuBackend, load(&name), reference(&name));
        for (p, want) in r.prompts.iter().zip(&r.logits_last) {
            let got = engine::prompt_logits(&be, &m, p, false).unwrap();
            let e = max_rel_err(&got, want);
            assert!(
                e < TOL,
                "{name}: prompt of {} tokens: relative error {e:.2e}",
                p.len()
            );
        }
        let longest = r.prompts.iter().max_by_key(|p| p.len()).unwrap();
        let got = engine::prompt_logits(&be, &m, longest, true).unwrap();
        let v = m.spec.vocab_size;
        assert_eq!(got.len(), longest.len() * v);
        for (i, want) in r.logits_all.iter().enumerate() {
            let e = max_rel_err(&got[i * v..(i + 1) * v], want);
            assert!(e < TOL, "{name}: position {i}: relative error {e:.2e}");
        }
    }
}

#[test]
fn greedy_matches_transformers() {
    for name in fixture_names() {
        let (be, m, r) = (CpuBackend, load(&name), reference(&name));
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

/// Runs `chunks` of one sequence as successive steps; returns the logits of every position.
fn run_chunks(m: &Model<CpuBackend>, prompt: &[u32], chunks: &[usize]) -> Vec<f32> {
    let be = CpuBackend;
    let blocks = prompt.len().div_ceil(BLOCK_SIZE);
    let mut alloc = BlockAllocator::new(blocks, BLOCK_SIZE);
    let mut cache =
        flint::backend::Backend::alloc_kv_cache(&be, m.kv_shape(blocks, BLOCK_SIZE)).unwrap();
    let mut ws = Workspace::new(&be, &m.spec, prompt.len()).unwrap();
    let mut seq = SeqCache::default();
    let mut out = Vec::new();
    let mut at = 0;
    for &c in chunks {
        let mut step = StepInput {
            block_size: BLOCK_SIZE,
            ..Default::default()
        };
        seq.push_to_step(&mut alloc, &prompt[at..at + c], &mut step)
            .unwrap();
        out.extend(m.forward(&be, &step, &mut cache, &mut ws, true).unwrap());
        at += c;
    }
    out
}

#[test]
fn incremental_decode_and_chunked_prefill_equal_the_full_pass() {
    for name in fixture_names() {
        let (m, r) = (load(&name), reference(&name));
        let p = r.prompts.iter().max_by_key(|p| p.len()).unwrap();
        let full = run_chunks(&m, p, &[p.len()]);
        let one_by_one = run_chunks(&m, p, &vec![1; p.len()]);
        let split = run_chunks(&m, p, &[3, p.len() - 3]);
        assert!(
            max_rel_err(&one_by_one, &full) < 1e-5,
            "{name}: token-by-token decode differs"
        );
        assert!(
            max_rel_err(&split, &full) < 1e-5,
            "{name}: chunked prefill differs"
        );
    }
}

#[test]
fn a_ragged_batch_equals_each_sequence_alone() {
    for name in fixture_names() {
        let (be, m, r) = (CpuBackend, load(&name), reference(&name));
        let total: usize = r.prompts.iter().map(|p| p.len()).sum();
        let blocks = r.prompts.iter().map(|p| p.len().div_ceil(BLOCK_SIZE)).sum();
        let mut alloc = BlockAllocator::new(blocks, BLOCK_SIZE);
        let mut cache =
            flint::backend::Backend::alloc_kv_cache(&be, m.kv_shape(blocks, BLOCK_SIZE)).unwrap();
        let mut ws = Workspace::new(&be, &m.spec, total).unwrap();
        let mut step = StepInput {
            block_size: BLOCK_SIZE,
            ..Default::default()
        };
        // Reverse order so block ids are not in prompt order.
        let mut seqs = vec![SeqCache::default(); r.prompts.len()];
        for (s, p) in seqs.iter_mut().zip(&r.prompts).rev() {
            s.push_to_step(&mut alloc, p, &mut step).unwrap();
        }
        let got = m.forward(&be, &step, &mut cache, &mut ws, false).unwrap();
        let v = m.spec.vocab_size;
        for (i, want) in r.logits_last.iter().rev().enumerate() {
            let e = max_rel_err(&got[i * v..(i + 1) * v], want);
            assert!(
                e < TOL,
                "{name}: sequence {i} in a batch: relative error {e:.2e}"
            );
        }
    }
}
