//! One bound operation per layer kind, in the style of auto_LiRPA's `Bound*` modules:
//! each knows its concrete `forward`, its `interval` (IBP) transfer, its linear
//! relaxation (nonlinear layers only) and its `backward` step of CROWN
//! back-substitution, which rewrites linear bounds on the layer's output as linear
//! bounds on its input.

use std::fmt;

use super::linear::LinearState;
use super::relax::{self, ScalarRelaxation};
use super::{BoundsError, BoxBounds};
use crate::model::{Conv2d, Dense, Layer, Pool2d};

/// Per-neuron lines of an element-wise activation.
#[derive(Clone, Debug)]
pub(crate) struct ElementwiseRelaxation {
    pub lower_slope: Vec<f64>,
    pub lower_intercept: Vec<f64>,
    pub upper_slope: Vec<f64>,
    pub upper_intercept: Vec<f64>,
    /// Neurons whose lower line may be any `slope * x` with slope in `slope_range`
    /// (unstable ReLU/LeakyReLU neurons): alpha-CROWN chooses these slopes.
    pub optimisable: Vec<bool>,
    /// The sound slope range of optimisable neurons (`[0, 1]` for ReLU).
    pub slope_range: (f64, f64),
}

/// The upper line of one max-pool output.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PoolUpper {
    /// One input dominates the window (its lower bound is above every other upper
    /// bound): the output equals that input.
    Exact(usize),
    /// Otherwise the output is at most the largest upper bound in the window.
    Constant(f64),
}

/// Max-pool relaxation: `y >= x[lower_index]` (the input with the largest lower bound)
/// and the upper line above.
#[derive(Clone, Debug)]
pub(crate) struct MaxPoolRelaxation {
    pub lower_index: Vec<usize>,
    pub upper: Vec<PoolUpper>,
}

/// A nonlinear layer's relaxation over its (fixed) input bounds.
#[derive(Clone, Debug)]
pub(crate) enum Relaxation {
    Elementwise(ElementwiseRelaxation),
    MaxPool(MaxPoolRelaxation),
}

/// Per-row lower slopes (alpha-CROWN) of an element-wise layer, `rows x n` row-major,
/// for the rows of the lower bounds and of the upper bounds separately. Only the
/// optimisable neurons read them, clamped to the sound slope range.
#[derive(Clone, Debug, Default)]
pub(crate) struct RowSlopes {
    pub lower_rows: Option<Vec<f64>>,
    pub upper_rows: Option<Vec<f64>>,
}

/// An affine map `y = M x + b` with a dense `out x in` matrix (Dense, Conv2d and
/// AvgPool2d all reduce to it for back-substitution).
#[derive(Clone, Debug)]
pub(crate) struct AffineMap {
    pub out_dim: usize,
    pub in_dim: usize,
    pub matrix: Vec<f64>,
    abs_matrix: Vec<f64>,
    pub bias: Vec<f64>,
}

impl AffineMap {
    fn new(out_dim: usize, in_dim: usize, matrix: Vec<f64>, bias: Vec<f64>) -> Self {
        let abs_matrix = matrix.iter().map(|v| v.abs()).collect();
        Self {
            out_dim,
            in_dim,
            matrix,
            abs_matrix,
            bias,
        }
    }

    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut y = self.bias.clone();
        super::linear::gemv_add(self.out_dim, self.in_dim, &self.matrix, x, &mut y);
        y
    }

    /// IBP in the centre/radius form (as auto_LiRPA's `BoundLinear.interval_propagate`).
    fn interval(&self, input: &BoxBounds) -> BoxBounds {
        let (centre, radius) = input.centre_radius();
        let mid = self.apply(&centre);
        let mut dev = vec![0.0; self.out_dim];
        super::linear::gemv_add(
            self.out_dim,
            self.in_dim,
            &self.abs_matrix,
            &radius,
            &mut dev,
        );
        BoxBounds {
            lower: mid.iter().zip(&dev).map(|(m, d)| m - d).collect(),
            upper: mid.iter().zip(&dev).map(|(m, d)| m + d).collect(),
        }
    }
}

