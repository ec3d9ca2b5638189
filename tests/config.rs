//! config.json → ModelSpec: both config styles agree, presets have their published sizes,
//! and bad configs give errors naming the file and field.

mod common;

use flint::config::{ModelSpec, RopeScaling};
use flint::weights::synthetic::{preset_spec, PRESETS};

fn parse(json: &str) -> anyhow::Result<ModelSpec> {
    ModelSpec::from_json_str(json, "test/config.json")
}

#[test]
fn published_style_configs_parse_to_the_same_spec() {
    let dir = common::fixtures_dir();
    for name in common::fixture_names() {
        let new_style = std::fs::read_to_string(dir.join(&name).join("config.json")).unwrap();
        let old_style =
            std::fs::read_to_string(dir.join("legacy_configs").join(format!("{name}.json")))
                .unwrap();
        let a =
            ModelSpec::from_json_str(&new_style, "new").unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let b = ModelSpec::from_json_str(&old_style, "old")
            .unwrap_or_else(|e| panic!("{name} legacy: {e:#}"));
        assert_eq!(
            a, b,
            "{name}: rope_parameters and rope_theta/rope_scaling styles disagree"
        );
    }
}

#[test]
fn fixture_quirks_are_in_the_spec() {
    let dir = common::fixtures_dir();
    let spec = |n: &str| ModelSpec::from_dir(&dir.join(n)).unwrap();
    let g3 = spec("gemma3");
    assert_eq!(g3.ropes.len(), 2);
    assert_eq!(g3.ropes[0].scaling, RopeScaling::Linear { factor: 8.0 });
    assert!(g3.layers[0].sliding_window.is_some() && g3.layers[0].rope == 1);
    assert!(g3.layers[5].sliding_window.is_none() && g3.layers[5].rope == 0);
    assert!(g3.qk_norm && g3.sandwich_norms && g3.tie_embeddings);
    let l3 = spec("llama3");
    assert!(matches!(l3.ropes[0].scaling, RopeScaling::Llama3 { .. }) && l3.tie_embeddings);
    assert_eq!(
        l3.eos_token_ids.len(),
        2,
        "generation_config.json's EOS list"
    );
    let g2 = spec("gemma2");
    assert!(g2.attn_softcap.is_some() && g2.final_softcap.is_some());
    assert_eq!(
        g2.layers
            .iter()
            .filter(|l| l.sliding_window.is_some())
            .count(),
        g2.num_layers / 2
    );
    assert!(spec("mistral")
        .layers
        .iter()
        .all(|l| l.sliding_window == Some(4)));
    assert!(spec("qwen2").qkv_bias && spec("qwen3").qk_norm);
    assert_eq!(spec("gemma").norm_weight_offset, 1.0);
}

#[test]
fn presets_have_their_published_parameter_counts() {
    // Published totals (billions of parameters).
    let want = [
        ("llama-2-7b", 6.738),
        ("llama-3-8b", 8.030),
        ("llama-3-70b", 70.554),
        ("mistral-7b", 7.242),
        ("mixtral-8x7b", 46.703),
        ("gemma-2-9b", 9.242),
        ("qwen3-30b-a3b", 30.532),
        ("grok-1", 314.0),
    ];
    for (name, billions) in want {
        let got = preset_spec(name).unwrap().param_count() as f64 / 1e9;
        assert!(
            (got / billions - 1.0).abs() < 0.01,
            "{name}: {got:.3}B parameters, published {billions}B"
        );
    }
    assert!(PRESETS.iter().all(|(n, _)| preset_spec(n).is_ok()));
    let e = preset_spec("llama-9").unwrap_err().to_string();
    assert!(e.contains("llama-9") && e.contains("tiny"), "{e}");
}

