// The k largest entries' columns of every `width`-long row, largest first, ties to the lower
// column (clawrl_kernels::ops::top_k). One workgroup per row; round r finds the best entry
// after round r − 1's in that order, each invocation over a stride of the row, then a
// workgroup reduction of (value, column) pairs.

struct TopKParams {
    width: u32,
    rows: u32,
    k: u32,
    groups_x: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: TopKParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

// Whether (va, ia) comes before (vb, ib): larger value, then lower column.
fn before(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    return va > vb || (va == vb && ia < ib);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    let live = row < p.rows;
    let base = row * p.width;
    // The previous round's pick; the first round accepts everything.
    var prev_v = 3.0e38;
    var prev_i = 0u;
    var first = true;
    let none = 0xffffffffu;
    for (var r = 0u; r < p.k; r = r + 1u) {
        var bv = -3.0e38;
        var bi = none;
        if live {
            for (var c = lid; c < p.width; c = c + WG) {
                let v = x[base + c];
                let after = first || before(prev_v, prev_i, v, c);
                if after && (bi == none || before(v, c, bv, bi)) {
                    bv = v;
                    bi = c;
                }
            }
        }
        best_v[lid] = bv;
        best_i[lid] = bi;
        workgroupBarrier();
        for (var step = WG / 2u; step > 0u; step = step / 2u) {
            if lid < step {
                let ov = best_v[lid + step];
                let oi = best_i[lid + step];
                if oi != none && (best_i[lid] == none || before(ov, oi, best_v[lid], best_i[lid])) {
                    best_v[lid] = ov;
                    best_i[lid] = oi;
                }
            }
            workgroupBarrier();
        }
        prev_v = best_v[0];
        prev_i = best_i[0];
        first = false;
        if live && lid == 0u {
            ids[row * p.k + r] = prev_i;
        }
        workgroupBarrier();
    }
}
