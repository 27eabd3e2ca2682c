//! The `.nnet` text format of the ACAS Xu community (Reluplex, Marabou, NNV).
//!
//! Layout: `//` comment lines; then one line each for `numLayers, inputSize,
//! outputSize, maxLayerSize`; the `numLayers + 1` layer sizes; a (legacy) symmetric
//! flag; the input minimums; the input maximums; the means (inputs, then one output
//! mean); the ranges (inputs, then one output range); then, for each layer, one line
//! per weight row (`inputs` values) followed by one line per bias. Values are separated
//! by commas (a trailing comma is usual). ReLU follows every hidden layer, not the last.
//!
//! The network returned takes NORMALISED inputs `(x - mean) / range` and returns
//! normalised outputs, exactly like the ACAS Xu ONNX files; [`NnetNormalization`]
//! carries the constants to go from raw sensor values and back.

use std::path::Path;

use super::ImportError;
use crate::model::{Dense, Layer, Network};

/// The normalisation stored in a `.nnet` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NnetNormalization {
    /// Smallest raw value of each input (raw inputs are clamped to it).
    pub input_min: Vec<f64>,
    /// Largest raw value of each input (raw inputs are clamped to it).
    pub input_max: Vec<f64>,
    /// Mean subtracted from each raw input.
    pub input_mean: Vec<f64>,
    /// Range each centred raw input is divided by.
    pub input_range: Vec<f64>,
    /// Mean added back to each output after scaling.
    pub output_mean: f64,
    /// Range each normalised output is multiplied by.
    pub output_range: f64,
}

impl NnetNormalization {
    /// Normalise one raw input as the `.nnet` tools do: clamp to `[min, max]`, then
    /// `(x - mean) / range`.
    pub fn normalize_input(&self, raw: &[f64]) -> Vec<f64> {
        raw.iter()
            .enumerate()
            .map(|(i, &x)| {
                (x.clamp(self.input_min[i], self.input_max[i]) - self.input_mean[i])
                    / self.input_range[i]
            })
            .collect()
    }

    /// Raw output values from normalised network outputs: `y * range + mean`.
    pub fn denormalize_output(&self, y: &[f64]) -> Vec<f64> {
        y.iter()
            .map(|v| v * self.output_range + self.output_mean)
            .collect()
    }
}

/// Read a `.nnet` file: the network (normalised inputs and outputs) and its
/// normalisation constants.
pub fn load(path: &Path) -> Result<(Network, NnetNormalization), ImportError> {
    let text = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&text);
    parse(&text).map_err(|(line, problem)| ImportError::Nnet {
        path: path.to_path_buf(),
        line,
        problem,
    })
}

/// A parse error: 1-based line number and the problem.
type LineError = (usize, String);

