//! The batched engine on the CPU backend against the fixtures: a burst of requests through a
//! KV cache far smaller than their sum (preemption, chunked prefill) gives every request the
//! greedy output it gets alone; blocks never leak; bad input is an error naming it.

mod common;

use common::fixtures_dir;
use flint::backend::cpu::CpuBackend;
use flint::engine::{self, Engine, EngineConfig, FinishReason, GenerateOptions, Request};
use flint::sampling::SamplingParams;
use flint::ModelRef;

fn engine(name: &str, cfg: EngineConfig) -> Engine<CpuBackend> {
    let m = ModelRef::Dir(fixtures_dir().join(name))
        .load(&CpuBackend)
        .unwrap();
    Engine::new(CpuBackend, m, cfg).unwrap()
}

fn burst(vocab: usize) -> Vec<Request> {
    (0..12)
        .map(|i| Request {
            prompt: (0..1 + i)
                .map(|j| ((i * 7 + j * 13 + 3) % vocab) as u32)
                .collect(),
            max_new_tokens: 3 + (i * 5) % 11,
            ignore_eos: true,
            ..Default::default()
        })
        .collect()
}

/// Each request alone through the single-sequence path.
fn alone(e: &Engine<CpuBackend>, r: &Request) -> Vec<u32> {
    let opts = GenerateOptions {
        max_new_tokens: r.max_new_tokens,
        sampling: r.sampling,
        eos_ids: vec![],
        ignore_eos: true,
    };
    engine::generate(&e.backend, &e.model, &r.prompt, &opts)
        .unwrap()
        .tokens
}

fn small_cfg(max_batch_tokens: usize) -> EngineConfig {
    EngineConfig {
        num_blocks: 8,
        block_size: 4,
        max_num_seqs: 6,
        max_batch_tokens,
    }
}

#[test]
fn burst_through_a_small_cache_matches_each_request_alone() {
    for budget in [64, 5] {
        let mut e = engine("llama3", small_cfg(budget));
        let reqs = burst(e.model.spec.vocab_size);
        let total: usize = reqs.iter().map(|r| r.prompt.len() + r.max_new_tokens).sum();
        assert!(total > 4 * 32, "the burst must overflow the cache");
        let want: Vec<Vec<u32>> = reqs.iter().map(|r| alone(&e, r)).collect();
        let got = e.generate(reqs).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.reason, FinishReason::Length, "request {i}: {g:?}");
            assert_eq!(&g.tokens, w, "request {i} with token budget {budget}");
        }
        assert_eq!(e.num_free_blocks(), 8, "blocks leaked");
        assert!(
            e.num_preemptions() > 0,
            "budget {budget}: nothing was preempted"
        );
    }
}

#[test]
fn streamed_tokens_add_up_to_the_finished_output() {
    let mut e = engine("qwen3", small_cfg(7));
    let reqs = burst(e.model.spec.vocab_size);
    let mut streamed = vec![Vec::new(); reqs.len()];
    let ids: Vec<u64> = reqs
        .iter()
        .map(|r| e.add_request(r.clone()).unwrap())
        .collect();
    let mut fin = Vec::new();
    while e.has_unfinished() {
        let out = e.step().unwrap();
        assert!(out.num_batched_tokens <= 7);
        for (id, t) in out.tokens {
            streamed[id as usize].push(t);
        }
        fin.extend(out.finished);
    }
    assert_eq!(fin.len(), ids.len());
    for f in fin {
        assert_eq!(f.tokens, streamed[f.id as usize]);
    }
    assert_eq!(e.num_free_blocks(), 8);
}

#[test]
fn seeded_sampling_is_the_same_alone_and_in_a_batch() {
    let mut e = engine("llama3", small_cfg(6));
    let mut reqs = burst(e.model.spec.vocab_size);
    for (i, r) in reqs.iter_mut().enumerate() {
        r.sampling = SamplingParams {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.95,
            seed: 100 + i as u64,
        };
    }
    let want: Vec<Vec<u32>> = reqs.iter().map(|r| alone(&e, r)).collect();
    let got = e.generate(reqs).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(&g.tokens, w);
    }
}

