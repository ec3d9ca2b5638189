//! Quantized weights: every importer reads a fixture written with the reference projects'
//! packing (tests/fixtures/make_quant_fixtures.py) through `WeightStore`, and its dequantized
//! weight equals the reference's f32 dequantization bit for bit. Also: the fp8 e4m3fn codec
//! against torch, quantize→dequantize error bounds, and malformed inputs as named errors.

use flint::weights::quant::{
    fp8_e4m3_decode, fp8_e4m3_encode, import_awq, import_fp8, import_gptq, load_quantized,
    quantize_fp8, quantize_int4, quantize_int8, Fp8Scale, QuantConfig, QuantScheme, QuantWeight,
    Raw,
};
use flint::weights::{DType, WeightStore};
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

fn store(case: &str) -> WeightStore {
    WeightStore::open_file(&fixture_dir().join(format!("{case}.safetensors"))).unwrap()
}

fn config(case: &str) -> QuantConfig {
    let text = std::fs::read_to_string(fixture_dir().join(format!("{case}.json"))).unwrap();
    QuantConfig::parse(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn reference(s: &WeightStore) -> (Vec<f32>, usize, usize) {
    let info = s.info("reference").unwrap();
    let (n, k) = (info.shape[0], info.shape[1]);
    (s.load_f32("reference", &[n, k]).unwrap(), n, k)
}

fn import_case(case: &str) -> (QuantWeight, Vec<f32>) {
    let s = store(case);
    let cfg = config(case);
    let w = load_quantized(&s, "layer", &cfg).unwrap_or_else(|e| panic!("{case}: {e:#}"));
    let (r, n, k) = reference(&s);
    assert_eq!((w.n, w.k), (n, k), "{case}");
    (w, r)
}

fn assert_exact(case: &str, got: &[f32], want: &[f32], k: usize) {
    assert_eq!(got.len(), want.len(), "{case}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0),
            "{case}: w[{}, {}] = {a}, reference {b}",
            i / k,
            i % k
        );
    }
}

fn check_case(case: &str) -> QuantWeight {
    let (w, r) = import_case(case);
    assert_exact(case, &w.dequantize(), &r, w.k);
    w
}

#[test]
fn gptq_matches_reference() {
    let w = check_case("gptq_4bit_g128_asym_v1");
    assert_eq!(w.scheme, QuantScheme::Int4 { group: 128 });
    assert!(w.zeros.is_some() && w.g_idx.is_none());
    let w = check_case("gptq_4bit_g64_sym_v1");
    assert!(
        w.zeros.is_none(),
        "symmetric v1 zeros (stored 7) become the implicit 8"
    );
    let w = check_case("gptq_4bit_g64_actorder_v1");
    assert!(w.g_idx.is_some(), "act-order g_idx is kept");
    check_case("gptq_4bit_g32_asym_v2");
    let w = check_case("gptq_8bit_g128_sym_v1");
    assert_eq!(w.scheme, QuantScheme::Int8 { group: 128 });
    assert!(w.zeros.is_none());
}

#[test]
fn gptq_v1_zero_of_zero_survives_the_word_borrow() {
    // Row 5 of the fixture is non-negative, so every group of it has zero point 0, which v1
    // stores as a borrow across the packed word (GPTQModel's v2->v1). Reading it back must
    // give 0 there and leave the neighbouring rows intact (checked by the reference too).
    let case = "gptq_4bit_g128_asym_v1";
    let s = store(case);
    let w = load_quantized(&s, "layer", &config(case)).unwrap();
    let z = w.zeros.as_ref().unwrap();
    let g = w.groups();
    assert!(
        z[5 * g..6 * g].iter().all(|v| *v == 0),
        "{:?}",
        &z[5 * g..6 * g]
    );
    assert!(z.iter().all(|v| (0..=15).contains(v)));
    // The same tensors read as gptq_v2 are a different weight: the format flag matters.
    let QuantConfig::Gptq {
        bits,
        group,
        desc_act,
        sym,
        ..
    } = config(case)
    else {
        unreachable!()
    };
    let v2cfg = QuantConfig::Gptq {
        bits,
        group,
        desc_act,
        sym,
        v2: true,
    };
    let v2 = load_quantized(&s, "layer", &v2cfg).unwrap();
    let (r, _, _) = reference(&s);
    assert_ne!(v2.dequantize(), r);
}

#[test]
fn awq_matches_reference() {
    let w = check_case("awq_4bit_g128");
    assert_eq!(w.scheme, QuantScheme::Int4 { group: 128 });
    check_case("awq_4bit_g64");
}

#[test]
fn compressed_tensors_int_matches_reference() {
    let w = check_case("ct_w4a16_group128_sym");
    assert_eq!(w.scheme, QuantScheme::Int4 { group: 128 });
    assert!(w.zeros.is_none());
    let w = check_case("ct_w4a16_group64_asym");
    assert!(w.zeros.is_some());
    let w = check_case("ct_w8a16_channel_sym");
    assert_eq!(w.scheme, QuantScheme::Int8 { group: 256 });
    check_case("ct_w4a16_channel_asym_f16");
    let w = check_case("ct_w8a8_int_channel_sym");
    assert_eq!(w.scheme, QuantScheme::Int8 { group: 256 });
    assert!(w.zeros.is_none());
    let w = check_case("ct_w8a8_int_channel_asym");
    assert!(w.zeros.is_some());
}

#[test]
fn fp8_checkpoints_match_reference() {
    let w = check_case("ct_fp8_tensor");
    assert_eq!(
        w.scheme,
        QuantScheme::Fp8E4M3 {
            scale: Fp8Scale::Tensor
        }
    );
    let w = check_case("ct_fp8_channel");
    assert_eq!(
        w.scheme,
        QuantScheme::Fp8E4M3 {
            scale: Fp8Scale::Channel
        }
    );
    let w = check_case("ct_fp8_block");
    assert_eq!(
        w.scheme,
        QuantScheme::Fp8E4M3 {
            scale: Fp8Scale::Block { bn: 16, bk: 128 }
        }
    );
    check_case("fbgemm_fp8");
    let w = check_case("fp8_block_128");
    assert_eq!(
        w.scheme,
        QuantScheme::Fp8E4M3 {
            scale: Fp8Scale::Block { bn: 128, bk: 128 }
        }
    );
    check_case("fp8_block_32x64");
}

#[test]
fn fp8_codec_matches_torch() {
    let s = store("fp8_e4m3");
    let dec = s.load_f32("decoded", &[256]).unwrap();
    for (c, want) in dec.iter().enumerate() {
        let got = fp8_e4m3_decode(c as u8);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "code {c:#04x}: {got} vs torch {want}"
        );
        if !got.is_nan() {
            assert_eq!(fp8_e4m3_encode(got), c as u8, "round trip of code {c:#04x}");
        }
    }
    let n = s.info("values").unwrap().shape[0];
    let vals = s.load_f32("values", &[n]).unwrap();
    let (_, enc) = s.bytes("encoded").unwrap();
    for (v, want) in vals.iter().zip(enc) {
        assert_eq!(
            fp8_e4m3_encode(*v),
            *want,
            "encode({v:e}) vs torch (decodes to {})",
            fp8_e4m3_decode(*want)
        );
    }
    let (_, nan) = s.bytes("nan_encoded").unwrap();
    assert_eq!(fp8_e4m3_encode(f32::NAN) & 0x7F, nan[0] & 0x7F);
}

