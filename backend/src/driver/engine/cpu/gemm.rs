//! The CPU engine's GEMM kernel: `C = alpha·A·B + beta·C` (row-major f32) computed in
//! micro-tiles that a caller can stop after any of them and resume later, with the packed
//! operand panels kept in between ([`GemmPanels`]), so that cutting an operation into bounded
//! chunks costs no repacking.
//!
//! Blocking (as in GotoBLAS/BLIS): C is done in column panels of at most [`NC`] columns; for each
//! panel, `k` is walked in the k-blocks of [`kernels::gemm_k_block`]`(k)` (≤ 256, a function of
//! `k` alone); for each k-block the `kc × nc` block of B is packed once into strips of [`NR`]
//! columns, then rows of C are done in blocks of [`MC`] rows whose `mc × kc` block of A is packed
//! once into micro-panels of [`MR`] rows. Each micro-tile (`MR × NR` of C, one k-block) is one
//! register-blocked kernel call: AVX2+FMA (`std::arch`, detected at run time) on x86-64, a
//! portable kernel the compiler vectorises elsewhere. B strips are packed while the first row
//! block passes over them and A micro-panels while the first strip passes over them, so packing
//! is spread over the micro-tiles that first need it.
//!
//! Summation order: per element of C and k-block, the products are summed in `k` order into an
//! f32 accumulator starting at 0 (fused multiply-adds on the AVX2 path, multiply then add on the
//! portable one), then `C = alpha·acc + beta·C` for the first k-block (`alpha·acc` when
//! `beta == 0`: C is not read, NaNs in it do not propagate) and `C = alpha·acc + C` for the
//! following ones, in order. Every element is computed the same way whichever micro-tile (full
//! or edge) it falls in and wherever a chunk stopped, so the result does not depend on the
//! chunking at all (bit for bit, on one machine), and matches a naive f64 reference within a
//! relative tolerance of about `k·2⁻²³`.
//!
//! Memory held between chunks: one packed B panel (`kc × nc` ≤ 256 × 1024 floats, 1 MiB) and one
//! packed A block (`mc × kc` ≤ 144 × 256 floats, 144 KiB) per GEMM in progress, whatever the
//! matrix sizes ([`GemmPanels::held_bytes`]). The CPU engine keeps them in the operation's state
//! and recycles one set for its next GEMM.

use std::sync::OnceLock;

use crate::driver::kernels::{self, GemmDims, KernelError};

/// Rows of a micro-tile.
pub const MR: usize = 6;
/// Columns of a micro-tile (two 8-float AVX vectors).
pub const NR: usize = 16;
/// Rows of C per packed block of A (a multiple of [`MR`]; `MC × 256` floats stay in L2).
pub const MC: usize = 144;
/// Most columns of C per packed panel of B (a multiple of [`NR`]; bounds the panel to 1 MiB).
pub const NC: usize = 1024;

/// The micro-kernel in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 with fused multiply-add (x86-64, detected at run time).
    Avx2Fma,
    /// Portable Rust, vectorised by the compiler for the build target.
    Portable,
}

impl Isa {
    /// The best kernel this CPU runs (detected once per process).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2Fma;
            }
            Isa::Portable
        })
    }

    /// Short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2Fma => "avx2+fma",
            Isa::Portable => "portable",
        }
    }
}

/// A validated GEMM: dimensions, scalars and the k-blocking.
#[derive(Debug, Clone, Copy)]
pub struct GemmShape {
    dims: GemmDims,
    alpha: f32,
    beta: f32,
    kb: usize,
    k_blocks: usize,
}

impl GemmShape {
    /// Checks that `a`, `b`, `c` hold exactly the `m×k`, `k×n`, `m×n` matrices (lengths given)
    /// and that no dimension is zero.
    pub fn new(
        dims: GemmDims,
        alpha: f32,
        beta: f32,
        lens: (usize, usize, usize),
    ) -> Result<Self, KernelError> {
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
        let sizes_ok = m.checked_mul(k) == Some(lens.0)
            && k.checked_mul(n) == Some(lens.1)
            && m.checked_mul(n) == Some(lens.2);
        if !sizes_ok {
            return fail("slice lengths do not match m, n, k");
        }
        let kb = kernels::gemm_k_block(k);
        Ok(Self {
            dims,
            alpha,
            beta,
            kb,
            k_blocks: k.div_ceil(kb),
        })
    }

    /// Multiply-adds one full micro-tile computes (`MR·NR·kb`, padding included).
    pub fn tile_macs(&self) -> f64 {
        (MR * NR * self.kb) as f64
    }

