// The CUDA kernels of the ClawRL engine, compiled at run time by NVRTC for the GPU at hand
// (no CUDA toolkit at build time). Each is the twin of a WGSL kernel of the top-level
// `shaders/` folder, with the same formula and the same layouts: tensors are flat row-major
// f32, weight matrices `rows × cols` (f32, or ggml Q4_1/Q8_0 repacked into scale/minimum arrays
// and u32 words of quants). The GEMMs are cuBLAS's (src/context.rs), not here.
//
// Row reductions run one block of WG threads per row; element-wise kernels one thread per
// value in blocks of EW.

#define WG 128
#define EW 256
#define NEG_BIG (-3.0e38f)

typedef unsigned int u32;

// The sum of `s` over the block (blockDim.x a multiple of 32, ≤ 1024), returned to every
// thread. `sh` holds 33 floats; every thread must call it.
__device__ float block_sum(float s, float* sh) {
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = s;
    __syncthreads();
    if (warp == 0) {
        float t = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_down_sync(0xffffffffu, t, o);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

// The maximum of `s` over the block, as block_sum.
__device__ float block_max(float s, float* sh) {
    for (int o = 16; o > 0; o >>= 1) s = fmaxf(s, __shfl_down_sync(0xffffffffu, s, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = s;
    __syncthreads();
    if (warp == 0) {
        float t = lane < (int)(blockDim.x >> 5) ? sh[lane] : NEG_BIG;
        for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_down_sync(0xffffffffu, t, o));
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

__device__ float warp_sum(float s) {
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    return s;
}

// ---- Products (shaders/matmul*.wgsl, quantize_q8.wgsl) ----

// The decode path's 8-bit activations (ggml Q8_0 of x): per 32-value block d = max|x| / 127,
// q = round(x / d) half away from zero; out = d·q. One thread per block.
extern "C" __global__ void quantize_q8(const float* x, float* out, u32 blocks) {
    const u32 b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= blocks) return;
    const float* xb = x + (size_t)b * 32;
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; i++) out[(size_t)b * 32 + i] = d * roundf(xb[i] * id);
}

// y[t, r] (+)= scale · Σ_c W[r, c] · x[t, c]: one warp per (row, token), WG / 32 rows a block;
// grid (⌈rows / 4⌉, tokens).
#define MATVEC_HEAD                                                        \
    const u32 lane = threadIdx.x & 31;                                     \
    const u32 row = blockIdx.x * (WG / 32) + (threadIdx.x >> 5);           \
    const u32 t = blockIdx.y;                                              \
    if (row >= rows) return;                                               \
    const float* xt = x + (size_t)t * cols;                                \
    float s = 0.0f;

#define MATVEC_TAIL                                                        \
    s = warp_sum(s);                                                       \
    if (lane == 0) {                                                       \
        const size_t o = (size_t)t * rows + row;                           \
        float v = scale * s;                                               \
        if (accumulate) v += y[o];                                         \
        y[o] = v;                                                          \
    }

// Q4_1: per 32-value block a scale d, a minimum m and 4 u32 words of nibbles; byte j holds
// value j (low nibble) and j + 16 (high); value = d·q + m.
extern "C" __global__ void matvec_q4_1(const float* x, float* y, const u32* qs, const float* d,
                                       const float* m, u32 rows, u32 cols, int accumulate,
                                       float scale) {
    MATVEC_HEAD
    const u32 blocks = cols / 32, words = blocks * 4;
    for (u32 i = lane; i < words; i += 32) {
        const size_t b = (size_t)row * blocks + i / 4;
        const u32 word = qs[(size_t)row * words + i];
        const float* xc = xt + (i / 4) * 32 + (i % 4) * 4;
        float qx = 0.0f, xs = 0.0f;
        for (int j = 0; j < 4; j++) {
            const u32 byte = (word >> (8 * j)) & 0xffu;
            const float xl = xc[j], xh = xc[16 + j];
            qx += (float)(byte & 0xfu) * xl + (float)(byte >> 4) * xh;
            xs += xl + xh;
        }
        s += d[b] * qx + m[b] * xs;
    }
    MATVEC_TAIL
}

// Q8_0: per 32-value block a scale d and 8 u32 words of signed bytes; value = d·q.
extern "C" __global__ void matvec_q8_0(const float* x, float* y, const u32* qs, const float* d,
                                       u32 rows, u32 cols, int accumulate, float scale) {
    MATVEC_HEAD
    const u32 blocks = cols / 32, words = blocks * 8;
    for (u32 i = lane; i < words; i += 32) {
        const u32 word = qs[(size_t)row * words + i];
        const float* xc = xt + i * 4;
        float acc = 0.0f;
        for (int j = 0; j < 4; j++) acc += (float)(signed char)((word >> (8 * j)) & 0xffu) * xc[j];
        s += d[(size_t)row * blocks + i / 8] * acc;
    }
    MATVEC_TAIL
}

// The f32 values of a quantized matrix, for cuBLAS (prefill, training): one thread per value.
extern "C" __global__ void dequant_q4_1(const u32* qs, const float* d, const float* m,
                                        float* out, u32 rows, u32 cols) {
    const size_t n = (size_t)rows * cols;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    const size_t b = idx / 32;
    const u32 i = idx % 32, j = i % 16;
    const u32 byte = (qs[b * 4 + j / 4] >> (8 * (j % 4))) & 0xffu;
    const u32 q = i >= 16 ? byte >> 4 : byte & 0xfu;
    out[idx] = d[b] * (float)q + m[b];
}

extern "C" __global__ void dequant_q8_0(const u32* qs, const float* d, float* out, u32 rows,
                                        u32 cols) {
    const size_t n = (size_t)rows * cols;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    const u32 word = qs[idx / 4];
    out[idx] = d[idx / 32] * (float)(signed char)((word >> (8 * (idx % 4))) & 0xffu);
}

// ---- RMSNorm (shaders/rms_norm.wgsl): one block per n-long row ----

// out = x / sqrt(mean(x²) + eps) · w.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, u32 n, u32 rows,
                                    float eps) {
    __shared__ float sh[33];
    const u32 row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * n;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    const float inv = 1.0f / sqrtf(block_sum(s, sh) / (float)n + eps);
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) out[(size_t)row * n + i] = xr[i] * inv * w[i];
}

// With r = 1/rms(x) and g = dy·w: dx = r·g − x·r³·mean(g·x).
extern "C" __global__ void rms_norm_backward(const float* x, const float* w, const float* dy,
                                             float* dx, u32 n, u32 rows, float eps) {
    __shared__ float sh[33];
    const u32 row = blockIdx.x;
    if (row >= rows) return;
    const size_t base = (size_t)row * n;
    float sq = 0.0f, gx = 0.0f;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[base + i];
        sq += v * v;
        gx += dy[base + i] * w[i] * v;
    }
    const float sum_sq = block_sum(sq, sh);
    const float sum_gx = block_sum(gx, sh);
    const float r = 1.0f / sqrtf(sum_sq / (float)n + eps);
    const float c = r * r * r * sum_gx / (float)n;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x)
        dx[base + i] = r * dy[base + i] * w[i] - x[base + i] * c;
}

