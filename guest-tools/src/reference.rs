//! CPU references for the channel kernels and the checks `bench` applies to device results,
//! plus a small seeded generator for inputs.
//!
//! Result definitions (protocol/README.md, backend `driver/kernels.rs`):
//! - GEMM_F32 `C = alpha·A·B + beta·C`: summation order is the device's choice, so results are
//!   compared against an f64 reference with the standard bound
//!   `|c − ref| ≤ (k + 2)·ε·(|alpha|·Σ|a||b| + |beta|·|c₀|) + tiny`.
//! - AXPY_F32 `y = alpha·x + y`: one rounding for the product and one for the sum (no fused
//!   multiply-add), so the result is exact: compared bit for bit.
//! - REDUCE_SUM_F32: order is the device's choice (the backend sums in f64 in index order and
//!   rounds once; the protocol does not fix it). Bound against f64: `(⌈log₂ n⌉ + 2)·ε·Σ|x|` (any
//!   pairwise/tree order in f32, or f64 accumulation) plus 4 ulp of the result. Sequential f32
//!   summation of the zero-mean inputs `bench` uses stays far inside it as well.
//! - CRC32C: exact ([`vgpu_protocol::crc32c::crc32c`]).

/// f32 unit roundoff (2⁻²⁴) doubled to one ulp at 1.0 (2⁻²³), the ε used in the bounds.
const EPS: f64 = f32::EPSILON as f64;
/// Absolute slack for results near zero.
const TINY: f64 = 1e-30;

/// SplitMix64: deterministic, seedable, good enough for test inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float uniformly in [-1, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        let bits = (self.next_u64() >> 40) as u32; // 24 bits
        (bits as f32) / ((1u32 << 23) as f32) - 1.0
    }

    /// Fills `out` with random floats in [-1, 1).
    pub fn fill_f32(&mut self, out: &mut [f32]) {
        for v in out {
            *v = self.next_f32();
        }
    }

    /// Fills `out` with random bytes.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            for (d, s) in chunk.iter_mut().zip(r) {
                *d = s;
            }
        }
    }
}

/// A row-major GEMM problem `C[m×n] = alpha·A[m×k]·B[k×n] + beta·C0`.
#[derive(Debug, Clone, Copy)]
pub struct GemmProblem<'a> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// A.
    pub a: &'a [f32],
    /// B.
    pub b: &'a [f32],
    /// Scale of C0.
    pub beta: f32,
    /// C before the kernel.
    pub c0: &'a [f32],
}

/// GEMM in f64: returns `(reference, bound)` per element of C (`m×n`), where `bound` is the
/// largest error an f32 implementation with any summation order may show.
pub fn gemm_reference(p: &GemmProblem<'_>) -> Option<(Vec<f64>, Vec<f64>)> {
    let GemmProblem {
        m,
        n,
        k,
        alpha,
        a,
        b,
        beta,
        c0,
    } = *p;
    if a.len() != m.checked_mul(k)?
        || b.len() != k.checked_mul(n)?
        || c0.len() != m.checked_mul(n)?
    {
        return None;
    }
    let len = m * n;
    let mut refv = vec![0f64; len];
    let mut bound = vec![0f64; len];
    let slack = (k as f64 + 2.0) * EPS;
    for i in 0..m {
        let arow = a.get(i * k..(i + 1) * k)?;
        for j in 0..n {
            let (mut s, mut sabs) = (0f64, 0f64);
            for (p, &av) in arow.iter().enumerate() {
                let bv = f64::from(*b.get(p * n + j)?);
                s += f64::from(av) * bv;
                sabs += (f64::from(av) * bv).abs();
            }
            let c = f64::from(*c0.get(i * n + j)?);
            let idx = i * n + j;
            let alpha = f64::from(alpha);
            let beta = f64::from(beta);
            *refv.get_mut(idx)? = alpha * s + if beta == 0.0 { 0.0 } else { beta * c };
            *bound.get_mut(idx)? = slack * (alpha.abs() * sabs + (beta * c).abs()) + TINY;
        }
    }
    Some((refv, bound))
}

/// Index and values of the first element of `got` outside `reference ± bound`.
pub fn check_within(got: &[f32], reference: &[f64], bound: &[f64]) -> Result<(), String> {
    if got.len() != reference.len() || got.len() != bound.len() {
        return Err(format!(
            "{} results, {} expected",
            got.len(),
            reference.len()
        ));
    }
    for (i, ((&g, &r), &b)) in got.iter().zip(reference).zip(bound).enumerate() {
        let g64 = f64::from(g);
        if !g.is_finite() || (g64 - r).abs() > b {
            return Err(format!(
                "element {i}: device {g:e}, reference {r:e} (allowed error {b:e})"
            ));
        }
    }
    Ok(())
}

/// AXPY step on the CPU: `y[i] = alpha·x[i] + y[i]` with a separate multiply and add.
pub fn axpy_reference(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        // Rust never contracts this into a fused multiply-add.
        *yi += alpha * xi;
    }
}

/// Bit-exact comparison of two f32 slices: the first differing index, if any.
pub fn check_exact(got: &[f32], expected: &[f32]) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!(
            "{} results, {} expected",
            got.len(),
            expected.len()
        ));
    }
    match got
        .iter()
        .zip(expected)
        .position(|(g, e)| g.to_bits() != e.to_bits())
    {
        None => Ok(()),
        Some(i) => {
            let (g, e) = (got.get(i).copied(), expected.get(i).copied());
            Err(format!(
                "element {i}: device {g:?}, reference {e:?} (must be bit-exact: no fused \
                 multiply-add)"
            ))
        }
    }
}

