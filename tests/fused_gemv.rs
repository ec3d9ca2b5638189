//! The GEMVs' fused inputs and outputs (kernels/gemv/fuse.cuh in kernels/gemv.cu and
//! kernels/quant_gemv.cu: the pre-norm and the activation computed while x is staged, the
//! residual add in the epilogue) run on the host (tests/fused_gemv_emulation, with the shim of
//! tests/moe_emulation: CTAs as std::threads) against a float64 reference rounded where the
//! unfused GPU ops store: every mode x bf16 / int8 / int4 / fp8 x 1, 2 and 8 tokens x one and
//! several staged chunks, add-to-out, the scalar paths and the grid-stride loop; the dense
//! GEMV's act·mul output bit for bit against its unfused path (the GEMV, then act_mul.cu); and the
//! prefill's dequantize (quant_dequant_*) bit for bit on both its paths. Index math,
//! barriers and rounding points, not speed. Needs a C++20 compiler and the CUDA headers
//! scripts/setup.sh installs; skips without them unless FLINT_REQUIRE_KERNELS=1.

mod common;

#[test]
fn fused_gemvs_pass_their_host_emulation() {
    let Some(exe) = common::build_emulation(
        "fused_gemvs_pass_their_host_emulation",
        "tests/fused_gemv_emulation/main.cpp",
        "fused_gemv_emulation",
        &[],
    ) else {
        return;
    };
    let stdout = common::run_emulation_to_pass(&exe);
    for what in [
        "bf16 norm",
        "int8 act",
        "int4 norm",
        "fp8  act",
        "bf16 plain",
    ] {
        assert!(
            stdout.contains(&format!("PASS  fused {what}")),
            "{what}:\n{stdout}"
        );
    }
    for what in [
        "int8 N 19 K  1024 group     8",
        "int4 N 19 K  1024 group    32 g_idx 1",
        "fp8  N 19 K  1000",
    ] {
        assert!(
            stdout.contains(&format!("PASS  dequant {what}")),
            "dequant {what}:\n{stdout}"
        );
    }
    for what in [
        "plain/silu      T 1 I 37",
        "plain/gelu_tanh T 8 I 37",
        "norm /gelu_tanh T 1 I 40 K  1030 bias 1 grid 2",
        "plain/silu      T 1 I 24 K  1024 bias 0 grid 1",
    ] {
        assert!(
            stdout.contains(&format!("PASS  act-out bf16 {what}")),
            "act-out {what}:\n{stdout}"
        );
    }
    // The output norm, each case with the CTAs in both orders (a different one is last).
    for what in [
        "plain K  1024 bias 1 grid 128 T 1 N 2048 offset 0 reversed 1",
        "plain K   512 bias 1 grid 65 T 1 N 1030 offset 1 reversed 0",
        "plain K  1030 bias 0 grid 2 T 2 N 21",
        "plain K  4160 bias 1 grid 64 T 8 N 1024",
        "act   K  1024",
        "plain K  1024 bias 0 grid 5 T 1 N 1024 offset 0 reversed 1",
    ] {
        assert!(
            stdout.contains(&format!("PASS  norm-out bf16 {what}")),
            "norm-out {what}:\n{stdout}"
        );
    }
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(passed >= 126 + 14 + 12, "{passed} cases passed:\n{stdout}");
}
