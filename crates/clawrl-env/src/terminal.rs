//! The terminal environment: a small shell task in a throw-away sandbox directory, a `shell`
//! tool, and a check that runs after the episode (exit status 0: solved).
//!
//! The sandbox is bubblewrap (`bwrap`, Debian's `bubblewrap`): the whole file system read-only
//! but the task's directory, a private `/tmp`, no network, its own process tree, a clean
//! environment, and a time limit per command.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Environment, Error, Result};

/// Longest time one command may run.
const TIME_LIMIT: Duration = Duration::from_secs(5);
/// Most output bytes an observation keeps, per stream.
const OUTPUT_LIMIT: usize = 1000;

const SYSTEM: &str = "You work in a Linux shell. Use the shell tool to run commands in the \
current directory. When the task is done, reply with a short summary.";

/// One shell task.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellTask {
    /// What the user asks.
    pub instruction: String,
    /// Commands that prepare the directory before the episode.
    #[serde(default)]
    pub setup: String,
    /// Commands run in the directory after the episode; exit status 0 means solved.
    pub check: String,
    /// One command that solves the task: the tutor's hint ([`TerminalEnv::tutor`]).
    #[serde(default)]
    pub solution: Option<String>,
}

/// Which tasks of a task file: training or held-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `[[task]]`s of the first half; families' tasks on the first half of every slot list.
    Train,
    /// The rest: tasks that name nothing training saw.
    HeldOut,
}

/// Tasks per family and split.
const PER_FAMILY: usize = 12;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    #[serde(default)]
    task: Vec<ShellTask>,
    #[serde(default)]
    family: Vec<ShellTask>,
    #[serde(default)]
    slots: BTreeMap<String, Vec<String>>,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Task `k` of family `f` in a split whose slot lists are `halves`: slot j (in name order)
/// takes value (f + k·s_j) mod len, s_j the j-th stride coprime to len, so a family's tasks
/// never repeat a slot's value and two slots vary independently.
fn instance(
    family: &ShellTask,
    f: usize,
    k: usize,
    halves: &BTreeMap<&str, &[String]>,
) -> ShellTask {
    let mut texts = [
        family.instruction.clone(),
        family.setup.clone(),
        family.check.clone(),
        family.solution.clone().unwrap_or_default(),
    ];
    for (j, (name, values)) in halves.iter().enumerate() {
        let len = values.len();
        let stride = (1..).filter(|s| gcd(*s, len) == 1).nth(j).unwrap_or(1);
        let value = &values[(f + k * stride) % len];
        for t in &mut texts {
            *t = t.replace(&format!("{{{name}}}"), value);
        }
    }
    let [instruction, setup, check, solution] = texts;
    ShellTask {
        instruction,
        setup,
        check,
        solution: family.solution.as_ref().map(|_| solution),
    }
}

/// Shell tasks in a sandbox (DESIGN.md §8).
#[derive(Clone, Debug)]
pub struct TerminalEnv {
    /// The tasks.
    pub tasks: Vec<ShellTask>,
    /// A tutor in the room: after a command that leaves the task undone, the observation ends
    /// with `` hint: run `<the task's solution>` ``, a directive next state the rules judge reads
    /// (training only; held-out episodes must do without).
    pub tutor: bool,
}

impl TerminalEnv {
    /// The shipped tasks of `split` (`crates/clawrl-env/tasks/terminal.toml`).
    pub fn builtin(split: Split) -> Result<Self> {
        Self::from_toml(
            include_str!("../tasks/terminal.toml"),
            "tasks/terminal.toml",
            split,
        )
    }

