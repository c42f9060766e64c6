// Indexed reads and writes, one invocation per index:
// `gather`       dst[j] = src[idx[j]];
// `scatter_add`  dst[idx[j]] += src[j] (the indices must be distinct).

struct GatherParams {
    n: u32,
    width: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) g: vec3<u32>) {
    let j = g.x + g.y * p.width;
    if j < p.n {
        dst[j] = src[idx[j]];
    }
}

@compute @workgroup_size(64)
fn scatter_add(@builtin(global_invocation_id) g: vec3<u32>) {
    let j = g.x + g.y * p.width;
    if j < p.n {
        dst[idx[j]] = dst[idx[j]] + src[j];
    }
}
