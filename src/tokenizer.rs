//! Text <-> token ids for a Hugging Face model folder, giving the ids that transformers 5's
//! `AutoTokenizer.from_pretrained(dir)` gives, on top of the `tokenizers` crate.
//!
//! How transformers 5.x (read in 5.24's source, checked by experiment) builds the tokenizer:
//!
//! * **BOS/EOS insertion comes from `tokenizer.json`'s `post_processor`, never from
//!   `tokenizer_config.json`.** When a `tokenizer.json` exists, `_from_pretrained` drops
//!   `add_bos_token` / `add_eos_token` from the config before the class sees them, so the
//!   post-processor of the file is kept as it is; a `null` post-processor is replaced by a template
//!   with no special tokens (`$A:0`), i.e. nothing is added. (transformers 4's `LlamaTokenizerFast`
//!   rebuilt the post-processor from those flags; 5 does not.)
//! * **The class matters.** `AutoTokenizer` picks a class from `tokenizer_config.json`'s
//!   `tokenizer_class` and `config.json`'s `model_type` (see [`select_class`]). The generic
//!   `TokenizersBackend` (`PreTrainedTokenizerFast`) runs `tokenizer.json` as written. `LlamaTokenizer`,
//!   `GemmaTokenizer` and `Qwen2Tokenizer` keep only the vocabulary, merges and post-processor of the
//!   file and install their own normalizer, pre-tokenizer, decoder and BPE options. For sentencepiece
//!   Llama 2 files that changes the ids of text with leading spaces: `LlamaTokenizer` uses a
//!   `Metaspace` pre-tokenizer that does not add "▁" to text that already starts with a space, so
//!   `" Hello"` gives `[▁Hello]` where sentencepiece and `tokenizer.json` give `[▁, ▁Hello]`.
//!   [`Compat::TokenizerJson`] runs the file as written instead (the `tokenizers` library; on
//!   Llama 2's reference strings sentencepiece agrees with it).
//! * Named special tokens (`bos_token`, `eos_token`, ..., strings or `{"content": ..}` objects,
//!   class defaults when absent) and `added_tokens_decoder` are added to the vocabulary when missing.
//! * `decode` is `tokenizers`' decode; `clean_up_tokenization_spaces` is applied only for non-BPE
//!   models (transformers 5 skips it for BPE unless
//!   `clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output` is set).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tokenizers::models::ModelWrapper;
use tokenizers::AddedToken;

/// Whose behaviour [`Tokenizer::from_dir_with`] reproduces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compat {
    /// transformers 5's `AutoTokenizer` (the default).
    #[default]
    Transformers,
    /// `tokenizer.json` run as written by the `tokenizers` library (sentencepiece agrees with it on
    /// Llama 2's reference strings); `tokenizer_config.json` only names BOS/EOS.
    TokenizerJson,
}

/// The transformers tokenizer class being imitated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerClass {
    /// `TokenizersBackend` / `PreTrainedTokenizerFast`: `tokenizer.json` as written. Classes this
    /// module does not imitate are treated as this too.
    Generic,
    Llama,
    Gemma,
    Qwen2,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    class: TokenizerClass,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    cleanup: bool,
    /// `tokenizer.json`, named in errors.
    path: PathBuf,
}

const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

