//! SAMPLE (DESIGN.md §1, §2): what a judged turn trains on — an RL part when r_t ≠ 0, an OPD
//! part when selection chose a hint — and how annotators' hints join the same selection. A turn
//! has one OPD part: every candidate (the judge's and the ones people accepted) competes under
//! one selection.

use clawrl_signals::{Verdict, candidate_hints, majority};
use clawrl_store::{
    Hint, HintRef, HintSource, HintStatus, Judgement, NewHint, NewSample, Rejection, Turn,
    TurnType, Vote,
};
use serde::Serialize;
use tracing::{info, warn};

use crate::Loop;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::select::analyse;

/// What judging one next state concluded, ready to store in one transaction.
pub struct Judged {
    /// Votes, new hints, the sample.
    pub judgement: Judgement,
    /// r_t.
    pub reward: i8,
    /// The candidates' texts, in the order the selection indexes them.
    pub candidates: Vec<String>,
    /// The candidates chosen at one position at least.
    pub used: Vec<usize>,
}

/// The hints of a turn that people accepted: they compete with every later judgement's.
fn accepted_by_people(hints: &[Hint]) -> Vec<&Hint> {
    hints
        .iter()
        .filter(|h| h.source == HintSource::Annotator && h.status == HintStatus::Accepted)
        .collect()
}

/// The judgement of `verdicts` on `turn`: r_t by majority of the readable votes, the judge's
/// hints and the turn's accepted annotator hints as candidates, the overlap-guided selection
/// among them, and the sample they yield.
pub async fn judge_turn(
    lp: &Loop,
    turn: &Turn,
    judge_name: &str,
    verdicts: &[Verdict],
) -> Result<Judged> {
    let reward = majority(verdicts);
    let new_hints = candidate_hints(verdicts);
    let stored = lp.store.hints_of(turn.id).await?;
    let people = accepted_by_people(&stored);
    let mut candidates = new_hints.clone();
    let mut refs: Vec<HintRef> = (0..new_hints.len()).map(HintRef::New).collect();
    for h in people {
        if !candidates.contains(&h.text) {
            candidates.push(h.text.clone());
            refs.push(HintRef::Stored(h.id));
        }
    }
    let settings = lp.settings();
    let analysis = if candidates.is_empty() || turn.response_ids.0.is_empty() {
        None
    } else {
        match analyse(lp, turn, &candidates, settings.top_k, settings.selection).await {
            Ok(a) => Some(a),
            // A teacher prompt that cannot be scored (s_t ⊕ h plus the response overflows the
            // context, or the template refuses it): the vote still trains, the hints stay
            // candidates, and the judge moves on instead of retrying forever.
            Err(Error::Invalid { message, .. }) => {
                warn!(turn_id = turn.id, %message, "no directive sample for this turn");
                None
            }
            Err(e) => return Err(e),
        }
    };
    let used = analysis
        .as_ref()
        .map(|a| a.selection.used())
        .unwrap_or_default();
    let opd = analysis.as_ref().and_then(|a| a.opd(refs));
    // An accepted answer after rejected ones: it also trains under the original prompt.
    let retry_of = if reward > 0 && turn.turn_type == TurnType::Main {
        lp.store.retried_turn(turn.id).await?
    } else {
        None
    };
    // A rollout's every step trains: its advantage comes at batch time, from the outcome and
    // the group's other steps (`train::batch_advantages`); a conversation's turn trains on r_t.
    let rollout = lp.store.session(&turn.session_id).await?.group_id.is_some();
    let sample = (reward != 0 || opd.is_some() || rollout).then(|| NewSample {
        turn_id: turn.id,
        advantage: (reward != 0 && !rollout).then_some(f64::from(reward)),
        opd,
        retry_of,
    });
    let judgement = Judgement {
        votes: verdicts
            .iter()
            .map(|v| Vote {
                judge: judge_name.to_string(),
                value: v.value.map(i64::from),
                raw: v.raw.clone(),
                // The store gives a vote the key of the next state it judged.
                key_id: None,
            })
            .collect(),
        hints: new_hints
            .iter()
            .enumerate()
            .map(|(i, h)| NewHint {
                text: h.clone(),
                source: HintSource::Judge,
                author: judge_name.to_string(),
                overlap: analysis
                    .as_ref()
                    .and_then(|a| a.selection.totals.get(i))
                    .map(|&t| t as i64),
                status: if used.contains(&i) {
                    HintStatus::Accepted
                } else {
                    HintStatus::Candidate
                },
                key_id: None,
            })
            .collect(),
        sample,
    };
    Ok(Judged {
        judgement,
        reward,
        candidates,
        used,
    })
}

/// A turn that can train: a main turn with a response.
pub async fn trainable_turn(lp: &Loop, id: i64) -> Result<Turn> {
    let t = lp.store.turn(id).await?;
    if t.turn_type == TurnType::Side {
        return Err(Error::invalid(format!(
            "turn {id} is a side turn: side turns are served, never trained on"
        )));
    }
    if t.response_ids.0.is_empty() {
        return Err(Error::invalid(format!("turn {id} has an empty response")));
    }
    Ok(t)
}

