//! alpha-CROWN as auto_LiRPA's `CROWN-Optimized` does it: the lower-line slopes of
//! unstable ReLU/LeakyReLU neurons are free parameters in their sound range, one set per
//! (ReLU layer, start node). A start node is the final spec or the input of a later
//! ReLU-like layer: the pre-activation bounds of every later ReLU-like layer are
//! recomputed by CROWN with their own slopes inside the same candle graph, so the upper
//! lines (which depend on those bounds) tighten as the slopes improve. The loss is the
//! sum of the final bounds; projected Adam (clamped to the slope range) with the learning
//! rate decayed per step; the best bound per row seen across iterations is kept.
//!
//! Lower and upper bounds are optimised separately (as the reference, which uses a fresh
//! module per side), batched in one graph: batch 0 bounds `C f(x)` from below, batch 1
//! bounds `-C f(x)` from below, which is `-(upper bound of C f(x))`. Intermediate bounds
//! use the same trick (`[S; -S]` for the unstable neurons `S` of a layer).
//!
//! Beyond the reference: every recomputed intermediate bound is intersected with the
//! best bounds seen so far (initially our CROWN/IBP bounds), with a straight-through
//! gradient (the value is the intersection, the gradient that of the CROWN bound: a plain
//! max/min would have zero gradient where IBP is tighter and freeze those slopes), and
//! neurons the best bounds show to be stable get their exact lower slope.
//!
//! Soundness does not depend on the optimiser: for every slope in the range, every
//! intermediate bound computed in the graph is a CROWN bound (intersected with bounds
//! that are themselves sound), every relaxation built from sound bounds is sound, so
//! every iteration's final linear bound is sound. Which neurons get free slopes is
//! decided by the CROWN/IBP bounds (auto_LiRPA's reference bounds); such a neuron keeps a
//! sound line for whatever tighter interval the graph finds. Non-piecewise-linear layers
//! (sigmoid, tanh, GELU) and max pooling keep their fixed relaxations, sound because they
//! were built over bounds that contain the tighter ones.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

use super::engine::Propagation;
use super::ops::{PoolUpper, Relaxation};
use super::{AlphaOptions, BoundsError, BoxBounds};

/// The best linear bounds found (rows of the spec), their concrete values and the
/// tightest intermediate bounds seen. Starts as CROWN's.
#[derive(Clone, Debug)]
pub(crate) struct Optimised {
    /// `rows x cols` row-major.
    pub lower_a: Vec<f64>,
    pub lower_c: Vec<f64>,
    /// `rows x cols` row-major.
    pub upper_a: Vec<f64>,
    pub upper_c: Vec<f64>,
    /// Concretised `lower_a x + lower_c` over the box.
    pub lower: Vec<f64>,
    /// Concretised `upper_a x + upper_c` over the box.
    pub upper: Vec<f64>,
    /// Bounds of the input of every op and of the output (as [`Propagation::bounds`]),
    /// tightened where the graph recomputed them.
    pub layer_bounds: Vec<BoxBounds>,
}

/// Sides of the batch: lower bounds of `C f` and of `-C f`.
const SIDES: usize = 2;
/// auto_LiRPA's clamp of the ReLU upper bound away from the lower one.
const MIN_WIDTH: f64 = 1e-8;
/// Cap on the slopes of intermediate start nodes (f64 elements; Adam keeps two more
/// copies): wide convolutional layers would otherwise need `rows x n` slopes per layer
/// pair. Start nodes beyond it keep their fixed bounds (sound, less tight).
const MAX_INTERMEDIATE_ALPHAS: usize = 1 << 22;

/// A ReLU-like layer with unstable neurons (by the fixed bounds).
struct Optimisable {
    /// LeakyReLU negative slope (0 for ReLU) = lower end of the slope range.
    negative_slope: f64,
    slope_range: (f64, f64),
    /// `[1, 1, n]`: 1 on unstable neurons.
    mask: Tensor,
    /// `[1, 1, n]`: `1 - mask`.
    keep: Tensor,
    /// Fixed lines with the unstable entries zeroed, `[1, 1, n]`.
    fixed_lower_slope: Tensor,
    fixed_lower_intercept: Tensor,
    fixed_upper_slope: Tensor,
    fixed_upper_intercept: Tensor,
    /// The fixed upper lines of every neuron, for a layer the graph does not recompute.
    upper_slope_all: Tensor,
    upper_intercept_all: Tensor,
    /// Number of neurons.
    n: usize,
    /// Initial slope of every neuron `[1, 1, n]` (CROWN's adaptive choice).
    init_slope: Tensor,
    /// Indices of the unstable neurons, and their `[m, n]` selection matrix (empty when
    /// the layer is not recomputed).
    unstable: Vec<usize>,
    select: Tensor,
    /// The graph recomputes this layer's input bounds (some earlier layer has alphas).
    recompute: bool,
}

