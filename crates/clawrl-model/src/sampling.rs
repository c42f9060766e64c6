//! The sampling a model's makers recommend, used when a request names none: from the model's
//! own metadata where it has some (GGUF `general.sampling.temp` / `general.sampling.top_p`,
//! Hugging Face `generation_config.json`), else from a table of known models (their cards),
//! else OpenAI's defaults (1, 1). SmolLM2-135M-Instruct at OpenAI's 0.7–1.0 writes word
//! salad; its card says 0.2 / 0.9.

use serde::Serialize;

/// Where sampling defaults came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingSource {
    /// The model file's own metadata.
    Metadata,
    /// The table of known models (their model cards).
    KnownModel,
    /// Nothing known: OpenAI's defaults.
    OpenAi,
}

/// Temperature and top-p for requests that name none.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SamplingDefaults {
    /// Sampling temperature (f64 so that the API shows 0.2, not 0.2 widened from f32).
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Where the values came from.
    pub source: SamplingSource,
}

/// Recommended (temperature, top-p) of known model families, by a lowercase part of the name;
/// the first match wins. Sources: the SmolLM2 card; the `generation_config.json` of Qwen3,
/// Qwen2.5 and Llama 3 instruct releases.
const KNOWN: &[(&str, f64, f64)] = &[
    ("smollm2", 0.2, 0.9),
    ("qwen3", 0.6, 0.95),
    ("qwen2.5", 0.7, 0.8),
    ("llama-3", 0.6, 0.9),
    ("llama3", 0.6, 0.9),
];

impl SamplingDefaults {
    /// The defaults of a model known by `name` (a name or a path), else OpenAI's.
    pub fn for_name(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        match KNOWN.iter().find(|(k, _, _)| lower.contains(k)) {
            Some(&(_, temperature, top_p)) => Self {
                temperature,
                top_p,
                source: SamplingSource::KnownModel,
            },
            None => Self {
                temperature: 1.0,
                top_p: 1.0,
                source: SamplingSource::OpenAi,
            },
        }
    }

    /// The model's own recommendation where it states one (a value it omits comes from
    /// [`Self::for_name`]); values outside the API's ranges are ignored.
    pub fn from_metadata(temperature: Option<f64>, top_p: Option<f64>, name: &str) -> Self {
        let known = Self::for_name(name);
        let temperature = temperature.filter(|t| (0.0..=2.0).contains(t));
        let top_p = top_p.filter(|p| *p > 0.0 && *p <= 1.0);
        if temperature.is_none() && top_p.is_none() {
            return known;
        }
        Self {
            temperature: temperature.unwrap_or(known.temperature),
            top_p: top_p.unwrap_or(known.top_p),
            source: SamplingSource::Metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_then_the_table_then_openai() {
        let smol = SamplingDefaults::for_name("/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!((smol.temperature, smol.top_p), (0.2, 0.9));
        assert_eq!(smol.source, SamplingSource::KnownModel);
        let unknown = SamplingDefaults::for_name("tiny");
        assert_eq!(
            (unknown.temperature, unknown.top_p, unknown.source),
            (1.0, 1.0, SamplingSource::OpenAi)
        );
        let own = SamplingDefaults::from_metadata(Some(0.5), None, "SmolLM2");
        assert_eq!(
            (own.temperature, own.top_p, own.source),
            (0.5, 0.9, SamplingSource::Metadata)
        );
        let bad = SamplingDefaults::from_metadata(Some(9.0), Some(0.0), "tiny");
        assert_eq!(bad.source, SamplingSource::OpenAi);
    }
}
