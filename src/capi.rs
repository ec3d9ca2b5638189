//! C ABI over [`Engine`]. Ownership: `flint_engine_create` returns an opaque handle the
//! caller frees with `flint_engine_destroy`. `flint_step` returns how many tokens and how many
//! finished requests the step produced; the caller reads them by index with the accessors,
//! valid until the next step or destroy. Every function catches panics; errors are negative
//! return codes (or NULL) with the message in `flint_last_error` (thread-local, valid until
//! the next failing call on the thread). An engine may be used from any thread, one call at a
//! time (it is `Send`, not `Sync`: the caller serializes; a CUDA engine binds its context to
//! the calling thread).
//!
//! include/flint.h is generated from this file by cbindgen (settings: cbindgen.toml), doc
//! comments included: the `///` comments on the exported items are the C documentation.
//! Regenerate it with `FLINT_BLESS=1 cargo test --release --test capi header_is_up_to_date`.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::engine::{Engine, EngineConfig, Request, StepOutput};
use crate::sampling::SamplingParams;
use crate::weights::quant_source::{LoadOptions, QuantMode};
use crate::ModelRef;
use anyhow::{anyhow, bail, Context, Result};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Engine sizes and options for `flint_engine_create`. A zero field (0, NULL, false) takes the
/// default, so a zero-initialized `FlintConfig` (or a NULL pointer) is a CPU engine with
/// default sizes.
#[repr(C)]
pub struct FlintConfig {
    /// "cpu" or "cuda" (NULL = "cpu"). "cuda" without a usable GPU (no driver or no device)
    /// fails with the reason in `flint_last_error`, as does any other string.
    pub device: *const c_char,
    /// KV cache blocks. 0: sized from free GPU memory and `gpu_memory_fraction` after a
    /// warm-up step (256 on the CPU, which reports no free memory).
    pub num_blocks: usize,
    /// Tokens per KV cache block (0 = 16).
    pub block_size: usize,
    /// Most sequences running at once (0 = 32).
    pub max_num_seqs: usize,
    /// Token budget of one step, decodes plus prefill chunks; sizes the workspace (0 = 512).
    pub max_batch_tokens: usize,
    /// Share of the GPU's total memory flint may use (weights, workspace and KV cache
    /// together) when `num_blocks` is 0, as vLLM's --gpu-memory-utilization (0 = 0.9).
    pub gpu_memory_fraction: f64,
    /// true turns prefix caching off (sharing the KV blocks of a common prompt prefix between
    /// requests; on by default).
    pub disable_prefix_caching: bool,
    /// true never replays decode steps from CUDA graphs (vLLM's --enforce-eager); false, the
    /// default, replays them on "cuda" (the CPU has none).
    pub enforce_eager: bool,
    /// Quantize the linear weights on load, as `flint --quant`: "int8",
    /// "int4[-asym][-g<group>]" or "fp8" (NULL = as the checkpoint is), with a separate
    /// lm_head at 8 bits as `--lm-head auto` does. A bad string fails with the reason in
    /// `flint_last_error`.
    pub quant: *const c_char,
}

/// How a request picks its tokens (`flint_add_request`; NULL there = greedy). Out-of-range
/// values fail `flint_add_request` with the reason in `flint_last_error`.
#[repr(C)]
pub struct FlintSampling {
    /// Softmax temperature, finite and >= 0; 0 = greedy (top_k and seed then do not matter;
    /// top_p must still be valid).
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens only; 0 = no cut.
    pub top_k: usize,
    /// Sample among the fewest most likely tokens whose probabilities sum to `top_p`; in
    /// (0, 1], 1 = no cut (so a zeroed struct must set it).
    pub top_p: f32,
    /// Seed of the request's random numbers: the same seed and inputs give the same tokens.
    pub seed: u64,
}

enum AnyEngine {
    Cpu(Box<Engine<CpuBackend>>),
    Cuda(Box<Engine<CudaBackend>>),
}

/// An engine: opaque, made by `flint_engine_create`, freed by `flint_engine_destroy`.
/// It may be used from any thread, but by one thread at a time: calls on one engine must not
/// overlap (the caller serializes them). A "cuda" engine makes its CUDA context current on
/// the calling thread.
pub struct FlintEngine {
    engine: AnyEngine,
    last: StepOutput,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn guard<T>(fail: T, f: impl FnOnce() -> Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(format!("{e:#}"));
            fail
        }
        Err(_) => {
            set_error("internal panic in flint".into());
            fail
        }
    }
}

macro_rules! with_engine {
    ($h:expr, $e:ident => $body:expr) => {
        match &mut $h.engine {
            AnyEngine::Cpu($e) => $body,
            AnyEngine::Cuda($e) => $body,
        }
    };
}

unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        bail!("{what} is NULL");
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| anyhow!("{what} is not UTF-8"))
}

fn handle<'a>(h: *mut FlintEngine) -> Result<&'a mut FlintEngine> {
    unsafe { h.as_mut() }.ok_or_else(|| anyhow!("engine handle is NULL"))
}

/// The message of the last error on this thread ("" when none).
///
/// Every function reports failure the same way: -1 (or NULL where it returns a pointer),
/// with the reason here; none of them lets a Rust panic cross into C (a panic is an error
/// "internal panic in flint"). The string belongs to flint and is valid until the next
/// failing call on this thread (or the next `flint_step_finished` that reports an error
/// message); copy it to keep it.
#[no_mangle]
pub extern "C" fn flint_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Loads a model and builds an engine; NULL on error (reason in `flint_last_error`).
/// `model`: a model folder (config.json and safetensors weights) or "synthetic:NAME";
/// `config`: NULL = all defaults (see `FlintConfig`).
///
/// # Safety
/// `model` is a NUL-terminated string; `config` is NULL or points to a `FlintConfig`.
#[no_mangle]
pub unsafe extern "C" fn flint_engine_create(
    model: *const c_char,
    config: *const FlintConfig,
) -> *mut FlintEngine {
    guard(std::ptr::null_mut(), || {
        let model = ModelRef::parse(str_arg(model, "model")?);
        let mut cfg = EngineConfig::default();
        let mut device = "cpu";
        let mut load = LoadOptions::default();
        if let Some(c) = config.as_ref() {
            if !c.device.is_null() {
                device = str_arg(c.device, "device")?;
            }
            if !c.quant.is_null() {
                let q = str_arg(c.quant, "config quant")?;
                load.quant = Some(q.parse::<QuantMode>().context("config quant")?);
            }
            let pick = |v: usize, d: usize| if v == 0 { d } else { v };
            cfg = EngineConfig {
                num_blocks: (c.num_blocks != 0).then_some(c.num_blocks),
                block_size: pick(c.block_size, cfg.block_size),
                max_num_seqs: pick(c.max_num_seqs, cfg.max_num_seqs),
                max_batch_tokens: pick(c.max_batch_tokens, cfg.max_batch_tokens),
                gpu_memory_fraction: if c.gpu_memory_fraction == 0.0 {
                    cfg.gpu_memory_fraction
                } else {
                    c.gpu_memory_fraction
                },
                enable_prefix_caching: !c.disable_prefix_caching,
                cuda_graphs: !c.enforce_eager,
            };
        }
        let engine = match device {
            "cpu" => AnyEngine::Cpu(Box::new(Engine::new(
                CpuBackend,
                model.load_with(&CpuBackend, &load)?,
                cfg,
            )?)),
            "cuda" => {
                let be = CudaBackend::new().context("device \"cuda\"")?;
                let m = model.load_with(&be, &load)?;
                AnyEngine::Cuda(Box::new(Engine::new(be, m, cfg)?))
            }
            d => bail!("device `{d}`: use \"cpu\" or \"cuda\""),
        };
        Ok(Box::into_raw(Box::new(FlintEngine {
            engine,
            last: StepOutput::default(),
        })))
    })
}

/// Frees an engine (NULL is ignored).
///
/// # Safety
/// `h` came from `flint_engine_create` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn flint_engine_destroy(h: *mut FlintEngine) {
    guard((), || {
        if !h.is_null() {
            drop(Box::from_raw(h));
        }
        Ok(())
    })
}

/// Queues a request: up to `max_new_tokens` (>= 1) new tokens after the `prompt_len` token ids
/// at `prompt` (at least one, each inside the vocabulary). It ends early at the model's EOS
/// unless `ignore_eos`. `sampling` NULL = greedy. Returns the request's id (>= 0, unique in
/// this engine), or -1 on error (bad arguments are errors that name them). A request too large
/// for the KV cache or the model's context is accepted and finishes with "error" at the next
/// step.
///
/// # Safety
/// `h` is a live engine; `prompt` points to `prompt_len` ids; `sampling` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn flint_add_request(
    h: *mut FlintEngine,
    prompt: *const u32,
    prompt_len: usize,
    sampling: *const FlintSampling,
    max_new_tokens: usize,
    ignore_eos: bool,
) -> i64 {
    guard(-1, || {
        let h = handle(h)?;
        let prompt = if prompt_len == 0 {
            vec![]
        } else if prompt.is_null() {
            bail!("prompt is NULL");
        } else if prompt_len > isize::MAX as usize / std::mem::size_of::<u32>() {
            // No array is this long: a negative length passed as size_t, most likely.
            bail!("prompt_len {prompt_len} is not the length of an array");
        } else {
            std::slice::from_raw_parts(prompt, prompt_len).to_vec()
        };
        let sampling = match sampling.as_ref() {
            Some(s) => SamplingParams {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed: s.seed,
            },
            None => SamplingParams::default(),
        };
        let req = Request {
            prompt,
            sampling,
            max_new_tokens,
            ignore_eos,
            ..Default::default()
        };
        Ok(with_engine!(h, e => e.add_request(req))? as i64)
    })
}