// transformers 5.24 `TOKENIZER_MAPPING_NAMES` / `MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS`, restricted to
// what changes the outcome here: model types mapped to the generic backend (Mistral's
// `MistralCommonBackend` included: without tekken.json it falls back to the generic backend too) and
// to the classes imitated. Model types mapped to other classes behave like unmapped ones here.
#[rustfmt::skip]
const GENERIC_MODEL_TYPES: &[&str] = &[
    "EvollaModel", "arctic", "aria", "beam", "bigbird_pegasus", "camembertv2-base", "canary", "chatlm",
    "cohere_asr", "ernie4_5", "ernie4_5_moe", "flex_olmo", "fuyu", "glm", "glm4", "glm4_moe",
    "glm4_moe_lite", "glm4v", "glm4v_moe", "glm_image", "glmasr", "got_ocr2", "gpt_bigcode",
    "gradium_phonon_tts", "granite", "granitemoe", "granitemoehybrid", "granitemoeshared",
    "h2ovl_chat", "hyperclovax", "hyperclovax_vlm", "internlm2", "internlm3", "iquestcoder", "jamba",
    "kimi_k25", "kimi_linear", "kosmos-2", "llava", "llava_next", "mimo_v2_flash", "minicpm3",
    "minicpm_ocr", "minicpmv", "minicpmv4_6", "minicpmv4_7", "minimax_m2", "ministral", "ministral3",
    "mistral", "mistral3", "mistral_large4", "mixtral", "modernbert", "modernbert-decoder", "molmo",
    "molmo2", "nemo_speechlm", "nemotron", "nvfp4", "nystromformer", "olmo2", "olmo3", "olmo_hybrid",
    "omniasr", "opencua", "openvla", "paddleocr_vl", "pegasus_x", "persimmon", "phi3", "phi3_v",
    "phimoe", "pix2struct", "pixtral", "pocket_tts", "smolvlm", "stablelm", "step3_vl", "umt5",
    "vipllava", "voxtral", "voxtral_realtime", "xlm-roberta-xl",
];
#[rustfmt::skip]
const GEMMA_MODEL_TYPES: &[&str] = &[
    "diffusion_gemma", "gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text",
    "recurrent_gemma", "shieldgemma2", "t5gemma", "zaya",
];
#[rustfmt::skip]
const QWEN2_MODEL_TYPES: &[&str] = &[
    "audioflamingo3", "colqwen2", "cosmos3_omni", "dots3_note", "fun_asr_nano", "hunyuan_vl",
    "internvl", "moss_transcribe_diarize", "ovis2", "qianfan_ocr", "qwen2", "qwen2_5_omni",
    "qwen2_5_vl", "qwen2_audio", "qwen2_moe", "qwen2_vl", "qwen3", "qwen3_asr", "qwen3_moe",
    "qwen3_next", "qwen3_omni_moe", "qwen3_vl", "qwen3_vl_moe",
];
#[rustfmt::skip]
const LLAMA_MODEL_TYPES: &[&str] = &["idefics", "idefics2"];
#[rustfmt::skip]
const INCORRECT_HUB_CLASS_MODEL_TYPES: &[&str] = &[
    "arctic", "camembertv2-base", "chatlm", "cohere_asr", "ernie4_5", "ernie4_5_moe", "fuyu",
    "h2ovl_chat", "hyperclovax", "hyperclovax_vision_v2", "hyperclovax_vlm", "internlm2",
    "internlm3", "iquestcoder", "jamba", "llava", "llava_next", "minicpm3", "minicpmv",
    "minimax_m2", "modernbert", "modernbert-decoder", "molmo", "molmo2", "nemotron", "nvfp4",
    "opencua", "openvla", "paddleocr_vl", "phi3", "phi3_v", "phimoe", "qwen2", "qwen3_5",
    "qwen3_5_moe", "qwen3_5_moe_text", "qwen4_exp", "siglip2", "smolvlm", "step3_vl", "vipllava",
];

/// A class named in a config, as `tokenizer_class_from_name` resolves it (a trailing "Fast" dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    Generic,
    Imitated(TokenizerClass),
    /// A specific class this module does not imitate (GPT2Tokenizer, T5Tokenizer, ...).
    Other,
}

fn class_from_name(name: &str) -> Named {
    match name.strip_suffix("Fast").unwrap_or(name) {
        "TokenizersBackend" | "PreTrainedTokenizer" | "PythonBackend" | "BloomTokenizer" => {
            Named::Generic
        }
        "LlamaTokenizer" => Named::Imitated(TokenizerClass::Llama),
        "GemmaTokenizer" => Named::Imitated(TokenizerClass::Gemma),
        "Qwen2Tokenizer" => Named::Imitated(TokenizerClass::Qwen2),
        _ => Named::Other,
    }
}

