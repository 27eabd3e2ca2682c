//! The one host-side layer IR.
//!
//! Every host component (bound propagation, verification, repair, export, `compile`)
//! works on [`Network`]: a straight-line sequence of layers over a single tensor, in
//! f64. Importers (`import::onnx`, `import::nnet`) fold normalisation constants and
//! BatchNorm into the neighbouring affine layers, so the IR holds only the layer set
//! the device core evaluates.
//!
//! Tensors are stored row-major without the batch dimension: a vector is `[n]`, an image
//! is `[channels, height, width]`.

use std::fmt;

/// Errors in a network's structure (shape mismatches, bad parameters).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// A layer's input shape does not match what the previous layer produces.
    #[error("layer {index} ({kind}): {problem}")]
    Shape {
        /// Position of the layer in [`Network::layers`].
        index: usize,
        /// Layer kind name.
        kind: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The network has no input elements.
    #[error("the network input shape {0:?} has no elements")]
    EmptyInput(Vec<usize>),
}

/// Fully connected layer `y = W x + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Number of inputs.
    pub in_dim: usize,
    /// Number of outputs.
    pub out_dim: usize,
    /// `out_dim x in_dim`, row-major: `weight[o * in_dim + i]`.
    pub weight: Vec<f64>,
    /// `out_dim` biases.
    pub bias: Vec<f64>,
}

impl Dense {
    /// A dense layer, checking the parameter lengths.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        weight: Vec<f64>,
        bias: Vec<f64>,
    ) -> Result<Self, String> {
        if weight.len() != in_dim * out_dim {
            return Err(format!(
                "weight has {} values, expected {out_dim}x{in_dim} = {}",
                weight.len(),
                in_dim * out_dim
            ));
        }
        if bias.len() != out_dim {
            return Err(format!(
                "bias has {} values, expected {out_dim}",
                bias.len()
            ));
        }
        Ok(Self {
            in_dim,
            out_dim,
            weight,
            bias,
        })
    }

    /// Row `o` of the weight matrix.
    pub fn row(&self, o: usize) -> &[f64] {
        &self.weight[o * self.in_dim..(o + 1) * self.in_dim]
    }

    /// `W x + b`. Each dot product runs in eight interleaved partial sums: one running
    /// sum is bound by the add latency (a 50 x 50 layer took ~4x longer), and branch and
    /// bound checks candidate counterexamples with this pass thousands of times a second.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.out_dim)
            .map(|o| self.bias[o] + dot(self.row(o), x))
            .collect()
    }
}

/// `Σ a_i b_i` over the common length, in eight partial sums (vectorised).
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += xa[k] * xb[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Output extent of a sliding window along one axis, shared by convolution and pooling
/// so both agree on the edge cases (a window larger than the padded input gives one
/// output; a zero stride counts as one).
fn out_extent(input: usize, padding: usize, kernel: usize, stride: usize) -> usize {
    (input + padding).saturating_sub(kernel) / stride.max(1) + 1
}

/// 2-D convolution over a `[in_channels, in_h, in_w]` input (no groups, no dilation).
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Zero padding above.
    pub pad_top: usize,
    /// Zero padding on the left.
    pub pad_left: usize,
    /// Zero padding below.
    pub pad_bottom: usize,
    /// Zero padding on the right.
    pub pad_right: usize,
    /// `[out_channels, in_channels, kernel_h, kernel_w]` (OIHW), row-major.
    pub weight: Vec<f64>,
    /// `out_channels` biases.
    pub bias: Vec<f64>,
}

impl Conv2d {
    /// Output height.
    pub fn out_h(&self) -> usize {
        out_extent(
            self.in_h,
            self.pad_top + self.pad_bottom,
            self.kernel_h,
            self.stride_h,
        )
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        out_extent(
            self.in_w,
            self.pad_left + self.pad_right,
            self.kernel_w,
            self.stride_w,
        )
    }

