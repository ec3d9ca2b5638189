//! The quantized tensor-core GEMM (kernels/quant_mma.cu: dequantization in the main loop,
//! mma.sync m16n8k16, split-K with an ordered reduction) runs on the host
//! (tests/quant_mma_emulation, with the shim of tests/moe_emulation: CTAs as std::threads, the
//! mma with PTX's per-lane fragments) against a float64 reference on the bf16-rounded
//! dequantized weights: int8 / int4 / fp8 x T in {2, 8, 9, 33, 64} x K tail-free and with a
//! 32-column last tile x split-K or not x groups 128 / 64 / 32 / 96 / per row x zero points
//! or not x GPTQ act-order g_idx (and a group that is not a multiple of 16: the _any kernel).
//! Index math, fragments, barriers and rounding points, not speed. A planted fragment error
//! (the shim's FLINT_SHIM_MMA_SWAP_B: every lane's b0 and b1 trade places) must fail. Needs a
//! C++20 compiler and the CUDA headers scripts/setup.sh installs; skips without them unless
//! FLINT_REQUIRE_KERNELS=1.

mod common;

#[test]
fn quant_mma_passes_its_host_emulation() {
    let Some(exe) = common::build_emulation(
        "quant_mma_passes_its_host_emulation",
        "tests/quant_mma_emulation/main.cpp",
        "quant_mma_emulation",
        &[],
    ) else {
        return;
    };
    let stdout = common::run_emulation_to_pass(&exe);
    for what in [
        "qmma int8 uniform T  2",
        "qmma int4 uniform T 64",
        "qmma fp8  uniform T 33",
        "qmma int4 any     T  9",
        "qmma fp8  any     T 64",
    ] {
        assert!(
            stdout.contains(&format!("PASS  {what}")),
            "{what}:\n{stdout}"
        );
    }
    for what in [
        "splits 4", "splits 1", "g_idx 1", "zeros 1", "add 1", "K 480",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("PASS") && l.contains(what)),
            "no passing case with {what}:\n{stdout}"
        );
    }
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(passed >= 78, "{passed} cases passed:\n{stdout}");
}

/// The emulation can fail: with every lane's B fragment registers swapped, no case passes.
#[test]
fn quant_mma_planted_fragment_swap_fails() {
    let Some(exe) = common::build_emulation(
        "quant_mma_planted_fragment_swap_fails",
        "tests/quant_mma_emulation/main.cpp",
        "quant_mma_emulation_swap_b",
        &["FLINT_SHIM_MMA_SWAP_B"],
    ) else {
        return;
    };
    let run = std::process::Command::new(&exe)
        .output()
        .expect("runs the emulation");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success(), "the planted swap passed:\n{stdout}");
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert_eq!(passed, 0, "cases passed with swapped fragments:\n{stdout}");
}
