// y[t, r] (+)= scale · Σ_c W[r, c] · x[t, c]: one workgroup per (output row, token).
//
// Prepended with one of matmul_f32.wgsl, matmul_q4_1.wgsl or matmul_q8_0.wgsl, which
// define `partial_dot(row, xoff, lid)`: this thread's share of the row's dot product with
// the input row starting at `xoff`, over a stride of WG threads.

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

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    let t = wid.z;
    // Uniform across the workgroup, so the barriers below stay in uniform control flow.
    let live = row < p.rows;
    var s = 0.0;
    if live {
        s = partial_dot(row, t * p.cols, lid);
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step = step / 2u) {
        if lid < step {
            partial[lid] = partial[lid] + partial[lid + step];
        }
        workgroupBarrier();
    }
    if live && lid == 0u {
        let o = t * p.rows + row;
        var v = p.scale * partial[0];
        if p.accumulate == 1u {
            v = v + y[o];
        }
        y[o] = v;
    }
}
