//! Tokenizer checks against transformers 5 (fixtures made by tests/fixtures/make_tokenizer_fixtures.py)
//! and, when present, the real Llama 2 tokenizer under ../shared/real/tokenizers/llama2.
//!
//! `FLINT_TOKENIZER_DIRS=dir1:dir2 cargo test --release --test tokenizer` checks more folders laid
//! out like the fixtures (tokenizer files + expected.json), e.g. real tokenizers kept out of the repo.

use flint::tokenizer::{Compat, DecodeStream, Tokenizer, TokenizerClass};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn stream(tok: &Tokenizer, ids: &[u32], skip: bool) -> String {
    let mut ds = DecodeStream::new(tok, skip);
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = ds.step(id).unwrap() {
            out.push_str(&piece);
        }
    }
    if let Some(rest) = ds.flush().unwrap() {
        out.push_str(&rest);
    }
    out
}

/// Compares a tokenizer folder with its expected.json; returns what differs.
fn check_expected(dir: &Path) -> Vec<String> {
    let exp = read_json(&dir.join("expected.json"));
    let tok = Tokenizer::from_dir(dir).unwrap_or_else(|e| panic!("{e:#}"));
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let mut bad = Vec::new();
    let mut check = |what: String, ok: bool| {
        if !ok {
            bad.push(format!("{name}: {what}"));
        }
    };
    let opt_id = |v: &Value| v.as_u64().map(|x| x as u32);
    check(
        format!("bos_id {:?} want {}", tok.bos_id(), exp["bos_id"]),
        tok.bos_id() == opt_id(&exp["bos_id"]),
    );
    let want_eos: Vec<u32> = opt_id(&exp["eos_id"]).into_iter().collect();
    check(
        format!("eos_ids {:?} want {want_eos:?}", tok.eos_ids()),
        tok.eos_ids() == want_eos,
    );
    check(
        format!("vocab_size {} want {}", tok.vocab_size(), exp["vocab_size"]),
        Some(tok.vocab_size() as u64) == exp["vocab_size"].as_u64(),
    );
    let class = format!("{:?}", tok.class());
    let want_class = match exp["class"].as_str().unwrap_or("") {
        "LlamaTokenizer" => "Llama",
        "GemmaTokenizer" => "Gemma",
        "Qwen2Tokenizer" => "Qwen2",
        _ => "Generic",
    };
    check(
        format!("class {class} want {want_class}"),
        class == want_class,
    );

    for case in exp["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let t = format!("{text:?}");
        let ids = ids_of(&case["ids"]);
        let ids_ns = ids_of(&case["ids_no_special"]);
        let got = tok.encode(text, true).unwrap();
        check(format!("{t}: ids {got:?} want {ids:?}"), got == ids);
        let got = tok.encode(text, false).unwrap();
        check(
            format!("{t}: ids_no_special {got:?} want {ids_ns:?}"),
            got == ids_ns,
        );
        for (ids, skip, key) in [
            (&ids, false, "decode"),
            (&ids, true, "decode_skip_special"),
            (&ids_ns, false, "decode_no_special"),
        ] {
            let want = case[key].as_str().unwrap();
            let got = tok.decode(ids, skip).unwrap();
            check(format!("{t}: {key} {got:?} want {want:?}"), got == want);
            let streamed = stream(&tok, ids, skip);
            check(
                format!("{t}: streamed {key} {streamed:?} want {got:?}"),
                streamed == got,
            );
        }
    }
    bad
}

fn report(bad: Vec<String>) {
    for b in &bad {
        eprintln!("MISMATCH {b}");
    }
    assert!(bad.is_empty(), "{} mismatches (listed above)", bad.len());
}

#[test]
fn fixtures_match_transformers() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("tests/fixtures/tokenizers")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 7,
        "expected the 7 fixture folders, found {dirs:?}"
    );
    let mut bad = Vec::new();
    for d in &dirs {
        bad.extend(check_expected(d));
    }
    report(bad);
}

/// Folders named in FLINT_TOKENIZER_DIRS (colon-separated), e.g. real tokenizers with an
/// expected.json written by transformers.
#[test]
fn extra_dirs_match_transformers() {
    let Ok(list) = std::env::var("FLINT_TOKENIZER_DIRS") else {
        eprintln!("skip: FLINT_TOKENIZER_DIRS not set");
        return;
    };
    let mut bad = Vec::new();
    for d in list.split(':').filter(|s| !s.is_empty()) {
        let d = Path::new(d);
        let n = bad.len();
        bad.extend(check_expected(d));
        eprintln!("{}: {} mismatches", d.display(), bad.len() - n);
    }
    report(bad);
}

