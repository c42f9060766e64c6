//! Scoring a fixed response: the log-prob of each response token and the top-k of the full
//! distribution at each position, under one or several prompts (the student prompt and the
//! hint-augmented teacher prompts of OPD).

use clawrl_kernels::ops;
use rayon::prelude::*;
use serde::Serialize;
use tracing::info_span;

use crate::error::{Error, Result};
use crate::model::{Model, Policy, in_pool};

/// The model's view of one response position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PositionScore {
    /// `log π(y_i | prompt, y_<i)`.
    pub logprob: f32,
    /// The `k` most likely tokens at this position with their log-probs, most likely first.
    pub top: Vec<(u32, f32)>,
    /// With [`Policy::score_on_support`]: the log-probs, under this prompt, of the first
    /// prompt's top-`support_k` tokens at this position, in that order (exact, wherever they
    /// rank here); empty otherwise.
    pub support: Vec<f32>,
}

impl Model {
    /// Scores `response` after each of `prompts`, returning one row of [`PositionScore`] per
    /// prompt. The prompts' common prefix is run once and shared.
    pub fn score(
        &self,
        prompts: &[Vec<u32>],
        response: &[u32],
        top_k: usize,
    ) -> Result<Vec<Vec<PositionScore>>> {
        self.policy(None).score(prompts, response, top_k)
    }
}

impl Policy<'_> {
    /// [`Model::score`] with this policy's adapter.
    pub fn score(
        &self,
        prompts: &[Vec<u32>],
        response: &[u32],
        top_k: usize,
    ) -> Result<Vec<Vec<PositionScore>>> {
        self.score_on_support(prompts, response, top_k, 0)
    }

    /// [`Self::score`], and at every position the log-probs of the first prompt's top
    /// `support_k` tokens under every prompt ([`PositionScore::support`]): the student's
    /// support S^q_i (prompt 0 = s_t) read under each teacher prompt s_t ⊕ h, as the OPD
    /// loss and the inspector's Δ need them (DESIGN.md §2). `support_k` ≤ `top_k`.
    pub fn score_on_support(
        &self,
        prompts: &[Vec<u32>],
        response: &[u32],
        top_k: usize,
        support_k: usize,
    ) -> Result<Vec<Vec<PositionScore>>> {
        if support_k > top_k {
            return Err(Error::InvalidArgument(format!(
                "support_k {support_k} exceeds top_k {top_k}"
            )));
        }
        in_pool(|| self.score_in_pool(prompts, response, top_k, support_k))
    }

    fn score_in_pool(
        &self,
        prompts: &[Vec<u32>],
        response: &[u32],
        top_k: usize,
        support_k: usize,
    ) -> Result<Vec<Vec<PositionScore>>> {
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::InvalidArgument("a prompt to score is empty".into()));
        }
        if let Some(&bad) = response
            .iter()
            .find(|&&t| t as usize >= self.model.config.vocab_size)
        {
            return Err(Error::InvalidArgument(format!(
                "response token id {bad} is outside the vocabulary of {}",
                self.model.config.vocab_size
            )));
        }
        for p in prompts {
            self.model.check_context(p.len(), response.len())?;
        }
        if response.is_empty() {
            return Ok(vec![Vec::new(); prompts.len()]);
        }
        let _span =
            info_span!("score", prompts = prompts.len(), response = response.len()).entered();
        // Keep at least the last token of every prompt out of the shared prefix: its logits
        // predict the first response token.
        let shared =
            common_prefix(prompts).min(prompts.iter().map(|p| p.len() - 1).min().unwrap_or(0));
        let mut base = self.model.new_cache();
        self.forward(&prompts[0][..shared], &mut base, 0)?;
        let t = response.len();
        let mut rows: Vec<Vec<PositionScore>> = Vec::with_capacity(prompts.len());
        for p in prompts {
            let mut cache = base.clone();
            let mut input = p[shared..].to_vec();
            input.extend_from_slice(&response[..t - 1]);
            let mut logits = self.forward(&input, &mut cache, t)?;
            let vocab = self.model.config.vocab_size;
            // The first prompt's top tokens, read at the same positions under this prompt.
            let first = rows.first();
            let row = logits
                .par_chunks_mut(vocab)
                .zip(response.par_iter())
                .enumerate()
                .map(|(i, (row, &y))| {
                    ops::log_softmax(row);
                    let top = ops::top_k(row, top_k);
                    let ids = first.map_or(&top, |f| &f[i].top);
                    let support = ids
                        .iter()
                        .take(support_k)
                        .map(|&(v, _)| row[v as usize])
                        .collect();
                    PositionScore {
                        logprob: row[y as usize],
                        top,
                        support,
                    }
                })
                .collect();
            rows.push(row);
        }
        Ok(rows)
    }
}

fn common_prefix(prompts: &[Vec<u32>]) -> usize {
    let Some(first) = prompts.first() else {
        return 0;
    };
    prompts.iter().skip(1).fold(first.len(), |n, p| {
        first
            .iter()
            .zip(p)
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_of_prompts() {
        assert_eq!(
            common_prefix(&[vec![1, 2, 3], vec![1, 2, 4], vec![1, 2, 3, 5]]),
            2
        );
        assert_eq!(common_prefix(&[vec![1, 2]]), 2);
        assert_eq!(common_prefix(&[]), 0);
    }
}
