//! flint: a GPU-first LLM inference engine. Rust on the host, raw CUDA kernels on the device.
//!
//! Every supported model is one decoder (`model.rs`) driven by a normalized [`config::ModelSpec`]
//! and written against [`backend::Backend`], whose CPU implementation is the f32 reference.

pub mod backend;
pub mod bench;
pub mod capi;
pub mod config;
pub mod engine;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
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
        self.load_with(be, &weights::quant_source::LoadOptions::default())
    }

    /// Loads the model with options: a checkpoint whose config.json has a
    /// `quantization_config` loads its quantized weights; `opts.quant` quantizes a float
    /// checkpoint's (or a synthetic model's) linear weights on load.
    pub fn load_with<B: backend::Backend>(
        &self,
        be: &B,
        opts: &weights::quant_source::LoadOptions,
    ) -> Result<model::Model<B>> {
        use weights::quant_source::{QuantStore, QuantizeOnLoad};
        let spec = self.spec()?;
        let with_quant = |src: &dyn weights::TensorSource| match opts.quant {
            Some(mode) => {
                model::Model::load(be, spec.clone(), &QuantizeOnLoad { inner: src, mode })
            }
            None => model::Model::load(be, spec.clone(), src),
        };
        match self {
            ModelRef::Dir(d) => {
                let store = weights::WeightStore::open(d)?;
                match weights::quant::QuantConfig::from_dir(d)? {
                    Some(cfg) => {
                        if let Some(mode) = opts.quant {
                            anyhow::bail!(
                                "--quant {mode} cannot be applied to {}: the checkpoint is \
                                 already quantized ({cfg:?}); quantize-on-load takes f32, f16 \
                                 and bf16 checkpoints",
                                d.display()
                            );
                        }
                        model::Model::load(be, spec, &QuantStore { store, cfg })
                    }
                    None => with_quant(&store),
                }
            }
            ModelRef::Synthetic(_) => {
                let src = weights::synthetic::SyntheticSource::new(&spec, 0);
                with_quant(&src)
            }
        }
    }
}
