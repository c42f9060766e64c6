//! The CUDA kernels compile with NVRTC, on machines without a GPU: `scripts/install-deps`
//! installs NVIDIA's NVRTC wheel (`nvidia-cuda-nvrtc`, CUDA 13) in its own environment under
//! the cache directory, and this test opens it from there.
//!
//! What needs a GPU (every kernel against its CPU twin, the engine's greedy tokens, a training
//! step's gradients) is in `tests/parity.rs`, ignored without one.

use std::path::PathBuf;

use clawrl_cuda::{KERNEL_NAMES, compile};

/// The NVRTC wheel's library directory (`…/site-packages/nvidia/cu13/lib`).
fn nvrtc_dirs() -> Vec<PathBuf> {
    let cache = std::env::var_os("CLAWRL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/clawrl")))
        .expect("HOME or CLAWRL_CACHE_DIR is set");
    let lib = cache.join("nvrtc-venv/lib");
    std::fs::read_dir(&lib)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("site-packages/nvidia/cu13/lib"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_kernel_compiles_for_turing_ampere_and_hopper() {
    let dirs = nvrtc_dirs();
    for arch in [(7, 5), (8, 0), (9, 0)] {
        let ptx = compile(arch, &dirs).unwrap_or_else(|e| {
            panic!("{e}\n(scripts/install-deps installs NVRTC under the cache directory)")
        });
        let text = ptx.to_src();
        assert!(
            text.contains(&format!(".target sm_{}{}", arch.0, arch.1)),
            "PTX for compute_{}{}",
            arch.0,
            arch.1
        );
        for name in KERNEL_NAMES {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "kernel {name} missing from the PTX for {arch:?}"
            );
        }
    }
}
