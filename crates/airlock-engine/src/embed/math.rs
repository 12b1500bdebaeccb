//! The numeric kernels of the BERT forward pass.
//!
//! Matrix products go to `faer` (runtime-dispatched SIMD, AVX-512 where the CPU has it).
//! The element-wise functions are written as straight-line polynomial code without library
//! calls, so the compiler vectorises them, and run inside [`vectorized`] so that it does so
//! for the widest instruction set the CPU has. Every element is computed by the same
//! operations in the same order on every path, so results do not depend on the CPU.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Rows handed to one thread by the element-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// Runs `f` compiled for AVX2 + FMA when the CPU has them, else for baseline x86-64. Only
/// code inlined into `f` gets the wider instructions: callers mark their closures, and the
/// functions those call, `#[inline(always)]` (a closure compiled on its own is baseline SSE).
#[inline(always)]
pub(super) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `out[m×n] = x[m×k] · w[n×k]ᵀ + bias[n]`, all row-major (PyTorch's `Linear` layout), on
/// the threads of the current rayon pool.
pub(super) fn linear(out: &mut [f32], x: &[f32], w: &[f32], bias: &[f32], k: usize, n: usize) {
    let m = x.len() / k;
    debug_assert_eq!(out.len(), m * n);
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    for row in out.chunks_exact_mut(n) {
        row.copy_from_slice(bias);
    }
    matmul(
        MatMut::from_row_major_slice_mut(out, m, n),
        Accum::Add,
        MatRef::from_row_major_slice(x, m, k),
        MatRef::from_column_major_slice(w, k, n),
        1.0,
        Par::rayon(0),
    );
}

/// Self-attention of one sequence: `q`, `k`, `v` and `out` are that sequence's rows
/// (`len × hidden`, row-major), split into `heads` heads.
pub(super) fn attention(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    hidden: usize,
    heads: usize,
    scratch: &mut Vec<f32>,
) {
    let len = q.len() / hidden;
    let dh = hidden / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    scratch.clear();
    scratch.resize(len * len + len * dh, 0.0);
    let (scores, head_out) = scratch.split_at_mut(len * len);
    // A head's columns of `len` rows: from its first element to its last.
    let span = (len - 1) * hidden + dh;
    for h in 0..heads {
        let at = h * dh;
        matmul(
            MatMut::from_row_major_slice_mut(scores, len, len),
            Accum::Replace,
            MatRef::from_row_major_slice_with_stride(&q[at..at + span], len, dh, hidden),
            MatRef::from_column_major_slice_with_stride(&k[at..at + span], dh, len, hidden),
            scale,
            Par::Seq,
        );
        vectorized(
            #[inline(always)]
            || {
                for row in scores.chunks_exact_mut(len) {
                    softmax(row);
                }
            },
        );
        matmul(
            MatMut::from_row_major_slice_mut(head_out, len, dh),
            Accum::Replace,
            MatRef::from_row_major_slice(scores, len, len),
            MatRef::from_row_major_slice_with_stride(&v[at..at + span], len, dh, hidden),
            1.0,
            Par::Seq,
        );
        for (dst, src) in out.chunks_exact_mut(hidden).zip(head_out.chunks_exact(dh)) {
            dst[at..at + dh].copy_from_slice(src);
        }
    }
}

/// `x = LayerNorm(x + residual)` row by row (`residual` may be absent).
pub(super) fn add_layer_norm(
    x: &mut [f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let n = gamma.len();
    let body = |(i, rows): (usize, &mut [f32])| {
        vectorized(
            #[inline(always)]
            || {
                for (j, row) in rows.chunks_exact_mut(n).enumerate() {
                    if let Some(res) = residual {
                        let start = (i * ROWS_PER_TASK + j) * n;
                        for (a, b) in row.iter_mut().zip(&res[start..start + n]) {
                            *a += b;
                        }
                    }
                    let mean = row_sum(row, |v| v) / n as f32;
                    let var = row_sum(row, |v| (v - mean) * (v - mean)) / n as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                        *v = (*v - mean) * inv * g + b;
                    }
                }
            },
        );
    };
    x.par_chunks_mut(n * ROWS_PER_TASK)
        .enumerate()
        .for_each(body);
}

/// Exact (erf-based) GELU, in place, as BERT's `hidden_act = "gelu"`.
pub(super) fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(4096).for_each(|chunk| {
        vectorized(
            #[inline(always)]
            || {
                for v in chunk {
                    *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
                }
            },
        );
    });
}

/// erf(x) as a rational function on [-4, 4] (beyond, ±1 to f32 precision). Absolute error
/// below 1e-6 over all of f32; the coefficients are the minimax fit Eigen and XLA use.
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_3e-3;
    p = p * x2 - 1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_3e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

/// e^x for x ≤ 0 (softmax after subtracting the row maximum); relative error below 2e-7.
/// Integer work is done on bit patterns, never by float-to-int conversion, so that loops of
/// it vectorise.
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23: adding it rounds to an integer.
    // ln 2 split so that n·LN2_HI is exact (Cody and Waite): y keeps full precision.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // n (an integer in -126..=0) sits in the low mantissa bits of `shifted`.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let y = x - n * LN2_HI - n * LN2_LO;
    // e^y on |y| ≤ ln2/2, Taylor to degree 6.
    let mut p = 1.0 / 720.0_f32;
    p = p * y + 1.0 / 120.0;
    p = p * y + 1.0 / 24.0;
    p = p * y + 1.0 / 6.0;
    p = p * y + 0.5;
    p = p * y + 1.0;
    p = p * y + 1.0;
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// Lanes of the independent accumulators in reductions: a single running sum is a chain of
/// dependent additions that no compiler may reorder, so it neither vectorises nor pipelines.
const LANES: usize = 16;

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Σ term(v) over the row, in independent lanes.
#[inline(always)]
fn row_sum(row: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += term(v);
        }
    }
    tail.iter().map(|&v| term(v)).sum::<f32>() + lanes.iter().sum::<f32>()
}

#[inline(always)]
fn softmax(row: &mut [f32]) {
    let max = row_max(row);
    for v in row.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let inv = 1.0 / row_sum(row, |v| v);
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0f32;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 1e-6, "worst absolute error {worst}");
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f32;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let want = x.exp();
            worst = worst.max(((exp_neg(x) - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn linear_is_x_times_w_transposed_plus_bias() {
        // x: 2×3, w: 2×3 (two outputs), bias: 2.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let mut out = [0.0; 4];
        linear(&mut out, &x, &w, &[10.0, 20.0], 3, 2);
        assert_eq!(out, [8.0, 23.0, 8.0, 27.5]);
    }

    #[test]
    fn reductions_cover_every_element_of_any_length() {
        for len in [1usize, 15, 16, 17, 40, 384] {
            let row: Vec<f32> = (0..len).map(|i| i as f32).collect();
            assert_eq!(
                row_sum(&row, |v| v),
                (len * (len - 1) / 2) as f32,
                "length {len}"
            );
            assert_eq!(row_max(&row), (len - 1) as f32, "length {len}");
            let mut reversed = row.clone();
            reversed.reverse();
            assert_eq!(row_max(&reversed), (len - 1) as f32, "length {len}");
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut row = [1.0, 2.0, 3.0, -50.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[2] > row[1] && row[1] > row[0]);
    }
}
