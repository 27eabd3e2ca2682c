//! alpha-CROWN: optimise the lower-line slopes of unstable ReLU/LeakyReLU neurons, one
//! slope per neuron per spec row and bound side, with Adam on gradients computed by
//! candle (the back-substitution written in tensor ops; no hand-written backprop).
//!
//! As in auto_LiRPA's `CROWN-Optimized` (the reference): slopes start at CROWN's
//! adaptive slopes, intermediate bounds stay fixed (here: our intersected CROWN/IBP
//! bounds), lower and upper bounds are optimised separately, Adam with a learning rate
//! decayed by a constant factor per step, and the best slopes per row are kept. The
//! optimiser only proposes slopes: the bounds we return come from the f64
//! back-substitution in [`super::engine`] with the slopes clamped to the sound range.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

use super::engine::Propagation;
use super::ops::{Relaxation, RowSlopes};
use super::{AlphaOptions, BoundsError};

/// One layer of the back-substitution graph.
enum Node {
    /// `y = W x + b`: `weight` `[out, in]`, `bias` `[out, 1]`.
    Affine { weight: Tensor, bias: Tensor },
    /// Reshape only.
    Identity,
    /// Element-wise lines, each `[1, n]`; `fixed_slope` is zero where `mask` is one
    /// (optimised neurons take `alpha * mask` instead).
    Elementwise {
        fixed_slope: Tensor,
        mask: Tensor,
        lower_intercept: Tensor,
        upper_slope: Tensor,
        upper_intercept: Tensor,
        alpha: Option<(Var, usize)>,
    },
    /// `lower [out, in]` one-hot rows, `upper [out, in]` (exact rows), `upper_const [out, 1]`.
    MaxPool {
        lower: Tensor,
        upper: Tensor,
        upper_const: Tensor,
    },
}

fn optimiser_error(e: candle_core::Error) -> BoundsError {
    BoundsError::Optimiser(e.to_string())
}

fn row_tensor(v: &[f64], dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(v, (1, v.len()), dev)
}

/// Build the graph; `alpha` variables start at CROWN's slopes, `rows` per layer.
fn build_nodes(
    prop: &Propagation,
    rows: usize,
    dev: &Device,
) -> candle_core::Result<(Vec<Node>, Vec<Var>)> {
    let mut nodes = Vec::with_capacity(prop.ops.len());
    let mut vars = Vec::new();
    for (op, relaxation) in prop.ops.iter().zip(&prop.relaxations) {
        let node = match (op.affine(), relaxation) {
            (Some(map), _) => Node::Affine {
                weight: Tensor::from_slice(&map.matrix, (map.out_dim, map.in_dim), dev)?,
                bias: Tensor::from_slice(&map.bias, (map.out_dim, 1), dev)?,
            },
            (None, Some(Relaxation::Elementwise(r))) => {
                let n = r.lower_slope.len();
                let mask: Vec<f64> = r
                    .optimisable
                    .iter()
                    .map(|&o| f64::from(u8::from(o)))
                    .collect();
                let fixed: Vec<f64> = r
                    .lower_slope
                    .iter()
                    .zip(&r.optimisable)
                    .map(|(&s, &o)| if o { 0.0 } else { s })
                    .collect();
                let alpha = if r.optimisable.iter().any(|&o| o) {
                    let init: Vec<f64> = (0..rows)
                        .flat_map(|_| r.lower_slope.iter().copied())
                        .collect();
                    let var = Var::from_tensor(&Tensor::from_vec(init, (rows, n), dev)?)?;
                    vars.push(var.clone());
                    Some((var, vars.len() - 1))
                } else {
                    None
                };
                Node::Elementwise {
                    fixed_slope: row_tensor(&fixed, dev)?,
                    mask: row_tensor(&mask, dev)?,
                    lower_intercept: row_tensor(&r.lower_intercept, dev)?,
                    upper_slope: row_tensor(&r.upper_slope, dev)?,
                    upper_intercept: row_tensor(&r.upper_intercept, dev)?,
                    alpha,
                }
            }
            (None, Some(Relaxation::MaxPool(r))) => {
                let (out, inp) = (r.lower_index.len(), op.input_dim());
                let mut lower = vec![0.0; out * inp];
                let mut upper = vec![0.0; out * inp];
                let mut upper_const = vec![0.0; out];
                for o in 0..out {
                    lower[o * inp + r.lower_index[o]] = 1.0;
                    match r.upper[o] {
                        super::ops::PoolUpper::Exact(i) => upper[o * inp + i] = 1.0,
                        super::ops::PoolUpper::Constant(v) => upper_const[o] = v,
                    }
                }
                Node::MaxPool {
                    lower: Tensor::from_vec(lower, (out, inp), dev)?,
                    upper: Tensor::from_vec(upper, (out, inp), dev)?,
                    upper_const: Tensor::from_vec(upper_const, (out, 1), dev)?,
                }
            }
            (None, None) => Node::Identity,
        };
        nodes.push(node);
    }
    Ok((nodes, vars))
}

