// y[t, r] (+)= scale · Σ_c W[r, c] · x[t, c]: one workgroup per (output row, token).
//
// Joined with reduce.wgsl and one of matmul_f32.wgsl, matmul_q4_1.wgsl, matmul_q8_0.wgsl,
// which defines `partial_dot(row, xoff, lid)`: this thread's share of the row's dot product
// with the input row starting at `xoff`, over a stride of WG threads.

struct MatParams {
    rows: u32,
    cols: u32,
    tokens: u32,
    // 1: add into y; 0: overwrite y.
    accumulate: u32,
    scale: f32,
    // Workgroups along x in the dispatch: rows are spread over x and y (each ≤ 65535).
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    let t = wid.z;
    // Uniform across the workgroup, so the barriers of workgroup_sum stay in uniform control flow.
    let live = row < p.rows;
    var s = 0.0;
    if live {
        s = partial_dot(row, t * p.cols, lid);
    }
    let sum = workgroup_sum(s, lid);
    if live && lid == 0u {
        let o = t * p.rows + row;
        var v = p.scale * sum;
        if p.accumulate == 1u {
            v = v + y[o];
        }
        y[o] = v;
    }
}