#[test]
fn bos_follows_tokenizer_json_not_config() {
    // tokenizer_config.json says add_bos_token false, add_eos_token true; tokenizer.json's
    // template adds BOS only, and transformers 5 follows tokenizer.json.
    let tok = Tokenizer::from_dir(&fixtures_root().join("bos_conflict")).unwrap();
    let ids = tok.encode("Hello", true).unwrap();
    assert_eq!(ids.first().copied(), tok.bos_id());
    assert_ne!(ids.last().copied(), tok.eos_ids().first().copied());
    // No post-processor: nothing added, whatever add_bos_token says.
    let tok = Tokenizer::from_dir(&fixtures_root().join("llama_no_post")).unwrap();
    assert_eq!(
        tok.encode("Hello", true).unwrap(),
        tok.encode("Hello", false).unwrap()
    );
    assert!(tok.bos_id().is_some());
    assert_eq!(tok.class(), TokenizerClass::Llama);
    // model_type "mistral" in config.json selects the generic backend for the same files.
    let tok = Tokenizer::from_dir(&fixtures_root().join("mistral_style")).unwrap();
    assert_eq!(tok.class(), TokenizerClass::Generic);
}

#[test]
fn special_token_ids() {
    let tok = Tokenizer::from_dir(&fixtures_root().join("llama3_style")).unwrap();
    // eos_token written as {"content": ..} in tokenizer_config.json
    assert_eq!(tok.eos_ids(), vec![tok.token_to_id("<|eot_id|>").unwrap()]);
    assert_eq!(tok.bos_id(), tok.token_to_id("<|begin_of_text|>"));
    let tok = Tokenizer::from_dir(&fixtures_root().join("qwen_style")).unwrap();
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_ids(), vec![tok.token_to_id("<|im_end|>").unwrap()]);
    assert_eq!(tok.token_to_id("no such token"), None);
}

#[test]
fn decode_stream_holds_back_partial_characters() {
    for name in ["llama2_style", "llama3_style", "qwen_style", "gemma_style"] {
        let tok = Tokenizer::from_dir(&fixtures_root().join(name)).unwrap();
        let ids = tok.encode("a 😀 b", false).unwrap();
        let mut ds = DecodeStream::new(&tok, false);
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(p) = ds.step(id).unwrap() {
                assert!(
                    !p.contains('\u{FFFD}'),
                    "{name}: partial character in {p:?}"
                );
                pieces.push(p);
            }
        }
        assert_eq!(pieces.concat(), tok.decode(&ids, false).unwrap(), "{name}");
        assert!(
            pieces.iter().any(|p| p.contains('😀')),
            "{name}: {pieces:?}"
        );
        // An incomplete character at the very end comes out on flush.
        let mut ds = DecodeStream::new(&tok, false);
        let emoji = tok.encode("😀", false).unwrap();
        assert!(
            emoji.len() > 1,
            "{name}: the emoji should need several tokens"
        );
        for &id in &emoji[..emoji.len() - 1] {
            assert_eq!(ds.step(id).unwrap(), None, "{name}");
        }
        assert!(ds.flush().unwrap().is_some(), "{name}");
    }
}

