//! Quantized weights through the whole decoder (CPU reference):
//! * published-format checkpoints (tests/fixtures/quant_models, made by
//!   tests/fixtures/make_quant_model_fixtures.py) give transformers' own logits on the
//!   dequantized weights within 1e-4 relative, for a dense model and a MoE;
//! * `--quant` quantize-on-load gives exactly flint's logits on the RTN-dequantized weights,
//!   for every mode, on a dense model, a per-expert MoE and a fused-expert MoE;
//! * fused stacking keeps weights quantized and exact; unsupported combinations are errors
//!   by message; `flint perplexity` matches the NLL of transformers' own logits.

mod common;

use common::{fixtures_dir, max_rel_err, reference};
use flint::backend::cpu::CpuBackend;
use flint::engine;
use flint::model::Model;
use flint::weights::quant::{
    concat_rows, quantize_fp8, quantize_int4, quantize_int8, Linear, QuantScheme, QuantWeight,
};
use flint::weights::quant_source::{
    int4_group, quantize, stack_linear, HeadQuant, LoadOptions, QuantMode,
};
use flint::weights::{names, TensorSource, WeightStore};
use flint::ModelRef;
use serde_json::Value;
use std::path::PathBuf;

fn quant_models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant_models")
}

fn rng(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn rand_w(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * k).map(|_| rng(&mut s)).collect()
}

#[test]
fn quantized_checkpoints_match_transformers_on_their_dequantized_weights() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(quant_models_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    cases.sort();
    let names: Vec<String> = cases
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "llama3_gptq_act_order",
        "llama3_awq",
        "llama3_ct_w8a16",
        "llama3_fp8_block",
        "llama3_fbgemm_fp8",
        "mixtral_gptq_act_order",
        "mixtral_awq",
    ] {
        assert!(names.iter().any(|n| n == want), "missing fixture {want}");
    }
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let m = ModelRef::Dir(dir.clone())
            .load(&CpuBackend)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let prompts = v["prompts"].as_array().unwrap();
        let logits = v["logits_last"].as_array().unwrap();
        for (p, want) in prompts.iter().zip(logits) {
            let ids: Vec<u32> = p
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let want: Vec<f32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let got = engine::prompt_logits(&CpuBackend, &m, &ids, false).unwrap();
            let e = max_rel_err(&got, &want);
            assert!(
                e < 1e-4,
                "{name}: prompt of {} tokens: relative error {e:.2e}",
                ids.len()
            );
        }
    }
}

/// The RTN oracle: every decoder linear weight quantized by `quant`'s own functions and
/// dequantized back to dense f32, so the model runs the plain f32 path on those values.
struct Dequantized<'a> {
    store: &'a WeightStore,
    mode: QuantMode,
    /// The lm_head's mode (`None`: dense).
    head: Option<QuantMode>,
}

impl Dequantized<'_> {
    fn rtn(&self, name: &str, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mode = if name == names::LM_HEAD {
            match self.head {
                Some(m) => m,
                None => return w.to_vec(),
            }
        } else {
            self.mode
        };
        let q = match mode {
            QuantMode::Int8 => quantize_int8(w, n, k, k),
            QuantMode::Int4 { symmetric, group } => quantize_int4(
                w,
                n,
                k,
                group.unwrap_or_else(|| int4_group(name, k).unwrap()),
                symmetric,
            ),
            QuantMode::Fp8 => quantize_fp8(w, n, k, true),
        };
        q.unwrap().dequantize()
    }
}

impl TensorSource for Dequantized<'_> {
    fn load(&self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        self.store.load_f32(name, shape)
    }
    fn contains(&self, name: &str) -> bool {
        self.store.contains(name)
    }
    fn load_linear(&self, name: &str, rows: usize, cols: usize) -> anyhow::Result<Linear> {
        let d = self.store.load_f32(name, &[rows, cols])?;
        Ok(Linear::Dense(self.rtn(name, &d, rows, cols)))
    }
    fn finish_linear(&self, name: &str, d: Vec<f32>, r: usize, c: usize) -> anyhow::Result<Linear> {
        Ok(Linear::Dense(self.rtn(name, &d, r, c)))
    }
}

