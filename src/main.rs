//! The `flint` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use flint::backend::cpu::CpuBackend;
use flint::backend::cuda::CudaBackend;
use flint::backend::Backend;
use flint::bench::{self, BenchOptions};
use flint::engine::{self, GenerateOptions};
use flint::sampling::SamplingParams;
use flint::tokenizer::{DecodeStream, Tokenizer};
use flint::weights::quant_source::{HeadQuant, LoadOptions, QuantMode};
use flint::ModelRef;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "flint", version, about = "GPU-first LLM inference engine")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Device {
    /// The GPU if one can be used, else the CPU (saying so).
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TextFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TableFormat {
    Md,
    Csv,
    Json,
}

/// A comma list of numbers: `512,2048`.
#[derive(Clone, Debug)]
struct NumList(Vec<usize>);

fn num_list(s: &str) -> Result<NumList, String> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{x}` is not a non-negative integer"))
        })
        .collect::<Result<_, _>>()
        .map(NumList)
}

/// Comma-separated token ids: `1,450,4996`.
#[derive(Clone, Debug)]
struct IdList(Vec<u32>);

fn id_list(s: &str) -> Result<IdList, String> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{x}` is not a token id"))
        })
        .collect::<Result<_, _>>()
        .map(IdList)
}

#[derive(Subcommand)]
enum Cmd {
    /// Model summary: shape, parameter count, bytes.
    Info {
        /// A Hugging Face folder or `synthetic:<preset>`.
        #[arg(long)]
        model: String,
    },
    /// Logits of a prompt as JSON: the last position, or every position.
    Logits {
        #[arg(long)]
        model: String,
        /// Comma-separated token ids.
        #[arg(long, value_parser = id_list)]
        prompt_ids: IdList,
        #[arg(long)]
        all_positions: bool,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Quantize the linear weights on load: int8, int4[-asym][-g<group>] (e.g. int4-asym-g64) or fp8.
        #[arg(long, value_parser = quant_mode)]
        quant: Option<QuantMode>,
        /// With --quant: the lm_head (when not tied to the embeddings): auto (int8 under int8
        /// and int4, fp8 under fp8), bf16 (as loaded), int8 or fp8.
        #[arg(long, value_parser = head_quant, default_value = "auto")]
        lm_head: HeadQuant,
    },
    /// Generate a continuation.
    Generate {
        #[arg(long)]
        model: String,
        /// Prompt text (needs tokenizer.json in the model folder).
        #[arg(long, conflicts_with = "prompt_ids")]
        prompt: Option<String>,
        /// Prompt as comma-separated token ids.
        #[arg(long, value_parser = id_list)]
        prompt_ids: Option<IdList>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep generating past EOS.
        #[arg(long)]
        ignore_eos: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Quantize the linear weights on load: int8, int4[-asym][-g<group>] (e.g. int4-asym-g64) or fp8.
        #[arg(long, value_parser = quant_mode)]
        quant: Option<QuantMode>,
        /// With --quant: the lm_head (when not tied to the embeddings): auto (int8 under int8
        /// and int4, fp8 under fp8), bf16 (as loaded), int8 or fp8.
        #[arg(long, value_parser = head_quant, default_value = "auto")]
        lm_head: HeadQuant,
    },
    /// Token ids of a text as JSON `{"ids": [...]}`, special tokens added as transformers does.
    Tokenize {
        /// A folder with tokenizer.json (and tokenizer_config.json).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        no_special_tokens: bool,
        text: String,
    },
    /// Perplexity of a text file: exp of the mean next-token negative log-likelihood over
    /// consecutive windows of `--ctx` tokens (each window scored from its first token on).
    Perplexity {
        #[arg(long)]
        model: String,
        /// A UTF-8 text file (needs tokenizer.json in the model folder).
        #[arg(long, conflicts_with = "ids")]
        text: Option<PathBuf>,
        /// The tokens as comma-separated ids instead of a text.
        #[arg(long, value_parser = id_list)]
        ids: Option<IdList>,
        /// Window length in tokens.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Quantize the linear weights on load: int8, int4[-asym][-g<group>] (e.g. int4-asym-g64) or fp8.
        #[arg(long, value_parser = quant_mode)]
        quant: Option<QuantMode>,
        /// With --quant: the lm_head (when not tied to the embeddings): auto (int8 under int8
        /// and int4, fp8 under fp8), bf16 (as loaded), int8 or fp8.
        #[arg(long, value_parser = head_quant, default_value = "auto")]
        lm_head: HeadQuant,
    },
    /// Throughput, llama-bench style: pp (prompt) and tg (decode) tokens/s.
    Bench {
        /// Default: `synthetic:llama-3-8b` on a GPU, `synthetic:tiny` on the CPU.
        #[arg(long, short = 'm')]
        model: Option<String>,
        /// Prompt lengths (pp tests); 0 skips.
        #[arg(short = 'p', long = "n-prompt", value_parser = num_list)]
        prompt: Option<NumList>,
        /// Decode lengths (tg tests); 0 skips.
        #[arg(short = 'n', long = "n-gen", value_parser = num_list)]
        gen: Option<NumList>,
        /// Tokens already in the cache.
        #[arg(short = 'd', long = "n-depth", value_parser = num_list, default_value = "0")]
        depth: NumList,
        /// Sequences decoded together in tg tests.
        #[arg(short = 'b', long = "batch", value_parser = num_list, default_value = "1")]
        batch: NumList,
        #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
        reps: usize,
        #[arg(short = 'o', long = "output", value_enum, default_value = "md")]
        output: TableFormat,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Time one MoE layer (router + experts) at --moe-tokens beside a loop of per-expert
        /// GEMMs and the dense-equivalent GEMM, instead of pp/tg.
        #[arg(long)]
        moe_layer: bool,
        /// Token counts of --moe-layer.
        #[arg(long, value_parser = num_list, default_value = "1,8,64,512,4096")]
        moe_tokens: NumList,
        /// Quantize the linear weights on load: int8, int4[-asym][-g<group>] (e.g. int4-asym-g64) or fp8.
        #[arg(long, value_parser = quant_mode)]
        quant: Option<QuantMode>,
        /// With --quant: the lm_head (when not tied to the embeddings): auto (int8 under int8
        /// and int4, fp8 under fp8), bf16 (as loaded), int8 or fp8.
        #[arg(long, value_parser = head_quant, default_value = "auto")]
        lm_head: HeadQuant,
        /// Also run each tg test with its decode steps replayed from a CUDA graph (rows
        /// `tg<n>+graphs` beside the eager ones; CUDA only).
        #[arg(long)]
        cuda_graphs: bool,
        /// Also run each tg test (and tg+graphs test) with programmatic dependent launch on
        /// (rows `tg<n>+pdl`, `tg<n>+graphs+pdl`; the other rows run with it off). CUDA on
        /// sm_90+ only: an error elsewhere. Without it every row runs FLINT_PDL's setting (on
        /// where the device can, unless FLINT_PDL=0).
        #[arg(long)]
        pdl: bool,
        /// Run each tg+graphs test (each tg test without --cuda-graphs) twice: with the norms
        /// and act·mul inside the GEMVs (the plain rows) and as kernels of their own (row
        /// `tg<n>+graphs+unfused`, and with --pdl also `tg<n>+graphs+pdl+unfused`; CUDA only).
        /// Without it every row runs FLINT_FUSE's setting (unfused unless FLINT_FUSE=1).
        #[arg(long)]
        unfused: bool,
    },
    /// Serving throughput of the batched engine: N requests, TTFT and ITL percentiles.
    Throughput {
        #[arg(long, short = 'm', default_value = "synthetic:tiny")]
        model: String,
        #[arg(long, default_value_t = 64)]
        num_requests: usize,
        #[arg(long, default_value_t = 128)]
        input_len: usize,
        #[arg(long, default_value_t = 128)]
        output_len: usize,
        /// Lengths uniform in [len·(1-r), len·(1+r)].
        #[arg(long, default_value_t = 0.0)]
        range_ratio: f64,
        /// Requests per second (Poisson); all at once when absent.
        #[arg(long)]
        request_rate: Option<f64>,
        /// Seeds the lengths, the prompts and, when sampling, request i's generator (seed + i).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// KV cache blocks (16 tokens each); default: sized from free GPU memory after a
        /// warm-up step (the CPU backend, which reports no memory, then gets 256).
        #[arg(long)]
        num_blocks: Option<usize>,
        /// Share of the GPU's memory for weights, workspace and KV cache together.
        #[arg(long, default_value_t = 0.9)]
        gpu_memory_fraction: f64,
        /// Turn off sharing of cached KV blocks between requests with a common prefix.
        #[arg(long)]
        no_prefix_caching: bool,
        /// Replay decode steps from CUDA graphs: the default on CUDA (kept so scripts that
        /// ask for it keep working).
        #[arg(long, conflicts_with = "enforce_eager")]
        cuda_graphs: bool,
        /// Never use CUDA graphs (vLLM's flag).
        #[arg(long)]
        enforce_eager: bool,
        #[arg(long, default_value_t = 64)]
        max_num_seqs: usize,
        #[arg(long, default_value_t = 2048)]
        max_batch_tokens: usize,
        #[arg(long, value_enum, default_value = "table")]
        output: ThroughputFormat,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Quantize the linear weights on load: int8, int4[-asym][-g<group>] or fp8.
        #[arg(long, value_parser = quant_mode)]
        quant: Option<QuantMode>,
        /// With --quant: the lm_head (when not tied to the embeddings): auto (int8 under int8
        /// and int4, fp8 under fp8), bf16 (as loaded), int8 or fp8.
        #[arg(long, value_parser = head_quant, default_value = "auto")]
        lm_head: HeadQuant,
    },
    /// Kernel-level timings of flint's CUDA paths (copy, GEMM, attention, MoE) with bytes and
    /// FLOPs per case, for the peer comparison (scripts/peers.py, scripts/compare.py). GPU only.
    BenchOps {
        /// Groups to run, comma-separated: copy, gemm, proj, quant, prefill, decode, moe (default: all).
        #[arg(long)]
        only: Option<String>,
        /// Cases not started after this many seconds are reported as skipped.
        #[arg(long, default_value_t = 70.0)]
        budget_s: f64,
        /// Target timed seconds per case.
        #[arg(long, default_value_t = 0.3)]
        case_s: f64,
        /// json: one `{"row": ...}` line per case as it completes, then the whole report.
        #[arg(short = 'o', long = "output", value_enum, default_value = "md")]
        output: TableFormat,
    },
    /// Every CUDA op against the CPU reference, then the fixtures end to end. Exit code 0:
    /// all passed, 1: a case failed, 2: no usable GPU.
    Selftest {
        /// Also write the per-case results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Fewer shapes per op and one prompt per fixture.
        #[arg(long)]
        quick: bool,
        /// Folder of Hugging Face fixtures (each with reference.json).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf"))]
        fixtures: PathBuf,
        /// Folder of quantized-checkpoint fixtures (GPTQ / AWQ / fp8 llama and mixtral) run end
        /// to end too; default: the repository's tests/fixtures/quant_models when present.
        #[arg(long)]
        quant_fixtures: Option<PathBuf>,
        /// Run only these sections, comma-separated: ops, quant, dense, fused, quant_moe, e2e,
        /// quant_e2e, graphs, pdl, attention_mma (default: all; an unknown name is an error).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ThroughputFormat {
    Table,
    Json,
}

impl Cmd {
    /// The `--device` of commands that run a model.
    fn device(&self) -> Option<Device> {
        match self {
            Cmd::Logits { device, .. }
            | Cmd::Generate { device, .. }
            | Cmd::Bench { device, .. }
            | Cmd::Perplexity { device, .. }
            | Cmd::Throughput { device, .. } => Some(*device),
            Cmd::Info { .. }
            | Cmd::Tokenize { .. }
            | Cmd::Selftest { .. }
            | Cmd::BenchOps { .. } => None,
        }
    }
}

/// The sampling flags of `generate` and `throughput` (transformers' order: temperature, then
/// top-k, then top-p; see flint::sampling).
#[derive(clap::Args, Debug, Clone, Copy)]
struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Keep the most likely tokens whose probability reaches p; 1 keeps all.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
}

