//! Generation with a KV cache: sampling, stop conditions, streaming, and for every token
//! its id, log-prob and top-k alternatives.

use std::ops::ControlFlow;

use clawrl_kernels::ops;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tracing::{debug, info_span};

use crate::constrain::{self, Grammar};
use crate::error::{Error, Result};
use crate::model::{KvCache, Model, Policy, in_pool};

/// Largest `top_logprobs` a caller may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How the next token is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `0` is greedy.
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`.
    pub top_p: f32,
    /// Seed of the sampler; `None` draws one.
    pub seed: Option<u64>,
}

impl Sampling {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            seed: None,
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Upper bound on new tokens.
    pub max_tokens: usize,
    /// Sampler.
    pub sampling: Sampling,
    /// Strings that end generation; the text stops before them.
    pub stop: Vec<String>,
    /// Alternatives to record per token (0..=[`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: usize,
    /// Keep going past end-of-turn tokens (for benchmarks of a fixed length).
    pub ignore_eos: bool,
    /// What the output must match (constrained decoding); `None` leaves it free.
    pub grammar: Option<Grammar>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: Sampling::default(),
            stop: Vec::new(),
            top_logprobs: 0,
            ignore_eos: false,
            grammar: None,
        }
    }
}

impl GenerateParams {
    fn validate(&self) -> Result<()> {
        let s = &self.sampling;
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "temperature must be ≥ 0, got {}",
                s.temperature
            )));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top_p must be in (0, 1], got {}",
                s.top_p
            )));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(Error::InvalidArgument(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                self.top_logprobs
            )));
        }
        if self.max_tokens == 0 {
            return Err(Error::InvalidArgument(
                "max_tokens must be at least 1".into(),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidArgument(
                "stop strings must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// One generated token: what the model produced, as it produced it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenInfo {
    /// Token id.
    pub id: u32,
    /// `log π(id)` under the model's own distribution (temperature 1, no truncation).
    pub logprob: f32,
    /// The most likely alternatives, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// The result of a generation.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    /// The response text (without the end-of-turn token or a matched stop string).
    pub text: String,
    /// Every generated token, the end-of-turn token included when one was generated.
    pub tokens: Vec<TokenInfo>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

impl Generation {
    /// The generated ids.
    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }
}

impl Model {
    /// Generates a response to `prompt` (token ids), calling `on_token` once per generated token
    /// with the text that becomes final with it (text is held back while it could start a stop
    /// string or ends inside a character); the pieces concatenate to the response text.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: impl FnMut(&TokenInfo, &str) -> ControlFlow<()> + Send,
    ) -> Result<Generation> {
        self.policy(None).generate(prompt, params, on_token)
    }

    /// Checks that `grammar` compiles for this model, without generating: for servers that
    /// refuse a malformed schema before answering. Errors: [`Error::InvalidArgument`].
    pub fn check_grammar(&self, grammar: &Grammar) -> Result<()> {
        self.constraints
            .compile(&self.tokenizer, self.config.vocab_size, grammar)
            .map(|_| ())
    }
}

impl Policy<'_> {
    /// [`Model::generate`] with this policy's adapter.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: impl FnMut(&TokenInfo, &str) -> ControlFlow<()> + Send,
    ) -> Result<Generation> {
        in_pool(|| self.generate_in_pool(prompt, params, on_token))
    }

    fn generate_in_pool(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(&TokenInfo, &str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let (mut decoding, mut logits) = Decoding::start(*self, prompt, params.clone())?;
        // The decode steps' forward passes belong to the generation's span too.
        let span = decoding.span.clone();
        let _span = span.enter();
        loop {
            match decoding.step(self.model, logits, &mut on_token)? {
                Step::Next(id) => logits = self.forward(&[id], &mut decoding.cache, 1)?,
                Step::Done(finish) => return Ok(decoding.finish(finish)),
            }
        }
    }
}

/// What a sequence does after a token: run the model on it, or end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Feed this token and call [`Decoding::step`] with the logits after it.
    Next(u32),
    /// Generation ended.
    Done(FinishReason),
}

