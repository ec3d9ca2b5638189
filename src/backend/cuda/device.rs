//! The device: probing for a usable GPU without panicking, the context and its one stream,
//! the embedded module, and the per-step staging area.
//!
//! cudarc loads libcuda and libcublasLt lazily (feature `dynamic-loading`) and panics on the
//! first call when a library is missing, so [`probe`] asks first whether each library can be
//! opened and turns absence into an error that names it; construction then runs inside
//! `catch_unwind` as a second line of defence.

use super::kernels::PdlSwitch;
use super::{fatbin, KERNEL_NAMES, NOT_BUILT};
use anyhow::{bail, Context, Result};
use cudarc::driver::{result as cu, sys, CudaContext, CudaSlice, CudaStream};
use std::ffi::{c_void, CString};
use std::sync::Arc;

/// What the device reports about itself (for reports and the selftest's JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    /// `major.minor` of the CUDA version the driver supports (e.g. 13.0).
    pub driver: String,
    pub compute_capability: (i32, i32),
    pub num_sms: u32,
    pub total_mem: usize,
}

/// Checks that a driver library and a cuBLASLt library can be loaded, without panicking.
pub fn probe() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate names; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        bail!(
            "no NVIDIA driver: libcuda.so could not be loaded (no GPU on this machine, or the \
             driver's folder is not on the loader path)"
        );
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        bail!(
            "cuBLASLt not found: libcublasLt.so.13 could not be loaded (install the CUDA 13 \
             cuBLAS libraries, e.g. the `nvidia-cublas` wheel, and put their lib/ folder on \
             LD_LIBRARY_PATH)"
        );
    }
    Ok(())
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol, a failed workspace allocation)
/// into an error.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            bail!("{what}: {msg}")
        }
    }
}

/// The context, its stream and the loaded module.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub module: sys::CUmodule,
    pub info: DeviceInfo,
    /// Whether launches on `stream` carry the PDL attribute (off until the backend says).
    pub pdl: PdlSwitch,
}

impl Device {
    /// Opens GPU `ordinal` and loads the embedded fatbin.
    pub fn open(ordinal: usize) -> Result<Device> {
        probe()?;
        let image = fatbin().context(NOT_BUILT)?;
        no_panic("CUDA start-up", || {
            cu::init().context("cuInit failed (driver present but unusable)")?;
            let count = cu::device::get_count().context("cuDeviceGetCount")?;
            if count <= 0 {
                bail!("the NVIDIA driver is present but reports no GPU");
            }
            if ordinal >= count as usize {
                bail!("GPU {ordinal} requested but the driver reports {count}");
            }
            let ctx = CudaContext::new(ordinal).context("creating the CUDA context")?;
            // One stream, in order: cudarc's cross-stream event tracking is not needed, and
            // it would record events on every buffer access.
            // SAFETY: called before any allocation on this context.
            unsafe { ctx.disable_event_tracking() };
            // A stream of our own, not the legacy default one: CUDA graphs cannot capture
            // the legacy stream.
            let stream = ctx.new_stream().context("creating the CUDA stream")?;
            let attr = |a| ctx.attribute(a).context("cuDeviceGetAttribute");
            use sys::CUdevice_attribute::*;
            let info = DeviceInfo {
                name: ctx.name().context("cuDeviceGetName")?,
                driver: driver_version().unwrap_or_else(|_| "unknown".into()),
                compute_capability: (
                    attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                ),
                num_sms: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
                total_mem: ctx.total_mem().context("cuDeviceTotalMem")?,
            };
            ctx.bind_to_thread().context("binding the context")?;
            // SAFETY: `image` is the fatbin build.rs produced, embedded whole in the binary
            // with a 'static lifetime.
            let module = unsafe { cu::module::load_data(image.as_ptr() as *const c_void) }
                .with_context(|| {
                    format!(
                        "loading the kernels on {} (sm_{}{}): the fatbin has no image for \
                         this GPU, or its PTX is newer than the driver",
                        info.name, info.compute_capability.0, info.compute_capability.1
                    )
                })?;
            Ok(Device {
                ctx,
                stream,
                module,
                info,
                pdl: PdlSwitch::default(),
            })
        })
    }

