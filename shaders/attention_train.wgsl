// Causal attention for training: t positions over themselves (position 0 first), keeping the
// probabilities P (`heads × t × t`, zero above the diagonal) for the backward. Layouts as in
// attention.wgsl: q and o rows of `heads × head_dim`, k and v rows of `kv_heads × head_dim`;
// query head h reads key/value head h / (heads / kv_heads); head_dim ≤ 2·WG.
//
// `probs`        one workgroup per (head, query row i): P[h, i, ·] and o[i, h, ·].
// `backward_q`   one workgroup per (head, i): dS[h, i, j] = s·P_ij·(dP_ij − Σ_j' P_ij'·dP_ij')
//                with dP_ij = dO_i·V_j, then dQ_i = Σ_j dS_ij·K_j (s = `scale`).
// `backward_kv`  one workgroup per (key/value head, position j): dK_j = Σ_h Σ_i dS[h, i, j]·Q_i
//                and dV_j = Σ_h Σ_i P[h, i, j]·dO_i over the query heads h of the group, i ≥ j.

struct TrainAttnParams {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    t: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: TrainAttnParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> pm: array<f32>;
// o in `probs`, dO in the backward.
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read_write> dq: array<f32>;
@group(0) @binding(7) var<storage, read_write> ds: array<f32>;
@group(0) @binding(8) var<storage, read_write> dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> dv: array<f32>;

var<workgroup> row_h: array<f32, 128>;
var<workgroup> red: array<f32, WG>;

fn reduce_max(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step = step / 2u) {
        if lid < step {
            red[lid] = max(red[lid], red[lid + step]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step = step / 2u) {
        if lid < step {
            red[lid] = red[lid] + red[lid + step];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn probs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let i = wid.y;
    let hd = p.head_dim;
    let kvh = h / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * hd;
    let qoff = (i * p.heads + h) * hd;
    let prow = (h * p.t + i) * p.t;
    for (var c = lid; c < hd; c = c + WG) {
        row_h[c] = q[qoff + c];
    }
    workgroupBarrier();
    var local_max = -3.0e38;
    for (var j = lid; j < p.t; j = j + WG) {
        var sc = 0.0;
        if j <= i {
            let off = j * kv_stride + kvh * hd;
            var dot = 0.0;
            for (var c = 0u; c < hd; c = c + 1u) {
                dot = dot + row_h[c] * k[off + c];
            }
            sc = dot * p.scale;
            local_max = max(local_max, sc);
        }
        pm[prow + j] = sc;
    }
    let m = reduce_max(local_max, lid);
    var local_sum = 0.0;
    for (var j = lid; j <= i; j = j + WG) {
        let e = exp(pm[prow + j] - m);
        pm[prow + j] = e;
        local_sum = local_sum + e;
    }
    let inv = 1.0 / reduce_sum(local_sum, lid);
    for (var j = lid; j <= i; j = j + WG) {
        pm[prow + j] = pm[prow + j] * inv;
    }
    storageBarrier();
    workgroupBarrier();
    for (var c = lid; c < hd; c = c + WG) {
        var acc = 0.0;
        for (var j = 0u; j <= i; j = j + 1u) {
            acc = acc + pm[prow + j] * v[j * kv_stride + kvh * hd + c];
        }
        o[qoff + c] = acc;
    }
}

@compute @workgroup_size(64)
fn backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let i = wid.y;
    let hd = p.head_dim;
    let kvh = h / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * hd;
    let qoff = (i * p.heads + h) * hd;
    let prow = (h * p.t + i) * p.t;
    for (var c = lid; c < hd; c = c + WG) {
        row_h[c] = o[qoff + c];
    }
    workgroupBarrier();
    var local = 0.0;
    for (var j = lid; j < p.t; j = j + WG) {
        var dp = 0.0;
        if j <= i {
            let off = j * kv_stride + kvh * hd;
            for (var c = 0u; c < hd; c = c + 1u) {
                dp = dp + row_h[c] * v[off + c];
            }
            local = local + pm[prow + j] * dp;
        }
        ds[prow + j] = dp;
    }
    let dot = reduce_sum(local, lid);
    for (var j = lid; j < p.t; j = j + WG) {
        ds[prow + j] = p.scale * pm[prow + j] * (ds[prow + j] - dot);
    }
    storageBarrier();
    workgroupBarrier();
    for (var c = lid; c < hd; c = c + WG) {
        var acc = 0.0;
        for (var j = 0u; j <= i; j = j + 1u) {
            acc = acc + ds[prow + j] * k[j * kv_stride + kvh * hd + c];
        }
        dq[qoff + c] = acc;
    }
}

@compute @workgroup_size(64)
fn backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let kvh = wid.x;
    let j = wid.y;
    let hd = p.head_dim;
    let group = p.heads / p.kv_heads;
    let kv_off = (j * p.kv_heads + kvh) * hd;
    for (var c = lid; c < hd; c = c + WG) {
        var acc_k = 0.0;
        var acc_v = 0.0;
        for (var g = 0u; g < group; g = g + 1u) {
            let h = kvh * group + g;
            for (var i = j; i < p.t; i = i + 1u) {
                let e = (h * p.t + i) * p.t + j;
                let qo = (i * p.heads + h) * hd + c;
                acc_k = acc_k + ds[e] * q[qo];
                acc_v = acc_v + pm[e] * o[qo];
            }
        }
        dk[kv_off + c] = acc_k;
        dv[kv_off + c] = acc_v;
    }
}
