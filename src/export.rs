//! `clawrl export gguf`: a trained assistant as one GGUF file, the base with its adapter
//! merged, for llama.cpp and Ollama.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use clawrl_model::MergedType;
use indicatif::{ProgressBar, ProgressStyle};

use crate::ModelSource;

#[derive(Subcommand)]
pub(crate) enum ExportCmd {
    /// The base model (--model, a GGUF file) with an adapter merged into it, written as a GGUF
    /// file that llama.cpp and Ollama load.
    Gguf(GgufArgs),
}

#[derive(Args)]
pub(crate) struct GgufArgs {
    /// The adapter: a directory in PEFT's layout (adapter_config.json,
    /// adapter_model.safetensors), as the Studio's File → Export adapter writes it.
    #[arg(long, value_name = "DIR", required_unless_present = "version")]
    adapter: Option<PathBuf>,
    /// Or a policy version a server trained: its checkpoint vN under --checkpoints.
    #[arg(long, value_name = "N", conflicts_with = "adapter", value_parser = clap::value_parser!(u64).range(1..))]
    version: Option<u64>,
    /// The server's checkpoints directory (default: the one `clawrl serve` writes by default,
    /// checkpoints/ in the user's data directory).
    #[arg(long, value_name = "DIR", requires = "version")]
    checkpoints: Option<PathBuf>,
    /// The GGUF file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Format of the merged projections (the other tensors keep the base's): f32 is the merge
    /// exactly; f16 and q8_0 are smaller and round it.
    #[arg(long, value_enum, default_value = "f32")]
    outtype: OutType,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutType {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

pub(crate) fn run(cmd: ExportCmd, source: &ModelSource) -> Result<()> {
    let ExportCmd::Gguf(a) = cmd;
    let base = source.path()?;
    if base.is_dir() {
        bail!(
            "{} is a Hugging Face directory: export gguf merges into a GGUF base (--model FILE.gguf); \
             the adapter itself loads in PEFT beside that directory",
            base.display()
        );
    }
    if a.out.exists() && !a.force {
        bail!("{} exists; pass --force to replace it", a.out.display());
    }
    let (dir, version) = match (a.adapter, a.version) {
        (Some(dir), _) => (dir, 0),
        (None, Some(v)) => {
            let root = match a.checkpoints {
                Some(c) => c,
                None => clawrl_server::default_data_dir()
                    .context("no user data directory here; pass --checkpoints")?
                    .join("checkpoints"),
            };
            let dir = root.join(format!("v{v}"));
            if !dir.is_dir() {
                bail!(
                    "no checkpoint of version {v} at {} (versions are listed by GET /studio/versions)",
                    dir.display()
                );
            }
            (dir, v)
        }
        (None, None) => bail!("pass --adapter DIR or --version N"),
    };
    let model = source.load()?;
    let adapter = clawrl_trainer::load_adapter(&model, &dir, version)
        .with_context(|| format!("loading the adapter in {}", dir.display()))?;
    drop(model);
    let merged_type = match a.outtype {
        OutType::F32 => MergedType::F32,
        OutType::F16 => MergedType::F16,
        OutType::Q8_0 => MergedType::Q8_0,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("merging");
    let summary =
        clawrl_model::merge_to_gguf(&base, &adapter, &a.out, merged_type, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .with_context(|| format!("exporting to {}", a.out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "Wrote {} ({:.1} MB): {} projections merged from {}, {} tensors copied from {}.",
        a.out.display(),
        summary.bytes as f64 / 1e6,
        summary.merged,
        dir.display(),
        summary.copied,
        base.display()
    );
    Ok(())
}