    /// Resolves one kernel of the module.
    pub fn function(&self, name: &str) -> Result<sys::CUfunction> {
        let c = CString::new(name).context("kernel name")?;
        // SAFETY: the module was loaded by `open` and is never unloaded while `self` lives.
        unsafe { cu::module::get_function(self.module, c) }
            .with_context(|| format!("kernel `{name}` is not in the fatbin"))
    }

    /// Why programmatic dependent launch cannot run here, or `None` when it can: the card must
    /// be sm_90 or newer, and the code the driver loaded for it must have been compiled for
    /// compute_90 or newer, since below that `flint_pdl_wait` compiles to nothing
    /// (kernels/common.cuh) and a kernel launched early would race with the one before it.
    /// The second condition asks what was compiled, not what the card could do: it fails on
    /// a card that runs the compute_80 PTX (a fatbin without an sm_90 image, e.g. built with
    /// `FLINT_CUDA_ARCHS=80`, or a card newer than every SASS image, which the driver gives
    /// the PTX).
    pub fn pdl_unavailable(&self) -> Option<String> {
        let (major, minor) = self.info.compute_capability;
        if major < 9 {
            return Some(format!(
                "{} is sm_{major}{minor}; programmatic dependent launch needs sm_90 or newer",
                self.info.name
            ));
        }
        match driver_version_number() {
            Ok(v) if v >= PDL_MIN_DRIVER => {}
            Ok(v) => {
                return Some(format!(
                    "the driver supports CUDA {}.{}; programmatic dependent launch inside CUDA \
                     graphs needs 12.3 or newer",
                    v / 1000,
                    (v % 1000) / 10
                ))
            }
            Err(e) => return Some(format!("{e:#}")),
        }
        for &name in KERNEL_NAMES {
            let arch = self.function(name).and_then(|f| {
                // SAFETY: `f` was just resolved from this device's module.
                unsafe {
                    cu::function::get_function_attribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PTX_VERSION,
                    )
                }
                .with_context(|| format!("{name}: cuFuncGetAttribute(PTX_VERSION)"))
            });
            match arch {
                Ok(a) if a >= 90 => {}
                Ok(a) => {
                    return Some(format!(
                        "kernel `{name}` runs code compiled for compute_{a} on this \
                         sm_{major}{minor} card (the fatbin has no image for it built for sm_90 \
                         or newer), where its PDL waits are compiled out"
                    ))
                }
                Err(e) => return Some(format!("{e:#}")),
            }
        }
        None
    }

    /// Raises a kernel's dynamic shared memory limit (needed above 48 KiB).
    ///
    /// # Safety
    /// `f` must be a function resolved from this device's module.
    pub unsafe fn set_max_shared(&self, f: sys::CUfunction, name: &str, bytes: u32) -> Result<()> {
        if bytes <= 48 * 1024 {
            return Ok(());
        }
        // SAFETY: `f` was resolved from this device's module.
        unsafe {
            cu::function::set_function_attribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .with_context(|| format!("{name}: raising dynamic shared memory to {bytes} bytes"))
    }

    /// Kernel `name` of a wgmma kernel family (kernels/wgmma.cuh), ready to launch with
    /// `smem_bytes` of dynamic shared memory; or why it cannot run here: `off_env=0` set, a
    /// card other than sm_90 (the kernels are built for sm_90a only and trap in every other
    /// image), or the driver running another image than the fatbin's sm_90a one for it (e.g.
    /// a fatbin built without sm_90a). `what` names the family in the reasons.
    pub fn wgmma_function(
        &self,
        name: &str,
        smem_bytes: u32,
        what: &str,
        off_env: &str,
    ) -> std::result::Result<sys::CUfunction, String> {
        if std::env::var(off_env).is_ok_and(|v| v == "0") {
            return Err(format!("{off_env}=0"));
        }
        let (major, minor) = self.info.compute_capability;
        if (major, minor) != (9, 0) {
            return Err(format!(
                "{} is sm_{major}{minor}; {what} is built for sm_90a only",
                self.info.name
            ));
        }
        let f = self.function(name).map_err(|e| format!("{e:#}"))?;
        // SAFETY: `f` was just resolved from this device's module.
        let bin = unsafe {
            cu::function::get_function_attribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_BINARY_VERSION,
            )
        }
        .map_err(|e| format!("{name}: cuFuncGetAttribute(BINARY_VERSION): {e:?}"))?;
        if bin != 90 {
            return Err(format!(
                "kernel `{name}` runs code built for sm_{bin} here, not the sm_90a image"
            ));
        }
        // SAFETY: as above.
        unsafe { self.set_max_shared(f, name, smem_bytes) }.map_err(|e| format!("{e:#}"))?;
        Ok(f)
    }
}

