//! Build script: the kernel pipeline.
//!
//! 1. bindgen on `kernels/params.h` -> `$OUT_DIR/params.rs`, always (the Rust side of the
//!    structs kernels take; needs libclang, which `scripts/setup.sh` installs).
//! 2. nvcc on every `kernels/*.cu` -> one fatbin, `$OUT_DIR/flint.fatbin`, and
//!    `cfg(flint_kernels)`; without nvcc the crate still builds and says how to get it.
//!
//! The fatbin holds SASS for each target arch plus compute_80 PTX for newer cards, and loads
//! as one module. Each target is one whole-program compile of a generated translation unit
//! that #includes every .cu (hence file-local names live in `namespace flint::<file>`); the
//! targets compile in parallel, and `fatbinary` packs the images uncompressed, so kernel
//! names can be found in the bytes (tests/fatbin.rs).
//!
//! Why not `-rdc=true` per file + `nvcc -dlink`: it was tried. Device linking drops the PTX,
//! and relocatable code costs registers and code size (rope_kv_write on sm_80: 122 registers
//! and a 32-byte stack frame against 79 and none; cubins ~3x larger).
//!
//! Environment:
//!   NVCC, CUDA_HOME / CUDA_PATH, PATH   where nvcc is looked for, in that order, then the
//!                                       project-local `.toolchain/cuda` from scripts/setup.sh
//!   FLINT_CUDA_ARCHS    targets, e.g. `90a` or `80,90a,compute_80` (default below);
//!                       `NN` = SASS for sm_NN, `compute_NN` = PTX
//!   FLINT_PTXAS_VERBOSE=1   report registers, spills, shared memory per kernel as warnings
//!   FLINT_NO_CUDA=1     build without kernels even when nvcc is there

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// SASS for A100 (80), A10/3090 (86), L4/4090 (89), H100/H200 (90a); PTX for anything newer.
const DEFAULT_TARGETS: &str = "80,86,89,90a,compute_80";
/// Flags every device compile gets. SASS also gets `-lineinfo` (source lines for Nsight
/// Compute; no effect on the code, about 2.5x the cubin's bytes); the PTX fallback does not.
const NVCC_FLAGS: &[&str] = &[
    "-O3",
    "-std=c++17",
    "--expt-relaxed-constexpr",
    "-Xptxas=-warn-spills",
];
const ENV_VARS: &[&str] = &[
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "PATH",
    "FLINT_CUDA_ARCHS",
    "FLINT_PTXAS_VERBOSE",
    "FLINT_NO_CUDA",
    "LIBCLANG_PATH",
];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels = root.join("kernels");
    println!("cargo::rustc-check-cfg=cfg(flint_kernels)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={}", kernels.display());
    for v in ENV_VARS {
        println!("cargo::rerun-if-env-changed={v}");
    }

    bindgen_params(&kernels, &out);

    let Some(nvcc) = find_nvcc(&root) else {
        let why = if flag("FLINT_NO_CUDA") {
            "FLINT_NO_CUDA is set"
        } else {
            "nvcc was not found"
        };
        println!(
            "cargo::warning=CUDA kernels not built ({why}); the CUDA backend will be unavailable. \
             To build them: `bash scripts/setup.sh` (installs a pinned nvcc 13.0 into .toolchain/), \
             or set NVCC / CUDA_HOME."
        );
        return;
    };
    let targets =
        parse_targets(&env::var("FLINT_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_TARGETS.into()));
    let release = nvcc_release(&nvcc);
    if targets.iter().any(|t| matches!(t, Target::Ptx(_))) && release > Some((13, 0)) {
        let (major, minor) = release.unwrap();
        println!(
            "cargo::warning=nvcc {major}.{minor} at {}: its PTX needs a CUDA {major}.{minor} driver \
             to JIT (our H100/H200 machines run 13.0; SASS is unaffected); scripts/setup.sh \
             installs the pinned 13.0",
            nvcc.display()
        );
    }
    let started = Instant::now();
    build_fatbin(&nvcc, &kernels, &out, &targets);
    println!("cargo::rustc-cfg=flint_kernels");
    if flag("FLINT_PTXAS_VERBOSE") {
        let size = fs::metadata(out.join("flint.fatbin"))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "cargo::warning=flint.fatbin: {size} bytes, kernels built in {:.1} s with {}",
            started.elapsed().as_secs_f64(),
            nvcc.display()
        );
    }
}