impl SamplingArgs {
    fn params(&self, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed,
        }
    }
}

fn quant_mode(s: &str) -> Result<QuantMode, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn head_quant(s: &str) -> Result<HeadQuant, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Picks the backend for the command's `--device` and runs it there. The one place that
/// names concrete backends.
fn run(cli: Cli) -> Result<()> {
    if let Cmd::Selftest {
        json,
        quick,
        fixtures,
        quant_fixtures,
        only,
    } = cli.cmd
    {
        let opts = flint::selftest::SelftestOptions {
            json,
            quick,
            fixtures,
            quant_fixtures,
            only,
        };
        std::process::exit(flint::selftest::run(&opts));
    }
    if let Cmd::Bench {
        moe_layer: true,
        model,
        moe_tokens,
        reps,
        output,
        device,
        quant,
        ..
    } = &cli.cmd
    {
        // Concrete backends: the MoE bench uploads its inputs as weights.
        let (m, t) = (model.as_deref(), &moe_tokens.0);
        return match device {
            Device::Cpu => bench_moe_layer(&CpuBackend, m, t, *reps, *quant, *output),
            Device::Cuda => {
                let be = CudaBackend::new().context("--device cuda")?;
                bench_moe_layer(&be, m, t, *reps, *quant, *output)
            }
            Device::Auto => match CudaBackend::new() {
                Ok(be) => bench_moe_layer(&be, m, t, *reps, *quant, *output),
                Err(e) => {
                    eprintln!("flint: no usable GPU ({e:#}); running on the CPU (f32 reference)");
                    bench_moe_layer(&CpuBackend, m, t, *reps, *quant, *output)
                }
            },
        };
    }
    if let Cmd::BenchOps {
        only,
        budget_s,
        case_s,
        output,
    } = cli.cmd
    {
        return bench_ops(only, budget_s, case_s, output);
    }
    match cli.cmd.device() {
        None | Some(Device::Cpu) => run_on(&CpuBackend, cli.cmd),
        Some(Device::Auto) => match CudaBackend::new() {
            Ok(be) => run_on(&be, cli.cmd),
            Err(e) => {
                eprintln!("flint: no usable GPU ({e:#}); running on the CPU (f32 reference)");
                run_on(&CpuBackend, cli.cmd)
            }
        },
        Some(Device::Cuda) => {
            let be = CudaBackend::new().context("--device cuda")?;
            run_on(&be, cli.cmd)
        }
    }
}

