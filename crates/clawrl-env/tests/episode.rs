//! An episode of the tool-call environment against the real server (tiny model, real SQLite
//! file): the forced first call is answered by the calculator, the answer goes back as the next
//! message, and the server records the steps as one session whose tool output is a next state.

use std::sync::Arc;

use clawrl_env::{Agent, Split, TerminalEnv, ToolCallEnv, calculator};
use clawrl_model::Model;
use clawrl_sim::Task;
use serde_json::Value;

/// A server of the tiny model on a scratch database, training paused (judging still runs):
/// the server, its base URL and the directory to keep alive.
async fn paused_server() -> (clawrl_server::Server, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = clawrl_server::ServerConfig::new("tiny", dir.path());
    config.bind = "127.0.0.1:0".parse().expect("addr");
    config.lp.training.paused = true;
    let server = clawrl_server::start(config, Arc::new(Model::tiny(5)))
        .await
        .expect("server");
    let base = format!("http://{}", server.addr);
    (server, base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_call_is_computed_and_comes_back_as_the_next_state() {
    let (server, base, _dir) = paused_server().await;
    let env = ToolCallEnv {
        tasks: vec![Task {
            question: "Tom has 3 bags of 14 apples. How many apples?".into(),
            ground_truth_answer: "#### 42".into(),
        }],
    };
    let mut agent = Agent::new(&base, None);
    agent.call_first = true;
    agent.max_steps = 2;
    agent.max_tokens = 120;
    let e = agent
        .episode(&env, 0, "env-test", None, 1)
        .await
        .expect("episode");
    let first = &e.steps[0];
    assert_eq!(first.calls.len(), 1, "{e:?}");
    let args = first.calls[0]
        .strip_prefix("calculator(")
        .and_then(|c| c.strip_suffix(')'))
        .expect("a calculator call");
    let expression: Value = serde_json::from_str(args).expect("JSON arguments");
    let expression = expression["expression"].as_str().expect("an expression");
    assert_eq!(first.observation, [calculator(expression)]);
    assert_eq!(e.steps.len(), 2, "{e:?}");

    // One session of two main turns; the first turn's next state is the calculator's output.
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(path)
                .send()
                .await
                .expect("GET")
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    let session = get(format!("{base}/studio/sessions/env-test")).await;
    assert_eq!(
        session["turns"].as_array().map(Vec::len),
        Some(2),
        "{session}"
    );
    let turn = get(format!("{base}/studio/turns/{}", first.turn_id)).await;
    assert_eq!(turn["next_states"][0]["kind"], "tool", "{turn}");
    assert_eq!(turn["next_states"][0]["text"], first.observation[0]);
    assert_eq!(session["session"]["done"], false, "{session}");

    // As a rollout of a group, the episode ends its session with the outcome, and the check's
    // verdict is the final answer's next state.
    let e = agent
        .episode(&env, 0, "env-rollout", Some("group-a"), 2)
        .await
        .expect("episode");
    let session = get(format!("{base}/studio/sessions/env-rollout")).await;
    assert_eq!(session["session"]["done"], true, "{session}");
    assert_eq!(session["session"]["group_id"], "group-a");
    let outcome = if e.success { 1.0 } else { 0.0 };
    assert_eq!(session["session"]["outcome"].as_f64(), Some(outcome));
    let last = e.steps.last().expect("a step");
    let turn = get(format!("{base}/studio/turns/{}", last.turn_id)).await;
    let next = turn["next_states"][0]["text"].as_str().unwrap_or_default();
    if e.truncated {
        assert_eq!(next, last.observation.join("\n\n"), "{turn}");
    } else {
        assert!(next.starts_with("The check"), "{turn}");
    }

    // Evaluation never trains: its answers are side turns, and no next state is paired.
    agent.evaluate = true;
    let e = agent
        .episode(&env, 0, "env-eval", None, 3)
        .await
        .expect("episode");
    let turn = get(format!("{base}/studio/turns/{}", e.steps[0].turn_id)).await;
    assert_eq!(turn["turn"]["turn_type"], "side", "{turn}");
    assert_eq!(turn["next_states"], serde_json::json!([]), "{turn}");
    server.shutdown().await;
}

/// A tutor's `hint:` line in a tool output reaches the loop as the call's directive signal: the
/// rules judge makes it the turn's hint, and the turn's sample teaches under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutors_hint_in_a_tool_output_becomes_the_calls_hint() {
    let (server, base, _dir) = paused_server().await;
    let mut env = TerminalEnv::builtin(Split::Train).expect("tasks");
    env.tasks.truncate(2);
    env.tutor = true;
    let task = 1; // "Make a directory named …": the tiny model's call never does it.
    let solution = env.tasks[task].solution.clone().expect("a solution");
    let mut agent = Agent::new(&base, None);
    agent.call_first = true;
    agent.max_steps = 1;
    agent.max_tokens = 400; // room for a command of 200 characters
    let e = agent
        .episode(&env, task, "tutored", Some("group-t"), 4)
        .await
        .expect("episode");
    assert!(!e.success, "{e:?}");
    let hint = format!("run `{solution}`");
    assert!(
        e.steps[0].observation[0].ends_with(&format!("hint: {hint}")),
        "{e:?}"
    );
    let url = format!("{base}/studio/turns/{}", e.steps[0].turn_id);
    let mut turn = Value::Null;
    for _ in 0..200 {
        turn = reqwest::get(&url)
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        if turn["samples"].as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(turn["hints"][0]["text"], hint, "{turn}");
    assert_eq!(turn["hints"][0]["source"], "judge", "{turn}");
    assert_eq!(
        turn["samples"][0]["hint_id"], turn["hints"][0]["id"],
        "{turn}"
    );
    server.shutdown().await;
}