// ---- Element-wise (shaders/elementwise.wgsl): one thread per value ----

#define EW_INDEX                                                            \
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;         \
    if (i >= n) return;

extern "C" __global__ void add(float* x, const float* y, u32 n) {
    EW_INDEX
    x[i] += y[i];
}

extern "C" __global__ void add_rows(float* x, const float* y, u32 n, u32 m) {
    EW_INDEX
    x[i] += y[i % m];
}

extern "C" __global__ void silu_mul(float* x, const float* y, u32 n) {
    EW_INDEX
    const float a = x[i];
    x[i] = a / (1.0f + expf(-a)) * y[i];
}

extern "C" __global__ void mul(float* x, const float* y, u32 n) {
    EW_INDEX
    x[i] *= y[i];
}

// dg = dy·u·s·(1 + g·(1 − s)), du = dy·g·s with s = σ(g).
extern "C" __global__ void silu_mul_backward(const float* g, const float* u, const float* dy,
                                             float* dg, float* du, u32 n) {
    EW_INDEX
    const float gi = g[i];
    const float s = 1.0f / (1.0f + expf(-gi));
    dg[i] = dy[i] * u[i] * s * (1.0f + gi * (1.0f - s));
    du[i] = dy[i] * gi * s;
}

// ---- RoPE (shaders/rope.wgsl): one thread per rotated pair ----

