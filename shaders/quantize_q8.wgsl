// The decode path's 8-bit activations, as the CPU engine (and ggml) computes them before a
// quantized matrix–vector product: per 32-value block, d = max|x| / 127 and q = round(x / d)
// (half away from zero, as Rust's and C's round); `out` gets d·q. Products of the weights
// with d·q equal the CPU's integer dot products scaled by d, up to f32 rounding.
// One invocation per block.

struct QuantParams {
    blocks: u32,
    width: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: QuantParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let b = g.x + g.y * p.width;
    if b >= p.blocks {
        return;
    }
    let base = b * 32u;
    var amax = 0.0;
    for (var i = 0u; i < 32u; i = i + 1u) {
        amax = max(amax, abs(x[base + i]));
    }
    let d = amax / 127.0;
    var id = 0.0;
    if d != 0.0 {
        id = 1.0 / d;
    }
    for (var i = 0u; i < 32u; i = i + 1u) {
        let v = x[base + i] * id;
        let q = sign(v) * floor(abs(v) + 0.5);
        out[base + i] = d * q;
    }
}