fn class_for_model_type(model_type: &str) -> Option<Named> {
    if GENERIC_MODEL_TYPES.contains(&model_type) {
        Some(Named::Generic)
    } else if GEMMA_MODEL_TYPES.contains(&model_type) {
        Some(Named::Imitated(TokenizerClass::Gemma))
    } else if QWEN2_MODEL_TYPES.contains(&model_type) {
        Some(Named::Imitated(TokenizerClass::Qwen2))
    } else if LLAMA_MODEL_TYPES.contains(&model_type) {
        Some(Named::Imitated(TokenizerClass::Llama))
    } else {
        None
    }
}

fn resolve(named: Named) -> TokenizerClass {
    match named {
        Named::Imitated(c) => c,
        Named::Generic | Named::Other => TokenizerClass::Generic,
    }
}

/// `AutoTokenizer.from_pretrained`'s choice of class (transformers 5.24, no remote code):
/// `hub_class` is tokenizer_config.json's `tokenizer_class`, `config_class` config.json's
/// `tokenizer_class`, `model_type` config.json's, `byte_level` whether tokenizer.json mentions
/// `"ByteLevel"`.
pub fn select_class(
    hub_class: Option<&str>,
    config_class: Option<&str>,
    model_type: Option<&str>,
    byte_level: bool,
) -> TokenizerClass {
    let declared = hub_class.or(config_class);
    let mapped = model_type.and_then(class_for_model_type);
    let incorrect = model_type.is_some_and(|m| INCORRECT_HUB_CLASS_MODEL_TYPES.contains(&m));
    // Byte-level files declared as LlamaTokenizer load with the generic backend.
    if let Some(d) = declared {
        if d.strip_suffix("Fast").unwrap_or(d) == "LlamaTokenizer" && !incorrect && byte_level {
            return TokenizerClass::Generic;
        }
    }
    // A declared class that disagrees with the model type's registered class: a registered
    // specific class wins only for model types whose hub files are known to be wrong.
    if let (Some(d), Some(m)) = (declared, mapped) {
        let d_named = class_from_name(d);
        if d_named != m {
            if m != Named::Generic {
                let chosen = if incorrect { m } else { d_named };
                return resolve(chosen);
            }
            return TokenizerClass::Generic;
        }
    }
    if let Some(h) = hub_class {
        return resolve(class_from_name(h));
    }
    if let Some(c) = config_class {
        return resolve(class_from_name(c));
    }
    mapped.map(resolve).unwrap_or(TokenizerClass::Generic)
}

/// Reads and parses a JSON file; `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    if !v.is_object() {
        bail!("{}: expected a JSON object", path.display());
    }
    Ok(Some(v))
}

/// A special-token entry of tokenizer_config.json: a string, an AddedToken object, or null.
fn token_content(v: &Value, key: &str, file: &Path) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(o) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => bail!("{}: `{key}` has no string \"content\"", file.display()),
        },
        _ => bail!(
            "{}: `{key}` must be a string, an object with \"content\", or null",
            file.display()
        ),
    }
}

/// An AddedToken from a tokenizer_config.json / tokenizer.json object, with Python's defaults.
fn added_token_from(v: &Value, key: &str, file: &Path) -> Result<AddedToken> {
    let Some(content) = token_content(v, key, file)? else {
        bail!("{}: `{key}` is null", file.display());
    };
    let flag = |name: &str| v.get(name).and_then(Value::as_bool);
    let special = flag("special").unwrap_or(false);
    Ok(AddedToken::from(content, special)
        .single_word(flag("single_word").unwrap_or(false))
        .lstrip(flag("lstrip").unwrap_or(false))
        .rstrip(flag("rstrip").unwrap_or(false))
        .normalized(flag("normalized").unwrap_or(!special)))
}

fn catch<T>(what: &str, path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => bail!("{}: tokenizers panicked during {what}", path.display()),
    }
}

/// The pieces of transformers' special-token set-up: named tokens in order, then extra ones.
struct SpecialTokens {
    /// (key, token) for bos/eos/unk/sep/pad/cls/mask and model-specific `*_token` keys.
    named: Vec<(String, AddedToken)>,
    extra: Vec<AddedToken>,
}