// Rows of `heads × head_dim` at positions pos0…; style 0 pairs (2j, 2j + 1), style 1
// (j, j + half); `inverse` rotates by −angle (the backward).
extern "C" __global__ void rope(float* x, const float* cos_t, const float* sin_t, u32 heads,
                                u32 head_dim, u32 half, u32 pos0, u32 total, u32 style,
                                u32 inverse) {
    const u32 idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const u32 j = idx % half, rh = idx / half, row = rh / heads;
    const size_t base = (size_t)rh * head_dim;
    const size_t a = style == 1 ? base + j : base + 2 * j;
    const size_t b = style == 1 ? base + j + half : a + 1;
    const size_t t = (size_t)(pos0 + row) * half + j;
    const float c = cos_t[t];
    const float s = inverse ? -sin_t[t] : sin_t[t];
    const float x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}

// ---- Attention over the cache (shaders/attention.wgsl) ----

// Query rows at positions pos0 + i over the cached keys and values; query head h reads
// key/value head h / (heads / kv_heads). One block of WG per (head, query row): each thread
// scores one position of a tile, then the tile folds into a running softmax; thread c
// accumulates output dimension c (head_dim ≤ WG).
extern "C" __global__ void attention(const float* q, const float* k, const float* v, float* out,
                                     u32 heads, u32 kv_heads, u32 head_dim, u32 pos0,
                                     float scale) {
    __shared__ float qh[WG];
    __shared__ float scores[WG];
    const u32 h = blockIdx.x, i = blockIdx.y, lid = threadIdx.x, hd = head_dim;
    const u32 kvh = h / (heads / kv_heads);
    const size_t stride = (size_t)kv_heads * hd;
    const size_t qoff = ((size_t)i * heads + h) * hd;
    if (lid < hd) qh[lid] = q[qoff + lid];
    __syncthreads();
    const u32 n = pos0 + i + 1;
    float run_max = NEG_BIG, run_sum = 0.0f, acc = 0.0f;
    for (u32 t0 = 0; t0 < n; t0 += WG) {
        const u32 pos = t0 + lid;
        float sc = NEG_BIG;
        if (pos < n) {
            const float* kr = k + pos * stride + kvh * hd;
            float dot = 0.0f;
            for (u32 d = 0; d < hd; d++) dot += qh[d] * kr[d];
            sc = dot * scale;
        }
        scores[lid] = sc;
        __syncthreads();
        const u32 count = min((u32)WG, n - t0);
        float tile_max = run_max;
        for (u32 j = 0; j < count; j++) tile_max = fmaxf(tile_max, scores[j]);
        const float rescale = expf(run_max - tile_max);
        run_sum *= rescale;
        acc *= rescale;
        for (u32 j = 0; j < count; j++) {
            const float w = expf(scores[j] - tile_max);
            run_sum += w;
            if (lid < hd) acc += w * v[(t0 + j) * stride + kvh * hd + lid];
        }
        run_max = tile_max;
        __syncthreads();
    }
    if (lid < hd) out[qoff + lid] = acc / run_sum;
}

// ---- Attention for training (shaders/attention_train.wgsl) ----
// t positions over themselves, keeping P (`heads × t × t`, zero above the diagonal).

