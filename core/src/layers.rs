//! Evaluating one layer from a source slice into a destination slice.
//!
//! Dense and the activations go straight to the kernels; convolution is a direct loop
//! whose inner row update is the `axpy` kernel (no im2col, so no scratch memory);
//! pooling is scalar (it is never the bottleneck). Every index is checked: a mismatch
//! (impossible for a validated blob) returns [`Error::ShapeMismatch`] instead of panicking.

use crate::Error;
use crate::format::{ConvGeometry, PoolGeometry};
use crate::kernels::Kernels;
use crate::model::Layer;

/// Apply `layer` (fused with a following ReLU when `fused_relu`) from `src` into `dst`.
pub(crate) fn apply(
    kernels: &Kernels,
    layer: &Layer<'_>,
    fused_relu: bool,
    src: &[f32],
    dst: &mut [f32],
) -> Result<(), Error> {
    let same_len = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Error::ShapeMismatch)
        }
    };
    match layer {
        Layer::Dense(d) => {
            same_len(src.len() == d.in_dim && dst.len() == d.out_dim)?;
            same_len((kernels.dense)(d.panels, d.bias, src, dst, fused_relu))
        }
        Layer::Relu => same_len(src.len() == dst.len()).map(|()| (kernels.relu)(src, dst)),
        Layer::LeakyRelu { alpha } => {
            same_len(src.len() == dst.len()).map(|()| (kernels.leaky_relu)(src, dst, *alpha))
        }
        Layer::Sigmoid => same_len(src.len() == dst.len()).map(|()| (kernels.sigmoid)(src, dst)),
        Layer::Tanh => same_len(src.len() == dst.len()).map(|()| (kernels.tanh)(src, dst)),
        Layer::Gelu => same_len(src.len() == dst.len()).map(|()| (kernels.gelu)(src, dst)),
        Layer::Flatten => {
            same_len(src.len() == dst.len())?;
            dst.copy_from_slice(src);
            Ok(())
        }
        Layer::Conv2d(c) => conv2d(kernels, &c.geometry, c.weight, c.bias, src, dst),
        Layer::AvgPool2d(p) => pool2d(p, false, src, dst),
        Layer::MaxPool2d(p) => pool2d(p, true, src, dst),
    }
}

/// The output columns `ox` whose input column `ox * stride + k - pad` lies in
/// `0..in_len`, as a range `lo..hi` (possibly empty).
fn valid_range(
    out_len: usize,
    in_len: usize,
    stride: usize,
    k: usize,
    pad: usize,
) -> (usize, usize) {
    // ox * stride + k >= pad  <=>  ox >= ceil((pad - k) / stride)
    let lo = pad.saturating_sub(k).div_ceil(stride.max(1));
    // ox * stride + k - pad <= in_len - 1  <=>  ox <= (in_len - 1 + pad - k) / stride
    let hi = match (in_len + pad).checked_sub(k + 1) {
        Some(n) => (n / stride.max(1) + 1).min(out_len),
        None => 0,
    };
    (lo, hi.max(lo))
}

fn conv2d(
    kernels: &Kernels,
    g: &ConvGeometry,
    weight: &[f32],
    bias: &[f32],
    src: &[f32],
    dst: &mut [f32],
) -> Result<(), Error> {
    let (oh, ow) = g.out_hw().ok_or(Error::ShapeMismatch)?;
    let plane = oh * ow;
    let in_plane = g.in_h * g.in_w;
    if src.len() != g.in_channels * in_plane || dst.len() != g.out_channels * plane {
        return Err(Error::ShapeMismatch);
    }
    let taps = g.in_channels * g.kernel_h * g.kernel_w;
    for ((out, &b), w_oc) in dst
        .chunks_exact_mut(plane.max(1))
        .zip(bias)
        .zip(weight.chunks_exact(taps.max(1)))
    {
        out.fill(b);
        for (tap, &w) in w_oc.iter().enumerate() {
            let ic = tap / (g.kernel_h * g.kernel_w);
            let ky = tap / g.kernel_w % g.kernel_h;
            let kx = tap % g.kernel_w;
            let (ox_lo, ox_hi) = valid_range(ow, g.in_w, g.stride_w, kx, g.pad_left);
            let (oy_lo, oy_hi) = valid_range(oh, g.in_h, g.stride_h, ky, g.pad_top);
            for oy in oy_lo..oy_hi {
                let iy = oy * g.stride_h + ky - g.pad_top;
                let row_start = ic * in_plane + iy * g.in_w;
                let in_row = src
                    .get(row_start..row_start + g.in_w)
                    .ok_or(Error::ShapeMismatch)?;
                let out_row = out
                    .get_mut(oy * ow + ox_lo..oy * ow + ox_hi)
                    .ok_or(Error::ShapeMismatch)?;
                let ix_lo = ox_lo * g.stride_w + kx - g.pad_left;
                if g.stride_w == 1 {
                    let in_part = in_row
                        .get(ix_lo..ix_lo + out_row.len())
                        .ok_or(Error::ShapeMismatch)?;
                    (kernels.axpy)(out_row, w, in_part);
                } else {
                    let ins = in_row
                        .get(ix_lo..)
                        .unwrap_or(&[])
                        .iter()
                        .step_by(g.stride_w);
                    for (y, &x) in out_row.iter_mut().zip(ins) {
                        *y += w * x;
                    }
                }
            }
        }
    }
    Ok(())
}

fn pool2d(p: &PoolGeometry, max: bool, src: &[f32], dst: &mut [f32]) -> Result<(), Error> {
    let (oh, ow) = p.out_hw().ok_or(Error::ShapeMismatch)?;
    let in_plane = p.in_h * p.in_w;
    if src.len() != p.channels * in_plane || dst.len() != p.channels * oh * ow {
        return Err(Error::ShapeMismatch);
    }
    for (out, input) in dst
        .chunks_exact_mut((oh * ow).max(1))
        .zip(src.chunks_exact(in_plane.max(1)))
    {
        for oy in 0..oh {
            // Rows iy = oy * stride + ky - pad_top within 0..in_h (never empty: pad < kernel).
            let y0 = (oy * p.stride_h).saturating_sub(p.pad_top);
            let y1 = (oy * p.stride_h + p.kernel_h)
                .saturating_sub(p.pad_top)
                .min(p.in_h);
            for ox in 0..ow {
                let x0 = (ox * p.stride_w).saturating_sub(p.pad_left);
                let x1 = (ox * p.stride_w + p.kernel_w)
                    .saturating_sub(p.pad_left)
                    .min(p.in_w);
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                let mut count = 0u32;
                for iy in y0..y1 {
                    let row = input
                        .get(iy * p.in_w + x0..iy * p.in_w + x1)
                        .ok_or(Error::ShapeMismatch)?;
                    for &v in row {
                        // A NaN never wins the max, like the host IR's `f64::max`.
                        acc = if max {
                            if v > acc { v } else { acc }
                        } else {
                            acc + v
                        };
                        count += 1;
                    }
                }
                let y = out.get_mut(oy * ow + ox).ok_or(Error::ShapeMismatch)?;
                *y = if max { acc } else { acc / count.max(1) as f32 };
            }
        }
    }
    Ok(())
}
