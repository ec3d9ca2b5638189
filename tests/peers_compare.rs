//! scripts/compare.py (issue 7's table) on fixed inputs: flint's bench-ops output cut short by
//! a timeout (its MoE row paired with both of the peer's MoE rows), `flint bench -o csv` output cut short too (its JSON report must give the same
//! rows), and a peers.py report (tests/fixtures/peers/, written by
//! hand with round numbers so the expected ratios and roofline fractions are plain arithmetic).
//! Skips, saying so, where python3 is missing (the GPU bundle needs it there anyway).

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn compare(root: &Path, bench: &Path, md: &Path, js: &Path, extra_peer: &Path) {
    let fx = root.join("tests/fixtures/peers");
    let out = Command::new("python3")
        .arg(root.join("scripts/compare.py"))
        .arg("--flint-ops")
        .arg(fx.join("flint-ops.jsonl"))
        .arg("--flint-bench")
        .arg(bench)
        .arg("--peers")
        .arg(fx.join("peers.jsonl"))
        .arg(extra_peer)
        .arg("--md")
        .arg(md)
        .arg("--json")
        .arg(js)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python3() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn compare_merges_flint_and_peer_rows_into_ratios_and_roofline_fractions() {
    if !python3() {
        eprintln!("python3 not found: skipping the compare.py test");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fx = root.join("tests/fixtures/peers");
    let dir = std::env::temp_dir().join(format!("flint-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (md, js) = (dir.join("peers.md"), dir.join("peers.json"));
    compare(
        root,
        &fx.join("flint-bench.csv"),
        &md,
        &js,
        &dir.join("missing.jsonl"),
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    let close = |a: &Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-9 * b.max(1.0);
    // Ceilings from flint's own rows: 2 GiB in 1 ms; 2·8192³ FLOPs in 1.5 ms.
    assert!(close(
        &v["copy_bytes_per_s"],
        2.0 * (1u64 << 30) as f64 / 1e-3
    ));
    assert!(close(
        &v["gemm_flops_per_s"],
        2.0 * 8192f64.powi(3) / 1.5e-3
    ));
    // o projection at 1 token: peer 15 µs / flint 20 µs; floor = 2·(2·4096 + 4096²) bytes
    // over the copy rate.
    let o = row("proj_o_t1");
    assert!(close(&o["ratio_peer_over_flint"], 0.75));
    let floor = 2.0 * (2.0 * 4096.0 + 4096.0 * 4096.0) / (2.0 * (1u64 << 30) as f64 / 1e-3);
    assert!(close(&o["roofline_fraction"], floor / 20e-6), "{o}");
    assert_eq!(o["bound"], "memory");
    // Decode step from `flint bench` tg128 b1 (100 tok/s: 10 ms) against the peer's 8 ms; its
    // bytes are the weights a step reads (all of Llama-3-8B's 16 060 522 496 bytes but the
    // 128256 x 4096 embedding table) plus the KV cache at the mean context of 64.5 tokens.
    let d = row("e2e_decode_b1");
    assert!(close(&d["flint_s"], 0.01) && close(&d["ratio_peer_over_flint"], 0.8));
    let kv = 64.5 * (2 * 32 * 8 * 128 * 2) as f64;
    let bw = 2.0 * (1u64 << 30) as f64 / 1e-3;
    let weights = 16060522496.0 - 2.0 * 128256.0 * 4096.0;
    assert!(close(&d["roofline_fraction"], (weights + kv) / bw / 0.01));
    // The same step replayed from a CUDA graph (tg128+graphs, 125 tok/s: 8 ms) sits beside the
    // same peer row, with the same bytes.
    let g = row("e2e_decode_b1_graphs");
    assert!(
        close(&g["flint_s"], 0.008) && close(&g["ratio_peer_over_flint"], 1.0),
        "{g}"
    );
    assert!(close(&g["roofline_fraction"], (weights + kv) / bw / 0.008));
    // With programmatic dependent launch (tg128+pdl, 110 tok/s; tg128+graphs+pdl, 160 tok/s:
    // 6.25 ms), eager and from graphs: beside the same peer row, same bytes.
    let p = row("e2e_decode_b1_pdl");
    assert!(close(&p["flint_s"], 1.0 / 110.0) && close(&p["ratio_peer_over_flint"], 0.88));
    let gp = row("e2e_decode_b1_graphs_pdl");
    assert!(
        close(&gp["flint_s"], 0.00625) && close(&gp["ratio_peer_over_flint"], 1.28),
        "{gp}"
    );
    assert!(close(
        &gp["roofline_fraction"],
        (weights + kv) / bw / 0.00625
    ));
    // Without the fused GEMV inputs (tg128+graphs+unfused, 100 tok/s: 10 ms), beside the same
    // peer row.
    let u = row("e2e_decode_b1_graphs_unfused");
    assert!(
        close(&u["flint_s"], 0.01) && close(&u["ratio_peer_over_flint"], 0.8),
        "{u}"
    );
    // Prefill of 2048 tokens (pp2048 at 10240 tok/s: 200 ms) is FLOP-bound: 2 per matrix
    // weight per token (6 979 321 856 layer weights), lm_head for the last token only, and
    // the causal attention pairs of 32 layers.
    let p = row("e2e_ttft_p2048_b1");
    assert_eq!(p["bound"], "FLOPs");
    assert!(close(&p["ratio_peer_over_flint"], 1.25) && close(&p["flint_s"], 0.2));
    let flops = 2.0 * 6979321856.0 * 2048.0
        + 2.0 * 128256.0 * 4096.0
        + 32.0 * 4.0 * 32.0 * 128.0 * 2048.0 * 2049.0 / 2.0;
    let rate = 2.0 * 8192f64.powi(3) / 1.5e-3;
    assert!(close(&p["roofline_fraction"], flops / rate / 0.2), "{p}");
    // The tensor-core variant sits beside the same SDPA row: 50 µs / 100 µs.
    assert!(close(
        &row("prefill_attn_1024_mma")["ratio_peer_over_flint"],
        0.5
    ));
    assert!(close(
        &row("prefill_attn_1024")["ratio_peer_over_flint"],
        0.125
    ));
    // So does the forced-cuBLASLt projection, beside torch.matmul's proj_o_t1: 15 µs / 30 µs.
    assert!(close(
        &row("proj_o_t1_cublaslt")["ratio_peer_over_flint"],
        0.5
    ));
    // A flint error and a case flint does not have are rows too; depth rows are not e2e rows.
    assert!(row("decode_attn_b1_c1024")["flint_error"]
        .as_str()
        .unwrap()
        .contains("OUT_OF_MEMORY"));
    assert!(row("moe_loop_t8")["flint_s"].is_null());
    // flint's one MoE row (moe_t64: 2 ms) sits beside both of the peer's MoE rows (the loop
    // 4 ms, the grouped GEMM 1 ms) and is not listed again on its own. Its bytes (the 8
    // selected experts' 3·14336·4096 bf16 weights, the router, x and out) over the copy rate
    // are the floor; its FLOPs are far below the GEMM rate's.
    let ml = row("moe_loop_t64");
    assert!(close(&ml["flint_s"], 0.002) && close(&ml["ratio_peer_over_flint"], 2.0));
    assert_eq!(ml["flint_id"], "moe_t64");
    assert_eq!(ml["bound"], "memory");
    let moe_bytes = 8.0 * 352321536.0 + 2.0 * (8.0 * 4096.0 + 2.0 * 64.0 * 4096.0);
    assert!(
        close(&ml["roofline_fraction"], moe_bytes / bw / 0.002),
        "{ml}"
    );
    let mg = row("moe_grouped_t64");
    assert!(close(&mg["ratio_peer_over_flint"], 0.5) && mg["flint_id"] == "moe_t64");
    assert!(!rows.iter().any(|r| r["id"] == "moe_t64"));
    assert!(!rows.iter().any(|r| r["id"] == "e2e_build"));
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("| proj_o_t1 | 20 µs | torch.matmul | 15 µs | 0.75 | memory | 78% |"));
    assert!(table.contains("err: attention: CUDA_ERROR_OUT_OF_MEMORY"));
    assert!(
        table.contains("| moe_loop_t64 (flint moe_t64) | 2 ms | loop of torch.matmul | 4 ms | 2.00 | memory | 66% |"),
        "{table}"
    );
    // Both ceilings printed, flint's and torch's (2 GiB in 0.8 ms; 2·8192³ in 1.4 ms).
    assert!(
        table.contains("copy 2147 GB/s / 2684 GB/s")
            && table.contains("cuBLASLt 733 TFLOP/s / torch.matmul 785 TFLOP/s"),
        "{table}"
    );
    assert!(table.contains("missing.jsonl does not exist"), "{table}");
    // Report order: ceilings first, end to end last.
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.first(), Some(&"copy"));
    assert_eq!(ids.last(), Some(&"e2e_decode_b1_graphs_unfused"));
    // The JSON report of `flint bench` gives the same end-to-end rows as its CSV lines.
    let js2 = dir.join("peers2.json");
    compare(
        root,
        &fx.join("flint-bench.json"),
        &dir.join("peers2.md"),
        &js2,
        &fx.join("peers.jsonl"),
    );
    let v2: Value = serde_json::from_str(&std::fs::read_to_string(&js2).unwrap()).unwrap();
    for id in ["e2e_ttft_p2048_b1", "e2e_decode_b1"] {
        let r2 = v2["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap();
        assert!(
            close(&r2["flint_s"], row(id)["flint_s"].as_f64().unwrap()),
            "{id}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