fn run_on<B: Backend>(be: &B, cmd: Cmd) -> Result<()> {
    match cmd {
        // Picks its own backends; `run` handles it before choosing one.
        Cmd::Selftest { .. } | Cmd::BenchOps { .. } => {
            bail!("this command picks its own backend")
        }
        Cmd::Info { model } => info(&model),
        Cmd::Throughput {
            model,
            num_requests,
            input_len,
            output_len,
            range_ratio,
            request_rate,
            seed,
            sampling,
            num_blocks,
            gpu_memory_fraction,
            no_prefix_caching,
            enforce_eager,
            max_num_seqs,
            max_batch_tokens,
            output,
            quant,
            lm_head,
            ..
        } => {
            let opt = flint::throughput::ThroughputOptions {
                num_requests,
                input_len,
                output_len,
                range_ratio,
                request_rate,
                seed,
                sampling: sampling.params(seed),
                config: flint::engine::EngineConfig {
                    num_blocks,
                    block_size: flint::engine::BLOCK_SIZE,
                    max_num_seqs,
                    max_batch_tokens,
                    gpu_memory_fraction,
                    enable_prefix_caching: !no_prefix_caching,
                    cuda_graphs: !enforce_eager,
                },
                load: LoadOptions { quant, lm_head },
            };
            let r = flint::throughput::run(be, &ModelRef::parse(&model), &opt)?;
            match output {
                ThroughputFormat::Table => print!("{}", flint::throughput::to_table(&r)),
                ThroughputFormat::Json => println!("{}", flint::throughput::to_json(&r)),
            }
            Ok(())
        }
        Cmd::Logits {
            model,
            prompt_ids,
            all_positions,
            device: _,
            quant,
            lm_head,
        } => {
            let m = ModelRef::parse(&model).load_with(be, &LoadOptions { quant, lm_head })?;
            let logits = engine::prompt_logits(be, &m, &prompt_ids.0, all_positions)?;
            let rows: Vec<&[f32]> = logits.chunks(m.spec.vocab_size).collect();
            println!("{}", json!({ "logits": rows }));
            Ok(())
        }
        Cmd::Generate {
            model,
            prompt,
            prompt_ids,
            max_new_tokens,
            sampling,
            seed,
            ignore_eos,
            format,
            device: _,
            quant,
            lm_head,
        } => {
            let mref = ModelRef::parse(&model);
            let tok = match &mref {
                ModelRef::Dir(d) if d.join("tokenizer.json").exists() => {
                    Some(Tokenizer::from_dir(d)?)
                }
                _ => None,
            };
            let ids = match (prompt, prompt_ids) {
                (Some(text), None) => match &tok {
                    Some(t) => t.encode(&text, true)?,
                    None => bail!(
                        "--prompt needs a tokenizer.json in the model folder; use --prompt-ids"
                    ),
                },
                (None, Some(ids)) => ids.0,
                _ => bail!("give --prompt TEXT or --prompt-ids IDS"),
            };
            let m = mref.load_with(be, &LoadOptions { quant, lm_head })?;
            let mut eos = m.spec.eos_token_ids.clone();
            if let Some(t) = &tok {
                eos.extend(
                    t.eos_ids()
                        .into_iter()
                        .filter(|e| !m.spec.eos_token_ids.contains(e)),
                );
            }
            let opts = GenerateOptions {
                max_new_tokens,
                sampling: sampling.params(seed),
                eos_ids: eos,
                ignore_eos,
            };
            let mut stream = tok.as_ref().map(|t| DecodeStream::new(t, true));
            let mut out = std::io::stdout();
            let mut stream_err = None;
            let g = engine::generate_with(be, &m, &ids, &opts, |id| {
                if let (TextFormat::Text, Some(s)) = (format, stream.as_mut()) {
                    match s.step(id) {
                        Ok(Some(piece)) => {
                            let _ = write!(out, "{piece}");
                            let _ = out.flush();
                        }
                        Ok(None) => {}
                        Err(e) => stream_err = Some(e),
                    }
                }
            })?;
            if let Some(e) = stream_err {
                return Err(e.context("decoding generated tokens"));
            }
            if let (TextFormat::Text, Some(s)) = (format, stream.as_mut()) {
                // Text held back waiting for the rest of a character.
                if let Some(rest) = s.flush()? {
                    print!("{rest}");
                }
            }
            let text = match &tok {
                Some(t) => Some(t.decode(&g.tokens, true)?),
                None => None,
            };
            match format {
                TextFormat::Json => println!(
                    "{}",
                    json!({ "token_ids": g.tokens, "text": text, "finish_reason": g.finish.as_str() })
                ),
                TextFormat::Text if tok.is_some() => println!(),
                TextFormat::Text => {
                    let s: Vec<String> = g.tokens.iter().map(|t| t.to_string()).collect();
                    println!("{}", s.join(","));
                }
            }
            Ok(())
        }
        Cmd::Perplexity {
            model,
            text,
            ids,
            ctx,
            format,
            device: _,
            quant,
            lm_head,
        } => {
            let mref = ModelRef::parse(&model);
            let ids = match (text, ids) {
                (Some(path), None) => {
                    let ModelRef::Dir(d) = &mref else {
                        bail!("--text needs a model folder with tokenizer.json; use --ids");
                    };
                    let t = Tokenizer::from_dir(d)?;
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    t.encode(&text, true)?
                }
                (None, Some(ids)) => ids.0,
                _ => bail!("give --text FILE or --ids IDS"),
            };
            let m = mref.load_with(be, &LoadOptions { quant, lm_head })?;
            let r = flint::perplexity::perplexity(be, &m, &ids, ctx)?;
            let q = quant.map_or("none".to_string(), |q| q.to_string());
            match format {
                TextFormat::Json => println!(
                    "{}",
                    json!({ "model": model, "quant": q, "backend": be.name(), "ctx": ctx,
                            "tokens_scored": r.tokens_scored, "nll": r.mean_nll,
                            "perplexity": r.perplexity })
                ),
                TextFormat::Text => println!(
                    "{model} (quant {q}, {}): perplexity {:.4} over {} tokens (windows of {ctx})",
                    be.name(),
                    r.perplexity,
                    r.tokens_scored
                ),
            }
            Ok(())
        }
        Cmd::Tokenize {
            model,
            no_special_tokens,
            text,
        } => {
            let t = Tokenizer::from_dir(&model)?;
            println!("{}", json!({ "ids": t.encode(&text, !no_special_tokens)? }));
            Ok(())
        }
        Cmd::Bench {
            model,
            prompt,
            gen,
            depth,
            batch,
            reps,
            output,
            device: _,
            moe_layer: _,
            moe_tokens: _,
            quant,
            lm_head,
            cuda_graphs,
            pdl,
            unfused,
        } => {
            let on_cpu = be.name() == "cpu";
            let model = model.unwrap_or_else(|| {
                if on_cpu {
                    eprintln!("flint bench: on the CPU the default model is synthetic:tiny");
                    "synthetic:tiny".to_string()
                } else {
                    "synthetic:llama-3-8b".to_string()
                }
            });
            // CPU defaults are small: the reference backend is slow by design.
            let (pp, tg) = if on_cpu { (128, 32) } else { (512, 128) };
            let opt = BenchOptions {
                prompt: prompt.map_or(vec![pp], |p| p.0),
                gen: gen.map_or(vec![tg], |g| g.0),
                depth: depth.0,
                batch: batch.0,
                reps,
                cuda_graphs,
                pdl,
                unfused,
            };
            // Before the (long) load: a flag this device cannot run is an error at once.
            bench::check_options(be, &opt)?;
            let mref = ModelRef::parse(&model);
            let spec = mref.spec()?;
            let need = spec.param_count() * 4;
            if on_cpu && need > 8 << 30 {
                bail!(
                    "{model}: {:.1} GiB of f32 weights is too large for the CPU reference backend",
                    need as f64 / (1u64 << 30) as f64
                );
            }
            let m = mref.load_with(be, &LoadOptions { quant, lm_head })?;
            // On stderr (stdout is the table): long loads (an 8B synthetic model generated and
            // quantized on the host) are otherwise invisible in a captured log.
            let t = m.load_time;
            eprintln!(
                "flint bench: loaded {model}{} in {:.2} s ({:.2} s reading, generating and \
                 quantizing on the host, {:.2} s converting and uploading to {})",
                quant.map_or(String::new(), |q| format!(" ({q}, lm_head {lm_head})")),
                t.total.as_secs_f64(),
                t.source.as_secs_f64(),
                t.upload().as_secs_f64(),
                be.name()
            );
            let name = model.as_str();
            match output {
                TableFormat::Md => println!("{}", bench::markdown_header()),
                TableFormat::Csv => println!("{}", bench::csv_header()),
                TableFormat::Json => {}
            }
            let rows = bench::run(be, &m, &opt, |r| match output {
                TableFormat::Md => println!("{}", bench::markdown_row(name, be.name(), r)),
                TableFormat::Csv => println!("{}", bench::csv_row(name, be.name(), r)),
                TableFormat::Json => {}
            })?;
            if output == TableFormat::Json {
                println!(
                    "{}",
                    json!({ "model": name, "backend": be.name(), "weight_bytes": m.weight_bytes, "rows": rows })
                );
            }
            Ok(())
        }
    }
}

