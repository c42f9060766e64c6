//! PAIR → JUDGE → SELECT → SAMPLE (DESIGN.md §1): a background worker judges each next state,
//! scores the teacher under every candidate hint, picks h* by overlap, and stores the turn's
//! RL and/or OPD sample in the same transaction as the votes and hints.

use std::time::Duration;

use clawrl_model::{Message, PositionScore};
use clawrl_objective::{SelectionMode, overlap, select};
use clawrl_signals::{
    Judge, JudgeInput, RulesJudge, Verdict, candidate_hints, majority, with_hint,
};
use clawrl_store::{
    HintRef, HintSource, HintStatus, Judgement, NewHint, NewSample, NextKind, NextState, Turn,
    TurnType, Vote,
};
use serde::Serialize;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::error::{ApiError, ApiResult};
use crate::state::{Event, Shared};

/// Runs until the process ends: judges pending next states as they arrive.
pub async fn run(s: Shared) {
    loop {
        let pending = match s.store.unjudged(16).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "reading next states");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if pending.is_empty() {
            tokio::select! {
                _ = s.judge_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            continue;
        }
        for ns in pending {
            let span = info_span!("judge", turn_id = ns.turn_id, next_state = ns.id);
            if let Err(e) = judge_one(&s, &ns).instrument(span).await {
                warn!(turn_id = ns.turn_id, error = %e.message, "judging failed; retrying later");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// The turn's conversation s_t.
pub fn messages_of(turn: &Turn) -> ApiResult<Vec<Message>> {
    serde_json::from_value(turn.messages.0.clone())
        .map_err(|e| ApiError::internal(format!("turn {}: stored messages: {e}", turn.id)))
}

fn to_signals(kind: NextKind) -> clawrl_signals::NextKind {
    match kind {
        NextKind::Reply => clawrl_signals::NextKind::Reply,
        NextKind::Feedback => clawrl_signals::NextKind::Feedback,
        NextKind::Tool => clawrl_signals::NextKind::Tool,
    }
}

async fn judge_one(s: &Shared, ns: &NextState) -> ApiResult<()> {
    let turn = s.store.turn(ns.turn_id).await?;
    if turn.turn_type == TurnType::Side {
        // Side turns are served, never trained on.
        s.store
            .record_judgement(ns.id, turn.id, &Judgement::default())
            .await?;
        return Ok(());
    }
    let messages = messages_of(&turn)?;
    // Explicit feedback means what it says: the rules judge reads it exactly.
    let (judge, m): (std::sync::Arc<dyn Judge>, usize) = if ns.kind == NextKind::Feedback {
        (std::sync::Arc::new(RulesJudge), 1)
    } else {
        (s.judge.clone(), s.votes)
    };
    let (msgs, response, next, kind) = (
        messages.clone(),
        turn.response.clone(),
        ns.text.clone(),
        to_signals(ns.kind),
    );
    let verdicts: Vec<Verdict> = tokio::task::spawn_blocking(move || {
        let input = JudgeInput {
            conversation: &msgs,
            response: &response,
            next_state: &next,
            kind,
        };
        (0..m)
            .map(|_| judge.judge(&input))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let judge_name = if ns.kind == NextKind::Feedback {
        "rules".to_string()
    } else {
        s.judge.name().to_string()
    };
    let reward = majority(&verdicts);
    let hints = candidate_hints(&verdicts);
    let settings = s.settings();
    let analysis = if hints.is_empty() || turn.response_ids.0.is_empty() {
        None
    } else {
        Some(
            analyse(
                s,
                &turn,
                &messages,
                &hints,
                settings.top_k,
                settings.selection_mode(),
            )
            .await?,
        )
    };
    let chosen = analysis.as_ref().and_then(|a| a.chosen);
    let sample = (reward != 0 || chosen.is_some()).then(|| NewSample {
        turn_id: turn.id,
        advantage: (reward != 0).then_some(f64::from(reward)),
        hint: chosen.map(HintRef::New),
        hint_prompt_ids: chosen.and_then(|c| analysis.as_ref().map(|a| a.hint_prompts[c].clone())),
        selection: analysis.as_ref().map(|a| a.record()),
    });
    let judgement = Judgement {
        votes: verdicts
            .iter()
            .map(|v| Vote {
                judge: judge_name.clone(),
                value: i64::from(v.value),
                raw: v.raw.clone(),
            })
            .collect(),
        hints: hints
            .iter()
            .enumerate()
            .map(|(i, h)| NewHint {
                text: h.clone(),
                source: HintSource::Judge,
                author: judge_name.clone(),
                overlap: analysis.as_ref().map(|a| a.totals[i] as i64),
                status: if Some(i) == chosen {
                    HintStatus::Accepted
                } else {
                    HintStatus::Candidate
                },
            })
            .collect(),
        sample,
    };
    let sample_id = s.store.record_judgement(ns.id, turn.id, &judgement).await?;
    info!(reward, hints = hints.len(), ?chosen, ?sample_id, "judged");
    s.emit(Event::Judged {
        turn_id: turn.id,
        reward,
        hints,
        chosen,
        sample_id,
    });
    if let Some(sample_id) = sample_id {
        let pending = s.store.count_pending().await?;
        s.emit(Event::Sample {
            sample_id,
            turn_id: turn.id,
            pending,
        });
        s.wake_trainer();
    }
    Ok(())
}

/// One response position as the inspector shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Position {
    /// The response token.
    pub token: String,
    /// Its id.
    pub id: u32,
    /// ℓ_old(y_i).
    pub logprob: f32,
    /// S^q_i with log-probs, as (id, text, log-prob).
    pub student: Vec<(u32, String, f32)>,
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
    /// S^p_{i,h} with log-probs per position, as (id, text, log-prob).
    pub teacher: Vec<Vec<(u32, String, f32)>>,
    /// Δ_v = clip(ℓ_T(v) − ℓ_old(v), −C, C) for v ∈ S^q_i, per position.
    pub delta: Vec<Vec<f32>>,
    /// Fraction of (i, v) whose gap was clipped.
    pub delta_clipped: f64,
}

/// The student and every candidate under the live policy, with the selection's choice.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    /// Selection mode used.
    pub mode: &'static str,
    /// k.
    pub k: usize,
    /// Per response position: the token and the student's top-k.
    pub positions: Vec<Position>,
    /// Per candidate hint.
    pub hints: Vec<HintView>,
    /// Σ_i O[h,i] per candidate.
    pub totals: Vec<usize>,
    /// h* per position.
    pub per_position: Vec<usize>,
    /// The hint the sample trains on (token mode: the one chosen at most positions).
    pub chosen: Option<usize>,
    /// s_t ⊕ h per candidate, token ids.
    #[serde(skip)]
    pub hint_prompts: Vec<Vec<u32>>,
}

impl Analysis {
    /// What is stored with the sample.
    pub fn record(&self) -> serde_json::Value {
        json!({
            "mode": self.mode,
            "k": self.k,
            "overlap": self.hints.iter().map(|h| &h.overlap).collect::<Vec<_>>(),
            "totals": self.totals,
            "per_position": self.per_position,
            "chosen": self.chosen,
        })
    }
}

/// Scores the response under s_t and under s_t ⊕ h for every hint with the live policy, and
/// selects h* (DESIGN.md §2: O[h,i] = |S^q_i ∩ S^p_{i,h}|).
pub async fn analyse(
    s: &Shared,
    turn: &Turn,
    messages: &[Message],
    hints: &[String],
    k: usize,
    mode: SelectionMode,
) -> ApiResult<Analysis> {
    let mut prompts = vec![turn.prompt_ids.0.clone()];
    for h in hints {
        prompts.push(
            s.model
                .chat_prompt(&with_hint(messages, h), None)
                .map_err(|e| {
                    ApiError::invalid(format!("the hint does not fit the template: {e}"))
                })?,
        );
    }
    let response = turn.response_ids.0.clone();
    if response.is_empty() {
        return Err(ApiError::invalid("the turn has an empty response"));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    s.model
        .check_context(longest, response.len())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let (model, adapter) = (s.model.clone(), s.live().adapter);
    let scoring = prompts.clone();
    // Scored deeper than k so that ℓ_T(v) for the student's v is exact far more often.
    let deep = clawrl_model::MAX_TOP_LOGPROBS.max(k);
    let rows: Vec<Vec<PositionScore>> = tokio::task::spawn_blocking(move || {
        model
            .policy(adapter.as_deref())
            .score(&scoring, &response, deep)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let tok = &s.model.tokenizer;
    let text = |id: u32| String::from_utf8_lossy(&tok.token_bytes(id)).into_owned();
    let ids = |row: &Vec<PositionScore>| -> Vec<Vec<u32>> {
        row.iter()
            .map(|p| p.top.iter().take(k).map(|t| t.0).collect())
            .collect()
    };
    let top = |p: &PositionScore| -> Vec<(u32, String, f32)> {
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
    let selection = select(&o, &lengths, mode, turn.id as u64);
    let clip = s.settings().delta_clip as f32;
    let positions = rows[0]
        .iter()
        .zip(&turn.response_ids.0)
        .map(|(p, &id)| Position {
            token: text(id),
            id,
            logprob: p.logprob,
            student: top(p),
        })
        .collect();
    let views = hints
        .iter()
        .enumerate()
        .map(|(h, hint)| {
            let teacher = &rows[h + 1];
            let (mut clipped, mut entries) = (0usize, 0usize);
            // ℓ_T(v) is exact within the teacher's deep top list; below it, the list's last
            // log-prob bounds ℓ_T(v) from above (the clip at −C usually reaches it anyway).
            let delta = rows[0]
                .iter()
                .zip(teacher)
                .map(|(st, te)| {
                    let floor = te.top.last().map_or(f32::NEG_INFINITY, |t| t.1);
                    st.top
                        .iter()
                        .take(k)
                        .map(|&(v, lp_old)| {
                            let lp_t = te.top.iter().find(|t| t.0 == v).map_or(floor, |t| t.1);
                            let gap = lp_t - lp_old;
                            entries += 1;
                            if gap.abs() > clip {
                                clipped += 1;
                            }
                            gap.clamp(-clip, clip)
                        })
                        .collect()
                })
                .collect();
            HintView {
                hint: hint.clone(),
                overlap_total: o[h].iter().sum(),
                overlap: o[h].clone(),
                teacher: teacher.iter().map(top).collect(),
                delta,
                delta_clipped: clipped as f64 / entries.max(1) as f64,
            }
        })
        .collect();
    let (totals, per_position, chosen) = match &selection {
        Some(sel) => (
            sel.totals.clone(),
            sel.per_position.clone(),
            most_frequent(&sel.per_position, hints.len()),
        ),
        None => (vec![0; hints.len()], Vec::new(), None),
    };
    Ok(Analysis {
        mode: mode.name(),
        k,
        positions,
        hints: views,
        totals,
        per_position,
        chosen,
        hint_prompts: prompts[1..].to_vec(),
    })
}

/// The hint chosen at most positions (ties → the lower index); `None` with no positions.
fn most_frequent(per_position: &[usize], n: usize) -> Option<usize> {
    let mut counts = vec![0usize; n];
    for &h in per_position {
        if let Some(c) = counts.get_mut(h) {
            *c += 1;
        }
    }
    let best = counts
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))?;
    (*best.1 > 0).then_some(best.0)
}
