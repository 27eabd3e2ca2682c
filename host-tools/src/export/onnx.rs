//! Write a host [`Network`] as an ONNX model (opset 13, f32) with the protobuf types that
//! tract-onnx exposes (`tract_onnx::pb`), encoded with prost.
//!
//! The graph keeps the model's ORIGINAL input shape (e.g. ACAS Xu's `[1, 1, 1, 5]`): the
//! first node reshapes it to what the first layer expects (`Flatten` to `[1, n]` for a
//! Dense layer, `Reshape` to `[1, c, h, w]` for a convolution or pooling). Layers map to
//! `Gemm` (transB = 1), `Relu`, `LeakyRelu`, `Sigmoid`, `Tanh`, `Conv`, `MaxPool`,
//! `AveragePool` (count_include_pad = 0) and `Flatten`; the output is `[1, n_out]` for a
//! flat output. Parameters are rounded to f32, as in any ONNX file of these networks.

use prost::Message;
use tract_onnx::pb;

use crate::model::{Layer, Network};

/// Why a network cannot be exported.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExportError {
    /// The network is malformed.
    #[error("invalid network: {0}")]
    Model(#[from] crate::model::ModelError),
    /// A layer without an ONNX mapping here.
    #[error("layer {index} ({kind}) cannot be exported to ONNX yet")]
    Unsupported {
        /// Layer index.
        index: usize,
        /// Layer kind.
        kind: &'static str,
    },
    /// The requested input shape does not hold the network's input elements.
    #[error("input shape {shape:?} has {got} elements, the network takes {want}")]
    InputShape {
        /// The requested shape.
        shape: Vec<usize>,
        /// Its element count.
        got: usize,
        /// The network's input elements.
        want: usize,
    },
}

const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;
const INT64: i32 = pb::tensor_proto::DataType::Int64 as i32;

