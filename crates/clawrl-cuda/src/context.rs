//! The device: the libraries, the compiled kernels, allocations, launches, copies and
//! cuBLAS's products, all on one stream.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use clawrl_kernels::{Activations, Format, Gemm, QMatrix};
use cudarc::cublas::{CudaBlas, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};
use tracing::info;

use crate::libs;
use crate::tensor::{CudaMatrix, CudaTensor};

/// The CUDA C of every kernel, compiled by NVRTC when a device opens.
pub const KERNELS: &str = include_str!("kernels.cu");

/// Why CUDA could not be used, or what failed on it.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A library is missing: the driver (`libcuda.so.1`, from NVIDIA's driver package), NVRTC
    /// or cuBLAS (from a CUDA toolkit, or pip's `nvidia-cuda-nvrtc` and `nvidia-cublas`).
    #[error(
        "no {0} library found (searched {1}; set CLAWRL_CUDA_LIB_DIR to the directory holding it)"
    )]
    NoLibrary(&'static str, String),
    /// The driver is there but sees no GPU.
    #[error("the CUDA driver sees no GPU")]
    NoDevice,
    /// NVRTC refused the kernels (a bug here, or an NVRTC too old for the GPU).
    #[error("NVRTC could not compile the CUDA kernels: {0}")]
    Compile(String),
    /// A driver or cuBLAS call failed (out of memory, a launch beyond the device's limits).
    #[error("CUDA failed: {0}")]
    Failed(String),
}

/// The kernels of `kernels.cu`, one function each, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    QuantizeQ8,
    MatvecQ4_1,
    MatvecQ8_0,
    DequantQ4_1,
    DequantQ8_0,
    RmsNorm,
    RmsNormBackward,
    Add,
    AddRows,
    SiluMul,
    Mul,
    SiluMulBackward,
    Rope,
    Attention,
    AttentionProbs,
    AttentionBackwardQ,
    AttentionBackwardKv,
    LogSoftmax,
    LogSoftmaxBackward,
    TopK,
    Gather,
    ScatterAdd,
}

/// Every kernel's entry point in [`KERNELS`], indexed by the launch code's `Kernel as usize`.
pub const KERNEL_NAMES: [&str; 22] = [
    "quantize_q8",
    "matvec_q4_1",
    "matvec_q8_0",
    "dequant_q4_1",
    "dequant_q8_0",
    "rms_norm",
    "rms_norm_backward",
    "add",
    "add_rows",
    "silu_mul",
    "mul",
    "silu_mul_backward",
    "rope",
    "attention",
    "attention_probs",
    "attention_backward_q",
    "attention_backward_kv",
    "log_softmax",
    "log_softmax_backward",
    "top_k",
    "gather",
    "scatter_add",
];

/// Threads per block of the row kernels (`WG` in kernels.cu).
pub(crate) const WG: u32 = 128;
/// Threads per block of the element-wise kernels (`EW`).
pub(crate) const EW: u32 = 256;
/// The largest grid y and z dimension a launch takes (CUDA's limit).
const MAX_GRID_Y: u32 = 65_535;
/// Rows a block of the matrix–vector kernels computes (one warp each).
const MATVEC_ROWS: u32 = WG / 32;

/// One kernel argument: a device address, a count, a flag or a scalar.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device address (`float*`, `u32*`).
    P(u64),
    /// `u32`.
    U(u32),
    /// `int`.
    I(i32),
    /// `float`.
    F(f32),
}

/// Blocks of `per` threads covering `n` items.
pub(crate) fn blocks(n: usize, per: u32) -> u32 {
    u32::try_from(n.div_ceil(per as usize)).unwrap_or(u32::MAX)
}

