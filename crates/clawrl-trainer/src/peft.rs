//! Adapters in Hugging Face PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`,
//! PEFT's tensor names), so they load in PEFT and vLLM; and training checkpoints (adapter,
//! optimizer moments, step) written atomically and resumable. Under full fine-tuning the
//! trained projections are saved instead, with Hugging Face's names (`model.safetensors`).
//!
//! GGUF Llama checkpoints store q/k rows permuted for adjacent-pair RoPE (llama.cpp's
//! converter); PEFT expects Hugging Face's half-split order, so B of q_proj/k_proj is
//! un-permuted on save and permuted back on load.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clawrl_model::{LoraAdapter, Model, RopeStyle};
use serde::{Deserialize, Serialize};

use crate::adamw::AdamWConfig;
use crate::error::{Error, Result};
use crate::lora::{LoraConfig, Target};
use crate::policy::TrainablePolicy;
use crate::trainer::{TrainConfig, Trainer};

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const FULL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";
const LATEST: &str = "latest";

#[derive(Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    task_type: String,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    target_modules: Vec<String>,
    bias: String,
    fan_in_fan_out: bool,
    inference_mode: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
}

fn tensor_name(layer: usize, t: Target, part: &str) -> String {
    format!("base_model.model.{}", weight_name(layer, t, Some(part)))
}

/// Hugging Face's name of block `layer`'s projection `t` (or of its adapter `part`).
fn weight_name(layer: usize, t: Target, part: Option<&str>) -> String {
    let parent = t.peft_parent();
    let name = t.peft_name();
    match part {
        Some(part) => format!("model.layers.{layer}.{parent}.{name}.{part}.weight"),
        None => format!("model.layers.{layer}.{parent}.{name}.weight"),
    }
}

/// Row order map between GGUF's interleaved q/k layout and Hugging Face's: `hf_row[g]` is the
/// Hugging Face row of GGUF row `g`.
fn hf_rows(heads: usize, head_dim: usize) -> Vec<u32> {
    let half = head_dim / 2;
    (0..heads * head_dim)
        .map(|g| {
            let (h, r) = (g / head_dim, g % head_dim);
            (h * head_dim + (r % 2) * half + r / 2) as u32
        })
        .collect()
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Io(format!("{} has no parent", path.display())))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| io(path, e))?;
    tmp.persist(path).map_err(|e| io(path, e.error))?;
    Ok(())
}

fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Io(format!("{} has no parent", path.display())))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(dir, e))?;
    candle_core::safetensors::save(tensors, tmp.path())?;
    tmp.persist(path).map_err(|e| io(path, e.error))?;
    Ok(())
}

/// Reads a PEFT adapter saved for `model` (any rank and targets) as a serving snapshot with
/// `version`.
pub fn load_adapter(model: &Model, dir: &Path, version: u64) -> Result<LoraAdapter> {
    let config = read_config(dir)?;
    let lora = LoraConfig {
        rank: config.r,
        alpha: config.lora_alpha,
        dropout: 0.0,
        targets: targets(&config, &dir.join(CONFIG_FILE))?,
    };
    let policy = TrainablePolicy::new(model, lora, 0)?;
    let mut trainer = Trainer::new(policy, AdamWConfig::default(), TrainConfig::default())?;
    trainer.load_peft(dir)?;
    Ok(trainer.policy.adapter_snapshot(version)?)
}

fn read_config(dir: &Path) -> Result<PeftConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Io(format!("{}: {e}", path.display())))
}

fn targets(config: &PeftConfig, path: &Path) -> Result<Vec<Target>> {
    config
        .target_modules
        .iter()
        .map(|m| {
            Target::parse(m)
                .ok_or_else(|| Error::Io(format!("{}: unknown target module {m}", path.display())))
        })
        .collect()
}

impl Trainer {
    /// For q/k of a GGUF Llama, `hf[g]` is the Hugging Face row of our row `g`.
    fn hf_rows_of(&self, t: Target) -> Option<Vec<u32>> {
        let c = self.policy.config();
        let heads = match t {
            Target::Q => c.heads,
            Target::K => c.kv_heads,
            _ => return None,
        };
        (c.rope_style == RopeStyle::Interleaved).then(|| hf_rows(heads, c.head_dim))
    }