    /// The tasks of `split` from TOML text: `[[task]]` tables (instruction, setup, check,
    /// solution; the first half trains) and `[[family]]` tables whose `{slot}`s take values
    /// from `[slots]` lists ([`PER_FAMILY`] tasks per family, interleaved: task i is family
    /// i mod F). `origin` names the text in errors.
    pub fn from_toml(text: &str, origin: &str, split: Split) -> Result<Self> {
        let bad = |m: String| Error::Input(format!("{origin}: {m}"));
        let mut f: TaskFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut halves = BTreeMap::new();
        for (name, values) in &f.slots {
            if values.len() < 2 * PER_FAMILY {
                return Err(bad(format!(
                    "slot list {name:?} has {} values; a family needs {} ({PER_FAMILY} per split)",
                    values.len(),
                    2 * PER_FAMILY
                )));
            }
            let (train, held) = values.split_at(values.len() / 2);
            halves.insert(
                name.as_str(),
                if split == Split::Train { train } else { held },
            );
        }
        let slot = regex::Regex::new(r"\{([a-z_]+)\}").map_err(|e| bad(e.to_string()))?;
        for family in &f.family {
            let all = format!(
                "{} {} {} {}",
                family.instruction,
                family.setup,
                family.check,
                family.solution.as_deref().unwrap_or_default()
            );
            if let Some(m) = slot
                .captures_iter(&all)
                .find(|c| !halves.contains_key(&c[1]))
            {
                return Err(bad(format!("no [slots] list named {:?}", &m[1])));
            }
        }
        let from = f.task.len() / 2;
        let mut tasks = if split == Split::Train {
            f.task.drain(..from).collect()
        } else {
            f.task.split_off(from)
        };
        tasks.extend((0..PER_FAMILY).flat_map(|k| {
            let halves = &halves;
            f.family
                .iter()
                .enumerate()
                .map(move |(i, family)| instance(family, i, k, halves))
        }));
        if tasks.is_empty() {
            return Err(bad("no tasks".into()));
        }
        Ok(Self {
            tasks,
            tutor: false,
        })
    }
}

/// Runs `command` with `sh -c` in the sandbox rooted at `dir`: (exit status, stdout, stderr),
/// the streams cut to [`OUTPUT_LIMIT`] bytes; past [`TIME_LIMIT`] the command is killed.
/// Errors: [`Error::Input`] when bubblewrap cannot start (not installed, no user namespaces).
pub async fn sandboxed(dir: &Path, command: &str) -> Result<(Option<i32>, String, String)> {
    let d = dir.to_string_lossy();
    let child = tokio::process::Command::new("bwrap")
        .args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
        ])
        .args(["--bind", &d, &d, "--chdir", &d])
        .args([
            "--unshare-net",
            "--unshare-pid",
            "--die-with-parent",
            "--new-session",
        ])
        .args([
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
        ])
        .args(["--setenv", "HOME", &d, "--setenv", "LC_ALL", "C"])
        .args(["sh", "-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Error::Input(format!(
                "the terminal sandbox needs bubblewrap (apt install bubblewrap): {e}"
            ))
        })?;
    let cut = |b: &[u8]| {
        let s = String::from_utf8_lossy(&b[..b.len().min(OUTPUT_LIMIT)]).into_owned();
        if b.len() > OUTPUT_LIMIT {
            format!("{s}… ({} bytes in all)", b.len())
        } else {
            s
        }
    };
    match tokio::time::timeout(TIME_LIMIT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let err = cut(&out.stderr);
            if err.starts_with("bwrap:") {
                return Err(Error::Input(format!("the terminal sandbox failed: {err}")));
            }
            Ok((out.status.code(), cut(&out.stdout), err))
        }
        Ok(Err(e)) => Err(Error::Input(format!("the terminal sandbox: {e}"))),
        Err(_) => Ok((
            None,
            String::new(),
            format!("stopped: the command ran past {} s", TIME_LIMIT.as_secs()),
        )),
    }
}

/// An episode's state: its throw-away directory and its task.
#[derive(Debug)]
pub struct Sandbox {
    /// The directory, removed when the episode ends.
    pub dir: tempfile::TempDir,
    /// The task's index.
    pub task: usize,
}

/// What the model reads back from a command.
fn observation(status: Option<i32>, stdout: &str, stderr: &str) -> String {
    let mut s = match status {
        Some(c) => format!("exit status {c}"),
        None => "killed".to_string(),
    };
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        if !text.is_empty() {
            s.push_str(&format!("\n{name}:\n{}", text.trim_end()));
        }
    }
    s
}