/// One op of the back-substitution graph.
enum Node {
    /// `y = W x + b`: `weight` `[out, in]`, `bias` `[out, 1]`.
    Affine { weight: Tensor, bias: Tensor },
    /// Reshape only.
    Identity,
    /// Element-wise fixed lines, each `[1, 1, n]`.
    Fixed {
        lower_slope: Tensor,
        lower_intercept: Tensor,
        upper_slope: Tensor,
        upper_intercept: Tensor,
    },
    /// ReLU-like layer with optimisable slopes.
    Relu(Box<Optimisable>),
    /// `lower [out, in]` one-hot rows, `upper [out, in]` (exact rows), `upper_const [out, 1]`.
    MaxPool {
        lower: Tensor,
        upper: Tensor,
        upper_const: Tensor,
    },
}

/// Lines of an optimisable layer for the current iteration: upper lines `[SIDES, 1, n]`
/// from the in-graph bounds, and the lower slope `alpha * free + settled` (`[1, 1, n]`
/// each): neurons the best bounds so far show to be stable get their exact slope.
struct LayerLines {
    slope: Tensor,
    intercept: Tensor,
    free: Tensor,
    settled: Tensor,
}

fn optimiser_error(e: candle_core::Error) -> BoundsError {
    BoundsError::Optimiser(e.to_string())
}

fn lines(v: &[f64], dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(v, (1, 1, v.len()), dev)
}