fn test_weight(n: usize, k: usize, seed: u64) -> Vec<f32> {
    // xorshift: deterministic, spread over several magnitudes, with exact zeros and a zero row
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n * k)
        .map(|i| {
            let r = i / k;
            if r == 1 || i % 97 == 0 {
                0.0
            } else {
                let mag = 10f64.powf(-3.0 + 3.0 * next()) * if r == 2 { 100.0 } else { 1.0 };
                (if next() < 0.5 { -mag } else { mag }) as f32
            }
        })
        .collect()
}

#[test]
fn int8_quantize_error_is_at_most_half_a_step() {
    let (n, k) = (24, 512);
    let w = test_weight(n, k, 1);
    for group in [k, 128, 64, 32] {
        let q = quantize_int8(&w, n, k, group).unwrap();
        q.validate("int8").unwrap();
        let d = q.dequantize();
        for i in 0..n * k {
            let s = q.scales[(i / k) * (k / group) + (i % k) / group];
            let err = (d[i] - w[i]).abs();
            assert!(
                err <= s * 0.5 * (1.0 + 1e-5),
                "group {group} w[{i}]: err {err} > {s}/2"
            );
        }
        assert!(d[k..2 * k].iter().all(|v| *v == 0.0), "zero row stays zero");
    }
}