    /// Micro-tiles in the whole GEMM.
    pub fn tiles(&self) -> u64 {
        let GemmDims { m, n, .. } = self.dims;
        let col_panels = n.div_ceil(NC);
        let strips: usize = (0..col_panels)
            .map(|p| (n - p * NC).min(NC).div_ceil(NR))
            .sum();
        let panels: usize = (0..m.div_ceil(MC))
            .map(|b| (m - b * MC).min(MC).div_ceil(MR))
            .sum();
        (strips as u64) * (panels as u64) * self.k_blocks as u64
    }
}

/// One k-step of a packed B strip: [`NR`] floats, one 64-byte cache line, aligned so that the
/// kernel's vector loads never straddle two lines.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct BRow([f32; NR]);

/// Where a GEMM has got, and its packed panels: kept across chunks (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct GemmPanels {
    /// First column of the current column panel.
    jc: usize,
    /// Current k-block.
    pc: usize,
    /// First row of the current row block.
    ic: usize,
    /// Strip (of `NR` columns) within the column panel.
    jr: usize,
    /// Micro-panel (of `MR` rows) within the row block.
    ir: usize,
    /// Packed B for (jc, pc): strips of `kc` rows of `NR`, `b_strips` of them valid.
    b: Vec<BRow>,
    b_strips: usize,
    /// Packed A for (ic, pc): micro-panels of `kc × MR`, `a_panels` of them valid.
    a: Vec<f32>,
    a_panels: usize,
    done: bool,
}

/// What one [`GemmPanels::run`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunReport {
    /// The GEMM is complete.
    pub done: bool,
    /// Micro-tiles computed.
    pub tiles: u64,
    /// Elements of A and B packed.
    pub packed: u64,
}

impl GemmPanels {
    /// Starts over for a new GEMM, keeping the panels' memory.
    pub fn reset(&mut self) {
        *self = GemmPanels {
            a: std::mem::take(&mut self.a),
            b: std::mem::take(&mut self.b),
            ..GemmPanels::default()
        };
    }

    /// Bytes of packed panels held.
    pub fn held_bytes(&self) -> usize {
        self.b.capacity() * std::mem::size_of::<BRow>()
            + self.a.capacity() * std::mem::size_of::<f32>()
    }

    /// Computes up to `max_tiles` more micro-tiles (at least one) of the GEMM `shape` on `a`,
    /// `b`, `c` with kernel `isa`. The matrices must be the same on every call for one GEMM.
    pub fn run(
        &mut self,
        shape: &GemmShape,
        isa: Isa,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        max_tiles: u64,
    ) -> Result<RunReport, KernelError> {
        let GemmDims { m, n, k } = shape.dims;
        if (a.len(), b.len(), c.len()) != (m * k, k * n, m * n) {
            return Err(KernelError {
                kernel: "gemm_f32",
                reason: "slice lengths do not match m, n, k",
            });
        }
        let mut report = RunReport {
            done: self.done,
            tiles: 0,
            packed: 0,
        };
        let kb = shape.kb;
        let mut acc = [0f32; MR * NR];
        while !self.done && report.tiles < max_tiles.max(1) {
            let k0 = self.pc * kb;
            let kc = kb.min(k - k0);
            let ncols = NC.min(n - self.jc);
            let mrows = MC.min(m - self.ic);
            let (i0, j0) = (self.ic + self.ir * MR, self.jc + self.jr * NR);
            let (h, w) = (MR.min(m - i0), NR.min(n - j0));
            if self.b_strips <= self.jr {
                let need = ncols.div_ceil(NR) * kc;
                if self.b.len() < need {
                    self.b.resize(need, BRow([0.0; NR]));
                }
                let strip = &mut self.b[self.jr * kc..][..kc];
                for (p, dst) in strip.iter_mut().enumerate() {
                    let src = &b[(k0 + p) * n + j0..][..w];
                    dst.0[..w].copy_from_slice(src);
                    dst.0[w..].fill(0.0);
                }
                self.b_strips = self.jr + 1;
                report.packed += (kc * w) as u64;
            }
            if self.a_panels <= self.ir {
                let need = mrows.div_ceil(MR) * MR * kc;
                if self.a.len() < need {
                    self.a.resize(need, 0.0);
                }
                let panel = &mut self.a[self.ir * kc * MR..][..kc * MR];
                for i in 0..MR {
                    if i < h {
                        let src = &a[(i0 + i) * k + k0..][..kc];
                        for (p, &v) in src.iter().enumerate() {
                            panel[p * MR + i] = v;
                        }
                    } else {
                        for p in 0..kc {
                            panel[p * MR + i] = 0.0;
                        }
                    }
                }
                self.a_panels = self.ir + 1;
                report.packed += (kc * h) as u64;
            }
            let ap = &self.a[self.ir * kc * MR..][..kc * MR];
            let bp = &self.b[self.jr * kc..][..kc];
            let (alpha, beta) = if self.pc == 0 {
                (shape.alpha, shape.beta)
            } else {
                (shape.alpha, 1.0)
            };
            let tile = Tile {
                kc,
                h,
                w,
                alpha,
                beta,
                at: i0 * n + j0,
                ldc: n,
            };
            micro_tile(isa, &tile, ap, bp, &mut acc, c);
            report.tiles += 1;
            self.advance(shape, ncols, mrows);
        }
        report.done = self.done;
        Ok(report)
    }

