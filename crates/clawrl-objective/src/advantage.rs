//! The evaluative signal: votes, the majority reward `r_t`, and advantages (DESIGN.md §2).

/// `r_t`: the majority of `m` votes in {+1, −1, 0}; ties (and no votes) give 0.
pub fn majority(votes: &[i8]) -> i8 {
    let up = votes.iter().filter(|&&v| v > 0).count();
    let down = votes.iter().filter(|&&v| v < 0).count();
    let zero = votes.len() - up - down;
    if up > down && up > zero {
        1
    } else if down > up && down > zero {
        -1
    } else {
        0
    }
}

/// General agents' step reward `R_t = o + (1/m)·Σ_j r_t^(j)` (o = outcome reward).
pub fn step_reward(outcome: f32, votes: &[i8]) -> f32 {
    if votes.is_empty() {
        return outcome;
    }
    outcome + votes.iter().map(|&v| f32::from(v)).sum::<f32>() / votes.len() as f32
}

/// Group advantages: each reward standardised among the actions that share its step index,
/// `(R − mean) / (std + 1e-6)`; a step index held by one action gets 0.
pub fn group_advantages(step_index: &[usize], rewards: &[f32]) -> Vec<f32> {
    debug_assert_eq!(step_index.len(), rewards.len());
    let mut out = vec![0.0; rewards.len()];
    let mut steps: Vec<usize> = step_index.to_vec();
    steps.sort_unstable();
    steps.dedup();
    for s in steps {
        let members: Vec<usize> = (0..rewards.len()).filter(|&i| step_index[i] == s).collect();
        let n = members.len() as f32;
        let mean = members.iter().map(|&i| rewards[i]).sum::<f32>() / n;
        let var = members
            .iter()
            .map(|&i| (rewards[i] - mean).powi(2))
            .sum::<f32>()
            / n;
        for &i in &members {
            out[i] = (rewards[i] - mean) / (var.sqrt() + 1e-6);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_with_ties_and_abstentions() {
        assert_eq!(majority(&[1]), 1);
        assert_eq!(majority(&[1, 1, -1]), 1);
        assert_eq!(majority(&[-1, -1, 0]), -1);
        assert_eq!(majority(&[1, -1]), 0);
        assert_eq!(majority(&[1, 0]), 0);
        assert_eq!(majority(&[0, 0, 1]), 0);
        assert_eq!(majority(&[]), 0);
    }

    #[test]
    fn step_rewards_and_group_standardisation_by_hand() {
        assert_eq!(step_reward(1.0, &[1, -1, 1, 1]), 1.5);
        assert_eq!(step_reward(0.5, &[]), 0.5);
        // Step 0 holds rewards 1 and 3 (mean 2, std 1); step 1 holds one action.
        let a = group_advantages(&[0, 1, 0], &[1.0, 5.0, 3.0]);
        assert!((a[0] + 1.0).abs() < 1e-5 && (a[2] - 1.0).abs() < 1e-5);
        assert_eq!(a[1], 0.0);
    }
}