    /// Evaluate on one `[in_channels, in_h, in_w]` input.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let (oh, ow) = (self.out_h(), self.out_w());
        let mut y = vec![0.0; self.out_channels * oh * ow];
        for oc in 0..self.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = self.bias[oc];
                    for ic in 0..self.in_channels {
                        for ky in 0..self.kernel_h {
                            let iy = (oy * self.stride_h + ky) as isize - self.pad_top as isize;
                            if iy < 0 || iy >= self.in_h as isize {
                                continue;
                            }
                            for kx in 0..self.kernel_w {
                                let ix =
                                    (ox * self.stride_w + kx) as isize - self.pad_left as isize;
                                if ix < 0 || ix >= self.in_w as isize {
                                    continue;
                                }
                                let w = self.weight[((oc * self.in_channels + ic) * self.kernel_h
                                    + ky)
                                    * self.kernel_w
                                    + kx];
                                acc +=
                                    w * x[(ic * self.in_h + iy as usize) * self.in_w + ix as usize];
                            }
                        }
                    }
                    y[(oc * oh + oy) * ow + ox] = acc;
                }
            }
        }
        y
    }
}

/// 2-D pooling window over a `[channels, in_h, in_w]` input. Padding cells are ignored
/// (max pool) or excluded from the average (average pool, `count_include_pad = 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Pool2d {
    /// Channels (unchanged by pooling).
    pub channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Window height.
    pub kernel_h: usize,
    /// Window width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Padding above.
    pub pad_top: usize,
    /// Padding on the left.
    pub pad_left: usize,
    /// Padding below.
    pub pad_bottom: usize,
    /// Padding on the right.
    pub pad_right: usize,
}

impl Pool2d {
    /// Output height.
    pub fn out_h(&self) -> usize {
        out_extent(
            self.in_h,
            self.pad_top + self.pad_bottom,
            self.kernel_h,
            self.stride_h,
        )
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        out_extent(
            self.in_w,
            self.pad_left + self.pad_right,
            self.kernel_w,
            self.stride_w,
        )
    }

    /// The input indices inside window `(c, oy, ox)`, padding excluded.
    pub fn window(&self, c: usize, oy: usize, ox: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.kernel_h).flat_map(move |ky| {
            (0..self.kernel_w).filter_map(move |kx| {
                let iy = (oy * self.stride_h + ky) as isize - self.pad_top as isize;
                let ix = (ox * self.stride_w + kx) as isize - self.pad_left as isize;
                (iy >= 0 && ix >= 0 && (iy as usize) < self.in_h && (ix as usize) < self.in_w)
                    .then(|| (c * self.in_h + iy as usize) * self.in_w + ix as usize)
            })
        })
    }

    fn apply(&self, x: &[f64], max: bool) -> Vec<f64> {
        let (oh, ow) = (self.out_h(), self.out_w());
        let mut y = Vec::with_capacity(self.channels * oh * ow);
        for c in 0..self.channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut acc, mut n) = (if max { f64::NEG_INFINITY } else { 0.0 }, 0usize);
                    for i in self.window(c, oy, ox) {
                        acc = if max { acc.max(x[i]) } else { acc + x[i] };
                        n += 1;
                    }
                    y.push(if max { acc } else { acc / n.max(1) as f64 });
                }
            }
        }
        y
    }
}