#[test]
fn aborts_free_their_blocks() {
    let mut e = engine("llama3", small_cfg(5));
    let reqs = burst(e.model.spec.vocab_size);
    let ids: Vec<u64> = reqs
        .into_iter()
        .map(|r| e.add_request(r).unwrap())
        .collect();
    for _ in 0..4 {
        e.step().unwrap();
    }
    let mut aborted = 0;
    for id in ids.iter().step_by(2) {
        aborted += e.abort(*id) as usize;
    }
    assert!(!e.abort(999));
    let mut reasons = Vec::new();
    while e.has_unfinished() {
        reasons.extend(e.step().unwrap().finished.into_iter().map(|f| f.reason));
    }
    let n = reasons
        .iter()
        .filter(|r| **r == FinishReason::Aborted)
        .count();
    assert_eq!(n, aborted);
    assert!(aborted >= 5);
    assert_eq!(e.num_free_blocks(), 8, "blocks leaked");
}

#[test]
fn a_request_larger_than_the_cache_ends_with_an_error() {
    let mut e = engine("llama3", small_cfg(16));
    let big = Request {
        prompt: vec![1; 32],
        max_new_tokens: 2,
        ..Default::default()
    };
    let ok = Request {
        prompt: vec![1; 3],
        max_new_tokens: 2,
        ignore_eos: true,
        ..Default::default()
    };
    let got = e.generate(vec![big, ok]).unwrap();
    assert_eq!(got[0].reason, FinishReason::Error);
    let msg = got[0].error.as_deref().unwrap();
    assert!(msg.contains("whole cache holds 32"), "{msg}");
    assert_eq!(got[1].reason, FinishReason::Length);
    // Growing past the cache while decoding, alone: an error too, not a hang.
    let grow = Request {
        prompt: vec![1; 30],
        max_new_tokens: 10,
        ignore_eos: true,
        ..Default::default()
    };
    let got = e.generate(vec![grow]).unwrap();
    assert_eq!(got[0].reason, FinishReason::Error, "{got:?}");
    assert_eq!(got[0].tokens.len(), 3);
    assert_eq!(e.num_free_blocks(), 8);
}

#[test]
fn bad_input_is_an_error_naming_it() {
    let mut e = engine("llama3", small_cfg(16));
    let v = e.model.spec.vocab_size as u32;
    let cases = [
        (
            Request {
                prompt: vec![],
                max_new_tokens: 1,
                ..Default::default()
            },
            "empty",
        ),
        (
            Request {
                prompt: vec![1, v],
                max_new_tokens: 1,
                ..Default::default()
            },
            "vocabulary",
        ),
        (
            Request {
                prompt: vec![1],
                max_new_tokens: 0,
                ..Default::default()
            },
            "max_new_tokens",
        ),
        (
            Request {
                prompt: vec![1],
                max_new_tokens: 1,
                sampling: SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                ..Default::default()
            },
            "temperature",
        ),
        (
            Request {
                prompt: vec![1],
                max_new_tokens: 1,
                stop_strings: vec!["x".into()],
                ..Default::default()
            },
            "tokenizer",
        ),
    ];
    for (r, want) in cases {
        let err = e.add_request(r).unwrap_err().to_string();
        assert!(err.contains(want), "{err} lacks {want}");
    }
    assert!(Engine::new(
        CpuBackend,
        e.model,
        EngineConfig {
            max_num_seqs: 0,
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn stop_tokens_end_a_request() {
    let mut e = engine("llama3", small_cfg(16));
    let r = Request {
        prompt: vec![5, 6, 7],
        max_new_tokens: 8,
        ignore_eos: true,
        ..Default::default()
    };
    let free = alone(&e, &r);
    let stop = Request {
        stop_token_ids: vec![free[2]],
        ..r
    };
    let got = e.generate(vec![stop]).unwrap();
    let k = free.iter().position(|t| *t == free[2]).unwrap();
    assert_eq!(got[0].reason, FinishReason::Stop);
    assert_eq!(got[0].tokens, free[..=k]);
}

#[test]
fn throughput_cli_reports_json() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["throughput", "--model", "synthetic:tiny", "--device", "cpu"])
        .args([
            "--num-requests",
            "5",
            "--input-len",
            "6",
            "--output-len",
            "4",
        ])
        .args([
            "--range-ratio",
            "0.5",
            "--num-blocks",
            "3",
            "--max-num-seqs",
            "4",
        ])
        .args(["--max-batch-tokens", "8", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["completed"], 5);
    assert_eq!(v["failed"], 0);
    assert!(v["output_tokens_per_s"].as_f64().unwrap() > 0.0);
    for k in ["ttft_ms", "itl_ms"] {
        assert!(v[k]["p50"].as_f64().unwrap() <= v[k]["p99"].as_f64().unwrap());
    }
}