#[test]
fn int4_quantize_error_is_at_most_half_a_step() {
    let (n, k) = (24, 512);
    let w = test_weight(n, k, 2);
    for group in [128, 64, 32] {
        for sym in [true, false] {
            let q = quantize_int4(&w, n, k, group, sym).unwrap();
            q.validate("int4").unwrap();
            assert_eq!(q.qdata.len(), n * k / 2);
            let d = q.dequantize();
            for i in 0..n * k {
                let s = q.scales[(i / k) * (k / group) + (i % k) / group];
                let err = (d[i] - w[i]).abs();
                assert!(
                    err <= s * 0.5 * (1.0 + 1e-5),
                    "group {group} sym {sym} w[{i}] = {}: err {err} > {s}/2",
                    w[i]
                );
            }
        }
    }
}

#[test]
fn fp8_quantize_relative_error_is_at_most_2_pow_minus_4() {
    let (n, k) = (24, 512);
    let w = test_weight(n, k, 3);
    for per_channel in [true, false] {
        let q = quantize_fp8(&w, n, k, per_channel).unwrap();
        q.validate("fp8").unwrap();
        let d = q.dequantize();
        for i in 0..n * k {
            let s = q.scales[if per_channel { i / k } else { 0 }];
            let err = (d[i] - w[i]).abs();
            // normal range: half an ulp of 3 mantissa bits; subnormal range: half of 2^-9
            let bound = (w[i].abs() * 0.0625).max(s * 2f32.powi(-10)) * (1.0 + 1e-5);
            assert!(
                err <= bound,
                "per_channel {per_channel} w[{i}] = {}: err {err}",
                w[i]
            );
        }
    }
}

#[test]
fn quantize_rejects_bad_shapes() {
    let w = vec![0.5f32; 4 * 96];
    let e = quantize_int8(&w, 4, 96, 64).unwrap_err().to_string();
    assert!(e.contains("group size 64") && e.contains("96"), "{e}");
    let e = quantize_int4(&w, 4, 96, 64, true).unwrap_err().to_string();
    assert!(e.contains("64") && e.contains("96"), "{e}");
    let e = quantize_fp8(&w, 5, 96, true).unwrap_err().to_string();
    assert!(e.contains("[5, 96]"), "{e}");
    let mut bad = w.clone();
    bad[96 + 3] = f32::NAN;
    let e = quantize_int8(&bad, 4, 96, 96).unwrap_err().to_string();
    assert!(e.contains("[1, 3]") && e.contains("NaN"), "{e}");
}