/// `flint bench --moe-layer`: see `flint::bench::moe`.
fn bench_moe_layer<W, B: Backend<Tensor = W, Weight = W>>(
    be: &B,
    model: Option<&str>,
    tokens: &[usize],
    reps: usize,
    quant: Option<QuantMode>,
    output: TableFormat,
) -> Result<()> {
    use flint::bench::moe;
    let name = model.unwrap_or("synthetic:mixtral-8x7b");
    let spec = ModelRef::parse(name).spec()?;
    if spec.moe.is_none() {
        bail!("bench --moe-layer: {name} has no MoE layers");
    }
    match output {
        TableFormat::Md => println!("{}", moe::markdown_header()),
        TableFormat::Csv => println!("{}", moe::csv_header()),
        TableFormat::Json => {}
    }
    let rows = moe::run(be, &spec, tokens, reps, quant, |r| match output {
        TableFormat::Md => println!("{}", moe::markdown_row(name, be.name(), r)),
        TableFormat::Csv => println!("{}", moe::csv_row(name, be.name(), r)),
        TableFormat::Json => {}
    })?;
    if output == TableFormat::Json {
        println!(
            "{}",
            json!({ "model": name, "backend": be.name(), "experts": quant.map_or("bf16".to_string(), |q| q.to_string()), "moe_layer": rows })
        );
    }
    Ok(())
}

