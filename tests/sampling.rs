//! kernels/sampling.cu run on the host (tests/sampling_emulation: the CTA's 1,024 threads as
//! std::threads) against the definition it implements, src/sampling.rs `sample_row`: every
//! token must be equal. Rows are bf16-representable logits with planted equal maxima and
//! equal values at the top-k / top-p cuts; specs cover greedy, temperature alone, top-k
//! (through ties, and vocab - 1), top-p, both, and odd vocabularies. A build with a planted
//! error (FLINT_EMULATE_BREAK_SAMPLE: equal values not cut by index) must disagree, so the
//! comparison can fail. Needs a C++20 compiler and the CUDA headers scripts/setup.sh
//! installs; skips without them unless FLINT_REQUIRE_KERNELS=1.

mod common;

use common::build_emulation;
use flint::sampling::{sample_row, Rng, SampleRow};
use std::path::Path;
use std::process::Command;

fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

struct Case {
    vocab: usize,
    logits: Vec<f32>,
    specs: Vec<(usize, SampleRow)>,
}

/// Rows of vocab bf16 logits; row r has its maximum copied to r + 1 more places and a run of
/// equal values a little below it (what top-k and top-p cut through).
fn case(vocab: usize, rows: usize, seed: u64, specs: &[(f32, usize, f32)]) -> Case {
    let mut rng = Rng::new(seed);
    let mut logits = Vec::with_capacity(rows * vocab);
    for r in 0..rows {
        let mut row: Vec<f32> = (0..vocab)
            .map(|_| bf16((rng.next_f32() - 0.5) * 8.0))
            .collect();
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        for k in 1..=r + 1 {
            row[(k * 131 + 7) % vocab] = max;
        }
        for k in 0..6 {
            row[(k * 977 + 3 * r + 11) % vocab] = bf16(max - 0.5);
        }
        logits.extend(row);
    }
    let specs = (0..rows)
        .flat_map(|r| specs.iter().map(move |s| (r, *s)))
        .map(|(r, (temperature, top_k, top_p))| {
            let top_k = if top_k == usize::MAX {
                vocab - 1
            } else {
                top_k
            };
            let key = rng.next_u64();
            (
                r,
                SampleRow {
                    temperature,
                    top_k,
                    top_p,
                    key,
                },
            )
        })
        .collect();
    Case {
        vocab,
        logits,
        specs,
    }
}

fn write_case(c: &Case, path: &Path) {
    let mut b = Vec::new();
    let rows = c.logits.len() / c.vocab;
    for v in [rows, c.vocab, c.specs.len()] {
        b.extend_from_slice(&(v as u32).to_le_bytes());
    }
    for x in &c.logits {
        b.extend_from_slice(&x.to_le_bytes());
    }
    for (r, s) in &c.specs {
        b.extend_from_slice(&s.key.to_le_bytes());
        b.extend_from_slice(&(*r as i32).to_le_bytes());
        b.extend_from_slice(&s.temperature.to_le_bytes());
        b.extend_from_slice(&(s.top_k as i32).to_le_bytes());
        b.extend_from_slice(&s.top_p.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// (kernel tokens, reference tokens) for every spec of the case.
fn run(exe: &Path, c: &Case, name: &str) -> (Vec<u32>, Vec<u32>) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.bin"));
    write_case(c, &path);
    let out = Command::new(exe)
        .arg(&path)
        .output()
        .expect("runs the emulation");
    assert!(
        out.status.success(),
        "{name}: the emulation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("a token per line"))
        .collect();
    let want = c
        .specs
        .iter()
        .map(|(r, s)| sample_row(&c.logits[r * c.vocab..(r + 1) * c.vocab], s))
        .collect();
    (got, want)
}

const SPECS: &[(f32, usize, f32)] = &[
    (0.0, 0, 1.0),
    (0.8, 0, 1.0),
    (1.0, 3, 1.0),
    (0.7, 0, 0.6),
    (1.3, 9, 0.8),
    (1.0, usize::MAX, 0.97),
];

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("vocab 3001", case(3001, 2, 1, SPECS)),
        ("vocab 100", case(100, 2, 2, SPECS)),
        // One more key per spec on the larger row: top-p through the planted run.
        (
            "vocab 1500 top-p",
            case(1500, 1, 3, &[(1.0, 0, 0.3), (0.5, 5, 0.5), (2.0, 0, 0.9)]),
        ),
    ]
}

#[test]
fn sampling_kernel_matches_the_definition_on_the_host() {
    let Some(exe) = build_emulation(
        "sampling_kernel_matches_the_definition_on_the_host",
        "tests/sampling_emulation/main.cpp",
        "sampling_emulation",
        &[],
    ) else {
        return;
    };
    for (name, c) in cases() {
        let (got, want) = run(&exe, &c, "sampling_case");
        assert_eq!(got, want, "{name}: kernel vs sample_row, spec by spec");
    }
}

#[test]
fn sampling_emulation_catches_a_broken_tie_cut() {
    let Some(exe) = build_emulation(
        "sampling_emulation_catches_a_broken_tie_cut",
        "tests/sampling_emulation/main.cpp",
        "sampling_emulation_broken",
        &["FLINT_EMULATE_BREAK_SAMPLE"],
    ) else {
        return;
    };
    let mut differ = 0;
    for (_, c) in cases() {
        let (got, want) = run(&exe, &c, "sampling_case_broken");
        differ += got.iter().zip(&want).filter(|(a, b)| a != b).count();
    }
    assert!(
        differ > 0,
        "the broken kernel agreed with the definition everywhere"
    );
}
