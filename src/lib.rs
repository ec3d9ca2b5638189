//! flint: a GPU-first LLM inference engine. Rust on the host, raw CUDA kernels on the device.
//!
//! Every supported model is one decoder (`model.rs`) driven by a normalized [`config::ModelSpec`]
//! and written against [`backend::Backend`], whose CPU implementation is the f32 reference.
//!
//! # Embedding the engine
//!
//! [`Engine`] serves many requests at once (continuous batching, chunked prefill, paged KV
//! cache with prefix caching, preemption); [`Engine::step`] streams the tokens of each step,
//! [`Engine::generate`] runs a batch to completion. On a GPU build the same code runs over
//! `backend::cuda::CudaBackend`, whose KV cache is sized from free memory when
//! [`EngineConfig::num_blocks`] is `None`.
//!
//! ```
//! use flint::backend::cpu::CpuBackend;
//! use flint::{Engine, EngineConfig, FinishReason, ModelRef, Request, SamplingParams};
//!
//! // A tiny checkpoint from the test fixtures (any Hugging Face folder, or "synthetic:tiny").
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama3");
//! let model = ModelRef::Dir(dir).load(&CpuBackend)?;
//! let config = EngineConfig { num_blocks: Some(64), ..Default::default() };
//! let mut engine = Engine::new(CpuBackend, model, config)?;
//!
//! let system: Vec<u32> = (10..42).collect(); // a 32-token prefix shared by both requests
//! let ask = |tail: &[u32], seed| Request {
//!     prompt: system.iter().chain(tail).copied().collect(),
//!     max_new_tokens: 8,
//!     sampling: SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed },
//!     ignore_eos: true,
//!     ..Default::default()
//! };
//! let first = engine.generate(vec![ask(&[5, 6], 1)])?;
//! // Streaming: tokens arrive step by step; the shared prefix is not computed again.
//! let id = engine.add_request(ask(&[7, 8, 9], 2))?;
//! let mut streamed = Vec::new();
//! let mut done = Vec::new();
//! while engine.has_unfinished() {
//!     let out = engine.step()?;
//!     streamed.extend(out.tokens.iter().filter(|(r, _)| *r == id).map(|(_, t)| *t));
//!     done.extend(out.finished);
//! }
//! assert_eq!(first[0].reason, FinishReason::Length);
//! assert_eq!((done[0].tokens.clone(), done[0].cached_tokens), (streamed, 32));
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod backend;
pub mod bench;
pub mod bench_ops;
pub mod capi;
pub mod config;
pub mod engine;
pub mod kv_cache;
pub mod model;
pub(crate) mod par;
pub mod perplexity;
pub mod progress;
pub mod sampling;
pub mod scheduler;
pub mod selftest;
pub mod throughput;
pub mod tokenizer;
pub mod weights;

pub use engine::{Engine, EngineConfig, FinishReason, Finished, KvCacheInfo, Request, StepOutput};
pub use sampling::SamplingParams;

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
                let head = opts.lm_head.mode(mode);
                let src = QuantizeOnLoad {
                    inner: src,
                    mode,
                    head,
                };
                model::Model::load(be, spec.clone(), &src)
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