/// Σx in f64 and the error bound described in the module docs.
pub fn reduce_reference(x: &[f32]) -> (f64, f64) {
    let s: f64 = x.iter().map(|&v| f64::from(v)).sum();
    let sabs: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
    let levels = (x.len().max(1) as f64).log2().ceil();
    (s, (levels + 2.0) * EPS * sabs + 4.0 * EPS * s.abs() + TINY)
}

/// f32 values from little-endian bytes (a trailing partial value is ignored).
pub fn f32s_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

/// Writes f32 values as little-endian bytes into `out` (as many as fit).
pub fn f32s_to_le(values: &[f32], out: &mut [u8]) {
    for (dst, v) in out.chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// CRC-32C of `len` zero bytes (what the CRC32C kernel returns over a fresh buffer).
pub fn crc32c_of_zeros(len: u64) -> u32 {
    const CHUNK: [u8; 4096] = [0; 4096];
    let mut state = !0u32;
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK.len() as u64) as usize;
        state = vgpu_protocol::crc32c::crc32c_update(state, CHUNK.get(..n).unwrap_or_default());
        left -= n as u64;
    }
    !state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_bounded() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut c = Rng::new(43);
        let va: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let f = r.next_f32();
            assert!((-1.0..1.0).contains(&f));
        }
        let mut bytes = [0u8; 13];
        r.fill_bytes(&mut bytes);
        assert!(bytes.iter().any(|&b| b != 0));
    }

    #[test]
    fn gemm_reference_small() {
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]; alpha 2, beta 1, C0 = 1.
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let c0 = [1.0; 4];
        let (r, bound) = gemm_reference(&GemmProblem {
            m: 2,
            n: 2,
            k: 2,
            alpha: 2.0,
            a: &a,
            b: &b,
            beta: 1.0,
            c0: &c0,
        })
        .unwrap();
        assert_eq!(r, vec![39.0, 45.0, 87.0, 101.0]);
        assert!(bound.iter().all(|&b| b > 0.0 && b < 1e-3));
        let got = [39.0f32, 45.0, 87.0, 101.0];
        assert!(check_within(&got, &r, &bound).is_ok());
        let bad = [39.0f32, 45.0, 87.0, 101.01];
        assert!(check_within(&bad, &r, &bound)
            .unwrap_err()
            .contains("element 3"));
        assert!(check_within(&[f32::NAN, 45.0, 87.0, 101.0], &r, &bound).is_err());
        assert!(gemm_reference(&GemmProblem {
            m: 2,
            n: 2,
            k: 3,
            alpha: 1.0,
            a: &a,
            b: &b,
            beta: 0.0,
            c0: &c0
        })
        .is_none());
    }

    #[test]
    fn gemm_bound_covers_f32_naive_order() {
        let (m, n, k) = (7, 5, 300);
        let mut rng = Rng::new(9);
        let mut a = vec![0f32; m * k];
        let mut b = vec![0f32; k * n];
        rng.fill_f32(&mut a);
        rng.fill_f32(&mut b);
        let c0 = vec![0f32; m * n];
        let mut got = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f32;
                for p in (0..k).rev() {
                    s += a[i * k + p] * b[p * n + j];
                }
                got[i * n + j] = 1.5 * s;
            }
        }
        let (r, bound) = gemm_reference(&GemmProblem {
            m,
            n,
            k,
            alpha: 1.5,
            a: &a,
            b: &b,
            beta: 0.0,
            c0: &c0,
        })
        .unwrap();
        check_within(&got, &r, &bound).unwrap();
    }

    #[test]
    fn axpy_is_unfused() {
        let alpha = 0.1f32;
        let x = [3.0f32, -1.0, 1e-8];
        let mut y = [1.0f32, 2.0, -1.0];
        axpy_reference(alpha, &x, &mut y);
        for (i, &yi) in y.iter().enumerate() {
            let prod = alpha * x[i];
            let orig = [1.0f32, 2.0, -1.0][i];
            assert_eq!(yi.to_bits(), (prod + orig).to_bits());
        }
        assert!(check_exact(&y, &y).is_ok());
        let mut z = y;
        z[1] = f32::from_bits(z[1].to_bits() + 1);
        assert!(check_exact(&z, &y).unwrap_err().contains("element 1"));
        assert!(check_exact(&z[..1], &y).is_err());
    }

    #[test]
    fn reduce_reference_and_bound() {
        let x = [1.0f32, 2.0, 3.5, -0.5];
        let (s, b) = reduce_reference(&x);
        assert_eq!(s, 6.0);
        assert!(b < 1e-5);
        let mut rng = Rng::new(3);
        let mut big = vec![0f32; 100_000];
        rng.fill_f32(&mut big);
        let (s, b) = reduce_reference(&big);
        let f32_sum: f32 = big.iter().sum();
        assert!((f64::from(f32_sum) - s).abs() <= b);
    }

    #[test]
    fn le_round_trip_and_zero_crc() {
        let v = [1.5f32, -2.25, 0.0];
        let mut bytes = [0u8; 12];
        f32s_to_le(&v, &mut bytes);
        let mut back = Vec::new();
        f32s_from_le(&bytes, &mut back);
        assert_eq!(back, v);
        assert_eq!(crc32c_of_zeros(32), 0x8A91_36AA);
        assert_eq!(crc32c_of_zeros(0), 0);
        let zeros = vec![0u8; 10_000];
        assert_eq!(
            crc32c_of_zeros(10_000),
            vgpu_protocol::crc32c::crc32c(&zeros)
        );
    }
}
