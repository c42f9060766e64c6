//! SELECT (DESIGN.md §2): the response scored under s_t (the student) and under s_t ⊕ h for
//! every candidate hint (the teachers), with the live policy; O[h,i] = |S^q_i ∩ S^p_{i,h}|;
//! h* (sequence mode) or h*_i per position (token mode); Δ per token for the inspector.

use candle_core::{Device, Tensor};
use clawrl_model::{Message, Model, PositionScore};
use clawrl_objective::{Selection, SelectionMode, clipped_delta, overlap, select};
use clawrl_signals::with_hint;
use clawrl_store::{HintRef, NewOpd, Turn};
use serde::Serialize;

use crate::Loop;
use crate::error::{Error, Result};

/// A top-k entry as the inspector shows it: (token id, text, log-prob).
pub type TopEntry = (u32, String, f32);

/// One response position.
#[derive(Clone, Debug, Serialize)]
pub struct Position {
    /// The response token.
    pub token: String,
    /// Its id.
    pub id: u32,
    /// ℓ_old(y_i).
    pub logprob: f32,
    /// S^q_i with log-probs.
    pub student: Vec<TopEntry>,
}

/// One candidate hint's view of the response.
#[derive(Clone, Debug, Serialize)]
pub struct HintView {
    /// The hint.
    pub hint: String,
    /// Σ_i O[h,i].
    pub overlap_total: usize,
    /// O[h,i] per position.
    pub overlap: Vec<usize>,
    /// S^p_{i,h} with log-probs, per position.
    pub teacher: Vec<Vec<TopEntry>>,
    /// Δ_v = clip(ℓ_T(v) − ℓ_old(v), −C, C) for v ∈ S^q_i, per position (`[T][k]`).
    pub delta: Vec<Vec<f32>>,
    /// Fraction of (i, v) whose gap the clip changed.
    pub delta_clipped: f64,
}

/// The student and every candidate under the live policy, with the selection's choice.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    /// k of the supports.
    pub k: usize,
    /// Per response position: the token and the student's top-k.
    pub positions: Vec<Position>,
    /// Per candidate hint.
    pub hints: Vec<HintView>,
    /// The rule, h*_i per position and Σ_i O[h,i] per candidate (empty without candidates).
    #[serde(flatten)]
    pub selection: Selection,
    /// h* when one hint holds every position.
    pub chosen: Option<usize>,
    /// s_t ⊕ h per candidate (token ids).
    #[serde(skip)]
    pub prompts: Vec<Vec<u32>>,
}

impl Analysis {
    /// The directive part of a sample from this analysis, `candidates` naming its hints in the
    /// same order; `None` without candidates.
    pub fn opd(&self, candidates: Vec<HintRef>) -> Option<NewOpd> {
        if candidates.is_empty() || self.selection.per_position.is_empty() {
            return None;
        }
        Some(NewOpd {
            candidates,
            prompts: self.prompts.clone(),
            selection: self.selection.clone(),
            k: self.k,
            overlap: self.hints.iter().map(|h| h.overlap.clone()).collect(),
        })
    }
}

/// The turn's conversation s_t (the store keeps it as the request's JSON).
pub fn messages_of(turn: &Turn) -> Result<Vec<Message>> {
    serde_json::from_value(turn.messages.0.clone()).map_err(|e| {
        Error::invalid(format!(
            "turn {}: the stored messages do not read back: {e}",
            turn.id
        ))
    })
}

/// The teacher prompt s_t ⊕ h of a turn: its messages with the hint, its tools as the student
/// saw them, through the model's chat template.
pub fn teacher_prompt(
    model: &Model,
    turn: &Turn,
    messages: &[Message],
    hint: &str,
) -> Result<Vec<u32>> {
    let tools = turn.tools.as_ref().map(|t| &t.0);
    model
        .chat_prompt(&with_hint(messages, hint), tools)
        .map_err(|e| {
            Error::invalid_param("text", format!("the hint does not fit the template: {e}"))
        })
}