#[test]
fn quantize_on_load_equals_flint_on_the_rtn_dequantized_weights() {
    let modes = [
        QuantMode::Int8,
        QuantMode::Int4 {
            symmetric: true,
            group: None,
        },
        QuantMode::Int4 {
            symmetric: false,
            group: Some(32),
        },
        QuantMode::Fp8,
    ];
    // llama3: dense, tied head; mixtral: per-expert tensors; qwen3_moe: fused [E, 2I, D].
    for fx in ["llama3", "mixtral", "qwen3_moe"] {
        let dir = fixtures_dir().join(fx);
        let r = reference(fx);
        let prompt = r.prompts.iter().max_by_key(|p| p.len()).unwrap();
        let plain = ModelRef::Dir(dir.clone()).load(&CpuBackend).unwrap();
        let base = engine::prompt_logits(&CpuBackend, &plain, prompt, true).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        // The lm_head policy, stated here on its own: by default 8 bits in the body's
        // family (int8 under int8 and int4, fp8 under fp8); `--lm-head bf16` leaves it dense.
        let auto_head = |m: QuantMode| match m {
            QuantMode::Fp8 => QuantMode::Fp8,
            _ => QuantMode::Int8,
        };
        for (mode, lm_head) in modes
            .iter()
            .flat_map(|&m| [(m, HeadQuant::Auto), (m, HeadQuant::Bf16)])
        {
            let opts = LoadOptions {
                quant: Some(mode),
                lm_head,
            };
            let q = ModelRef::Dir(dir.clone())
                .load_with(&CpuBackend, &opts)
                .unwrap_or_else(|e| panic!("{fx} --quant {mode}: {e:#}"));
            let got = engine::prompt_logits(&CpuBackend, &q, prompt, true).unwrap();
            let spec = ModelRef::Dir(dir.clone()).spec().unwrap();
            let src = Dequantized {
                store: &store,
                mode,
                head: (lm_head == HeadQuant::Auto).then(|| auto_head(mode)),
            };
            let oracle = Model::load(&CpuBackend, spec, &src).unwrap();
            let want = engine::prompt_logits(&CpuBackend, &oracle, prompt, true).unwrap();
            assert_eq!(
                got, want,
                "{fx} --quant {mode} --lm-head {lm_head}: logits differ from the \
                 RTN-dequantized model"
            );
            let moved = max_rel_err(&got, &base);
            assert!(
                moved > 1e-6,
                "{fx} --quant {mode} --lm-head {lm_head}: logits equal the unquantized ones \
                 ({moved:e}); was \
                 anything quantized?"
            );
        }
    }
}

