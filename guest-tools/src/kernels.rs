//! The example kernels (`guest-tools/kernels/*.comp`, compiled to the embedded `.spv`), how to
//! run each with the guest library, and their CPU references.
//!
//! Tolerances (results are compared against f64 references computed in the guest):
//! - `reduce_sum`: the device adds in its own order (8 per invocation, then a tree), so the
//!   bound is the one of any order: `(⌈log₂ n⌉ + 2)·ε·Σ|x| + 4·ε·|Σx|` ([`reference::reduce_reference`]).
//! - `conv2d`: each output is a sum of k² products in the kernel's order; the bound is
//!   `(k² + 2)·ε·Σ|w·x| + tiny` per pixel.
//! - `softmax`: Vulkan allows `exp` an error of `3 + 2·|x|` ulp and division 2.5 ulp; with the
//!   inputs in [-4, 4) (`|x − max| ≤ 8`) every term is within 19 ulp, so each output is checked
//!   to `(2·19 + 3 + ⌈log₂ cols⌉ + 2)·ε` relative error (+ `1e-30`).
//!
//! ε is `f32::EPSILON` (2⁻²³).

use std::time::Duration;

use crate::compute::{Binding, Buffer, Device, Module};
use crate::error::{Error, Result};
use crate::reference::{self, Rng};

/// `reduce_sum.spv`: partial sums, one per workgroup of 256 × 8 elements.
pub const REDUCE_SUM_SPV: &[u8] = include_bytes!("../kernels/reduce_sum.spv");
/// `conv2d.spv`: 2D convolution with a k × k filter, 16 × 16 workgroups.
pub const CONV2D_SPV: &[u8] = include_bytes!("../kernels/conv2d.spv");
/// `softmax.spv`: row-wise softmax, one row per workgroup of 256.
pub const SOFTMAX_SPV: &[u8] = include_bytes!("../kernels/softmax.spv");

/// Elements one `reduce_sum` workgroup adds.
pub const REDUCE_PER_GROUP: usize = 256 * 8;
/// Largest conv2d filter order the examples use (the kernel takes any odd k).
pub const CONV_MAX_K: usize = 15;

const EPS: f64 = f32::EPSILON as f64;
const TINY: f64 = 1e-30;

/// The three example kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Example {
    /// Sum of n floats (shared-memory tree reduction, several passes).
    ReduceSum,
    /// 2D convolution of a square image.
    Conv2d,
    /// Row-wise softmax.
    Softmax,
}

impl Example {
    /// All three, in bench order.
    pub const ALL: [Example; 3] = [Example::ReduceSum, Example::Conv2d, Example::Softmax];

    /// Name (the `.comp` file's stem).
    pub fn name(self) -> &'static str {
        match self {
            Example::ReduceSum => "reduce_sum",
            Example::Conv2d => "conv2d",
            Example::Softmax => "softmax",
        }
    }

    /// The embedded SPIR-V.
    pub fn spirv(self) -> &'static [u8] {
        match self {
            Example::ReduceSum => REDUCE_SUM_SPV,
            Example::Conv2d => CONV2D_SPV,
            Example::Softmax => SOFTMAX_SPV,
        }
    }
}

fn f32_bytes(n: usize) -> Result<usize> {
    n.checked_mul(4)
        .ok_or_else(|| Error::InvalidArgument(format!("{n} floats is too many")))
}

fn push_u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::InvalidArgument(format!("{what} {n} is too large")))
}

/// Result of one verified run: the time each launch took (guest-measured, submit to fence).
pub type Timed<T> = (T, Vec<Duration>);

/// Sum of the floats in `x` (bound at offset 0, `n` floats) with `reduce_sum`: one launch per
/// pass, each reducing by [`REDUCE_PER_GROUP`], ping-ponging between `scratch[0]` and
/// `scratch[1]` (each at least `⌈n / 2048⌉` floats).
pub fn reduce_sum(
    module: &Module,
    x: &Buffer,
    n: usize,
    scratch: [&mut Buffer; 2],
) -> Result<Timed<f32>> {
    if n == 0 {
        return Err(Error::InvalidArgument("reduce_sum of no elements".into()));
    }
    let bufs = scratch;
    let mut times = Vec::new();
    let mut len = n;
    // The buffer holding the current input: None is `x`, Some(i) is `bufs[i]`.
    let mut input: Option<usize> = None;
    loop {
        let groups = len.div_ceil(REDUCE_PER_GROUP);
        let out = if input == Some(0) { 1 } else { 0 };
        {
            let src: &Buffer = match input {
                None => x,
                Some(i) => bufs.get(i).map(|b| &**b).unwrap_or(x),
            };
            let dst: &Buffer = bufs.get(out).map(|b| &**b).unwrap_or(x);
            let bindings = [
                Binding::range(0, src, 0, f32_bytes(len)?),
                Binding::range(1, dst, 0, f32_bytes(groups)?),
            ];
            let push = push_u32s(&[u32_of(len, "reduce_sum n")?]);
            let launch = module.launch([u32_of(groups, "groups")?, 1, 1], &bindings, &push)?;
            times.push(launch.wait()?);
        }
        input = Some(out);
        len = groups;
        if len == 1 {
            break;
        }
    }
    let [a, b] = bufs;
    let result = if input == Some(1) { b } else { a };
    let sum = result.read_f32s(0, 1)?.first().copied().unwrap_or(f32::NAN);
    Ok((sum, times))
}

/// Checks a reduce result against the f64 reference.
pub fn check_reduce(got: f32, x: &[f32]) -> std::result::Result<f64, String> {
    let (sum, bound) = reference::reduce_reference(x);
    let err = (f64::from(got) - sum).abs();
    if got.is_finite() && err <= bound {
        Ok(err)
    } else {
        Err(format!(
            "sum: device {got:e}, reference {sum:e} (allowed error {bound:e})"
        ))
    }
}

