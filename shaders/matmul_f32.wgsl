// Plain f32 weights, row-major (`rows × cols`); LoRA's A and B are stored this way.

@group(0) @binding(3) var<storage, read> w: array<f32>;

fn partial_dot(row: u32, xoff: u32, lid: u32) -> f32 {
    var s = 0.0;
    let base = row * p.cols;
    for (var c = lid; c < p.cols; c = c + WG) {
        s = s + w[base + c] * x[xoff + c];
    }
    return s;
}

fn weight_at(row: u32, col: u32) -> f32 {
    return w[row * p.cols + col];
}