/// The data lines of the file (comments and blank lines skipped), with line numbers.
struct Lines<'a> {
    inner: std::iter::Enumerate<std::str::Lines<'a>>,
    /// Line number of the last line returned (or of the end of the file).
    last: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            inner: text.lines().enumerate(),
            last: 0,
        }
    }

    /// The next data line's values, checked to number exactly `expected`.
    fn values(&mut self, what: &str, expected: usize) -> Result<Vec<f64>, LineError> {
        let (line, values) = self.next_values(what)?;
        if values.len() != expected {
            return Err((
                line,
                format!("{what}: expected {expected} values, found {}", values.len()),
            ));
        }
        Ok(values)
    }

    /// The next data line's values (any count, at least one).
    fn next_values(&mut self, what: &str) -> Result<(usize, Vec<f64>), LineError> {
        for (index, raw) in self.inner.by_ref() {
            self.last = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with("//") {
                continue;
            }
            let values = content
                .split(',')
                .map(str::trim)
                .filter(|field| !field.is_empty())
                .map(|field| {
                    field
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            (
                                self.last,
                                format!("{what}: '{field}' is not a finite number"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((self.last, values));
        }
        Err((
            self.last + 1,
            format!("unexpected end of file: expected {what}"),
        ))
    }

    /// Error unless only comments and blank lines remain.
    fn expect_end(&mut self) -> Result<(), LineError> {
        for (index, raw) in self.inner.by_ref() {
            let content = raw.trim();
            if !content.is_empty() && !content.starts_with("//") {
                return Err((
                    index + 1,
                    "unexpected data after the last layer's biases".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A count from the header: a non-negative integer.
fn count(value: f64, line: usize, what: &str) -> Result<usize, LineError> {
    if value < 0.0 || value.fract() != 0.0 || value > 1e9 {
        return Err((
            line,
            format!("{what} must be a non-negative integer, found {value}"),
        ));
    }
    Ok(value as usize)
}

/// Parse the text of a `.nnet` file; errors carry the 1-based line.
fn parse(text: &str) -> Result<(Network, NnetNormalization), LineError> {
    let mut lines = Lines::new(text);
    let (line, header) =
        lines.next_values("header (numLayers, inputSize, outputSize, maxLayerSize)")?;
    if header.len() < 3 {
        return Err((
            line,
            format!(
                "header: expected numLayers, inputSize, outputSize, maxLayerSize; found {} values",
                header.len()
            ),
        ));
    }
    let num_layers = count(header[0], line, "numLayers")?;
    let input_size = count(header[1], line, "inputSize")?;
    let output_size = count(header[2], line, "outputSize")?;
    if num_layers == 0 || input_size == 0 || output_size == 0 {
        return Err((
            line,
            "header: numLayers, inputSize and outputSize must be positive".into(),
        ));
    }

    let (sizes_line, raw_sizes) = lines.next_values("layer sizes")?;
    if raw_sizes.len() != num_layers + 1 {
        return Err((
            sizes_line,
            format!(
                "layer sizes: expected numLayers + 1 = {} values, found {}",
                num_layers + 1,
                raw_sizes.len()
            ),
        ));
    }
    let sizes = raw_sizes
        .iter()
        .map(|&v| count(v, sizes_line, "layer size"))
        .collect::<Result<Vec<_>, _>>()?;
    if sizes.contains(&0) {
        return Err((sizes_line, "layer sizes must be positive".into()));
    }
    if sizes[0] != input_size || sizes[num_layers] != output_size {
        return Err((
            sizes_line,
            format!(
                "layer sizes start at {} and end at {}, but the header says inputSize {input_size}, outputSize {output_size}",
                sizes[0], sizes[num_layers]
            ),
        ));
    }
    let _symmetric = lines.next_values("symmetric flag")?;
    let input_min = lines.values("input minimums", input_size)?;
    let min_line = lines.last;
    let input_max = lines.values("input maximums", input_size)?;
    if let Some(i) = (0..input_size).find(|&i| input_min[i] > input_max[i]) {
        return Err((
            lines.last,
            format!(
                "input {i}: maximum {} is below the minimum {} (line {min_line})",
                input_max[i], input_min[i]
            ),
        ));
    }
    let means = lines.values("means (inputs, then the output)", input_size + 1)?;
    let ranges = lines.values("ranges (inputs, then the output)", input_size + 1)?;
    if let Some(i) = ranges.iter().position(|&r| r == 0.0) {
        return Err((lines.last, format!("range {i} is zero")));
    }

    // No capacity from the header: sizes are untrusted until the values are read.
    let mut layers = Vec::new();
    for k in 0..num_layers {
        let (in_dim, out_dim) = (sizes[k], sizes[k + 1]);
        let mut weight = Vec::new();
        for row in 0..out_dim {
            weight.extend(lines.values(&format!("layer {} weight row {row}", k + 1), in_dim)?);
        }
        let mut bias = Vec::new();
        for o in 0..out_dim {
            bias.extend(lines.values(&format!("layer {} bias {o}", k + 1), 1)?);
        }
        let dense = Dense::new(in_dim, out_dim, weight, bias).map_err(|e| (lines.last, e))?;
        layers.push(Layer::Dense(dense));
        if k + 1 < num_layers {
            layers.push(Layer::Relu);
        }
    }
    lines.expect_end()?;

    let network =
        Network::new(vec![input_size], layers).map_err(|e| (lines.last, e.to_string()))?;
    let normalization = NnetNormalization {
        input_min,
        input_max,
        input_mean: means[..input_size].to_vec(),
        input_range: ranges[..input_size].to_vec(),
        output_mean: means[input_size],
        output_range: ranges[input_size],
    };
    Ok((network, normalization))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-2-1 network: hidden = relu([[1,2],[3,4]] x + [0.5, -0.5]), y = [1,-1] h + 0.25.
    const SMALL: &str = "// a comment\n// another\n2,2,1,2,\n2,2,1,\n0,\n-1,-2,\n1,2,\n0.5,0.0,3.0,\n2.0,4.0,10.0,\n\
1.0,2.0,\n3.0,4.0,\n0.5,\n-0.5,\n1.0,-1.0,\n0.25,\n";

    #[test]
    fn parses_a_small_network_and_its_normalization() {
        let (net, norm) = parse(SMALL).unwrap();
        assert_eq!(net.input_shape, vec![2]);
        assert_eq!(net.layers.len(), 3);
        assert!(matches!(net.layers[1], Layer::Relu));
        // x = [1, 1]: hidden = relu([3.5, 6.5]) -> y = 3.5 - 6.5 + 0.25.
        assert_eq!(net.forward(&[1.0, 1.0]), vec![-2.75]);
        assert_eq!(norm.input_mean, vec![0.5, 0.0]);
        assert_eq!(norm.input_range, vec![2.0, 4.0]);
        assert_eq!((norm.output_mean, norm.output_range), (3.0, 10.0));
        // Clamped to max 1, then (1 - 0.5) / 2.
        assert_eq!(norm.normalize_input(&[5.0, -4.0]), vec![0.25, -0.5]);
        assert_eq!(norm.denormalize_output(&[0.5]), vec![8.0]);
    }

    #[test]
    fn errors_carry_the_line() {
        let bad_row = SMALL.replace("3.0,4.0,\n", "3.0,\n");
        assert_eq!(parse(&bad_row).unwrap_err().0, 11);
        let bad_number = SMALL.replace("1.0,-1.0,", "1.0,abc,");
        let (line, problem) = parse(&bad_number).unwrap_err();
        assert_eq!(line, 14);
        assert!(
            problem.contains("'abc' is not a finite number"),
            "{problem}"
        );
        let truncated = &SMALL[..SMALL.len() - 6];
        assert!(
            parse(truncated)
                .unwrap_err()
                .1
                .contains("unexpected end of file")
        );
        let extra = format!("{SMALL}1.0,\n");
        assert_eq!(parse(&extra).unwrap_err().0, 16);
        let bad_sizes = SMALL.replace("2,2,1,\n", "3,2,1,\n");
        assert!(parse(&bad_sizes).unwrap_err().1.contains("inputSize"));
        assert!(parse("").unwrap_err().1.contains("unexpected end of file"));
        assert!(
            parse("2,2,1,2\n2,2,1\n0\nnan,1\n")
                .unwrap_err()
                .1
                .contains("not a finite number")
        );
    }
}