/// The operations of bound propagation (see the module docs). `kind`, `input_dim` and
/// `forward` serve tests and diagnostics.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) trait BoundOp: fmt::Debug + Send + Sync {
    /// Layer kind, for messages.
    fn kind(&self) -> &'static str;
    /// Number of input elements.
    fn input_dim(&self) -> usize;
    /// Number of output elements.
    fn output_dim(&self) -> usize;
    /// Concrete evaluation.
    fn forward(&self, x: &[f64]) -> Vec<f64>;
    /// Interval bound propagation.
    fn interval(&self, input: &BoxBounds) -> BoxBounds;
    /// The relaxation over `input` (nonlinear layers), `None` for linear layers.
    fn relax(&self, _input: &BoxBounds) -> Option<Relaxation> {
        None
    }
    /// True when the layer needs bounds on its input (and a relaxation).
    fn is_nonlinear(&self) -> bool {
        false
    }
    /// The dense affine form of a linear layer (`None` for identity or nonlinear).
    fn affine(&self) -> Option<&AffineMap> {
        None
    }
    /// One back-substitution step through this layer.
    fn backward(
        &self,
        state: &mut LinearState,
        relaxation: Option<&Relaxation>,
        slopes: Option<&RowSlopes>,
    );
}

/// A linear layer in its dense affine form. Dense, Conv2d and AvgPool2d differ only in
/// how the matrix is built, so IBP and back-substitution are written once here.
/// Back-substitution through a convolution multiplies by its dense matrix (the
/// transposed convolution, written as a product), built once: fine for MNIST and
/// CIFAR-sized layers.
#[derive(Debug)]
pub(crate) struct BoundAffine {
    kind: &'static str,
    map: AffineMap,
    /// Kept for the concrete forward pass, which evaluates the convolution itself.
    #[cfg_attr(not(test), allow(dead_code))]
    conv: Option<Conv2d>,
}

impl BoundAffine {
    /// Fully connected layer.
    pub fn dense(d: &Dense) -> Self {
        Self {
            kind: "Dense",
            map: AffineMap::new(d.out_dim, d.in_dim, d.weight.clone(), d.bias.clone()),
            conv: None,
        }
    }

    /// 2-D convolution.
    pub fn conv2d(c: &Conv2d) -> Self {
        let (oh, ow) = (c.out_h(), c.out_w());
        let (out_dim, in_dim) = (c.out_channels * oh * ow, c.in_channels * c.in_h * c.in_w);
        let mut matrix = vec![0.0; out_dim * in_dim];
        let mut bias = vec![0.0; out_dim];
        for oc in 0..c.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = (oc * oh + oy) * ow + ox;
                    bias[o] = c.bias[oc];
                    for ic in 0..c.in_channels {
                        for ky in 0..c.kernel_h {
                            let iy = (oy * c.stride_h + ky) as isize - c.pad_top as isize;
                            if iy < 0 || iy >= c.in_h as isize {
                                continue;
                            }
                            for kx in 0..c.kernel_w {
                                let ix = (ox * c.stride_w + kx) as isize - c.pad_left as isize;
                                if ix < 0 || ix >= c.in_w as isize {
                                    continue;
                                }
                                let i = (ic * c.in_h + iy as usize) * c.in_w + ix as usize;
                                matrix[o * in_dim + i] +=
                                    c.weight[((oc * c.in_channels + ic) * c.kernel_h + ky)
                                        * c.kernel_w
                                        + kx];
                            }
                        }
                    }
                }
            }
        }
        Self {
            kind: "Conv2d",
            map: AffineMap::new(out_dim, in_dim, matrix, bias),
            conv: Some(c.clone()),
        }
    }

    /// Average pooling (padding excluded from the count): linear with positive weights.
    pub fn avg_pool2d(p: &Pool2d, index: usize) -> Result<Self, BoundsError> {
        let windows = pool_windows(p, index)?;
        let in_dim = p.channels * p.in_h * p.in_w;
        let mut matrix = vec![0.0; windows.len() * in_dim];
        for (o, w) in windows.iter().enumerate() {
            for &i in w {
                matrix[o * in_dim + i] = 1.0 / w.len() as f64;
            }
        }
        let out_dim = windows.len();
        Ok(Self {
            kind: "AvgPool2d",
            map: AffineMap::new(out_dim, in_dim, matrix, vec![0.0; out_dim]),
            conv: None,
        })
    }
}

