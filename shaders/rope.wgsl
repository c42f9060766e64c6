// Rotary position embedding in place over rows of `heads × head_dim` at positions
// pos0, pos0 + 1, …: each invocation rotates one pair (a, b) of one head by the angle
// pos · θ^(−2j/dim), from the cos/sin tables (`positions × half`).
// With `inverse`, the angle's sign flips.
// style 0 pairs (2j, 2j + 1) (GGUF Llama), style 1 pairs (j, j + half) (neox).

struct RopeParams {
    heads: u32,
    head_dim: u32,
    half: u32,
    pos0: u32,
    total: u32,
    style: u32,
    width: u32,
    // 1: rotate by −angle (the backward: a rotation's inverse is its transpose).
    inverse: u32,
}

@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let idx = g.x + g.y * p.width;
    if idx >= p.total {
        return;
    }
    // idx = ((row · heads) + head) · half + j
    let j = idx % p.half;
    let rh = idx / p.half;
    let row = rh / p.heads;
    let base = rh * p.head_dim;
    var a = base + 2u * j;
    var b = a + 1u;
    if p.style == 1u {
        a = base + j;
        b = base + j + p.half;
    }
    let t = (p.pos0 + row) * p.half + j;
    let c = cos_t[t];
    var s = sin_t[t];
    if p.inverse == 1u {
        s = -s;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
