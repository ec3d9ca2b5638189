//! Checkpoint loading: good files load; bad ones (truncated, corrupted headers, wrong shapes
//! or dtypes, missing tensors or shards) give errors naming the file and tensor, never a panic.

mod common;

use flint::backend::cpu::CpuBackend;
use flint::weights::WeightStore;
use flint::ModelRef;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "flint-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A safetensors file: 8-byte header length, JSON header, data.
fn safetensors(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn reads_f32_f16_bf16_exactly() {
    let d = temp_dir("dtypes");
    let vals = [1.5f32, -2.25, 0.0, 3.0e-3];
    let f16: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    write(
        &d,
        "model.safetensors",
        &safetensors(&[
            ("a", "F32", &[2, 2], f32_bytes(&vals)),
            ("b", "F16", &[4], f16.clone()),
            ("c", "BF16", &[4], bf16.clone()),
        ]),
    );
    let s = WeightStore::open(&d).unwrap();
    assert_eq!(s.load_f32("a", &[2, 2]).unwrap(), vals);
    let want16: Vec<f32> = vals
        .iter()
        .map(|v| half::f16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(s.load_f32("b", &[4]).unwrap(), want16);
    let want_bf: Vec<f32> = vals
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(s.load_f32("c", &[4]).unwrap(), want_bf);
    assert_eq!(s.total_bytes(), 16 + 8 + 8);
}

#[test]
fn wrong_shape_missing_tensor_and_dtype_are_named() {
    let d = temp_dir("names");
    let file = write(
        &d,
        "model.safetensors",
        &safetensors(&[("w", "F32", &[2, 3], f32_bytes(&[0.0; 6]))]),
    );
    let s = WeightStore::open(&d).unwrap();
    let e = err_of(s.load_f32("w", &[3, 2]));
    assert!(
        e.contains("`w`") && e.contains("[2, 3]") && e.contains(&file.display().to_string()),
        "{e}"
    );
    let e = err_of(s.load_f32("missing.weight", &[1]));
    assert!(
        e.contains("`missing.weight` not found") && e.contains("model.safetensors"),
        "{e}"
    );

    // Quantized storage types open (read raw by weights::quant) but are not f32 tensors.
    let d = temp_dir("i8");
    write(
        &d,
        "model.safetensors",
        &safetensors(&[("q", "I8", &[4], vec![1, 2, 3, 4])]),
    );
    let s = WeightStore::open(&d).unwrap();
    let e = err_of(s.load_f32("q", &[4]));
    assert!(
        e.contains("`q`") && e.contains("I8") && e.contains("quant"),
        "{e}"
    );
    let d = temp_dir("f64");
    write(
        &d,
        "model.safetensors",
        &safetensors(&[("q", "F64", &[1], vec![0; 8])]),
    );
    let e = err_of(WeightStore::open(&d));
    assert!(e.contains("`q`") && e.contains("F64"), "{e}");

    let e = err_of(WeightStore::open(&temp_dir("empty")));
    assert!(e.contains("no model.safetensors"), "{e}");
}

#[test]
fn truncated_files_are_errors_naming_the_file() {
    let good = safetensors(&[
        ("a", "F32", &[4], f32_bytes(&[1.0; 4])),
        ("b", "F32", &[8], f32_bytes(&[2.0; 8])),
    ]);
    for cut in [0, 4, 8, 20, good.len() - 40, good.len() - 1] {
        let d = temp_dir("trunc");
        write(&d, "model.safetensors", &good[..cut]);
        let e = err_of(WeightStore::open(&d));
        assert!(
            e.contains("model.safetensors") && e.contains("malformed"),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn corrupted_headers_never_panic() {
    // Deterministic fuzzing: flip, overwrite and splice bytes of the header and length.
    let good = safetensors(&[
        ("a", "F32", &[4], f32_bytes(&[1.0; 4])),
        ("b", "BF16", &[2, 2], vec![0; 8]),
    ]);
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut rng = flint::sampling::Rng::new(7);
    let d = temp_dir("fuzz");
    let (mut ok, mut err) = (0, 0);
    for i in 0..600 {
        let mut b = good.clone();
        let edits = 1 + rng.next_u64() as usize % 4;
        for _ in 0..edits {
            let at = rng.next_u64() as usize % header_end;
            match rng.next_u64() % 3 {
                0 => b[at] ^= 1 << (rng.next_u64() % 8),
                1 => {
                    let chars = b"{}[],:\"0123456789-eE";
                    b[at] = chars[rng.next_u64() as usize % chars.len()]
                }
                _ => b[at] = rng.next_u64() as u8,
            }
        }
        if i % 5 == 0 {
            b.truncate(rng.next_u64() as usize % b.len());
        }
        write(&d, "model.safetensors", &b);
        let r = std::panic::catch_unwind(|| {
            WeightStore::open(&d).and_then(|s| {
                for n in ["a", "b"] {
                    if s.contains(n) {
                        let shape = s.info(n)?.shape.clone();
                        s.load_f32(n, &shape)?;
                    }
                }
                Ok(())
            })
        });
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                assert!(
                    format!("{e:#}").contains("model.safetensors"),
                    "error does not name the file: {e:#}"
                );
                err += 1
            }
            Err(_) => panic!(
                "panic on corrupted input #{i}: {:?}",
                &b[..header_end.min(b.len())]
            ),
        }
    }
    assert!(
        err > 300,
        "most corruptions must be rejected: {ok} ok, {err} errors"
    );
}

#[test]
fn sharded_checkpoints_load_and_missing_shards_are_named() {
    let d = temp_dir("shards");
    write(
        &d,
        "model-00001-of-00002.safetensors",
        &safetensors(&[("a", "F32", &[2], f32_bytes(&[1.0, 2.0]))]),
    );
    write(
        &d,
        "model-00002-of-00002.safetensors",
        &safetensors(&[("b", "F32", &[1], f32_bytes(&[3.0]))]),
    );
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}});
    write(
        &d,
        "model.safetensors.index.json",
        index.to_string().as_bytes(),
    );
    let s = WeightStore::open(&d).unwrap();
    assert_eq!(s.load_f32("b", &[1]).unwrap(), vec![3.0]);
    assert_eq!(s.names().collect::<Vec<_>>(), vec!["a", "b"]);

    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    let e = err_of(WeightStore::open(&d));
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");

    write(&d, "model.safetensors.index.json", b"{\"weight_map\": 3}");
    let e = err_of(WeightStore::open(&d));
    assert!(e.contains("index.json") && e.contains("weight_map"), "{e}");
}

