// ggml Q4_1 weights, repacked on upload: `d` and `m` (one f32 each per 32-value block) and
// the block's 16 bytes of nibbles as 4 u32 words. Byte j holds value j in its low nibble
// and value j + 16 in its high one; value = d·q + m.

@group(0) @binding(3) var<storage, read> qs: array<u32>;
@group(0) @binding(4) var<storage, read> d: array<f32>;
@group(0) @binding(5) var<storage, read> m: array<f32>;

fn partial_dot(row: u32, xoff: u32, lid: u32) -> f32 {
    var s = 0.0;
    let blocks = p.cols / 32u;
    let words = blocks * 4u;
    for (var i = lid; i < words; i = i + WG) {
        let b = row * blocks + i / 4u;
        let word = qs[row * words + i];
        // Values 4k..4k+3 (low nibbles) and 4k+16..4k+19 (high nibbles) of block i / 4.
        let c = xoff + (i / 4u) * 32u + (i % 4u) * 4u;
        var qx = 0.0;
        var xs = 0.0;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let byte = (word >> (8u * j)) & 0xffu;
            let xl = x[c + j];
            let xh = x[c + 16u + j];
            qx = qx + f32(byte & 0xfu) * xl + f32(byte >> 4u) * xh;
            xs = xs + xl + xh;
        }
        s = s + d[b] * qx + m[b] * xs;
    }
    return s;
}

fn weight_at(row: u32, col: u32) -> f32 {
    let b = row * (p.cols / 32u) + col / 32u;
    let i = col % 32u;
    let j = i % 16u;
    let byte = (qs[b * 4u + j / 4u] >> (8u * (j % 4u))) & 0xffu;
    var q = byte & 0xfu;
    if i >= 16u {
        q = byte >> 4u;
    }
    return d[b] * f32(q) + m[b];
}
