// RMSNorm of every n-long row: out = x / sqrt(mean(x²) + eps) · w. One workgroup per row.
// Joined with reduce.wgsl.

struct NormParams {
    n: u32,
    rows: u32,
    eps: f32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    let live = row < p.rows;
    let base = row * p.n;
    var s = 0.0;
    if live {
        for (var i = lid; i < p.n; i = i + WG) {
            let v = x[base + i];
            s = s + v * v;
        }
    }
    let sum = workgroup_sum(s, lid);
    if live {
        let inv = 1.0 / sqrt(sum / f32(p.n) + p.eps);
        for (var i = lid; i < p.n; i = i + WG) {
            out[base + i] = x[base + i] * inv * w[i];
        }
    }
}

// The backward, `out` holding dx: with r = 1/rms(x) and g = dy·w,
// dx = r·g − x·r³·mean(g·x) (clawrl_kernels::ops::rms_norm_backward).
@group(0) @binding(4) var<storage, read> dy: array<f32>;

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    let live = row < p.rows;
    let base = row * p.n;
    var sq = 0.0;
    var gx = 0.0;
    if live {
        for (var i = lid; i < p.n; i = i + WG) {
            let v = x[base + i];
            sq = sq + v * v;
            gx = gx + dy[base + i] * w[i] * v;
        }
    }
    let sum_sq = workgroup_sum(sq, lid);
    workgroupBarrier();
    let sum_gx = workgroup_sum(gx, lid);
    if live {
        let r = 1.0 / sqrt(sum_sq / f32(p.n) + p.eps);
        let c = r * r * r * sum_gx / f32(p.n);
        for (var i = lid; i < p.n; i = i + WG) {
            out[base + i] = r * dy[base + i] * w[i] - x[base + i] * c;
        }
    }
}
