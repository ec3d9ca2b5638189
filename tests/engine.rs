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
        num_blocks: Some(8),
        block_size: 4,
        max_num_seqs: 6,
        max_batch_tokens,
        ..Default::default()
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
    assert_eq!(v["kv_cache"]["num_blocks"], 3);
    assert_eq!(v["kv_cache"]["max_concurrent_tokens"], 48);
    assert_eq!(v["kv_cache"]["source"], "configured");
    assert_eq!(v["failed"], 0);
    assert!(v["output_tokens_per_s"].as_f64().unwrap() > 0.0);
    for k in ["ttft_ms", "itl_ms"] {
        assert!(v[k]["p50"].as_f64().unwrap() <= v[k]["p99"].as_f64().unwrap());
    }
}

/// `flint throughput --quant` runs the model quantized on load: its requests give the tokens
/// the Engine API gives with the same `LoadOptions`, and (int4 on a 64-wide fixture moves
/// the logits far) not the float model's tokens, so the option cannot be silently dropped.
#[test]
fn throughput_with_quant_matches_the_engine_api_with_the_same_load_options() {
    use flint::throughput::{requests, run, ThroughputOptions};
    use flint::weights::quant_source::{LoadOptions, QuantMode};
    let model = ModelRef::Dir(fixtures_dir().join("llama3"));
    let load = LoadOptions {
        quant: Some("int4".parse::<QuantMode>().unwrap()),
        ..Default::default()
    };
    let opt = ThroughputOptions {
        num_requests: 5,
        input_len: 6,
        output_len: 6,
        range_ratio: 0.5,
        request_rate: None,
        seed: 3,
        sampling: flint::SamplingParams::default(),
        config: cfg(24, 16, true),
        load,
    };
    let rep = run(&CpuBackend, &model, &opt).unwrap();
    assert_eq!(
        (rep.completed, rep.failed, rep.quant.as_str()),
        (5, 0, "int4")
    );
    let run_api = |load: &LoadOptions| {
        let m = model.load_with(&CpuBackend, load).unwrap();
        let vocab = m.spec.vocab_size;
        let mut e = Engine::new(CpuBackend, m, opt.config.clone()).unwrap();
        let reqs = requests(&opt, vocab)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        let out = e.generate(reqs).unwrap();
        out.into_iter().map(|f| f.tokens).collect::<Vec<_>>()
    };
    let want = run_api(&load);
    assert_eq!(rep.outputs, want);
    assert!(want.iter().all(|t| !t.is_empty()));
    let float = run_api(&LoadOptions::default());
    assert_ne!(
        rep.outputs, float,
        "--quant int4 gave the float model's tokens"
    );
}

#[test]
fn throughput_cli_takes_quant_and_rejects_a_bad_one() {
    let fixture = fixtures_dir().join("llama3");
    let cli = |quant: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
            .args(["throughput", "--device", "cpu", "--model"])
            .arg(&fixture)
            .args([
                "--num-requests",
                "2",
                "--input-len",
                "4",
                "--output-len",
                "3",
            ])
            .args(["--num-blocks", "16", "--output", "json", "--quant", quant])
            .output()
            .unwrap()
    };
    let out = cli("int8");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["quant"].as_str(), v["completed"].as_u64()),
        (Some("int8"), Some(2))
    );
    let out = cli("int3");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("int3") && err.contains("int8"), "{err}");
}

// ---- prefix caching ----

fn cfg(num_blocks: usize, max_batch_tokens: usize, prefix_caching: bool) -> EngineConfig {
    EngineConfig {
        num_blocks: Some(num_blocks),
        block_size: 4,
        max_num_seqs: 6,
        max_batch_tokens,
        enable_prefix_caching: prefix_caching,
        ..Default::default()
    }
}

/// Requests sharing a 3-block (12-token) system prompt, each with its own tail; two of them
/// repeat another's whole prompt.
fn shared_prefix_burst(vocab: usize) -> Vec<Request> {
    let system: Vec<u32> = (0..12).map(|j| ((j * 31 + 7) % vocab) as u32).collect();
    (0..10)
        .map(|i| {
            let k = if i >= 8 { i - 8 } else { i };
            let tail = (0..1 + (k * 3) % 7).map(|j| ((k * 11 + j * 5 + 1) % vocab) as u32);
            Request {
                prompt: system.iter().copied().chain(tail).collect(),
                max_new_tokens: 2 + (i * 3) % 9,
                ignore_eos: true,
                ..Default::default()
            }
        })
        .collect()
}

fn assert_no_leaks(e: &Engine<CpuBackend>) {
    assert_eq!(e.num_block_references(), 0, "block references leaked");
    assert_eq!(
        e.num_free_blocks(),
        e.config.num_blocks.unwrap(),
        "blocks leaked"
    );
}