/// What accepting a hint did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Accepted {
    /// The hint.
    pub hint_id: i64,
    /// The turn's sample that now carries the selection.
    pub sample_id: i64,
    /// The candidates' hint ids, in selection order.
    pub candidates: Vec<i64>,
    /// The hint ids chosen at one position at least: whether the accepted hint teaches.
    pub chosen: Vec<i64>,
}

/// Accepts a person's hint: it joins the turn's candidates (the judge's, and hints accepted
/// before), selection runs over all of them under the live policy, and the turn's one pending
/// sample takes the result (a new sample when none is pending).
pub async fn accept_hint(lp: &Loop, hint_id: i64) -> Result<Accepted> {
    let hint = lp.store.hint(hint_id).await?;
    if hint.status == HintStatus::Accepted {
        return Err(Error::Conflict(format!(
            "hint {hint_id} is already accepted"
        )));
    }
    let turn = trainable_turn(lp, hint.turn_id).await?;
    let stored = lp.store.hints_of(turn.id).await?;
    let mut pool: Vec<&Hint> = stored
        .iter()
        .filter(|h| {
            h.id != hint_id
                && h.status != HintStatus::Rejected
                && (h.source == HintSource::Judge || h.status == HintStatus::Accepted)
        })
        .collect();
    pool.push(&hint);
    let texts: Vec<String> = pool.iter().map(|h| h.text.clone()).collect();
    let settings = lp.settings();
    let analysis = analyse(lp, &turn, &texts, settings.top_k, settings.selection).await?;
    let ids: Vec<i64> = pool.iter().map(|h| h.id).collect();
    let opd = analysis
        .opd(ids.iter().map(|&id| HintRef::Stored(id)).collect())
        .ok_or_else(|| Error::invalid(format!("turn {} has nothing to select over", turn.id)))?;
    let sample_id = lp.store.accept_hint(hint_id, turn.id, &opd).await?;
    let chosen: Vec<i64> = analysis
        .selection
        .used()
        .into_iter()
        .filter_map(|h| ids.get(h).copied())
        .collect();
    info!(hint_id, sample_id, ?chosen, "hint accepted");
    lp.emit(Event::Hint {
        hint_id,
        turn_id: turn.id,
        status: HintStatus::Accepted,
    });
    lp.emit(Event::Sample {
        sample_id,
        turn_id: turn.id,
        pending: lp.store.count_pending().await?,
    });
    lp.wake_trainer();
    Ok(Accepted {
        hint_id,
        sample_id,
        candidates: ids,
        chosen,
    })
}

/// Adds a person's candidate hint to a turn (it trains only once accepted); `author` names
/// the key `key_id` that sent it. Returns its id.
pub async fn add_hint(
    lp: &Loop,
    turn_id: i64,
    text: String,
    (author, key_id): (String, Option<i64>),
) -> Result<i64> {
    let turn = trainable_turn(lp, turn_id).await?;
    let settings = lp.settings();
    let a = analyse(
        lp,
        &turn,
        std::slice::from_ref(&text),
        settings.top_k,
        settings.selection,
    )
    .await?;
    let hint_id = lp
        .store
        .add_hint(
            turn_id,
            &NewHint {
                text,
                source: HintSource::Annotator,
                author,
                overlap: a.selection.totals.first().map(|&t| t as i64),
                status: HintStatus::Candidate,
                key_id,
            },
        )
        .await?;
    lp.emit(Event::Hint {
        hint_id,
        turn_id,
        status: HintStatus::Candidate,
    });
    Ok(hint_id)
}

/// Rejects a hint: it never trains, and the pending samples that use it are dropped.
pub async fn reject_hint(lp: &Loop, hint_id: i64) -> Result<()> {
    let h = lp.store.hint(hint_id).await?;
    lp.store.reject_hint(hint_id).await?;
    lp.emit(Event::Hint {
        hint_id,
        turn_id: h.turn_id,
        status: HintStatus::Rejected,
    });
    Ok(())
}

/// What rejecting a key's contributions did, and the version that serves after it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KeyRejection {
    /// What the store changed.
    #[serde(flatten)]
    pub rejection: Rejection,
    /// The version rolled back to, when one of its samples had trained (or was training).
    pub rolled_back_to: Option<i64>,
}

/// Rejects everything key `key_id` contributed (poisoning): its hints, its next states, and
/// every sample they touched ([`clawrl_store::Store::reject_key`]); when any of those had
/// trained, serving rolls back to the version before the first that trained on one (the
/// samples trained since, clean ones, train again). A step running meanwhile finishes first:
/// its samples may have been among them, so then the version served before it comes back.
pub async fn reject_key(lp: &Loop, key_id: i64) -> Result<KeyRejection> {
    let served_before = lp.live().version;
    let rejection = lp.store.reject_key(key_id).await?;
    let target = match rejection.first_version {
        Some(v) => Some((v - 1).max(0)),
        None if rejection.samples_dropped > 0 => Some(served_before),
        None => None,
    };
    if let Some(v) = target {
        lp.activate(v).await?;
    }
    info!(key_id, ?rejection, rolled_back_to = ?target, "rejected a key's contributions");
    lp.wake_trainer();
    Ok(KeyRejection {
        rejection,
        rolled_back_to: target,
    })
}