fn build_nodes(prop: &Propagation, dev: &Device, budget: usize) -> candle_core::Result<Vec<Node>> {
    let mut nodes = Vec::with_capacity(prop.ops.len());
    // Neurons of the optimisable layers so far (slopes per start-node row), and the
    // intermediate slopes allotted.
    let (mut neurons_before, mut allotted) = (0usize, 0usize);
    for (op, relaxation) in prop.ops.iter().zip(&prop.relaxations) {
        let node = match (op.affine(), relaxation) {
            (Some(map), _) => Node::Affine {
                weight: Tensor::from_slice(&map.matrix, (map.out_dim, map.in_dim), dev)?,
                bias: Tensor::from_slice(&map.bias, (map.out_dim, 1), dev)?,
            },
            (None, Some(Relaxation::Elementwise(r))) if r.optimisable.iter().any(|&o| o) => {
                let n = r.lower_slope.len();
                let zero_unstable = |v: &[f64]| -> Vec<f64> {
                    v.iter()
                        .zip(&r.optimisable)
                        .map(|(&x, &o)| if o { 0.0 } else { x })
                        .collect()
                };
                let mask: Vec<f64> = r
                    .optimisable
                    .iter()
                    .map(|&o| f64::from(u8::from(o)))
                    .collect();
                let keep: Vec<f64> = mask.iter().map(|m| 1.0 - m).collect();
                let unstable: Vec<usize> = (0..n).filter(|&j| r.optimisable[j]).collect();
                // Slopes and spec rows this start node needs.
                let need = SIDES * 2 * unstable.len() * (neurons_before + n);
                let recompute = neurons_before > 0 && allotted + need <= budget;
                if recompute {
                    allotted += need;
                }
                let m = if recompute { unstable.len() } else { 0 };
                let mut select = vec![0.0; m * n];
                for (i, &j) in unstable.iter().take(m).enumerate() {
                    select[i * n + j] = 1.0;
                }
                let node = Optimisable {
                    negative_slope: r.slope_range.0,
                    slope_range: r.slope_range,
                    mask: lines(&mask, dev)?,
                    keep: lines(&keep, dev)?,
                    fixed_lower_slope: lines(&zero_unstable(&r.lower_slope), dev)?,
                    fixed_lower_intercept: lines(&zero_unstable(&r.lower_intercept), dev)?,
                    fixed_upper_slope: lines(&zero_unstable(&r.upper_slope), dev)?,
                    fixed_upper_intercept: lines(&zero_unstable(&r.upper_intercept), dev)?,
                    upper_slope_all: lines(&r.upper_slope, dev)?,
                    upper_intercept_all: lines(&r.upper_intercept, dev)?,
                    n,
                    init_slope: lines(&r.lower_slope, dev)?,
                    select: Tensor::from_vec(select, (m, n), dev)?,
                    unstable,
                    recompute,
                };
                neurons_before += n;
                Node::Relu(Box::new(node))
            }
            (None, Some(Relaxation::Elementwise(r))) => Node::Fixed {
                lower_slope: lines(&r.lower_slope, dev)?,
                lower_intercept: lines(&r.lower_intercept, dev)?,
                upper_slope: lines(&r.upper_slope, dev)?,
                upper_intercept: lines(&r.upper_intercept, dev)?,
            },
            (None, Some(Relaxation::MaxPool(r))) => {
                let (out, inp) = (r.lower_index.len(), op.input_dim());
                let mut lower = vec![0.0; out * inp];
                let mut upper = vec![0.0; out * inp];
                let mut upper_const = vec![0.0; out];
                for o in 0..out {
                    lower[o * inp + r.lower_index[o]] = 1.0;
                    match r.upper[o] {
                        PoolUpper::Exact(i) => upper[o * inp + i] = 1.0,
                        PoolUpper::Constant(v) => upper_const[o] = v,
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
    Ok(nodes)
}

/// The optimised slopes: `alphas[start][j]` is `[SIDES, rows(start), n_j]` for every
/// optimisable layer `j` before the start node (`start == ops.len()` is the final spec).
struct Alphas {
    /// `(start, j, var)`.
    vars: Vec<(usize, usize, Var)>,
}

impl Alphas {
    fn get(&self, start: usize, j: usize) -> Option<&Var> {
        self.vars
            .iter()
            .find(|(s, l, _)| *s == start && *l == j)
            .map(|(_, _, v)| v)
    }
}

/// Rows of the spec each start node bounds (per side).
fn start_rows(nodes: &[Node], final_rows: usize) -> Vec<(usize, usize)> {
    let mut starts: Vec<(usize, usize)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(k, n)| match n {
            Node::Relu(o) if o.recompute => Some((k, 2 * o.unstable.len())),
            _ => None,
        })
        .collect();
    starts.push((nodes.len(), final_rows));
    starts
}

fn make_alphas(nodes: &[Node], final_rows: usize) -> candle_core::Result<Alphas> {
    let mut vars = Vec::new();
    for (start, rows) in start_rows(nodes, final_rows) {
        for (j, node) in nodes.iter().enumerate().take(start) {
            if let Node::Relu(o) = node {
                let n = o.n;
                let init = o
                    .init_slope
                    .broadcast_as((SIDES, rows, n))?
                    .contiguous()?
                    .to_dtype(DType::F64)?;
                vars.push((start, j, Var::from_tensor(&init)?));
            }
        }
    }
    Ok(Alphas { vars })
}

/// Lower bounds of `spec_b . g(x)` for each side `b`, where `g` is the output of
/// `ops[upto - 1]`: `spec` is `[SIDES, rows, n]`. Returns `(a [SIDES, rows, n_in],
/// c [SIDES, rows])`.
fn back_substitute(
    nodes: &[Node],
    layer_lines: &[Option<LayerLines>],
    alphas: &Alphas,
    start: usize,
    spec: Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (sides, rows, _) = spec.dims3()?;
    let mut a = spec;
    let mut c = Tensor::zeros((sides, rows), DType::F64, a.device())?;
    for (j, node) in nodes.iter().enumerate().take(start).rev() {
        match node {
            Node::Identity => {}
            Node::Affine { weight, bias } => {
                let (out, inp) = weight.dims2()?;
                let flat = a.reshape((sides * rows, out))?;
                c = (c + flat.matmul(bias)?.reshape((sides, rows))?)?;
                a = flat.matmul(weight)?.reshape((sides, rows, inp))?;
            }
            Node::Fixed {
                lower_slope,
                lower_intercept,
                upper_slope,
                upper_intercept,
            } => {
                let pos = a.relu()?;
                let neg = (&a - &pos)?;
                let constant = (pos.broadcast_mul(lower_intercept)?
                    + neg.broadcast_mul(upper_intercept)?)?
                .sum(2)?;
                c = (c + constant)?;
                a = (pos.broadcast_mul(lower_slope)? + neg.broadcast_mul(upper_slope)?)?;
            }
            Node::Relu(o) => {
                let pos = a.relu()?;
                let neg = (&a - &pos)?;
                let upper = layer_lines[j].as_ref();
                let (us, ui, free, settled) = match upper {
                    Some(u) => (&u.slope, &u.intercept, &u.free, &u.settled),
                    None => (
                        &o.upper_slope_all,
                        &o.upper_intercept_all,
                        &o.mask,
                        &o.fixed_lower_slope,
                    ),
                };
                let alpha = alphas.get(start, j).ok_or_else(|| {
                    candle_core::Error::Msg(format!("no slopes for layer {j} from {start}"))
                })?;
                let slope = alpha
                    .as_tensor()
                    .broadcast_mul(free)?
                    .broadcast_add(settled)?;
                // Unstable neurons' lower lines pass through the origin.
                let constant = (pos.broadcast_mul(&o.fixed_lower_intercept)?
                    + neg.broadcast_mul(ui)?)?
                .sum(2)?;
                c = (c + constant)?;
                a = ((pos * slope)? + neg.broadcast_mul(us)?)?;
            }
            Node::MaxPool {
                lower,
                upper,
                upper_const,
            } => {
                let (out, inp) = lower.dims2()?;
                let pos = a.relu()?.reshape((sides * rows, out))?;
                let neg = (a.reshape((sides * rows, out))? - &pos)?;
                c = (c + neg.matmul(upper_const)?.reshape((sides, rows))?)?;
                a = (pos.matmul(lower)? + neg.matmul(upper)?)?.reshape((sides, rows, inp))?;
            }
        }
    }
    Ok((a, c))
}

/// `min_x a x + c` over the box (centre/radius form): `[SIDES, rows]`.
fn concretise(
    a: &Tensor,
    c: &Tensor,
    centre: &Tensor,
    radius: &Tensor,
) -> candle_core::Result<Tensor> {
    let (sides, rows, n) = a.dims3()?;
    let flat = a.reshape((sides * rows, n))?;
    let mid = flat.matmul(centre)?;
    let dev = flat.abs()?.matmul(radius)?;
    (mid - dev)?.reshape((sides, rows))? + c
}

/// The in-graph bounds of an optimisable layer's input and its upper lines.
fn relu_upper(
    o: &Optimisable,
    (ref_l, ref_u): (&Tensor, &Tensor),
    lower_new: &Tensor,
    upper_new: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, LayerLines)> {
    // Scatter the unstable neurons' new bounds and intersect with the fixed bounds.
    let keep = o.keep.squeeze(0)?;
    let mask = o.mask.squeeze(0)?;
    // Intersect with the reference bounds for the value (sound: both are), but let the
    // gradient through as if unclipped (straight-through): where the reference is
    // tighter, a plain max/min has zero gradient and the start node's slopes would never
    // move, although optimised CROWN may later beat the reference.
    let lo = lower_new.matmul(&o.select)?;
    let hi = upper_new.matmul(&o.select)?;
    let lo_clipped = lo.broadcast_maximum(ref_l)?;
    let hi_clipped = hi.broadcast_minimum(ref_u)?;
    let lo = (&lo + (lo_clipped - &lo)?.detach())?;
    let hi = (&hi + (hi_clipped - &hi)?.detach())?;
    let l = lo
        .broadcast_mul(&mask)?
        .broadcast_add(&ref_l.broadcast_mul(&keep)?)?;
    let u = hi
        .broadcast_mul(&mask)?
        .broadcast_add(&ref_u.broadcast_mul(&keep)?)?;
    // auto_LiRPA's upper line (chord of the activation over [min(l,0), max(u,0)]).
    let lr = l.minimum(0.0)?;
    let ur = u.maximum(0.0)?.maximum(&(&lr + MIN_WIDTH)?)?;
    let a = o.negative_slope;
    let slope = ((&ur - (&lr * a)?)? / (&ur - &lr)?)?;
    let intercept = (&lr * a)?.sub(&(&slope * &lr)?)?;
    // Guard both end points against rounding: raise the intercept if the line dips
    // below the activation there (only ever moves the line up).
    let dip_left = ((&lr * a)? - (&slope * &lr)?.add(&intercept)?)?.relu()?;
    let intercept = (intercept + dip_left)?;
    let dip_right = (&ur - (&slope * &ur)?.add(&intercept)?)?.relu()?;
    let intercept = (intercept + dip_right)?;
    let sides = l.dim(0)?;
    let n = l.dim(1)?;
    let slope = (slope.broadcast_mul(&mask)?.reshape((sides, 1, n))?)
        .broadcast_add(&o.fixed_upper_slope)?;
    let intercept = (intercept.broadcast_mul(&mask)?.reshape((sides, 1, n))?)
        .broadcast_add(&o.fixed_upper_intercept)?;
    // Neurons the reference bounds already decide: exact lower slope (1 or the negative
    // slope), no free parameter.
    let active = ref_l.ge(0.0)?.to_dtype(DType::F64)?.broadcast_mul(&mask)?;
    let inactive = ref_u
        .le(0.0)?
        .to_dtype(DType::F64)?
        .broadcast_mul(&mask)?
        .broadcast_mul(&(&mask - &active)?)?;
    let free = ((&mask - &active)? - &inactive)?.reshape((1, 1, n))?;
    let settled = (active + (inactive * a)?)?
        .reshape((1, 1, n))?
        .broadcast_add(&o.fixed_lower_slope)?;
    Ok((
        l,
        u,
        LayerLines {
            slope,
            intercept,
            free,
            settled,
        },
    ))
}

/// One forward pass: the final bounds `(a, c, values)` and the in-graph intermediate
/// bounds `(op index, l [SIDES, n], u [SIDES, n])`.
#[allow(clippy::type_complexity)]
fn evaluate(
    nodes: &[Node],
    alphas: &Alphas,
    reference: &[Option<(Tensor, Tensor)>],
    final_spec: &Tensor,
    centre: &Tensor,
    radius: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor, Vec<(usize, Tensor, Tensor)>)> {
    let mut layer_lines: Vec<Option<LayerLines>> = Vec::with_capacity(nodes.len());
    let mut intermediate = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let lines = match node {
            Node::Relu(o) if o.recompute => {
                let m = o.unstable.len();
                // [S; -S] over the layer's input, for both sides.
                let spec = Tensor::cat(&[&o.select, &o.select.neg()?], 0)?
                    .unsqueeze(0)?
                    .broadcast_as((SIDES, 2 * m, o.select.dim(1)?))?
                    .contiguous()?;
                let (a, c) = back_substitute(nodes, &layer_lines, alphas, k, spec)?;
                let values = concretise(&a, &c, centre, radius)?;
                let lower_new = values.narrow(1, 0, m)?;
                let upper_new = values.narrow(1, m, m)?.neg()?;
                let (l, u) = reference[k].as_ref().ok_or_else(|| {
                    candle_core::Error::Msg(format!("no reference bounds for layer {k}"))
                })?;
                let (l, u, lines) = relu_upper(o, (l, u), &lower_new, &upper_new)?;
                intermediate.push((k, l, u));
                Some(lines)
            }
            _ => None,
        };
        layer_lines.push(lines);
    }
    let (a, c) = back_substitute(nodes, &layer_lines, alphas, nodes.len(), final_spec.clone())?;
    let values = concretise(&a, &c, centre, radius)?;
    Ok((a, c, values, intermediate))
}

/// Run alpha-CROWN over `prop` for `spec` (`rows x n_out`), starting from `start`
/// (CROWN's bounds); returns `start` unchanged when no neuron has a free slope.
pub(crate) fn optimise(
    prop: &Propagation,
    spec: &[f64],
    rows: usize,
    options: &AlphaOptions,
    start: Optimised,
) -> Result<Optimised, BoundsError> {
    run(prop, spec, rows, options, start, MAX_INTERMEDIATE_ALPHAS).map_err(optimiser_error)
}

fn run(
    prop: &Propagation,
    spec: &[f64],
    rows: usize,
    options: &AlphaOptions,
    mut best: Optimised,
    budget: usize,
) -> candle_core::Result<Optimised> {
    let dev = Device::Cpu;
    let nodes = build_nodes(prop, &dev, budget)?;
    if !nodes.iter().any(|n| matches!(n, Node::Relu(_))) || rows == 0 {
        return Ok(best);
    }
    let alphas = make_alphas(&nodes, rows)?;
    let input = &prop.bounds[0];
    let n_in = input.lower.len();
    let out_dim = spec.len() / rows;
    let spec_t = Tensor::from_slice(spec, (1, rows, out_dim), &dev)?;
    let final_spec = Tensor::cat(&[&spec_t, &spec_t.neg()?], 0)?;
    let (centre, radius) = input.centre_radius();
    let centre = Tensor::from_vec(centre, (n_in, 1), &dev)?;
    let radius = Tensor::from_vec(radius, (n_in, 1), &dev)?;

    let vars: Vec<Var> = alphas.vars.iter().map(|(_, _, v)| v.clone()).collect();
    let ranges: Vec<(f64, f64)> = alphas
        .vars
        .iter()
        .map(|(_, j, _)| match &nodes[*j] {
            Node::Relu(o) => o.slope_range,
            _ => (0.0, 1.0),
        })
        .collect();
    let params = ParamsAdamW {
        lr: options.learning_rate,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    let mut adam = AdamW::new(vars.clone(), params)?;
    let iterations = options.iterations.max(1);
    for iteration in 0..iterations {
        // Each recomputed layer is intersected with the best bounds seen so far.
        let reference = nodes
            .iter()
            .enumerate()
            .map(|(k, node)| match node {
                Node::Relu(o) if o.recompute => {
                    let b = &best.layer_bounds[k];
                    let n = b.lower.len();
                    Ok(Some((
                        Tensor::from_slice(&b.lower, (1, n), &dev)?,
                        Tensor::from_slice(&b.upper, (1, n), &dev)?,
                    )))
                }
                _ => Ok(None),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (a, c, values, intermediate) =
            evaluate(&nodes, &alphas, &reference, &final_spec, &centre, &radius)?;
        keep_best(&mut best, &a, &c, &values, rows, n_in)?;
        for (k, l, u) in &intermediate {
            tighten(&mut best.layer_bounds[*k], l, u)?;
        }
        if iteration + 1 == iterations {
            break;
        }
        // Maximise the sum of lower bounds of both sides.
        let loss = values.sum_all()?.neg()?;
        adam.backward_step(&loss)?;
        for (var, &(lo, hi)) in vars.iter().zip(&ranges) {
            var.set(&var.as_tensor().clamp(lo, hi)?)?;
        }
        adam.set_learning_rate(adam.learning_rate() * options.lr_decay);
    }
    Ok(best)
}

/// Keep, per row and side, the linear bound with the best concrete value.
fn keep_best(
    best: &mut Optimised,
    a: &Tensor,
    c: &Tensor,
    values: &Tensor,
    rows: usize,
    n_in: usize,
) -> candle_core::Result<()> {
    let values = values.to_vec2::<f64>()?;
    let improved_lower: Vec<usize> = (0..rows)
        .filter(|&r| values[0][r].is_finite() && values[0][r] > best.lower[r])
        .collect();
    // Side 1 bounds -C f from below: its negation is an upper bound of C f.
    let improved_upper: Vec<usize> = (0..rows)
        .filter(|&r| values[1][r].is_finite() && -values[1][r] < best.upper[r])
        .collect();
    if improved_lower.is_empty() && improved_upper.is_empty() {
        return Ok(());
    }
    let a = a.to_vec3::<f64>()?;
    let c = c.to_vec2::<f64>()?;
    for r in improved_lower {
        best.lower[r] = values[0][r];
        best.lower_c[r] = c[0][r];
        best.lower_a[r * n_in..(r + 1) * n_in].copy_from_slice(&a[0][r]);
    }
    for r in improved_upper {
        best.upper[r] = -values[1][r];
        best.upper_c[r] = -c[1][r];
        for (dst, src) in best.upper_a[r * n_in..(r + 1) * n_in]
            .iter_mut()
            .zip(&a[1][r])
        {
            *dst = -src;
        }
    }
    Ok(())
}

/// Intersect the recorded bounds of an op's input with both sides' in-graph bounds.
fn tighten(bounds: &mut BoxBounds, l: &Tensor, u: &Tensor) -> candle_core::Result<()> {
    for side in l.to_vec2::<f64>()? {
        for (b, v) in bounds.lower.iter_mut().zip(side) {
            if v.is_finite() {
                *b = b.max(v);
            }
        }
    }
    for side in u.to_vec2::<f64>()? {
        for (b, v) in bounds.upper.iter_mut().zip(side) {
            if v.is_finite() {
                *b = b.min(v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::super::{BoxBounds, Method, linear_bounds, output_bounds};
    use crate::model::{Dense, Layer, Network};

    /// A deep MLP (so several start nodes are recomputed in the graph) of ReLU or
    /// LeakyReLU layers.
    fn deep_mlp(seed: u64, leaky: bool) -> Network {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dims = [5, 16, 16, 16, 16, 16, 4];
        let mut layers = Vec::new();
        for (k, w) in dims.windows(2).enumerate() {
            let scale = 2.0 / (w[0] as f64).sqrt();
            let weight = (0..w[0] * w[1])
                .map(|_| rng.random_range(-scale..scale))
                .collect();
            let bias = (0..w[1]).map(|_| rng.random_range(-0.3..0.3)).collect();
            layers.push(Layer::Dense(
                Dense::new(w[0], w[1], weight, bias).expect("sizes"),
            ));
            if k + 2 < dims.len() {
                layers.push(if leaky && k % 2 == 1 {
                    Layer::LeakyRelu { alpha: 0.05 }
                } else {
                    Layer::Relu
                });
            }
        }
        Network::new(vec![5], layers).expect("valid mlp")
    }

    fn sample(rng: &mut ChaCha8Rng, b: &BoxBounds, vertex: bool) -> Vec<f64> {
        b.lower
            .iter()
            .zip(&b.upper)
            .map(|(&l, &u)| {
                if vertex {
                    if rng.random_bool(0.5) { l } else { u }
                } else {
                    l + (u - l) * rng.random::<f64>()
                }
            })
            .collect()
    }

    /// Outputs, linear bounds and the tightened intermediate bounds all contain sampled
    /// values, and alpha-CROWN is never looser than CROWN and clearly tighter overall.
    #[test]
    fn alpha_crown_is_sound_and_tighter_than_crown_on_deep_mlps() {
        let (mut alpha_width, mut crown_width) = (0.0, 0.0);
        for seed in 0..6u64 {
            let net = deep_mlp(seed, seed % 2 == 1);
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
            let centre: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
            let input = BoxBounds::ball(&centre, 0.6);
            let rows = 3;
            let spec: Vec<f64> = (0..rows * 4).map(|_| rng.random_range(-1.0..1.0)).collect();
            let layers = net.layers.len();
            let alpha = linear_bounds(
                &net,
                0,
                layers,
                &input,
                Some(&spec),
                rows,
                Method::AlphaCrown,
            )
            .expect("alpha-CROWN");
            let crown = linear_bounds(&net, 0, layers, &input, Some(&spec), rows, Method::Crown)
                .expect("CROWN");
            for r in 0..rows {
                assert!(alpha.lower[r] >= crown.lower[r] && alpha.upper[r] <= crown.upper[r]);
                alpha_width += alpha.upper[r] - alpha.lower[r];
                crown_width += crown.upper[r] - crown.lower[r];
            }
            for i in 0..3000 {
                let x = sample(&mut rng, &input, i % 4 == 0);
                let y = net.forward(&x);
                for r in 0..rows {
                    let v: f64 = spec[r * 4..(r + 1) * 4]
                        .iter()
                        .zip(&y)
                        .map(|(c, y)| c * y)
                        .sum();
                    let tol = 1e-9 * (1.0 + v.abs());
                    let (lo, hi) = (alpha.lower_at(r, &x), alpha.upper_at(r, &x));
                    assert!(
                        alpha.lower[r] <= v + tol && v <= alpha.upper[r] + tol,
                        "seed {seed} row {r}: {v} outside [{}, {}]",
                        alpha.lower[r],
                        alpha.upper[r]
                    );
                    assert!(
                        lo <= v + tol && v <= hi + tol,
                        "seed {seed} row {r}: {v} outside linear [{lo}, {hi}]"
                    );
                }
                for k in 0..=layers {
                    let t = net.forward_range(&x, 0, k);
                    assert!(
                        alpha.layer_bounds[k].contains(&t, 1e-9),
                        "seed {seed}: tensor {k} outside its tightened bounds"
                    );
                }
            }
        }
        assert!(
            alpha_width < 0.95 * crown_width,
            "alpha-CROWN should tighten CROWN here: {alpha_width} vs {crown_width}"
        );
    }

    /// With the intermediate-slope budget exhausted after the first start node, the
    /// remaining layers keep their fixed bounds: still sound, still no looser than CROWN.
    #[test]
    fn a_small_slope_budget_stays_sound() {
        let net = deep_mlp(3, true);
        let input = BoxBounds::ball(&[0.2, -0.1, 0.4, 0.0, -0.3], 0.6);
        let layers = net.layers.len();
        let shapes = net.shapes().expect("shapes");
        let ops = super::super::ops::build(&net.layers, &shapes, 0).expect("ops");
        let prop = super::super::engine::Propagation::run(
            ops,
            &input,
            super::super::engine::Intermediate::CrownIntersect,
            0,
        )
        .expect("propagation");
        let spec: Vec<f64> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        let mut state = prop.linear(&spec, 4, None);
        let crown = state.concretise(&input);
        let start = super::Optimised {
            upper_a: state.upper_matrix().to_vec(),
            lower_a: state.lower_a.clone(),
            lower_c: state.lower_c.clone(),
            upper_c: state.upper_c.clone(),
            lower: crown.lower.clone(),
            upper: crown.upper.clone(),
            layer_bounds: prop.bounds.clone(),
        };
        let dev = candle_core::Device::Cpu;
        let budget = 2 * 2 * 16 * 32;
        let nodes = super::build_nodes(&prop, &dev, budget).expect("nodes");
        let recomputed = nodes
            .iter()
            .filter(|n| matches!(n, super::Node::Relu(o) if o.recompute))
            .count();
        assert!(recomputed <= 1, "the budget admits at most one start node");
        let best =
            super::run(&prop, &spec, 4, &Default::default(), start, budget).expect("alpha-CROWN");
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for r in 0..4 {
            assert!(best.lower[r] >= crown.lower[r] && best.upper[r] <= crown.upper[r]);
        }
        for i in 0..2000 {
            let x = sample(&mut rng, &input, i % 4 == 0);
            let y = net.forward(&x);
            for (r, &v) in y.iter().enumerate() {
                let tol = 1e-9 * (1.0 + v.abs());
                assert!(best.lower[r] <= v + tol && v <= best.upper[r] + tol);
            }
            for k in 0..=layers {
                let t = net.forward_range(&x, 0, k);
                assert!(best.layer_bounds[k].contains(&t, 1e-9));
            }
        }
    }

    /// On a real ACAS Xu network and property box: sampled outputs inside the bounds,
    /// linear bounds hold pointwise, and the bounds are far tighter than CROWN's.
    #[test]
    fn alpha_crown_is_sound_on_acasxu() {
        let path = crate::require_data!(&crate::testing::acasxu_onnx(1, 1));
        let net = crate::import::load(&path).expect("ACAS Xu N1,1");
        // Property 1's input box (normalised), as in the reference file.
        let input = BoxBounds::new(
            vec![0.6, -0.5, -0.5, 0.45, -0.5],
            vec![0.679857769, 0.5, 0.5, 0.5, -0.45],
        );
        let alpha = output_bounds(&net, &input, Method::AlphaCrown).expect("alpha-CROWN");
        let crown = output_bounds(&net, &input, Method::Crown).expect("CROWN");
        assert!(
            alpha.mean_width() < 0.5 * crown.mean_width(),
            "{alpha:?} vs {crown:?}"
        );
        let lb = linear_bounds(
            &net,
            0,
            net.layers.len(),
            &input,
            None,
            0,
            Method::AlphaCrown,
        )
        .expect("alpha-CROWN linear bounds");
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for i in 0..5000 {
            let x = sample(&mut rng, &input, i % 4 == 0);
            let y = net.forward(&x);
            assert!(
                alpha.contains(&y, 1e-9),
                "f({x:?}) = {y:?} outside {alpha:?}"
            );
            for (r, &v) in y.iter().enumerate() {
                let tol = 1e-9 * (1.0 + v.abs());
                assert!(lb.lower_at(r, &x) <= v + tol && v <= lb.upper_at(r, &x) + tol);
            }
        }
    }
}
