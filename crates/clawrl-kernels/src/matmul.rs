//! Weight matrices in their stored format, multiplied by activations.
//!
//! Decoding one token is a matrix–vector product: the activation is quantized once and
//! every weight row meets it in an integer dot product, rows split across threads.
//! Prefill multiplies many tokens at once: each thread dequantizes a panel of rows into
//! f32 and runs a cache-blocked GEMM on it, so the weights never exist in f32 all at once.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::dot;
use crate::quant::{
    BlockQ4_1, BlockQ8_0, BlockQ8_1, QK, dequantize_q4_1, dequantize_q8_0, quantize_q8_0_into,
    quantize_q8_1_into,
};

/// Rows of a quantized matrix dequantized at once by one thread in prefill.
const PANEL_ROWS: usize = 64;
/// From this many tokens on, prefill uses the dequantize-and-GEMM path (f32 activations);
/// below it, a quantized matrix meets 8-bit activations (every backend does the same).
pub const GEMM_MIN_TOKENS: usize = 4;

/// What a quantized matrix's products meet: activations rounded to 8 bits per 32-value
/// block (ggml's Q8_0/Q8_1, as llama.cpp decodes, each row its own integer dot products) or
/// f32 activations in a GEMM. Matrices stored in f32 always meet f32 activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// 8-bit below [`GEMM_MIN_TOKENS`] rows, f32 from it on: one sequence's prefill or
    /// decode step.
    Auto,
    /// 8-bit at every row count: independent decode steps of different sequences batched
    /// together, each computed as it would be alone.
    Rows,
    /// f32 at every row count: training, where 8-bit activations would make the gradient
    /// disagree with the loss.
    Exact,
}

impl Activations {
    /// Whether `t` rows meet the weights as 8-bit activations.
    pub fn quantized(self, t: usize) -> bool {
        match self {
            Self::Auto => t < GEMM_MIN_TOKENS,
            Self::Rows => true,
            Self::Exact => false,
        }
    }
}

/// How a matrix's values are stored.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Plain f32, row-major.
    F32(Vec<f32>),
    /// ggml Q4_1 blocks, row-major.
    Q4_1(Vec<BlockQ4_1>),
    /// ggml Q8_0 blocks, row-major.
    Q8_0(Vec<BlockQ8_0>),
}

/// A shape that does not fit the data or the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

