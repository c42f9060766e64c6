// Causal attention for training: t positions over themselves (position 0 first), keeping the
// probabilities P (`heads × t × t`, zero above the diagonal) for the backward. Layouts as in
// attention.wgsl: q and o rows of `heads × head_dim`, k and v rows of `kv_heads × head_dim`;
// query head h reads key/value head h / (heads / kv_heads); head_dim ≤ 128. Joined with
// reduce.wgsl.
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
// One query row of one head: where its values sit in each tensor.
struct Row {
    h: u32,
    i: u32,
    // Its key/value head.
    kvh: u32,
    // Values per position of k and v.
    kv_stride: u32,
    // Its first value in q, o, dO and dQ.
    qoff: u32,
    // Its first value in P and dS.
    prow: u32,
}

fn row_of(wid: vec3<u32>) -> Row {
    let h = wid.x;
    let i = wid.y;
    return Row(
        h,
        i,
        h / (p.heads / p.kv_heads),
        p.kv_heads * p.head_dim,
        (i * p.heads + h) * p.head_dim,
        (h * p.t + i) * p.t,
    );
}

@compute @workgroup_size(64)
fn probs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid);
    let hd = p.head_dim;
    for (var c = lid; c < hd; c = c + WG) {
        row_h[c] = q[r.qoff + c];
    }
    workgroupBarrier();
    var local_max = -3.0e38;
    for (var j = lid; j < p.t; j = j + WG) {
        var sc = 0.0;
        if j <= r.i {
            let off = j * r.kv_stride + r.kvh * hd;
            var dot = 0.0;
            for (var c = 0u; c < hd; c = c + 1u) {
                dot = dot + row_h[c] * k[off + c];
            }
            sc = dot * p.scale;
            local_max = max(local_max, sc);
        }
        pm[r.prow + j] = sc;
    }
    let m = workgroup_max(local_max, lid);
    var local_sum = 0.0;
    for (var j = lid; j <= r.i; j = j + WG) {
        let e = exp(pm[r.prow + j] - m);
        pm[r.prow + j] = e;
        local_sum = local_sum + e;
    }
    let inv = 1.0 / workgroup_sum(local_sum, lid);
    for (var j = lid; j <= r.i; j = j + WG) {
        pm[r.prow + j] = pm[r.prow + j] * inv;
    }
    storageBarrier();
    workgroupBarrier();
    for (var c = lid; c < hd; c = c + WG) {
        var acc = 0.0;
        for (var j = 0u; j <= r.i; j = j + 1u) {
            acc = acc + pm[r.prow + j] * v[j * r.kv_stride + r.kvh * hd + c];
        }
        o[r.qoff + c] = acc;
    }
}

@compute @workgroup_size(64)
fn backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid);
    let hd = p.head_dim;
    for (var c = lid; c < hd; c = c + WG) {
        row_h[c] = o[r.qoff + c];
    }
    workgroupBarrier();
    var local = 0.0;
    for (var j = lid; j < p.t; j = j + WG) {
        var dp = 0.0;
        if j <= r.i {
            let off = j * r.kv_stride + r.kvh * hd;
            for (var c = 0u; c < hd; c = c + 1u) {
                dp = dp + row_h[c] * v[off + c];
            }
            local = local + pm[r.prow + j] * dp;
        }
        ds[r.prow + j] = dp;
    }
    let dot = workgroup_sum(local, lid);
    for (var j = lid; j < p.t; j = j + WG) {
        ds[r.prow + j] = p.scale * pm[r.prow + j] * (ds[r.prow + j] - dot);
    }
    storageBarrier();
    workgroupBarrier();
    for (var c = lid; c < hd; c = c + WG) {
        var acc = 0.0;
        for (var j = 0u; j <= r.i; j = j + 1u) {
            acc = acc + ds[r.prow + j] * k[j * r.kv_stride + r.kvh * hd + c];
        }
        dq[r.qoff + c] = acc;
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
