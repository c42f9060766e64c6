//! Constrained decoding (llguidance) on the tiny model: whatever the random weights prefer,
//! the output matches the grammar, ends at the end of turn once the grammar is complete, and a
//! malformed grammar is an argument error before anything is generated.

use std::ops::ControlFlow;

use clawrl_model::{Error, GenerateParams, Grammar, Message, Model, Sampling};

fn generate(model: &Model, grammar: Grammar, seed: u64) -> clawrl_model::Generation {
    let prompt = model
        .chat_prompt(&[Message::user("go")], None)
        .expect("prompt");
    let params = GenerateParams {
        max_tokens: 64,
        sampling: Sampling {
            temperature: 1.5,
            top_p: 1.0,
            seed: Some(seed),
        },
        grammar: Some(grammar),
        ..GenerateParams::default()
    };
    model
        .generate(&prompt, &params, |_, _| ControlFlow::Continue(()))
        .expect("generates")
}

#[test]
fn the_output_matches_the_grammar_and_then_the_turn_ends() {
    let model = Model::tiny(1);
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let g = generate(&model, Grammar::Lark(r#"start: "ab" | "ac""#.into()), seed);
        assert!(g.text == "ab" || g.text == "ac", "{:?}", g.text);
        assert_eq!(g.finish_reason, clawrl_model::FinishReason::Stop);
        let last = g.tokens.last().expect("tokens").id;
        assert!(model.tokenizer.is_end_of_generation(last));
        seen.insert(g.text);
    }
    // Both branches are reachable: the mask allows each continuation, not one forced path.
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn a_schema_constrains_to_compact_json() {
    let model = Model::tiny(2);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": false,
    });
    for seed in 0..4 {
        let g = generate(&model, Grammar::JsonSchema(schema.clone()), seed);
        let v: serde_json::Value = serde_json::from_str(&g.text).expect(&g.text);
        assert!(v["n"].as_u64().is_some_and(|n| n <= 9), "{v}");
        assert!(!g.text.contains(' '), "compact: {:?}", g.text);
    }
}

#[test]
fn malformed_grammars_and_schemas_are_invalid_arguments() {
    let model = Model::tiny(1);
    for g in [
        Grammar::Lark("start: (".into()),
        Grammar::JsonSchema(serde_json::json!({"type": "no-such-type"})),
    ] {
        assert!(
            matches!(model.check_grammar(&g), Err(Error::InvalidArgument(_))),
            "{g:?}"
        );
    }
    model
        .check_grammar(&Grammar::JsonSchema(serde_json::json!({"type": "object"})))
        .expect("an object schema compiles");
}
