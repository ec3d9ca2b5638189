//! flint: a GPU-first LLM inference engine. Rust on the host, raw CUDA kernels on the device.
//!
//! Every supported model is one decoder (`model.rs`) driven by a normalized [`config::ModelSpec`]
//! and written against [`backend::Backend`], whose CPU implementation is the f32 reference.

pub mod backend;
pub mod bench;
pub mod bench_ops;
pub mod capi;
pub mod config;
pub mod engine;
pub mod kv_cache;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod selftest;
pub mod throughput;
pub mod tokenizer;
pub mod weights;

use anyhow::Result;
use std::path::PathBuf;

/// Where a model comes from: a Hugging Face folder or a synthetic preset.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelRef {
    Dir(PathBuf),
    Synthetic(String),
}

impl ModelRef {
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("synthetic:") {
            Some(p) => ModelRef::Synthetic(p.to_string()),
            None => ModelRef::Dir(PathBuf::from(s)),
        }
    }

    pub fn spec(&self) -> Result<config::ModelSpec> {
        match self {
            ModelRef::Dir(d) => config::ModelSpec::from_dir(d),
            ModelRef::Synthetic(p) => weights::synthetic::preset_spec(p),
        }
    }

    /// Loads the model onto `be`, streaming tensor by tensor.
    pub fn load<B: backend::Backend>(&self, be: &B) -> Result<model::Model<B>> {
        let spec = self.spec()?;
        match self {
            ModelRef::Dir(d) => {
                let store = weights::WeightStore::open(d)?;
                model::Model::load(be, spec, &store)
            }
            ModelRef::Synthetic(_) => {
                let src = weights::synthetic::SyntheticSource::new(&spec, 0);
                model::Model::load(be, spec, &src)
            }
        }
    }
}
