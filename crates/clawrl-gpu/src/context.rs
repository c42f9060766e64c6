//! The device: adapter choice, the compiled kernels, uploads, dispatches and read-backs.

use std::sync::{Arc, Mutex, PoisonError};

use clawrl_kernels::{Activations, Format, QMatrix};
use tracing::{debug, info};
use wgpu::util::DeviceExt;

use crate::tensor::{GpuMatrix, GpuTensor};

/// Why no GPU could be used.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// wgpu found no adapter of the kind asked for.
    #[error("no GPU adapter found ({0})")]
    NoAdapter(String),
    /// Work on the device failed (out of memory, or a request beyond its limits).
    #[error("the GPU failed: {0}")]
    Failed(String),
    /// The adapter refused to open a device.
    #[error("the GPU adapter {adapter} could not open a device: {reason}")]
    Device {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        reason: String,
    },
}

/// Which adapters [`Context::open`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterChoice {
    /// A real GPU only (`--device auto`): a software rasteriser such as lavapipe is slower
    /// than the engine's own CPU kernels.
    Hardware,
    /// Any adapter, software ones included (`--device gpu`; the parity tests run on lavapipe).
    Any,
}

/// The kernels of `shaders/`, one compute pipeline each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    MatmulF32,
    MatmulQ4_1,
    MatmulQ8_0,
    QuantizeQ8,
    RmsNorm,
    Add,
    AddRows,
    SiluMul,
    Rope,
    Attention,
    // Training: f32 products, the backwards, attention with probabilities, the head.
    Gemm,
    MatmulBackwardF32,
    MatmulBackwardQ4_1,
    MatmulBackwardQ8_0,
    RmsNormBackward,
    Mul,
    SiluMulBackward,
    AttentionProbs,
    AttentionBackwardQ,
    AttentionBackwardKv,
    LogSoftmax,
    LogSoftmaxBackward,
    TopK,
    Gather,
    ScatterAdd,
}

impl Kernel {
    const ALL: [Kernel; 25] = [
        Kernel::MatmulF32,
        Kernel::MatmulQ4_1,
        Kernel::MatmulQ8_0,
        Kernel::QuantizeQ8,
        Kernel::RmsNorm,
        Kernel::Add,
        Kernel::AddRows,
        Kernel::SiluMul,
        Kernel::Rope,
        Kernel::Attention,
        Kernel::Gemm,
        Kernel::MatmulBackwardF32,
        Kernel::MatmulBackwardQ4_1,
        Kernel::MatmulBackwardQ8_0,
        Kernel::RmsNormBackward,
        Kernel::Mul,
        Kernel::SiluMulBackward,
        Kernel::AttentionProbs,
        Kernel::AttentionBackwardQ,
        Kernel::AttentionBackwardKv,
        Kernel::LogSoftmax,
        Kernel::LogSoftmaxBackward,
        Kernel::TopK,
        Kernel::Gather,
        Kernel::ScatterAdd,
    ];

    /// WGSL source and entry point.
    fn source(self) -> (String, &'static str) {
        const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");
        const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
        const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
        const BACKWARD: &str = include_str!("../../../shaders/matmul_backward.wgsl");
        const F32: &str = include_str!("../../../shaders/matmul_f32.wgsl");
        const Q4_1: &str = include_str!("../../../shaders/matmul_q4_1.wgsl");
        const Q8_0: &str = include_str!("../../../shaders/matmul_q8_0.wgsl");
        const RMS_NORM: &str = include_str!("../../../shaders/rms_norm.wgsl");
        const ATTENTION_TRAIN: &str = include_str!("../../../shaders/attention_train.wgsl");
        const LOG_SOFTMAX: &str = include_str!("../../../shaders/log_softmax.wgsl");
        const GATHER: &str = include_str!("../../../shaders/gather.wgsl");
        let matmul = |format: &str| format!("{REDUCE}\n{MATMUL}\n{format}");
        let backward = |format: &str| format!("{REDUCE}\n{MATMUL}\n{format}\n{BACKWARD}");
        match self {
            Kernel::MatmulF32 => (matmul(F32), "main"),
            Kernel::MatmulQ4_1 => (matmul(Q4_1), "main"),
            Kernel::MatmulQ8_0 => (matmul(Q8_0), "main"),
            Kernel::QuantizeQ8 => (
                include_str!("../../../shaders/quantize_q8.wgsl").into(),
                "main",
            ),
            Kernel::RmsNorm => (format!("{REDUCE}\n{RMS_NORM}"), "main"),
            Kernel::Add => (ELEMENTWISE.into(), "add"),
            Kernel::AddRows => (ELEMENTWISE.into(), "add_rows"),
            Kernel::SiluMul => (ELEMENTWISE.into(), "silu_mul"),
            Kernel::Rope => (include_str!("../../../shaders/rope.wgsl").into(), "main"),
            Kernel::Attention => (
                include_str!("../../../shaders/attention.wgsl").into(),
                "main",
            ),
            Kernel::Gemm => (include_str!("../../../shaders/gemm.wgsl").into(), "main"),
            Kernel::MatmulBackwardF32 => (backward(F32), "backward"),
            Kernel::MatmulBackwardQ4_1 => (backward(Q4_1), "backward"),
            Kernel::MatmulBackwardQ8_0 => (backward(Q8_0), "backward"),
            Kernel::RmsNormBackward => (format!("{REDUCE}\n{RMS_NORM}"), "backward"),
            Kernel::Mul => (ELEMENTWISE.into(), "mul"),
            Kernel::SiluMulBackward => (ELEMENTWISE.into(), "silu_mul_backward"),
            Kernel::AttentionProbs => (format!("{REDUCE}\n{ATTENTION_TRAIN}"), "probs"),
            Kernel::AttentionBackwardQ => (format!("{REDUCE}\n{ATTENTION_TRAIN}"), "backward_q"),
            Kernel::AttentionBackwardKv => (format!("{REDUCE}\n{ATTENTION_TRAIN}"), "backward_kv"),
            Kernel::LogSoftmax => (format!("{REDUCE}\n{LOG_SOFTMAX}"), "main"),
            Kernel::LogSoftmaxBackward => (format!("{REDUCE}\n{LOG_SOFTMAX}"), "backward"),
            Kernel::TopK => (include_str!("../../../shaders/top_k.wgsl").into(), "main"),
            Kernel::Gather => (GATHER.into(), "gather"),
            Kernel::ScatterAdd => (GATHER.into(), "scatter_add"),
        }
    }
}