#[test]
fn config_parser_names_unsupported_combinations() {
    let parse = |s: &str| QuantConfig::parse(&serde_json::from_str(s).unwrap());
    let e = parse(r#"{"quant_method":"gptq","bits":3,"group_size":128}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 bits"), "{e}");
    let e = parse(r#"{"quant_method":"awq","bits":4,"group_size":128,"version":"gemv"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gemv"), "{e}");
    let e = parse(r#"{"quant_method":"bitsandbytes"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bitsandbytes"), "{e}");
    let e =
        parse(r#"{"quant_method":"gptq","bits":4,"group_size":128,"checkpoint_format":"marlin"}"#)
            .unwrap_err()
            .to_string();
    assert!(e.contains("marlin"), "{e}");
    // a whole config.json works too; group_size -1 is one group
    let c = parse(r#"{"model_type":"llama","quantization_config":{"quant_method":"gptq","bits":4,"group_size":-1,"desc_act":false,"sym":true}}"#).unwrap();
    assert_eq!(
        c,
        QuantConfig::Gptq {
            bits: 4,
            group: None,
            desc_act: false,
            sym: true,
            v2: false
        }
    );
    assert_eq!(
        parse(r#"{"quant_method":"fp8","weight_block_size":[128,128]}"#).unwrap(),
        QuantConfig::Fp8 {
            block: Some((128, 128))
        }
    );
}

fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn malformed_tensors_are_named_errors() {
    let cfg = QuantConfig::Gptq {
        bits: 4,
        group: Some(64),
        desc_act: true,
        sym: false,
        v2: false,
    };
    let (k, n) = (128usize, 16usize);
    let qw = i32_bytes(&vec![0x1234_5678; k / 8 * n]);
    let qz = i32_bytes(&vec![0x7777_7777; 2 * n / 8]);
    let sc: Vec<u8> = vec![0x3c00u16; 2 * n]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let raw = |name: &'static str, dtype, shape: &'static [usize], bytes: &'static [u8]| Raw {
        name,
        dtype,
        shape,
        bytes,
    };
    let qw: &'static [u8] = Box::leak(qw.into_boxed_slice());
    let qz: &'static [u8] = Box::leak(qz.into_boxed_slice());
    let sc: &'static [u8] = Box::leak(sc.into_boxed_slice());
    let good_qw = raw("l.qweight", DType::I32, &[16, 16], qw);
    let good_qz = raw("l.qzeros", DType::I32, &[2, 2], qz);
    let good_sc = raw("l.scales", DType::F16, &[2, 16], sc);
    let gi: Vec<i32> = (0..k as i32).map(|c| c / 64).collect();
    let gi: &'static [u8] = Box::leak(i32_bytes(&gi).into_boxed_slice());
    let good_gi = raw("l.g_idx", DType::I32, &[128], gi);
    import_gptq(&cfg, good_qw, good_qz, good_sc, Some(good_gi)).unwrap();

    // wrong scales shape
    let e = import_gptq(
        &cfg,
        good_qw,
        good_qz,
        raw("l.scales", DType::F16, &[4, 8], sc),
        Some(good_gi),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("l.scales") && e.contains("[4, 8]"), "{e}");
    // wrong dtype
    let e = import_gptq(
        &cfg,
        good_qw,
        raw("l.qzeros", DType::F32, &[2, 2], qz),
        good_sc,
        Some(good_gi),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("l.qzeros") && e.contains("F32"), "{e}");
    // group not dividing K
    let cfg48 = QuantConfig::Gptq {
        bits: 4,
        group: Some(48),
        desc_act: false,
        sym: false,
        v2: false,
    };
    let e = import_gptq(&cfg48, good_qw, good_qz, good_sc, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("l.qweight") && e.contains("48"), "{e}");
    // bad g_idx value
    let bad: Vec<i32> = (0..k as i32)
        .map(|c| if c == 5 { 2 } else { c / 64 })
        .collect();
    let bad: &'static [u8] = Box::leak(i32_bytes(&bad).into_boxed_slice());
    let e = import_gptq(
        &cfg,
        good_qw,
        good_qz,
        good_sc,
        Some(raw("l.g_idx", DType::I32, &[128], bad)),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("l.g_idx") && e.contains("g_idx[5] = 2"), "{e}");
    // g_idx of the wrong length
    let e = import_gptq(
        &cfg,
        good_qw,
        good_qz,
        good_sc,
        Some(raw("l.g_idx", DType::I32, &[64], &gi[..256])),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("l.g_idx"), "{e}");
    // desc_act without g_idx
    let e = import_gptq(&cfg, good_qw, good_qz, good_sc, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("g_idx"), "{e}");
    // truncated bytes
    let e = import_gptq(
        &cfg,
        raw("l.qweight", DType::I32, &[16, 16], &qw[..100]),
        good_qz,
        good_sc,
        Some(good_gi),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("l.qweight") && e.contains("bytes"), "{e}");
    // one-dimensional qweight
    let e = import_gptq(
        &cfg,
        raw("l.qweight", DType::I32, &[256], qw),
        good_qz,
        good_sc,
        Some(good_gi),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("l.qweight") && e.contains("two dimensions"),
        "{e}"
    );

    // AWQ: scales for the wrong N
    let acfg = QuantConfig::Awq {
        group: 64,
        zero_point: true,
    };
    let e = import_awq(
        &acfg,
        raw("a.qweight", DType::I32, &[128, 2], &qw[..1024]),
        Some(raw("a.qzeros", DType::I32, &[2, 2], qz)),
        raw("a.scales", DType::F16, &[2, 8], &sc[..32]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("a.scales") && e.contains("[2, 16]"), "{e}");

    // fp8: block scales of the wrong shape, non-finite scale, wrong weight dtype
    let codes: &'static [u8] = Box::leak(vec![0x38u8; 16 * 128].into_boxed_slice());
    let one: &'static [u8] = Box::leak(1.0f32.to_le_bytes().to_vec().into_boxed_slice());
    let inf: &'static [u8] = Box::leak(f32::INFINITY.to_le_bytes().to_vec().into_boxed_slice());
    let w8 = raw("f.weight", DType::F8E4M3, &[16, 128], codes);
    let e = import_fp8(
        w8,
        raw("f.weight_scale_inv", DType::F32, &[1, 1], one),
        Fp8Scale::Block { bn: 8, bk: 128 },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("f.weight_scale_inv") && e.contains("[2, 1]"),
        "{e}"
    );
    let e = import_fp8(
        w8,
        raw("f.weight_scale", DType::F32, &[1], inf),
        Fp8Scale::Tensor,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("f.weight_scale") && e.contains("finite"), "{e}");
    let e = import_fp8(
        raw("f.weight", DType::U8, &[16, 128], codes),
        raw("f.weight_scale", DType::F32, &[1], one),
        Fp8Scale::Tensor,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("f.weight") && e.contains("U8"), "{e}");
    let ok = import_fp8(
        w8,
        raw("f.weight_scale", DType::F32, &[1], one),
        Fp8Scale::Tensor,
    )
    .unwrap();
    assert!(ok.dequantize().iter().all(|v| *v == 1.0));
}

#[test]
fn missing_tensor_through_the_store_names_it_and_the_file() {
    let s = store("awq_4bit_g64");
    let e = load_quantized(&s, "model.layers.0.mlp", &config("awq_4bit_g64"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.0.mlp.qweight"), "{e}");
    // the wrong importer for the tensors: GPTQ names exist but the shapes are AWQ's
    let e = load_quantized(
        &s,
        "layer",
        &QuantConfig::Gptq {
            bits: 4,
            group: Some(64),
            desc_act: false,
            sym: false,
            v2: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("awq_4bit_g64.safetensors") && e.contains("layer."),
        "{e}"
    );
    // a quantized tensor is not an f32 tensor
    let e = s
        .load_f32("layer.qweight", &[256, 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer.qweight") && e.contains("I32"), "{e}");
}

/// Throughput of quantize-on-load at an 8B-model matrix size (run with `--ignored`).
#[test]
#[ignore]
fn quantize_throughput() {
    let (n, k) = (14336, 4096);
    let w = test_weight(n, k, 9);
    let t = std::time::Instant::now();
    let q4 = quantize_int4(&w, n, k, 128, true).unwrap();
    let t4 = t.elapsed();
    let t = std::time::Instant::now();
    let q8 = quantize_int8(&w, n, k, k).unwrap();
    let t8 = t.elapsed();
    let t = std::time::Instant::now();
    let f8 = quantize_fp8(&w, n, k, true).unwrap();
    let tf = t.elapsed();
    let t = std::time::Instant::now();
    let d = q4.dequantize();
    let td = t.elapsed();
    let gb = (n * k * 4) as f64 / 1e9;
    println!(
        "[{n}, {k}] f32 in: int4 {:.2} GB/s, int8 {:.2} GB/s, fp8 {:.2} GB/s, int4 dequant {:.2} GB/s",
        gb / t4.as_secs_f64(),
        gb / t8.as_secs_f64(),
        gb / tf.as_secs_f64(),
        gb / td.as_secs_f64()
    );
    assert_eq!(d.len() + q8.qdata.len() + f8.qdata.len(), 3 * n * k);
}

/// Zero-sized quantized tensors (valid safetensors) are errors naming the tensor in every
/// importer: a compressed-tensors channel-strategy weight of K = 0 divided by its group
/// size 0 and panicked.
#[test]
fn empty_quantized_tensors_are_errors_naming_them() {
    use flint::weights::quant::{import_compressed_int, CtStrategy};
    let raw = |name: &'static str, dtype, shape: &'static [usize]| Raw {
        name,
        dtype,
        shape,
        bytes: &[],
    };
    let check = |what: &str, want: &str, r: Result<anyhow::Result<QuantWeight>, _>| match r {
        Ok(Err(e)) => {
            let e = format!("{e:#}");
            assert!(e.contains(want), "{what}: {e}");
        }
        Ok(Ok(_)) => panic!("{what}: an empty weight was accepted"),
        Err(_) => panic!("{what}: panicked"),
    };
    let ct = |strategy, symmetric| QuantConfig::CompressedInt {
        bits: 8,
        strategy,
        symmetric,
        packed: false,
    };
    for (shape, strategy) in [
        (&[4usize, 0][..], CtStrategy::Channel),
        (&[0, 4][..], CtStrategy::Channel),
        (&[4, 0][..], CtStrategy::Group(2)),
    ] {
        for symmetric in [true, false] {
            let r = std::panic::catch_unwind(|| {
                import_compressed_int(
                    &ct(strategy, symmetric),
                    raw("c.weight", DType::I8, shape),
                    None,
                    raw("c.weight_scale", DType::F32, &[4, 0]),
                    Some(raw("c.weight_zero_point", DType::I8, &[4, 0])),
                )
            });
            check(
                &format!("int-quantized {shape:?} {strategy:?}"),
                "c.weight",
                r,
            );
        }
    }
    let gptq = QuantConfig::Gptq {
        bits: 4,
        group: None,
        desc_act: false,
        sym: true,
        v2: false,
    };
    let r = std::panic::catch_unwind(|| {
        import_gptq(
            &gptq,
            raw("g.qweight", DType::I32, &[0, 8]),
            raw("g.qzeros", DType::I32, &[0, 1]),
            raw("g.scales", DType::F16, &[0, 8]),
            None,
        )
    });
    check("gptq K = 0", "g.qweight", r);
    let awq = QuantConfig::Awq {
        group: 64,
        zero_point: true,
    };
    let r = std::panic::catch_unwind(|| {
        import_awq(
            &awq,
            raw("a.qweight", DType::I32, &[0, 1]),
            Some(raw("a.qzeros", DType::I32, &[0, 1])),
            raw("a.scales", DType::F16, &[0, 8]),
        )
    });
    check("awq K = 0", "a.qweight", r);
    // A zero dimension lets safetensors accept any other: N = 2^61 × 8 overflowed.
    let r = std::panic::catch_unwind(|| {
        import_awq(
            &awq,
            raw("a.qweight", DType::I32, &[0, 1 << 61]),
            None,
            raw("a.scales", DType::F16, &[0, 0]),
        )
    });
    check("awq N overflow", "N = 2305843009213693952 × 8 overflows", r);
    let r = std::panic::catch_unwind(|| {
        import_gptq(
            &gptq,
            raw("g.qweight", DType::I32, &[1 << 62, 0]),
            raw("g.qzeros", DType::I32, &[0, 0]),
            raw("g.scales", DType::F16, &[0, 0]),
            None,
        )
    });
    check(
        "gptq K overflow",
        "K = 4611686018427387904 × 8 overflows",
        r,
    );
    let r = std::panic::catch_unwind(|| {
        import_fp8(
            raw("f.weight", DType::F8E4M3, &[0, 16]),
            raw("f.weight_scale", DType::F32, &[0]),
            Fp8Scale::Channel,
        )
    });
    check("fp8 N = 0", "f.weight", r);
}

/// Bit widths past u32 were cast (4294967300 bits read as 4) and accepted.
#[test]
fn quantization_config_bits_are_not_truncated() {
    let parse = |v: serde_json::Value| QuantConfig::parse(&v).unwrap_err().to_string();
    let e = parse(
        serde_json::json!({"quant_method": "gptq", "bits": 4294967300u64,
        "group_size": 128}),
    );
    assert!(e.contains("4294967300 bits"), "{e}");
    let e = parse(serde_json::json!({"quant_method": "gptq", "bits": 3, "group_size": 128}));
    assert!(e.contains("GPTQ with 3 bits"), "{e}");
    let e = parse(serde_json::json!({"quant_method": "compressed-tensors",
        "format": "pack-quantized", "config_groups": {"group_0": {"weights":
        {"num_bits": 4294967304u64, "type": "int", "strategy": "channel"}}}}));
    assert!(e.contains("group_0 with 4294967304 bits"), "{e}");
    let e = parse(serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 0}));
    assert!(e.contains("group_size must be positive"), "{e}");
}