impl Environment for TerminalEnv {
    type State = Sandbox;

    fn name(&self) -> &'static str {
        "terminal"
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn tools(&self) -> Value {
        json!([{
            "type": "function",
            "function": {
                "name": "shell",
                "description": "Runs a shell command in the current directory and returns its exit status and output.",
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string", "maxLength": 200}},
                    "required": ["command"],
                    "additionalProperties": false,
                },
            },
        }])
    }

    async fn start(&self, task: usize) -> Result<(Self::State, Vec<Value>)> {
        let dir = tempfile::Builder::new()
            .prefix("clawrl-terminal-")
            .tempdir()
            .map_err(|e| Error::Input(format!("a sandbox directory: {e}")))?;
        let t = &self.tasks[task];
        if !t.setup.is_empty() {
            let (status, _, err) = sandboxed(dir.path(), &t.setup).await?;
            if status != Some(0) {
                return Err(Error::Input(format!(
                    "the setup of task {task} failed: {err}"
                )));
            }
        }
        let messages = vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": t.instruction}),
        ];
        Ok((Sandbox { dir, task }, messages))
    }

    async fn observe(
        &self,
        sandbox: &mut Self::State,
        name: &str,
        arguments: &str,
    ) -> Result<String> {
        let command = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|a| a.get("command").and_then(Value::as_str).map(str::to_string));
        let mut seen = match command {
            _ if name != "shell" => format!("error: there is no tool named {name:?}; use shell"),
            None => "error: call shell with {\"command\": \"…\"}".to_string(),
            Some(command) => {
                let (status, out, err) = sandboxed(sandbox.dir.path(), &command).await?;
                observation(status, &out, &err)
            }
        };
        let task = &self.tasks[sandbox.task];
        if self.tutor
            && let Some(solution) = &task.solution
            && sandboxed(sandbox.dir.path(), &task.check).await?.0 != Some(0)
        {
            seen.push_str(&format!("\nhint: run `{solution}`"));
        }
        Ok(seen)
    }

    async fn outcome(&self, sandbox: Self::State, task: usize, _answer: &str) -> Result<bool> {
        let (status, _, _) = sandboxed(sandbox.dir.path(), &self.tasks[task].check).await?;
        Ok(status == Some(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sandbox_writes_only_its_directory_and_has_no_network() {
        let dir = tempfile::tempdir().expect("dir");
        let (status, out, _) = sandboxed(dir.path(), "echo hi > a.txt && cat a.txt")
            .await
            .expect("runs");
        assert_eq!((status, out.as_str()), (Some(0), "hi\n"));
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let (status, _, err) = sandboxed(dir.path(), &format!("echo x > {home}/clawrl-escape"))
            .await
            .expect("runs");
        assert_ne!(status, Some(0), "{err}");
        assert!(!Path::new(&home).join("clawrl-escape").exists());
        // Only the loopback interface exists in a new network namespace.
        let (_, out, _) = sandboxed(dir.path(), "cat /proc/net/dev")
            .await
            .expect("runs");
        let interfaces: Vec<&str> = out
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(interfaces, ["lo"], "{out}");
    }

    #[tokio::test]
    async fn a_command_past_the_time_limit_is_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        let t0 = std::time::Instant::now();
        let (status, _, err) = sandboxed(dir.path(), "sleep 30").await.expect("runs");
        assert_eq!(status, None, "{err}");
        assert!(t0.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn every_shipped_task_is_unsolved_at_first_and_solved_by_its_solution() {
        for split in [Split::Train, Split::HeldOut] {
            let env = TerminalEnv::builtin(split).expect("the shipped tasks parse");
            assert_eq!(env.len(), 10 * PER_FAMILY, "{split:?}");
            for (i, task) in env.tasks.iter().enumerate() {
                let (sandbox, _) = env.start(i).await.expect("setup");
                let (unsolved, _, _) = sandboxed(sandbox.dir.path(), &task.check)
                    .await
                    .expect("check");
                assert_ne!(unsolved, Some(0), "{split:?} task {i} passes untouched");
                let mut sandbox = sandbox;
                let solution = task.solution.as_deref().expect("a solution");
                let args = json!({ "command": solution }).to_string();
                let seen = env
                    .observe(&mut sandbox, "shell", &args)
                    .await
                    .expect("runs");
                assert!(
                    seen.starts_with("exit status 0"),
                    "{split:?} task {i}: {seen}"
                );
                assert!(
                    env.outcome(sandbox, i, "").await.expect("check"),
                    "{split:?} task {i}: {solution}"
                );
            }
        }
    }

    #[test]
    fn held_out_tasks_name_nothing_that_training_saw() {
        let names = |split| {
            let env = TerminalEnv::builtin(split).expect("parses");
            let words: std::collections::BTreeSet<String> = env
                .tasks
                .iter()
                .flat_map(|t| t.instruction.split([' ', '.']).map(str::to_string))
                .filter(|w| w.len() > 2)
                .collect();
            (env, words)
        };
        let (train, train_words) = names(Split::Train);
        let (held, held_words) = names(Split::HeldOut);
        // Only the families' own words are shared: every file, directory and word differs.
        let shared: Vec<&String> = train_words.intersection(&held_words).collect();
        let template_words = "Create file named that contains the word Make directory empty \
            Delete Copy Rename Count lines and write number into Sort alphabetically Write \
            first line Append txt";
        assert!(
            shared
                .iter()
                .all(|w| template_words.split(' ').any(|t| t == w.as_str())),
            "{shared:?}"
        );
        // Tasks interleave the families, so the first N cover them all.
        assert!(
            train.tasks[0]
                .instruction
                .starts_with("Create a file named")
        );
        assert!(train.tasks[1].instruction.starts_with("Make a directory"));
        assert_ne!(train.tasks[0].instruction, held.tasks[0].instruction);
        let distinct: std::collections::BTreeSet<&str> =
            held.tasks.iter().map(|t| t.instruction.as_str()).collect();
        assert_eq!(distinct.len(), held.len());
    }

    #[test]
    fn a_task_file_with_an_unknown_slot_or_a_short_list_is_refused() {
        let family = "[[family]]\ninstruction = \"Make {what}.\"\ncheck = \"true\"\n";
        let e = TerminalEnv::from_toml(family, "t.toml", Split::Train).expect_err("no slot");
        assert!(
            e.to_string().contains("no [slots] list named \"what\""),
            "{e}"
        );
        let short = format!("[slots]\nwhat = [\"a\", \"b\"]\n{family}");
        let e = TerminalEnv::from_toml(&short, "t.toml", Split::Train).expect_err("short");
        assert!(e.to_string().contains("has 2 values"), "{e}");
    }

    #[tokio::test]
    async fn the_tutor_names_the_solution_until_the_task_is_done() {
        let mut env = TerminalEnv::builtin(Split::Train).expect("parses");
        env.tutor = true;
        let task = 1; // "Make a directory named …"
        let solution = env.tasks[task].solution.clone().expect("a solution");
        let (mut sandbox, _) = env.start(task).await.expect("setup");
        let call = |c: &str| json!({ "command": c }).to_string();
        let seen = env
            .observe(&mut sandbox, "shell", &call("ls"))
            .await
            .expect("runs");
        assert!(
            seen.ends_with(&format!("\nhint: run `{solution}`")),
            "{seen}"
        );
        let seen = env
            .observe(&mut sandbox, "bash", &call("ls"))
            .await
            .expect("runs");
        assert!(
            seen.contains("no tool named") && seen.contains("hint: run"),
            "{seen}"
        );
        let seen = env
            .observe(&mut sandbox, "shell", &call(&solution))
            .await
            .expect("runs");
        assert_eq!(seen, "exit status 0");
        env.tutor = false;
        let (mut sandbox, _) = env.start(task).await.expect("setup");
        let seen = env
            .observe(&mut sandbox, "shell", &call("ls"))
            .await
            .expect("runs");
        assert!(!seen.contains("hint"), "{seen}");
    }
}