/// The oldest driver (`cuDriverGetVersion`'s 1000 * major + 10 * minor) whose stream capture
/// records a programmatic launch as a programmatic graph edge (CUDA 12.3); flint captures
/// its decode steps into graphs, so PDL is off below it.
const PDL_MIN_DRIVER: i32 = 12030;

/// The driver's CUDA version as `cuDriverGetVersion` gives it (12030 for 12.3).
fn driver_version_number() -> Result<i32> {
    let mut v = 0i32;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .context("cuDriverGetVersion")?;
    Ok(v)
}

/// The driver's CUDA version, `major.minor`.
fn driver_version() -> Result<String> {
    let v = driver_version_number()?;
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

/// A device byte buffer that only grows: step metadata and attention scratch live here, so
/// the decode loop allocates only when a step is larger than every step before it.
pub struct Staging {
    buf: Option<CudaSlice<u8>>,
    /// Bumped on every reuse, so a `Step` can tell that its bytes were overwritten.
    pub generation: u64,
}

impl Staging {
    pub fn new() -> Self {
        Staging {
            buf: None,
            generation: 0,
        }
    }

    /// At least `bytes` of device memory (grown to 1.5x the request when too small; the old
    /// buffer is freed in stream order, after the work queued on it).
    pub fn ensure(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> Result<u64> {
        self.generation += 1;
        let have = self.buf.as_ref().map_or(0, |b| b.len());
        if have < bytes.max(1) {
            let want = (bytes.max(256) * 3).div_ceil(2).next_multiple_of(256);
            self.buf = None;
            // SAFETY: the buffer is written (by the caller's upload) before any kernel reads it.
            self.buf = Some(
                unsafe { stream.alloc::<u8>(want) }
                    .with_context(|| format!("allocating {want} bytes of staging memory"))?,
            );
        }
        Ok(dptr(self.buf.as_ref().expect("allocated above"), stream))
    }

    /// Copies `bytes` to the start of the buffer (which `ensure` sized).
    pub fn upload(&mut self, stream: &Arc<CudaStream>, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let buf = self.buf.as_mut().context("staging: not allocated")?;
        let mut view = buf.slice_mut(0..bytes.len());
        stream
            .memcpy_htod(bytes, &mut view)
            .context("copying step metadata to the device")
    }
}

impl Staging {
    /// Copies `len` bytes from `offset` of the buffer to the host (synchronous).
    pub fn download(&self, stream: &Arc<CudaStream>, offset: usize, len: usize) -> Result<Vec<u8>> {
        let buf = self.buf.as_ref().context("staging: not allocated")?;
        stream
            .clone_dtoh(&buf.slice(offset..offset + len))
            .context("copying results to the host (or an earlier kernel failed)")
    }
}

impl Default for Staging {
    fn default() -> Self {
        Self::new()
    }
}

/// The raw address of a buffer (event tracking is off, so no synchronization is attached).
pub fn dptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    use cudarc::driver::DevicePtr;
    let (p, _sync) = s.device_ptr(stream);
    p
}