/// Ends request `id`: 1 if it was live (the next step reports it finished, "aborted"), 0 if
/// the id is unknown or already finished, -1 on error.
///
/// # Safety
/// `h` is a live engine.
#[no_mangle]
pub unsafe extern "C" fn flint_abort(h: *mut FlintEngine, id: u64) -> i32 {
    guard(-1, || {
        let h = handle(h)?;
        Ok(with_engine!(h, e => e.abort(id)) as i32)
    })
}

/// 1 while requests remain (waiting, running, or finished but not yet reported by
/// `flint_step`), 0 when none, -1 on error. Loop `flint_step` while it is 1.
///
/// # Safety
/// `h` is a live engine.
#[no_mangle]
pub unsafe extern "C" fn flint_has_unfinished(h: *mut FlintEngine) -> i32 {
    guard(-1, || {
        let h = handle(h)?;
        Ok(with_engine!(h, e => e.has_unfinished()) as i32)
    })
}

/// Runs one step (schedule, forward pass, sampling): returns the number of new tokens, or -1
/// on error. `*num_finished` (`num_finished` may be NULL) receives the number of requests
/// that finished. Read the items by index with `flint_step_token` and `flint_step_finished`;
/// they stay valid until the next `flint_step` or `flint_engine_destroy`.
///
/// # Safety
/// `h` is a live engine; `num_finished` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn flint_step(h: *mut FlintEngine, num_finished: *mut usize) -> i64 {
    guard(-1, || {
        let h = handle(h)?;
        h.last = StepOutput::default();
        h.last = with_engine!(h, e => e.step())?;
        if let Some(n) = num_finished.as_mut() {
            *n = h.last.finished.len();
        }
        Ok(h.last.tokens.len() as i64)
    })
}

/// Token `i` (0 <= i < what `flint_step` returned) of the last step: writes its request id to
/// `*id` and the token to `*token`; 0, or -1 when `i` is out of range.
///
/// # Safety
/// `h` is a live engine; `id` and `token` are writable.
#[no_mangle]
pub unsafe extern "C" fn flint_step_token(
    h: *mut FlintEngine,
    i: usize,
    id: *mut u64,
    token: *mut u32,
) -> i32 {
    guard(-1, || {
        let h = handle(h)?;
        let &(r, t) = h
            .last
            .tokens
            .get(i)
            .ok_or_else(|| anyhow!("token index {i} out of range"))?;
        *id.as_mut().ok_or_else(|| anyhow!("id is NULL"))? = r;
        *token.as_mut().ok_or_else(|| anyhow!("token is NULL"))? = t;
        Ok(0)
    })
}

/// Finished request `i` (0 <= i < `*num_finished` of the last `flint_step`): writes its id to
/// `*id` and returns why it finished, as a static string: "eos" (the model's end token),
/// "length" (`max_new_tokens` reached), "stop" (a stop token), "context" (the model's context
/// is full), "aborted" (`flint_abort`) or "error"; NULL when `i` is out of range.
/// `*error` (`error` may be NULL) gets the message of an "error" finish, else NULL; it is the
/// thread's `flint_last_error` string, valid as that one is.
///
/// # Safety
/// `h` is a live engine; `id` writable; `error` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn flint_step_finished(
    h: *mut FlintEngine,
    i: usize,
    id: *mut u64,
    error: *mut *const c_char,
) -> *const c_char {
    guard(std::ptr::null(), || {
        let h = handle(h)?;
        let f = h
            .last
            .finished
            .get(i)
            .ok_or_else(|| anyhow!("finished index {i} out of range"))?;
        *id.as_mut().ok_or_else(|| anyhow!("id is NULL"))? = f.id;
        if let Some(e) = error.as_mut() {
            *e = std::ptr::null();
            if let Some(msg) = &f.error {
                set_error(msg.clone());
                *e = flint_last_error();
            }
        }
        Ok(match f.reason.as_str() {
            "eos" => c"eos",
            "length" => c"length",
            "stop" => c"stop",
            "context" => c"context",
            "aborted" => c"aborted",
            _ => c"error",
        }
        .as_ptr())
    })
}
