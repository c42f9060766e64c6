//! The live loop end to end on a real server (ephemeral port, real SQLite file, tiny model):
//! chat, pairing, judging, samples, a training step, the new version served, roll back.

mod common;

use common::{assistant, content, start, user};
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_streamed_and_not_and_records_what_it_generated() {
    let t = start().await;
    let (status, models) = t.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "tiny");

    let (status, body) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("hello")], "max_tokens": 8, "logprobs": true, "top_logprobs": 3, "seed": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs");
    let n = body["usage"]["completion_tokens"].as_u64().expect("usage") as usize;
    assert_eq!(content.len(), n);
    assert_eq!(content[0]["top_logprobs"].as_array().map(Vec::len), Some(3));
    // The store holds the token ids and log-probs exactly as generated.
    let turn_id = body["turn_id"].as_i64().expect("turn id");
    let (_, turn) = t.get(&format!("/studio/turns/{turn_id}")).await;
    let tokens = turn["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), n);
    for (stored, sent) in tokens.iter().zip(content) {
        assert_eq!(stored["logprob"], sent["logprob"]);
    }
    // Without a session id the request is its own, ended session.
    assert_eq!(turn["turn"]["turn_type"], "main");

    // Streaming: a chunk per token, the finish chunk, usage, then [DONE].
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", t.url))
        .json(
            &json!({"messages": [user("hi")], "max_tokens": 6, "stream": true,
                      "stream_options": {"include_usage": true}, "session_id": "s", "seed": 2}),
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("json chunk"))
        .collect();
    let usage = chunks.last().expect("usage chunk")["usage"].clone();
    let generated = usage["completion_tokens"].as_u64().expect("usage") as usize;
    let token_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"].get("content").is_some()
                && c["choices"][0]["delta"].get("role").is_none()
        })
        .count();
    assert_eq!(token_chunks, generated, "one chunk per token");
    let finish = &chunks[chunks.len() - 2];
    assert!(finish["choices"][0]["finish_reason"].is_string());
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (_, session) = t.get("/studio/sessions/s").await;
    assert_eq!(
        session["turns"][0]["response"].as_str(),
        Some(streamed.as_str())
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_states_become_votes_samples_a_step_and_a_new_version_then_roll_back() {
    let t = start().await;
    let q = "What is two plus two?";
    let first = t.chat("a", json!([user(q)])).await;
    assert_eq!(first["policy_version"], 0);
    let a1 = content(&first);
    // The user corrects it: the next state of turn 1 carries a −1 vote and a hint.
    t.chat(
        "a",
        json!([
            user(q),
            assistant(&a1),
            user("No, answer with a single number.")
        ]),
    )
    .await;
    let turn1 = first["turn_id"].as_i64().expect("id");
    let judged = t
        .wait_for(&format!("/studio/turns/{turn1}"), |v| {
            v["samples"].as_array().is_some_and(|s| !s.is_empty())
        })
        .await;
    assert_eq!(judged["next_states"][0]["kind"], "reply");
    assert_eq!(judged["votes"][0]["value"], -1);
    assert_eq!(judged["votes"][0]["judge"], "rules");
    assert_eq!(
        judged["hints"][0]["text"],
        "No, answer with a single number."
    );
    assert_eq!(judged["hints"][0]["status"], "accepted");
    let sample = &judged["samples"][0];
    assert_eq!(sample["advantage"], -1.0);
    assert!(sample["hint_id"].is_i64(), "an OPD sample too: {sample}");
    assert!(sample["selection"]["totals"].is_array());

    // A satisfied user in another session: +1. Two samples = one batch.
    let other = t.chat("b", json!([user("Name a colour.")])).await;
    let a2 = content(&other);
    t.chat(
        "b",
        json!([
            user("Name a colour."),
            assistant(&a2),
            user("Thanks, perfect!")
        ]),
    )
    .await;
    // The step is over once its version is served and the flag is down.
    let status = t
        .wait_for("/studio/training", |v| {
            v["policy_version"] == 1 && v["training"] == false
        })
        .await;
    assert_eq!(status["steps"], 1);
    assert_eq!(status["pending_samples"], 0);
    let (_, steps) = t.get("/studio/steps").await;
    let m = &steps["steps"][0]["metrics"];
    assert_eq!(m["samples"], 2);
    assert_eq!(m["rl_samples"], 2);
    assert_eq!(m["opd_samples"], 1);
    assert!(m["loss"].is_number() && m["grad_norm"].as_f64().unwrap_or(0.0) > 0.0);

    // The new version answers the next request.
    let after = t.chat("c", json!([user("hello again")])).await;
    assert_eq!(after["policy_version"], 1);
    assert_eq!(after["system_fingerprint"], "clawrl-v1");

    // Roll back to the base.
    let (status, body) = t.post("/studio/versions/0/activate", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let back = t.chat("d", json!([user("hello again")])).await;
    assert_eq!(back["policy_version"], 0);
    let (_, versions) = t.get("/studio/versions").await;
    assert_eq!(versions["active"], 0);
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
    // Each version names the one its step continued from.
    assert_eq!(versions["versions"][0]["parent"], Value::Null);
    assert_eq!(versions["versions"][1]["parent"], 0);
    let (status, _) = t.post("/studio/versions/9/activate", &json!({})).await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_and_annotator_hints_with_a_preview() {
    let t = start().await;
    let r = t
        .chat("f", json!([user("Write a haiku about rain.")]))
        .await;
    let id = r["turn_id"].as_i64().expect("id");
    let (status, body) = t
        .post(
            &format!("/studio/turns/{id}/feedback"),
            &json!({"thumb": -1, "correction": "Use exactly three lines."}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let judged = t
        .wait_for(&format!("/studio/turns/{id}"), |v| {
            v["votes"].as_array().is_some_and(|s| !s.is_empty())
        })
        .await;
    assert_eq!(judged["votes"][0]["value"], -1);
    assert_eq!(judged["hints"][0]["text"], "Use exactly three lines.");

    // A preview scores a candidate against the others without saving it.
    let (status, preview) = t
        .post(
            &format!("/studio/turns/{id}/hints/preview"),
            &json!({"text": "Mention the sound of rain."}),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let positions = judged["tokens"].as_array().map(Vec::len).unwrap_or(0);
    let cand = &preview["candidate"];
    assert_eq!(cand["overlap"].as_array().map(Vec::len), Some(positions));
    assert_eq!(cand["delta"].as_array().map(Vec::len), Some(positions));
    assert!(
        cand["overlap"]
            .as_array()
            .expect("o")
            .iter()
            .all(|o| o.as_u64().is_some_and(|o| o <= 4))
    );
    assert_eq!(
        preview["analysis"]["hints"].as_array().map(Vec::len),
        Some(2)
    );
    let (_, again) = t.get(&format!("/studio/turns/{id}")).await;
    assert_eq!(
        again["hints"].as_array().map(Vec::len),
        Some(1),
        "a preview saves nothing"
    );

    // Add, accept (it joins the turn's selection), and reject another.
    let (status, added) = t
        .post(
            &format!("/studio/turns/{id}/hints"),
            &json!({"text": "Mention the sound of rain."}),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let hint = added["hint"]["id"].as_i64().expect("hint id");
    assert_eq!(added["hint"]["source"], "annotator");
    let (status, accepted) = t
        .post(&format!("/studio/hints/{hint}/accept"), &json!({}))
        .await;
    assert_eq!(status, 200, "{accepted}");
    // The accepted hint competes with the judge's under one selection, and the turn keeps one
    // sample: the judgement's, now carrying the selection over both.
    let judge_hint = judged["hints"][0]["id"].clone();
    assert_eq!(accepted["candidates"], json!([judge_hint, hint]));
    assert!(!accepted["chosen"].as_array().expect("chosen").is_empty());
    let (_, turn) = t.get(&format!("/studio/turns/{id}")).await;
    let samples = turn["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 1, "one OPD sample per turn: {samples:?}");
    assert_eq!(samples[0]["id"], accepted["sample_id"]);
    assert_eq!(samples[0]["advantage"], -1.0, "the vote's RL part stays");
    assert_eq!(
        samples[0]["selection"]["hint_ids"],
        json!([judge_hint, hint])
    );
    let (status, _) = t
        .post(&format!("/studio/hints/{hint}/accept"), &json!({}))
        .await;
    assert_eq!(status, 409);
    let (_, other) = t
        .post(
            &format!("/studio/turns/{id}/hints"),
            &json!({"text": "Rhyme."}),
        )
        .await;
    let other = other["hint"]["id"].as_i64().expect("id");
    let (status, _) = t
        .post(&format!("/studio/hints/{other}/reject"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, turn) = t.get(&format!("/studio/turns/{id}")).await;
    let statuses: Vec<&str> = turn["hints"]
        .as_array()
        .expect("hints")
        .iter()
        .filter_map(|h| h["status"].as_str())
        .collect();
    assert!(statuses.contains(&"accepted") && statuses.contains(&"rejected"));
    let (_, inspect) = t.get(&format!("/studio/turns/{id}/inspect")).await;
    assert_eq!(
        inspect["analysis"]["hints"].as_array().map(Vec::len),
        Some(2),
        "rejected hints are left out"
    );
    let (_, queue) = t.get("/studio/queue").await;
    assert_eq!(queue["queue"][0]["turn_id"], id);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_settings_change_at_run_time_and_pause_holds_steps() {
    let t = start().await;
    let (status, s) = t
        .post(
            "/studio/training/settings",
            &json!({"method": "rl", "lr": 0.001, "batch_size": 1}),
        )
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["settings"]["method"], "rl");
    assert_eq!(s["settings"]["batch_size"], 1);
    let (status, _) = t
        .post("/studio/training/settings", &json!({"method": "sgd"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = t
        .post("/studio/training/settings", &json!({"lr": -1}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = t
        .post("/studio/training/settings", &json!({"learning_rate": 1}))
        .await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (_, s) = t.get("/studio/training").await;
    assert_eq!(
        s["settings"]["lr"], 0.001,
        "a refused change changes nothing"
    );

    t.post("/studio/training/pause", &json!({})).await;
    let r = t.chat("p", json!([user("hi")])).await;
    let a = content(&r);
    t.chat("p", json!([user("hi"), assistant(&a), user("thank you")]))
        .await;
    t.wait_for("/studio/training", |v| v["pending_samples"] == 1)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, s) = t.get("/studio/training").await;
    assert_eq!(s["steps"], 0, "paused: no step");
    t.post("/studio/training/resume", &json!({})).await;
    t.wait_for("/studio/training", |v| v["steps"] == 1).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_pending_samples_and_the_served_version() {
    let t = common::start_with(tempfile::tempdir().expect("dir"), |c| {
        c.lp.training.batch_size = 1
    })
    .await;
    let r = t.chat("r", json!([user("hi")])).await;
    let a = content(&r);
    t.chat("r", json!([user("hi"), assistant(&a), user("thanks")]))
        .await;
    t.wait_for("/studio/training", |v| v["policy_version"] == 1)
        .await;
    t.post("/studio/training/pause", &json!({})).await;
    let r = t.chat("r2", json!([user("yo")])).await;
    let a = content(&r);
    t.chat(
        "r2",
        json!([user("yo"), assistant(&a), user("no, say hello")]),
    )
    .await;
    t.wait_for("/studio/training", |v| v["pending_samples"] == 1)
        .await;
    let dir = t.stop().await;

    // Same files, training paused at start: the sample waits and version 1 is served.
    let t = common::start_with(dir, |c| {
        c.lp.training.batch_size = 1;
        c.lp.training.paused = true;
    })
    .await;
    let (_, s) = t.get("/studio/training").await;
    assert_eq!(s["policy_version"], 1);
    assert_eq!(s["pending_samples"], 1);
    let (_, sessions) = t.get("/studio/sessions").await;
    assert_eq!(sessions["sessions"].as_array().map(Vec::len), Some(2));
    t.post("/studio/training/resume", &json!({})).await;
    t.wait_for("/studio/training", |v| v["policy_version"] == 2)
        .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_sessions_end_by_themselves_and_session_done_ends_one_now() {
    let t = common::start_with(tempfile::tempdir().expect("dir"), |c| {
        c.lp.idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    t.chat("quiet", json!([user("hi")])).await;
    let (_, s) = t.get("/studio/sessions/quiet").await;
    assert_eq!(s["session"]["done"], false);
    t.wait_for("/studio/sessions/quiet", |v| v["session"]["done"] == true)
        .await;

    let (status, _) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("bye")], "max_tokens": 4, "session_id": "over", "session_done": true}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, s) = t.get("/studio/sessions/over").await;
    assert_eq!(s["session"]["done"], true);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_output_is_a_next_state_and_tools_reach_the_template() {
    let t = start().await;
    let tools = json!([{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]);
    let (status, first) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("What is 6 × 7?")], "tools": tools, "max_tokens": 6, "session_id": "tool"}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let id = first["turn_id"].as_i64().expect("id");
    let (status, _) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [
                user("What is 6 × 7?"),
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Traceback: ZeroDivisionError"}
            ], "tools": tools, "max_tokens": 6, "session_id": "tool"}),
        )
        .await;
    assert_eq!(status, 200);
    let judged = t
        .wait_for(&format!("/studio/turns/{id}"), |v| {
            v["votes"].as_array().is_some_and(|v| !v.is_empty())
        })
        .await;
    assert_eq!(judged["next_states"][0]["kind"], "tool");
    assert_eq!(judged["votes"][0]["value"], -1);
    // The tools are stored with the turn, so s_t ⊕ h renders them as s_t did.
    assert_eq!(judged["turn"]["tools"], tools);
    for (bad_body, param) in [
        (
            json!({"messages": [user("x")], "tools": {"not": "a list"}}),
            "tools",
        ),
        (
            json!({"messages": [user("x")], "functions": [{"name": "calc"}]}),
            "functions",
        ),
        (
            json!({"messages": [user("x")], "tools": tools, "tool_choice": 1}),
            "tool_choice",
        ),
        (
            json!({"messages": [user("x")], "response_format": {"type": "yaml"}}),
            "response_format",
        ),
    ] {
        let (status, bad) = t.post("/v1/chat/completions", &bad_body).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(bad["error"]["param"], param, "{bad}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_call_is_recorded_and_its_replayed_result_pairs_without_a_session_id() {
    let t = start().await;
    let tools = json!([{"type": "function", "function": {"name": "calc", "parameters": {
        "type": "object",
        "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["x"], "additionalProperties": false}}}]);
    let question = user("What is 6 × 7?");
    let (status, first) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [question], "tools": tools, "tool_choice": "required",
                    "parallel_tool_calls": false, "max_tokens": 64, "seed": 1}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let choice = &first["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{first}");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("text")).expect("JSON");
    assert!(args["x"].is_u64(), "{args}");
    let id = first["turn_id"].as_i64().expect("id");
    let (_, turn) = t.get(&format!("/studio/turns/{id}")).await;
    assert_eq!(turn["turn"]["finish_reason"], "tool_calls");
    assert!(
        turn["turn"]["response"]
            .as_str()
            .is_some_and(|r| r.starts_with("<tool_call>")),
        "{turn}"
    );
    // The client replays the call as it got it (fields reordered) with the tool's output.
    let replayed = json!({"role": "assistant", "content": null, "tool_calls": [{
        "function": {"arguments": call["function"]["arguments"], "name": "calc"},
        "type": "function", "id": call["id"]}]});
    let tool = json!({"role": "tool", "tool_call_id": call["id"], "content": "42"});
    let (status, next) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [question, replayed, tool], "tools": tools, "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["session_id"], first["session_id"]);
    let (_, turn) = t.get(&format!("/studio/turns/{id}")).await;
    assert_eq!(turn["next_states"][0]["kind"], "tool", "{turn}");
    assert_eq!(turn["next_states"][0]["text"], "42");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clawrl_server_can_be_the_judge_endpoint_of_another() {
    use clawrl_signals::{HttpJudge, Judge, JudgeInput, NextKind};
    let judge_server = start().await;
    let url = format!("{}/v1", judge_server.url);
    let conversation = [clawrl_model::Message::user("What is 2 + 2?")];
    let verdict = tokio::task::spawn_blocking(move || {
        let judge = HttpJudge::new(&url, "tiny", None).expect("client");
        judge.judge(&JudgeInput {
            conversation: &conversation,
            response: "5",
            next_state: "No, it is 4.",
            kind: NextKind::Reply,
        })
    })
    .await
    .expect("thread")
    .expect("the endpoint answers");
    assert_eq!(verdict.value, clawrl_signals::parse_vote(&verdict.raw));
    // The judge prompt went through the real API and was recorded there.
    let (_, sessions) = judge_server.get("/studio/sessions").await;
    let id = sessions["sessions"][0]["id"]
        .as_str()
        .expect("a session")
        .to_string();
    let (_, session) = judge_server.get(&format!("/studio/sessions/{id}")).await;
    let asked = session["turns"][0]["messages"][0]["content"]
        .as_str()
        .unwrap_or("");
    assert!(asked.contains("You judge an AI assistant's answer") && asked.contains("No, it is 4."));
    assert_eq!(
        session["turns"][0]["response"].as_str(),
        Some(verdict.raw.as_str())
    );
    judge_server.stop().await;
}

/// One rollout of group `g` as session `id`: two actions, a tool output after the first, the
/// verdict after the second, then `session_done` with `outcome`. Returns the two turn ids.
async fn rollout(t: &common::TestServer, id: &str, outcome: f64, end: bool) -> (i64, i64) {
    let ask = |messages: Value, extra: Value| async move {
        let mut body = json!({"messages": messages, "max_tokens": 6, "seed": 3,
                              "session_id": id, "group_id": "g"});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        let (status, r) = t.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        r
    };
    let mut messages = vec![user("What is 6 × 7?")];
    let first = ask(json!(messages), json!({})).await;
    messages.push(first["choices"][0]["message"].clone());
    messages.push(user("The calculator says 42."));
    let second = ask(json!(messages), json!({})).await;
    if end {
        messages.push(second["choices"][0]["message"].clone());
        messages.push(user("The check is done."));
        ask(
            json!(messages),
            json!({"session_done": true, "outcome": outcome, "max_tokens": 1}),
        )
        .await;
    }
    let id = |r: &Value| r["turn_id"].as_i64().expect("turn id");
    (id(&first), id(&second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_train_once_their_group_ends_on_step_rewards_standardised_by_step_index() {
    let t = common::start_with(tempfile::tempdir().expect("dir"), |c| {
        c.lp.training.batch_size = 3;
    })
    .await;
    let (a0, a1) = rollout(&t, "r0", 1.0, true).await;
    let (b0, _) = rollout(&t, "r1", 0.0, false).await;
    // Three samples (r0's two steps, r1's first) wait for the judge, then for the group: a
    // batch of 3 could form, but r1 is still running.
    t.wait_for("/studio/training", |v| {
        v["pending_samples"] == 3 && v["unjudged"] == 0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (_, status) = t.get("/studio/training").await;
    assert_eq!(
        status["steps"], 0,
        "a rollout trained before its group ended: {status}"
    );

    // r1 ends (outcome 0): the oldest three samples train as one batch.
    let (_, r1) = t.get("/studio/sessions/r1").await;
    let mut messages: Vec<Value> = r1["turns"][1]["messages"]
        .as_array()
        .cloned()
        .expect("messages");
    messages.push(assistant(r1["turns"][1]["response"].as_str().unwrap_or("")));
    messages.push(user("The check is done."));
    let (status, body) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 1, "session_id": "r1",
                    "session_done": true, "outcome": 0.0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    t.wait_for("/studio/training", |v| v["steps"] == 1).await;
    let (_, r0) = t.get("/studio/sessions/r0").await;
    assert_eq!(r0["session"]["group_id"], "g");
    assert_eq!(r0["session"]["outcome"], 1.0);

    // R_t = o + mean vote; step 0 holds r0's and r1's first actions: standardised, ±1 (or 0
    // when equal). Step 1 holds r0's second action alone in the batch: 0.
    let reward = |turn: &Value, o: f64| {
        let votes: Vec<f64> = turn["votes"]
            .as_array()
            .expect("votes")
            .iter()
            .filter_map(|v| v["value"].as_f64())
            .collect();
        o + votes.iter().sum::<f64>() / votes.len().max(1) as f64
    };
    let turn = |id: i64| {
        let t = &t;
        async move { t.get(&format!("/studio/turns/{id}")).await.1 }
    };
    let (ta0, tb0, ta1) = (turn(a0).await, turn(b0).await, turn(a1).await);
    let gap = reward(&ta0, 1.0) - reward(&tb0, 0.0);
    let expect = if gap.abs() < 1e-9 { 0.0 } else { gap.signum() };
    let advantage = |v: &Value| v["advantage"].as_f64().expect("an advantage");
    assert!((advantage(&ta0) - expect).abs() < 1e-4, "{ta0}");
    assert!((advantage(&tb0) + expect).abs() < 1e-4, "{tb0}");
    assert!(advantage(&ta1).abs() < 1e-4, "{ta1}");
    assert_eq!(ta0["samples"][0]["status"], "trained");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_contributions_are_rejected_and_the_versions_trained_on_them_rolled_back() {
    let t = common::start_with(tempfile::tempdir().expect("dir"), |c| {
        c.owner_key = Some("owner-key-0123456789".into())
    })
    .await;
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for name in ["alice", "mallory"] {
        let (status, k) = t
            .post("/studio/keys", &json!({"name": name, "role": "client"}))
            .await;
        assert_eq!(status, 201, "{k}");
        ids.push(k["id"].as_i64().expect("id"));
        keys.push(k["key"].as_str().expect("key").to_string());
    }
    let (alice, mallory) = (keys[0].clone(), keys[1].clone());
    // A session as `key`: a question, then a correction of the answer (a sample).
    let corrected = |key: String, session: &'static str| {
        let (http, url) = (t.http.clone(), format!("{}/v1/chat/completions", t.url));
        async move {
            let ask = |messages: Value| {
                http.post(&url)
                    .bearer_auth(&key)
                    .json(&json!(
                    {"messages": messages, "max_tokens": 8, "session_id": session, "seed": 1}))
                    .send()
            };
            let first: Value = ask(json!([user("Name a colour.")]))
                .await
                .expect("chat")
                .json()
                .await
                .expect("json");
            let answer = content(&first);
            let r = ask(json!([
                user("Name a colour."),
                assistant(&answer),
                user("No, say blue.")
            ]))
            .await
            .expect("chat");
            assert_eq!(r.status(), 200);
            first["turn_id"].as_i64().expect("turn id")
        }
    };
    corrected(alice.clone(), "a1").await;
    let poisoned = corrected(mallory.clone(), "m1").await;
    t.wait_for("/studio/training", |v| v["policy_version"] == 1)
        .await;
    corrected(mallory.clone(), "m2").await;
    t.wait_for("/studio/training", |v| v["pending_samples"] == 1)
        .await;

    // Each contribution carries its key: the next state, the judge's vote and hint.
    let (_, turn) = t.get(&format!("/studio/turns/{poisoned}")).await;
    assert_eq!(turn["next_states"][0]["key_id"], ids[1], "{turn}");
    assert_eq!(turn["votes"][0]["key_id"], ids[1], "{turn}");
    assert_eq!(turn["hints"][0]["key_id"], ids[1], "{turn}");

    let (status, r) = t
        .post(&format!("/studio/keys/{}/reject", ids[1]), &json!({}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["samples_dropped"], 2,
        "the trained one and the pending one: {r}"
    );
    assert_eq!(r["first_version"], 1, "{r}");
    assert_eq!(r["rolled_back_to"], 0, "{r}");
    assert_eq!(r["samples_requeued"], 1, "alice's sample trains again: {r}");
    assert!(r["hints_rejected"].as_u64() >= Some(2), "{r}");
    let status = t
        .wait_for("/studio/training", |v| v["policy_version"] == 0)
        .await;
    assert_eq!(status["pending_samples"], 1, "{status}");
    let (_, turn) = t.get(&format!("/studio/turns/{poisoned}")).await;
    assert_eq!(turn["samples"][0]["status"], "dropped", "{turn}");

    // Training goes on from the version before, without mallory.
    corrected(alice, "a2").await;
    t.wait_for("/studio/training", |v| {
        v["policy_version"] == 2 && v["pending_samples"] == 0
    })
    .await;
    let (status, r) = t.post("/studio/keys/999/reject", &json!({})).await;
    assert_eq!(status, 200, "an unknown key contributed nothing: {r}");
    assert_eq!(r["samples_dropped"], 0);
    assert_eq!(r["rolled_back_to"], Value::Null);
    t.stop().await;
}

/// One session of `q`: the answer, then `reply` to it as the user's next message.
async fn answered(t: &common::TestServer, session: &str, q: &str, reply: &str) -> Value {
    let r = t.chat(session, json!([user(q)])).await;
    let a = content(&r);
    t.chat(session, json!([user(q), assistant(&a), user(reply)]))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_retry_trains_under_the_original_prompt_and_is_replayed_later() {
    let t = start().await;
    let (status, s) = t
        .post(
            "/studio/training/settings",
            &json!({"w_retry": 1.0, "replay": 4, "batch_size": 2}),
        )
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["settings"]["replay"], 4);
    let (status, _) = t
        .post("/studio/training/settings", &json!({"replay": 65}))
        .await;
    assert_eq!(status, 400, "replay is at most 64");

    // Corrected, then the retry accepted: two samples, the second trained under the first
    // prompt too.
    let q = "What is two plus two?";
    let first = t.chat("a", json!([user(q)])).await;
    let a1 = content(&first);
    let correction = "No, answer with a single number.";
    let second = t
        .chat("a", json!([user(q), assistant(&a1), user(correction)]))
        .await;
    let a2 = content(&second);
    t.chat(
        "a",
        json!([
            user(q),
            assistant(&a1),
            user(correction),
            assistant(&a2),
            user("Thanks, perfect!")
        ]),
    )
    .await;
    t.wait_for("/studio/training", |v| v["steps"] == 1).await;
    let (_, steps) = t.get("/studio/steps").await;
    let m = &steps["steps"][0]["metrics"];
    assert_eq!(
        (m["samples"].as_u64(), m["replayed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(m["retry_samples"], 1, "{m}");

    // The next step replays the trained retry beside its own batch of two.
    answered(&t, "b", "Name a colour.", "Thanks, perfect!").await;
    answered(&t, "c", "Name a fruit.", "Thanks, perfect!").await;
    t.wait_for("/studio/training", |v| v["steps"] == 2).await;
    let (_, steps) = t.get("/studio/steps").await;
    let m = &steps["steps"][1]["metrics"];
    assert_eq!(
        (m["samples"].as_u64(), m["replayed"].as_u64()),
        (Some(3), Some(1)),
        "{m}"
    );
    assert_eq!(m["retry_samples"], 1, "{m}");
    assert!(m["loss_retry"].as_f64().is_some_and(|l| l > 0.0), "{m}");
    t.stop().await;
}