/// Compiles [`KERNELS`] to PTX for compute capability `arch` (`(9, 0)`: `compute_90`), loading
/// NVRTC first (from `extra` directories too, as [`libs::search_dirs`] says). Needs no GPU:
/// the tests run it on machines without one.
///
/// # Errors
/// [`CudaError::NoLibrary`] without NVRTC; [`CudaError::Compile`] with NVRTC's log.
pub fn compile(arch: (i32, i32), extra: &[PathBuf]) -> Result<Ptx, CudaError> {
    let dirs = libs::search_dirs(extra);
    libs::preload("nvrtc-builtins", &dirs);
    libs::preload("nvrtc", &dirs);
    // SAFETY: only probes whether the library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoLibrary("NVRTC", searched(&dirs)));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{}{}", arch.0, arch.1)],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts)
        .map_err(|e| CudaError::Compile(e.to_string()))
}

/// Where a library was looked for, for an error: the loader's paths, then `dirs`.
fn searched(dirs: &[PathBuf]) -> String {
    let mut at = vec!["the loader's paths".to_string()];
    at.extend(dirs.iter().map(|d| d.display().to_string()));
    at.join(", ")
}

thread_local! {
    /// Inside [`Context::capture`] on this thread: failures are kept, not fatal.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// The first failure on this thread since its capture began.
    static FAILED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// An open NVIDIA GPU: its context, the one stream every operation is queued on, cuBLAS on
/// that stream and the compiled kernels.
pub struct Context {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
    functions: Vec<CudaFunction>,
    name: String,
    total_mem: usize,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("device", &self.name)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Opens GPU `ordinal`: loads the driver, NVRTC and cuBLAS (see [`libs::search_dirs`]),
    /// compiles the kernels for the GPU's compute capability and creates cuBLAS's handle.
    ///
    /// # Errors
    /// [`CudaError::NoLibrary`] when a library is missing (no driver: no NVIDIA GPU here);
    /// [`CudaError::NoDevice`] when the driver sees no GPU; [`CudaError::Compile`];
    /// [`CudaError::Failed`] for a failing driver call.
    pub fn open(ordinal: usize) -> Result<Arc<Self>, CudaError> {
        let dirs = libs::search_dirs(&[]);
        // SAFETY (each probe): only checks whether the library can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoLibrary(
                "CUDA driver (libcuda.so.1, from NVIDIA's driver: no NVIDIA GPU here?)",
                "the loader's paths".into(),
            ));
        }
        // cuBLAS opens cuBLASLt by its bare name: Lt first.
        libs::preload("cublasLt", &dirs);
        libs::preload("cublas", &dirs);
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoLibrary("cuBLAS", searched(&dirs)));
        }
        let count = CudaContext::device_count().map_err(failed)?;
        if count <= ordinal as i32 {
            return Err(CudaError::NoDevice);
        }
        let ctx = CudaContext::new(ordinal).map_err(failed)?;
        // One stream orders everything, so cudarc's per-buffer events would only cost time.
        // SAFETY: every buffer here is used on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let arch = ctx.compute_capability().map_err(failed)?;
        let ptx = compile(arch, &[])?;
        let module = ctx.load_module(ptx).map_err(failed)?;
        let functions = KERNEL_NAMES
            .iter()
            .map(|n| module.load_function(n).map_err(failed))
            .collect::<Result<Vec<_>, _>>()?;
        let blas = CudaBlas::new(stream.clone()).map_err(failed)?;
        let name = ctx.name().map_err(failed)?;
        let total_mem = ctx.total_mem().map_err(failed)?;
        info!(device = %name, compute = ?arch, memory_gib = total_mem as f64 / (1u64 << 30) as f64, "CUDA GPU opened");
        Ok(Arc::new(Self {
            ctx,
            stream,
            blas: Mutex::new(blas),
            functions,
            name,
            total_mem,
        }))
    }

    /// The GPU, for display: `NVIDIA H200 · CUDA · 139.8 GiB`.
    pub fn describe(&self) -> String {
        format!(
            "{} · CUDA · {:.1} GiB",
            self.name,
            self.total_mem as f64 / (1u64 << 30) as f64
        )
    }

    /// The most f32 values one tensor may hold: a quarter of the device's memory, and what
    /// the kernels' u32 indices reach.
    pub fn max_tensor_len(&self) -> usize {
        (self.total_mem / 16).min(u32::MAX as usize)
    }

    /// Runs `f`, turning the failures inside it on this thread (out of memory, a failed
    /// launch), which would otherwise end the process, into an error.
    ///
    /// # Errors
    /// [`CudaError::Failed`] with the first failure.
    pub fn capture<R>(&self, f: impl FnOnce() -> R) -> Result<R, CudaError> {
        let outer = CAPTURING.with(|c| c.replace(true));
        let out = f();
        CAPTURING.with(|c| c.set(outer));
        match FAILED.with(|e| e.borrow_mut().take()) {
            Some(e) => Err(CudaError::Failed(e)),
            None => Ok(out),
        }
    }

    /// Records a failure: kept for [`Context::capture`], or fatal outside one (a GPU that
    /// failed mid-pass leaves no result to return).
    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        let msg = format!("{what}: {e}");
        if CAPTURING.with(Cell::get) {
            FAILED.with(|f| {
                f.borrow_mut().get_or_insert(msg);
            });
        } else {
            panic!("clawrl-cuda: {msg}");
        }
    }

    /// Whether this thread failed inside its capture: what follows is skipped (its buffers may
    /// be stand-ins, and the capture's result is discarded).
    fn skipping(&self) -> bool {
        FAILED.with(|f| f.borrow().is_some())
    }

    /// Makes the context current on this thread, as the driver's raw calls below need
    /// (serving and training call from different threads).
    fn bind(&self) {
        if let Err(e) = self.ctx.bind_to_thread() {
            self.fail("binding the CUDA context", e);
        }
    }

    /// `len` zeros.
    pub fn zeros(&self, len: usize) -> CudaTensor {
        self.words(len, None)
    }

    /// A device copy of `x`.
    pub fn upload(&self, x: &[f32]) -> CudaTensor {
        self.words(x.len(), Some(bytemuck::cast_slice(x)))
    }

    /// Uploads `words` (indices) as a device buffer.
    pub(crate) fn upload_u32(&self, words: &[u32]) -> CudaTensor {
        self.words(words.len(), Some(words))
    }

    /// A buffer of `len` words, zeros or `init`. A failed allocation gives a one-word stand-in
    /// of the same `len` (the failure is recorded, and this thread's later work on the device
    /// is skipped until its capture ends, so the stand-in is never written or read).
    fn words(&self, len: usize, init: Option<&[u32]>) -> CudaTensor {
        let buf = match init {
            Some(w) if !w.is_empty() => self.stream.clone_htod(w),
            _ => self.stream.alloc_zeros::<u32>(len.max(1)),
        };
        let buf = match buf {
            Ok(b) => b,
            Err(e) => {
                self.fail(&format!("allocating {len} values"), e);
                // After a failed allocation there may be no memory for more: a failure here
                // too cannot be reported better than the first.
                #[allow(clippy::expect_used)]
                let b = self
                    .stream
                    .alloc_zeros::<u32>(1)
                    .expect("clawrl-cuda: the GPU has no memory left");
                return self.tensor(b, len);
            }
        };
        self.tensor(buf, len)
    }

    fn tensor(&self, buf: cudarc::driver::CudaSlice<u32>, len: usize) -> CudaTensor {
        use cudarc::driver::DevicePtr;
        let ptr = {
            let (ptr, _sync) = buf.device_ptr(&self.stream);
            ptr
        };
        CudaTensor::new(buf, ptr, len)
    }

    /// Uploads a weight matrix in its stored format ([`clawrl_kernels::Packed`]).
    pub fn upload_matrix(&self, w: &QMatrix) -> CudaMatrix {
        let p = w.packed();
        CudaMatrix {
            rows: w.rows(),
            cols: w.cols(),
            format: p.format,
            data: self.upload_u32(&p.words),
            d: p.d.map(|d| self.upload(&d)),
            m: p.m.map(|m| self.upload(&m)),
            dense: Arc::default(),
        }
    }

    /// Queues `kernel` over `grid` blocks of `block` threads.
    pub(crate) fn launch(&self, kernel: Kernel, grid: (u32, u32, u32), block: u32, args: &[Arg]) {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 || self.skipping() {
            return;
        }
        if grid.1 > MAX_GRID_Y || grid.2 > MAX_GRID_Y {
            self.fail(
                KERNEL_NAMES[kernel as usize],
                format!(
                    "{} rows is beyond the {MAX_GRID_Y} a launch takes",
                    grid.1.max(grid.2)
                ),
            );
            return;
        }
        let f = &self.functions[kernel as usize];
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(p) => b.arg(p),
                Arg::U(u) => b.arg(u),
                Arg::I(i) => b.arg(i),
                Arg::F(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: each kernel's arguments are given in its declared order and types, and
        // the callers check every size the kernel indexes with.
        if let Err(e) = unsafe { b.launch(cfg) } {
            self.fail(KERNEL_NAMES[kernel as usize], e);
        }
    }

    /// One element-wise kernel over `n` values.
    pub(crate) fn elementwise(&self, kernel: Kernel, n: usize, args: &[Arg]) {
        self.launch(kernel, (blocks(n, EW), 1, 1), EW, args);
    }

    /// Copies `len` values from `src[from..]` to `dst[to..]`.
    pub(crate) fn copy(
        &self,
        src: &CudaTensor,
        from: usize,
        dst: &CudaTensor,
        to: usize,
        len: usize,
    ) {
        if len == 0 || self.skipping() {
            return;
        }
        self.bind();
        // SAFETY: both ranges lie in their buffers (the callers check), on this stream.
        let r = unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.at(to),
                src.at(from),
                4 * len,
                self.stream.cu_stream(),
            )
        };
        if let Err(e) = r {
            self.fail("copying on the device", e);
        }
    }

    /// Waits for every queued operation and reads `x` back as words.
    pub(crate) fn download_words(&self, x: &CudaTensor) -> Vec<u32> {
        let mut out = vec![0u32; x.len()];
        if out.is_empty() || self.skipping() {
            return out;
        }
        self.bind();
        // SAFETY: `out` holds exactly the tensor's values; the synchronize below waits for
        // the copy before `out` is read.
        let r = unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut out, x.ptr(), self.stream.cu_stream())
        }
        .and_then(|()| self.stream.synchronize());
        if let Err(e) = r {
            self.fail("reading back from the GPU", e);
            out.fill(0);
        }
        out
    }

    /// Waits for every queued operation and reads `x` back.
    pub fn download(&self, x: &CudaTensor) -> Vec<f32> {
        bytemuck::cast_slice(&self.download_words(x)).to_vec()
    }

    /// `C = α·op(A)·op(B)` (`+ C`) on row-major f32 buffers at these addresses, by cuBLAS
    /// (column-major: it computes `Cᵀ = op(B)ᵀ·op(A)ᵀ`). f32 throughout: cuBLAS's default math
    /// mode, no TF32.
    pub(crate) fn gemm(&self, a: u64, b: u64, s: Gemm, c: u64) {
        if s.m == 0 || s.n == 0 || self.skipping() {
            return;
        }
        self.bind();
        if s.k == 0 {
            // An empty sum: C = 0, or C unchanged when accumulating.
            if !s.accumulate {
                // SAFETY: C holds m·n values (the callers check), on this stream.
                let r = unsafe {
                    cudarc::driver::result::memset_d8_async(
                        c,
                        0,
                        4 * s.m * s.n,
                        self.stream.cu_stream(),
                    )
                };
                if let Err(e) = r {
                    self.fail("zeroing on the device", e);
                }
            }
            return;
        }
        let (m, n, k) = (s.m as i32, s.n as i32, s.k as i32);
        let (op_a, lda) = if s.trans_a {
            (cublasOperation_t::CUBLAS_OP_T, m)
        } else {
            (cublasOperation_t::CUBLAS_OP_N, k)
        };
        let (op_b, ldb) = if s.trans_b {
            (cublasOperation_t::CUBLAS_OP_T, k)
        } else {
            (cublasOperation_t::CUBLAS_OP_N, n)
        };
        let beta = if s.accumulate { 1.0f32 } else { 0.0 };
        let blas = self.blas.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the callers check that A, B and C hold m·k, k·n and m·n values; alpha and
        // beta are host scalars (cuBLAS's default pointer mode).
        let r = unsafe {
            cudarc::cublas::result::sgemm(
                *blas.handle(),
                op_b,
                op_a,
                n,
                m,
                k,
                &s.alpha,
                b as *const f32,
                ldb.max(1),
                a as *const f32,
                lda.max(1),
                &beta,
                c as *mut f32,
                n,
            )
        };
        if let Err(e) = r {
            self.fail("cuBLAS sgemm", e);
        }
    }

    /// The f32 values of `w`: its own buffer, or for a quantized matrix a copy dequantized on
    /// first use and kept (not kept when making it failed).
    pub(crate) fn dense(&self, w: &CudaMatrix) -> CudaTensor {
        if w.format == Format::F32 {
            return w.data.clone();
        }
        let mut held = w.dense.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = held.as_ref() {
            return d.clone();
        }
        let n = w.rows * w.cols;
        let out = self.zeros(n);
        let (rows, cols) = (Arg::U(w.rows as u32), Arg::U(w.cols as u32));
        let (data, d) = (
            Arg::P(w.data.ptr()),
            Arg::P(w.d.as_ref().map_or(0, CudaTensor::ptr)),
        );
        match (w.format, &w.m) {
            (Format::Q4_1, Some(m)) => self.elementwise(
                Kernel::DequantQ4_1,
                n,
                &[data, d, Arg::P(m.ptr()), Arg::P(out.ptr()), rows, cols],
            ),
            _ => self.elementwise(
                Kernel::DequantQ8_0,
                n,
                &[data, d, Arg::P(out.ptr()), rows, cols],
            ),
        }
        if !self.skipping() {
            *held = Some(out.clone());
        }
        out
    }

    /// `y = scale · W·x` (`y += …` with `accumulate`) for `t` rows of `x`: where `act` asks
    /// for 8-bit activations and `W` is quantized, the CPU's rounding and a matrix–vector
    /// kernel on the quants (one grid row per token); otherwise cuBLAS on f32 values.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        w: &CudaMatrix,
        x: &CudaTensor,
        t: usize,
        scale: f32,
        accumulate: bool,
        act: Activations,
        y: &CudaTensor,
    ) {
        if t == 0 {
            return;
        }
        if !act.quantized(t) || w.format == Format::F32 {
            let s = Gemm::new(t, w.rows, w.cols).tb();
            let s = if accumulate {
                s.add_scaled(scale)
            } else {
                s.scaled(scale)
            };
            self.gemm(x.ptr(), self.dense(w).ptr(), s, y.ptr());
            return;
        }
        let xq = self.zeros(x.len());
        let n_blocks = x.len() / 32;
        self.elementwise(
            Kernel::QuantizeQ8,
            n_blocks,
            &[Arg::P(x.ptr()), Arg::P(xq.ptr()), Arg::U(n_blocks as u32)],
        );
        let grid = (blocks(w.rows, MATVEC_ROWS), t as u32, 1);
        let (rows, cols) = (Arg::U(w.rows as u32), Arg::U(w.cols as u32));
        let tail = [Arg::I(i32::from(accumulate)), Arg::F(scale)];
        let d = Arg::P(w.d.as_ref().map_or(0, CudaTensor::ptr));
        let head = [Arg::P(xq.ptr()), Arg::P(y.ptr()), Arg::P(w.data.ptr())];
        match (w.format, &w.m) {
            (Format::Q4_1, Some(m)) => {
                let args = [&head[..], &[d, Arg::P(m.ptr()), rows, cols], &tail].concat();
                self.launch(Kernel::MatvecQ4_1, grid, WG, &args);
            }
            _ => {
                let args = [&head[..], &[d, rows, cols], &tail].concat();
                self.launch(Kernel::MatvecQ8_0, grid, WG, &args);
            }
        }
    }
}

fn failed(e: impl std::fmt::Display) -> CudaError {
    CudaError::Failed(e.to_string())
}