impl SpecialTokens {
    fn get(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.content.as_str())
    }
}

fn class_defaults(class: TokenizerClass) -> &'static [(&'static str, &'static str)] {
    match class {
        TokenizerClass::Generic => &[],
        TokenizerClass::Llama => &[
            ("unk_token", "<unk>"),
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
        ],
        TokenizerClass::Gemma => &[
            ("unk_token", "<unk>"),
            ("bos_token", "<bos>"),
            ("eos_token", "<eos>"),
            ("pad_token", "<pad>"),
            ("mask_token", "<mask>"),
        ],
        TokenizerClass::Qwen2 => &[
            ("unk_token", "<|endoftext|>"),
            ("eos_token", "<|endoftext|>"),
            ("pad_token", "<|endoftext|>"),
        ],
    }
}

fn special_tokens(
    cfg: &Map<String, Value>,
    class: TokenizerClass,
    file: &Path,
) -> Result<SpecialTokens> {
    let mut named = Vec::new();
    for key in SPECIAL_TOKEN_KEYS {
        let tok = match cfg.get(key) {
            Some(v) => match token_content(v, key, file)? {
                Some(_) => Some(added_token_from(v, key, file)?),
                None => None,
            },
            None => class_defaults(class)
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, s)| AddedToken::from(*s, true)),
        };
        if let Some(mut t) = tok {
            t.special = true;
            named.push((key.to_string(), t));
        }
    }
    let mut extra = Vec::new();
    for (key, v) in cfg {
        if key.ends_with("_token") && !SPECIAL_TOKEN_KEYS.contains(&key.as_str()) && v.is_string() {
            named.push((key.clone(), added_token_from(v, key, file)?.special(true)));
        }
    }
    let list = cfg
        .get("extra_special_tokens")
        .filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
        .or_else(|| cfg.get("additional_special_tokens"));
    match list {
        Some(Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let key = format!("additional_special_tokens[{i}]");
                extra.push(added_token_from(v, &key, file)?.special(true));
            }
        }
        Some(Value::Object(o)) => {
            for (k, v) in o {
                if !named.iter().any(|(n, _)| n == k) {
                    named.push((k.clone(), added_token_from(v, k, file)?.special(true)));
                }
            }
        }
        _ => {}
    }
    Ok(SpecialTokens { named, extra })
}

/// tokenizer_config.json's `added_tokens_decoder`, sorted by id.
fn config_added_tokens(cfg: &Map<String, Value>, file: &Path) -> Result<Option<Vec<AddedToken>>> {
    let Some(dec) = cfg.get("added_tokens_decoder") else {
        return Ok(None);
    };
    let Some(obj) = dec.as_object() else {
        bail!(
            "{}: `added_tokens_decoder` must be an object",
            file.display()
        );
    };
    let mut items = Vec::with_capacity(obj.len());
    for (id, v) in obj {
        let id: u64 = id.parse().map_err(|_| {
            anyhow!(
                "{}: `added_tokens_decoder` key {id:?} is not an id",
                file.display()
            )
        })?;
        items.push((id, added_token_from(v, "added_tokens_decoder", file)?));
    }
    items.sort_by_key(|(id, _)| *id);
    Ok(Some(items.into_iter().map(|(_, t)| t).collect()))
}

