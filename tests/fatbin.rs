//! The kernel build's output: the embedded fatbin holds every kernel for every target, the
//! Rust list of kernel names matches the sources, and the bindgen'd parameter structs have
//! the layout kernels/params.h pins.
//!
//! Without nvcc at build time the fatbin checks skip, unless FLINT_REQUIRE_KERNELS=1 (CI
//! sets it after installing nvcc), where a missing fatbin fails.

use flint::backend::cuda::{self, params, KERNEL_NAMES};
use std::collections::BTreeSet;
use std::mem::{align_of, size_of};
use std::path::Path;

/// `fatBinaryHeader.magic` (little-endian), the first 4 bytes of every fatbin.
const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const FATBIN_HEADER_LEN: usize = 16;
const IMAGE_PTX: u16 = 1;
const IMAGE_ELF: u16 = 2;

fn kernels_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels"))
}

/// The fatbin, or None (after a skip message, or failing under FLINT_REQUIRE_KERNELS=1).
fn fatbin_or_skip(test: &str) -> Option<&'static [u8]> {
    let fb = cuda::fatbin();
    if fb.is_none() {
        let required = std::env::var("FLINT_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
        assert!(!required, "FLINT_REQUIRE_KERNELS=1 but {}", cuda::NOT_BUILT);
        eprintln!("{test}: skipped, {}", cuda::NOT_BUILT);
    }
    fb
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// One image of a fatbin: ELF (SASS) or PTX for one arch.
struct Image<'a> {
    kind: u16,
    sm: u32,
    payload: &'a [u8],
}

/// Splits a fatbin into its images. Layout (cuda's fatbinary_section.h and the entry header
/// fatbinary writes): a 16-byte header {magic u32, version u16, header size u16, body size
/// u64}, then entries {kind u16, version u16, header size u32, padded payload size u64, ...,
/// sm u32 at byte 28}, each followed by its payload.
fn images(fb: &[u8]) -> Vec<Image<'_>> {
    assert!(
        fb.len() >= FATBIN_HEADER_LEN,
        "fatbin of {} bytes",
        fb.len()
    );
    assert_eq!(u32_at(fb, 0), FATBIN_MAGIC, "fatbin magic");
    let header_len = u16_at(fb, 6) as usize;
    let body_len = u64_at(fb, 8) as usize;
    assert_eq!(
        header_len + body_len,
        fb.len(),
        "fatbin header size + body size"
    );
    let mut out = Vec::new();
    let mut at = header_len;
    while at < fb.len() {
        let (kind, entry_len, payload_len) = (
            u16_at(fb, at),
            u32_at(fb, at + 4) as usize,
            u64_at(fb, at + 8) as usize,
        );
        let sm = u32_at(fb, at + 28);
        let start = at + entry_len;
        assert!(
            start + payload_len <= fb.len(),
            "fatbin entry at {at} runs past the end"
        );
        out.push(Image {
            kind,
            sm,
            payload: &fb[start..start + payload_len],
        });
        at = start + payload_len;
    }
    out
}

/// `name` as a whole symbol: NUL-terminated in an ELF string table, `name(` in PTX.
fn holds_symbol(payload: &[u8], name: &str) -> bool {
    let n = name.as_bytes();
    payload.windows(n.len() + 2).any(|w| {
        let before = w[0];
        let after = w[n.len() + 1];
        &w[1..=n.len()] == n
            && !(before.is_ascii_alphanumeric() || before == b'_')
            && (after == 0 || after == b'(')
    })
}

#[test]
fn fatbin_holds_every_kernel_for_every_target() {
    let Some(fb) = fatbin_or_skip("fatbin_holds_every_kernel_for_every_target") else {
        return;
    };
    let images = images(fb);
    assert!(!images.is_empty(), "fatbin has no images");
    for img in &images {
        let what = match img.kind {
            IMAGE_ELF => format!("SASS sm_{}", img.sm),
            IMAGE_PTX => format!("PTX compute_{}", img.sm),
            k => panic!("fatbin image of unknown kind {k}"),
        };
        if img.kind == IMAGE_ELF {
            assert_eq!(
                &img.payload[..4],
                b"\x7fELF",
                "{what}: not an ELF (compressed fatbin?)"
            );
        }
        let missing: Vec<_> = KERNEL_NAMES
            .iter()
            .filter(|n| !holds_symbol(img.payload, n))
            .collect();
        assert!(
            missing.is_empty(),
            "{what} lacks {missing:?} (or the fatbin is compressed)"
        );
        eprintln!(
            "{what}: {} bytes, all {} kernels",
            img.payload.len(),
            KERNEL_NAMES.len()
        );
    }
}

