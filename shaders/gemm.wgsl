// C = α·op(A)·op(B) (+ C): the f32 products of training (LoRA's A and B, their gradients).
// op(A) is m × k, stored row-major as itself or (trans_a) as its k × m transpose; likewise
// op(B), k × n, or (trans_b) n × k. Tiles of 16 × 16: each invocation computes one entry of C,
// the workgroup staging one tile of A and one of B in workgroup memory per step along k.

struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    alpha: f32,
    // 1: add into C; 0: overwrite C.
    accumulate: u32,
    _pad: u32,
}

const T: u32 = 16u;

@group(0) @binding(0) var<uniform> p: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

var<workgroup> tile_a: array<array<f32, 16>, 16>;
var<workgroup> tile_b: array<array<f32, 16>, 16>;

fn at_a(r: u32, kk: u32) -> f32 {
    if p.trans_a == 1u {
        return a[kk * p.m + r];
    }
    return a[r * p.k + kk];
}

fn at_b(kk: u32, col: u32) -> f32 {
    if p.trans_b == 1u {
        return b[col * p.k + kk];
    }
    return b[kk * p.n + col];
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * T + lid.y;
    let col = wid.x * T + lid.x;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + T) {
        let ka = k0 + lid.x;
        var av = 0.0;
        if row < p.m && ka < p.k {
            av = at_a(row, ka);
        }
        tile_a[lid.y][lid.x] = av;
        let kb = k0 + lid.y;
        var bv = 0.0;
        if kb < p.k && col < p.n {
            bv = at_b(kb, col);
        }
        tile_b[lid.y][lid.x] = bv;
        workgroupBarrier();
        for (var j = 0u; j < T; j = j + 1u) {
            acc = acc + tile_a[lid.y][j] * tile_b[j][lid.x];
        }
        workgroupBarrier();
    }
    if row < p.m && col < p.n {
        let o = row * p.n + col;
        var v = p.alpha * acc;
        if p.accumulate == 1u {
            v = v + c[o];
        }
        c[o] = v;
    }
}
