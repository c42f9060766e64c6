// The input gradient of y = W·x: dx[t, c] (+)= scale · Σ_r dy[t, r] · W[r, c], one invocation
// per (input column, token), the columns of a workgroup reading a row of W side by side.
//
// Joined after matmul.wgsl (its parameters: `x` holds dy, `t × rows`; `y` holds dx,
// `t × cols`) and one of the format files, which defines `weight_at(row, col)`.

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    let t = g.y;
    if c >= p.cols {
        return;
    }
    var s = 0.0;
    let dy0 = t * p.rows;
    for (var r = 0u; r < p.rows; r = r + 1u) {
        s = s + x[dy0 + r] * weight_at(r, c);
    }
    let o = t * p.cols + c;
    var v = p.scale * s;
    if p.accumulate == 1u {
        v = v + y[o];
    }
    y[o] = v;
}