#[test]
fn prefix_caching_on_and_off_give_the_same_outputs() {
    // (cache blocks, token budget): roomy, tiny (preempts), tiny with small chunks.
    for (blocks, budget) in [(64, 64), (9, 64), (9, 5)] {
        let mut off = engine("llama3", cfg(blocks, budget, false));
        let reqs = shared_prefix_burst(off.model.spec.vocab_size);
        let want: Vec<Vec<u32>> = reqs.iter().map(|r| alone(&off, r)).collect();
        let got_off = off.generate(reqs.clone()).unwrap();
        let mut on = engine("llama3", cfg(blocks, budget, true));
        let got_on = on.generate(reqs.clone()).unwrap();
        for i in 0..reqs.len() {
            assert_eq!(
                got_off[i].tokens, want[i],
                "off, request {i}, {blocks} blocks"
            );
            assert_eq!(
                got_on[i].tokens, want[i],
                "on, request {i}, {blocks} blocks"
            );
            assert_eq!(got_on[i].reason, FinishReason::Length);
        }
        let hits = on.prefix_cache_stats().hits;
        assert!(hits >= 12, "{blocks} blocks: only {hits} tokens hit");
        assert_eq!(off.prefix_cache_stats().hits, 0);
        assert!(got_off.iter().all(|f| f.cached_tokens == 0));
        if blocks == 9 {
            assert!(on.num_preemptions() > 0, "the tiny cache must preempt");
        }
        assert_no_leaks(&on);
        assert_no_leaks(&off);
    }
}

#[test]
fn a_cached_three_block_prefix_is_not_computed_again() {
    let mut e = engine("llama3", cfg(32, 64, true));
    let v = e.model.spec.vocab_size;
    let first: Vec<u32> = (0..14).map(|j| ((j * 17 + 2) % v) as u32).collect();
    let a = Request {
        prompt: first.clone(),
        max_new_tokens: 3,
        ignore_eos: true,
        ..Default::default()
    };
    let got = e.generate(vec![a]).unwrap();
    assert_eq!(got[0].cached_tokens, 0);
    assert_eq!(
        e.num_cached_blocks(),
        4,
        "3 prompt blocks + 1 filled while decoding"
    );
    // Same 12-token (3-block) prefix, 3 new tokens: only those 3 are computed.
    let mut p = first[..12].to_vec();
    p.extend([9, 8, 7]);
    let b = Request {
        prompt: p,
        max_new_tokens: 4,
        ignore_eos: true,
        ..Default::default()
    };
    let want = alone(&e, &b);
    e.add_request(b).unwrap();
    let out = e.step().unwrap();
    assert_eq!(out.num_batched_tokens, 3);
    let mut fin = Vec::new();
    while e.has_unfinished() {
        fin.extend(e.step().unwrap().finished);
    }
    assert_eq!((fin[0].cached_tokens, &fin[0].tokens), (12, &want));
    // A prompt that is exactly the 3 cached blocks recomputes the last block (its last
    // token's logits are needed): 8 cached, 4 computed.
    let c = Request {
        prompt: first[..12].to_vec(),
        max_new_tokens: 2,
        ignore_eos: true,
        ..Default::default()
    };
    let want = alone(&e, &c);
    e.add_request(c).unwrap();
    assert_eq!(e.step().unwrap().num_batched_tokens, 4);
    let fin = e.step().unwrap().finished;
    assert_eq!((fin[0].cached_tokens, &fin[0].tokens), (8, &want));
    let s = e.prefix_cache_stats();
    assert_eq!((s.queries, s.hits), (14 + 15 + 12, 20));
    assert_no_leaks(&e);
}

#[test]
fn staggered_arrivals_and_aborts_with_prefix_caching() {
    for prefix_caching in [true, false] {
        let mut e = engine("qwen3", cfg(12, 8, prefix_caching));
        let reqs = shared_prefix_burst(e.model.spec.vocab_size);
        let mut outs = std::collections::HashMap::new();
        let mut ids = Vec::new();
        // One new request every step; every third is aborted two steps after it arrives
        // (unless it has finished by then: caching changes how fast requests progress).
        let mut step = 0;
        while ids.len() < reqs.len() || e.has_unfinished() {
            if ids.len() < reqs.len() {
                ids.push(e.add_request(reqs[ids.len()].clone()).unwrap());
            }
            if step >= 2 && (step - 2) % 3 == 0 && step - 2 < ids.len() {
                e.abort(ids[step - 2]);
            }
            for f in e.step().unwrap().finished {
                outs.insert(f.id, (f.reason, f.tokens));
            }
            step += 1;
        }
        assert_no_leaks(&e);
        let mut aborted = 0;
        for (i, id) in ids.iter().enumerate() {
            let want = alone(&e, &reqs[i]);
            let (reason, got) = &outs[id];
            match reason {
                FinishReason::Length => assert_eq!(got, &want, "request {i}"),
                FinishReason::Aborted => {
                    aborted += 1;
                    assert_eq!(got[..], want[..got.len()], "aborted request {i}");
                }
                r => panic!("request {i} ended with {r:?}"),
            }
        }
        assert!(aborted >= 2, "{aborted} aborted");
        let hits = e.prefix_cache_stats().hits;
        assert_eq!(hits > 0, prefix_caching, "{hits} tokens hit");
    }
}

// ---- stop strings ----

fn tokenizer() -> flint::tokenizer::Tokenizer {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers/llama3_style");
    flint::tokenizer::Tokenizer::from_dir(&d).unwrap()
}