impl BoundOp for BoundAffine {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn input_dim(&self) -> usize {
        self.map.in_dim
    }
    fn output_dim(&self) -> usize {
        self.map.out_dim
    }
    fn forward(&self, x: &[f64]) -> Vec<f64> {
        match &self.conv {
            Some(conv) => conv.apply(x),
            None => self.map.apply(x),
        }
    }
    fn interval(&self, input: &BoxBounds) -> BoxBounds {
        self.map.interval(input)
    }
    fn affine(&self) -> Option<&AffineMap> {
        Some(&self.map)
    }
    fn backward(&self, state: &mut LinearState, _: Option<&Relaxation>, _: Option<&RowSlopes>) {
        state.apply_affine(
            &self.map.matrix,
            &self.map.bias,
            self.map.out_dim,
            self.map.in_dim,
        );
    }
}

/// The input indices of every pooling window, in output order; an empty window is an
/// error (its output would be undefined).
fn pool_windows(p: &Pool2d, index: usize) -> Result<Vec<Vec<usize>>, BoundsError> {
    let mut windows = Vec::new();
    for c in 0..p.channels {
        for oy in 0..p.out_h() {
            for ox in 0..p.out_w() {
                let w: Vec<usize> = p.window(c, oy, ox).collect();
                if w.is_empty() {
                    return Err(BoundsError::Unsupported {
                        index,
                        kind: "pooling",
                        problem: format!("window ({c}, {oy}, {ox}) lies entirely in the padding"),
                    });
                }
                windows.push(w);
            }
        }
    }
    Ok(windows)
}

/// Max pooling.
#[derive(Debug)]
pub(crate) struct BoundMaxPool2d {
    in_dim: usize,
    windows: Vec<Vec<usize>>,
}

impl BoundMaxPool2d {
    pub fn new(p: &Pool2d, index: usize) -> Result<Self, BoundsError> {
        Ok(Self {
            in_dim: p.channels * p.in_h * p.in_w,
            windows: pool_windows(p, index)?,
        })
    }

    fn window_max(&self, x: &[f64]) -> Vec<f64> {
        self.windows
            .iter()
            .map(|w| w.iter().map(|&i| x[i]).fold(f64::NEG_INFINITY, f64::max))
            .collect()
    }
}

impl BoundOp for BoundMaxPool2d {
    fn kind(&self) -> &'static str {
        "MaxPool2d"
    }
    fn input_dim(&self) -> usize {
        self.in_dim
    }
    fn output_dim(&self) -> usize {
        self.windows.len()
    }
    fn forward(&self, x: &[f64]) -> Vec<f64> {
        self.window_max(x)
    }
    fn interval(&self, input: &BoxBounds) -> BoxBounds {
        BoxBounds {
            lower: self.window_max(&input.lower),
            upper: self.window_max(&input.upper),
        }
    }
    fn is_nonlinear(&self) -> bool {
        true
    }
    fn relax(&self, input: &BoxBounds) -> Option<Relaxation> {
        let mut lower_index = Vec::with_capacity(self.windows.len());
        let mut upper = Vec::with_capacity(self.windows.len());
        for w in &self.windows {
            let best = w.iter().copied().fold(w[0], |b, i| {
                if input.lower[i] > input.lower[b] {
                    i
                } else {
                    b
                }
            });
            let others_max = w
                .iter()
                .filter(|&&i| i != best)
                .map(|&i| input.upper[i])
                .fold(f64::NEG_INFINITY, f64::max);
            lower_index.push(best);
            upper.push(if input.lower[best] >= others_max {
                PoolUpper::Exact(best)
            } else {
                PoolUpper::Constant(
                    w.iter()
                        .map(|&i| input.upper[i])
                        .fold(f64::NEG_INFINITY, f64::max),
                )
            });
        }
        Some(Relaxation::MaxPool(MaxPoolRelaxation {
            lower_index,
            upper,
        }))
    }
    fn backward(
        &self,
        state: &mut LinearState,
        relaxation: Option<&Relaxation>,
        _: Option<&RowSlopes>,
    ) {
        let Some(Relaxation::MaxPool(r)) = relaxation else {
            unreachable!("max pool back-substitution needs its relaxation")
        };
        state.split();
        let (rows, out_dim, in_dim) = (state.rows, state.cols, self.in_dim);
        // For each bound side: positive coefficients take the line on the bound's own side.
        let side = |a: &[f64], c: &mut [f64], lower_side: bool| -> Vec<f64> {
            let mut next = vec![0.0; rows * in_dim];
            for row in 0..rows {
                for o in 0..out_dim {
                    let coef = a[row * out_dim + o];
                    if coef == 0.0 {
                        continue;
                    }
                    if (coef >= 0.0) == lower_side {
                        next[row * in_dim + r.lower_index[o]] += coef;
                    } else {
                        match r.upper[o] {
                            PoolUpper::Exact(i) => next[row * in_dim + i] += coef,
                            PoolUpper::Constant(v) => c[row] += coef * v,
                        }
                    }
                }
            }
            next
        };
        let lower = side(&state.lower_a, &mut state.lower_c, true);
        let upper = side(&state.upper_a, &mut state.upper_c, false);
        state.lower_a = lower;
        state.upper_a = upper;
        state.cols = in_dim;
    }
}