#[test]
fn bad_configs_name_the_problem() {
    let base = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2}"#;
    assert!(parse(base).is_ok());
    let e = parse(&base.replace("llama", "mamba"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test/config.json") && e.contains("unsupported model_type `mamba`"),
        "{e}"
    );
    let e = parse(&base.replace(r#""vocab_size":10,"#, ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing required field `vocab_size`"), "{e}");
    let e = parse(&base.replace(r#""hidden_size":8"#, r#""hidden_size":"8""#))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`hidden_size` must be a non-negative integer"),
        "{e}"
    );
    let e = parse(&base.replace(
        r#""num_attention_heads":2"#,
        r#""num_attention_heads":2,"num_key_value_heads":3"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_key_value_heads"), "{e}");
    let e = parse(&base.replace("}", r#","rope_scaling":{"rope_type":"yarn","factor":4}}"#))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported rope_type `yarn`"), "{e}");
    let e = parse(&base.replace("}", r#","rope_scaling":{"rope_type":"llama3","factor":8}}"#))
        .unwrap_err()
        .to_string();
    assert!(e.contains("low_freq_factor"), "{e}");
    let e = parse("[1,2]").unwrap_err().to_string();
    assert!(e.contains("expected a JSON object"), "{e}");
    let e = parse(r#"{"model_type":"mistral""#).unwrap_err().to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    let e = parse(&base.replace(
        "}",
        r#","layer_types":["full_attention","full_attention"]}"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("layer_types"), "{e}");
}

/// `mlp_only_layers` (Qwen-MoE: the layers with a dense MLP) holds layer indices; any other
/// entry, an index past the last layer, or a value that is not a list, is an error naming the
/// file, the key and the value (such an entry was skipped, leaving its layer sparse).
#[test]
fn mlp_only_layers_that_are_not_layer_indices_are_errors() {
    let moe = |layers: &str| {
        format!(
            r#"{{"model_type":"qwen2_moe","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"num_experts":4,"num_experts_per_tok":2,
            "moe_intermediate_size":8,"mlp_only_layers":{layers}}}"#
        )
    };
    let sparse = |layers: &str| parse(&moe(layers)).unwrap().moe.unwrap().sparse_layers;
    assert_eq!(sparse("[1]"), [true, false]);
    assert_eq!(sparse("[]"), [true, true]);
    assert_eq!(sparse("null"), [true, true]);
    for (layers, bad) in [
        ("[0,-1]", "holds -1,"),
        ("[1.5]", "holds 1.5,"),
        (r#"["1"]"#, r#"holds "1","#),
        ("1", "must be a list of layer indices, got 1"),
        (
            "[0,2]",
            "holds 2, but the model has 2 layers (indices 0..1)",
        ),
    ] {
        let e = parse(&moe(layers)).unwrap_err().to_string();
        assert!(
            e.contains("test/config.json") && e.contains("`mlp_only_layers`") && e.contains(bad),
            "{layers}: {e}"
        );
    }
}

#[test]
fn llama3_rope_scaling_keeps_high_and_scales_low_frequencies() {
    let s = preset_spec("llama-3-8b").unwrap();
    let mut r = s.ropes[0];
    let plain = r.inv_freq();
    r.scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
    let scaled = r.inv_freq();
    assert_eq!(scaled[0], plain[0], "the highest frequency is unchanged");
    let last = plain.len() - 1;
    assert!(
        (scaled[last] - plain[last] / 8.0).abs() <= 1e-12,
        "the lowest frequency is divided by the factor"
    );
}

/// Sizes that are absurd, inconsistent or out of range are errors naming the field: before,
/// some aborted the process (a layer table of 10^15 entries), overflowed a multiplication
/// (the parameter count) or gave infinite or NaN rotary frequencies.
#[test]
fn absurd_sizes_and_scalings_are_errors_naming_the_field() {
    let base = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2}"#;
    let with = |extra: &str| base.replacen('{', &format!("{{{extra},"), 1);
    let err = |json: String| parse(&json).unwrap_err().to_string();
    assert!(parse(&with(r#""partial_rotary_factor":0.5"#)).is_ok());

    // 10^15 layers: the per-layer table alone was a petabyte (abort).
    let e = err(base.replace(
        r#""num_hidden_layers":1"#,
        r#""num_hidden_layers":1000000000000000"#,
    ));
    assert!(
        e.contains("`num_hidden_layers` is 1000000000000000") && e.contains("test/config.json"),
        "{e}"
    );
    let e = err(base.replace(r#""num_hidden_layers":1"#, r#""num_hidden_layers":100000"#));
    assert!(e.contains("more than flint supports (65536)"), "{e}");
    // A size past 2^31: the parameter count overflowed u64.
    let e = err(base.replace(r#""hidden_size":8"#, r#""hidden_size":4294967296"#));
    assert!(
        e.contains("`hidden_size` is 4294967296, larger than"),
        "{e}"
    );
    // Each within range, their product not.
    let e = err(with(r#""head_dim":2000000000,"num_key_value_heads":2"#));
    assert!(
        e.contains("head_dim 2000000000") && e.contains("q|k|v rows"),
        "{e}"
    );
    let e = err(
        with(r#""vocab_size":2000000000,"hidden_size":2000000000,"head_dim":2"#)
            .replacen(r#""vocab_size":10,"#, "", 1)
            .replacen(r#""hidden_size":8,"#, "", 1),
    );
    assert!(e.contains("parameters"), "{e}");
    let e = err(base.replace(
        r#""intermediate_size":16"#,
        r#""intermediate_size":2000000000"#,
    ));
    assert!(e.contains("intermediate size 2000000000"), "{e}");
    let e = err(with(r#""max_position_embeddings":0"#));
    assert!(
        e.contains("`max_position_embeddings` must be positive"),
        "{e}"
    );
    // Out of f32 range: was an infinite epsilon.
    let e = err(with(r#""rms_norm_eps":1e300"#));
    assert!(
        e.contains("`rms_norm_eps` is 1e+300") && e.contains("32-bit float"),
        "{e}"
    );
    // rotary_dim past head_dim, or none at all.
    let e = err(with(r#""partial_rotary_factor":2.0"#));
    assert!(
        e.contains("`partial_rotary_factor` must be in (0, 1], got 2"),
        "{e}"
    );
    let e = err(with(r#""partial_rotary_factor":0.1"#));
    assert!(e.contains("rotates no dimension pair"), "{e}");
    // Scaling numbers that divide frequencies: infinite or NaN before.
    let e = err(with(r#""rope_scaling":{"rope_type":"linear","factor":0}"#));
    assert!(e.contains("`factor` must be positive, got 0"), "{e}");
    let e = err(with(
        r#""rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":4,
            "high_freq_factor":4,"original_max_position_embeddings":8192}"#,
    ));
    assert!(e.contains("`high_freq_factor` (4) must be larger"), "{e}");
    let e = err(with(r#""rope_theta":-1"#));
    assert!(e.contains("rope_theta must be positive"), "{e}");
    let e = err(with(
        r#""rope_parameters":{"rope_type":"default","rope_theta":"1e4"}"#,
    ));
    assert!(
        e.contains("`rope_theta`") && e.contains("must be a number"),
        "{e}"
    );
    // transformers-5 rope_parameters and the published rope_theta agree.
    let a = parse(&with(
        r#""rope_parameters":{"rope_type":"default","rope_theta":500000}"#,
    ));
    let b = parse(&with(r#""rope_theta":500000"#));
    assert_eq!(a.unwrap(), b.unwrap());
    // An EOS id past u32 was cast to another token.
    let e = err(with(r#""eos_token_id":[2,4294967298]"#));
    assert!(e.contains("`eos_token_id` holds 4294967298"), "{e}");
    // MoE: more experts per token than experts.
    let moe = base.replace("llama", "mixtral").replacen(
        '{',
        r#"{"num_local_experts":4,"num_experts_per_tok":5,"#,
        1,
    );
    let e = err(moe);
    assert!(e.contains("`num_experts_per_tok` (5)"), "{e}");
}