/// `flint bench-ops`: the CUDA backend only (it times flint's own kernels).
fn bench_ops(only: Option<String>, budget_s: f64, case_s: f64, output: TableFormat) -> Result<()> {
    use flint::bench_ops::{self as ops, OpsOptions};
    let groups: Vec<String> = only
        .iter()
        .flat_map(|s| s.split(','))
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    let opt = OpsOptions {
        groups,
        budget_s,
        case_s,
    };
    ops::cases(&opt.groups)?;
    let be = CudaBackend::new()
        .context("bench-ops times flint's CUDA kernels and needs a usable GPU")?;
    let info = be.info().clone();
    match output {
        TableFormat::Md => println!("{}", ops::markdown_header()),
        TableFormat::Csv => println!("id,group,bytes,flops,median_s,min_s,enqueue_s,error"),
        TableFormat::Json => {}
    }
    let mut out = std::io::stdout();
    let rows = ops::run(&be, &opt, |r| {
        let line = match output {
            TableFormat::Md => ops::markdown_row(r),
            TableFormat::Csv => format!(
                "{},{},{},{},{},{},{},{}",
                r.id,
                r.group,
                r.bytes,
                r.flops,
                r.median_s.map_or(String::new(), |v| v.to_string()),
                r.min_s.map_or(String::new(), |v| v.to_string()),
                r.enqueue_s.map_or(String::new(), |v| v.to_string()),
                r.error.as_deref().unwrap_or("").replace(',', ";")
            ),
            TableFormat::Json => json!({ "row": r }).to_string(),
        };
        // Flushed per row: a run stopped by a timeout still leaves the rows it finished.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })?;
    if output == TableFormat::Json {
        println!(
            "{}",
            json!({
                "device": info.name,
                "compute_capability": format!("{}.{}", info.compute_capability.0, info.compute_capability.1),
                "num_sms": info.num_sms,
                "driver": info.driver,
                "rows": rows,
            })
        );
    }
    Ok(())
}

fn info(model: &str) -> Result<()> {
    let mref = ModelRef::parse(model);
    let spec = mref.spec()?;
    let params = spec.param_count();
    let checkpoint_bytes = match &mref {
        ModelRef::Dir(d) => Some(
            flint::weights::WeightStore::open(d)
                .with_context(|| format!("{model}: weights"))?
                .total_bytes(),
        ),
        ModelRef::Synthetic(_) => None,
    };
    let windows: Vec<Option<usize>> = spec.layers.iter().map(|l| l.sliding_window).collect();
    let v = json!({
        "model": model,
        "model_type": spec.model_type,
        "layers": spec.num_layers,
        "hidden": spec.hidden,
        "intermediate": spec.intermediate,
        "heads": spec.num_heads,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab": spec.vocab_size,
        "max_position": spec.max_position,
        "activation": format!("{:?}", spec.activation),
        "rope": spec.ropes,
        "sliding_windows": windows,
        "attn_softcap": spec.attn_softcap,
        "final_softcap": spec.final_softcap,
        "qk_norm": spec.qk_norm,
        "tied_embeddings": spec.tie_embeddings,
        "moe": spec.moe.as_ref().map(|m| json!({"experts": m.num_experts, "top_k": m.top_k, "expert_intermediate": m.expert_intermediate})),
        "parameters": params,
        "bf16_weight_bytes": params * 2,
        "checkpoint_bytes": checkpoint_bytes,
        "kv_bytes_per_token_bf16": 2 * spec.num_layers * spec.kv_dim() * 2,
        "quantization": match &mref {
            ModelRef::Dir(d) => flint::weights::quant::QuantConfig::from_dir(d)?.map(|q| format!("{q:?}")),
            ModelRef::Synthetic(_) => None,
        },
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
