//! Compute kernels on host slices. Pure functions; the engine maps device buffers onto them and
//! calls them one chunk at a time.
//!
//! Results are defined as follows:
//! - `gemm_f32`: `C = alpha·A·B + beta·C`, row-major, f32 arithmetic. The engine cuts `k` into
//!   k-blocks of [`gemm_k_block`]`(k)` (≤ [`GEMM_K_BLOCK`], nearly equal, a function of `k`
//!   only) and computes each C tile as `alpha·A[·,k₀]·B[k₀,·] + beta·C`, then adds
//!   `alpha·A[·,kᵢ]·B[kᵢ,·]` for the following k-blocks in order, rounding to f32 after each
//!   block; within a block the products are summed in k order. The CPU engine runs its own
//!   kernel ([`crate::driver::engine::cpu::gemm`]), which computes every element the same way
//!   whatever the chunking (bit-identical results); [`gemm_f32_tile`] (the `matrixmultiply`
//!   crate, whose SIMD path varies with a tile's shape by a few ulps) remains as a reference.
//!   Every result matches a naive f64 reference within a relative tolerance of about `k·2⁻²³`.
//!   With `beta == 0`, C is not read (NaNs in C do not propagate).
//! - `axpy_f32`: `y[i] = alpha·x[i] + y[i]` element by element in f32 (exactly one rounding per
//!   multiply and per add, no fused multiply-add).
//! - `reduce_sum_f32`: the sum is accumulated in **f64, sequentially in index order** starting from
//!   0.0, and rounded to f32 once at the end. This order does not depend on how the job is split
//!   into chunks, so a result is the same whatever the chunk size.
//! - `crc32c`: CRC-32C (Castagnoli, reflected, init and final xor `0xFFFF_FFFF`), as in iSCSI;
//!   `crc32c(b"123456789") == 0xE306_9283`.

use thiserror::Error;

/// A kernel was called with slices that do not match its dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("kernel {kernel}: {reason}")]
pub struct KernelError {
    /// The kernel.
    pub kernel: &'static str,
    /// What does not match.
    pub reason: &'static str,
}

/// Dimensions of a row-major GEMM `C[m×n] = alpha·A[m×k]·B[k×n] + beta·C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmDims {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
}

/// Computes the block `(rows, cols)` of `C = alpha·A·B + beta·C`. `a`, `b`, `c` hold
/// exactly the `m×k`, `k×n`, `m×n` matrices.
pub fn gemm_f32_block(
    dims: GemmDims,
    block: (std::ops::Range<usize>, std::ops::Range<usize>),
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) -> Result<(), KernelError> {
    gemm_f32_tile(dims, block, 0..dims.k, alpha, a, b, beta, c)
}

/// One k-block of a tile: `C[rows, cols] = alpha·A[rows, ks]·B[ks, cols] + beta·C[rows, cols]`.
/// Summing a tile's k-blocks in order, the first with the caller's `beta` and the rest with
/// `beta = 1`, computes the tile of `C = alpha·A·B + beta·C` (see [`GEMM_K_BLOCK`] for the
/// summation order this defines). `a`, `b`, `c` hold exactly the `m×k`, `k×n`, `m×n` matrices.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_tile(
    dims: GemmDims,
    (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
    ks: std::ops::Range<usize>,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) -> Result<(), KernelError> {
    let fail = |reason| {
        Err(KernelError {
            kernel: "gemm_f32",
            reason,
        })
    };
    let GemmDims { m, n, k } = dims;
    if m == 0 || n == 0 || k == 0 {
        return fail("dimensions must be non-zero");
    }
    let sizes_ok = m.checked_mul(k) == Some(a.len())
        && k.checked_mul(n) == Some(b.len())
        && m.checked_mul(n) == Some(c.len());
    if !sizes_ok {
        return fail("slice lengths do not match m, n, k");
    }
    if rows.start > rows.end || rows.end > m || cols.start > cols.end || cols.end > n {
        return fail("block outside the matrix");
    }
    if ks.start > ks.end || ks.end > k {
        return fail("k-block outside the matrix");
    }
    if rows.is_empty() || cols.is_empty() || ks.is_empty() {
        return Ok(());
    }
    let (Ok(rsa), Ok(rsb), Ok(rsc)) = (isize::try_from(k), isize::try_from(n), isize::try_from(n))
    else {
        return fail("dimension too large");
    };
    // The block's first elements; the lengths checked above keep every element the call touches
    // (rows × ks of A, ks × cols of B, rows × cols of C) inside the slices.
    let a_block = &a[rows.start * k + ks.start..];
    let b_block = &b[ks.start * n + cols.start..];
    let c_block = &mut c[rows.start * n + cols.start..];
    // SAFETY: with row strides k, n, n and column stride 1, the largest index read from
    // `a_block` is (rows.len()-1)·k + ks.len()-1 < a_block.len() (as ks.end ≤ k); from `b_block`
    // (ks.len()-1)·n + cols.len()-1 < b_block.len(); written in `c_block`
    // (rows.len()-1)·n + cols.len()-1 < c_block.len(). `c` is borrowed mutably, so it aliases
    // neither `a` nor `b`.
    unsafe {
        matrixmultiply::sgemm(
            rows.len(),
            ks.len(),
            cols.len(),
            alpha,
            a_block.as_ptr(),
            rsa,
            1,
            b_block.as_ptr(),
            rsb,
            1,
            beta,
            c_block.as_mut_ptr(),
            rsc,
            1,
        );
    }
    Ok(())
}

