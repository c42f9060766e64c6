//! `clawrl agent train` end to end: the real binary with the embedded model runs the held-out
//! episodes, a group of rollouts whose outcomes reach the loop, the training they feed, and the
//! held-out episodes again, and reports both rates (slow: about a minute).

use std::process::Command;

use serde_json::{Value, json};

#[test]
fn agent_train_reports_success_before_and_after_the_steps_it_trained() {
    // A task file of our own in GSM8K's shape (the held-out split starts at task 1000).
    let dir = tempfile::tempdir().expect("dir");
    let tasks = dir.path().join("tasks.json");
    let all: Vec<Value> = (0..1002)
        .map(|i| json!({"question": format!("What is {i} + 1?"), "ground_truth_answer": format!("#### {}", i + 1)}))
        .collect();
    std::fs::write(&tasks, Value::from(all).to_string()).expect("tasks written");
    let out = Command::new(env!("CARGO_BIN_EXE_clawrl"))
        .args([
            "agent",
            "train",
            "--env",
            "tool-call",
            "--call-first",
            "--n",
            "2",
            "--train-tasks",
            "1",
            "--group-size",
            "2",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--max-tokens",
            "96",
            "--json",
            "--tasks",
        ])
        .arg(&tasks)
        .output()
        .expect("clawrl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one line of JSON");
    assert_eq!(report["env"], "tool-call");
    assert_eq!(report["tasks"], 2);
    assert_eq!(report["first_task"], 1000);
    assert_eq!(report["train_tasks"], 1);
    assert_eq!(report["settings"]["delta_clip"], 2.0, "the agentic preset");
    assert_eq!(report["settings"]["beta"], 0.01);
    for key in ["success_before", "success_after"] {
        let rate = report[key].as_f64().expect(key);
        assert!((0.0..=1.0).contains(&rate), "{report}");
    }
    // The forced first call: every held-out episode used the calculator.
    assert_eq!(report["called_a_tool_before"], 1.0, "{report}");
    let seed = &report["per_seed"][0];
    // Two rollouts of at least one judged step each: at least one step of batch 2 trained,
    // and what was left was flushed.
    assert!(seed["steps"].as_i64().is_some_and(|s| s >= 1), "{report}");
    assert_eq!(seed["policy_version"], seed["steps"], "{report}");
    // Every held-out episode, before and after, with its steps and seed.
    for key in ["episodes_before", "episodes_after"] {
        let eps = report[key].as_array().expect(key);
        assert_eq!(eps.len(), 2, "{report}");
        assert!(eps.iter().all(|e| e["seed"] == 0 && e["steps"].is_array()));
    }
}

#[test]
fn the_tutor_is_refused_where_there_is_no_solution_to_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_clawrl"))
        .args(["agent", "train", "--env", "tool-call", "--tutor"])
        .output()
        .expect("clawrl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--tutor is for --env terminal"), "{stderr}");
}