fn flag(name: &str) -> bool {
    env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `kernels/params.h` -> `$OUT_DIR/params.rs`.
fn bindgen_params(kernels: &Path, out: &Path) {
    let header = kernels.join("params.h");
    let builder = bindgen::Builder::default()
        .header(header.to_str().expect("kernels/params.h path is not UTF-8"))
        .allowlist_file(".*[/\\\\]params\\.h")
        .derive_debug(true)
        .derive_copy(true)
        .derive_default(true)
        .layout_tests(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .parse_callbacks(Box::new(DocComments));
    // bindgen panics when it cannot load libclang; say what to do about it.
    let generated =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.generate())) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => panic!("bindgen failed on {}: {e}", header.display()),
            Err(_) => panic!(
                "bindgen could not run (is libclang installed?). Run `bash scripts/setup.sh`, \
             or install libclang-dev, or point LIBCLANG_PATH at the folder holding libclang.so."
            ),
        };
    generated
        .write_to_file(out.join("params.rs"))
        .expect("writing params.rs");
}

/// Shapes in params.h comments (`[rows, cols]`) would read as rustdoc links: escape them.
#[derive(Debug)]
struct DocComments;

impl bindgen::callbacks::ParseCallbacks for DocComments {
    fn process_comment(&self, comment: &str) -> Option<String> {
        Some(comment.replace('[', "\\[").replace(']', "\\]"))
    }
}

/// nvcc from NVCC, CUDA_HOME/CUDA_PATH, PATH, then the project-local toolchain.
fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if flag("FLINT_NO_CUDA") {
        return None;
    }
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        // An explicit choice that is wrong is an error, not a silent CPU-only build.
        assert!(p.is_file(), "NVCC={} does not exist", p.display());
        return Some(p);
    }
    let homes = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(env::var_os);
    let from_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let local = root.join(".toolchain/cuda/home");
    let found = homes
        .map(|h| PathBuf::from(h).join("bin"))
        .chain(from_path)
        .chain([local.join("bin")])
        .map(|d| d.join(exe))
        .find(|p| p.is_file());
    // Running scripts/setup.sh later must re-run this script: watch the stamp it writes, or,
    // before it ran, the (created, git-ignored) folder it installs into. Watching a missing
    // path would re-run the build script on every build.
    let stamp = root.join(".toolchain/cuda/.stamp");
    if stamp.is_file() {
        println!("cargo::rerun-if-changed={}", stamp.display());
    } else if fs::create_dir_all(root.join(".toolchain")).is_ok() {
        println!(
            "cargo::rerun-if-changed={}",
            root.join(".toolchain").display()
        );
    }
    found
}

/// (major, minor) from `nvcc --version` ("Cuda compilation tools, release 13.0, V13.0.88").
fn nvcc_release(nvcc: &Path) -> Option<(u32, u32)> {
    let out = Command::new(nvcc).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("release ").nth(1)?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.trim().parse().ok()?, minor.parse().ok()?))
}

#[derive(Clone, Debug)]
enum Target {
    /// SASS for `sm_<arch>`.
    Sass(String),
    /// PTX for `compute_<arch>`.
    Ptx(String),
}

fn parse_targets(spec: &str) -> Vec<Target> {
    let targets: Vec<Target> = spec
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix("compute_") {
            Some(a) => Target::Ptx(a.to_string()),
            None => Target::Sass(s.trim_start_matches("sm_").to_string()),
        })
        .collect();
    for t in &targets {
        let (Target::Sass(a) | Target::Ptx(a)) = t;
        let digits = a.trim_end_matches(['a', 'f']);
        assert!(
            digits.len() >= 2 && digits.bytes().all(|b| b.is_ascii_digit()),
            "FLINT_CUDA_ARCHS: `{a}` is not an arch (want e.g. `90a`, `sm_80` or `compute_80`)"
        );
    }
    assert!(!targets.is_empty(), "FLINT_CUDA_ARCHS is empty");
    targets
}

/// One nvcc (or fatbinary) run.
struct Job {
    what: String,
    cmd: Command,
}

impl Job {
    fn new(what: String, program: &Path) -> Job {
        Job {
            what,
            cmd: Command::new(program),
        }
    }
    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Job {
        self.cmd.args(args);
        self
    }
}