#[test]
fn a_stop_string_spanning_tokens_ends_the_request_and_is_cut_from_the_text() {
    let tok = tokenizer();
    let mut e = engine("llama3", small_cfg(16)).with_tokenizer(tokenizer());
    let v = e.model.spec.vocab_size;
    // Find a greedy continuation with two neighbouring tokens that decode to visible ASCII
    // (the fixture model is random: search a few prompts).
    let ascii = |t: u32| {
        let s = tok.decode(&[t], true).unwrap();
        s.len() == 1 && s.bytes().all(|b| b.is_ascii_graphic())
    };
    let (r, free, k) = (0..40)
        .find_map(|i| {
            let r = Request {
                prompt: (0..5).map(|j| ((i * 13 + j * 7 + 5) % v) as u32).collect(),
                max_new_tokens: 16,
                ignore_eos: true,
                ..Default::default()
            };
            let free = alone(&e, &r);
            let k = (3..free.len() - 1).find(|&k| ascii(free[k]) && ascii(free[k + 1]))?;
            Some((r, free, k))
        })
        .expect("some prompt yields two ASCII tokens in a row");
    let stop = tok.decode(&free[k..k + 2], true).unwrap();
    // The earliest token whose text completes the stop string.
    let j = (0..free.len())
        .find(|&j| tok.decode(&free[..=j], true).unwrap().contains(&stop))
        .unwrap();
    assert!(j <= k + 1);
    assert!(
        !tok.decode(&free[j..=j], true).unwrap().contains(&stop),
        "spans tokens"
    );
    let full = tok.decode(&free[..=j], true).unwrap();
    let cut = &full[..full.find(&stop).unwrap()];
    let plain = Request {
        prompt: vec![4, 4, 4],
        max_new_tokens: 5,
        ignore_eos: true,
        ..Default::default()
    };
    let with_stop = Request {
        stop_strings: vec!["never-produced-string".into(), stop.clone()],
        ..r.clone()
    };
    let got = e.generate(vec![with_stop, plain.clone()]).unwrap();
    assert_eq!(got[0].reason, FinishReason::Stop, "{got:?}");
    assert_eq!(
        got[0].tokens,
        free[..=j],
        "the tokens end with the one completing it"
    );
    assert_eq!(
        got[0].text.as_deref(),
        Some(cut),
        "text stops before the stop string"
    );
    assert!(!got[0].text.as_ref().unwrap().contains(&stop));
    // The other request in the batch is untouched and gets its whole text.
    assert_eq!(got[1].reason, FinishReason::Length);
    assert_eq!(got[1].tokens, alone(&e, &plain));
    assert_eq!(got[1].text, Some(tok.decode(&got[1].tokens, true).unwrap()));
    // A stop string that never appears: the full length and the full text.
    let never = Request {
        stop_strings: vec!["never-produced-string".into()],
        ..r
    };
    let got = e.generate(vec![never]).unwrap();
    assert_eq!(
        (got[0].reason, &got[0].tokens),
        (FinishReason::Length, &free)
    );
    assert_eq!(got[0].text, Some(tok.decode(&free, true).unwrap()));
    assert_eq!(e.num_free_blocks(), 8);
}

// ---- KV cache sizing ----

#[test]
fn the_kv_cache_is_sized_from_memory_or_an_explicit_count() {
    use flint::backend::MemoryInfo;
    use flint::engine::blocks_for_memory;
    let gib = 1usize << 30;
    // 80 GiB card, 20 GiB in use, 0.9: 72 - 20 = 52 GiB for blocks of 2 MiB.
    let m = MemoryInfo {
        free: 60 * gib,
        total: 80 * gib,
    };
    assert_eq!(blocks_for_memory(m, 0.9, 2 << 20).unwrap(), 52 * 512);
    let err = blocks_for_memory(m, 0.2, 2 << 20).unwrap_err().to_string();
    assert!(err.contains("not one block"), "{err}");
    // The CPU backend reports no memory: the default count, said so; or the count asked for.
    let e = engine(
        "llama3",
        EngineConfig {
            num_blocks: None,
            ..Default::default()
        },
    );
    let k = e.kv_cache_info();
    assert_eq!(k.num_blocks, flint::engine::DEFAULT_NUM_BLOCKS);
    assert_eq!(k.max_concurrent_tokens, k.num_blocks * k.block_size);
    assert!(k.source.starts_with("default"), "{}", k.source);
    let e = engine("llama3", small_cfg(16));
    let s = &e.model.spec;
    let per_block = 2 * s.num_layers * 4 * s.num_kv_heads * s.head_dim * 4;
    assert_eq!(
        (e.kv_cache_info().num_blocks, e.kv_cache_info().bytes),
        (8, 8 * per_block)
    );
    assert!(Engine::new(
        CpuBackend,
        e.model,
        EngineConfig {
            gpu_memory_fraction: 1.5,
            ..Default::default()
        }
    )
    .is_err());
}

// ---- decode graphs: the engine's side of the protocol, on a CPU backend that says it has
// graphs (regions run eagerly, so outputs must not change) ----

use anyhow::Result;
use flint::backend::{Backend, MatIn, MatOut, StepInput};
use std::cell::{Cell, RefCell};