    /// `rows` (our row order) in Hugging Face's order.
    fn to_hf(&self, t: Target, rows: &Tensor) -> Result<Tensor> {
        let Some(hf) = self.hf_rows_of(t) else {
            return Ok(rows.clone());
        };
        let mut inverse = vec![0u32; hf.len()];
        for (g, &h) in hf.iter().enumerate() {
            inverse[h as usize] = g as u32;
        }
        Ok(rows.index_select(&Tensor::new(inverse.as_slice(), &Device::Cpu)?, 0)?)
    }

    /// `rows` in Hugging Face's order, back in ours.
    fn to_ours(&self, t: Target, rows: &Tensor) -> Result<Tensor> {
        let Some(hf) = self.hf_rows_of(t) else {
            return Ok(rows.clone());
        };
        Ok(rows.index_select(&Tensor::new(hf.as_slice(), &Device::Cpu)?, 0)?)
    }

    /// Saves the adapters in PEFT's layout into `dir` (created if needed).
    pub fn save_peft(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        let lc = self.policy.lora_config().ok_or_else(|| {
            Error::Io("full fine-tuning has no adapter to save (save_full)".into())
        })?;
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let config = PeftConfig {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: lc.rank,
            lora_alpha: lc.alpha,
            lora_dropout: lc.dropout,
            target_modules: lc
                .targets
                .iter()
                .map(|t| t.peft_name().to_string())
                .collect(),
            bias: "none".into(),
            fan_in_fan_out: false,
            inference_mode: true,
            base_model_name_or_path: base_model.map(str::to_string),
        };
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Io(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (&(l, t), p) in &self.policy.lora {
            tensors.insert(tensor_name(l, t, "lora_A"), p.a.as_tensor().clone());
            tensors.insert(tensor_name(l, t, "lora_B"), self.to_hf(t, p.b.as_tensor())?);
        }
        save_tensors(&tensors, &dir.join(WEIGHTS_FILE))?;
        write_atomic(&dir.join(CONFIG_FILE), &json)
    }

    /// Loads adapters saved in PEFT's layout into this trainer's policy (same rank and targets).
    pub fn load_peft(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        let config = read_config(dir)?;
        let lc = self.policy.lora_config().ok_or_else(|| {
            Error::Io("full fine-tuning loads weights (load_full), not an adapter".into())
        })?;
        if config.r != lc.rank {
            return Err(Error::Io(format!(
                "the adapter has rank {}, the trainer {}",
                config.r, lc.rank
            )));
        }
        let mut targets = targets(&config, &path)?;
        let mut ours = lc.targets.clone();
        targets.sort();
        ours.sort();
        if targets != ours {
            return Err(Error::Io(format!(
                "{}: the adapter wraps {:?}, the trainer {:?}",
                path.display(),
                config.target_modules,
                ours
            )));
        }
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
        for (&(l, t), p) in &self.policy.lora {
            let get = |part: &str| {
                let name = tensor_name(l, t, part);
                tensors
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| Error::Io(format!("{}: missing {name}", weights.display())))
            };
            let (a, b) = (get("lora_A")?, self.to_ours(t, &get("lora_B")?)?);
            if a.dims() != p.a.dims() || b.dims() != p.b.dims() {
                return Err(Error::Io(format!(
                    "{}: block {l} {} has the wrong shape",
                    weights.display(),
                    t.peft_name()
                )));
            }
            p.a.set(&a)?;
            p.b.set(&b)?;
        }
        Ok(())
    }

