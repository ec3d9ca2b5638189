//! The quantized tensor-core GEMM (kernels/quant_mma.cu: dequantization in the main loop,
//! mma.sync m16n8k16, split-K with an ordered reduction) runs on the host
//! (tests/quant_mma_emulation, with the shim of tests/moe_emulation: CTAs as std::threads, the
//! mma with PTX's per-lane fragments) against a float64 reference on the bf16-rounded
//! dequantized weights: int8 / int4 / fp8 x T in {2, 8, 9, 33, 64} x K tail-free and with a
//! 32-column last tile x split-K or not x groups 128 / 64 / 32 / 96 / per row x zero points
//! or not x GPTQ act-order g_idx (and a group that is not a multiple of 16: the _any kernel).
//! Also the prefill GEMM on sm_90a (kernels/quant_wgmma.cu, the emulation's `wgmma` cases) and
//! the tensor-core GEMV for 1..8 tokens (kernels/quant_gemv_tc.cu, the `tc` cases).
//! Index math, fragments, barriers and rounding points, not speed. A planted fragment error
//! (the shim's FLINT_SHIM_MMA_SWAP_B: every lane's b0 and b1 trade places) must fail. Needs a
//! C++20 compiler and the CUDA headers scripts/setup.sh installs; skips without them unless
//! FLINT_REQUIRE_KERNELS=1.

mod common;

/// Builds the emulation (`name`), runs it with `args` to its closing "all passed", and requires
/// a passing case starting with each of `starts`, one containing each of `contains`, and at
/// least `min_passed` passing cases in all.
fn emulation_passes(
    test: &str,
    name: &str,
    args: &[&str],
    starts: &[&str],
    contains: &[&str],
    min_passed: usize,
) {
    let Some(exe) = common::build_emulation(test, "tests/quant_mma_emulation/main.cpp", name, &[])
    else {
        return;
    };
    let stdout = common::run_emulation_with_args_to_pass(&exe, args);
    for what in starts {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("PASS  {what}"))),
            "{what}:\n{stdout}"
        );
    }
    for what in contains {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("PASS") && l.contains(what)),
            "no passing case with {what}:\n{stdout}"
        );
    }
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(passed >= min_passed, "{passed} cases passed:\n{stdout}");
}

#[test]
fn quant_mma_passes_its_host_emulation() {
    emulation_passes(
        "quant_mma_passes_its_host_emulation",
        "quant_mma_emulation",
        &[],
        &[
            "qmma int8 uniform T  2",
            "qmma int4 uniform T 64",
            "qmma fp8  uniform T 33",
            "qmma int4 any     T  9",
            "qmma fp8  any     T 64",
        ],
        &[
            "splits 4", "splits 1", "g_idx 1", "zeros 1", "add 1", "K 480",
        ],
        78,
    );
}

/// Builds the emulation with a planted error (`define`) and requires that it fails every case
/// it runs (`args`: the case selection).
fn planted_error_fails_every_case(test: &str, name: &str, define: &str, args: &[&str]) {
    let Some(exe) =
        common::build_emulation(test, "tests/quant_mma_emulation/main.cpp", name, &[define])
    else {
        return;
    };
    let run = std::process::Command::new(&exe)
        .args(args)
        .output()
        .expect("runs the emulation");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success(), "{define} passed:\n{stdout}");
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    let failed = stdout.lines().filter(|l| l.starts_with("FAIL ")).count();
    assert_eq!(passed, 0, "cases passed with {define}:\n{stdout}");
    assert!(failed > 0, "no case ran with {define}:\n{stdout}");
}

/// The emulation can fail: with every lane's B fragment registers swapped, no case passes.
#[test]
fn quant_mma_planted_fragment_swap_fails() {
    planted_error_fails_every_case(
        "quant_mma_planted_fragment_swap_fails",
        "quant_mma_emulation_swap_b",
        "FLINT_SHIM_MMA_SWAP_B",
        &[],
    );
}

