//! Finding CUDA's libraries at run time: the binary links none of them, so it builds and runs
//! on machines without CUDA.
//!
//! cudarc opens each library by its bare name (`libnvrtc.so.13`, …), which the dynamic loader
//! looks up on the system's paths and `LD_LIBRARY_PATH`. CUDA installs its libraries in a
//! directory of its own that is often on neither (`/usr/local/cuda/lib64`), and pip installs
//! them inside Python's `site-packages`; so a library found in such a directory is opened
//! here first, by its full path, and kept open: the loader then answers cudarc's bare name
//! with it (it matches an open library's `SONAME`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tracing::debug;

/// The libraries opened by path, held open for the life of the process.
static OPENED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// The CUDA major versions whose libraries cudarc's bindings (CUDA 13.0) accept, newest first.
const MAJORS: [&str; 2] = ["13", "12"];

/// The directories searched, in order: `CLAWRL_CUDA_LIB_DIR` (`:`-separated), `CUDA_HOME` and
/// `CUDA_PATH`'s `lib64`, `/usr/local/cuda/lib64`, then `extra` (NVIDIA's pip wheels, for
/// NVRTC without a toolkit).
pub fn search_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("CLAWRL_CUDA_LIB_DIR")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(Path::new(&home).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.extend(extra.iter().cloned());
    dirs
}

/// Opens `lib{name}.so.13…` (else `.12…`) from the first of `dirs` that has it, so that the
/// bare name cudarc (or NVRTC, for its builtins) opens finds it; returns the path opened, or
/// `None` when no directory has it (the loader's own search may still find it).
pub fn preload(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.strip_prefix(&format!("lib{name}.so.")))
                    .is_some_and(|v| MAJORS.iter().any(|m| v.split('.').next() == Some(m)))
            })
            .collect();
        // The newest major first (`13` before `12`).
        found.sort_by(|a, b| b.cmp(a));
        for path in found {
            // SAFETY: loading a CUDA library runs its initialisers, which have no
            // preconditions on the caller.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => {
                    debug!(path = %path.display(), "opened a CUDA library");
                    OPENED
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(lib);
                    return Some(path);
                }
                Err(e) => debug!(path = %path.display(), error = %e, "cannot open"),
            }
        }
    }
    None
}