/// A `rows × cols` weight matrix (`y = W·x` maps `cols` inputs to `rows` outputs).
#[derive(Clone, Debug)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl QMatrix {
    /// Wraps stored values, checking that they fill `rows × cols` exactly.
    pub fn new(rows: usize, cols: usize, storage: Storage) -> Result<Self, ShapeError> {
        let (len, per_row) = match &storage {
            Storage::F32(v) => (v.len(), cols),
            Storage::Q4_1(v) => (v.len(), cols / QK),
            Storage::Q8_0(v) => (v.len(), cols / QK),
        };
        let blocked = !matches!(storage, Storage::F32(_));
        if blocked && !cols.is_multiple_of(QK) {
            return Err(ShapeError(format!(
                "a quantized matrix needs a multiple of {QK} columns, got {cols}"
            )));
        }
        if len != rows * per_row {
            return Err(ShapeError(format!(
                "{rows}×{cols} matrix needs {} stored units, got {len}",
                rows * per_row
            )));
        }
        Ok(Self {
            rows,
            cols,
            storage,
        })
    }

    /// Output size.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input size.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored values.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Bytes held by the values.
    pub fn size_in_bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len() * 4,
            Storage::Q4_1(v) => v.len() * std::mem::size_of::<BlockQ4_1>(),
            Storage::Q8_0(v) => v.len() * std::mem::size_of::<BlockQ8_0>(),
        }
    }

    /// Dequantizes rows `r0..r0 + out.len() / cols` into `out`.
    pub fn dequantize_rows(&self, r0: usize, out: &mut [f32]) {
        let n = out.len() / self.cols;
        let nb = self.cols / QK;
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v[r0 * self.cols..(r0 + n) * self.cols]),
            Storage::Q4_1(v) => dequantize_q4_1(&v[r0 * nb..(r0 + n) * nb], out),
            Storage::Q8_0(v) => dequantize_q8_0(&v[r0 * nb..(r0 + n) * nb], out),
        }
    }

    /// The whole matrix in f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.dequantize_rows(0, &mut out);
        out
    }

    /// `y = W·x` for one vector (`x.len() == cols`, `y.len() == rows`), rows split across threads.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "matvec input size");
        assert_eq!(y.len(), self.rows, "matvec output size");
        self.matvec_rows(x, 1, y);
    }

    /// [`Self::matvec`] for each of `t` vectors (`x` is `t × cols`, `y` is `t × rows`,
    /// row-major): every output row is bit for bit what `matvec` gives for its vector alone,
    /// and each chunk of weights is read from memory once for all `t` — batched decoding,
    /// where the rows are different sequences' next tokens.
    pub fn matvec_rows(&self, x: &[f32], t: usize, y: &mut [f32]) {
        assert_eq!(x.len(), t * self.cols, "matvec input size");
        assert_eq!(y.len(), t * self.rows, "matvec output size");
        let (rows, cols, chunk) = (self.rows, self.cols, self.row_chunk());
        let out = SendPtr(y.as_mut_ptr());
        // A task owns a chunk of weight rows and meets every vector with it while it is in
        // cache.
        let run = |dot: &RowsDot| {
            let task = |c: usize| {
                let r0 = c * chunk;
                let n = chunk.min(rows - r0);
                for i in 0..t {
                    // SAFETY: rows r0..r0 + n of output row i, within `y`; chunks are
                    // disjoint, so no two tasks write the same values.
                    let o =
                        unsafe { std::slice::from_raw_parts_mut(out.get().add(i * rows + r0), n) };
                    dot(i, r0, n, o);
                }
            };
            match rows.div_ceil(chunk) {
                // One chunk: no hand-over to the pool at all.
                1 => task(0),
                chunks => (0..chunks).into_par_iter().for_each(task),
            }
        };
        match &self.storage {
            Storage::F32(w) => run(&|i, r0, n, o| {
                dot::rows_f32(
                    &w[r0 * cols..(r0 + n) * cols],
                    cols,
                    &x[i * cols..][..cols],
                    o,
                );
            }),
            Storage::Q4_1(w) => {
                let nb = cols / QK;
                let mut a = vec![BlockQ8_1::default(); t * nb];
                for (xi, ai) in x.chunks_exact(cols).zip(a.chunks_exact_mut(nb)) {
                    quantize_q8_1_into(xi, ai);
                }
                run(&|i, r0, n, o| {
                    dot::rows_q4_1(&w[r0 * nb..(r0 + n) * nb], nb, &a[i * nb..][..nb], o);
                });
            }
            Storage::Q8_0(w) => {
                let nb = cols / QK;
                let mut a = vec![BlockQ8_0::default(); t * nb];
                for (xi, ai) in x.chunks_exact(cols).zip(a.chunks_exact_mut(nb)) {
                    quantize_q8_0_into(xi, ai);
                }
                run(&|i, r0, n, o| {
                    dot::rows_q8_0(&w[r0 * nb..(r0 + n) * nb], nb, &a[i * nb..][..nb], o);
                });
            }
        }
    }

    /// `Y = X·Wᵀ` for `t` row vectors (`x` is `t × cols`, `y` is `t × rows`, row-major).
    pub fn matmul(&self, x: &[f32], t: usize, y: &mut [f32]) {
        assert_eq!(x.len(), t * self.cols, "matmul input size");
        assert_eq!(y.len(), t * self.rows, "matmul output size");
        if Activations::Auto.quantized(t) {
            self.matvec_rows(x, t, y);
        } else {
            self.gemm_panels(x, t, y);
        }
    }

    /// `Y = X·Wᵀ` computed in f32 throughout (the weights dequantized, the activations not
    /// quantized), whatever `t` is: what training needs, where the decode path's 8-bit
    /// activations would make the gradient disagree with the loss.
    pub fn matmul_f32(&self, x: &[f32], t: usize, y: &mut [f32]) {
        assert_eq!(x.len(), t * self.cols, "matmul input size");
        assert_eq!(y.len(), t * self.rows, "matmul output size");
        self.gemm_panels(x, t, y);
    }

    /// `Out = G·W` for `t` row vectors `G` (`t × rows`), giving `t × cols`: the product that
    /// carries a gradient back through `y = W·x`.
    pub fn matmul_transposed(&self, g: &[f32], t: usize, out: &mut [f32]) {
        assert_eq!(g.len(), t * self.rows, "transposed matmul input size");
        assert_eq!(out.len(), t * self.cols, "transposed matmul output size");
        out.fill(0.0);
        // Panels of rows contribute G[:, panel]·W[panel, :]; each GEMM splits across threads
        // itself, and the panels accumulate into `out` one after another.
        let mut buf = Vec::new();
        for r0 in (0..self.rows).step_by(PANEL_ROWS * 4) {
            let n = (PANEL_ROWS * 4).min(self.rows - r0);
            buf.resize(n * self.cols, 0.0);
            self.dequantize_rows(r0, &mut buf);
            // SAFETY: g is t × rows (row stride rows; we read columns r0..r0+n), buf is n × cols
            // row-major, out is t × cols; all within bounds.
            unsafe {
                gemm::gemm(
                    t,
                    self.cols,
                    n,
                    out.as_mut_ptr(),
                    1,
                    self.cols as isize,
                    true,
                    g.as_ptr().add(r0),
                    1,
                    self.rows as isize,
                    buf.as_ptr(),
                    1,
                    self.cols as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    rayon_par(),
                )
            };
        }
    }

    fn gemm_panels(&self, x: &[f32], t: usize, y: &mut [f32]) {
        if let Storage::F32(w) = &self.storage {
            // SAFETY: sizes checked by the callers; `w` is rows × cols row-major.
            unsafe {
                gemm_into(
                    Operand::plain(x),
                    Operand::transposed(w),
                    [t, self.rows, self.cols],
                    y.as_mut_ptr(),
                    self.rows,
                    rayon_par(),
                )
            };
            return;
        }
        let out = SendPtr(y.as_mut_ptr());
        let panels = self.rows.div_ceil(PANEL_ROWS);
        (0..panels).into_par_iter().for_each(|p| {
            let r0 = p * PANEL_ROWS;
            let n = PANEL_ROWS.min(self.rows - r0);
            PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.resize(n * self.cols, 0.0);
                self.dequantize_rows(r0, &mut buf);
                // SAFETY: each panel writes only its own columns r0..r0+n of every output
                // row, so the parallel writes never overlap.
                unsafe {
                    let out = out.get();
                    gemm_into(
                        Operand::plain(x),
                        Operand::transposed(&buf),
                        [t, n, self.cols],
                        out.add(r0),
                        self.rows,
                        Parallelism::None,
                    )
                };
            });
        });
    }

    fn row_chunk(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        // A few chunks per thread balance uneven cores without paying much scheduling; a chunk
        // holds at least ~32k weights, so thin matrices (a LoRA's A and B) stay in one piece
        // instead of paying a hand-over per few hundred products.
        self.rows
            .div_ceil(threads * 4)
            .max(16)
            .max((1 << 15) / self.cols.max(1))
    }
}

