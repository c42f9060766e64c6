// Workgroup-wide sums and maxima, joined with the kernels that reduce a row (matmul, RMSNorm,
// the head's log-softmax, training attention).

const WG: u32 = 64u;

var<workgroup> partial: array<f32, WG>;

// The sum of `s` over the workgroup's WG invocations, returned to every one of them.
// Call it from uniform control flow: it holds barriers.
fn workgroup_sum(s: f32, lid: u32) -> f32 {
    partial[lid] = s;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step = step / 2u) {
        if lid < step {
            partial[lid] = partial[lid] + partial[lid + step];
        }
        workgroupBarrier();
    }
    return partial[0];
}

var<workgroup> partial_max: array<f32, WG>;

// The maximum of `s` over the workgroup's WG invocations, returned to every one of them.
// Call it from uniform control flow: it holds barriers.
fn workgroup_max(s: f32, lid: u32) -> f32 {
    partial_max[lid] = s;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step = step / 2u) {
        if lid < step {
            partial_max[lid] = max(partial_max[lid], partial_max[lid + step]);
        }
        workgroupBarrier();
    }
    return partial_max[0];
}