/// Largest k-block the engine runs: `k` is cut into `⌈k / GEMM_K_BLOCK⌉` blocks of nearly equal
/// size ([`gemm_k_blocks`]), a function of `k` alone, so the summation order of a GEMM does not
/// depend on how the job is chunked or on the machine's speed.
pub const GEMM_K_BLOCK: usize = 256;

/// The k-block size for inner dimension `k`: `k` cut into `⌈k / GEMM_K_BLOCK⌉` nearly equal
/// blocks (the last may be shorter). `k = 0` gives 1.
pub fn gemm_k_block(k: usize) -> usize {
    let blocks = k.div_ceil(GEMM_K_BLOCK).max(1);
    k.div_ceil(blocks).max(1)
}

/// `y[i] = alpha·x[i] + y[i]`.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    if x.len() != y.len() {
        return Err(KernelError {
            kernel: "axpy_f32",
            reason: "x and y differ in length",
        });
    }
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
    Ok(())
}

/// Adds `x` to the running f64 sum `acc` in index order (see the module docs).
pub fn reduce_sum_f32(acc: f64, x: &[f32]) -> f64 {
    x.iter().fold(acc, |sum, &v| sum + f64::from(v))
}

/// Continues a CRC-32C over `data` (start with 0).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random floats in [-1, 1).
    fn noise(seed: u32, len: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn naive_gemm(d: GemmDims, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; d.m * d.n];
        for i in 0..d.m {
            for j in 0..d.n {
                let dot: f64 = (0..d.k)
                    .map(|p| f64::from(a[i * d.k + p]) * f64::from(b[p * d.n + j]))
                    .sum();
                out[i * d.n + j] =
                    f64::from(alpha) * dot + f64::from(beta) * f64::from(c[i * d.n + j]);
            }
        }
        out
    }

    #[test]
    fn gemm_matches_naive_reference_blockwise() {
        for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (33, 17, 65), (64, 64, 64)] {
            let d = GemmDims { m, n, k };
            let a = noise(1, m * k);
            let b = noise(2, k * n);
            let c0 = noise(3, m * n);
            let want = naive_gemm(d, 1.5, &a, &b, 0.5, &c0);
            // Whole matrix at once, then in 2-D blocks: both must match the reference.
            let mut whole = c0.clone();
            gemm_f32_block(d, (0..m, 0..n), 1.5, &a, &b, 0.5, &mut whole).unwrap();
            let mut blocked = c0.clone();
            for r in (0..m).step_by(4) {
                for cc in (0..n).step_by(3) {
                    let rows = r..(r + 4).min(m);
                    let cols = cc..(cc + 3).min(n);
                    gemm_f32_block(d, (rows, cols), 1.5, &a, &b, 0.5, &mut blocked).unwrap();
                }
            }
            let tol = 1e-5 * k as f64 + 1e-6;
            for i in 0..m * n {
                let scale = want[i].abs().max(1.0);
                assert!(
                    (f64::from(whole[i]) - want[i]).abs() <= tol * scale,
                    "{m}x{n}x{k} @{i}"
                );
                assert!((f64::from(blocked[i]) - want[i]).abs() <= tol * scale);
            }
        }
    }

    #[test]
    fn gemm_beta_zero_ignores_nan_and_rejects_bad_shapes() {
        let d = GemmDims { m: 2, n: 2, k: 2 };
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [f32::NAN; 4];
        gemm_f32_block(d, (0..2, 0..2), 1.0, &a, &b, 0.0, &mut c).unwrap();
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        assert!(gemm_f32_block(d, (0..2, 0..2), 1.0, &a[..3], &b, 0.0, &mut c).is_err());
        assert!(gemm_f32_block(d, (0..3, 0..2), 1.0, &a, &b, 0.0, &mut c).is_err());
        assert!(gemm_f32_block(d, (1..1, 0..2), 1.0, &a, &b, 0.0, &mut c).is_ok());
        let zero_k = GemmDims { m: 2, n: 2, k: 0 };
        assert!(gemm_f32_block(zero_k, (0..2, 1..2), 1.0, &[], &[], 0.0, &mut c).is_err());
    }

    #[test]
    fn axpy_matches_reference() {
        let x = noise(4, 1000);
        let y0 = noise(5, 1000);
        let mut y = y0.clone();
        axpy_f32(-0.25, &x, &mut y).unwrap();
        for i in 0..1000 {
            assert_eq!(y[i], y0[i] + (-0.25) * x[i]);
        }
        assert!(axpy_f32(1.0, &x[..3], &mut y).is_err());
    }

    #[test]
    fn reduce_is_sequential_f64_and_chunk_independent() {
        let x = noise(6, 100_000);
        let whole = reduce_sum_f32(0.0, &x);
        let mut chunked = 0.0;
        for part in x.chunks(777) {
            chunked = reduce_sum_f32(chunked, part);
        }
        assert_eq!(whole.to_bits(), chunked.to_bits());
        let naive: f64 = x.iter().map(|&v| f64::from(v)).sum();
        assert_eq!(whole, naive);
        assert_eq!(reduce_sum_f32(0.0, &[1e8, 1.0, -1e8]) as f32, 1.0);
    }

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c_append(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_append(0, b""), 0);
        assert_eq!(crc32c_append(0, &[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c_append(0, &[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c_append(0, &ascending), 0x46DD_794E);
        let split = crc32c_append(crc32c_append(0, b"12345"), b"6789");
        assert_eq!(split, 0xE306_9283);
    }
}