#[test]
fn a_model_with_a_wrong_tensor_names_it() {
    // Copy a fixture and replace one tensor with a wrongly shaped one.
    let src = common::fixtures_dir().join("llama2");
    let d = temp_dir("badmodel");
    std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    let store = WeightStore::open(&src).unwrap();
    let mut tensors: Vec<(String, String, Vec<usize>, Vec<u8>)> = Vec::new();
    for n in store.names() {
        let (info, bytes) = store.bytes(n).unwrap();
        let dtype = format!("{:?}", info.dtype).to_uppercase();
        tensors.push((n.to_string(), dtype, info.shape.clone(), bytes.to_vec()));
    }
    let victim = "model.layers.1.mlp.down_proj.weight";
    let t = tensors.iter_mut().find(|t| t.0 == victim).unwrap();
    t.2.reverse();
    let refs: Vec<(&str, &str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|t| (t.0.as_str(), t.1.as_str(), t.2.as_slice(), t.3.clone()))
        .collect();
    write(&d, "model.safetensors", &safetensors(&refs));
    let e = err_of(ModelRef::Dir(d.clone()).load(&CpuBackend));
    assert!(e.contains(victim) && e.contains("shape"), "{e}");

    // And one missing (with the shape put right again).
    let t = tensors.iter_mut().find(|t| t.0 == victim).unwrap();
    t.2.reverse();
    let refs: Vec<(&str, &str, &[usize], Vec<u8>)> = tensors
        .iter()
        .filter(|t| t.0 != "model.norm.weight")
        .map(|t| (t.0.as_str(), t.1.as_str(), t.2.as_slice(), t.3.clone()))
        .collect();
    write(&d, "model.safetensors", &safetensors(&refs));
    let e = err_of(ModelRef::Dir(d).load(&CpuBackend));
    assert!(e.contains("`model.norm.weight` not found"), "{e}");
}

/// Headers crafted to lie (rather than randomly corrupted): each is an error naming the file
/// and what is wrong, and a zero dimension beside a huge one loads as the empty tensor it is.
#[test]
fn crafted_headers_are_named_errors() {
    let file = |header: &str, data: usize| {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header.as_bytes());
        out.extend(vec![0u8; data]);
        out
    };
    let cases = [
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
            "invalid offset for tensor `b`",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
            "invalid shape",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
            "not fully covered",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
            0,
            "overflow",
        ),
        (
            r#"{"a":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}}"#,
            16,
            "unknown variant `Q7`",
        ),
    ];
    let d = temp_dir("crafted");
    for (header, data, want) in cases {
        write(&d, "model.safetensors", &file(header, data));
        let e = err_of(WeightStore::open(&d));
        assert!(
            e.contains("model.safetensors") && e.contains(want),
            "{header}: {e}"
        );
    }
    let mut b = file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    );
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    write(&d, "model.safetensors", &b);
    let e = err_of(WeightStore::open(&d));
    assert!(
        e.contains("model.safetensors") && e.contains("header"),
        "{e}"
    );

    let huge = format!(
        r#"{{"a":{{"dtype":"F32","shape":[0,{}],"data_offsets":[0,0]}}}}"#,
        u64::MAX
    );
    write(&d, "model.safetensors", &file(&huge, 0));
    let s = WeightStore::open(&d).unwrap();
    let shape = s.info("a").unwrap().shape.clone();
    assert_eq!(s.load_f32("a", &shape).unwrap(), Vec::<f32>::new());
    let e = err_of(s.load_f32("a", &[0, 4]));
    assert!(
        e.contains("`a`") && e.contains("[0, 18446744073709551615]") && e.contains("[0, 4]"),
        "{e}"
    );
}
