//! Overlap-guided hint selection (DESIGN.md §2).
//!
//! For every response position i, the student's support `S^q_i` (top-k of π_old) is compared
//! with each candidate hint's teacher support `S^p_{i,h}` (top-k of π_T(·|s_t ⊕ h)):
//! `O[h,i] = |S^q_i ∩ S^p_{i,h}|`. The hint the teacher agrees with the student on most is the
//! one whose token-level guidance is most on-policy.

use serde::{Deserialize, Serialize};

/// How the hint `h*` is chosen among the candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SelectionMode {
    /// `h* = argmax_h Σ_i O[h,i]` (the default).
    #[default]
    Sequence,
    /// `h*_i = argmax_h O[h,i]`, a hint per position.
    Token,
    /// Any candidate, drawn from a seed (ablation).
    Random,
    /// The longest hint, as the first public OpenClaw-RL release did (ablation).
    Longest,
}

impl SelectionMode {
    /// Parses `sequence`, `token`, `random` or `longest`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sequence" => Some(Self::Sequence),
            "token" => Some(Self::Token),
            "random" => Some(Self::Random),
            "longest" => Some(Self::Longest),
            _ => None,
        }
    }

    /// The name [`SelectionMode::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sequence => "sequence",
            Self::Token => "token",
            Self::Random => "random",
            Self::Longest => "longest",
        }
    }
}

impl std::str::FromStr for SelectionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| {
            format!("selection must be sequence, token, random or longest, not {s:?}")
        })
    }
}

impl std::fmt::Display for SelectionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `O[h][i] = |S^q_i ∩ S^p_{i,h}|` for student supports `student[i]` and teacher supports
/// `teachers[h][i]` (token ids; positions beyond a teacher's length count as no overlap).
pub fn overlap(student: &[Vec<u32>], teachers: &[Vec<Vec<u32>>]) -> Vec<Vec<usize>> {
    teachers
        .iter()
        .map(|t| {
            student
                .iter()
                .enumerate()
                .map(|(i, sq)| {
                    t.get(i)
                        .map_or(0, |sp| sq.iter().filter(|v| sp.contains(v)).count())
                })
                .collect()
        })
        .collect()
}

/// The chosen hint(s) and what they were chosen over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The rule that chose.
    pub mode: SelectionMode,
    /// `h*_i` for every response position: the teacher at position i is π_T(·|s_t ⊕ h*_i).
    /// All equal except in [`SelectionMode::Token`].
    pub per_position: Vec<usize>,
    /// `Σ_i O[h,i]` for every candidate.
    pub totals: Vec<usize>,
}

impl Selection {
    /// `h*` when one hint holds every position (always, except in token mode where positions
    /// chose differently); `None` then, and with no positions.
    pub fn sequence_hint(&self) -> Option<usize> {
        let first = *self.per_position.first()?;
        self.per_position
            .iter()
            .all(|&h| h == first)
            .then_some(first)
    }

    /// The candidates chosen at one position at least, in index order: the hints the sample
    /// trains on.
    pub fn used(&self) -> Vec<usize> {
        let mut used: Vec<usize> = self.per_position.clone();
        used.sort_unstable();
        used.dedup();
        used
    }

    /// Mean overlap `O[h*_i, i]` over positions, in tokens (entries missing from `o` count 0).
    pub fn mean_overlap(&self, o: &[Vec<usize>]) -> f64 {
        if self.per_position.is_empty() {
            return 0.0;
        }
        let sum: usize = self
            .per_position
            .iter()
            .enumerate()
            .map(|(i, &h)| o.get(h).and_then(|row| row.get(i)).copied().unwrap_or(0))
            .sum();
        sum as f64 / self.per_position.len() as f64
    }
}