fn value_info(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| pb::tensor_shape_proto::Dimension {
            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn float_tensor(name: &str, dims: &[usize], values: &[f64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data: values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        ..Default::default()
    }
}

fn int64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn float(name: &str, value: f64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: value as f32,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name,
        input: inputs,
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// Encode `net` as ONNX bytes. `input_shape` is the graph input shape WITH the batch
/// dimension (e.g. `[1, 1, 1, 5]`); `None` uses `[1] + net.input_shape`.
pub fn to_onnx_bytes(net: &Network, input_shape: Option<&[usize]>) -> Result<Vec<u8>, ExportError> {
    let shapes = net.shapes()?;
    let want = net.input_dim();
    let graph_input: Vec<usize> = match input_shape {
        Some(s) => s.to_vec(),
        None => std::iter::once(1)
            .chain(net.input_shape.iter().copied())
            .collect(),
    };
    let got: usize = graph_input.iter().product();
    if got != want {
        return Err(ExportError::InputShape {
            shape: graph_input,
            got,
            want,
        });
    }
    let mut nodes = Vec::new();
    let mut init = Vec::new();
    let mut current = "input".to_string();
    // The batch-form shape of `current`.
    let mut current_shape = graph_input.clone();
    let mut counter = 0usize;
    let mut fresh = |base: &str| {
        counter += 1;
        format!("{base}_{counter}")
    };
    let flatten = |nodes: &mut Vec<pb::NodeProto>,
                   current: &mut String,
                   shape: &mut Vec<usize>,
                   name: String| {
        let n: usize = shape[1..].iter().product();
        nodes.push(node(
            "Flatten",
            name.clone(),
            vec![current.clone()],
            &name,
            vec![int("axis", 1)],
        ));
        *current = name;
        *shape = vec![1, n];
    };
    for (index, layer) in net.layers.iter().enumerate() {
        let in_shape = &shapes[index];
        let out_shape = &shapes[index + 1];
        match layer {
            Layer::Dense(d) => {
                if current_shape.len() != 2 {
                    flatten(
                        &mut nodes,
                        &mut current,
                        &mut current_shape,
                        fresh("flatten"),
                    );
                }
                let (w, b, out) = (fresh("weight"), fresh("bias"), fresh("dense"));
                init.push(float_tensor(&w, &[d.out_dim, d.in_dim], &d.weight));
                init.push(float_tensor(&b, &[d.out_dim], &d.bias));
                nodes.push(node(
                    "Gemm",
                    out.clone(),
                    vec![current.clone(), w, b],
                    &out,
                    vec![int("transB", 1)],
                ));
                current = out;
                current_shape = vec![1, d.out_dim];
            }
            Layer::Flatten => {
                if current_shape.len() != 2 {
                    flatten(
                        &mut nodes,
                        &mut current,
                        &mut current_shape,
                        fresh("flatten"),
                    );
                }
            }
            Layer::Conv2d(_) | Layer::AvgPool2d(_) | Layer::MaxPool2d(_) => {
                if current_shape[1..] != in_shape[..] {
                    let (s, out) = (fresh("shape"), fresh("reshape"));
                    let mut target = vec![1i64];
                    target.extend(in_shape.iter().map(|&v| v as i64));
                    init.push(int64_tensor(&s, &target));
                    nodes.push(node(
                        "Reshape",
                        out.clone(),
                        vec![current.clone(), s],
                        &out,
                        vec![],
                    ));
                    current = out;
                }
                let out = fresh(layer.kind());
                match layer {
                    Layer::Conv2d(c) => {
                        let (w, b) = (fresh("weight"), fresh("bias"));
                        init.push(float_tensor(
                            &w,
                            &[c.out_channels, c.in_channels, c.kernel_h, c.kernel_w],
                            &c.weight,
                        ));
                        init.push(float_tensor(&b, &[c.out_channels], &c.bias));
                        let attrs = vec![
                            ints("kernel_shape", &[c.kernel_h, c.kernel_w]),
                            ints("strides", &[c.stride_h, c.stride_w]),
                            ints("pads", &[c.pad_top, c.pad_left, c.pad_bottom, c.pad_right]),
                        ];
                        nodes.push(node(
                            "Conv",
                            out.clone(),
                            vec![current.clone(), w, b],
                            &out,
                            attrs,
                        ));
                    }
                    Layer::AvgPool2d(p) | Layer::MaxPool2d(p) => {
                        let mut attrs = vec![
                            ints("kernel_shape", &[p.kernel_h, p.kernel_w]),
                            ints("strides", &[p.stride_h, p.stride_w]),
                            ints("pads", &[p.pad_top, p.pad_left, p.pad_bottom, p.pad_right]),
                        ];
                        let op = if matches!(layer, Layer::MaxPool2d(_)) {
                            "MaxPool"
                        } else {
                            attrs.push(int("count_include_pad", 0));
                            "AveragePool"
                        };
                        nodes.push(node(op, out.clone(), vec![current.clone()], &out, attrs));
                    }
                    _ => unreachable!("matched above"),
                }
                current = out;
                current_shape = std::iter::once(1)
                    .chain(out_shape.iter().copied())
                    .collect();
            }
            Layer::Relu | Layer::Sigmoid | Layer::Tanh | Layer::LeakyRelu { .. } => {
                let out = fresh(layer.kind());
                let (op, attrs) = match layer {
                    Layer::Relu => ("Relu", vec![]),
                    Layer::Sigmoid => ("Sigmoid", vec![]),
                    Layer::Tanh => ("Tanh", vec![]),
                    Layer::LeakyRelu { alpha } => ("LeakyRelu", vec![float("alpha", *alpha)]),
                    _ => unreachable!("matched above"),
                };
                nodes.push(node(op, out.clone(), vec![current.clone()], &out, attrs));
                current = out;
            }
            Layer::Gelu => {
                return Err(ExportError::Unsupported {
                    index,
                    kind: layer.kind(),
                });
            }
        }
    }
    // Name the final tensor "output" with an Identity so the graph output is stable.
    nodes.push(node(
        "Identity",
        "output".into(),
        vec![current],
        "output",
        vec![],
    ));
    let graph = pb::GraphProto {
        name: "prorepair".into(),
        node: nodes,
        initializer: init,
        input: vec![value_info("input", &graph_input)],
        output: vec![value_info("output", &current_shape)],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "prorepair-host".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// ONNX operators that are activation layers (what a feature layer K counts).
pub const ACTIVATION_OPS: &[&str] = &["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu"];

/// One box-indicator patch module for [`to_onnx_bytes_with_modules`].
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxModule<'a> {
    /// Box lower corner (flattened input).
    pub lower: &'a [f64],
    /// Box upper corner.
    pub upper: &'a [f64],
    /// Affine layers, ReLU between them.
    pub layers: &'a [crate::model::Dense],
    /// What the module reads: 0 = the input, K >= 1 = the output of the base's K-th
    /// activation node (flattened), as [`crate::repair::patchmodules::Module::feature_layer`].
    pub feature_layer: usize,
}

/// `net` plus box-indicator patch modules as one ONNX graph (AdvRepair, Definition 3.2):
/// for each module in order, `y <- Where(lower <= x <= upper, y + P(x), y)`, the
/// indicator being `GreaterOrEqual`/`LessOrEqual`, `And`, then `ReduceMin` over the
/// elements (as float) cast back to bool. A module at feature layer K reads
/// `Flatten(axis = 1)` of the base's K-th activation node output instead of `x` (the box
/// still compares `x`). Outside every box the graph returns the base
/// network's output tensor itself, bit for bit. Box corners are stored as f32 exactly as
/// given (callers pass f32-representable corners).
pub fn to_onnx_bytes_with_modules(
    net: &Network,
    input_shape: Option<&[usize]>,
    modules: &[OnnxModule<'_>],
) -> Result<Vec<u8>, ExportError> {
    let n = net.input_dim();
    base_graph_for_modules(net, input_shape, |nodes, init| {
        // The base's activation outputs in layer order, for modules at a feature layer.
        let activations: Vec<String> = nodes
            .iter()
            .filter(|n| ACTIVATION_OPS.contains(&n.op_type.as_str()))
            .filter_map(|n| n.output.first().cloned())
            .collect();
        let mut current = "pm_base".to_string();
        for (i, m) in modules.iter().enumerate() {
            // The module's input: the flattened input, or Flatten(axis = 1) of the K-th
            // activation (one Flatten per feature layer, shared by its modules).
            let source = match m.feature_layer {
                0 => "pm_x".to_string(),
                k => {
                    let act = activations
                        .get(k - 1)
                        .ok_or(ExportError::Unsupported {
                            index: k,
                            kind: "feature layer beyond the network's activation layers",
                        })?
                        .clone();
                    let name = format!("pm_h{k}");
                    if !nodes.iter().any(|n| n.name == name) {
                        nodes.push(node(
                            "Flatten",
                            name.clone(),
                            vec![act],
                            &name,
                            vec![int("axis", 1)],
                        ));
                    }
                    name
                }
            };
            if m.lower.len() != n || m.upper.len() != n {
                return Err(ExportError::InputShape {
                    shape: vec![m.lower.len()],
                    got: m.lower.len(),
                    want: n,
                });
            }
            let p = |s: &str| format!("pm{i}_{s}");
            init.push(float_tensor(&p("lower"), &[1, n], m.lower));
            init.push(float_tensor(&p("upper"), &[1, n], m.upper));
            nodes.push(node(
                "GreaterOrEqual",
                p("ge"),
                vec!["pm_x".into(), p("lower")],
                &p("ge"),
                vec![],
            ));
            nodes.push(node(
                "LessOrEqual",
                p("le"),
                vec!["pm_x".into(), p("upper")],
                &p("le"),
                vec![],
            ));
            nodes.push(node(
                "And",
                p("and"),
                vec![p("ge"), p("le")],
                &p("and"),
                vec![],
            ));
            push_all_of(nodes, p("and"), p("andf"), &p("all"));
            push_cast_to_bool(nodes, p("all"), &p("cond"));
            current = push_gated_module(nodes, init, m.layers, source, current, &p);
        }
        Ok(current)
    })
}

/// The setup and closing both module exporters share: `net` exported by
/// [`to_onnx_bytes`] and re-decoded, its final `Identity` renamed to `pm_base`, the
/// input flattened as `pm_x`; `append` then adds the modules (starting from `pm_base`)
/// and returns the name of the last result, which a closing `Identity` names `output`
/// (`[1, n_out]`).
fn base_graph_for_modules(
    net: &Network,
    input_shape: Option<&[usize]>,
    append: impl FnOnce(
        &mut Vec<pb::NodeProto>,
        &mut Vec<pb::TensorProto>,
    ) -> Result<String, ExportError>,
) -> Result<Vec<u8>, ExportError> {
    let bytes = to_onnx_bytes(net, input_shape)?;
    let mut model =
        pb::ModelProto::decode(bytes.as_slice()).map_err(|_| ExportError::Unsupported {
            index: 0,
            kind: "re-decoding the exported graph",
        })?;
    let Some(graph) = model.graph.as_mut() else {
        return Ok(bytes);
    };
    // The base graph's last node is the Identity naming "output": rename its output.
    if let Some(last) = graph.node.last_mut() {
        last.output = vec!["pm_base".into()];
        last.name = "pm_base".into();
    }
    graph.node.push(node(
        "Flatten",
        "pm_x".into(),
        vec!["input".into()],
        "pm_x",
        vec![int("axis", 1)],
    ));
    let last = append(&mut graph.node, &mut graph.initializer)?;
    graph.node.push(node(
        "Identity",
        "output".into(),
        vec![last],
        "output",
        vec![],
    ));
    graph.output = vec![value_info("output", &[1, net.output_dim()])];
    Ok(model.encode_to_vec())
}

/// "Every comparison holds" in both indicator forms: `Cast<float>` of the boolean
/// tensor `cmp` (named `cast`), then `ReduceMin` over axis 1 keeping it (named `all`);
/// the importer reads it back with `match_all_of`.
fn push_all_of(nodes: &mut Vec<pb::NodeProto>, cmp: String, cast: String, all: &str) {
    nodes.push(node(
        "Cast",
        cast.clone(),
        vec![cmp],
        &cast,
        vec![int("to", FLOAT as i64)],
    ));
    nodes.push(node(
        "ReduceMin",
        all.into(),
        vec![cast],
        all,
        vec![ints("axes", &[1]), int("keepdims", 1)],
    ));
}

/// The indicator's last node: `Cast<bool>` of `input`, named `name`.
fn push_cast_to_bool(nodes: &mut Vec<pb::NodeProto>, input: String, name: &str) {
    nodes.push(node(
        "Cast",
        name.into(),
        vec![input],
        name,
        vec![int("to", pb::tensor_proto::DataType::Bool as i64)],
    ));
}

/// Append one patch module reading `input` (its Dense layers as Gemm, a Relu between
/// consecutive ones) and `Where(cond, current + module, current)` with the condition
/// tensor `p("cond")` the caller built; returns the name of the result. Node and
/// tensor names come from `p`, the module's prefix.
fn push_gated_module(
    nodes: &mut Vec<pb::NodeProto>,
    init: &mut Vec<pb::TensorProto>,
    layers: &[crate::model::Dense],
    input: String,
    current: String,
    p: &dyn Fn(&str) -> String,
) -> String {
    let mut h = input;
    for (k, d) in layers.iter().enumerate() {
        let (w, b, out) = (
            p(&format!("w{k}")),
            p(&format!("b{k}")),
            p(&format!("dense{k}")),
        );
        init.push(float_tensor(&w, &[d.out_dim, d.in_dim], &d.weight));
        init.push(float_tensor(&b, &[d.out_dim], &d.bias));
        nodes.push(node(
            "Gemm",
            out.clone(),
            vec![h, w, b],
            &out,
            vec![int("transB", 1)],
        ));
        h = out;
        if k + 1 < layers.len() {
            let r = p(&format!("relu{k}"));
            nodes.push(node("Relu", r.clone(), vec![h], &r, vec![]));
            h = r;
        }
    }
    nodes.push(node(
        "Add",
        p("sum"),
        vec![current.clone(), h],
        &p("sum"),
        vec![],
    ));
    let next = p("out");
    nodes.push(node(
        "Where",
        next.clone(),
        vec![p("cond"), p("sum"), current],
        &next,
        vec![],
    ));
    next
}

/// A label-indicator patch module for [`to_onnx_bytes_with_label_modules`].
#[derive(Debug)]
pub struct OnnxLabelModule<'a> {
    /// `(l, None)`: fires where the base output's argmax is `l` (first index on ties);
    /// `(l0, Some(l1))`: fires where `y_l0 > y_l1 > y_j` for every other `j`.
    pub rule: (usize, Option<usize>),
    /// Affine layers, ReLU between them.
    pub layers: &'a [crate::model::Dense],
}

/// `net` plus label-indicator patch modules as one ONNX graph: for each module in order,
/// `y <- Where(rule(base), y + P(x), y)`, the rule read from the BASE output (as the
/// device does) with `Gather` and strict/non-strict comparisons only:
/// label `l`: `y_l > y_j` for `j < l` and `y_l >= y_j` for `j > l` (the device's
/// first-index argmax); pair `(l0, l1)`: `y_l0 > y_l1` and `y_l1 > y_j` for the others.
/// Per part: `Gather` (indices constant), `Greater`/`GreaterOrEqual`, `Cast` to float,
/// `ReduceMin` over axis 1, and the parts joined by `Mul`, then `Cast` to bool. The one
/// difference from the device: a NaN base output (never produced from finite inputs by a
/// finite network) makes every comparison false here, while the device's argmax skips it.
pub fn to_onnx_bytes_with_label_modules(
    net: &Network,
    input_shape: Option<&[usize]>,
    modules: &[OnnxLabelModule<'_>],
) -> Result<Vec<u8>, ExportError> {
    let n_out = net.output_dim();
    base_graph_for_modules(net, input_shape, |nodes, init| {
        let mut current = "pm_base".to_string();
        for (i, m) in modules.iter().enumerate() {
            let p = |s: &str| format!("pm{i}_{s}");
            let (top, second) = m.rule;
            if top >= n_out || second.is_some_and(|s| s >= n_out || s == top) {
                return Err(ExportError::Unsupported {
                    index: i,
                    kind: "label rule outside the network's outputs",
                });
            }
            // (subject label, compared labels, strict?)
            let mut parts: Vec<(usize, Vec<usize>, bool)> = Vec::new();
            match second {
                None => {
                    parts.push((top, (0..top).collect(), true));
                    parts.push((top, (top + 1..n_out).collect(), false));
                }
                Some(s) => {
                    parts.push((top, vec![s], true));
                    parts.push((
                        s,
                        (0..n_out).filter(|&j| j != top && j != s).collect(),
                        true,
                    ));
                }
            }
            parts.retain(|(_, others, _)| !others.is_empty());
            let mut conds: Vec<String> = Vec::new();
            for (k, (subject, others, strict)) in parts.iter().enumerate() {
                let q = |s: &str| p(&format!("r{k}_{s}"));
                let idx: Vec<i64> = others.iter().map(|&j| j as i64).collect();
                init.push(int64_tensor(&q("subj_idx"), &[*subject as i64]));
                init.push(int64_tensor(&q("other_idx"), &idx));
                nodes.push(node(
                    "Gather",
                    q("subj"),
                    vec!["pm_base".into(), q("subj_idx")],
                    &q("subj"),
                    vec![int("axis", 1)],
                ));
                nodes.push(node(
                    "Gather",
                    q("other"),
                    vec!["pm_base".into(), q("other_idx")],
                    &q("other"),
                    vec![int("axis", 1)],
                ));
                nodes.push(node(
                    if *strict { "Greater" } else { "GreaterOrEqual" },
                    q("cmp"),
                    vec![q("subj"), q("other")],
                    &q("cmp"),
                    vec![],
                ));
                push_all_of(nodes, q("cmp"), q("cmpf"), &q("all"));
                conds.push(q("all"));
            }
            // n_out >= 2 leaves at least one part.
            let mut cond = conds.first().cloned().ok_or(ExportError::Unsupported {
                index: i,
                kind: "label rule on a single-output network",
            })?;
            for (k, c) in conds.iter().enumerate().skip(1) {
                let out = p(&format!("both{k}"));
                nodes.push(node(
                    "Mul",
                    out.clone(),
                    vec![cond, c.clone()],
                    &out,
                    vec![],
                ));
                cond = out;
            }
            push_cast_to_bool(nodes, cond, &p("cond"));
            current = push_gated_module(nodes, init, m.layers, "pm_x".to_string(), current, &p);
        }
        Ok(current)
    })
}

/// The input shape (batch dimension included) that an ONNX file declares for its first
/// graph input that is not an initializer, when every dimension is a fixed number (so an
/// exported repair keeps the original interface, e.g. ACAS Xu's `[1, 1, 1, 5]`).
pub fn declared_input_shape(path: &std::path::Path) -> Option<Vec<usize>> {
    use tract_onnx::prelude::Framework;
    let proto = tract_onnx::onnx().proto_model_for_path(path).ok()?;
    let graph = proto.graph?;
    let inits: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !inits.contains(&i.name.as_str()))?;
    let Some(pb::type_proto::Value::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    t.shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                Some(v as usize)
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Conv2d, Dense, Pool2d};
    use tract_onnx::prelude::*;

    fn run_tract(bytes: &[u8], input_shape: &[usize], x: &[f32]) -> Vec<f32> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let t = tract_ndarray::ArrayD::from_shape_vec(input_shape.to_vec(), x.to_vec()).unwrap();
        let out = model.run(tvec!(Tensor::from(t).into())).unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn small_conv_dense_network_round_trips_through_tract() {
        let conv = Conv2d {
            in_channels: 1,
            out_channels: 2,
            in_h: 4,
            in_w: 4,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_top: 1,
            pad_left: 1,
            pad_bottom: 1,
            pad_right: 1,
            weight: (0..18).map(|i| (i as f64 * 0.37).sin()).collect(),
            bias: vec![0.1, -0.2],
        };
        let pool = Pool2d {
            channels: 2,
            in_h: 4,
            in_w: 4,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 2,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
        };
        let dense = Dense::new(
            8,
            3,
            (0..24).map(|i| (i as f64 * 0.91).cos()).collect(),
            vec![0.0, 0.5, -0.5],
        )
        .unwrap();
        let net = Network::new(
            vec![16],
            vec![
                Layer::Relu,
                Layer::Conv2d(conv),
                Layer::Relu,
                Layer::MaxPool2d(pool),
                Layer::Flatten,
                Layer::Dense(dense),
                Layer::Tanh,
            ],
        );
        // Relu on a flat [16] input, then a conv over [1,4,4]: the IR wants [1,4,4] shapes,
        // so build the network over an image input instead.
        assert!(net.is_err());
        let conv = Conv2d {
            in_channels: 1,
            out_channels: 2,
            in_h: 4,
            in_w: 4,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_top: 1,
            pad_left: 1,
            pad_bottom: 1,
            pad_right: 1,
            weight: (0..18).map(|i| (i as f64 * 0.37).sin()).collect(),
            bias: vec![0.1, -0.2],
        };
        let pool = Pool2d {
            channels: 2,
            in_h: 4,
            in_w: 4,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 2,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
        };
        let dense = Dense::new(
            8,
            3,
            (0..24).map(|i| (i as f64 * 0.91).cos()).collect(),
            vec![0.0, 0.5, -0.5],
        )
        .unwrap();
        let net = Network::new(
            vec![1, 4, 4],
            vec![
                Layer::Conv2d(conv),
                Layer::Relu,
                Layer::AvgPool2d(pool),
                Layer::Flatten,
                Layer::Dense(dense),
                Layer::Tanh,
            ],
        )
        .unwrap();
        let bytes = to_onnx_bytes(&net, Some(&[1, 1, 4, 4])).unwrap();
        let x: Vec<f64> = (0..16).map(|i| (i as f64 * 0.13).sin()).collect();
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let got = run_tract(&bytes, &[1, 1, 4, 4], &xf);
        let want = net.forward(&x);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn bad_input_shape_is_an_error() {
        let d = Dense::new(2, 1, vec![1.0, 1.0], vec![0.0]).unwrap();
        let net = Network::new(vec![2], vec![Layer::Dense(d)]).unwrap();
        assert!(matches!(
            to_onnx_bytes(&net, Some(&[1, 3])),
            Err(ExportError::InputShape { .. })
        ));
    }
}