// One block per (head h, query row i): P[h, i, ·] and o[i, h, ·].
extern "C" __global__ void attention_probs(const float* q, const float* k, const float* v,
                                           float* pm, float* o, u32 heads, u32 kv_heads,
                                           u32 head_dim, u32 t, float scale) {
    __shared__ float row_h[WG];
    __shared__ float sh[33];
    const u32 h = blockIdx.x, i = blockIdx.y, lid = threadIdx.x, hd = head_dim;
    const u32 kvh = h / (heads / kv_heads);
    const size_t stride = (size_t)kv_heads * hd;
    const size_t qoff = ((size_t)i * heads + h) * hd;
    float* pr = pm + ((size_t)h * t + i) * t;
    if (lid < hd) row_h[lid] = q[qoff + lid];
    __syncthreads();
    float local_max = NEG_BIG;
    for (u32 j = lid; j < t; j += blockDim.x) {
        float sc = 0.0f;
        if (j <= i) {
            const float* kr = k + j * stride + kvh * hd;
            float dot = 0.0f;
            for (u32 c = 0; c < hd; c++) dot += row_h[c] * kr[c];
            sc = dot * scale;
            local_max = fmaxf(local_max, sc);
        }
        pr[j] = sc;
    }
    const float m = block_max(local_max, sh);
    float local_sum = 0.0f;
    for (u32 j = lid; j <= i; j += blockDim.x) {
        const float e = expf(pr[j] - m);
        pr[j] = e;
        local_sum += e;
    }
    const float inv = 1.0f / block_sum(local_sum, sh);
    for (u32 j = lid; j <= i; j += blockDim.x) pr[j] *= inv;
    __syncthreads();
    if (lid < hd) {
        float acc = 0.0f;
        for (u32 j = 0; j <= i; j++) acc += pr[j] * v[j * stride + kvh * hd + lid];
        o[qoff + lid] = acc;
    }
}

// One block per (h, i): dS[h, i, j] = s·P_ij·(dP_ij − Σ_j' P_ij'·dP_ij') with dP_ij = dO_i·V_j,
// then dQ_i = Σ_j dS_ij·K_j.
extern "C" __global__ void attention_backward_q(const float* k, const float* v, const float* pm,
                                                const float* dout, float* dq, float* ds,
                                                u32 heads, u32 kv_heads, u32 head_dim, u32 t,
                                                float scale) {
    __shared__ float row_h[WG];
    __shared__ float sh[33];
    const u32 h = blockIdx.x, i = blockIdx.y, lid = threadIdx.x, hd = head_dim;
    const u32 kvh = h / (heads / kv_heads);
    const size_t stride = (size_t)kv_heads * hd;
    const size_t qoff = ((size_t)i * heads + h) * hd;
    const size_t prow = ((size_t)h * t + i) * t;
    if (lid < hd) row_h[lid] = dout[qoff + lid];
    __syncthreads();
    float local = 0.0f;
    for (u32 j = lid; j < t; j += blockDim.x) {
        float dp = 0.0f;
        if (j <= i) {
            const float* vr = v + j * stride + kvh * hd;
            for (u32 c = 0; c < hd; c++) dp += row_h[c] * vr[c];
            local += pm[prow + j] * dp;
        }
        ds[prow + j] = dp;
    }
    const float dot = block_sum(local, sh);
    for (u32 j = lid; j < t; j += blockDim.x) ds[prow + j] = scale * pm[prow + j] * (ds[prow + j] - dot);
    __syncthreads();
    if (lid < hd) {
        float acc = 0.0f;
        for (u32 j = 0; j <= i; j++) acc += ds[prow + j] * k[j * stride + kvh * hd + lid];
        dq[qoff + lid] = acc;
    }
}

// One block per (key/value head, position j): dK_j = Σ_h Σ_i dS[h, i, j]·Q_i and
// dV_j = Σ_h Σ_i P[h, i, j]·dO_i over the group's query heads h, i ≥ j.
extern "C" __global__ void attention_backward_kv(const float* q, const float* pm,
                                                 const float* dout, const float* ds, float* dk,
                                                 float* dv, u32 heads, u32 kv_heads,
                                                 u32 head_dim, u32 t) {
    const u32 kvh = blockIdx.x, j = blockIdx.y, c = threadIdx.x, hd = head_dim;
    if (c >= hd) return;
    const u32 group = heads / kv_heads;
    float acc_k = 0.0f, acc_v = 0.0f;
    for (u32 g = 0; g < group; g++) {
        const u32 h = kvh * group + g;
        for (u32 i = j; i < t; i++) {
            const size_t e = ((size_t)h * t + i) * t + j;
            const size_t qo = ((size_t)i * heads + h) * hd + c;
            acc_k += ds[e] * q[qo];
            acc_v += pm[e] * dout[qo];
        }
    }
    const size_t kv_off = ((size_t)j * kv_heads + kvh) * hd + c;
    dk[kv_off] = acc_k;
    dv[kv_off] = acc_v;
}

