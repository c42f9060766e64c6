//! What real clients send and expect (OpenClaw among them): completions longer than what fits
//! are clamped, an overlong context gets OpenAI's `context_length_exceeded` (or, opted in, its
//! oldest messages dropped), sessions are recovered from replayed histories and from the
//! fields clients use to name them, and every refusal is logged where the Studio shows it.

mod common;

use common::{TestServer, assistant, content, start, start_with, user};
use serde_json::{Value, json};

async fn chat(t: &TestServer, body: Value) -> Value {
    let (status, r) = t.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_longer_than_what_fits_is_clamped_and_the_window_is_published() {
    let t = start().await;
    let (_, models) = t.get("/v1/models").await;
    assert_eq!(models["data"][0]["context_length"], 2048);
    assert_eq!(models["data"][0]["max_output_tokens"], 2048);
    // OpenClaw asks for 8192 new tokens by default.
    let r = chat(
        &t,
        json!({"messages": [user("hi")], "max_tokens": 8192, "seed": 1, "temperature": 0}),
    )
    .await;
    let prompt = r["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert_eq!(r["usage"]["max_tokens"], 2048 - prompt, "{r}");
    let r = chat(
        &t,
        json!({"messages": [user("hi")], "max_completion_tokens": 3, "seed": 1}),
    )
    .await;
    assert!(r["usage"].get("max_tokens").is_none(), "not clamped: {r}");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap_or(9) <= 3);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_context_is_refused_in_openai_words_or_trimmed_when_asked() {
    let t = start().await;
    let long = "word ".repeat(700);
    let (status, e) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user(&long)], "session_id": "long"}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["param"], "messages");
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("This model's maximum context length is 2048 tokens. However, your messages resulted in ")
            && message.ends_with(" tokens. Please reduce the length of the messages."),
        "{message}"
    );
    // The refusal is logged for the Studio, with its session.
    let (_, refused) = t.get("/studio/refused").await;
    let last = &refused["refused"][0];
    assert_eq!(last["status"], 400);
    assert_eq!(last["session_id"], "long");
    assert_eq!(last["reason"], message);
    assert_eq!(last["path"], "/v1/chat/completions");
    let (status, _) = t.get("/studio/sessions/long").await;
    assert_eq!(status, 404, "a refused request changes nothing");
    // A conversation recovered from its history is named in the refusal too.
    let first = chat(
        &t,
        json!({"messages": [user("Hello there.")], "max_tokens": 3}),
    )
    .await;
    let (status, _) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("Hello there."), assistant(&content(&first)), user(&long)]}),
        )
        .await;
    assert_eq!(status, 400);
    let (_, refused) = t.get("/studio/refused").await;
    assert_eq!(refused["refused"][0]["session_id"], first["session_id"]);
    t.stop().await;

    // Opted in: the oldest messages after the system prompt go, never the last user message.
    let t = start_with(tempfile::tempdir().expect("dir"), |c| {
        c.limits.drop_oldest_messages = true
    })
    .await;
    // The tiny model's tokenizer spends about a token a character: two of these overflow 2048.
    let half = "word ".repeat(250);
    let messages = json!([
        {"role": "system", "content": "You are brief."},
        user(&half),
        assistant("ok"),
        user(&half),
        assistant("ok"),
        user("And now?"),
    ]);
    let r = chat(
        &t,
        json!({"messages": messages, "max_tokens": 4, "session_id": "trim"}),
    )
    .await;
    assert_eq!(r["usage"]["dropped_messages"], 1, "{r}");
    let (_, turn) = t.get(&format!("/studio/turns/{}", r["turn_id"])).await;
    let seen = turn["turn"]["messages"].as_array().expect("messages");
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0]["content"], "You are brief.");
    assert_eq!(seen[1]["content"], "ok");
    assert_eq!(seen[4]["content"], "And now?");
    assert_eq!(turn["turn"]["dropped_messages"], 1);
    // A last user message that alone does not fit is still refused.
    let (status, e) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user(&"word ".repeat(3000))]}),
        )
        .await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (400, &json!("context_length_exceeded"))
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_histories_continue_their_sessions_and_interleaved_ones_do_not_merge() {
    let t = start().await;
    let ask = |q: &str| json!({"messages": [user(q)], "max_tokens": 6, "seed": 4});
    let a1 = chat(&t, ask("What is 12*7?")).await;
    let b1 = chat(&t, ask("Name a colour.")).await;
    let (sa, sb) = (a1["session_id"].clone(), b1["session_id"].clone());
    assert_ne!(sa, sb);
    // Each conversation goes on, interleaved, replaying its history byte for byte (OpenClaw).
    let b2 = chat(
        &t,
        json!({"messages": [user("Name a colour."), assistant(&content(&b1)), user("Thanks!")], "max_tokens": 6}),
    )
    .await;
    let a2 = chat(
        &t,
        json!({"messages": [user("What is 12*7?"), assistant(&content(&a1)), user("No, answer in one word only.")], "max_tokens": 6}),
    )
    .await;
    assert_eq!(a2["session_id"], sa);
    assert_eq!(b2["session_id"], sb);
    let a3 = chat(
        &t,
        json!({"messages": [
            user("What is 12*7?"), assistant(&content(&a1)),
            user("No, answer in one word only."), assistant(&content(&a2)),
            user("Thanks!")
        ], "max_tokens": 6}),
    )
    .await;
    assert_eq!(a3["session_id"], sa);
    let sa = sa.as_str().expect("id").to_string();
    let (_, session) = t.get(&format!("/studio/sessions/{sa}")).await;
    assert_eq!(session["turns"].as_array().map(Vec::len), Some(3));
    // The next states were paired with the right turns and judged.
    let first = a1["turn_id"].as_i64().expect("id");
    let judged = t
        .wait_for(&format!("/studio/turns/{first}"), |v| {
            v["votes"].as_array().is_some_and(|v| !v.is_empty())
        })
        .await;
    assert_eq!(
        judged["next_states"][0]["text"],
        "No, answer in one word only."
    );
    assert_eq!(judged["votes"][0]["value"], -1);
    // A history that was never answered here starts a session of its own.
    let other = chat(
        &t,
        json!({"messages": [user("What is 12*7?"), assistant("something else"), user("ok")], "max_tokens": 4}),
    )
    .await;
    assert_ne!(other["session_id"], sa.as_str());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_key_user_and_metadata_name_sessions() {
    let t = start().await;
    let with = |extra: Value| {
        let mut b = json!({"messages": [user("hi")], "max_tokens": 3});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let r = chat(&t, with(json!({"prompt_cache_key": "oc-1:0"}))).await;
    assert_eq!(r["session_id"], "oc-1:0");
    let r = chat(&t, with(json!({"user": "alice"}))).await;
    assert_eq!(r["session_id"], "alice");
    let r = chat(
        &t,
        with(json!({"metadata": {"session_id": "m-7"}, "user": "alice"})),
    )
    .await;
    assert_eq!(r["session_id"], "m-7");
    let r = chat(
        &t,
        with(json!({"session_id": "explicit", "prompt_cache_key": "k"})),
    )
    .await;
    assert_eq!(r["session_id"], "explicit");
    // OpenAI accepts any `user`; one that cannot name a session names none.
    let r = chat(&t, with(json!({"user": ""}))).await;
    assert!(
        r["session_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("anon-")),
        "{r}"
    );
    let (status, _) = t
        .post("/v1/chat/completions", &with(json!({"session_id": ""})))
        .await;
    assert_eq!(status, 400, "an explicit session id must be usable");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openclaw_conversation_is_judged_as_the_user_meant_it() {
    // What OpenClaw 2026.9.6 sends: no session id, a timestamp envelope on every user message,
    // the runtime line on the first, the history replayed byte for byte.
    let t = start().await;
    let system = json!({"role": "system", "content": "You are a personal assistant running inside OpenClaw."});
    let first = user(
        "[Tue 2026-12-01 00:55 UTC] What is 12*7?\n\nRuntime: agent=main | \
         session=agent:main:explicit:conv1 | sessionId=conv1 | model=clawrl/clawrl | shell=bash",
    );
    let r1 = chat(
        &t,
        json!({"messages": [system, first], "max_completion_tokens": 8,
               "stream": null, "stream_options": {"include_usage": null}}),
    )
    .await;
    let correction = "[Tue 2026-12-01 00:56 UTC] No, answer in one word only.";
    let r2 = chat(
        &t,
        json!({"messages": [system, first, assistant(&content(&r1)), user(correction)], "max_completion_tokens": 8}),
    )
    .await;
    assert_eq!(r2["session_id"], r1["session_id"]);
    let judged = t
        .wait_for(&format!("/studio/turns/{}", r1["turn_id"]), |v| {
            v["votes"].as_array().is_some_and(|v| !v.is_empty())
        })
        .await;
    assert_eq!(judged["votes"][0]["value"], -1, "{judged}");
    assert_eq!(judged["hints"][0]["text"], "No, answer in one word only.");
    assert_eq!(
        judged["next_states"][0]["text"], correction,
        "the store keeps what was sent"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_means_absent_for_every_optional_field() {
    // As the OpenAI schema allows, and some clients send.
    let t = start().await;
    let fields = [
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "logprobs",
        "top_logprobs",
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "session_id",
        "turn_type",
        "session_done",
        "outcome",
        "group_id",
        "prompt_cache_key",
        "user",
        "metadata",
        "store",
        "functions",
    ];
    for field in fields {
        let mut body = json!({"messages": [user("hi"), {"role": "assistant", "content": null}, user("and?")], "max_tokens": 3});
        body[field] = Value::Null;
        let (status, r) = t.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{field}: null: {r}");
    }
    let (status, r) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("hi")], "max_tokens": 3, "stream_options": {"include_usage": null}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integral_floats_are_integers_and_ids_count_characters() {
    // JSON Schema's integer includes 3.0; a fraction is still refused, and naming the field.
    let t = start().await;
    let body = json!({"messages": [user("hi")], "max_tokens": 3.0, "n": 1.0, "seed": 7.0});
    let (status, r) = t.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["usage"]["completion_tokens"].as_u64().map(|n| n <= 3),
        Some(true)
    );
    let id = r["turn_id"].as_i64().expect("turn id");
    let (status, r) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("hi")], "max_tokens": 3.5}),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_tokens")),
        "{r}"
    );
    let (status, r) = t
        .post(
            &format!("/studio/turns/{id}/feedback"),
            &json!({"thumb": 1.0}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let (status, r) = t
        .post(
            "/studio/training/settings",
            &json!({"batch_size": 4.0, "epochs": 2.0}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["settings"]["batch_size"], 4);
    // A session id of 200 characters, 800 bytes, is a valid one.
    let long = "😀".repeat(200);
    let (status, r) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("hi")], "max_tokens": 2, "session_id": long}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["session_id"], long);
    let (status, _) = t
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("hi")], "max_tokens": 2, "session_id": "😀".repeat(201)}),
        )
        .await;
    assert_eq!(status, 400);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_patch_against_the_current_settings_is_a_conflict() {
    let t = start().await;
    // Contradicting itself: invalid. Contradicting what is set now: a conflict, and nothing
    // changes; after the other change, the same patch applies.
    let (status, r) = t
        .post(
            "/studio/training/settings",
            &json!({"intersect_support": true, "support": "teacher"}),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    let (status, r) = t
        .post(
            "/studio/training/settings",
            &json!({"intersect_support": true}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = t
        .post("/studio/training/settings", &json!({"support": "teacher"}))
        .await;
    assert_eq!(status, 409, "{r}");
    let (_, now) = t.get("/studio/training").await;
    assert_eq!(now["settings"]["support"], "student");
    let (status, r) = t
        .post(
            "/studio/training/settings",
            &json!({"intersect_support": false}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = t
        .post("/studio/training/settings", &json!({"support": "teacher"}))
        .await;
    assert_eq!(status, 200, "{r}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_too_long_to_score_leaves_the_vote_and_does_not_stall_the_judge() {
    // The prompt nearly fills the tiny model's 2048 tokens; s_t ⊕ h cannot fit.
    let t = start().await;
    let r = chat(
        &t,
        json!({"messages": [user(&"word ".repeat(380))], "max_tokens": 4, "session_id": "full"}),
    )
    .await;
    let id = r["turn_id"].as_i64().expect("id");
    let correction = format!("Say it differently: {}", "much shorter ".repeat(40));
    let (status, body) = t
        .post(
            &format!("/studio/turns/{id}/feedback"),
            &json!({"thumb": -1, "correction": correction}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let judged = t
        .wait_for(&format!("/studio/turns/{id}"), |v| {
            v["samples"].as_array().is_some_and(|s| !s.is_empty())
        })
        .await;
    assert_eq!(judged["votes"][0]["value"], -1);
    assert_eq!(judged["hints"][0]["status"], "candidate");
    let sample = &judged["samples"][0];
    assert_eq!(sample["advantage"], -1.0, "{sample}");
    assert!(sample["selection"].is_null(), "no directive part: {sample}");
    // The judge goes on with the next turns.
    let other = chat(
        &t,
        json!({"messages": [user("hi")], "max_tokens": 3, "session_id": "next"}),
    )
    .await;
    let (status, _) = t
        .post(
            &format!("/studio/turns/{}/feedback", other["turn_id"]),
            &json!({"thumb": 1}),
        )
        .await;
    assert_eq!(status, 201);
    t.wait_for(&format!("/studio/turns/{}", other["turn_id"]), |v| {
        v["votes"].as_array().is_some_and(|v| !v.is_empty())
    })
    .await;
    t.stop().await;
}
