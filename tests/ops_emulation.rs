//! The small fused ops (kernels/rope_kv_write.cu with qk-norm, partial rotary and padded
//! tokens; rms_norm.cu with the residual; act_mul.cu; softcap.cu; embed.cu and gather.cu with
//! out-of-range ids and rows) run on the host
//! (tests/ops_emulation: CTAs as std::threads) with the launch shapes of
//! src/backend/cuda/kernels.rs, against float64. Index math and barriers, not speed. Needs a
//! C++20 compiler and the CUDA headers scripts/setup.sh installs; skips without them unless
//! FLINT_REQUIRE_KERNELS=1.

mod common;

#[test]
fn fused_ops_pass_their_host_emulation() {
    let Some(exe) = common::build_emulation(
        "fused_ops_pass_their_host_emulation",
        "tests/ops_emulation/main.cpp",
        "ops_emulation",
        &[],
    ) else {
        return;
    };
    let stdout = common::run_emulation_to_pass(&exe);
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(passed >= 13, "{stdout}");
}