// ---- The vocabulary head (shaders/log_softmax.wgsl, top_k.wgsl, gather.wgsl) ----

// z ← log-softmax(z) in place per `width`-long row; entropy[row] ← −Σ p·ln p (nats).
extern "C" __global__ void log_softmax(float* z, float* entropy, u32 width, u32 rows) {
    __shared__ float sh[33];
    const u32 row = blockIdx.x;
    if (row >= rows) return;
    float* zr = z + (size_t)row * width;
    float local_max = NEG_BIG;
    for (u32 c = threadIdx.x; c < width; c += blockDim.x) local_max = fmaxf(local_max, zr[c]);
    const float m = block_max(local_max, sh);
    float e_sum = 0.0f, weighted = 0.0f;
    for (u32 c = threadIdx.x; c < width; c += blockDim.x) {
        const float s = zr[c] - m;
        const float e = expf(s);
        e_sum += e;
        weighted += e * s;
    }
    const float sum = block_sum(e_sum, sh);
    const float wsum = block_sum(weighted, sh);
    const float lse = m + logf(sum);
    for (u32 c = threadIdx.x; c < width; c += blockDim.x) zr[c] -= lse;
    if (threadIdx.x == 0) entropy[row] = logf(sum) - wsum / sum;
}

// out[row, v] = −exp(lp[row, v]) · totals[row] (the gathered gradients are added after, by
// scatter_add).
extern "C" __global__ void log_softmax_backward(const float* lp, const float* totals, float* out,
                                                u32 width, u32 rows) {
    const u32 row = blockIdx.x;
    if (row >= rows) return;
    const size_t base = (size_t)row * width;
    const float total = totals[row];
    for (u32 c = threadIdx.x; c < width; c += blockDim.x) out[base + c] = -expf(lp[base + c]) * total;
}

// Whether (va, ia) comes before (vb, ib): larger value, then lower column.
__device__ bool before(float va, u32 ia, float vb, u32 ib) {
    return va > vb || (va == vb && ia < ib);
}

// The k largest entries' columns of every `width`-long row, largest first, ties to the lower
// column. One block of WG per row; round r finds the best entry after round r − 1's.
extern "C" __global__ void top_k(const float* x, u32* ids, u32 width, u32 rows, u32 k) {
    __shared__ float best_v[WG];
    __shared__ u32 best_i[WG];
    const u32 row = blockIdx.x, lid = threadIdx.x;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * width;
    const u32 none = 0xffffffffu;
    float prev_v = 3.0e38f;
    u32 prev_i = 0;
    for (u32 r = 0; r < k; r++) {
        float bv = NEG_BIG;
        u32 bi = none;
        for (u32 c = lid; c < width; c += WG) {
            const float v = xr[c];
            const bool after = r == 0 || before(prev_v, prev_i, v, c);
            if (after && (bi == none || before(v, c, bv, bi))) {
                bv = v;
                bi = c;
            }
        }
        best_v[lid] = bv;
        best_i[lid] = bi;
        __syncthreads();
        for (u32 step = WG / 2; step > 0; step /= 2) {
            if (lid < step) {
                const float ov = best_v[lid + step];
                const u32 oi = best_i[lid + step];
                if (oi != none && (best_i[lid] == none || before(ov, oi, best_v[lid], best_i[lid]))) {
                    best_v[lid] = ov;
                    best_i[lid] = oi;
                }
            }
            __syncthreads();
        }
        prev_v = best_v[0];
        prev_i = best_i[0];
        if (lid == 0) ids[(size_t)row * k + r] = prev_i;
        __syncthreads();
    }
}

// dst[j] = src[idx[j]].
extern "C" __global__ void gather(const float* src, const u32* idx, float* dst, u32 n) {
    EW_INDEX
    dst[i] = src[idx[i]];
}

// dst[idx[j]] += src[j] (distinct indices).
extern "C" __global__ void scatter_add(const float* src, const u32* idx, float* dst, u32 n) {
    EW_INDEX
    dst[idx[i]] += src[i];
}
