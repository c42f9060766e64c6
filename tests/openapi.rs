//! The served OpenAPI document is true: schemathesis (pinned in `scripts/install-deps`) runs
//! every check it has (`--checks all`) against a real `clawrl serve` with an owner key — the
//! embedded model, answers capped at 4 tokens — and finds nothing: schema-valid requests are
//! accepted, schema-violating ones refused, every status and body answered is documented, and
//! every operation that declares a key refuses a request without one.

mod common;

use std::path::PathBuf;
use std::process::Command;

const OWNER: &str = "owner-key-schemathesis-0123";

/// The `st` of the virtual environment `scripts/install-deps` made.
fn schemathesis() -> PathBuf {
    let cache = std::env::var_os("CLAWRL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/clawrl")))
        .expect("CLAWRL_CACHE_DIR or HOME");
    let st = cache.join("schemathesis-venv/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run scripts/install-deps",
        st.display()
    );
    st
}

#[test]
fn schemathesis_finds_nothing_with_every_check() {
    let st = schemathesis();
    let dir = tempfile::tempdir().expect("dir");
    let server = common::serve_with(
        dir.path(),
        &["--owner-key", OWNER, "--max-new-tokens", "4"],
        None,
    );
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let out = Command::new(&st)
        .args(["--config-file", config, "--no-color", "run"])
        .arg(format!("{}/openapi.json", server.url))
        .args(["--checks", "all"])
        .args(["-H", &format!("Authorization: Bearer {OWNER}")])
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    // The summary, for the log of a passing run too.
    let summary = report.lines().rev().take(30).collect::<Vec<_>>();
    eprintln!(
        "{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("28 selected"), "every operation was tested");
}