/// `dot(i, r0, n, out)`: rows `r0..r0 + n` of vector `i`'s product into `out`.
type RowsDot<'a> = dyn Fn(usize, usize, usize, &mut [f32]) + Sync + 'a;

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output regions to rayon tasks.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn rayon_par() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `X·Wᵀ` for `x: m × k` and `w: n × k` (both row-major f32), as a new `m × n` matrix.
pub fn xwt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    matmul(Operand::plain(x), Operand::transposed(w), m, n, k, true)
}

/// A row-major f32 matrix as a GEMM operand, read as stored or transposed.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    data: &'a [f32],
    transposed: bool,
}

impl<'a> Operand<'a> {
    /// The matrix as stored.
    pub fn plain(data: &'a [f32]) -> Self {
        Self {
            data,
            transposed: false,
        }
    }

    /// The matrix's transpose (no copy).
    pub fn transposed(data: &'a [f32]) -> Self {
        Self {
            data,
            transposed: true,
        }
    }

    /// Column and row strides of the `rows × cols` matrix this operand reads.
    fn strides(&self, rows: usize, cols: usize) -> (isize, isize) {
        if self.transposed {
            (rows as isize, 1)
        } else {
            (1, cols as isize)
        }
    }
}

/// `A·B` for operands read as `a: m × k` and `b: k × n`, as a new row-major `m × n` matrix;
/// `parallel` splits the work across rayon's threads.
///
/// # Panics
/// If an operand does not hold exactly its shape's values.
pub fn matmul(a: Operand, b: Operand, m: usize, n: usize, k: usize, parallel: bool) -> Vec<f32> {
    assert!(
        a.data.len() == m * k && b.data.len() == k * n,
        "matmul: operands of {} and {} values for {m}×{k} · {k}×{n}",
        a.data.len(),
        b.data.len()
    );
    let mut out = vec![0f32; m * n];
    let par = if parallel {
        rayon_par()
    } else {
        Parallelism::None
    };
    // SAFETY: out is m × n row-major; the operands' lengths were checked.
    unsafe { gemm_into(a, b, [m, n, k], out.as_mut_ptr(), n, par) };
    out
}