/// Workgroups per dimension that every adapter accepts.
const MAX_GROUPS: u32 = 65_535;
/// Invocations per workgroup of the element-wise kernels.
const WG: u32 = 64;

/// A dispatch over `rows` workgroups, spread over x and y: `(groups_x, groups_y)`.
pub(crate) fn grid(rows: usize) -> (u32, u32) {
    let rows = rows.max(1) as u32;
    let gx = rows.min(MAX_GROUPS);
    (gx, rows.div_ceil(gx))
}

/// A dispatch of `n` invocations in workgroups of 64: `(groups_x, groups_y, width)`, where
/// invocation `(x, y)` is index `x + y · width`.
pub(crate) fn grid_1d(n: usize) -> (u32, u32, u32) {
    let (gx, gy) = grid((n as u32).div_ceil(WG) as usize);
    (gx, gy, gx * WG)
}

/// The per-call parameters of a `shaders/matmul.wgsl` kernel (its `MatParams`, beside the
/// matrix's shape).
struct MatParams {
    t: usize,
    scale: f32,
    accumulate: bool,
    /// Workgroups along x, when rows spread over x and y.
    groups_x: u32,
}

/// An open GPU: device, queue, the compiled kernels, and the commands recorded so far.
pub struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pipelines: Vec<wgpu::ComputePipeline>,
    /// Commands recorded since the last submit; [`Context::download`] submits them.
    pending: Mutex<Option<wgpu::CommandEncoder>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.describe())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Opens the best adapter `choice` allows (discrete over integrated over the rest) and
    /// compiles every kernel.
    ///
    /// # Errors
    /// [`GpuError::NoAdapter`] when wgpu finds none of that kind (no driver, no GPU, or only
    /// a software one under [`AdapterChoice::Hardware`]); [`GpuError::Device`] when the
    /// adapter refuses a device.
    pub fn open(choice: AdapterChoice) -> Result<Arc<Self>, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::PRIMARY;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        let rank = |t: wgpu::DeviceType| match t {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let seen: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
        let adapter = adapters
            .into_iter()
            .filter(|a| {
                choice == AdapterChoice::Any || a.get_info().device_type != wgpu::DeviceType::Cpu
            })
            .min_by_key(|a| rank(a.get_info().device_type))
            .ok_or_else(|| {
                GpuError::NoAdapter(if seen.is_empty() {
                    "wgpu sees no Vulkan, Metal or DX12 adapter".into()
                } else {
                    format!(
                        "only software adapters: {}; `--device gpu` uses them anyway",
                        seen.join(", ")
                    )
                })
            })?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("clawrl"),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device {
            adapter: describe(&info),
            reason: e.to_string(),
        })?;
        let pipelines = Kernel::ALL
            .iter()
            .map(|k| {
                let (source, entry) = k.source();
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(entry),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        info!(adapter = %describe(&info), "GPU opened");
        Ok(Arc::new(Self {
            device,
            queue,
            info,
            pipelines,
            pending: Mutex::new(None),
        }))
    }

    /// The adapter, for display: name, API and kind (`llvmpipe (…) · Vulkan · Cpu`).
    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    /// The most f32 values one tensor may hold: the smaller of the device's largest buffer and
    /// largest storage binding, and of what a u32 index reaches (the kernels' indices).
    pub fn max_tensor_len(&self) -> usize {
        let limits = self.device.limits();
        let bytes = limits
            .max_buffer_size
            .min(limits.max_storage_buffer_binding_size);
        usize::try_from((bytes / 4).min(u64::from(u32::MAX))).unwrap_or(usize::MAX)
    }

    /// Runs `f`, turning the device's out-of-memory and validation errors in it (which would
    /// otherwise end the process) into an error: a pass too large for the device's memory
    /// fails cleanly. Error scopes are per thread, so another thread's work is not caught.
    ///
    /// # Errors
    /// [`GpuError::Failed`] with wgpu's message.
    pub fn capture<R>(&self, f: impl FnOnce() -> R) -> Result<R, GpuError> {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(memory.pop()),
        ];
        match errors.into_iter().flatten().next() {
            Some(e) => Err(GpuError::Failed(e.to_string())),
            None => Ok(out),
        }
    }

    /// Whether the adapter is a software rasteriser (lavapipe, WARP).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    fn buffer(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// `len` zeros (wgpu zero-fills new buffers).
    pub fn zeros(&self, len: usize) -> GpuTensor {
        GpuTensor::new(self.buffer(4 * len as u64), len)
    }

    /// A device copy of `x`.
    pub fn upload(&self, x: &[f32]) -> GpuTensor {
        self.upload_words(bytemuck::cast_slice(x))
    }

    fn upload_words(&self, words: &[u32]) -> GpuTensor {
        let t = GpuTensor::new(self.buffer(4 * words.len() as u64), words.len());
        if !words.is_empty() {
            self.queue
                .write_buffer(t.buffer(), 0, bytemuck::cast_slice(words));
        }
        t
    }

    /// Uploads a weight matrix in its stored format ([`clawrl_kernels::Packed`]).
    pub fn upload_matrix(&self, w: &QMatrix) -> GpuMatrix {
        let p = w.packed();
        GpuMatrix {
            rows: w.rows(),
            cols: w.cols(),
            format: p.format,
            data: self.upload_words(&p.words),
            d: p.d.map(|d| self.upload(&d)),
            m: p.m.map(|m| self.upload(&m)),
        }
    }

    /// Records into the pending encoder.
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let encoder = pending.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(encoder);
    }

    /// Copies `len` values from `src[from..]` to `dst[to..]`.
    pub(crate) fn copy(
        &self,
        src: &wgpu::Buffer,
        from: usize,
        dst: &wgpu::Buffer,
        to: usize,
        len: usize,
    ) {
        if len > 0 {
            self.record(|e| {
                e.copy_buffer_to_buffer(src, 4 * from as u64, dst, 4 * to as u64, 4 * len as u64);
            });
        }
    }

    /// Records one dispatch of `kernel`: `params` at binding 0, `buffers` at 1, 2, ….
    pub(crate) fn dispatch(
        &self,
        kernel: Kernel,
        params: [u32; 8],
        buffers: &[&GpuTensor],
        groups: (u32, u32, u32),
    ) {
        let at: Vec<(u32, &GpuTensor)> = (1..).zip(buffers.iter().copied()).collect();
        self.dispatch_at(kernel, params, &at, groups);
    }

    /// Records one dispatch of `kernel`: `params` at binding 0, each buffer at its binding
    /// (for the entry points of a shared module that use some of its bindings).
    pub(crate) fn dispatch_at(
        &self,
        kernel: Kernel,
        params: [u32; 8],
        buffers: &[(u32, &GpuTensor)],
        groups: (u32, u32, u32),
    ) {
        let pipeline = &self.pipelines[kernel as usize];
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(buffers.iter().map(|(i, b)| wgpu::BindGroupEntry {
            binding: *i,
            resource: b.buffer().as_entire_binding(),
        }));
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|e| {
            let mut pass = e.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        });
    }

    /// `y = scale · W·x` (or `y += …` with `accumulate`) for `t` rows of `x`, with the
    /// CPU's 8-bit activations where `act` asks for them and `W` is quantized.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        w: &GpuMatrix,
        x: &GpuTensor,
        t: usize,
        scale: f32,
        accumulate: bool,
        act: Activations,
        y: &GpuTensor,
    ) {
        if t == 0 {
            return;
        }
        let quantized;
        let x = if act.quantized(t) && w.format != Format::F32 {
            quantized = self.zeros(x.len());
            let blocks = x.len() / 32;
            let (gx, gy, width) = grid_1d(blocks);
            self.dispatch(
                Kernel::QuantizeQ8,
                [blocks as u32, width, 0, 0, 0, 0, 0, 0],
                &[x, &quantized],
                (gx, gy, 1),
            );
            &quantized
        } else {
            x
        };
        let (gx, gy) = grid(w.rows);
        let kernel = match w.format {
            Format::F32 => Kernel::MatmulF32,
            Format::Q4_1 => Kernel::MatmulQ4_1,
            Format::Q8_0 => Kernel::MatmulQ8_0,
        };
        let params = MatParams {
            t,
            scale,
            accumulate,
            groups_x: gx,
        };
        self.dispatch_matrix(kernel, w, x, y, params, (gx, gy, t as u32));
    }

    /// The input gradient `dx (+)= dy·W` for `t` rows of `dy` (`t × rows` in, `t × cols`
    /// out).
    pub(crate) fn matmul_backward(
        &self,
        w: &GpuMatrix,
        dy: &GpuTensor,
        t: usize,
        accumulate: bool,
        dx: &GpuTensor,
    ) {
        if t == 0 {
            return;
        }
        let kernel = match w.format {
            Format::F32 => Kernel::MatmulBackwardF32,
            Format::Q4_1 => Kernel::MatmulBackwardQ4_1,
            Format::Q8_0 => Kernel::MatmulBackwardQ8_0,
        };
        let params = MatParams {
            t,
            scale: 1.0,
            accumulate,
            groups_x: 0,
        };
        let groups = ((w.cols as u32).div_ceil(WG), t as u32, 1);
        self.dispatch_matrix(kernel, w, dy, dx, params, groups);
    }

    /// One dispatch of a `shaders/matmul.wgsl` kernel: `input` at binding 1, `output` at 2,
    /// then the matrix's buffers.
    fn dispatch_matrix(
        &self,
        kernel: Kernel,
        w: &GpuMatrix,
        input: &GpuTensor,
        output: &GpuTensor,
        p: MatParams,
        groups: (u32, u32, u32),
    ) {
        let mut buffers = vec![input, output, &w.data];
        buffers.extend(w.d.as_ref());
        buffers.extend(w.m.as_ref());
        let params = [
            w.rows as u32,
            w.cols as u32,
            p.t as u32,
            u32::from(p.accumulate),
            p.scale.to_bits(),
            p.groups_x,
            0,
            0,
        ];
        self.dispatch(kernel, params, &buffers, groups);
    }

    /// Uploads `words` (indices) as a device buffer.
    pub(crate) fn upload_u32(&self, words: &[u32]) -> GpuTensor {
        self.upload_words(words)
    }

    /// Reads `x` back as u32 words (indices written by a kernel).
    pub(crate) fn download_u32(&self, x: &GpuTensor) -> Vec<u32> {
        self.download(x).into_iter().map(f32::to_bits).collect()
    }

    /// One element-wise kernel over `x` and `y` (`m`: the bias length of `add_rows`).
    pub(crate) fn elementwise(&self, kernel: Kernel, x: &GpuTensor, y: &GpuTensor, m: usize) {
        if x.is_empty() {
            return;
        }
        let (gx, gy, width) = grid_1d(x.len());
        self.dispatch(
            kernel,
            [x.len() as u32, m as u32, width, 0, 0, 0, 0, 0],
            &[x, y],
            (gx, gy, 1),
        );
    }

    /// Submits what was recorded, waits, and reads `x` back.
    ///
    /// # Panics
    /// If the device is lost while waiting (a driver reset), which no caller can repair.
    /// A read-back that fails after an error inside [`Context::capture`] gives zeros.
    pub fn download(&self, x: &GpuTensor) -> Vec<f32> {
        if x.is_empty() {
            return Vec::new();
        }
        let bytes = 4 * x.len() as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|e| e.copy_buffer_to_buffer(x.buffer(), 0, &staging, 0, bytes));
        {
            // Held through the submit: a thread recording after the take must not submit its
            // later commands before these (serving and training share the device).
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(encoder) = pending.take() {
                self.queue.submit([encoder.finish()]);
            }
        }
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            // The receiver waits below; it cannot have gone.
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the GPU was lost while computing");
        let mapped = rx.recv().expect("wgpu dropped the read-back callback");
        if let Err(e) = mapped {
            // Only after an error wgpu already reported: uncaptured, it has ended the process;
            // inside `capture`, the caller gets it and discards these values.
            tracing::error!(error = %e, "GPU read-back failed");
            return vec![0.0; x.len()];
        }
        let out = bytemuck::cast_slice(
            &slice
                .get_mapped_range()
                .expect("the read-back buffer was mapped above"),
        )
        .to_vec();
        staging.unmap();
        debug!(values = x.len(), "GPU read-back");
        out
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} · {:?} · {:?}",
        info.name, info.backend, info.device_type
    )
}