/// One generation in progress: its sampler, grammar, KV cache and the text so far. Advanced
/// a token at a time, alone ([`Policy::generate`]) or beside others ([`crate::Batcher`]).
pub(crate) struct Decoding {
    params: GenerateParams,
    rng: StdRng,
    constraint: Option<constrain::Constraint>,
    /// Keys and values of the prompt and every token fed back so far.
    pub(crate) cache: KvCache,
    tokens: Vec<TokenInfo>,
    text: String,
    /// Bytes of `text` already handed to the callback.
    emitted: usize,
    /// Bytes held back while they could start a stop string.
    hold: usize,
    /// New tokens allowed: `max_tokens`, capped by the context left.
    budget: usize,
    prompt_tokens: usize,
    span: tracing::Span,
}

impl Decoding {
    /// Checks `params`, compiles the grammar and prefills `prompt`. Returns the decoding and
    /// the logits of the prompt's last position (`vocab`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad parameters, an empty prompt or a grammar that does
    /// not compile; [`Error::ContextOverflow`] when no token fits after the prompt.
    pub(crate) fn start(
        policy: Policy<'_>,
        prompt: &[u32],
        params: GenerateParams,
    ) -> Result<(Self, Vec<f32>)> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        let model = policy.model;
        model.check_context(prompt.len(), 1)?;
        let span = info_span!(
            "generate",
            prompt = prompt.len(),
            max_tokens = params.max_tokens
        );
        let rng = match params.sampling.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let constraint = params
            .grammar
            .as_ref()
            .map(|g| {
                model
                    .constraints
                    .compile(&model.tokenizer, model.config.vocab_size, g)
            })
            .transpose()?;
        let mut cache = model.new_cache();
        let logits = span.in_scope(|| policy.forward(prompt, &mut cache, 1))?;
        let hold = params
            .stop
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        let decoding = Self {
            budget: params
                .max_tokens
                .min(model.config.context_length - prompt.len()),
            params,
            rng,
            constraint,
            cache,
            tokens: Vec::new(),
            text: String::new(),
            emitted: 0,
            hold,
            prompt_tokens: prompt.len(),
            span,
        };
        Ok((decoding, logits))
    }

    /// Draws the next token from `logits` (the model's output after the last token fed),
    /// calls `on_token` with it and the text that became final with it (text is held back
    /// while it could start a stop string or ends inside a character), and says what comes
    /// next.
    pub(crate) fn step(
        &mut self,
        model: &Model,
        mut logits: Vec<f32>,
        on_token: &mut dyn FnMut(&TokenInfo, &str) -> ControlFlow<()>,
    ) -> Result<Step> {
        let _span = self.span.enter();
        let params = &self.params;
        ops::log_softmax(&mut logits);
        // Under a grammar the token is drawn from π restricted to what the grammar
        // allows; the recorded log-prob stays π's own, as the trainer computes it.
        let id = match self.constraint.as_mut() {
            None => sample(&logits, &params.sampling, &mut self.rng),
            Some(c) => {
                let mut allowed = logits.clone();
                constrain::apply(&c.allowed()?, &mut allowed);
                let id = sample(&allowed, &params.sampling, &mut self.rng);
                if !model.tokenizer.is_end_of_generation(id) {
                    c.advance(id)?;
                }
                id
            }
        };
        let info = TokenInfo {
            id,
            logprob: logits[id as usize],
            top: ops::top_k(&logits, params.top_logprobs),
        };
        let eog = !params.ignore_eos && model.tokenizer.is_end_of_generation(id);
        self.tokens.push(info);
        let info = self.tokens.last().expect("just pushed");
        if eog {
            // The end-of-turn token adds no text; what was held back is final now.
            let _ = on_token(info, &self.text[self.emitted..]);
            return Ok(Step::Done(FinishReason::Stop));
        }
        let ids: Vec<u32> = self.tokens.iter().map(|t| t.id).collect();
        self.text = model.tokenizer.decode(&ids)?;
        let (text, emitted) = (&mut self.text, self.emitted);
        let stop_at = params
            .stop
            .iter()
            .filter_map(|s| {
                text[emitted.min(text.len())..]
                    .find(s.as_str())
                    .map(|i| i + emitted)
            })
            .min();
        if let Some(at) = stop_at {
            text.truncate(at);
        }
        let last = stop_at.is_some() || self.tokens.len() >= self.budget;
        // Emit what can no longer change: not a partial UTF-8 character, nor a possible stop
        // prefix; at the last token everything is final.
        let mut safe = if last {
            text.len()
        } else {
            text.len().saturating_sub(self.hold)
        };
        while !last
            && safe > emitted
            && (!text.is_char_boundary(safe) || text[..safe].ends_with('\u{FFFD}'))
        {
            safe -= 1;
        }
        let delta = if safe > emitted {
            &text[emitted..safe]
        } else {
            ""
        };
        let flow = on_token(info, delta);
        self.emitted = emitted.max(safe);
        Ok(if stop_at.is_some() {
            Step::Done(FinishReason::Stop)
        } else if flow.is_break() {
            Step::Done(FinishReason::Cancelled)
        } else if self.tokens.len() >= self.budget {
            Step::Done(FinishReason::Length)
        } else {
            Step::Next(id)
        })
    }

    /// The finished generation.
    pub(crate) fn finish(self, finish_reason: FinishReason) -> Generation {
        self.span.in_scope(|| {
            debug!(tokens = self.tokens.len(), ?finish_reason, "generated");
        });
        Generation {
            text: self.text,
            tokens: self.tokens,
            prompt_tokens: self.prompt_tokens,
            finish_reason,
        }
    }
}

