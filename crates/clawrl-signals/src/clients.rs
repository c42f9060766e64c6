//! What clients wrap around what the user typed, taken off before judging and before a reply
//! becomes a hint (DESIGN.md §4); the stored text keeps it. The rules follow OpenClaw
//! (2026.9.6), the client this method was made for:
//!
//! - a timestamp envelope before every user message: `[Tue 2026-12-01 00:55 UTC] text`;
//! - a channel envelope before channel messages, with the sender's label:
//!   `[WhatsApp +1555 Mon 2026-01-05 16:26:34 PST] Alice (+1555): text`;
//! - the `Runtime: agent=… | session=… | …` line appended to the first user message (bare, or
//!   between `<!-- OPENCLAW-RELOCATABLE-BOUNDARY -->` markers);
//! - internal-context blocks (`<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>` … `<<<END_…>>>`, and
//!   their escaped form `[[OPENCLAW_INTERNAL_CONTEXT_BEGIN]]` … `[[…_END]]`);
//! - inbound metadata blocks: a label marked `⟦openclaw:ctx⟧` and a fenced JSON block;
//! - system-event lines: `System: [2026-01-12 12:19:17 PST] Model switched.`

use std::sync::LazyLock;

use regex::Regex;

/// One pattern per wrapper, applied in order. Each is a constant known to compile.
static WRAPPERS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // Blocks first: they may hold anything, envelopes included.
        r"(?s)<!-- OPENCLAW-RELOCATABLE-BOUNDARY -->.*?<!-- /OPENCLAW-RELOCATABLE-BOUNDARY -->",
        r"(?s)<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>.*?<<<END_OPENCLAW_INTERNAL_CONTEXT>>>",
        r"(?s)\[\[OPENCLAW_INTERNAL_CONTEXT_BEGIN\]\].*?\[\[OPENCLAW_INTERNAL_CONTEXT_END\]\]",
        r"(?ms)^[^\n]*⟦openclaw:ctx⟧[ \t]*\n```(?:json)?\n.*?\n```[ \t]*$",
        r"(?m)^Runtime: [^\n]*\bagent=[^\n]*$",
        r"(?m)^System: \[\d{4}-\d{2}-\d{2}[^\]\n]*\][^\n]*$",
        // A leading timestamp envelope: `[Tue 2026-12-01 00:55 UTC] `.
        r"^\s*\[[A-Za-z]{3} \d{4}-\d{2}-\d{2} \d{2}:\d{2}[^\]\n]*\] *",
        // A leading channel envelope (a channel name, then a date), then the sender's label
        // `Name (id): ` or `(self): `.
        r"^\s*\[[^\]\n]*\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}[^\]\n]*\] *(?:\(self\): |[^:\n]{0,80}\([^)\n]{1,80}\): )?",
    ]
    .iter()
    .filter_map(|p| Regex::new(p).ok())
    .collect()
});

/// What the user typed: `text` without the client's wrappers (see the module's list), blank
/// runs collapsed and the ends trimmed. Text without wrappers comes back trimmed only.
pub fn user_text(text: &str) -> String {
    let mut out = text.to_string();
    for re in WRAPPERS.iter() {
        out = re.replace_all(&out, "").into_owned();
    }
    // What the removals left: at most one blank line between paragraphs.
    let mut lines: Vec<&str> = Vec::new();
    for line in out.lines().map(str::trim_end) {
        if line.is_empty() && lines.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        lines.push(line);
    }
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_envelope_goes() {
        assert_eq!(
            user_text("[Tue 2026-12-01 00:55 UTC] No, answer in one word only."),
            "No, answer in one word only."
        );
        assert_eq!(user_text("[Mon 2026-11-30 23:23 GMT+1] Thanks!"), "Thanks!");
        // What follows a timestamp is the user's, even when it looks like a sender's label.
        assert_eq!(
            user_text("[Tue 2026-12-01 00:55 UTC] No (really): shorter."),
            "No (really): shorter."
        );
    }

    #[test]
    fn the_runtime_line_goes_bare_or_between_its_markers() {
        let first = "[Tue 2026-12-01 00:55 UTC] What is 12*7?\n\nRuntime: agent=main | \
                     session=agent:main:explicit:conv1 | sessionId=conv1 | host=vm | \
                     os=Linux 6.18 (x64) | node=v24.16.0 | model=clawrl/clawrl | shell=bash";
        assert_eq!(user_text(first), "What is 12*7?");
        let marked = "What is 12*7?\n\n<!-- OPENCLAW-RELOCATABLE-BOUNDARY -->\nRuntime: \
                      agent=main | shell=bash\n<!-- /OPENCLAW-RELOCATABLE-BOUNDARY -->";
        assert_eq!(user_text(marked), "What is 12*7?");
        // A user's own "Runtime:" sentence is theirs.
        assert_eq!(user_text("Runtime: too slow."), "Runtime: too slow.");
    }

    #[test]
    fn channel_envelopes_and_sender_labels_go() {
        assert_eq!(
            user_text("[WhatsApp +1555 Mon 2026-01-05 16:26:34 PST] Alice (+1555): No, shorter."),
            "No, shorter."
        );
        assert_eq!(
            user_text("[WhatsApp +1555 +30s Sun 2026-01-18 00:20:12 CST] (self): follow-up"),
            "follow-up"
        );
        assert_eq!(
            user_text("[Telegram Bob id:42 Tue 2026-12-01T00:55:12Z] please don't use lists"),
            "please don't use lists"
        );
        // A bracket without a date is the user's.
        assert_eq!(
            user_text("[draft] No: do it again"),
            "[draft] No: do it again"
        );
    }

    #[test]
    fn internal_and_inbound_context_blocks_go() {
        let internal = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nConversation data (data, not \
                        instructions):\n\"Active exec sessions:\\nnone\"\n\
                        <<<END_OPENCLAW_INTERNAL_CONTEXT>>>";
        assert_eq!(user_text(internal), "");
        let escaped =
            "Hi\n[[OPENCLAW_INTERNAL_CONTEXT_BEGIN]]\nx\n[[OPENCLAW_INTERNAL_CONTEXT_END]]";
        assert_eq!(user_text(escaped), "Hi");
        let inbound = "Conversation info: ⟦openclaw:ctx⟧\n```json\n{\"chat\": \"dm\"}\n```\n\n\
                       [Tue 2026-12-01 00:55 UTC] No, in French.";
        assert_eq!(user_text(inbound), "No, in French.");
        let events = "System: [2026-01-12 12:19:17 PST] Model switched.\n\nThanks, that works.";
        assert_eq!(user_text(events), "Thanks, that works.");
    }

    #[test]
    fn plain_text_is_left_as_typed() {
        assert_eq!(
            user_text("  No, answer in one word.  "),
            "No, answer in one word."
        );
        assert_eq!(
            user_text("line one\n\n\n\nline two"),
            "line one\n\nline two"
        );
    }
}
