//! Reading a judge's answer: the vote in `\boxed{…}` and the hint between markers.

/// Longest hint kept, in characters; longer ones are cut at a character boundary.
const MAX_HINT_CHARS: usize = 1000;

/// The last `\boxed{1}`, `\boxed{-1}` or `\boxed{0}` in `text` (`+1` accepted too).
pub fn parse_vote(text: &str) -> Option<i8> {
    let mut found = None;
    let mut rest = text;
    while let Some(i) = rest.find("\\boxed{") {
        rest = &rest[i + "\\boxed{".len()..];
        let Some(end) = rest.find('}') else { break };
        found = match rest[..end].trim() {
            "1" | "+1" => Some(1),
            "-1" | "−1" => Some(-1),
            "0" => Some(0),
            _ => found,
        };
        rest = &rest[end..];
    }
    found
}

/// The hint between `[HINT_START]` and `[HINT_END]`, trimmed; `None` when absent or empty.
pub fn parse_hint(text: &str) -> Option<String> {
    let start = text.find("[HINT_START]")? + "[HINT_START]".len();
    let end = text[start..].find("[HINT_END]")? + start;
    let hint = text[start..end].trim();
    if hint.is_empty() {
        return None;
    }
    Some(hint.chars().take(MAX_HINT_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_come_from_the_last_box() {
        assert_eq!(parse_vote("so \\boxed{1}"), Some(1));
        assert_eq!(parse_vote("\\boxed{ -1 }"), Some(-1));
        assert_eq!(parse_vote("\\boxed{1} no wait \\boxed{0}"), Some(0));
        assert_eq!(parse_vote("\\boxed{maybe} \\boxed{+1}"), Some(1));
        assert_eq!(parse_vote("\\boxed{2}"), None);
        assert_eq!(parse_vote("\\boxed{1"), None);
        assert_eq!(parse_vote("no box"), None);
    }

    #[test]
    fn hints_come_from_between_the_markers() {
        assert_eq!(
            parse_hint("x [HINT_START] Answer in one word. [HINT_END] y").as_deref(),
            Some("Answer in one word.")
        );
        assert_eq!(parse_hint("[HINT_START]   [HINT_END]"), None);
        assert_eq!(parse_hint("[HINT_START] unterminated"), None);
        assert_eq!(parse_hint("[HINT_END] [HINT_START]"), None);
        let long = format!("[HINT_START]{}[HINT_END]", "é".repeat(2000));
        assert_eq!(parse_hint(&long).map(|h| h.chars().count()), Some(1000));
    }
}