/// The bound of one side (`[rows]`) of `spec * f(x)` over the box, as a tensor.
fn bound(
    nodes: &[Node],
    spec: &Tensor,
    centre: &Tensor,
    radius: &Tensor,
    lower_side: bool,
) -> candle_core::Result<Tensor> {
    let mut a = spec.clone();
    let mut c = Tensor::zeros(spec.dim(0)?, DType::F64, spec.device())?;
    for node in nodes.iter().rev() {
        match node {
            Node::Identity => {}
            Node::Affine { weight, bias } => {
                c = (c + a.matmul(bias)?.squeeze(1)?)?;
                a = a.matmul(weight)?;
            }
            Node::Elementwise {
                fixed_slope,
                mask,
                lower_intercept,
                upper_slope,
                upper_intercept,
                alpha,
            } => {
                let pos = a.relu()?;
                let neg = (&a - &pos)?;
                let slope = match alpha {
                    Some((var, _)) => var
                        .as_tensor()
                        .broadcast_mul(mask)?
                        .broadcast_add(fixed_slope)?,
                    None => fixed_slope.clone(),
                };
                let (on_lower, on_upper) = if lower_side {
                    (&pos, &neg)
                } else {
                    (&neg, &pos)
                };
                let next =
                    (on_lower.broadcast_mul(&slope)? + on_upper.broadcast_mul(upper_slope)?)?;
                let constant = (on_lower.broadcast_mul(lower_intercept)?
                    + on_upper.broadcast_mul(upper_intercept)?)?
                .sum(1)?;
                c = (c + constant)?;
                a = next;
            }
            Node::MaxPool {
                lower,
                upper,
                upper_const,
            } => {
                let pos = a.relu()?;
                let neg = (&a - &pos)?;
                let (on_lower, on_upper) = if lower_side {
                    (&pos, &neg)
                } else {
                    (&neg, &pos)
                };
                c = (c + on_upper.matmul(upper_const)?.squeeze(1)?)?;
                a = (on_lower.matmul(lower)? + on_upper.matmul(upper)?)?;
            }
        }
    }
    let mid = a.matmul(centre)?.squeeze(1)?;
    let dev = a.abs()?.matmul(radius)?.squeeze(1)?;
    let sign = if lower_side { -1.0 } else { 1.0 };
    (mid + (dev * sign)? + c)?.contiguous()
}

