//! C ABI over [`Engine`]. Ownership: `flint_engine_create` returns an opaque handle the
//! caller frees with `flint_engine_destroy`. `flint_engine_step` returns how many tokens and
//! how many finished requests the step produced; the caller reads them by index with the
//! accessors, valid until the next step or destroy. Every function catches panics; errors are
//! negative return codes (or NULL) with the message in `flint_last_error` (thread-local, valid
//! until the next failing call on the thread). An engine may be used from any thread, one
//! call at a time (it is `Send`, not `Sync`: the caller serializes; a CUDA engine binds its
//! context to the calling thread).

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

/// Engine sizes; zeros take the defaults.
#[repr(C)]
pub struct FlintConfig {
    /// "cpu" or "cuda" (NULL = "cpu").
    pub device: *const c_char,
    /// 0: sized from free GPU memory after a warm-up (256 on the CPU).
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_num_seqs: usize,
    pub max_batch_tokens: usize,
    /// Share of GPU memory to use when sizing the KV cache (0 = 0.9).
    pub gpu_memory_fraction: f64,
    /// Nonzero turns prefix caching off.
    pub disable_prefix_caching: bool,
    /// Nonzero replays decode steps from CUDA graphs ("cuda" only; unverified on a GPU yet).
    pub cuda_graphs: bool,
    /// Quantize the linear weights on load: "int8", "int4[-asym][-g<group>]" or "fp8", as
    /// `--quant` (NULL = none).
    pub quant: *const c_char,
}

#[repr(C)]
pub struct FlintSampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

enum AnyEngine {
    Cpu(Box<Engine<CpuBackend>>),
    Cuda(Box<Engine<CudaBackend>>),
}

/// Opaque engine handle.
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

/// The last error on this thread ("" when none). Valid until the next failing call.
#[no_mangle]
pub extern "C" fn flint_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Loads a model (a folder or `synthetic:NAME`) and builds an engine; NULL on error.
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
                cuda_graphs: c.cuda_graphs,
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

/// Queues a request; its id (≥ 0), or -1 on error. `sampling` NULL = greedy.
///
/// # Safety
/// `prompt` points to `prompt_len` ids; `sampling` is NULL or valid.
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

/// Ends a request: 1 if it was live, 0 if unknown, -1 on error.
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

/// Requests waiting, running or not yet reported finished; -1 on error.
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

/// Runs one step; the number of new tokens (read them with `flint_step_token`), or -1.
/// `num_finished` (may be NULL) receives the number of finished requests.
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

/// Token `i` of the last step: writes its request id and token; 0, or -1 out of range.
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

/// Finished request `i` of the last step: its id and reason ("eos", "length", "stop",
/// "context", "aborted", "error"; a static string); NULL out of range. `error` (may be NULL)
/// receives the error message or NULL, valid until the next step.
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