    /// Moves to the next micro-tile: micro-panels, then strips, row blocks, k-blocks, column
    /// panels.
    fn advance(&mut self, shape: &GemmShape, ncols: usize, mrows: usize) {
        let GemmDims { m, n, .. } = shape.dims;
        self.ir += 1;
        if self.ir < mrows.div_ceil(MR) {
            return;
        }
        self.ir = 0;
        self.jr += 1;
        if self.jr < ncols.div_ceil(NR) {
            return;
        }
        self.jr = 0;
        self.ic += MC;
        self.a_panels = 0;
        if self.ic < m {
            return;
        }
        self.ic = 0;
        self.pc += 1;
        self.b_strips = 0;
        if self.pc < shape.k_blocks {
            return;
        }
        self.pc = 0;
        self.jc += NC;
        if self.jc >= n {
            self.done = true;
        }
    }
}

/// `C = alpha·A·B + beta·C` in one call with the engine's kernel (what the engine computes in
/// chunks; the benchmarks' direct baseline).
pub fn gemm_f32(
    dims: GemmDims,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) -> Result<(), KernelError> {
    let shape = GemmShape::new(dims, alpha, beta, (a.len(), b.len(), c.len()))?;
    GemmPanels::default().run(&shape, Isa::detect(), a, b, c, u64::MAX)?;
    Ok(())
}

/// Where a micro-tile's results go in C.
struct Tile {
    /// Length of the k-block.
    kc: usize,
    /// Rows and columns of the tile inside C (≤ MR, NR).
    h: usize,
    w: usize,
    alpha: f32,
    /// 0: C is not read.
    beta: f32,
    /// Index of the tile's first element in C, and C's row stride.
    at: usize,
    ldc: usize,
}

fn micro_tile(isa: Isa, t: &Tile, a: &[f32], b: &[BRow], acc: &mut [f32; MR * NR], c: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only chosen by `Isa::detect` when the CPU reports AVX2 and FMA.
        Isa::Avx2Fma => unsafe { avx2::micro_tile(t, a, b, acc, c) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2Fma => portable_tile(t, a, b, acc, c),
        Isa::Portable => portable_tile(t, a, b, acc, c),
    }
}

fn portable_tile(t: &Tile, a: &[f32], b: &[BRow], acc: &mut [f32; MR * NR], c: &mut [f32]) {
    let mut sum = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b).take(t.kc) {
        for (row, &ai) in sum.iter_mut().zip(ap) {
            for (s, &bj) in row.iter_mut().zip(&bp.0) {
                *s += ai * bj;
            }
        }
    }
    for (dst, row) in acc.chunks_exact_mut(NR).zip(&sum) {
        dst.copy_from_slice(row);
    }
    store(t, acc, c);
}

