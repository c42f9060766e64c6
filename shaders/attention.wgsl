// Causal attention of query rows (`heads × head_dim` each, at positions pos0 + i) over the
// cached keys and values (`kv_heads × head_dim` per position), grouped-query: query head h
// reads key/value head h / (heads / kv_heads). One workgroup per (query row, head).
//
// The positions are read in tiles of WG: each invocation scores one position of the tile,
// then every invocation folds the tile into a running softmax (max, sum) and accumulates
// its output dimensions (lid, lid + WG): head_dim ≤ 2·WG.

struct AttnParams {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    pos0: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: AttnParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> scores: array<f32, WG>;
var<workgroup> qh: array<f32, 128>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let i = wid.y;
    let hd = p.head_dim;
    let kvh = h / (p.heads / p.kv_heads);
    let stride = p.kv_heads * hd;
    let qoff = (i * p.heads + h) * hd;
    for (var d = lid; d < hd; d = d + WG) {
        qh[d] = q[qoff + d];
    }
    workgroupBarrier();
    let n = p.pos0 + i + 1u;
    var run_max = -3.0e38;
    var run_sum = 0.0;
    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var t0 = 0u; t0 < n; t0 = t0 + WG) {
        let pos = t0 + lid;
        var sc = -3.0e38;
        if pos < n {
            let off = pos * stride + kvh * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + qh[d] * k[off + d];
            }
            sc = dot * p.scale;
        }
        scores[lid] = sc;
        workgroupBarrier();
        let count = min(WG, n - t0);
        var tile_max = run_max;
        for (var j = 0u; j < count; j = j + 1u) {
            tile_max = max(tile_max, scores[j]);
        }
        let rescale = exp(run_max - tile_max);
        run_sum = run_sum * rescale;
        acc0 = acc0 * rescale;
        acc1 = acc1 * rescale;
        for (var j = 0u; j < count; j = j + 1u) {
            let w = exp(scores[j] - tile_max);
            run_sum = run_sum + w;
            let voff = (t0 + j) * stride + kvh * hd;
            if lid < hd {
                acc0 = acc0 + w * v[voff + lid];
            }
            if lid + WG < hd {
                acc1 = acc1 + w * v[voff + lid + WG];
            }
        }
        run_max = tile_max;
        workgroupBarrier();
    }
    if lid < hd {
        out[qoff + lid] = acc0 / run_sum;
    }
    if lid + WG < hd {
        out[qoff + lid + WG] = acc1 / run_sum;
    }
}