/// One layer of the IR.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// Fully connected affine layer (input flattened row-major).
    Dense(Dense),
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x >= 0`, else `alpha * x`.
    LeakyRelu {
        /// Negative-side slope, `0 <= alpha < 1`.
        alpha: f64,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// Exact GELU, `x * Phi(x)` with the normal CDF (erf form).
    Gelu,
    /// 2-D convolution.
    Conv2d(Conv2d),
    /// Average pooling.
    AvgPool2d(Pool2d),
    /// Max pooling.
    MaxPool2d(Pool2d),
    /// Reshape `[c, h, w]` to `[c*h*w]` (row-major order is unchanged).
    Flatten,
}

impl Layer {
    /// Short kind name, for messages and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "Dense",
            Layer::Relu => "ReLU",
            Layer::LeakyRelu { .. } => "LeakyReLU",
            Layer::Sigmoid => "Sigmoid",
            Layer::Tanh => "Tanh",
            Layer::Gelu => "GELU",
            Layer::Conv2d(_) => "Conv2d",
            Layer::AvgPool2d(_) => "AvgPool2d",
            Layer::MaxPool2d(_) => "MaxPool2d",
            Layer::Flatten => "Flatten",
        }
    }

    /// True for element-wise activations (same shape in and out).
    pub fn is_activation(&self) -> bool {
        matches!(
            self,
            Layer::Relu | Layer::LeakyRelu { .. } | Layer::Sigmoid | Layer::Tanh | Layer::Gelu
        )
    }

    /// The output shape for input shape `input`, or what is wrong.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let numel: usize = input.iter().product();
        match self {
            Layer::Dense(d) => {
                if numel != d.in_dim {
                    return Err(format!("expects {} inputs, gets shape {input:?}", d.in_dim));
                }
                Ok(vec![d.out_dim])
            }
            Layer::Conv2d(c) => {
                if input != [c.in_channels, c.in_h, c.in_w] {
                    return Err(format!(
                        "expects input [{}, {}, {}], gets {input:?}",
                        c.in_channels, c.in_h, c.in_w
                    ));
                }
                if c.stride_h == 0 || c.stride_w == 0 {
                    return Err("zero stride".into());
                }
                if c.in_h + c.pad_top + c.pad_bottom < c.kernel_h
                    || c.in_w + c.pad_left + c.pad_right < c.kernel_w
                {
                    return Err("kernel larger than the padded input".into());
                }
                if c.weight.len() != c.out_channels * c.in_channels * c.kernel_h * c.kernel_w
                    || c.bias.len() != c.out_channels
                {
                    return Err("parameter lengths do not match the kernel shape".into());
                }
                Ok(vec![c.out_channels, c.out_h(), c.out_w()])
            }
            Layer::AvgPool2d(p) | Layer::MaxPool2d(p) => {
                if input != [p.channels, p.in_h, p.in_w] {
                    return Err(format!(
                        "expects input [{}, {}, {}], gets {input:?}",
                        p.channels, p.in_h, p.in_w
                    ));
                }
                if p.stride_h == 0 || p.stride_w == 0 {
                    return Err("zero stride".into());
                }
                if p.in_h + p.pad_top + p.pad_bottom < p.kernel_h
                    || p.in_w + p.pad_left + p.pad_right < p.kernel_w
                {
                    return Err("window larger than the padded input".into());
                }
                Ok(vec![p.channels, p.out_h(), p.out_w()])
            }
            Layer::Flatten => Ok(vec![numel]),
            Layer::LeakyRelu { alpha } if !(0.0..1.0).contains(alpha) => {
                Err(format!("alpha {alpha} outside [0, 1)"))
            }
            _ => Ok(input.to_vec()),
        }
    }

    /// Evaluate this layer on one input tensor (flattened).
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        match self {
            Layer::Dense(d) => d.apply(x),
            Layer::Conv2d(c) => c.apply(x),
            Layer::AvgPool2d(p) => p.apply(x, false),
            Layer::MaxPool2d(p) => p.apply(x, true),
            Layer::Flatten => x.to_vec(),
            act => x.iter().map(|&v| act.activate(v)).collect(),
        }
    }

    /// The scalar function of an element-wise activation (identity for other layers).
    pub fn activate(&self, v: f64) -> f64 {
        match self {
            Layer::Relu => v.max(0.0),
            Layer::LeakyRelu { alpha } => {
                if v >= 0.0 {
                    v
                } else {
                    alpha * v
                }
            }
            Layer::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Layer::Tanh => v.tanh(),
            Layer::Gelu => 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)),
            _ => v,
        }
    }
}

/// The error function, to ~1e-15 (used by exact GELU; std has no `erf`).
pub fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun is too coarse for a reference evaluator: use the series for small
    // |x| and a continued fraction (Lentz) for the complement elsewhere.
    let ax = x.abs();
    let r = if ax < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, x2) = (ax, ax, ax * ax);
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax > 6.0 {
        1.0
    } else {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let mut f = ax;
        for k in (1..60).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        1.0 - (-ax * ax).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    if x < 0.0 { -r } else { r }
}

/// A feed-forward network: layers applied in order to one input tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Input shape without the batch dimension (`[5]`, `[784]`, `[1, 28, 28]`).
    pub input_shape: Vec<usize>,
    /// The layers, in evaluation order.
    pub layers: Vec<Layer>,
}

impl Network {
    /// A network, checked for shape consistency.
    pub fn new(input_shape: Vec<usize>, layers: Vec<Layer>) -> Result<Self, ModelError> {
        let net = Self {
            input_shape,
            layers,
        };
        net.shapes()?;
        Ok(net)
    }

    /// Number of input elements.
    pub fn input_dim(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of output elements.
    pub fn output_dim(&self) -> usize {
        self.shapes()
            .map(|s| s.last().map_or(0, |s| s.iter().product()))
            .unwrap_or(0)
    }

    /// The shape before every layer and after the last (`layers.len() + 1` entries).
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, ModelError> {
        if self.input_dim() == 0 {
            return Err(ModelError::EmptyInput(self.input_shape.clone()));
        }
        let mut shapes = vec![self.input_shape.clone()];
        for (index, layer) in self.layers.iter().enumerate() {
            let next = layer
                .output_shape(shapes.last().expect("non-empty"))
                .map_err(|problem| ModelError::Shape {
                    index,
                    kind: layer.kind(),
                    problem,
                })?;
            shapes.push(next);
        }
        Ok(shapes)
    }

    /// Plain forward pass in f64 on one flattened input.
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        self.forward_range(x, 0, self.layers.len())
    }

    /// Apply layers `from..to` only (the sub-network `f_c` or `f_e` of a split).
    pub fn forward_range(&self, x: &[f64], from: usize, to: usize) -> Vec<f64> {
        self.layers[from..to]
            .iter()
            .fold(x.to_vec(), |v, layer| layer.apply(&v))
    }

    /// The sub-network made of layers `from..to`, with its own input shape.
    pub fn slice(&self, from: usize, to: usize) -> Result<Network, ModelError> {
        let shapes = self.shapes()?;
        Network::new(shapes[from].clone(), self.layers[from..to].to_vec())
    }

    /// Total number of parameters (weights and biases).
    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Dense(d) => d.weight.len() + d.bias.len(),
                Layer::Conv2d(c) => c.weight.len() + c.bias.len(),
                _ => 0,
            })
            .sum()
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input {:?}", self.input_shape)?;
        match self.shapes() {
            Ok(shapes) => {
                for (layer, shape) in self.layers.iter().zip(&shapes[1..]) {
                    write!(f, " -> {} {shape:?}", layer.kind())?;
                }
                Ok(())
            }
            Err(e) => write!(f, " (invalid: {e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun table 7.1.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.5, -0.966_105_146_475_310_7),
        ] {
            assert!(
                (erf(x) - want).abs() < 1e-13,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn shape_errors_name_the_layer() {
        let d = Dense::new(3, 2, vec![0.0; 6], vec![0.0; 2]).unwrap();
        let err = Network::new(vec![4], vec![Layer::Dense(d)]).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Shape {
                    index: 0,
                    kind: "Dense",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn conv_and_pool_agree_with_hand_computation() {
        // 1x3x3 input, 2x2 kernel of ones, stride 1: sums of 2x2 windows.
        let conv = Conv2d {
            in_channels: 1,
            out_channels: 1,
            in_h: 3,
            in_w: 3,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
            weight: vec![1.0; 4],
            bias: vec![0.5],
        };
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        assert_eq!(conv.apply(&x), vec![12.5, 16.5, 24.5, 28.5]);
        let pool = Pool2d {
            channels: 1,
            in_h: 3,
            in_w: 3,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
        };
        assert_eq!(
            Layer::MaxPool2d(pool.clone()).apply(&x),
            vec![5.0, 6.0, 8.0, 9.0]
        );
        assert_eq!(Layer::AvgPool2d(pool).apply(&x), vec![3.0, 4.0, 6.0, 7.0]);
    }
}
