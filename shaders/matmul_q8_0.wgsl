// ggml Q8_0 weights, repacked on upload: `d` (one f32 per 32-value block) and the block's
// 32 signed bytes as 8 u32 words; value = d·q.

@group(0) @binding(3) var<storage, read> qs: array<u32>;
@group(0) @binding(4) var<storage, read> d: array<f32>;

fn partial_dot(row: u32, xoff: u32, lid: u32) -> f32 {
    var s = 0.0;
    let blocks = p.cols / 32u;
    let words = blocks * 8u;
    for (var i = lid; i < words; i = i + WG) {
        let word = qs[row * words + i];
        let c = xoff + i * 4u;
        var acc = 0.0;
        for (var j = 0u; j < 4u; j = j + 1u) {
            // Sign-extend byte j: shift it to the top, then arithmetic-shift back down.
            let q = bitcast<i32>(word << (24u - 8u * j)) >> 24u;
            acc = acc + f32(q) * x[c + j];
        }
        s = s + d[row * blocks + i / 8u] * acc;
    }
    return s;
}

fn weight_at(row: u32, col: u32) -> f32 {
    let blocks = p.cols / 32u;
    let word = qs[row * blocks * 8u + col / 4u];
    let q = bitcast<i32>(word << (24u - 8u * (col % 4u))) >> 24u;
    return d[row * blocks + col / 32u] * f32(q);
}
