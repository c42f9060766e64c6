//! A simulated user against the real server (tiny model, real SQLite file): sessions run as a
//! client would run them, and every reply reaches the server as a next state.

use std::sync::Arc;

use clawrl_model::Model;
use clawrl_sim::{Persona, Simulation, Task, sessions_to_preference};

const PERSONA: &str = r#"
name = "terse"
first_message = "Question: {question}"
max_turns = 2

[preference]
max_tokens = 3

[replies]
correction = "No, answer in at most three tokens."
satisfied = "Thanks!"
"#;

/// A real server on the tiny model and a fresh SQLite file, training paused: its directory (kept
/// alive), the server and its base URL.
async fn paused_server() -> (tempfile::TempDir, clawrl_server::Server, String) {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = clawrl_server::ServerConfig::new("tiny", dir.path());
    config.bind = "127.0.0.1:0".parse().expect("addr");
    config.lp.training.paused = true;
    let server = clawrl_server::start(config, Arc::new(Model::tiny(9)))
        .await
        .expect("server");
    let base = format!("http://{}", server.addr);
    (dir, server, base)
}

fn task() -> Task {
    Task {
        question: "What is 2 + 2?".into(),
        ground_truth_answer: "4".into(),
    }
}

async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    http.get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_user_drives_the_server_like_a_client() {
    let (_dir, server, base) = paused_server().await;
    let persona = Persona::from_toml(PERSONA, "terse.toml").expect("persona");
    let task = task();
    let mut sim = Simulation::new(&base, None, 5);
    sim.max_tokens = 8;
    let mut first = Vec::new();
    for i in 1..=3 {
        let o = sim.session(&persona, &task, 0, i).await.expect("session");
        assert_eq!(o.index, i);
        assert!(o.turns >= 1 && o.turns <= 2);
        assert_eq!(o.first_satisfied, o.violations.is_empty());
        first.push(o.first_satisfied);
        // Training is paused: waiting returns once every reply has been judged.
        sim.wait_for_training().await.expect("waits");
    }
    assert_eq!(
        sessions_to_preference(&first),
        first.iter().all(|&s| s).then_some(1)
    );

    // Each session ended, and each answer's reply came back as a next state and was judged.
    let http = reqwest::Client::new();
    let status = get_json(&http, format!("{base}/studio/training")).await;
    assert_eq!(status["unjudged"], 0);
    let sessions = get_json(&http, format!("{base}/studio/sessions")).await;
    let list = sessions["sessions"].as_array().expect("list");
    assert_eq!(list.len(), 3);
    for s in list {
        assert_eq!(s["done"], true);
        let id = s["id"].as_str().expect("id");
        let detail = get_json(&http, format!("{base}/studio/sessions/{id}")).await;
        let turns = detail["turns"].as_array().expect("turns");
        // The answers the user read, plus the closing request that carried the last reply.
        assert!(turns.len() >= 2);
        let first_turn = turns[0]["id"].as_i64().expect("id");
        let t = get_json(&http, format!("{base}/studio/turns/{first_turn}")).await;
        let reply = t["next_states"][0]["text"].as_str().unwrap_or("");
        assert!(
            reply == "Thanks!" || reply.starts_with("No, answer"),
            "{reply}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotators_hints_compete_with_the_judges_in_one_selection_per_turn() {
    let (_dir, server, base) = paused_server().await;
    // A preference no answer meets: every answer is corrected.
    let toml = PERSONA
        .replace("max_tokens = 3", "require_regex = ['\\A\\z']")
        .replace(
            "max_turns = 2\n",
            "max_turns = 2\nannotator_hints = [\"Be brief.\", \"One word only.\", \"Just the number.\"]\n",
        );
    let persona = Persona::from_toml(&toml, "terse.toml").expect("persona");
    let task = task();
    let mut sim = Simulation::new(&base, None, 5);
    sim.max_tokens = 8;
    let mut o = sim.session(&persona, &task, 0, 1).await.expect("session");
    assert_eq!(o.corrected_turns.len(), 2, "{o:?}");
    sim.wait_for_training().await.expect("judged");
    sim.annotate(&persona, &mut o).await.expect("annotated");

    // One choice per corrected turn, among the judge's hint and the three annotators'.
    assert_eq!(o.hints_chosen.len(), 2);
    let labels = ["judge", "annotator 1", "annotator 2", "annotator 3"];
    for chosen in &o.hints_chosen {
        assert!(!chosen.is_empty());
        assert!(
            chosen.iter().all(|c| labels.contains(&c.as_str())),
            "{chosen:?}"
        );
    }
    let http = reqwest::Client::new();
    for turn in &o.corrected_turns {
        let t = get_json(&http, format!("{base}/studio/turns/{turn}")).await;
        let hints = t["hints"].as_array().expect("hints");
        let from = |source: &str| hints.iter().filter(|h| h["source"] == source).count();
        assert_eq!((from("judge"), from("annotator")), (1, 3), "{hints:?}");
        assert!(
            hints
                .iter()
                .filter(|h| h["source"] == "annotator")
                .all(|h| h["status"] == "accepted")
        );
        // The judge's sample took the selection over all four: still one sample for the turn.
        let samples = t["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert!(samples[0]["selection"].is_object(), "{samples:?}");
    }
    server.shutdown().await;
}