/// The prefill GEMM on sm_90a (kernels/quant_wgmma.cu: the codes dequantized in registers
/// into a register-A wgmma, x staged with the 128-byte swizzle and named by a descriptor, two
/// register sets for A, split-K) against the same float64 reference: every format x token
/// tiles of 128 and 256 x K with a 32-column tail and an odd step count x one group per step or
/// several x split-K, bias, add-to-out.
#[test]
fn quant_wgmma_passes_its_host_emulation() {
    emulation_passes(
        "quant_wgmma_passes_its_host_emulation",
        "quant_wgmma_emulation",
        &["wgmma"],
        &[
            "qmma int8 wgmma t128 T 130",
            "qmma int4 wgmma t256 T 300",
            "qmma fp8  wgmma t256 T 130",
            "qmma int4 wgmma t128 T  9",
        ],
        &[
            "splits 4",
            "splits 1",
            "zeros 1",
            "add 1",
            "K 416",
            "group  96",
        ],
        90,
    );
}

/// The wgmma emulation can fail: with A's registers a1 and a2 traded (rows g + 8 and columns
/// 2t + 8 confused), or x read without the swizzle its descriptor names, no case passes.
#[test]
fn quant_wgmma_planted_errors_fail() {
    planted_error_fails_every_case(
        "quant_wgmma_planted_errors_fail",
        "quant_mma_emulation_rs_swap_a",
        "FLINT_SHIM_WGMMA_RS_SWAP_A",
        &["wgmma"],
    );
    planted_error_fails_every_case(
        "quant_wgmma_planted_errors_fail",
        "quant_mma_emulation_no_swizzle",
        "FLINT_SHIM_WGMMA_NO_SWIZZLE",
        &["wgmma"],
    );
}

/// The tensor-core GEMV for 1..8 tokens (kernels/quant_gemv_tc.cu: codes decoded from the
/// 16-byte loads straight into mma.sync's A registers, x staged permuted to match, 8 warps
/// splitting K, a shared-memory reduction) against a float64 reference on the exact weights:
/// every format x T 1, 2, 5, 8 x K of fewer blocks than warps up to several per warp x scale
/// groups of one block, several, one per row x zero points, bias, add-to-out x a partial last
/// tile x the grid-stride loop; x staged in several chunks where T x K exceeds its shared
/// memory (Llama-3-8B's down projection at 8 tokens, a partial last chunk and round).
#[test]
fn quant_gemv_tc_passes_its_host_emulation() {
    emulation_passes(
        "quant_gemv_tc_passes_its_host_emulation",
        "quant_gemv_tc_emulation",
        &["tc"],
        &[
            "qtc  int8 T 1",
            "qtc  int4 T 1",
            "qtc  fp8  T 1",
            "qtc  int4 T 8",
        ],
        &[
            "grid-stride 1",
            "zeros 1",
            "add 1",
            "K 3072",
            "N 37",
            "int4 T 8 N 37 K 14336",
            "int8 T 8 N 37 K 2112",
            "int4 T 8 N 80 K 4096 group  128 grid-stride 1",
            "act-out 1",
            "act-out 3",
            "bf16 T 1 N 37 K 14336",
            "bf16 T 8 N 37 K 4096",
            "bf16 T 2 N 74 K 512",
            "warps 4",
            "warps 8",
            "norm-out int4 K 1024 group  128 grid-stride 0 warps 8 T 1 N 2048",
            "norm-out int4 K 512 group  128 grid-stride 0 warps 4 T 1 N 2072",
            "norm-out int8 K 1024 group   64 grid-stride 1 warps 4 T 8 N 37 offset 1",
            "norm-out fp8  K 512",
            "norm-out bf16 K 1024 group 1024 grid-stride 1 warps 8 T 1 N 2048",
            "reversed 1",
        ],
        70 + 10,
    );
}

/// The tensor-core GEMV's emulation can fail: with every lane's B registers swapped, no case
/// passes.
#[test]
fn quant_gemv_tc_planted_fragment_swap_fails() {
    planted_error_fails_every_case(
        "quant_gemv_tc_planted_fragment_swap_fails",
        "quant_gemv_tc_emulation_swap_b",
        "FLINT_SHIM_MMA_SWAP_B",
        &["tc"],
    );
}