/// `out[i, j] = Σ_p a[i, p] · b[p, j]` for operands read as `a: m × k` and `b: k × n`;
/// `out` has row stride `ld`.
///
/// # Safety
/// `out` must be valid for writes at `i·ld + j` for every `i < m`, `j < n`, and the operands
/// must hold at least their shapes' values.
unsafe fn gemm_into(
    a: Operand,
    b: Operand,
    [m, n, k]: [usize; 3],
    out: *mut f32,
    ld: usize,
    par: Parallelism,
) {
    debug_assert!(a.data.len() >= m * k && b.data.len() >= k * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (a_cs, a_rs) = a.strides(m, k);
    let (b_cs, b_rs) = b.strides(k, n);
    // SAFETY: the strides describe a (m×k) and b (k×n) within their data, and the caller
    // vouches for out.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            ld as isize,
            false,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_q4_1, quantize_q8_0};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], t: usize) -> Vec<f32> {
        let mut y = vec![0.0; t * rows];
        for i in 0..t {
            for r in 0..rows {
                y[i * rows + r] = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
            }
        }
        y
    }

    #[test]
    fn every_format_matches_the_f32_reference_in_decode_and_prefill() {
        let (rows, cols) = (130, 96);
        let raw = random(rows * cols, 7);
        for storage in [
            Storage::F32(raw.clone()),
            Storage::Q4_1(quantize_q4_1(&raw)),
            Storage::Q8_0(quantize_q8_0(&raw)),
        ] {
            let m = QMatrix::new(rows, cols, storage).expect("shape");
            let w = m.to_f32();
            for t in [1, 3, 9] {
                let x = random(t * cols, 8 + t as u64);
                let mut y = vec![0.0; t * rows];
                m.matmul(&x, t, &mut y);
                let expect = reference(&w, rows, cols, &x, t);
                let tol = if matches!(m.storage(), Storage::F32(_)) {
                    1e-4
                } else {
                    0.1
                };
                for (a, b) in y.iter().zip(&expect) {
                    assert!((a - b).abs() < tol, "t={t}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn batched_rows_are_each_bit_for_bit_a_lone_matvec() {
        // Rows big enough for several chunks, so the parallel path runs too.
        let (rows, cols, t) = (1000, 128, 6);
        let raw = random(rows * cols, 12);
        for storage in [
            Storage::F32(raw.clone()),
            Storage::Q4_1(quantize_q4_1(&raw)),
            Storage::Q8_0(quantize_q8_0(&raw)),
        ] {
            let m = QMatrix::new(rows, cols, storage).expect("shape");
            let x = random(t * cols, 13);
            let mut batched = vec![0.0; t * rows];
            m.matvec_rows(&x, t, &mut batched);
            for (xi, got) in x.chunks_exact(cols).zip(batched.chunks_exact(rows)) {
                let mut alone = vec![0.0; rows];
                m.matvec(xi, &mut alone);
                assert_eq!(got, &alone[..]);
            }
        }
    }

    #[test]
    fn exact_and_transposed_products_match_the_reference() {
        let (rows, cols, t) = (70, 64, 3);
        let raw = random(rows * cols, 9);
        let m = QMatrix::new(rows, cols, Storage::Q4_1(quantize_q4_1(&raw))).expect("shape");
        let w = m.to_f32();
        let x = random(t * cols, 10);
        let mut y = vec![0.0; t * rows];
        m.matmul_f32(&x, t, &mut y);
        for (a, b) in y.iter().zip(&reference(&w, rows, cols, &x, t)) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // G·W equals (Wᵀ·Gᵀ)ᵀ: check against the reference with W transposed.
        let g = random(t * rows, 11);
        let mut out = vec![0.0; t * cols];
        m.matmul_transposed(&g, t, &mut out);
        let wt: Vec<f32> = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| (r, c)))
            .map(|(r, c)| w[r * cols + c])
            .collect();
        for (a, b) in out.iter().zip(&reference(&wt, cols, rows, &g, t)) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn matmul_reads_each_operand_plain_or_transposed() {
        let (m, n, k) = (5, 4, 3);
        let (a, b) = (random(m * k, 12), random(k * n, 13));
        let transpose = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
            (0..cols)
                .flat_map(|c| (0..rows).map(move |r| x[r * cols + c]))
                .collect()
        };
        // Reference A·B with A: m×k and B: k×n, as rows of B's transpose.
        let expect = reference(&transpose(&b, k, n), n, k, &a, m);
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        for (lhs, rhs) in [
            (Operand::plain(&a), Operand::plain(&b)),
            (Operand::transposed(&at), Operand::plain(&b)),
            (Operand::plain(&a), Operand::transposed(&bt)),
            (Operand::transposed(&at), Operand::transposed(&bt)),
        ] {
            for parallel in [false, true] {
                let got = matmul(lhs, rhs, m, n, k, parallel);
                for (x, y) in got.iter().zip(&expect) {
                    assert!((x - y).abs() < 1e-5, "{lhs:?} · {rhs:?}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(QMatrix::new(2, 3, Storage::F32(vec![0.0; 5])).is_err());
        assert!(QMatrix::new(1, 40, Storage::Q8_0(vec![BlockQ8_0::default()])).is_err());
    }
}