/// Draws a token from log-probs `lp` (normalised, full vocabulary).
fn sample(lp: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    if s.temperature == 0.0 {
        return ops::top_k(lp, 1).first().map_or(0, |&(i, _)| i);
    }
    // Tempered log-probs, most likely first, cut at the nucleus. Tokens more than e^-30
    // below the best together hold < 1e-8 of the mass: leaving them out spares sorting the
    // whole vocabulary at every step.
    let max = lp.iter().copied().fold(f32::NEG_INFINITY, f32::max) / s.temperature;
    let mut cand: Vec<(u32, f32)> = lp
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / s.temperature))
        .filter(|&(_, l)| l >= max - 30.0)
        .collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut total = 0.0f64;
    let mut probs: Vec<f64> = Vec::with_capacity(cand.len());
    for &(_, l) in &cand {
        let p = ((l - max) as f64).exp();
        probs.push(p);
        total += p;
    }
    let mut keep = probs.len();
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p / total;
            if acc >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let mass: f64 = probs[..keep].iter().sum();
    let mut u = rng.random::<f64>() * mass;
    for (i, p) in probs[..keep].iter().enumerate() {
        u -= p;
        if u <= 0.0 {
            return cand[i].0;
        }
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_sampling_respects_the_nucleus() {
        let mut lp = vec![0.0, 3.0, 1.0, -2.0];
        ops::log_softmax(&mut lp);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&lp, &Sampling::greedy(), &mut rng), 1);
        // With a tiny nucleus only the top token survives.
        let narrow = Sampling {
            temperature: 1.0,
            top_p: 0.01,
            seed: None,
        };
        for _ in 0..20 {
            assert_eq!(sample(&lp, &narrow, &mut rng), 1);
        }
        let wide = Sampling {
            temperature: 5.0,
            top_p: 1.0,
            seed: None,
        };
        let drawn: std::collections::HashSet<u32> =
            (0..200).map(|_| sample(&lp, &wide, &mut rng)).collect();
        assert!(drawn.len() >= 3);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let bad = [
            GenerateParams {
                max_tokens: 0,
                ..Default::default()
            },
            GenerateParams {
                top_logprobs: 21,
                ..Default::default()
            },
            GenerateParams {
                sampling: Sampling {
                    temperature: -1.0,
                    top_p: 1.0,
                    seed: None,
                },
                ..Default::default()
            },
            GenerateParams {
                sampling: Sampling {
                    temperature: 1.0,
                    top_p: 0.0,
                    seed: None,
                },
                ..Default::default()
            },
            GenerateParams {
                stop: vec![String::new()],
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(
                matches!(p.validate(), Err(Error::InvalidArgument(_))),
                "{p:?}"
            );
        }
    }
}