/// Replaces the pipeline of `tj` (a parsed tokenizer.json) with the one `class`'s `__init__`
/// installs in transformers 5.24. Returns false (and leaves `tj` alone) for non-BPE models.
fn rebuild_pipeline(
    tj: &mut Value,
    class: TokenizerClass,
    cfg: &Map<String, Value>,
    specials: &SpecialTokens,
) -> bool {
    if tj.pointer("/model/type").and_then(Value::as_str) != Some("BPE") {
        return false;
    }
    let cfg_bool = |k: &str| cfg.get(k).and_then(Value::as_bool);
    let replace_space = json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "});
    let (normalizer, pre_tokenizer, decoder, bpe) = match class {
        TokenizerClass::Generic => return false,
        TokenizerClass::Llama => {
            let add_prefix_space = cfg_bool("add_prefix_space").unwrap_or(true);
            let legacy = cfg_bool("legacy").unwrap_or(false);
            let scheme = match (add_prefix_space, legacy) {
                (false, _) => "never",
                (true, true) => "always",
                (true, false) => "first",
            };
            let mut decoders = vec![
                replace_space,
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_prefix_space {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                Value::Null,
                json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false}),
                json!({"type": "Sequence", "decoders": decoders}),
                json!({"unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                       "fuse_unk": true, "byte_fallback": true}),
            )
        }
        TokenizerClass::Gemma => {
            // Python passes `unk_token=str(unk_token)`, so a null unk becomes "None".
            let unk = specials.get("unk_token").unwrap_or("None").to_string();
            (
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}),
                json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
                json!({"type": "Sequence", "decoders": [replace_space, {"type": "ByteFallback"}, {"type": "Fuse"}]}),
                json!({"unk_token": unk, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                       "fuse_unk": true, "byte_fallback": true}),
            )
        }
        TokenizerClass::Qwen2 => {
            let add_prefix_space = cfg_bool("add_prefix_space").unwrap_or(false);
            (
                json!({"type": "NFC"}),
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": QWEN2_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": false}
                ]}),
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                json!({"unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                       "fuse_unk": false, "byte_fallback": false}),
            )
        }
    };
    tj["normalizer"] = normalizer;
    tj["pre_tokenizer"] = pre_tokenizer;
    tj["decoder"] = decoder;
    if let (Some(model), Value::Object(opts)) = (tj["model"].as_object_mut(), bpe) {
        model.extend(opts);
        model.insert("dropout".into(), Value::Null);
        model.insert("ignore_merges".into(), Value::Bool(false));
    }
    true
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, and `dir/tokenizer_config.json` if present (bos_token /
    /// eos_token / ..., which may be strings or {"content": ..} objects; add_bos_token /
    /// add_eos_token are read and ignored, as transformers 5 ignores them when tokenizer.json exists).
    ///
    /// Reproduces transformers 5's `AutoTokenizer.from_pretrained(dir)`; `dir/config.json`'s
    /// `model_type` takes part in choosing the class, as it does there.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_dir_with(dir, Compat::Transformers)
    }

    pub fn from_dir_with(dir: &Path, compat: Compat) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "{}: not found (a Hugging Face tokenizer.json is needed)",
                    path.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let cfg_path = dir.join("tokenizer_config.json");
        let mut cfg = match read_json(&cfg_path)? {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let model_cfg_path = dir.join("config.json");
        let model_cfg = match compat {
            Compat::Transformers => read_json(&model_cfg_path)?,
            Compat::TokenizerJson => None,
        };
        // Legacy repos: special_tokens_map.json fills in when there is no added_tokens_decoder.
        if compat == Compat::Transformers && !cfg.contains_key("added_tokens_decoder") {
            let stm_path = dir.join("special_tokens_map.json");
            if let Some(Value::Object(stm)) = read_json(&stm_path)? {
                for (k, v) in stm {
                    if k == "additional_special_tokens" || k == "extra_special_tokens" {
                        if let (Some(Value::Array(old)), Value::Array(new)) =
                            (cfg.get_mut("additional_special_tokens"), &v)
                        {
                            for t in new {
                                if !old.contains(t) {
                                    old.push(t.clone());
                                }
                            }
                            continue;
                        }
                    }
                    cfg.insert(k, v);
                }
            }
        }

        let str_field = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let class = match compat {
            Compat::TokenizerJson => TokenizerClass::Generic,
            Compat::Transformers => select_class(
                cfg.get("tokenizer_class").and_then(Value::as_str),
                str_field(model_cfg.as_ref(), "tokenizer_class").as_deref(),
                str_field(model_cfg.as_ref(), "model_type").as_deref(),
                text.contains("\"ByteLevel\""),
            ),
        };
        let specials = special_tokens(&cfg, class, &cfg_path)?;

        let mut class_used = class;
        let mut inner = catch("loading", &path, || {
            if class == TokenizerClass::Generic {
                return parse_tokenizer_json(&text, &path);
            }
            let mut tj: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", path.display()))?;
            if !rebuild_pipeline(&mut tj, class, &cfg, &specials) {
                class_used = TokenizerClass::Generic;
                return parse_tokenizer_json(&text, &path);
            }
            // The class starts from an empty added vocabulary; the added tokens come back below.
            let file_added = tj
                .get_mut("added_tokens")
                .map(Value::take)
                .unwrap_or(Value::Array(vec![]));
            tj["added_tokens"] = Value::Array(vec![]);
            let mut tok: tokenizers::Tokenizer = serde_json::from_value(tj)
                .map_err(|e| anyhow!("{}: not a tokenizers file: {e}", path.display()))?;
            if config_added_tokens(&cfg, &cfg_path)?.is_none() {
                let mut toks = Vec::new();
                for v in file_added.as_array().into_iter().flatten() {
                    toks.push(added_token_from(v, "added_tokens", &path)?);
                }
                tok.add_tokens(&toks);
            }
            Ok(tok)
        })?;
        let class = class_used;

        // transformers runs what the call asks for: no truncation, no padding.
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        inner.with_padding(None);

        if compat == Compat::Transformers {
            catch("adding special tokens", &path, || {
                if let Some(toks) = config_added_tokens(&cfg, &cfg_path)? {
                    inner.add_tokens(&toks);
                }
                let mut missing: Vec<AddedToken> = Vec::new();
                for t in specials
                    .named
                    .iter()
                    .map(|(_, t)| t)
                    .chain(specials.extra.iter())
                {
                    let present = inner
                        .get_added_vocabulary()
                        .get_vocab()
                        .contains_key(&t.content)
                        || missing.iter().any(|m| m.content == t.content);
                    if !present {
                        missing.push(t.clone());
                    }
                }
                inner.add_tokens(&missing);
                if class == TokenizerClass::Qwen2 {
                    let all: Vec<AddedToken> = specials
                        .named
                        .iter()
                        .map(|(_, t)| t)
                        .chain(specials.extra.iter())
                        .map(|t| AddedToken::from(t.content.clone(), true))
                        .collect();
                    inner.add_tokens(&all);
                }
                Ok(())
            })?;
            let split = cfg
                .get("split_special_tokens")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            inner.set_encode_special_tokens(split);
        }

        let is_bpe = matches!(inner.get_model(), ModelWrapper::BPE(_));
        let cfg_flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        let cleanup = compat == Compat::Transformers
            && cfg_flag("clean_up_tokenization_spaces")
            && (!is_bpe
                || cfg_flag(
                    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
                ));

        let bos_id = specials.get("bos_token").and_then(|t| inner.token_to_id(t));
        let eos_ids = specials
            .get("eos_token")
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        Ok(Tokenizer {
            inner,
            class,
            bos_id,
            eos_ids,
            cleanup,
            path,
        })
    }

    /// Ids exactly as transformers' `AutoTokenizer.from_pretrained(dir)(text)["input_ids"]` / `.encode(text)` gives by default when add_special_tokens is true.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        catch("encode", &self.path, || {
            let enc = self
                .inner
                .encode(text, add_special_tokens)
                .map_err(|e| anyhow!("{}: encoding failed: {e}", self.path.display()))?;
            Ok(enc.get_ids().to_vec())
        })
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.decode_raw(ids, skip_special_tokens)?;
        Ok(if self.cleanup {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// `tokenizers`' decode, without transformers' space clean-up.
    fn decode_raw(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        catch("decode", &self.path, || {
            self.inner
                .decode(ids, skip_special_tokens)
                .map_err(|e| anyhow!("{}: decoding failed: {e}", self.path.display()))
        })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// EOS ids known to the tokenizer files (tokenizer_config eos_token); the model's generation_config may add more — the lead merges those.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_ids.clone()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The transformers class whose behaviour is reproduced.
    pub fn class(&self) -> TokenizerClass {
        self.class
    }
}

fn parse_tokenizer_json(text: &str, path: &Path) -> Result<tokenizers::Tokenizer> {
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow!("{}: not a valid tokenizers file: {e}", path.display()))
}

/// transformers' `clean_up_tokenization`.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Streaming detokenizer: feed ids one at a time, get the new text that is complete (no partial UTF-8 / byte-fallback pieces, correct leading-space handling of sentencepiece "▁" tokens), as llama.cpp / vLLM do.
///
/// Decodes a short window of ids ending with the newest one and returns what it adds to the decode
/// of the window without it (vLLM's prefix/read offsets), holding text back while it ends in an
/// incomplete character (U+FFFD). The pieces concatenate to `decode(all ids)` for BPE tokenizers;
/// transformers' `clean_up_tokenization_spaces` (applied only to non-BPE models) is not applied.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    skip_special_tokens: bool,
    /// Ids from the window start on.
    ids: Vec<u32>,
    /// ids[..read] have been returned; ids[..read] decode to `prefix`.
    read: usize,
    prefix: String,
}

