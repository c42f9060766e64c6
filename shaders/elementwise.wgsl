// Element-wise kernels over n values, one invocation each:
// `add` x += y; `add_rows` x[i] += y[i mod m] (a bias on every row);
// `silu_mul` x = silu(x) · y (the SwiGLU gate); `mul` x = x · y;
// `silu_mul_backward` (x the gate g, y the up u): dg = dy·u·s·(1 + g·(1 − s)) and
// du = dy·g·s with s = σ(g) (clawrl_kernels::ops::silu_mul_backward).

struct EltParams {
    n: u32,
    m: u32,
    // Invocations along x in the dispatch (a multiple of 64): the index spans x and y.
    width: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: EltParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x + g.y * p.width;
    if i < p.n {
        x[i] = x[i] + y[i];
    }
}

@compute @workgroup_size(64)
fn add_rows(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x + g.y * p.width;
    if i < p.n {
        x[i] = x[i] + y[i % p.m];
    }
}

@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x + g.y * p.width;
    if i < p.n {
        let a = x[i];
        x[i] = a / (1.0 + exp(-a)) * y[i];
    }
}

@compute @workgroup_size(64)
fn mul(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x + g.y * p.width;
    if i < p.n {
        x[i] = x[i] * y[i];
    }
}

@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dg: array<f32>;
@group(0) @binding(5) var<storage, read_write> du: array<f32>;

@compute @workgroup_size(64)
fn silu_mul_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.width;
    if i < p.n {
        let g = x[i];
        let s = 1.0 / (1.0 + exp(-g));
        dg[i] = dy[i] * y[i] * s * (1.0 + g * (1.0 - s));
        du[i] = dy[i] * g * s;
    }
}
