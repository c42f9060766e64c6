//! The terminal environment: a small shell task in a throw-away sandbox directory, a `shell`
//! tool, and a check that runs after the episode (exit status 0: solved).
//!
//! The sandbox is bubblewrap (`bwrap`, Debian's `bubblewrap`): the whole file system read-only
//! but the task's directory, a private `/tmp`, no network, its own process tree, a clean
//! environment, and a time limit per command.

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
pub struct ShellTask {
    /// What the user asks.
    pub instruction: String,
    /// Commands that prepare the directory before the episode.
    #[serde(default)]
    pub setup: String,
    /// Commands run in the directory after the episode; exit status 0 means solved.
    pub check: String,
}

#[derive(Deserialize)]
struct TaskFile {
    task: Vec<ShellTask>,
}

/// Shell tasks in a sandbox (DESIGN.md §8).
#[derive(Clone, Debug)]
pub struct TerminalEnv {
    /// The tasks.
    pub tasks: Vec<ShellTask>,
}

impl TerminalEnv {
    /// The shipped tasks (`crates/clawrl-env/tasks/terminal.toml`).
    pub fn builtin() -> Result<Self> {
        Self::from_toml(
            include_str!("../tasks/terminal.toml"),
            "tasks/terminal.toml",
        )
    }

    /// Tasks from TOML text (`[[task]]` tables of instruction, setup, check); `origin` names it
    /// in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let f: TaskFile =
            toml::from_str(text).map_err(|e| Error::Input(format!("{origin}: {e}")))?;
        if f.task.is_empty() {
            return Err(Error::Input(format!("{origin}: no tasks")));
        }
        Ok(Self { tasks: f.task })
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
    type State = tempfile::TempDir;

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
        Ok((dir, messages))
    }

    async fn observe(&self, dir: &mut Self::State, name: &str, arguments: &str) -> Result<String> {
        if name != "shell" {
            return Ok(format!("error: there is no tool named {name:?}; use shell"));
        }
        let command = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|a| a.get("command").and_then(Value::as_str).map(str::to_string));
        let Some(command) = command else {
            return Ok("error: call shell with {\"command\": \"…\"}".to_string());
        };
        let (status, out, err) = sandboxed(dir.path(), &command).await?;
        Ok(observation(status, &out, &err))
    }

    async fn outcome(&self, dir: Self::State, task: usize, _answer: &str) -> Result<bool> {
        let (status, _, _) = sandboxed(dir.path(), &self.tasks[task].check).await?;
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
    async fn every_shipped_task_is_unsolved_at_first_and_solvable() {
        // Each task's check fails on the fresh directory and passes after a known solution.
        let solutions = [
            "echo hello > hello.txt",
            "mkdir logs",
            "wc -l < data.txt > count.txt",
            "mv old.txt new.txt",
            "rm junk.tmp",
            "cp notes.txt backup.txt",
            "echo 42 > sum.txt",
            "sort names.txt > sorted.txt",
            "touch ready.flag",
            "ls > files.txt",
            "echo done >> todo.txt",
            "ls *.csv | wc -l > n.txt",
            "echo 'Hello, world!' > greeting.txt",
            "mkdir src && mv main.py src/",
            "wc -l < words.txt > lines.txt",
            "rm *.log",
            "cp config.ini config.ini.bak",
            "echo 42 > product.txt",
            "mv draft.md final.md",
            "touch .env",
            "mkdir build",
            "sort -n nums.txt > sorted.txt",
            "echo clawrl > name.txt",
            "head -n 1 poem.txt > first.txt",
        ];
        let env = TerminalEnv::builtin().expect("the shipped tasks parse");
        assert_eq!(env.len(), solutions.len());
        for (i, solution) in solutions.iter().enumerate() {
            let (dir, _) = env.start(i).await.expect("setup");
            let (unsolved, _, _) = sandboxed(dir.path(), &env.tasks[i].check)
                .await
                .expect("check");
            assert_ne!(unsolved, Some(0), "task {i} passes untouched");
            let mut dir = dir;
            let args = json!({"command": solution}).to_string();
            let seen = env.observe(&mut dir, "shell", &args).await.expect("runs");
            assert!(seen.starts_with("exit status 0"), "task {i}: {seen}");
            assert!(
                env.outcome(dir, i, "").await.expect("check"),
                "task {i}: {solution}"
            );
        }
    }
}