#[test]
fn out_of_range_ids_do_not_panic() {
    let tok = Tokenizer::from_dir(&fixtures_root().join("llama2_style")).unwrap();
    let text = tok.decode(&[u32::MAX, 5, 1_000_000], false).unwrap();
    assert!(text.len() < 16);
    let mut ds = DecodeStream::new(&tok, true);
    ds.step(u32::MAX).unwrap();
}

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "flint-tokenizer-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn missing_tokenizer_json_is_an_error_naming_it() {
    let d = scratch_dir("missing");
    let err = format!("{:#}", Tokenizer::from_dir(&d).err().expect("an error"));
    assert!(err.contains("tokenizer.json"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn malformed_files_are_errors_naming_them() {
    let src = fixtures_root().join("llama2_style");
    for (file, content) in [
        ("tokenizer.json", "{ not json"),
        (
            "tokenizer.json",
            r#"{"version": "1.0", "model": {"type": "BPE", "vocab": 3}}"#,
        ),
        ("tokenizer.json", "[1, 2, 3]"),
        ("tokenizer_config.json", "{ not json"),
        ("tokenizer_config.json", r#"{"bos_token": 7}"#),
        (
            "tokenizer_config.json",
            r#"{"added_tokens_decoder": {"x": {"content": "a"}}}"#,
        ),
    ] {
        let d = scratch_dir("malformed");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), d.join(f)).unwrap();
        }
        std::fs::write(d.join(file), content).unwrap();
        let err = format!("{:#}", Tokenizer::from_dir(&d).err().expect("an error"));
        assert!(err.contains(file), "{file} = {content:?}: {err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// transformers 5.24's ids for the reference strings where they differ from tokenizer.json run
/// as written: its LlamaTokenizer adds no "▁" to text that already starts with a space.
const LLAMA2_TRANSFORMERS5: &[(&str, &[u32])] = &[
    (" Hello world", &[1, 15043, 3186]),
    ("   three leading spaces", &[1, 259, 2211, 8236, 8162]),
    (
        "    def foo(x):\n        return x ** 2  # comment",
        &[
            1, 1678, 822, 7953, 29898, 29916, 1125, 13, 4706, 736, 921, 3579, 29871, 29906, 29871,
            396, 3440,
        ],
    ),
    (
        "special-looking: <s> </s> <unk> <|endoftext|> <|im_start|> <|begin_of_text|> <bos>",
        &[
            1, 4266, 29899, 23261, 29901, 29871, 1, 29871, 2, 29871, 0, 529, 29989, 355, 974, 726,
            29989, 29958, 529, 29989, 326, 29918, 2962, 29989, 29958, 529, 29989, 463, 29918, 974,
            29918, 726, 29989, 29958, 529, 27737, 29958,
        ],
    ),
];

#[test]
fn real_llama2_reference() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/real/tokenizers/llama2"
    ));
    if !dir.join("reference.json").is_file() {
        eprintln!("skip: {} not present", dir.display());
        return;
    }
    let reference = read_json(&dir.join("reference.json"));
    let raw = Tokenizer::from_dir_with(dir, Compat::TokenizerJson).unwrap();
    let hf = Tokenizer::from_dir(dir).unwrap();
    assert_eq!(hf.class(), TokenizerClass::Llama);
    assert_eq!(
        raw.vocab_size() as u64,
        reference["vocab_size_with_added"].as_u64().unwrap()
    );
    assert_eq!(hf.vocab_size(), raw.vocab_size());
    assert_eq!((hf.bos_id(), hf.eos_ids()), (Some(1), vec![2]));
    let mut bad = Vec::new();
    let cases = reference["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids = ids_of(&case["ids"]);
        let ids_ns = ids_of(&case["ids_no_special"]);
        let mut check = |what: &str, ok: bool| {
            if !ok {
                bad.push(format!("{text:?}: {what}"));
            }
        };
        // tokenizer.json as written: the ids reference.json holds.
        check("raw ids", raw.encode(text, true).unwrap() == ids);
        check(
            "raw ids_no_special",
            raw.encode(text, false).unwrap() == ids_ns,
        );
        // transformers 5: the same except the listed strings.
        let want = LLAMA2_TRANSFORMERS5
            .iter()
            .find(|(t, _)| *t == text)
            .map(|(_, ids)| ids.to_vec())
            .unwrap_or_else(|| ids.clone());
        check("transformers ids", hf.encode(text, true).unwrap() == want);
        check(
            "transformers ids_no_special",
            hf.encode(text, false).unwrap() == want[1..],
        );
        for (tok, mode) in [(&raw, "raw"), (&hf, "transformers")] {
            for (ids, skip, key) in [
                (&ids, false, "decode"),
                (&ids, true, "decode_skip_special"),
                (&ids_ns, false, "decode_no_special"),
            ] {
                let want = case[key].as_str().unwrap();
                let got = tok.decode(ids, skip).unwrap();
                check(&format!("{mode} {key} {got:?}"), got == want);
                check(
                    &format!("{mode} streamed {key}"),
                    stream(tok, ids, skip) == want,
                );
            }
        }
    }
    eprintln!("llama2 reference: {} strings checked", cases.len());
    report(bad);
}