#[derive(Default)]
struct GraphProbe {
    inner: CpuBackend,
    region: Cell<Option<u64>>,
    /// Regions entered per key.
    keys: RefCell<std::collections::HashMap<u64, usize>>,
    /// Calls that are forbidden inside a region.
    violations: RefCell<Vec<String>>,
    fail_captures: Cell<bool>,
    cleared: Cell<usize>,
    /// Round scalars to bf16 as a bf16 backend does (`Backend::act_scalar`).
    bf16_scalars: Cell<bool>,
    /// The scale every `embed` call got.
    embed_scales: RefCell<Vec<f32>>,
    /// The decoder's norm, act·mul and matmul calls, by kind (`matmul_ex` as `in>out`).
    ops: RefCell<std::collections::BTreeMap<String, usize>>,
}

impl GraphProbe {
    fn log(&self, op: &str) {
        *self.ops.borrow_mut().entry(op.to_string()).or_default() += 1;
    }
    fn outside(&self, op: &str) {
        if let Some(k) = self.region.get() {
            self.violations
                .borrow_mut()
                .push(format!("{op} inside graph region {k}"));
        }
    }
}

impl Backend for GraphProbe {
    type Tensor = <CpuBackend as Backend>::Tensor;
    type Weight = <CpuBackend as Backend>::Weight;
    type Step = <CpuBackend as Backend>::Step;
    type Rope = <CpuBackend as Backend>::Rope;
    type KvCache = <CpuBackend as Backend>::KvCache;
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn upload_weight(&self, n: &str, d: &[f32], r: usize, c: usize) -> Result<Self::Weight> {
        self.inner.upload_weight(n, d, r, c)
    }
    fn upload_rope(&self, f: &[f32]) -> Result<Self::Rope> {
        self.inner.upload_rope(f)
    }
    fn weight_bytes(&self, w: &Self::Weight) -> usize {
        self.inner.weight_bytes(w)
    }
    fn memory_info(&self) -> Result<Option<flint::backend::MemoryInfo>> {
        self.inner.memory_info()
    }
    fn prepare_attention(&self, s: &Self::Step, a: &flint::backend::AttnParams) -> Result<()> {
        self.inner.prepare_attention(s, a)
    }
    fn kv_cache_bytes(&self, s: flint::backend::KvShape) -> usize {
        self.inner.kv_cache_bytes(s)
    }
    fn embed(&self, s: &Self::Step, t: &Self::Weight, k: f32, o: &mut Self::Tensor) -> Result<()> {
        self.embed_scales.borrow_mut().push(k);
        self.inner.embed(s, t, k, o)
    }
    fn act_scalar(&self, v: f32) -> f32 {
        if self.bf16_scalars.get() {
            flint::backend::round_to_bf16(v)
        } else {
            self.inner.act_scalar(v)
        }
    }
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        r: Option<&mut Self::Tensor>,
        w: &Self::Weight,
        eps: f32,
        off: f32,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        self.log(if r.is_some() {
            "rms_norm+residual"
        } else {
            "rms_norm"
        });
        self.inner.rms_norm(x, r, w, eps, off, o)
    }
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        self.log("matmul");
        self.inner.matmul(x, w, b, o)
    }
    fn matmul_ex(
        &self,
        x: MatIn<'_, Self::Tensor, Self::Weight>,
        w: &Self::Weight,
        b: Option<&Self::Weight>,
        o: MatOut<'_, Self::Tensor, Self::Weight>,
    ) -> Result<()> {
        let input = match &x {
            MatIn::Plain(_) => "plain",
            MatIn::Norm { .. } => "norm",
            MatIn::ActMul { .. } => "act",
        };
        let out = match &o {
            MatOut::Write(_) => "write",
            MatOut::AddTo(_) => "add",
            MatOut::ActMul { .. } => "act",
            MatOut::AddToNorm { .. } => "addnorm",
        };
        self.log(&format!("{input}>{out}"));
        self.inner.matmul_ex(x, w, b, o)
    }
    fn rope_kv_write(
        &self,
        qkv: &Self::Tensor,
        s: &Self::Step,
        rope: &Self::Rope,
        qk: Option<flint::backend::QkNorm<'_, Self::Weight>>,
        a: &flint::backend::AttnParams,
        c: &mut Self::KvCache,
        l: usize,
        q: &mut Self::Tensor,
    ) -> Result<()> {
        self.inner.rope_kv_write(qkv, s, rope, qk, a, c, l, q)
    }
    fn attention(
        &self,
        q: &Self::Tensor,
        s: &Self::Step,
        c: &Self::KvCache,
        l: usize,
        a: &flint::backend::AttnParams,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        self.inner.attention(q, s, c, l, a, o)
    }
    fn act_mul(
        &self,
        g: &Self::Tensor,
        a: flint::config::Activation,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        self.inner.act_mul(g, a, o)
    }
    fn gather_last(&self, x: &Self::Tensor, s: &Self::Step, o: &mut Self::Tensor) -> Result<()> {
        self.inner.gather_last(x, s, o)
    }
    fn softcap(&self, x: &mut Self::Tensor, cap: f32) -> Result<()> {
        self.inner.softcap(x, cap)
    }
    fn moe_route(
        &self,
        l: &Self::Tensor,
        r: &flint::backend::MoeRouting,
        ids: &mut Self::Tensor,
        w: &mut Self::Tensor,
    ) -> Result<()> {
        self.inner.moe_route(l, r, ids, w)
    }
    #[allow(clippy::too_many_arguments)]
    fn moe_experts(
        &self,
        x: &Self::Tensor,
        ids: &Self::Tensor,
        w: &Self::Tensor,
        gate_up: &Self::Weight,
        down: &Self::Weight,
        shape: &flint::backend::MoeExperts,
        scratch: &mut Self::Tensor,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        self.inner
            .moe_experts(x, ids, w, gate_up, down, shape, scratch, o)
    }
    fn sigmoid_gate_add(
        &self,
        x: &Self::Tensor,
        g: &Self::Tensor,
        o: &mut Self::Tensor,
    ) -> Result<()> {
        self.inner.sigmoid_gate_add(x, g, o)
    }
    fn upload_step(&self, s: &StepInput) -> Result<Self::Step> {
        self.outside("upload_step");
        self.inner.upload_step(s)
    }
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>> {
        self.outside("to_host");
        self.inner.to_host(t)
    }
    fn alloc(&self, r: usize, c: usize) -> Result<Self::Tensor> {
        self.outside("alloc");
        self.inner.alloc(r, c)
    }
    fn alloc_kv_cache(&self, s: flint::backend::KvShape) -> Result<Self::KvCache> {
        self.outside("alloc_kv_cache");
        self.inner.alloc_kv_cache(s)
    }
    fn supports_graphs(&self) -> bool {
        true
    }
    fn graph_begin(&self, key: u64) -> Result<()> {
        if self.region.get().is_some() {
            anyhow::bail!("nested graph region");
        }
        if self.fail_captures.get() {
            anyhow::bail!("capture refused (test)");
        }
        self.region.set(Some(key));
        *self.keys.borrow_mut().entry(key).or_default() += 1;
        Ok(())
    }
    fn graph_end(&self, _ok: bool) -> Result<()> {
        self.region
            .take()
            .map(|_| ())
            .ok_or_else(|| anyhow::anyhow!("graph_end outside a region"))
    }
    fn clear_graphs(&self) {
        self.cleared.set(self.cleared.get() + 1);
    }
}