    /// Saves full fine-tuning's projections into `dir/model.safetensors` with Hugging Face's
    /// names (a partial state dict: the frozen embedding and norms are the base's).
    pub fn save_full(&self, dir: &Path) -> Result<()> {
        if self.policy.full.is_empty() {
            return Err(Error::Io(
                "a LoRA policy saves an adapter (save_peft), not weights".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut tensors = HashMap::new();
        for (&(l, t), w) in &self.policy.full {
            tensors.insert(weight_name(l, t, None), self.to_hf(t, w.as_tensor())?);
        }
        save_tensors(&tensors, &dir.join(FULL_FILE))
    }

    /// Loads projections saved by [`Self::save_full`] into this full fine-tuning policy.
    pub fn load_full(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(FULL_FILE);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
        for (&(l, t), w) in &self.policy.full {
            let name = weight_name(l, t, None);
            let loaded = tensors
                .get(&name)
                .ok_or_else(|| Error::Io(format!("{}: missing {name}", path.display())))?;
            let loaded = self.to_ours(t, loaded)?;
            if loaded.dims() != w.dims() {
                return Err(Error::Io(format!(
                    "{}: {name} has the wrong shape",
                    path.display()
                )));
            }
            w.set(&loaded)?;
        }
        Ok(())
    }

    /// Writes a checkpoint (adapter or full weights, optimizer moments, step) under
    /// `root/step-N`, then points `root/latest` at it; each file lands through a rename, so a
    /// crash leaves the previous checkpoint whole. Returns the checkpoint's directory.
    pub fn save_checkpoint(&self, root: &Path) -> Result<PathBuf> {
        let dir = root.join(format!("step-{}", self.steps()));
        self.save_checkpoint_to(&dir)?;
        write_atomic(
            &root.join(LATEST),
            dir.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        )?;
        Ok(dir)
    }

    /// Writes a checkpoint into `dir` (created if needed), each file through a rename.
    pub fn save_checkpoint_to(&self, dir: &Path) -> Result<()> {
        if self.policy.full.is_empty() {
            self.save_peft(dir, None)?;
        } else {
            self.save_full(dir)?;
        }
        let (m, v, step) = self.optimizer.state();
        let mut tensors = HashMap::new();
        for (i, (m, v)) in m.iter().zip(v).enumerate() {
            tensors.insert(format!("m.{i}"), m.clone());
            tensors.insert(format!("v.{i}"), v.clone());
        }
        save_tensors(&tensors, &dir.join(OPTIMIZER_FILE))?;
        let state = TrainerState {
            step,
            adamw: self.optimizer.config.into(),
        };
        write_atomic(
            &dir.join(STATE_FILE),
            &serde_json::to_vec_pretty(&state).map_err(|e| Error::Io(e.to_string()))?,
        )
    }

    /// Resumes from the checkpoint `root/latest` points at; `Ok(None)` when there is none.
    pub fn resume(&mut self, root: &Path) -> Result<Option<usize>> {
        let latest = root.join(LATEST);
        let Ok(name) = std::fs::read_to_string(&latest) else {
            return Ok(None);
        };
        self.resume_from(&root.join(name.trim())).map(Some)
    }

    /// Resumes from the checkpoint in `dir`; returns its step.
    pub fn resume_from(&mut self, dir: &Path) -> Result<usize> {
        if self.policy.full.is_empty() {
            self.load_peft(dir)?;
        } else {
            self.load_full(dir)?;
        }
        let opt = candle_core::safetensors::load(dir.join(OPTIMIZER_FILE), &Device::Cpu)?;
        let n = self.policy.vars().len();
        let take = |p: &str, i: usize| {
            opt.get(&format!("{p}.{i}"))
                .cloned()
                .ok_or_else(|| Error::Io(format!("{}: missing {p}.{i}", dir.display())))
        };
        let m = (0..n).map(|i| take("m", i)).collect::<Result<Vec<_>>>()?;
        let v = (0..n).map(|i| take("v", i)).collect::<Result<Vec<_>>>()?;
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        self.optimizer.restore(m, v, state.step)?;
        // Hyper-parameters changed at run time survive the restart too.
        self.optimizer.config = state.adamw.into();
        Ok(state.step)
    }
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    adamw: AdamWState,
}

#[derive(Serialize, Deserialize)]
struct AdamWState {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    max_grad_norm: f64,
}

impl From<AdamWConfig> for AdamWState {
    fn from(c: AdamWConfig) -> Self {
        Self {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            max_grad_norm: c.max_grad_norm,
        }
    }
}

impl From<AdamWState> for AdamWConfig {
    fn from(s: AdamWState) -> Self {
        Self {
            lr: s.lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            weight_decay: s.weight_decay,
            max_grad_norm: s.max_grad_norm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hf_rows;

    #[test]
    fn the_row_map_undoes_llama_cpps_permutation() {
        // One head of 4: GGUF rows (0,1,2,3) hold HF rows (0,2,1,3).
        assert_eq!(hf_rows(1, 4), vec![0, 2, 1, 3]);
        assert_eq!(hf_rows(2, 4), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