/// Writes the accumulators of a tile into C (`alpha·acc + beta·C`, `alpha·acc` when beta is 0).
#[inline(always)]
fn store(t: &Tile, acc: &[f32; MR * NR], c: &mut [f32]) {
    for (i, sums) in acc.chunks_exact(NR).take(t.h).enumerate() {
        let row = &mut c[t.at + i * t.ldc..][..t.w];
        if t.beta == 0.0 {
            for (x, &s) in row.iter_mut().zip(sums) {
                *x = t.alpha * s;
            }
        } else {
            for (x, &s) in row.iter_mut().zip(sums) {
                *x = t.alpha * s + t.beta * *x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{store, BRow, Tile, MR, NR};

    /// One micro-tile with AVX2 and FMA: 12 accumulators (6 rows × 2 vectors of 8).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_tile(
        t: &Tile,
        a: &[f32],
        b: &[BRow],
        acc: &mut [f32; MR * NR],
        c: &mut [f32],
    ) {
        let kc = t.kc;
        let (a, b) = (&a[..kc * MR], &b[..kc]);
        // Fetch the tile's rows of C while the products are summed (they are read or written
        // at the end; a row of a wide C is a cache miss the hardware prefetcher cannot guess).
        for i in 0..t.h {
            if let Some(row) = c.get(t.at + i * t.ldc..t.at + i * t.ldc + t.w) {
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().cast());
                _mm_prefetch::<_MM_HINT_T0>(row[t.w - 1..].as_ptr().cast());
            }
        }
        let mut sum = [[_mm256_setzero_ps(); 2]; MR];
        for (ap, bp) in a.chunks_exact(MR).zip(b) {
            // SAFETY: a row has NR = 16 floats, so both 8-float loads stay inside it; it is
            // 64-byte aligned, so the aligned loads' 32-byte alignment holds.
            let (b0, b1) = unsafe {
                (
                    _mm256_load_ps(bp.0.as_ptr()),
                    _mm256_load_ps(bp.0[8..].as_ptr()),
                )
            };
            for (s, ai) in sum.iter_mut().zip(ap) {
                let av = _mm256_set1_ps(*ai);
                s[0] = _mm256_fmadd_ps(av, b0, s[0]);
                s[1] = _mm256_fmadd_ps(av, b1, s[1]);
            }
        }
        for (dst, s) in acc.chunks_exact_mut(NR).zip(&sum) {
            // SAFETY: `dst` has NR = 16 floats, so both 8-float stores stay inside it.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), s[0]);
                _mm256_storeu_ps(dst[8..].as_mut_ptr(), s[1]);
            }
        }
        store(t, acc, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            v.push(Isa::detect());
        }
        v
    }

    /// Runs the GEMM in runs of `step` micro-tiles; returns C and the runs taken.
    fn chunked(d: GemmDims, isa: Isa, step: u64, beta: f32, c0: &[f32]) -> (Vec<f32>, u64) {
        let (a, b) = (noise(1, d.m * d.k), noise(2, d.k * d.n));
        let shape = GemmShape::new(d, 1.5, beta, (a.len(), b.len(), c0.len())).unwrap();
        let mut c = c0.to_vec();
        let mut panels = GemmPanels::default();
        let mut runs = 0;
        let mut tiles = 0;
        loop {
            let r = panels.run(&shape, isa, &a, &b, &mut c, step).unwrap();
            runs += 1;
            tiles += r.tiles;
            assert!(r.tiles <= step.max(1));
            assert!(
                panels.held_bytes() <= (256 * NC + MC * 256) * 4,
                "{}",
                panels.held_bytes()
            );
            if r.done {
                break;
            }
        }
        assert_eq!(tiles, shape.tiles());
        (c, runs)
    }

    #[test]
    fn matches_reference_and_does_not_depend_on_chunking() {
        // Edges in every direction, several k-blocks, several column panels and row blocks.
        for &(m, n, k) in &[(1, 1, 1), (7, 17, 5), (150, 33, 600), (13, NC + 40, 257)] {
            let d = GemmDims { m, n, k };
            let (a, b, c0) = (noise(1, m * k), noise(2, k * n), noise(3, m * n));
            for isa in isas() {
                let (whole, runs) = chunked(d, isa, u64::MAX, 0.5, &c0);
                assert_eq!(runs, 1);
                for step in [1, 7, 100] {
                    let (c, _) = chunked(d, isa, step, 0.5, &c0);
                    assert!(c == whole, "{m}x{n}x{k} {isa:?} step {step}");
                }
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k)
                            .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                            .sum();
                        let want = 1.5 * dot + 0.5 * f64::from(c0[i * n + j]);
                        let got = f64::from(whole[i * n + j]);
                        let tol = 2e-6 * k as f64 * want.abs().max(1.0);
                        assert!((got - want).abs() <= tol, "{m}x{n}x{k} {isa:?} ({i},{j})");
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_does_not_read_c_and_bad_shapes_fail() {
        let d = GemmDims { m: 3, n: 2, k: 2 };
        let c0 = vec![f32::NAN; 6];
        for isa in isas() {
            let (c, _) = chunked(d, isa, 1, 0.0, &c0);
            assert!(c.iter().all(|v| v.is_finite()), "{c:?}");
        }
        assert!(GemmShape::new(GemmDims { m: 0, n: 2, k: 2 }, 1.0, 0.0, (0, 4, 0)).is_err());
        assert!(GemmShape::new(d, 1.0, 0.0, (6, 4, 5)).is_err());
        let mut c = vec![0f32; 6];
        assert!(gemm_f32(d, 1.0, &[0.0; 6], &[0.0; 3], 0.0, &mut c).is_err());
        let shape = GemmShape::new(d, 1.0, 0.0, (6, 4, 6)).unwrap();
        let r =
            GemmPanels::default().run(&shape, Isa::Portable, &[0.0; 6], &[0.0; 4], &mut c[..5], 1);
        assert!(r.is_err());
    }
}