fn graph_engine(cuda_graphs: bool) -> Engine<&'static GraphProbe> {
    graph_engine_on(Box::leak(Box::default()), cuda_graphs)
}

fn graph_engine_on(be: &'static GraphProbe, cuda_graphs: bool) -> Engine<&'static GraphProbe> {
    let m = ModelRef::Dir(fixtures_dir().join("llama3"))
        .load(&be)
        .unwrap();
    Engine::new(
        be,
        m,
        EngineConfig {
            num_blocks: Some(24),
            block_size: 4,
            max_num_seqs: 6,
            max_batch_tokens: 16,
            cuda_graphs,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn decode_graph_steps_are_padded_to_buckets_and_change_no_output() {
    assert_eq!(flint::engine::graph_buckets(6), vec![1, 2, 4, 6]);
    assert_eq!(
        flint::engine::graph_buckets(40),
        vec![1, 2, 4, 8, 16, 32, 40]
    );
    let mut eager = engine("llama3", cfg(24, 16, true));
    let reqs = burst(eager.model.spec.vocab_size);
    let want = eager.generate(reqs.clone()).unwrap();
    let mut e = graph_engine(true);
    assert!(e.graphs_enabled());
    let got = e.generate(reqs).unwrap();
    assert_eq!(got, want, "graph-padded decode steps changed an output");
    let be = e.backend;
    assert!(
        be.violations.borrow().is_empty(),
        "{:?}",
        be.violations.borrow()
    );
    assert!(
        e.num_graph_steps() > 10,
        "{} graph steps",
        e.num_graph_steps()
    );
    // One key per bucket used; only bucket sizes.
    let keys = be.keys.borrow();
    let buckets: std::collections::BTreeSet<u64> = keys.keys().map(|k| k & 0xffff_ffff).collect();
    assert!(
        buckets.iter().all(|b| [1, 2, 4, 6].contains(b)),
        "{buckets:?}"
    );
    assert!(buckets.len() >= 2, "{buckets:?}");
    assert_eq!(e.num_free_blocks(), 24);
}

/// With graphs on, `Engine::new` captures every bucket once (after sizing the KV cache), so
/// decoding replays from the first step; the captures change no output.
#[test]
fn decode_graphs_are_captured_at_start_once_per_bucket() {
    let e = graph_engine(true);
    let keys = e.backend.keys.borrow().clone();
    let mut got: Vec<(u64, usize)> = keys.iter().map(|(k, n)| (k & 0xffff_ffff, *n)).collect();
    got.sort();
    assert_eq!(got, vec![(1, 1), (2, 1), (4, 1), (6, 1)]);
    assert!(e.graphs_enabled());
    assert_eq!(e.num_graph_steps(), 0, "captures are not decode steps");
    assert!(
        e.backend.violations.borrow().is_empty(),
        "{:?}",
        e.backend.violations.borrow()
    );
    // Off: no region at start.
    assert!(graph_engine(false).backend.keys.borrow().is_empty());
}

/// A capture that fails at start leaves an engine that decodes eagerly and loses nothing.
#[test]
fn a_graph_capture_failing_at_start_leaves_an_eager_engine() {
    let mut eager = engine("llama3", cfg(24, 16, true));
    let reqs = burst(eager.model.spec.vocab_size);
    let want = eager.generate(reqs.clone()).unwrap();
    let be: &'static GraphProbe = Box::leak(Box::default());
    be.fail_captures.set(true);
    let mut e = graph_engine_on(be, true);
    assert!(!e.graphs_enabled());
    assert_eq!(be.cleared.get(), 1);
    assert_eq!(e.generate(reqs).unwrap(), want);
    assert_eq!(e.num_graph_steps(), 0);
}

#[test]
fn a_failing_graph_falls_back_to_eager_without_losing_a_request() {
    let mut eager = engine("llama3", cfg(24, 16, true));
    let reqs = burst(eager.model.spec.vocab_size);
    let want = eager.generate(reqs.clone()).unwrap();
    let mut e = graph_engine(true);
    e.backend.fail_captures.set(true);
    let got = e.generate(reqs).unwrap();
    assert_eq!(got, want);
    assert!(!e.graphs_enabled());
    assert_eq!((e.num_graph_steps(), e.backend.cleared.get()), (0, 1));
    // Off by config: never a region.
    let mut off = graph_engine(false);
    let r = Request {
        prompt: vec![1, 2, 3],
        max_new_tokens: 4,
        ignore_eos: true,
        ..Default::default()
    };
    off.generate(vec![r]).unwrap();
    assert!(off.backend.keys.borrow().is_empty());
}

// ---- the embedding scale at the activation dtype ----

/// bf16 rounding of the embedding scales transformers rounds in bf16 (values from
/// `torch.tensor(hidden**0.5).to(torch.bfloat16)`; Grok-1's multiplier is sqrt(6144)).
#[test]
fn embedding_scales_round_to_bf16_as_torch_does() {
    use flint::backend::round_to_bf16;
    for (hidden, want) in [
        (3072, 55.5),
        (2048, 45.25),
        (3584, 59.75),
        (4608, 68.0),
        (5376, 73.5),
        (2304, 48.0),
        (640, 25.25),
        (6144, 78.5),
    ] {
        let s = (hidden as f64).sqrt() as f32;
        assert_eq!(round_to_bf16(s), want, "sqrt({hidden})");
    }
    assert_eq!(round_to_bf16(78.383_67), 78.5);
    // The f32 reference keeps the exact scale.
    assert_eq!(CpuBackend.act_scalar(55.425_625), 55.425_625);
}

/// The decoder hands `embed` the spec's scale through `Backend::act_scalar`: rounded on a
/// backend that rounds (as CUDA's bf16), untouched on the f32 reference.
#[test]
fn the_model_applies_the_backends_scalar_rounding_to_the_embedding_scale() {
    for bf16 in [false, true] {
        let be = GraphProbe::default();
        be.bf16_scalars.set(bf16);
        let mut m = ModelRef::Dir(fixtures_dir().join("gemma"))
            .load(&be)
            .unwrap();
        let exact = 3072f64.sqrt() as f32;
        m.spec.embed_scale = exact;
        engine::prompt_logits(&be, &m, &[1, 2, 3], false).unwrap();
        let got = be.embed_scales.borrow().clone();
        assert_eq!(got, vec![if bf16 { 55.5 } else { exact }], "bf16 {bf16}");
    }
    // The config gives the exact f32 scale (the fixture's hidden size is 64).
    let spec = ModelRef::Dir(fixtures_dir().join("gemma")).spec().unwrap();
    assert_eq!(spec.embed_scale, 8.0);
}

/// The decoder's residual flow per family, as ops (`matmul_ex` shown as input>output; the
/// logits themselves are held to transformers by tests/hf_fixtures.rs): a dense layer without
/// post-norms runs its norms, act·mul and residual adds inside its matmuls: o and down add
/// into the residual and write the next pre-norm (`MatOut::AddToNorm`), which the next matmul
/// takes plain; act·mul is the gate|up matmul's output (`MatOut::ActMul`) and down's input
/// plain. Post-norms (Gemma 2) and MoE MLPs (Qwen2-MoE: every other layer) write a delta that
/// the next norm adds. One prefill of 3 tokens, logits of the last (and of every position).
#[test]
fn dense_layers_fuse_their_norms_and_residual_adds_into_the_matmuls() {
    let ops = |name: &str, all_positions: bool| {
        let be = GraphProbe::default();
        let m = ModelRef::Dir(fixtures_dir().join(name)).load(&be).unwrap();
        be.ops.borrow_mut().clear();
        engine::prompt_logits(&be, &m, &[1, 2, 3], all_positions).unwrap();
        let spec = &m.spec;
        let sparse = (0..spec.num_layers)
            .filter(|&i| spec.moe.as_ref().is_some_and(|s| s.sparse_layers[i]))
            .count();
        let got = be.ops.borrow().clone();
        (spec.num_layers, sparse, got)
    };
    let count = |m: &std::collections::BTreeMap<String, usize>, k: &str| *m.get(k).unwrap_or(&0);
    // Llama 3: the first qkv takes its norm (norm>write); o and every down but the last add
    // and write the next pre-norm (plain>addnorm), gate|up takes it (plain>act) and so does
    // the next qkv (a plain matmul); the last down adds (plain>add) and the final norm goes
    // into lm_head on the last row (norm>write). No norm or act·mul of the decoder's own.
    let (l, _, m) = ops("llama3", false);
    assert_eq!(count(&m, "norm>write"), 2, "{m:?}");
    assert_eq!(count(&m, "plain>addnorm"), 2 * l - 1, "{m:?}");
    assert_eq!(count(&m, "plain>add"), 1, "{m:?}");
    assert_eq!(count(&m, "plain>act"), l, "{m:?}");
    assert_eq!(count(&m, "norm>act"), 0, "{m:?}");
    assert_eq!(count(&m, "act>add") + count(&m, "act>write"), 0, "{m:?}");
    assert_eq!(
        count(&m, "rms_norm") + count(&m, "rms_norm+residual"),
        0,
        "{m:?}"
    );
    // With every position's logits the last down writes the final norm too, and lm_head
    // takes it plain.
    let (l, _, m) = ops("llama3", true);
    assert_eq!(count(&m, "norm>write"), 1, "{m:?}");
    assert_eq!(count(&m, "plain>addnorm"), 2 * l, "{m:?}");
    assert_eq!(count(&m, "plain>add"), 0, "{m:?}");
    // Gemma 2: post-norms after o and down, so every later norm adds a delta.
    // gate|up's input is the norm with the delta added (pending), its output act·mul.
    let (l, _, m) = ops("gemma2", false);
    assert_eq!(
        count(&m, "plain>add") + count(&m, "act>add") + count(&m, "plain>addnorm"),
        0,
        "{m:?}"
    );
    assert_eq!(count(&m, "plain>write"), 2 * l, "o and down: {m:?}");
    assert_eq!(count(&m, "plain>act"), l, "{m:?}");
    assert_eq!(count(&m, "rms_norm"), 2 * l, "post-norms: {m:?}");
    // The first pre-norm has nothing pending; every other one and the final one do.
    assert_eq!(count(&m, "norm>write"), 1, "{m:?}");
    assert_eq!(count(&m, "rms_norm+residual"), 2 * l, "{m:?}");
    // Qwen2-MoE: dense and sparse layers mixed.
    let (l, sparse, m) = ops("qwen2_moe", false);
    assert!(
        sparse > 0 && sparse < l,
        "the fixture mixes layers: {sparse} of {l}"
    );
    let dense = l - sparse;
    assert_eq!(
        count(&m, "plain>addnorm") + count(&m, "plain>add"),
        l + dense,
        "o and dense down: {m:?}"
    );
    assert!(count(&m, "plain>addnorm") >= l, "every o: {m:?}");
    assert_eq!(
        count(&m, "norm>act") + count(&m, "plain>act"),
        dense,
        "{m:?}"
    );
    assert_eq!(count(&m, "act>add"), 0, "{m:?}");
    // A sparse MLP's norm (it feeds the router and the experts) is the o matmul's output
    // norm; its delta is added by the next attention norm or the final one.
    assert_eq!(count(&m, "rms_norm"), 0, "{m:?}");
    assert_eq!(count(&m, "rms_norm+residual"), sparse, "{m:?}");
}

// ---- Send: an engine can live on its own thread (serving stacks) ----

/// Compile-time: `Engine<B>` can be moved to another thread for both backends (a test that
/// fails by not compiling). `Engine<CudaBackend>` binds its CUDA context to the calling
/// thread at each entry (see `CudaBackend`'s `Send`).
#[test]
fn engines_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Engine<CpuBackend>>();
    assert_send::<Engine<flint::backend::cuda::CudaBackend>>();
}

/// An engine built on one thread serves on another and gives the same tokens.
#[test]
fn an_engine_moved_to_its_own_thread_serves_the_same_tokens() {
    let mut e = engine("llama3", cfg(24, 16, true));
    let reqs = burst(e.model.spec.vocab_size);
    let want = e.generate(reqs.clone()).unwrap();
    // The second run hits the prefix cache and takes new ids: compare the tokens.
    let tokens = |f: Vec<flint::Finished>| f.into_iter().map(|f| f.tokens).collect::<Vec<_>>();
    let got = std::thread::spawn(move || e.generate(reqs).unwrap())
        .join()
        .unwrap();
    assert_eq!(tokens(got), tokens(want));
}

/// `flint throughput --temperature/--top-k/--top-p`: every request samples with its own
/// generator (seed + i), so the run equals the Engine API on the same requests one at a time,
/// and differs from greedy.
#[test]
fn throughput_samples_each_request_with_its_own_seed() {
    use flint::throughput::{requests, run, ThroughputOptions};
    let model = ModelRef::Dir(fixtures_dir().join("llama3"));
    let opt = ThroughputOptions {
        num_requests: 6,
        input_len: 5,
        output_len: 8,
        range_ratio: 0.0,
        request_rate: None,
        seed: 11,
        sampling: flint::SamplingParams {
            temperature: 1.5,
            top_k: 50,
            top_p: 0.95,
            seed: 11,
        },
        config: cfg(64, 16, true),
        load: Default::default(),
    };
    let rep = run(&CpuBackend, &model, &opt).unwrap();
    assert_eq!((rep.completed, rep.failed), (6, 0));
    let m = model.load(&CpuBackend).unwrap();
    let vocab = m.spec.vocab_size;
    let reqs: Vec<Request> = requests(&opt, vocab)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let seeds: Vec<u64> = reqs.iter().map(|r| r.sampling.seed).collect();
    assert_eq!(seeds, (11..17).collect::<Vec<u64>>());
    let mut alone = Vec::new();
    for r in &reqs {
        let mut e = Engine::new(
            CpuBackend,
            model.load(&CpuBackend).unwrap(),
            opt.config.clone(),
        )
        .unwrap();
        alone.push(e.generate(vec![r.clone()]).unwrap().remove(0).tokens);
    }
    assert_eq!(rep.outputs, alone, "batched sampling vs each request alone");
    let greedy = ThroughputOptions {
        sampling: flint::SamplingParams::default(),
        ..opt.clone()
    };
    assert_ne!(
        run(&CpuBackend, &model, &greedy).unwrap().outputs,
        rep.outputs
    );
}

#[test]
fn throughput_cli_rejects_bad_sampling_by_name() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["throughput", "--device", "cpu", "--num-requests", "2"])
        .args(["--temperature", "0.8", "--top-p", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("top_p must be in (0, 1]"),
        "{err}"
    );
}

/// Sizes past what a machine can hold are errors naming them. Before: a configured KV cache
/// of 2^40 blocks or a token budget of 2^40 aborted the process in the allocator, and
/// `generate` with `max_new_tokens = usize::MAX` wrapped its token count and sized a
/// one-block cache, failing with "KV cache exhausted" instead of filling the context.
#[test]
fn sizes_past_memory_are_errors_not_aborts() {
    let load = || {
        ModelRef::Dir(fixtures_dir().join("llama3"))
            .load(&CpuBackend)
            .unwrap()
    };
    let err = |cfg: EngineConfig| match Engine::new(CpuBackend, load(), cfg) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    };
    let e = err(EngineConfig {
        num_blocks: Some(1 << 40),
        ..small_cfg(16)
    });
    assert!(
        e.contains("allocating the KV cache (1099511627776 blocks")
            && e.contains("cannot allocate"),
        "{e}"
    );
    let e = err(EngineConfig {
        num_blocks: Some(usize::MAX / 2),
        ..small_cfg(16)
    });
    assert!(e.contains("overflows the address space"), "{e}");
    let e = err(EngineConfig {
        block_size: usize::MAX / 2,
        ..small_cfg(16)
    });
    assert!(e.contains("blocks of 9223372036854775807 tokens"), "{e}");
    let e = err(small_cfg(1 << 40));
    assert!(
        e.contains("alloc: [1099511627776,") && e.contains("cannot allocate"),
        "{e}"
    );
    let e = err(small_cfg(usize::MAX / 2));
    assert!(e.contains("workspace: 9223372036854775807 tokens"), "{e}");

    let m = load();
    let opts = GenerateOptions {
        max_new_tokens: usize::MAX,
        sampling: SamplingParams::default(),
        eos_ids: vec![],
        ignore_eos: true,
    };
    let g = engine::generate(&CpuBackend, &m, &[1, 2, 3], &opts).unwrap();
    assert_eq!(g.finish, FinishReason::ContextFull);
    // Every position of the context ran; the last one's token is sampled too.
    assert_eq!(g.tokens.len() + 3, m.spec.max_position + 1);
}

/// Throughput options that cannot run are errors naming the flag: `--request-rate 0` panicked
/// converting an infinite arrival time to a `Duration`, `--range-ratio 1e30` panicked on a
/// capacity overflow and `--input-len 10^12` aborted allocating the prompt.
#[test]
fn throughput_options_that_cannot_run_are_errors() {
    let run = |extra: &[&str]| {
        // Small defaults for the flags a case does not set.
        let mut args = extra.to_vec();
        for (flag, value) in [("--num-requests", "2"), ("--input-len", "4")] {
            if !args.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
            .args(["throughput", "--model", "synthetic:tiny", "--device", "cpu"])
            .args(["--output-len", "2"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, want) in [
        (
            &["--request-rate", "0"][..],
            "--request-rate must be a positive",
        ),
        (&["--request-rate", "1e-308"][..], "--request-rate too low"),
        (
            &["--range-ratio", "1e30"][..],
            "--range-ratio must be in [0, 1]",
        ),
        (
            &["--input-len", "1000000000000"][..],
            "the model's context is",
        ),
        (
            &["--num-requests", "1000000000000000000"][..],
            "cannot hold",
        ),
    ] {
        let (ok, err) = run(args);
        assert!(
            !ok && err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