impl<'a> DecodeStream<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        DecodeStream {
            tok,
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
            prefix: String::new(),
        }
    }

    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tok.decode_raw(&self.ids, self.skip_special_tokens)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        self.emit(text)
    }

    /// Whatever is held back (an incomplete character at the end of the stream), decoded as is.
    pub fn flush(&mut self) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let text = self.tok.decode_raw(&self.ids, self.skip_special_tokens)?;
        self.emit(text)
    }

    fn emit(&mut self, text: String) -> Result<Option<String>> {
        if text.len() <= self.prefix.len() {
            return Ok(None);
        }
        let new = if text.starts_with(&self.prefix) {
            text[self.prefix.len()..].to_string()
        } else {
            match text.get(self.prefix.len()..) {
                Some(s) => s.to_string(),
                None => return Ok(None),
            }
        };
        // The window restarts at the ids just returned, so later steps decode only a few ids.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.tok.decode_raw(&self.ids, self.skip_special_tokens)?;
        Ok(Some(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_selection_follows_transformers() {
        use TokenizerClass::*;
        assert_eq!(
            select_class(Some("LlamaTokenizer"), None, None, false),
            Llama
        );
        assert_eq!(
            select_class(Some("LlamaTokenizerFast"), None, Some("llama"), false),
            Llama
        );
        assert_eq!(
            select_class(Some("LlamaTokenizerFast"), None, Some("llama"), true),
            Generic
        );
        assert_eq!(
            select_class(Some("LlamaTokenizer"), None, Some("mistral"), false),
            Generic
        );
        assert_eq!(
            select_class(Some("LlamaTokenizer"), None, Some("gemma"), false),
            Llama
        );
        assert_eq!(
            select_class(Some("LlamaTokenizer"), None, Some("qwen2"), false),
            Qwen2
        );
        assert_eq!(
            select_class(Some("PreTrainedTokenizerFast"), None, Some("llama"), true),
            Generic
        );
        assert_eq!(
            select_class(Some("Qwen2TokenizerFast"), None, Some("qwen3"), true),
            Qwen2
        );
        assert_eq!(
            select_class(Some("GemmaTokenizerFast"), None, Some("gemma3"), false),
            Gemma
        );
        assert_eq!(
            select_class(Some("GPT2Tokenizer"), None, None, true),
            Generic
        );
        assert_eq!(select_class(None, None, Some("llama"), false), Generic);
        assert_eq!(select_class(None, None, Some("gemma"), false), Gemma);
        assert_eq!(
            select_class(None, Some("LlamaTokenizer"), None, false),
            Llama
        );
        assert_eq!(select_class(None, None, None, false), Generic);
    }

    #[test]
    fn cleanup_matches_transformers() {
        assert_eq!(
            clean_up_tokenization("a , b . c ' d do n't I 'm"),
            "a, b. c'd don't I'm"
        );
    }
}