/// A conv2d problem: a `width × height` image and a `k × k` filter (k odd).
#[derive(Debug, Clone, Copy)]
pub struct Conv2d<'a> {
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// Filter order (odd).
    pub k: usize,
    /// The image, row-major.
    pub image: &'a [f32],
    /// The filter, row-major.
    pub filter: &'a [f32],
}

/// Grid of a conv2d launch: 16 × 16 pixels per workgroup.
pub fn conv2d_grid(width: usize, height: usize) -> Result<[u32; 3]> {
    Ok([
        u32_of(width.div_ceil(16), "conv2d width")?,
        u32_of(height.div_ceil(16), "conv2d height")?,
        1,
    ])
}

/// Push constants of conv2d: width, height, k.
pub fn conv2d_push(width: usize, height: usize, k: usize) -> Result<Vec<u8>> {
    Ok(push_u32s(&[
        u32_of(width, "width")?,
        u32_of(height, "height")?,
        u32_of(k, "k")?,
    ]))
}

/// The f64 reference of conv2d and the per-pixel error bound.
pub fn conv2d_reference(p: &Conv2d<'_>) -> (Vec<f64>, Vec<f64>) {
    let r = (p.k / 2) as isize;
    let (w, h) = (p.width as isize, p.height as isize);
    let mut refv = vec![0.0; p.width * p.height];
    let mut bound = vec![0.0; p.width * p.height];
    let terms = (p.k * p.k) as f64;
    for y in 0..h {
        for x in 0..w {
            let (mut s, mut sabs) = (0.0f64, 0.0f64);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (sx, sy) = (x + dx, y + dy);
                    if sx < 0 || sy < 0 || sx >= w || sy >= h {
                        continue;
                    }
                    let img = p.image.get((sy * w + sx) as usize).copied().unwrap_or(0.0);
                    let fi = ((dy + r) * p.k as isize + dx + r) as usize;
                    let f = p.filter.get(fi).copied().unwrap_or(0.0);
                    let prod = f64::from(img) * f64::from(f);
                    s += prod;
                    sabs += prod.abs();
                }
            }
            let i = (y * w + x) as usize;
            if let (Some(rv), Some(b)) = (refv.get_mut(i), bound.get_mut(i)) {
                *rv = s;
                *b = (terms + 2.0) * EPS * sabs + TINY;
            }
        }
    }
    (refv, bound)
}

/// The f64 softmax of each row and the per-element error bound.
pub fn softmax_reference(x: &[f32], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut refv = Vec::with_capacity(x.len());
    let mut bound = Vec::with_capacity(x.len());
    let levels = (cols.max(1) as f64).log2().ceil();
    let rel = (2.0 * 19.0 + 3.0 + levels + 2.0) * EPS;
    for row in x.chunks(cols.max(1)) {
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let s: f64 = row.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        for &v in row {
            let y = (f64::from(v) - m).exp() / s;
            refv.push(y);
            bound.push(rel * y + TINY);
        }
    }
    (refv, bound)
}

/// Largest `|got − ref|` over `bound` (≤ 1 means within tolerance), or the first element
/// outside it.
pub fn check_bounded(got: &[f32], refv: &[f64], bound: &[f64]) -> std::result::Result<f64, String> {
    reference::check_within(got, refv, bound)?;
    Ok(got
        .iter()
        .zip(refv)
        .zip(bound)
        .map(|((&g, &r), &b)| (f64::from(g) - r).abs() / b)
        .fold(0.0, f64::max))
}

/// Seeded inputs: `n` floats in `[-scale, scale)`.
pub fn inputs(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_f32() * scale).collect()
}

/// Loads the example's module on `dev`.
pub fn load(dev: &Device, ex: Example) -> Result<Module> {
    dev.load_module(ex.spirv(), "main")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_modules_are_spirv() {
        for ex in Example::ALL {
            let spv = ex.spirv();
            assert_eq!(
                spv.get(..4),
                Some(&0x0723_0203u32.to_le_bytes()[..]),
                "{}",
                ex.name()
            );
            assert_eq!(spv.len() % 4, 0);
        }
    }

    #[test]
    fn conv2d_reference_matches_a_hand_computation() {
        // 3x3 image 1..9, 3x3 filter with 1 in the centre and 1 to the right: out = x + right.
        let image: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let filter = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let p = Conv2d {
            width: 3,
            height: 3,
            k: 3,
            image: &image,
            filter: &filter,
        };
        let (r, b) = conv2d_reference(&p);
        assert_eq!(r, [3.0, 5.0, 3.0, 9.0, 11.0, 6.0, 15.0, 17.0, 9.0]);
        assert!(b.iter().all(|&v| v > 0.0 && v < 1e-4));
    }

    #[test]
    fn softmax_rows_sum_to_one_and_bounds_catch_errors() {
        let x = inputs(7, 4 * 100, 4.0);
        let (r, b) = softmax_reference(&x, 100);
        for row in r.chunks(100) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        let mut got: Vec<f32> = r.iter().map(|&v| v as f32).collect();
        assert!(check_bounded(&got, &r, &b).unwrap() <= 1.0);
        got[5] *= 1.001;
        assert!(check_bounded(&got, &r, &b).is_err());
    }

    #[test]
    fn reduce_check() {
        let x = inputs(1, 10_000, 1.0);
        let s: f32 = x.iter().sum();
        assert!(check_reduce(s, &x).is_ok());
        assert!(check_reduce(s + 0.5, &x).is_err());
        assert!(check_reduce(f32::NAN, &x).is_err());
    }
}