fn build_fatbin(nvcc: &Path, kernels: &Path, out: &Path, targets: &[Target]) {
    let obj = out.join("kernels");
    fs::create_dir_all(&obj).expect("creating $OUT_DIR/kernels");
    let mut sources: Vec<PathBuf> = fs::read_dir(kernels)
        .expect("reading kernels/")
        .map(|e| e.expect("reading kernels/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "no kernels/*.cu to compile");
    let unity = obj.join("flint_all.cu");
    let body: String = sources
        .iter()
        .map(|s| format!("#include \"{}\"\n", s.display()))
        .collect();
    write_if_changed(&unity, &body);
    let include = format!("-I{}", kernels.display());
    let verbose = flag("FLINT_PTXAS_VERBOSE");

    // One whole-program compile per target, in parallel.
    let mut jobs = Vec::new();
    let mut images = Vec::new(); // (fatbinary kind, sm, file)
    for t in targets {
        let (kind, arch, name, mode, ext) = match t {
            Target::Sass(a) => ("elf", a, format!("sm_{a}"), "-cubin", "cubin"),
            Target::Ptx(a) => ("ptx", a, format!("compute_{a}"), "-ptx", "ptx"),
        };
        let file = obj.join(format!("flint.{name}.{ext}"));
        let mut job = Job::new(format!("kernels for {name}"), nvcc)
            .args([mode, &format!("-arch={name}"), &include])
            .args(NVCC_FLAGS);
        if kind == "elf" {
            job = job.args(["-lineinfo"]);
            if verbose {
                job = job.args(["-Xptxas=-v"]);
            }
        }
        jobs.push(job.args([unity.as_os_str(), "-o".as_ref(), file.as_os_str()]));
        images.push((kind, arch, file));
    }
    run_all(jobs);

    // Pack the images, uncompressed.
    let fatbinary = nvcc.with_file_name(if cfg!(windows) {
        "fatbinary.exe"
    } else {
        "fatbinary"
    });
    let fatbin = out.join("flint.fatbin");
    let mut pack = Job::new("fatbinary".into(), &fatbinary).args([
        "-64".to_string(),
        "--compress=false".to_string(),
        format!("--create={}", fatbin.display()),
    ]);
    for (kind, arch, file) in &images {
        pack = pack.args([format!(
            "--image3=kind={kind},sm={arch},file={}",
            file.display()
        )]);
    }
    run_all(vec![pack]);
}

fn write_if_changed(path: &Path, body: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(body) {
        fs::write(path, body).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// Runs the jobs on up to NUM_JOBS threads. Any failure fails the build with the tool's
/// output: a kernel that does not compile must never vanish silently.
fn run_all(jobs: Vec<Job>) {
    let threads = env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, std::io::Result<Output>)>> = Mutex::new(Vec::new());
    let mut jobs: Vec<Mutex<Job>> = jobs.into_iter().map(Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let output = job.lock().unwrap().cmd.output();
                results.lock().unwrap().push((i, output));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let mut failed: Vec<String> = Vec::new();
    let mut shown: Vec<String> = Vec::new();
    for (i, result) in results {
        let job = jobs[i].get_mut().unwrap();
        let output = match result {
            Ok(o) => o,
            Err(e) => panic!(
                "could not run {:?} for {}: {e}",
                job.cmd.get_program(),
                job.what
            ),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            report(&text);
            continue;
        }
        failed.push(job.what.clone());
        // The same source error fails every arch: show each distinct output once.
        if !shown.contains(&text) {
            eprintln!(
                "{} failed ({}):\n  {:?}\n{text}",
                job.what, output.status, job.cmd
            );
            shown.push(text);
        }
    }
    assert!(
        failed.is_empty(),
        "CUDA kernel build failed: {} (nvcc's output is above)",
        failed.join(", ")
    );
}

/// Forwards compiler warnings; with FLINT_PTXAS_VERBOSE, one line per kernel and arch:
/// `sm_90a rms_norm_bf16: 30 registers, 0 B stack frame, 0 B spill stores, 0 B spill loads, 128 B smem`.
fn report(text: &str) {
    let mut entry: Option<(String, String)> = None; // (kernel, arch)
    let mut frame = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("ptxas info    : ") {
            if let Some(r) = rest.strip_prefix("Compiling entry function '") {
                let mut parts = r.split('\'');
                let name = parts.next().unwrap_or_default().to_string();
                let arch = parts.nth(1).unwrap_or_default().to_string();
                entry = Some((name, arch));
                frame.clear();
            } else if let Some(r) = rest.strip_prefix("Used ") {
                if let Some((name, arch)) = entry.take() {
                    let mut used = r.split(", ");
                    let regs = used.next().unwrap_or_default();
                    let smem = used.find(|u| u.ends_with("smem")).unwrap_or("0 bytes smem");
                    let smem = smem.replace(" bytes", " B");
                    println!("cargo::warning={arch} {name}: {regs}, {frame}, {smem}");
                }
            }
            // Other info lines (gmem, compile time, function properties) are noise here.
        } else if line.contains("bytes stack frame") {
            frame = line.replace(" bytes", " B");
        } else {
            println!("cargo::warning={line}");
        }
    }
}
