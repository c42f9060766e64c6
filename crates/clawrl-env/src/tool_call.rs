//! The tool-call environment: a GSM8K question, a `calculator` tool, and the outcome — the
//! final answer's number equals the reference's (the number after `####`).

use clawrl_sim::Task;
use serde_json::{Value, json};

use crate::{Environment, Result};

/// What the model is told: use the tool for arithmetic, end with the number.
const SYSTEM: &str = "You solve math word problems. Use the calculator tool for arithmetic. \
When you know the result, reply with the final answer as a number.";

/// GSM8K with a calculator (DESIGN.md §8).
#[derive(Clone, Debug)]
pub struct ToolCallEnv {
    /// The task pool.
    pub tasks: Vec<Task>,
}

impl ToolCallEnv {
    /// The outcome: the final answer's last number equals the reference's.
    pub fn solved(&self, i: usize, answer: &str) -> bool {
        match (
            final_number(answer),
            reference_number(&self.tasks[i].ground_truth_answer),
        ) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            _ => false,
        }
    }

    /// What a call returns: the calculator's result, or why it could not compute.
    fn calculate(name: &str, arguments: &str) -> String {
        if name != "calculator" {
            return format!("error: there is no tool named {name:?}; use calculator");
        }
        let expression = serde_json::from_str::<Value>(arguments).ok().and_then(|a| {
            a.get("expression")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        match expression {
            Some(e) => calculator(&e),
            None => "error: call calculator with {\"expression\": \"…\"}".to_string(),
        }
    }
}

impl Environment for ToolCallEnv {
    type State = ();

    fn name(&self) -> &'static str {
        "tool-call"
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn tools(&self) -> Value {
        json!([{
            "type": "function",
            "function": {
                "name": "calculator",
                "description": "Evaluates an arithmetic expression such as 12*7+3 or (48-6)/2.",
                "parameters": {
                    "type": "object",
                    // Arithmetic only, and bounded: a forced call cannot ramble.
                    "properties": {"expression": {
                        "type": "string",
                        "pattern": "^[0-9+*/(). -]{1,60}$",
                    }},
                    "required": ["expression"],
                    "additionalProperties": false,
                },
            },
        }])
    }

    async fn start(&self, task: usize) -> Result<((), Vec<Value>)> {
        Ok((
            (),
            vec![
                json!({"role": "system", "content": SYSTEM}),
                json!({"role": "user", "content": self.tasks[task].question}),
            ],
        ))
    }

    async fn observe(&self, _: &mut (), name: &str, arguments: &str) -> Result<String> {
        Ok(Self::calculate(name, arguments))
    }

    async fn outcome(&self, _: (), task: usize, answer: &str) -> Result<bool> {
        Ok(self.solved(task, answer))
    }
}

/// Evaluates an arithmetic expression (`+ - * / ^`, parentheses, decimals) with exmex; the
/// result as the model should read it (an integer without `.0`), or `error: …`.
pub fn calculator(expression: &str) -> String {
    // People write 1,000 and 3 × 4; the parser wants 1000 and 3 * 4.
    let cleaned: String = expression
        .replace(',', "")
        .replace('×', "*")
        .replace('÷', "/");
    match exmex::eval_str::<f64>(&cleaned) {
        Ok(v) if v.is_finite() => {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                format!("{}", (v * 1e6).round() / 1e6)
            }
        }
        Ok(_) => "error: the result is not a finite number".to_string(),
        Err(e) => format!("error: {e}"),
    }
}

fn numbers(text: &str) -> impl Iterator<Item = f64> + '_ {
    // The pattern is a literal and valid.
    static NUMBER: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    NUMBER
        .get_or_init(|| regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?").expect("a valid pattern"))
        .find_iter(text)
        .filter_map(|m| m.as_str().replace(',', "").parse().ok())
}

/// The last number in an answer (`1,234.5` reads as 1234.5).
pub fn final_number(answer: &str) -> Option<f64> {
    numbers(answer).last()
}

/// The reference answer's number: the one after GSM8K's `####`.
pub fn reference_number(solution: &str) -> Option<f64> {
    let tail = solution.rsplit_once("####").map_or(solution, |(_, t)| t);
    numbers(tail).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> ToolCallEnv {
        ToolCallEnv {
            tasks: vec![Task {
                question: "Tom has 3 bags of 14 apples. How many apples?".into(),
                ground_truth_answer: "3*14=<<3*14=42>>42 apples\n#### 42".into(),
            }],
        }
    }

    #[test]
    fn the_calculator_computes_and_explains_what_it_cannot() {
        assert_eq!(calculator("12*7+3"), "87");
        assert_eq!(calculator("(48 - 6) / 4"), "10.5");
        assert_eq!(calculator("1,000 × 3"), "3000");
        assert!(calculator("12 +").starts_with("error"));
        assert!(calculator("1/0").starts_with("error"));
    }

    #[test]
    fn the_outcome_is_the_final_number() {
        let e = env();
        assert!(e.solved(0, "3 bags of 14 is 42."));
        assert!(e.solved(0, "The answer is 42"));
        assert!(!e.solved(0, "42 is not it, it is 41"));
        assert!(!e.solved(0, "I do not know"));
        assert_eq!(
            reference_number("so 1,200 in all\n#### 1,200"),
            Some(1200.0)
        );
    }

    #[test]
    fn calls_are_answered_by_the_calculator_only() {
        let calc = ToolCallEnv::calculate;
        assert_eq!(calc("calculator", r#"{"expression":"3*14"}"#), "42");
        assert!(calc("search", "{}").starts_with("error"));
        assert!(calc("calculator", "{}").starts_with("error"));
    }
}