/// Optimise one side; the best slopes per row of every alpha variable, or `None` when
/// the network has no optimisable neuron.
fn optimise_side(
    prop: &Propagation,
    spec: &[f64],
    rows: usize,
    lower_side: bool,
    options: &AlphaOptions,
) -> candle_core::Result<Option<Vec<Vec<f64>>>> {
    let dev = Device::Cpu;
    let (nodes, vars) = build_nodes(prop, rows, &dev)?;
    if vars.is_empty() {
        return Ok(None);
    }
    let input = &prop.bounds[0];
    let n_in = input.lower.len();
    let out_dim = spec.len() / rows.max(1);
    let spec_t = Tensor::from_slice(spec, (rows, out_dim), &dev)?;
    let centre: Vec<f64> = input
        .lower
        .iter()
        .zip(&input.upper)
        .map(|(l, u)| 0.5 * (u + l))
        .collect();
    let radius: Vec<f64> = input
        .lower
        .iter()
        .zip(&input.upper)
        .map(|(l, u)| 0.5 * (u - l))
        .collect();
    let centre = Tensor::from_vec(centre, (n_in, 1), &dev)?;
    let radius = Tensor::from_vec(radius, (n_in, 1), &dev)?;
    let ranges: Vec<(f64, f64)> = nodes
        .iter()
        .zip(&prop.relaxations)
        .filter_map(|(n, r)| match (n, r) {
            (Node::Elementwise { alpha: Some(_), .. }, Some(Relaxation::Elementwise(r))) => {
                Some(r.slope_range)
            }
            _ => None,
        })
        .collect();

    let mut best_alpha: Vec<Vec<f64>> = vars
        .iter()
        .map(|v| v.as_tensor().flatten_all()?.to_vec1::<f64>())
        .collect::<candle_core::Result<_>>()?;
    let mut best_value = vec![
        if lower_side {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        rows
    ];
    let params = ParamsAdamW {
        lr: options.learning_rate,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut adam = AdamW::new(vars.clone(), params)?;
    for iteration in 0..options.iterations.max(1) {
        let b = bound(&nodes, &spec_t, &centre, &radius, lower_side)?;
        let values = b.to_vec1::<f64>()?;
        let improved: Vec<usize> = (0..rows)
            .filter(|&r| {
                let v = values[r];
                v.is_finite()
                    && if lower_side {
                        v > best_value[r]
                    } else {
                        v < best_value[r]
                    }
            })
            .collect();
        if !improved.is_empty() {
            for (var, best) in vars.iter().zip(best_alpha.iter_mut()) {
                let current = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                let n = current.len() / rows;
                for &r in &improved {
                    best[r * n..(r + 1) * n].copy_from_slice(&current[r * n..(r + 1) * n]);
                }
            }
            for &r in &improved {
                best_value[r] = values[r];
            }
        }
        if iteration + 1 == options.iterations {
            break;
        }
        let loss = if lower_side {
            b.sum_all()?.neg()?
        } else {
            b.sum_all()?
        };
        adam.backward_step(&loss)?;
        for (var, &(lo, hi)) in vars.iter().zip(&ranges) {
            var.set(&var.as_tensor().clamp(lo, hi)?)?;
        }
        adam.set_learning_rate(adam.learning_rate() * options.lr_decay);
    }
    Ok(Some(best_alpha))
}

/// Optimised per-row slopes for every op of `prop` (empty [`RowSlopes`] for ops
/// without optimisable neurons).
pub(crate) fn optimise(
    prop: &Propagation,
    spec: &[f64],
    rows: usize,
    options: &AlphaOptions,
) -> Result<Vec<RowSlopes>, BoundsError> {
    let lower = optimise_side(prop, spec, rows, true, options).map_err(optimiser_error)?;
    let upper = optimise_side(prop, spec, rows, false, options).map_err(optimiser_error)?;
    let mut slopes = vec![RowSlopes::default(); prop.ops.len()];
    let mut var_index = 0;
    for (k, relaxation) in prop.relaxations.iter().enumerate() {
        if let Some(Relaxation::Elementwise(r)) = relaxation
            && r.optimisable.iter().any(|&o| o)
        {
            slopes[k].lower_rows = lower.as_ref().map(|l| l[var_index].clone());
            slopes[k].upper_rows = upper.as_ref().map(|u| u[var_index].clone());
            var_index += 1;
        }
    }
    Ok(slopes)
}