/// Chooses among candidates given their overlap `o[h][i]` and lengths (in characters, for
/// `longest`). Ties go to the lower index; `seed` drives `random`. `None` when there is no
/// candidate.
pub fn select(
    o: &[Vec<usize>],
    hint_lengths: &[usize],
    mode: SelectionMode,
    seed: u64,
) -> Option<Selection> {
    if o.is_empty() {
        return None;
    }
    let positions = o[0].len();
    let totals: Vec<usize> = o.iter().map(|row| row.iter().sum()).collect();
    let argmax = |score: &dyn Fn(usize) -> usize| {
        // First maximum wins: ties are broken by candidate order, deterministically.
        (0..o.len()).fold(0, |best, h| if score(h) > score(best) { h } else { best })
    };
    let per_position = match mode {
        SelectionMode::Sequence => vec![argmax(&|h| totals[h]); positions],
        SelectionMode::Token => (0..positions).map(|i| argmax(&|h| o[h][i])).collect(),
        SelectionMode::Random => vec![(splitmix64(seed) % o.len() as u64) as usize; positions],
        SelectionMode::Longest => {
            vec![argmax(&|h| hint_lengths.get(h).copied().unwrap_or(0)); positions]
        }
    };
    Some(Selection {
        mode,
        per_position,
        totals,
    })
}

/// One step of SplitMix64: a well-mixed `u64` from a seed (the objective needs no RNG crate).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip() {
        for m in [
            SelectionMode::Sequence,
            SelectionMode::Token,
            SelectionMode::Random,
            SelectionMode::Longest,
        ] {
            assert_eq!(SelectionMode::parse(m.name()), Some(m));
        }
        assert_eq!(SelectionMode::parse("best"), None);
    }

    #[test]
    fn overlap_counts_shared_tokens_per_position() {
        let student = vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]];
        let teachers = vec![
            vec![vec![1, 2, 9, 10], vec![5, 6, 7, 11]],
            vec![vec![4, 3, 2, 1], vec![0, 0, 0, 0]],
        ];
        assert_eq!(overlap(&student, &teachers), vec![vec![2, 3], vec![4, 0]]);
    }

    #[test]
    fn each_mode_picks_as_defined() {
        // Hint 0: totals 5; hint 1: totals 4 but wins position 0.
        let o = vec![vec![2, 3], vec![4, 0]];
        let lens = [10, 30];
        let seq = select(&o, &lens, SelectionMode::Sequence, 0).expect("some");
        assert_eq!(seq.per_position, vec![0, 0]);
        assert_eq!(seq.totals, vec![5, 4]);
        assert!((seq.mean_overlap(&o) - 2.5).abs() < 1e-12);
        assert_eq!(
            select(&o, &lens, SelectionMode::Token, 0)
                .expect("some")
                .per_position,
            vec![1, 0]
        );
        assert_eq!(
            select(&o, &lens, SelectionMode::Longest, 0)
                .expect("some")
                .sequence_hint(),
            Some(1)
        );
        let r1 = select(&o, &lens, SelectionMode::Random, 42).expect("some");
        assert_eq!(
            r1,
            select(&o, &lens, SelectionMode::Random, 42).expect("some")
        );
        assert!(select(&[], &[], SelectionMode::Sequence, 0).is_none());
        let token = select(&o, &lens, SelectionMode::Token, 0).expect("some");
        assert_eq!(token.sequence_hint(), None);
        assert_eq!(token.used(), vec![0, 1]);
        assert_eq!(seq.used(), vec![0]);
    }

    #[test]
    fn ties_go_to_the_first_candidate() {
        let o = vec![vec![1, 1], vec![2, 0], vec![0, 2]];
        assert_eq!(
            select(&o, &[5, 5, 5], SelectionMode::Sequence, 0)
                .expect("some")
                .sequence_hint(),
            Some(0)
        );
        assert_eq!(
            select(&o, &[5, 5, 5], SelectionMode::Longest, 0)
                .expect("some")
                .sequence_hint(),
            Some(0)
        );
        assert_eq!(
            select(&o, &[5, 5, 5], SelectionMode::Token, 0)
                .expect("some")
                .per_position,
            vec![1, 2]
        );
    }

    #[test]
    fn random_covers_the_candidates_across_seeds() {
        let o = vec![vec![0]; 3];
        let seen: std::collections::HashSet<usize> = (0..64)
            .filter_map(|s| select(&o, &[1, 1, 1], SelectionMode::Random, s)?.sequence_hint())
            .collect();
        assert_eq!(seen.len(), 3);
    }
}
