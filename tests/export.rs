//! `clawrl export gguf` end to end: a real adapter (the learning demo's OPD steps) saved as a
//! server's checkpoint, exported by version, loaded back with `--model`, and scored like the
//! base with `--adapter`; refusals that write nothing.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn clawrl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clawrl"))
        .args(args)
        .output()
        .expect("runs")
}

fn ok(args: &[&str]) -> String {
    let out = clawrl(args);
    assert!(
        out.status.success(),
        "clawrl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(args: &[&str]) -> String {
    let out = clawrl(args);
    assert!(!out.status.success(), "clawrl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Log-probs of a fixed response, with the extra flags before `score`.
fn logprobs(flags: &[&str], request: &Path, after: &[&str]) -> Vec<f64> {
    let mut args: Vec<&str> = flags.to_vec();
    args.push("score");
    let request = request.to_str().expect("utf-8 path");
    args.push(request);
    args.extend_from_slice(after);
    let v: Value = serde_json::from_str(&ok(&args)).expect("JSON");
    v["scores"][0]["logprobs"]
        .as_array()
        .expect("logprobs")
        .iter()
        .filter_map(Value::as_f64)
        .collect()
}

#[test]
fn an_exported_version_scores_like_the_base_with_its_adapter() {
    let dir = tempfile::tempdir().expect("dir");
    let checkpoints = dir.path().join("checkpoints");
    let v1 = checkpoints.join("v1");
    ok(&[
        "demo",
        "train",
        "--steps",
        "1",
        "--save",
        v1.to_str().expect("utf-8"),
    ]);
    let out = dir.path().join("merged.gguf");
    let out_s = out.to_str().expect("utf-8");
    let cp = checkpoints.to_str().expect("utf-8");
    let export_v1 = [
        "export",
        "gguf",
        "--version",
        "1",
        "--checkpoints",
        cp,
        "--out",
        out_s,
    ];
    ok(&export_v1);
    assert!(out.metadata().expect("written").len() > 100_000_000);

    let request = dir.path().join("score.json");
    std::fs::write(
        &request,
        json!({"prompts": [[{"role": "user", "content": "Write a poem about the ocean."}]],
               "response": "Waves roll in under a grey sky.", "top_k": 0})
        .to_string(),
    )
    .expect("request");
    let adapted = logprobs(&[], &request, &["--adapter", v1.to_str().expect("utf-8")]);
    let base = logprobs(&[], &request, &[]);
    let merged = logprobs(&["--model", out_s], &request, &[]);
    let gap = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    assert_eq!(adapted.len(), merged.len());
    assert!(
        gap(&adapted, &merged) < 1e-3,
        "merged {merged:?} vs adapter {adapted:?}"
    );
    assert!(
        gap(&adapted, &base) > 10.0 * gap(&adapted, &merged),
        "the adapter changes nothing measurable: {adapted:?} vs {base:?}"
    );

    // The merged file generates on its own.
    ok(&[
        "--model",
        out_s,
        "generate",
        "--greedy",
        "--max-tokens",
        "8",
        "Hi!",
    ]);

    // Refusals: an existing file, a version that was never saved, a missing adapter.
    let before = out.metadata().expect("written").modified().expect("mtime");
    let e = refused(&export_v1);
    assert!(e.contains("--force"), "{e}");
    assert_eq!(
        out.metadata().expect("kept").modified().expect("mtime"),
        before
    );
    let other = dir.path().join("other.gguf");
    let other_s = other.to_str().expect("utf-8");
    let e = refused(&[
        "export",
        "gguf",
        "--version",
        "7",
        "--checkpoints",
        cp,
        "--out",
        other_s,
    ]);
    assert!(e.contains("no checkpoint of version 7"), "{e}");
    let nowhere = dir.path().join("nowhere");
    let e = refused(&[
        "export",
        "gguf",
        "--adapter",
        nowhere.to_str().expect("utf-8"),
        "--out",
        other_s,
    ]);
    assert!(e.contains("loading the adapter"), "{e}");
    let e = refused(&["export", "gguf", "--out", other_s]);
    assert!(e.contains("--adapter") || e.contains("--version"), "{e}");
    assert!(!other.exists());
}