/// Reshape to a vector: the identity on the flattened data.
#[derive(Debug)]
pub(crate) struct BoundFlatten {
    dim: usize,
}

impl BoundFlatten {
    pub fn new(dim: usize) -> Self {
        Self { dim }
    }
}

impl BoundOp for BoundFlatten {
    fn kind(&self) -> &'static str {
        "Flatten"
    }
    fn input_dim(&self) -> usize {
        self.dim
    }
    fn output_dim(&self) -> usize {
        self.dim
    }
    fn forward(&self, x: &[f64]) -> Vec<f64> {
        x.to_vec()
    }
    fn interval(&self, input: &BoxBounds) -> BoxBounds {
        input.clone()
    }
    fn backward(&self, _: &mut LinearState, _: Option<&Relaxation>, _: Option<&RowSlopes>) {}
}

/// The scalar activation functions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Activation {
    Relu,
    LeakyRelu(f64),
    Sigmoid,
    Tanh,
    Gelu,
}

impl Activation {
    fn of(layer: &Layer) -> Option<Self> {
        Some(match layer {
            Layer::Relu => Self::Relu,
            Layer::LeakyRelu { alpha } => Self::LeakyRelu(*alpha),
            Layer::Sigmoid => Self::Sigmoid,
            Layer::Tanh => Self::Tanh,
            Layer::Gelu => Self::Gelu,
            _ => return None,
        })
    }

    fn apply(self, x: f64) -> f64 {
        match self {
            Self::Relu => x.max(0.0),
            Self::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Self::Sigmoid => relax::sigmoid(x),
            Self::Tanh => x.tanh(),
            Self::Gelu => relax::gelu(x),
        }
    }

    fn relax(self, l: f64, u: f64) -> ScalarRelaxation {
        match self {
            Self::Relu => relax::relu(l, u),
            Self::LeakyRelu(a) => relax::leaky_relu(a, l, u),
            Self::Sigmoid => relax::sigmoid_relaxation(l, u),
            Self::Tanh => relax::tanh_relaxation(l, u),
            Self::Gelu => relax::gelu_relaxation(l, u),
        }
    }
}

/// Element-wise activation (ReLU, LeakyReLU, Sigmoid, Tanh, GELU).
#[derive(Debug)]
pub(crate) struct BoundActivation {
    activation: Activation,
    #[cfg_attr(not(test), allow(dead_code))]
    layer: Layer,
    dim: usize,
}

impl BoundActivation {
    pub fn new(layer: &Layer, dim: usize) -> Option<Self> {
        Some(Self {
            activation: Activation::of(layer)?,
            layer: layer.clone(),
            dim,
        })
    }
}