#[test]
fn quantize_on_load_works_on_synthetic_models() {
    let mref = ModelRef::parse("synthetic:tiny");
    let plain = mref.load(&CpuBackend).unwrap();
    let q = mref
        .load_with(
            &CpuBackend,
            &LoadOptions {
                quant: Some(QuantMode::Int4 {
                    symmetric: true,
                    group: None,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let ids = [1u32, 5, 9, 2];
    let a = engine::prompt_logits(&CpuBackend, &plain, &ids, false).unwrap();
    let b = engine::prompt_logits(&CpuBackend, &q, &ids, false).unwrap();
    let e = max_rel_err(&b, &a);
    assert!(
        e > 0.0 && e < 0.5,
        "int4 synthetic:tiny moved logits by {e}"
    );
}

#[test]
fn quant_on_an_already_quantized_checkpoint_is_an_error() {
    let dir = quant_models_dir().join("llama3_awq");
    let e = ModelRef::Dir(dir)
        .load_with(
            &CpuBackend,
            &LoadOptions {
                quant: Some(QuantMode::Int8),
                ..Default::default()
            },
        )
        .err()
        .expect("must fail");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("--quant int8") && msg.contains("already quantized"),
        "{msg}"
    );
}

fn copy_fixture(name: &str, edit: impl Fn(&mut Value)) -> PathBuf {
    let src = quant_models_dir().join(name);
    let dst = std::env::temp_dir().join(format!("flint-quant-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("model.safetensors"), dst.join("model.safetensors")).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

#[test]
fn unsupported_or_inconsistent_checkpoints_are_errors_by_message() {
    let load = |dir: PathBuf| {
        let r = ModelRef::Dir(dir.clone()).load(&CpuBackend).err();
        std::fs::remove_dir_all(&dir).ok();
        format!("{:#}", r.expect("must fail"))
    };
    let e = load(copy_fixture("llama3_awq", |c| {
        c["quantization_config"] = serde_json::json!({"quant_method": "bitsandbytes"});
    }));
    assert!(
        e.contains("config.json") && e.contains("quant_method `bitsandbytes` is not supported"),
        "{e}"
    );
    // The config says GPTQ but the tensors are AWQ's: the misshapen tensor and its file are
    // named.
    let e = load(copy_fixture("llama3_awq", |c| {
        c["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4,
            "group_size": 32, "desc_act": false, "sym": false});
    }));
    assert!(
        e.contains("model.safetensors") && e.contains("model.layers.0.") && e.contains("shape"),
        "{e}"
    );
    // A group size that does not match the stored scales.
    let e = load(copy_fixture("llama3_awq", |c| {
        c["quantization_config"]["group_size"] = serde_json::json!(64);
    }));
    assert!(e.contains("scales") && e.contains("shape"), "{e}");
}

fn deq_concat(parts: &[QuantWeight]) -> Vec<f32> {
    parts.iter().flat_map(|p| p.dequantize()).collect()
}

#[test]
fn fused_stacking_stays_quantized_and_exact() {
    let k = 128;
    // q|k|v-like parts of different heights, every scheme.
    let make = |f: &dyn Fn(&[f32], usize) -> QuantWeight| -> Vec<QuantWeight> {
        [(64, 1), (32, 2), (32, 3)]
            .iter()
            .map(|&(n, s)| f(&rand_w(n, k, s), n))
            .collect()
    };
    let sets: Vec<(&str, Vec<QuantWeight>)> = vec![
        ("int8", make(&|w, n| quantize_int8(w, n, k, k).unwrap())),
        (
            "int4 sym",
            make(&|w, n| quantize_int4(w, n, k, 32, true).unwrap()),
        ),
        (
            "int4 asym",
            make(&|w, n| quantize_int4(w, n, k, 64, false).unwrap()),
        ),
        (
            "fp8 tensor",
            make(&|w, n| quantize_fp8(w, n, k, false).unwrap()),
        ),
        (
            "fp8 channel",
            make(&|w, n| quantize_fp8(w, n, k, true).unwrap()),
        ),
    ];
    for (what, parts) in sets {
        let want = deq_concat(&parts);
        let scheme = parts[0].scheme;
        let fused = concat_rows(what, parts).unwrap();
        assert_eq!(fused.n, 128, "{what}");
        assert_eq!(fused.dequantize(), want, "{what}");
        match (scheme, fused.scheme) {
            (QuantScheme::Fp8E4M3 { .. }, QuantScheme::Fp8E4M3 { .. }) => {}
            (a, b) => assert_eq!(a, b, "{what}"),
        }
    }
    // Mixed symmetric / asymmetric int4 parts: the zero points are materialized.
    let a = quantize_int4(&rand_w(32, k, 7), 32, k, 32, true).unwrap();
    let b = quantize_int4(&rand_w(32, k, 8), 32, k, 32, false).unwrap();
    let want = deq_concat(&[a.clone(), b.clone()]);
    let f = concat_rows("mixed", vec![a, b]).unwrap();
    assert!(f.zeros.is_some());
    assert_eq!(f.dequantize(), want);
    // Per-expert act-order: equal parts with different g_idx keep one map per part.
    let with_gidx = |seed: u64| {
        let mut w = quantize_int4(&rand_w(16, k, seed), 16, k, 32, false).unwrap();
        let mut s = seed;
        let mut perm: Vec<u32> = (0..k as u32).map(|c| c / 32).collect();
        for i in (1..k).rev() {
            let j = ((rng(&mut s) + 0.5) * (i + 1) as f32) as usize % (i + 1);
            perm.swap(i, j);
        }
        w.g_idx = Some(perm);
        w.validate("expert").unwrap();
        w
    };
    let experts = vec![with_gidx(11), with_gidx(12), with_gidx(13)];
    let want = deq_concat(&experts);
    let f = concat_rows("experts", experts).unwrap();
    assert_eq!(f.g_idx.as_ref().unwrap().len(), 3 * k);
    assert_eq!(f.dequantize(), want);
    // Stacking expert blocks that differ in height is refused by message.
    let mut odd = with_gidx(14);
    odd.n = 16;
    let small = quantize_int4(&rand_w(32, k, 15), 32, k, 32, false).unwrap();
    let e = concat_rows("layers.0.qkv", vec![odd, small])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layers.0.qkv") && e.contains("different g_idx"),
        "{e}"
    );
}

#[test]
fn fusing_incompatible_parts_is_an_error_by_message() {
    let k = 64;
    let i8 = quantize_int8(&rand_w(32, k, 1), 32, k, k).unwrap();
    let i4 = quantize_int4(&rand_w(32, k, 2), 32, k, 32, true).unwrap();
    let e = concat_rows("qkv", vec![i8.clone(), i4.clone()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("quantized differently"), "{e}");
    let f8 = quantize_fp8(&rand_w(32, k, 3), 32, k, true).unwrap();
    let e = concat_rows("qkv", vec![f8.clone(), i8.clone()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mix fp8"), "{e}");
    // fp8 blocks straddling two parts.
    let mut blk = f8.clone();
    blk.n = 24;
    blk.qdata.truncate(24 * k);
    blk.scheme = QuantScheme::Fp8E4M3 {
        scale: flint::weights::quant::Fp8Scale::Block { bn: 16, bk: 32 },
    };
    blk.scales = vec![0.01; 2 * 2];
    blk.validate("blk").unwrap();
    let e = concat_rows("gate_up", vec![blk.clone(), blk])
        .unwrap_err()
        .to_string();
    assert!(e.contains("straddle"), "{e}");
    // Dense and quantized parts in one fused projection.
    let e = stack_linear(
        "model.layers.0.self_attn.q_proj.weight",
        vec![Linear::Quant(i8), Linear::Dense(vec![0.0; 32 * k])],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("q_proj") && e.contains("mixes quantized and unquantized"),
        "{e}"
    );
    // --quant int4 group sizes: 128 first, else the largest even divisor up to 128; an odd
    // width has none.
    assert_eq!(int4_group("w", 4096).unwrap(), 128);
    assert_eq!(int4_group("w", 96).unwrap(), 32);
    assert_eq!(int4_group("w", 172).unwrap(), 86);
    let e = match quantize(
        QuantMode::Int4 {
            symmetric: true,
            group: None,
        },
        "model.layers.0.mlp.down_proj.weight",
        &rand_w(4, 45, 4),
        4,
        45,
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("K = 45 must be refused"),
    };
    assert!(
        e.contains("down_proj") && e.contains("45") && e.contains("even"),
        "{e}"
    );
    let e = "int3".parse::<QuantMode>().unwrap_err().to_string();
    assert!(e.contains("int3") && e.contains("int8, int4"), "{e}");
    for (s, want) in [
        ("int4", (true, None)),
        ("int4-asym", (false, None)),
        ("int4-g64", (true, Some(64))),
        ("int4-asym-g32", (false, Some(32))),
    ] {
        let m: QuantMode = s.parse().unwrap();
        assert_eq!(
            m,
            QuantMode::Int4 {
                symmetric: want.0,
                group: want.1
            }
        );
        assert_eq!(m.to_string(), s);
    }
    for bad in ["int4-g0", "int4-g7", "int4-x", "int4-g"] {
        assert!(bad.parse::<QuantMode>().is_err(), "{bad}");
    }
    let e = match quantize(
        "int4-g64".parse().unwrap(),
        "model.layers.0.mlp.down_proj.weight",
        &rand_w(4, 96, 4),
        4,
        96,
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("group 64 does not divide 96"),
    };
    assert!(
        e.contains("down_proj") && e.contains("96") && e.contains("64"),
        "{e}"
    );
}

#[test]
fn perplexity_is_the_nll_of_transformers_logits() {
    let r = reference("llama3");
    let prompt = r.prompts.iter().max_by_key(|p| p.len()).unwrap().clone();
    let m = ModelRef::Dir(fixtures_dir().join("llama3"))
        .load(&CpuBackend)
        .unwrap();
    let vocab = m.spec.vocab_size;
    // The reference NLL from transformers' own logits of every position.
    let nll = |rows: &[Vec<f32>], ids: &[u32]| -> Vec<f64> {
        (0..ids.len() - 1)
            .map(|t| flint::perplexity::token_nll(&rows[t], ids[t + 1] as usize))
            .collect()
    };
    assert_eq!(r.logits_all.len(), prompt.len());
    assert_eq!(r.logits_all[0].len(), vocab);
    let want = nll(&r.logits_all, &prompt);
    let mean = want.iter().sum::<f64>() / want.len() as f64;
    let got = flint::perplexity::perplexity(&CpuBackend, &m, &prompt, prompt.len()).unwrap();
    assert_eq!(got.tokens_scored, prompt.len() - 1);
    assert!(
        (got.mean_nll - mean).abs() < 1e-4 * mean.abs().max(1.0),
        "flint mean nll {} vs transformers {mean}",
        got.mean_nll
    );
    assert!((got.perplexity - mean.exp()).abs() < 1e-3 * mean.exp());
    // Windows of 5: each window scored from its own start (4 + 4 + 2 tokens of 13).
    let w = flint::perplexity::perplexity(&CpuBackend, &m, &prompt, 5).unwrap();
    assert_eq!(w.tokens_scored, 4 + 4 + 2);
    let mut total = 0.0;
    for chunk in prompt.chunks(5) {
        let lg = engine::prompt_logits(&CpuBackend, &m, chunk, true).unwrap();
        let rows: Vec<Vec<f32>> = lg.chunks(vocab).map(|c| c.to_vec()).collect();
        total += nll(&rows, chunk).iter().sum::<f64>();
    }
    assert!((w.mean_nll - total / 10.0).abs() < 1e-9);
    let e = flint::perplexity::perplexity(&CpuBackend, &m, &prompt, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2"), "{e}");
    let e = flint::perplexity::perplexity(&CpuBackend, &m, &[1, 9999], 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("9999") && e.contains("vocabulary"), "{e}");
}

fn flint(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_quant_and_perplexity() {
    let dir = fixtures_dir().join("llama3");
    let d = dir.to_str().unwrap();
    // `flint logits --quant int4` prints what the library computes with LoadOptions.
    let (ok, out, err) = flint(&[
        "logits",
        "--model",
        d,
        "--prompt-ids",
        "1,7,9",
        "--quant",
        "int4",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let got: Vec<f32> = v["logits"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let m = ModelRef::Dir(dir.clone())
        .load_with(
            &CpuBackend,
            &LoadOptions {
                quant: Some(QuantMode::Int4 {
                    symmetric: true,
                    group: None,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let want = engine::prompt_logits(&CpuBackend, &m, &[1, 7, 9], false).unwrap();
    assert_eq!(got, want);
    // `flint perplexity --ids` (JSON) is the library's perplexity.
    let (ok, out, err) = flint(&[
        "perplexity",
        "--model",
        d,
        "--ids",
        "1,7,9,4,2,8",
        "--ctx",
        "4",
        "--format",
        "json",
        "--device",
        "cpu",
        "--quant",
        "fp8",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let m = ModelRef::Dir(dir.clone())
        .load_with(
            &CpuBackend,
            &LoadOptions {
                quant: Some(QuantMode::Fp8),
                ..Default::default()
            },
        )
        .unwrap();
    let p = flint::perplexity::perplexity(&CpuBackend, &m, &[1, 7, 9, 4, 2, 8], 4).unwrap();
    assert_eq!(
        v["tokens_scored"].as_u64().unwrap() as usize,
        p.tokens_scored
    );
    let printed = v["perplexity"].as_f64().unwrap();
    assert!(
        (printed - p.perplexity).abs() <= 1e-12 * p.perplexity,
        "{printed} vs {p:?}"
    );
    assert_eq!(v["quant"], "fp8");
    // A bad mode and --text on a folder without a tokenizer are errors with a message.
    // So is a bad --lm-head, naming the choices.
    let bad: [(&[&str], &[&str]); 2] = [
        (&["--quant", "int3"], &["int3"]),
        (
            &["--quant", "int8", "--lm-head", "int4"],
            &["--lm-head `int4`", "bf16"],
        ),
    ];
    for (extra, wants) in bad {
        let mut args = vec!["logits", "--model", d, "--prompt-ids", "1"];
        args.extend_from_slice(extra);
        let (ok, _, err) = flint(&args);
        assert!(!ok && wants.iter().all(|w| err.contains(w)), "{err}");
    }
    // `--lm-head` reaches the load: on a fixture with its own lm_head (mixtral), `bf16` gives
    // the library's logits with that option, and they differ from the default's (int8 head).
    let mixtral = fixtures_dir().join("mixtral");
    let cli_logits = |head: &str| {
        let (ok, out, err) = flint(&[
            "logits",
            "--model",
            mixtral.to_str().unwrap(),
            "--prompt-ids",
            "1,7,9",
            "--quant",
            "int8",
            "--lm-head",
            head,
            "--device",
            "cpu",
        ]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["logits"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect::<Vec<f32>>()
    };
    let m = ModelRef::Dir(mixtral.clone())
        .load_with(
            &CpuBackend,
            &LoadOptions {
                quant: Some(QuantMode::Int8),
                lm_head: HeadQuant::Bf16,
            },
        )
        .unwrap();
    let want = engine::prompt_logits(&CpuBackend, &m, &[1, 7, 9], false).unwrap();
    let bf16_head = cli_logits("bf16");
    assert_eq!(bf16_head, want);
    assert_ne!(bf16_head, cli_logits("auto"), "--lm-head changed nothing");
    let (ok, _, err) = flint(&[
        "perplexity",
        "--model",
        d,
        "--text",
        "/nonexistent.txt",
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("tokenizer"), "{err}");
}