#[test]
fn default_build_targets_ampere_to_hopper_plus_ptx() {
    let Some(fb) = fatbin_or_skip("default_build_targets_ampere_to_hopper_plus_ptx") else {
        return;
    };
    if std::env::var_os("FLINT_CUDA_ARCHS").is_some() {
        eprintln!("FLINT_CUDA_ARCHS is set: the default target list is not checked");
        return;
    }
    let got: BTreeSet<(u16, u32)> = images(fb).iter().map(|i| (i.kind, i.sm)).collect();
    let want = BTreeSet::from([
        (IMAGE_ELF, 80),
        (IMAGE_ELF, 86),
        (IMAGE_ELF, 89),
        (IMAGE_ELF, 90),
        (IMAGE_PTX, 80),
    ]);
    assert_eq!(got, want, "(kind 2 = SASS, 1 = PTX; sm 90 is sm_90a)");
}

/// Every `extern "C" __global__` function declared in kernels/*.cu and *.cuh.
fn kernels_in_sources() -> BTreeSet<String> {
    const MARK: &str = "extern \"C\" __global__";
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(kernels_dir()).expect("kernels/") {
        let path = entry.unwrap().path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("cu" | "cuh")
        ) {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        for (at, _) in src.match_indices(MARK) {
            // Only declarations: a line that starts with the mark (not a comment quoting it).
            let line_start = src[..at].rfind('\n').map_or(0, |i| i + 1);
            if !src[line_start..at].trim().is_empty() {
                continue;
            }
            // extern "C" __global__ [__launch_bounds__(...)] void NAME(
            let rest = &src[at + MARK.len()..];
            let after_void = rest.split_once("void").map(|(_, r)| r).unwrap_or_else(|| {
                panic!("{}: no `void` after {MARK}", path.display());
            });
            let name: String = after_void
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                !name.is_empty(),
                "{}: unnamed kernel after {MARK}",
                path.display()
            );
            assert!(names.insert(name.clone()), "kernel {name} defined twice");
        }
    }
    names
}

#[test]
fn kernel_names_match_the_sources() {
    let listed: BTreeSet<String> = KERNEL_NAMES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        listed.len(),
        KERNEL_NAMES.len(),
        "KERNEL_NAMES has a duplicate"
    );
    let found = kernels_in_sources();
    let unlisted: Vec<_> = found.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&found).collect();
    assert!(
        unlisted.is_empty(),
        "kernels not in KERNEL_NAMES (src/backend/cuda/mod.rs): {unlisted:?}"
    );
    assert!(
        stale.is_empty(),
        "KERNEL_NAMES entries with no kernel in kernels/*.cu: {stale:?}"
    );
    for name in KERNEL_NAMES {
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && ["bf16", "f16", "f32", "fp8", "i8", "i4", "u8"]
                .iter()
                .any(|d| name.split('_').any(|p| p == *d));
        assert!(ok, "kernel {name} is not named <op>_<dtype>[_<variant>]");
    }
}