impl BoundOp for BoundActivation {
    fn kind(&self) -> &'static str {
        self.layer.kind()
    }
    fn input_dim(&self) -> usize {
        self.dim
    }
    fn output_dim(&self) -> usize {
        self.dim
    }
    fn forward(&self, x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| self.layer.activate(v)).collect()
    }
    fn interval(&self, input: &BoxBounds) -> BoxBounds {
        if self.activation == Activation::Gelu {
            let (lower, upper) = input
                .lower
                .iter()
                .zip(&input.upper)
                .map(|(&l, &u)| relax::gelu_interval(l, u))
                .unzip();
            return BoxBounds { lower, upper };
        }
        // The others are monotone non-decreasing.
        BoxBounds {
            lower: input
                .lower
                .iter()
                .map(|&v| self.activation.apply(v))
                .collect(),
            upper: input
                .upper
                .iter()
                .map(|&v| self.activation.apply(v))
                .collect(),
        }
    }
    fn is_nonlinear(&self) -> bool {
        true
    }
    fn relax(&self, input: &BoxBounds) -> Option<Relaxation> {
        let n = self.dim;
        let mut r = ElementwiseRelaxation {
            lower_slope: Vec::with_capacity(n),
            lower_intercept: Vec::with_capacity(n),
            upper_slope: Vec::with_capacity(n),
            upper_intercept: Vec::with_capacity(n),
            optimisable: Vec::with_capacity(n),
            slope_range: match self.activation {
                Activation::LeakyRelu(a) => (a, 1.0),
                _ => (0.0, 1.0),
            },
        };
        let piecewise_linear =
            matches!(self.activation, Activation::Relu | Activation::LeakyRelu(_));
        for (&l, &u) in input.lower.iter().zip(&input.upper) {
            let s = self.activation.relax(l, u);
            r.lower_slope.push(s.lower.slope);
            r.lower_intercept.push(s.lower.intercept);
            r.upper_slope.push(s.upper.slope);
            r.upper_intercept.push(s.upper.intercept);
            r.optimisable
                .push(piecewise_linear && relax::relu_is_unstable(l, u));
        }
        Some(Relaxation::Elementwise(r))
    }
    fn backward(
        &self,
        state: &mut LinearState,
        relaxation: Option<&Relaxation>,
        slopes: Option<&RowSlopes>,
    ) {
        let Some(Relaxation::Elementwise(r)) = relaxation else {
            unreachable!("activation back-substitution needs its relaxation")
        };
        state.split();
        let (rows, n) = (state.rows, state.cols);
        let (lo, hi) = r.slope_range;
        for (lower_side, a, c, alpha) in [
            (
                true,
                &mut state.lower_a,
                &mut state.lower_c,
                slopes.and_then(|s| s.lower_rows.as_deref()),
            ),
            (
                false,
                &mut state.upper_a,
                &mut state.upper_c,
                slopes.and_then(|s| s.upper_rows.as_deref()),
            ),
        ] {
            for row in 0..rows {
                let a_row = &mut a[row * n..(row + 1) * n];
                let alpha_row = alpha.map(|s| &s[row * n..(row + 1) * n]);
                let mut constant = 0.0;
                for (j, coef) in a_row.iter_mut().enumerate() {
                    let k = *coef;
                    // Lower bounds take the lower line where the coefficient is
                    // non-negative, upper bounds where it is negative.
                    if (k >= 0.0) == lower_side {
                        let slope = match alpha_row {
                            Some(al) if r.optimisable[j] => al[j].clamp(lo, hi),
                            _ => r.lower_slope[j],
                        };
                        *coef = k * slope;
                        constant += k * r.lower_intercept[j];
                    } else {
                        *coef = k * r.upper_slope[j];
                        constant += k * r.upper_intercept[j];
                    }
                }
                c[row] += constant;
            }
        }
    }
}

/// The bound operations of layers `from..to` of a network with the given tensor shapes.
pub(crate) fn build(
    layers: &[Layer],
    shapes: &[Vec<usize>],
    from: usize,
) -> Result<Vec<Box<dyn BoundOp>>, BoundsError> {
    layers
        .iter()
        .enumerate()
        .map(|(k, layer)| {
            let index = from + k;
            let dim: usize = shapes[k].iter().product();
            Ok(match layer {
                Layer::Dense(d) => Box::new(BoundAffine::dense(d)) as Box<dyn BoundOp>,
                Layer::Conv2d(c) => Box::new(BoundAffine::conv2d(c)),
                Layer::AvgPool2d(p) => Box::new(BoundAffine::avg_pool2d(p, index)?),
                Layer::MaxPool2d(p) => Box::new(BoundMaxPool2d::new(p, index)?),
                Layer::Flatten => Box::new(BoundFlatten::new(dim)),
                act => Box::new(BoundActivation::new(act, dim).ok_or_else(|| {
                    BoundsError::Unsupported {
                        index,
                        kind: act.kind(),
                        problem: "no bound operation for this layer".into(),
                    }
                })?),
            })
        })
        .collect()
}
