// The vocabulary head, one workgroup per `width`-long row (spread over x and y).
// `main`      z ← log-softmax(z) in place, aux[row] ← its entropy −Σ p·ln p (nats).
// `backward`  out[row, v] = −exp(z[row, v]) · aux[row], z holding the log-softmax and aux the
//             row's sum of the gathered gradients (the gathered entries are added after, by
//             gather.wgsl's scatter_add).
// Joined with reduce.wgsl.

struct HeadParams {
    width: u32,
    rows: u32,
    groups_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: HeadParams;
@group(0) @binding(1) var<storage, read_write> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> aux: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    let live = row < p.rows;
    let base = row * p.width;
    var local_max = -3.0e38;
    if live {
        for (var c = lid; c < p.width; c = c + WG) {
            local_max = max(local_max, z[base + c]);
        }
    }
    let m = workgroup_max(local_max, lid);
    var e_sum = 0.0;
    var weighted = 0.0;
    if live {
        for (var c = lid; c < p.width; c = c + WG) {
            let s = z[base + c] - m;
            let e = exp(s);
            e_sum = e_sum + e;
            weighted = weighted + e * s;
        }
    }
    let sum = workgroup_sum(e_sum, lid);
    workgroupBarrier();
    let wsum = workgroup_sum(weighted, lid);
    if live {
        let lse = m + log(sum);
        for (var c = lid; c < p.width; c = c + WG) {
            z[base + c] = z[base + c] - lse;
        }
        if lid == 0u {
            aux[row] = log(sum) - wsum / sum;
        }
    }
}

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * p.groups_x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    let total = aux[row];
    for (var c = lid; c < p.width; c = c + WG) {
        out[base + c] = -exp(z[base + c]) * total;
    }
}
