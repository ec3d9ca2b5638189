//! Checkpoint access: safetensors files (single or sharded) memory-mapped, tensors read one
//! at a time and converted to f32 on request. Every error names the file and the tensor.

pub mod names;
pub mod quant;
pub mod quant_source;
pub mod synthetic;

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Element types flint reads from checkpoints. The float types convert to f32 (`load_f32`);
/// the integer and fp8 types are the storage of quantized checkpoints and are read as raw
/// bytes (`bytes`) by the importers in [`quant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    U8,
    I32,
    I64,
    F8E4M3,
    F8E5M2,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::I64 => 8,
        }
    }

    /// True for the types `load_f32` converts (f32, f16, bf16).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

/// Where one tensor lives: which file, its type, shape and byte range in that file's mmap.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub file: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// A checkpoint: every tensor of every shard, by name.
pub struct WeightStore {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl WeightStore {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("cannot read {}", index.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{}: missing object `weight_map`", index.display()))?;
            let mut names: Vec<&str> = Vec::new();
            for (tensor, file) in map {
                let f = file.as_str().ok_or_else(|| {
                    anyhow!(
                        "{}: weight_map entry for `{tensor}` is not a file name",
                        index.display()
                    )
                })?;
                if f.contains('/') || f.contains("..") {
                    bail!(
                        "{}: shard name `{f}` must be a plain file name",
                        index.display()
                    );
                }
                if !names.contains(&f) {
                    names.push(f);
                }
            }
            names.sort();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json found",
                dir.display()
            );
        };
        let mut store = WeightStore {
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for path in files {
            store.add_file(path)?;
        }
        Ok(store)
    }

    /// Opens one safetensors file on its own (tests, tools, loose quantized tensors).
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut store = WeightStore {
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        store.add_file(path.to_path_buf())?;
        Ok(store)
    }

    /// Adds one safetensors file (validating its header against its length).
    pub fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only; flint never writes checkpoint files, and a file
        // truncated underneath us is the one hazard every mmap-based loader accepts.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| anyhow!("{}: malformed safetensors file: {e}", path.display()))?;
        let idx = self.shards.len();
        let base = map.as_ptr() as usize;
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                Dtype::I8 => DType::I8,
                Dtype::U8 => DType::U8,
                Dtype::I32 => DType::I32,
                Dtype::I64 => DType::I64,
                Dtype::F8_E4M3 => DType::F8E4M3,
                Dtype::F8_E5M2 => DType::F8E5M2,
                other => bail!(
                    "{}: tensor `{name}` has dtype {other:?}; flint reads f32, f16, bf16 \
                     and the quantized storage types i8, u8, i32, i64, f8_e4m3, f8_e5m2",
                    path.display()
                ),
            };
            let data = view.data();
            let start = data.as_ptr() as usize - base;
            let info = TensorInfo {
                file: idx,
                dtype,
                shape: view.shape().to_vec(),
                start,
                end: start + data.len(),
            };
            if self.tensors.insert(name.clone(), info).is_some() {
                bail!(
                    "{}: tensor `{name}` appears in more than one shard",
                    path.display()
                );
            }
        }
        self.shards.push(Shard { path, map });
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| {
            let files: Vec<String> = self
                .shards
                .iter()
                .map(|s| s.path.display().to_string())
                .collect();
            anyhow!("tensor `{name}` not found in {}", files.join(", "))
        })
    }

    /// File that holds a tensor (for error messages).
    pub fn file_of(&self, info: &TensorInfo) -> &Path {
        &self.shards[info.file].path
    }

    /// Raw little-endian bytes of a tensor, straight from the map.
    pub fn bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.info(name)?;
        Ok((info, &self.shards[info.file].map[info.start..info.end]))
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| (t.end - t.start) as u64)
            .sum()
    }

    /// Reads a tensor as f32, checking it has exactly `shape`.
    pub fn load_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (info, bytes) = self.bytes(name)?;
        if info.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?}",
                self.file_of(info).display(),
                info.shape,
                shape
            );
        }
        if !info.dtype.is_float() {
            bail!(
                "{}: tensor `{name}` has dtype {:?}, which is quantized storage, not a float \
                 tensor; it is read through weights::quant with its quantization_config",
                self.file_of(info).display(),
                info.dtype
            );
        }
        Ok(to_f32(info.dtype, bytes))
    }
}

/// Anything that yields f32 tensors by Hugging Face name: a checkpoint or a synthetic model.
pub trait TensorSource {
    /// The tensor `name`, which must have exactly `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    fn contains(&self, name: &str) -> bool;

    /// The linear weight `name` (`{prefix}.weight`) `[rows, cols]`: dense here; quantized
    /// sources (a published quantized checkpoint, quantize-on-load) serve it quantized.
    fn load_linear(&self, name: &str, rows: usize, cols: usize) -> Result<quant::Linear> {
        Ok(quant::Linear::Dense(self.load(name, &[rows, cols])?))
    }

    /// What this source makes of a dense linear weight read as part of a larger tensor (the
    /// fused `[E, 2I, D]` experts): unchanged here; quantize-on-load quantizes it.
    fn finish_linear(
        &self,
        name: &str,
        data: Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<quant::Linear> {
        let _ = (name, rows, cols);
        Ok(quant::Linear::Dense(data))
    }
}

impl TensorSource for WeightStore {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.load_f32(name, shape)
    }
    fn contains(&self, name: &str) -> bool {
        WeightStore::contains(self, name)
    }
}

/// Converts little-endian f32/f16/bf16 bytes to f32 (exact: every f16/bf16 value is an f32).
/// Integer and fp8 types are not floats to convert: they give an empty vector (callers check
/// `DType::is_float` first, as `load_f32` does).
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::I8 | DType::U8 | DType::I32 | DType::I64 | DType::F8E4M3 | DType::F8E5M2 => {
            Vec::new()
        }
    }
}