#[test]
fn param_structs_have_the_layout_params_h_pins() {
    // Sizes the FLINT_ASSERT_SIZE lines in params.h also pin for nvcc and bindgen.
    let rust = [
        (
            "EmbedParams",
            size_of::<params::EmbedParams>(),
            align_of::<params::EmbedParams>(),
        ),
        (
            "RmsNormParams",
            size_of::<params::RmsNormParams>(),
            align_of::<params::RmsNormParams>(),
        ),
        (
            "ActMulParams",
            size_of::<params::ActMulParams>(),
            align_of::<params::ActMulParams>(),
        ),
        (
            "RopeKvWriteParams",
            size_of::<params::RopeKvWriteParams>(),
            align_of::<params::RopeKvWriteParams>(),
        ),
        (
            "GatherParams",
            size_of::<params::GatherParams>(),
            align_of::<params::GatherParams>(),
        ),
        (
            "SoftcapParams",
            size_of::<params::SoftcapParams>(),
            align_of::<params::SoftcapParams>(),
        ),
        (
            "MoeRouteParams",
            size_of::<params::MoeRouteParams>(),
            align_of::<params::MoeRouteParams>(),
        ),
        (
            "MoeDispatchParams",
            size_of::<params::MoeDispatchParams>(),
            align_of::<params::MoeDispatchParams>(),
        ),
        (
            "MoeGemmParams",
            size_of::<params::MoeGemmParams>(),
            align_of::<params::MoeGemmParams>(),
        ),
        (
            "MoeQuantWeight",
            size_of::<params::MoeQuantWeight>(),
            align_of::<params::MoeQuantWeight>(),
        ),
        (
            "MoeQuantGemmParams",
            size_of::<params::MoeQuantGemmParams>(),
            align_of::<params::MoeQuantGemmParams>(),
        ),
        (
            "MoeCombineParams",
            size_of::<params::MoeCombineParams>(),
            align_of::<params::MoeCombineParams>(),
        ),
        (
            "SigmoidGateAddParams",
            size_of::<params::SigmoidGateAddParams>(),
            align_of::<params::SigmoidGateAddParams>(),
        ),
    ];
    // From the field lists: 8-byte device pointers first, then 4-byte scalars, padded to 8.
    let from_fields = |ptrs: usize, scalars: usize| (ptrs * 8 + scalars * 4).next_multiple_of(8);
    let expect = [
        ("EmbedParams", from_fields(3, 4)),
        ("RmsNormParams", from_fields(4, 4)),
        ("ActMulParams", from_fields(2, 2)),
        ("RopeKvWriteParams", from_fields(9, 9)),
        ("GatherParams", from_fields(3, 4)),
        // n is an int64: two 4-byte slots.
        ("SoftcapParams", from_fields(1, 4)),
        ("MoeRouteParams", from_fields(3, 4)),
        ("MoeDispatchParams", from_fields(5, 4)),
        ("MoeGemmParams", from_fields(8, 6)),
        ("MoeQuantWeight", from_fields(4, 6)),
        // MoeGemmParams then MoeQuantWeight.
        ("MoeQuantGemmParams", from_fields(8, 6) + from_fields(4, 6)),
        ("MoeCombineParams", from_fields(3, 4)),
        ("SigmoidGateAddParams", from_fields(3, 2)),
    ];
    let header = std::fs::read_to_string(kernels_dir().join("params.h")).unwrap();
    let pinned: Vec<(String, usize)> = header
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("FLINT_ASSERT_SIZE(")?
                .strip_suffix(");")
        })
        .map(|args| {
            let (name, n) = args.split_once(',').unwrap();
            (name.trim().to_string(), n.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(
        pinned.len(),
        rust.len(),
        "every struct in params.h needs a row here (and its size line)"
    );
    for ((name, size, align), (ename, esize)) in rust.iter().zip(expect) {
        assert_eq!(*name, ename);
        assert_eq!(*size, esize, "size of {name} from its fields");
        assert_eq!(*align, 8, "alignment of {name}");
        let pin = pinned
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} has no FLINT_ASSERT_SIZE"));
        assert_eq!(pin.1, *size, "FLINT_ASSERT_SIZE({name}) in params.h");
    }
    // The device pointers are plain addresses (cudarc's CUdeviceptr) and default to null.
    let p = params::RopeKvWriteParams::default();
    let _: u64 = p.q_norm;
    assert_eq!(p.q_norm, 0);
    assert_eq!(
        std::mem::offset_of!(params::RopeKvWriteParams, num_tokens),
        9 * 8
    );
    assert_eq!(params::FLINT_ROPE_MAX_HEAD_DIM, 512);
}
