//! The tensor-core prefill kernel (kernels/attention_prefill_mma.cu) emulated lane by lane on
//! the CPU against a float64 reference: tests/emulate_attention_mma.py. Skips, saying so, where
//! python3 with numpy is missing.

use std::process::Command;

#[test]
fn mma_prefill_fragments_emulate_to_the_reference() {
    let has_numpy = Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_numpy {
        eprintln!("python3 with numpy not found: skipping the mma prefill emulation");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/emulate_attention_mma.py"
    );
    let out = Command::new("python3").arg(script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