/// Scores the turn's response under s_t and under s_t ⊕ h for every hint with the live policy,
/// and selects by overlap (seeded by the turn id for `random`).
pub async fn analyse(
    lp: &Loop,
    turn: &Turn,
    hints: &[String],
    k: usize,
    mode: SelectionMode,
) -> Result<Analysis> {
    let response = turn.response_ids.0.clone();
    if response.is_empty() {
        return Err(Error::invalid(format!(
            "turn {} has an empty response",
            turn.id
        )));
    }
    let messages = messages_of(turn)?;
    let mut prompts = vec![turn.prompt_ids.0.clone()];
    for h in hints {
        prompts.push(teacher_prompt(&lp.model, turn, &messages, h)?);
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    lp.model
        .check_context(longest, response.len())
        .map_err(|e| Error::invalid(e.to_string()))?;
    let (model, adapter) = (lp.model.clone(), lp.live().adapter);
    let scoring = prompts.clone();
    let top = clawrl_model::MAX_TOP_LOGPROBS.max(k);
    let rows: Vec<Vec<PositionScore>> = tokio::task::spawn_blocking(move || {
        model
            .policy(adapter.as_deref())
            .score_on_support(&scoring, &response, top, k)
    })
    .await??;
    let tok = &lp.model.tokenizer;
    let text = |id: u32| String::from_utf8_lossy(&tok.token_bytes(id)).into_owned();
    let ids = |row: &Vec<PositionScore>| -> Vec<Vec<u32>> {
        row.iter()
            .map(|p| p.top.iter().take(k).map(|t| t.0).collect())
            .collect()
    };
    let entries = |p: &PositionScore| -> Vec<TopEntry> {
        p.top
            .iter()
            .take(k)
            .map(|&(v, lp)| (v, text(v), lp))
            .collect()
    };
    let student = ids(&rows[0]);
    let teachers: Vec<Vec<Vec<u32>>> = rows[1..].iter().map(ids).collect();
    let o = overlap(&student, &teachers);
    let lengths: Vec<usize> = hints.iter().map(|h| h.chars().count()).collect();
    let selection = select(&o, &lengths, mode, turn.id as u64).unwrap_or(Selection {
        mode,
        per_position: Vec::new(),
        totals: Vec::new(),
    });
    let clip = lp.settings().delta_clip;
    let support = |row: &Vec<PositionScore>| -> Vec<f32> {
        row.iter().flat_map(|p| p.support.iter().copied()).collect()
    };
    let lp_old = support(&rows[0]);
    let t = rows[0].len();
    let width = rows[0].first().map_or(0, |p| p.support.len());
    let mut views = Vec::with_capacity(hints.len());
    for (h, hint) in hints.iter().enumerate() {
        let lp_t = support(&rows[h + 1]);
        let (delta, clipped) = gaps(&lp_t, &lp_old, (t, width), clip)?;
        views.push(HintView {
            hint: hint.clone(),
            overlap_total: o[h].iter().sum(),
            overlap: o[h].clone(),
            teacher: rows[h + 1].iter().map(entries).collect(),
            delta,
            delta_clipped: clipped,
        });
    }
    let positions = rows[0]
        .iter()
        .zip(&turn.response_ids.0)
        .map(|(p, &id)| Position {
            token: text(id),
            id,
            logprob: p.logprob,
            student: entries(p),
        })
        .collect();
    Ok(Analysis {
        k,
        positions,
        hints: views,
        chosen: selection.sequence_hint(),
        selection,
        prompts: prompts.split_off(1),
    })
}

/// Δ per (i, v) by the objective's own clip, `[T][k]`, and the fraction the clip changed.
fn gaps(
    lp_t: &[f32],
    lp_old: &[f32],
    shape: (usize, usize),
    c: f64,
) -> Result<(Vec<Vec<f32>>, f64)> {
    let as_tensor = |v: &[f32]| Tensor::from_slice(v, shape, &Device::Cpu);
    let delta = clipped_delta(&as_tensor(lp_t)?, &as_tensor(lp_old)?, c)?.to_vec2::<f32>()?;
    let changed = lp_t
        .iter()
        .zip(lp_old)
        .filter(|(a, b)| (*a - *b).abs() as f64 > c)
        .count();
    Ok((delta, changed as f64 / lp_t.len().max(1) as f64))
}

#[cfg(test)]
mod tests {
    use clawrl_model::ChatTemplate;
    use clawrl_store::Json;
    use clawrl_store::TurnType;
    use serde_json::json;

    use super::*;

    /// A tiny model whose template renders tools, as tool-aware templates (Qwen's) do.
    fn tool_aware() -> Model {
        let tiny = Model::tiny(1);
        let source = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}\
                      {% if tools %}tools: {{ tools | tojson }}\n{% endif %}";
        let template = ChatTemplate::new(source, None, None).expect("compiles");
        Model::new(
            tiny.config.clone(),
            tiny.weights.clone(),
            tiny.tokenizer.clone(),
            template,
            "tiny, tool-aware".into(),
        )
        .expect("model")
    }

    #[test]
    fn the_teacher_prompt_keeps_the_requests_tools() {
        let model = tool_aware();
        let tools = json!([{"type": "function", "function": {"name": "calc"}}]);
        let messages = json!([{"role": "user", "content": "What is 6 times 7?"}]);
        let turn = Turn {
            id: 1,
            session_id: "s".into(),
            turn_type: TurnType::Main,
            messages: Json(messages),
            prompt_ids: Json(vec![1]),
            response: "42".into(),
            response_ids: Json(vec![5]),
            logprobs: Json(vec![-1.0]),
            top_logprobs: Json(vec![vec![]]),
            policy_version: 0,
            finish_reason: "stop".into(),
            created_at: 0,
            tools: Some(Json(tools.clone())),
            continuation: None,
            dropped_messages: 0,
        };
        let m = messages_of(&turn).expect("messages");
        let prompt = teacher_prompt(&model, &turn, &m, "Use the calculator.").expect("renders");
        let text = model.tokenizer.decode(&prompt).expect("decodes");
        assert!(text.contains("Use the calculator."), "{text}");
        assert!(
            text.contains("calc"),
            "the tools are gone from s_t ⊕ h: {text}"
        );
        // Exactly the student's prompt with the hint: the same tools, the same template.
        let student = model
            .chat_prompt(
                &clawrl_signals::with_hint(&m, "Use the calculator."),
                Some(&tools),
            )
            .expect("renders");
        assert_eq!(prompt, student);
    }
}
