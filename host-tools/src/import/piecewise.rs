//! Reading the patch-modules ONNX graph that `apply --onnx-out` writes
//! ([`crate::export::onnx::to_onnx_bytes_with_modules`]) back as a piecewise model: the
//! base network plus a list of (indicator box, module).
//!
//! The graph is matched at the protobuf level, from the graph output backwards: optional
//! `Identity` nodes, then per module (last one first)
//! `y_i = Where(cond_i, Add(y_{i-1}, P_i(x)), y_{i-1})` with
//! `cond_i = Cast<bool>(ReduceMin<axes=[1]>(Cast<float>(And(x >= lower_i, x <= upper_i))))`
//! and `P_i = Gemm (Relu Gemm)*` (transB = 1, no other attribute) reading `x`, the graph
//! input itself or its `Flatten(axis = 1)`, or (a module at a feature layer) reading
//! `Flatten(axis = 1)` of a `Relu` node's output in the base part; that Relu is the
//! base's K-th activation node, and the imported base must have exactly as many
//! activation layers as the base part has activation nodes, so K means the same layer
//! on both sides. What is left, `y_0`, must be computed by
//! the other nodes alone; they are imported as an ordinary straight-line network (the
//! ONNX importer, with all its checks). Every node must belong to exactly one of the two
//! parts. Anything else is an error naming the file and the node: the reader accepts
//! this one pattern and nothing looser, because the verifier's cell decomposition relies
//! on its exact semantics (closed boxes: a point on a face is inside, as
//! `GreaterOrEqual`/`LessOrEqual` decide it).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::ImportError;
use crate::bounds::BoxBounds;
use crate::model::{Dense, Network};
use crate::repair::patchmodules::{Indicator, Module, PatchModules};

/// A base network with box-indicator patch modules: `F(x) = N(x) + sum of P_i(x) over
/// the boxes (closed) that contain x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Piecewise {
    /// The base network.
    pub base: Network,
    /// The modules, in graph order, every indicator an [`Indicator::Box`].
    pub modules: PatchModules,
}

impl Piecewise {
    /// `F(x)` in f64 (the indicator decided in f64 on `x` as given).
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        self.modules.eval(&self.base, x)
    }
}

/// The operators that only the patch-modules pattern uses: a graph holding one of them is
/// read by [`load`], not as a straight-line network.
pub const PATTERN_OPS: &[&str] = &["Where", "GreaterOrEqual", "LessOrEqual", "And", "ReduceMin"];
// (A label indicator graph uses Where, ReduceMin and GreaterOrEqual/Greater too.)

/// True when the ONNX graph uses an operator of the patch-modules pattern.
pub fn is_piecewise_graph(proto: &pb::ModelProto) -> bool {
    proto.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| PATTERN_OPS.contains(&n.op_type.as_str()))
    })
}

/// Decode an ONNX file's protobuf (tract's reader; a malformed file is an error, never a
/// panic).
pub(crate) fn read_proto(path: &Path) -> Result<pb::ModelProto, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let onnx = tract_onnx::onnx();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        onnx.proto_model_for_read(&mut &bytes[..])
    }))
    .map_err(|_| ImportError::InvalidOnnx {
        path: path.to_path_buf(),
        message: "the ONNX reader failed while decoding the protobuf".into(),
    })?
    .map_err(|e| ImportError::InvalidOnnx {
        path: path.to_path_buf(),
        message: e.to_string().replace('\n', " "),
    })
}

/// Read a patch-modules ONNX graph (see the module docs).
pub fn load(path: &Path) -> Result<Piecewise, ImportError> {
    let proto = read_proto(path)?;
    from_proto(path, proto)
}

/// The matcher's view of the graph.
struct Graph<'a> {
    path: &'a Path,
    nodes: &'a [pb::NodeProto],
    /// Tensor name -> index of the node producing it.
    producer: HashMap<&'a str, usize>,
    /// Tensor name -> number of consuming node inputs (+1 for the graph output).
    uses: HashMap<&'a str, usize>,
    inits: HashMap<&'a str, &'a pb::TensorProto>,
    input: &'a str,
}

impl<'a> Graph<'a> {
    fn name(&self, i: usize) -> String {
        let n = &self.nodes[i];
        if n.name.is_empty() {
            n.output.first().cloned().unwrap_or_default()
        } else {
            n.name.clone()
        }
    }

    fn err(&self, i: usize, problem: impl Into<String>) -> ImportError {
        ImportError::UnsupportedUsage {
            path: self.path.to_path_buf(),
            op: self.nodes[i].op_type.clone(),
            node: self.name(i),
            problem: format!("patch-modules graph: {}", problem.into()),
        }
    }

    /// The node producing `tensor`, which must be a `op` node with `inputs` inputs and one
    /// output used `uses` times; `at` names the consumer in errors.
    fn expect(
        &self,
        tensor: &str,
        op: &str,
        inputs: usize,
        uses: usize,
        at: usize,
    ) -> Result<usize, ImportError> {
        let Some(&i) = self.producer.get(tensor) else {
            return Err(self.err(
                at,
                format!("input '{tensor}' should come from a {op} node, it is not computed"),
            ));
        };
        let n = &self.nodes[i];
        if n.op_type != op {
            return Err(self.err(
                at,
                format!(
                    "input '{tensor}' should come from a {op} node, not {}",
                    n.op_type
                ),
            ));
        }
        if n.input.len() != inputs || n.output.len() != 1 {
            return Err(self.err(
                i,
                format!(
                    "{} inputs and {} outputs (expected {inputs} and 1)",
                    n.input.len(),
                    n.output.len()
                ),
            ));
        }
        let used = self.uses.get(tensor).copied().unwrap_or(0);
        if used != uses {
            return Err(self.err(
                i,
                format!("its output is used {used} times, the pattern uses it {uses} times"),
            ));
        }
        Ok(i)
    }

    fn int_attr(&self, i: usize, name: &str) -> Option<i64> {
        self.nodes[i]
            .attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.i)
    }

    /// Only the named attributes may be present.
    fn only_attrs(&self, i: usize, allowed: &[&str]) -> Result<(), ImportError> {
        match self.nodes[i]
            .attribute
            .iter()
            .find(|a| !allowed.contains(&a.name.as_str()))
        {
            Some(a) => Err(self.err(i, format!("unexpected attribute '{}'", a.name))),
            None => Ok(()),
        }
    }

    /// A float initializer's values and dims.
    fn constant(&self, tensor: &str, at: usize) -> Result<(Vec<f64>, Vec<usize>), ImportError> {
        let t = self.inits.get(tensor).ok_or_else(|| {
            self.err(at, format!("'{tensor}' should be a constant (initializer)"))
        })?;
        if t.data_type != pb::tensor_proto::DataType::Float as i32 {
            return Err(self.err(at, format!("constant '{tensor}' is not float")));
        }
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()
            .ok_or_else(|| self.err(at, format!("constant '{tensor}' has a negative dimension")))?;
        let count = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err(at, format!("constant '{tensor}' is too large")))?;
        let values: Vec<f64> = if !t.raw_data.is_empty() {
            if t.raw_data.len() != 4 * count {
                return Err(self.err(at, format!("constant '{tensor}' has the wrong byte count")));
            }
            t.raw_data
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        } else {
            if t.float_data.len() != count {
                return Err(self.err(at, format!("constant '{tensor}' has the wrong value count")));
            }
            t.float_data.iter().map(|&v| f64::from(v)).collect()
        };
        Ok((values, dims))
    }
}

/// One matched module, before the base is imported (dimensions checked afterwards).
struct Matched {
    lower: Vec<f64>,
    upper: Vec<f64>,
    layers: Vec<Dense>,
    /// A label indicator instead of a box: `(l, None)` or `(l0, Some(l1))`, and the base
    /// output tensor its `Gather`s read (see [`match_label_rule`]).
    label: Option<((usize, Option<usize>), String, usize)>,
    /// The node producing this module's input tensor `x` (a Flatten), if any.
    nodes: Vec<usize>,
    /// A module at a feature layer: the tensor its Flatten reads (a base activation).
    feature: Option<String>,
}

pub(crate) fn from_proto(path: &Path, mut proto: pb::ModelProto) -> Result<Piecewise, ImportError> {
    let graph_err = |problem: String| ImportError::UnsupportedUsage {
        path: path.to_path_buf(),
        op: "graph".into(),
        node: "-".into(),
        problem,
    };
    let Some(graph) = proto.graph.take() else {
        return Err(ImportError::InvalidOnnx {
            path: path.to_path_buf(),
            message: "the file holds no graph".into(),
        });
    };
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_str())
        .filter(|n| !inits.contains_key(n))
        .collect();
    if inputs.len() != 1 || graph.output.len() != 1 {
        return Err(graph_err(format!(
            "the model has {} inputs and {} outputs; exactly one of each is supported",
            inputs.len(),
            graph.output.len()
        )));
    }
    let mut producer = HashMap::new();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            if producer.insert(o.as_str(), i).is_some() {
                return Err(graph_err(format!("tensor '{o}' is produced twice")));
            }
        }
        for t in &n.input {
            *uses.entry(t.as_str()).or_default() += 1;
        }
    }
    let output = graph.output[0].name.as_str();
    *uses.entry(output).or_default() += 1;
    let g = Graph {
        path,
        nodes: &graph.node,
        producer,
        uses,
        inits,
        input: inputs[0],
    };
    // Identity nodes at the end.
    let mut tail = Vec::new();
    let mut y = output;
    while let Some(&i) = g.producer.get(y) {
        if g.nodes[i].op_type != "Identity" {
            break;
        }
        if g.nodes[i].input.len() != 1 || g.uses.get(y).copied() != Some(1) {
            return Err(g.err(i, "an Identity with a shared input or output"));
        }
        tail.push(i);
        y = g.nodes[i].input[0].as_str();
    }
    // The Where chain, last module first.
    let mut matched = Vec::new();
    let mut module_nodes: HashSet<usize> = tail.iter().copied().collect();
    let mut x_tensor: Option<&str> = None;
    while let Some(&w) = g.producer.get(y) {
        if g.nodes[w].op_type != "Where" {
            break;
        }
        let m = match_module(&g, w, &mut x_tensor)?;
        module_nodes.extend(m.nodes.iter().copied());
        y = g.nodes[w].input[2].as_str();
        matched.push(m);
        // The previous output feeds this module's Add and Where only (and, for the base
        // output, the label indicators' Gathers).
        let gathers: usize = matched
            .iter()
            .filter(|m| m.label.as_ref().is_some_and(|(_, b, _)| b == y))
            .map(|m| {
                m.nodes
                    .iter()
                    .filter(|&&i| g.nodes[i].op_type == "Gather")
                    .count()
            })
            .sum();
        if g.uses.get(y).copied() != Some(2 + gathers) {
            let at = g.producer.get(y).copied().unwrap_or(w);
            return Err(g.err(
                at,
                format!(
                    "'{y}' is used outside the indicator pattern of node '{}'",
                    g.name(w)
                ),
            ));
        }
    }
    matched.reverse();
    // Label indicators read the base output: the tensor the chain starts from.
    if let Some((i, m)) = matched
        .iter()
        .enumerate()
        .find(|(_, m)| m.label.as_ref().is_some_and(|(_, b, _)| b != y))
    {
        let at = m.nodes.first().copied().unwrap_or(0);
        return Err(g.err(
            at,
            format!("label indicator of module {i} does not read the base output '{y}'"),
        ));
    }
    if matched.is_empty() {
        let at = g
            .nodes
            .iter()
            .position(|n| PATTERN_OPS.contains(&n.op_type.as_str()))
            .unwrap_or(0);
        return Err(g.err(
            at,
            "this operator is only supported inside the patch-modules pattern \
             (Where at the graph output), which this graph does not end with",
        ));
    }
    // The base part: every ancestor of y.
    let mut base_nodes = HashSet::new();
    let mut stack = vec![y];
    while let Some(t) = stack.pop() {
        if let Some(&i) = g.producer.get(t)
            && base_nodes.insert(i)
        {
            if module_nodes.contains(&i) {
                return Err(g.err(i, "a patch-module node also feeds the base network"));
            }
            stack.extend(g.nodes[i].input.iter().map(String::as_str));
        }
    }
    // The module input may be the base's own Flatten of the input, or a Flatten of its own.
    let x_node = x_tensor.and_then(|x| g.producer.get(x).copied());
    for (i, n) in g.nodes.iter().enumerate() {
        if !base_nodes.contains(&i) && !module_nodes.contains(&i) && Some(i) != x_node {
            return Err(g.err(
                i,
                format!(
                    "node is neither part of the base network nor of a patch module \
                     (output '{}')",
                    n.output.first().map_or("", String::as_str)
                ),
            ));
        }
    }
    // The base network as its own ONNX model, imported by the straight-line importer.
    let mut base_graph = graph.clone();
    base_graph.node = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| base_nodes.contains(i))
        .map(|(_, n)| n.clone())
        .collect();
    let used: HashSet<&str> = base_graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    base_graph
        .initializer
        .retain(|t| used.contains(t.name.as_str()));
    base_graph
        .input
        .retain(|v| !g.inits.contains_key(v.name.as_str()) || used.contains(v.name.as_str()));
    base_graph.output = vec![pb::ValueInfoProto {
        name: y.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut base_model = proto;
    base_model.graph = Some(base_graph);
    let base = super::onnx::load_bytes(path, &base_model.encode_to_vec())?;
    let (n, n_out) = (base.input_dim(), base.output_dim());
    let mut entries = Vec::new();
    for (k, m) in matched.into_iter().enumerate() {
        let first_in = m.layers.first().map_or(0, |d| d.in_dim);
        let last_out = m.layers.last().map_or(0, |d| d.out_dim);
        if let Some(((top, second), _, covered)) = m.label {
            // The rule must compare every output (the exporter's parts always do).
            if first_in != n || last_out != n_out || covered != n_out {
                return Err(graph_err(format!(
                    "patch module {k}: label rule {top}/{second:?}, module {first_in} -> \
                     {last_out}; the base network is {n} -> {n_out}"
                )));
            }
            let ind = match second {
                None => Indicator::Label(top),
                Some(s) => Indicator::LabelPair(top, s),
            };
            entries.push((
                ind,
                Module {
                    layers: m.layers,
                    feature_layer: 0,
                },
            ));
            continue;
        }
        let feature_layer = match &m.feature {
            Some(f) => feature_layer_of(&g, &base_nodes, &base, f, k)?,
            None => 0,
        };
        let reads = crate::repair::patchmodules::feature_width(&base, feature_layer)
            .map_err(|e| graph_err(format!("patch module {k}: {e}")))?;
        if m.lower.len() != n || first_in != reads || last_out != n_out {
            return Err(graph_err(format!(
                "patch module {k}: box of {} values, module {first_in} -> {last_out} at \
                 feature layer {feature_layer} ({reads} values); the base network is \
                 {n} -> {n_out}",
                m.lower.len()
            )));
        }
        entries.push((
            Indicator::Box(BoxBounds::new(m.lower, m.upper)),
            Module {
                layers: m.layers,
                feature_layer,
            },
        ));
    }
    Ok(Piecewise {
        base,
        modules: PatchModules { entries },
    })
}

/// The feature layer K of a module whose Flatten reads `tensor`: `tensor` must be the
/// output of a `Relu` node of the base part, K counts the activation nodes from the input
/// up to it, and the imported base must have as many activation layers as the base part
/// has activation nodes (so K names the same layer in the host network).
fn feature_layer_of(
    g: &Graph<'_>,
    base_nodes: &HashSet<usize>,
    base: &Network,
    tensor: &str,
    module: usize,
) -> Result<usize, ImportError> {
    use crate::export::onnx::ACTIVATION_OPS;
    let at = g.producer.get(tensor).copied();
    let Some(p) = at.filter(|p| base_nodes.contains(p) && g.nodes[*p].op_type == "Relu") else {
        let i = at.unwrap_or(0);
        return Err(g.err(
            i,
            format!(
                "patch module {module} reads '{tensor}', which is not the output of a Relu of \
                 the base network"
            ),
        ));
    };
    // Ancestors of the Relu (itself included) that are activations.
    let mut seen = HashSet::new();
    let mut stack = vec![p];
    let mut k = 0;
    while let Some(i) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        if ACTIVATION_OPS.contains(&g.nodes[i].op_type.as_str()) {
            k += 1;
        }
        stack.extend(
            g.nodes[i]
                .input
                .iter()
                .filter_map(|t| g.producer.get(t.as_str()).copied()),
        );
    }
    let in_graph = base_nodes
        .iter()
        .filter(|&&i| ACTIVATION_OPS.contains(&g.nodes[i].op_type.as_str()))
        .count();
    let in_base = base.layers.iter().filter(|l| l.is_activation()).count();
    if in_graph != in_base {
        return Err(g.err(
            p,
            format!(
                "patch module {module} reads a feature layer, but the base graph's {in_graph} \
                 activation node(s) import as {in_base} activation layer(s)"
            ),
        ));
    }
    Ok(k)
}

/// Match one `Where` node's module (see the module docs). `x` is the module input tensor,
/// shared by all modules.
fn match_module<'a>(
    g: &Graph<'a>,
    w: usize,
    x: &mut Option<&'a str>,
) -> Result<Matched, ImportError> {
    let where_node = &g.nodes[w];
    if where_node.input.len() != 3 || where_node.output.len() != 1 {
        return Err(g.err(w, "Where needs 3 inputs and 1 output"));
    }
    let prev = where_node.input[2].as_str();
    let mut nodes = vec![w];
    // Active branch: Add(prev, P(x)), either order.
    let add = g.expect(&where_node.input[1], "Add", 2, 1, w)?;
    nodes.push(add);
    let a = &g.nodes[add].input;
    let h = match (a[0].as_str(), a[1].as_str()) {
        (p, h) if p == prev && h != prev => h,
        (h, p) if p == prev && h != prev => h,
        _ => {
            return Err(g.err(
                add,
                format!("should add a module's output to '{prev}', the Where's else-branch"),
            ));
        }
    };
    // The module: Gemm (Relu Gemm)*, backwards.
    let mut layers = Vec::new();
    let mut t = h;
    let x_in = loop {
        let gemm = g.expect(t, "Gemm", 3, 1, add)?;
        nodes.push(gemm);
        g.only_attrs(gemm, &["transB", "transA", "alpha", "beta"])?;
        let node = &g.nodes[gemm];
        let attr_f = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.f);
        if g.int_attr(gemm, "transB") != Some(1)
            || g.int_attr(gemm, "transA").unwrap_or(0) != 0
            || attr_f("alpha").unwrap_or(1.0) != 1.0
            || attr_f("beta").unwrap_or(1.0) != 1.0
        {
            return Err(g.err(gemm, "a module Gemm must be y = x W^T + b (transB = 1)"));
        }
        let (wv, wd) = g.constant(&node.input[1], gemm)?;
        let (bv, bd) = g.constant(&node.input[2], gemm)?;
        let (out_dim, in_dim) = match wd[..] {
            [o, i] => (o, i),
            _ => return Err(g.err(gemm, format!("weight of shape {wd:?}, expected 2-D"))),
        };
        if bd.iter().product::<usize>() != out_dim || bd.iter().filter(|&&d| d > 1).count() > 1 {
            return Err(g.err(gemm, format!("bias of shape {bd:?} for {out_dim} outputs")));
        }
        if wv.iter().chain(&bv).any(|v| !v.is_finite()) {
            return Err(g.err(gemm, "a weight or bias is not finite"));
        }
        layers.push(Dense::new(in_dim, out_dim, wv, bv).map_err(|e| g.err(gemm, e))?);
        let input = node.input[0].as_str();
        match g.producer.get(input) {
            Some(&r) if g.nodes[r].op_type == "Relu" => {
                let r = g.expect(input, "Relu", 1, 1, gemm)?;
                nodes.push(r);
                t = g.nodes[r].input[0].as_str();
            }
            _ => break input,
        }
    };
    layers.reverse();
    for pair in layers.windows(2) {
        if pair[0].out_dim != pair[1].in_dim {
            return Err(g.err(add, "module layer widths do not chain"));
        }
    }
    // A label indicator (Greater/GreaterOrEqual on Gathers of the base output)?
    if let Some((rule, base_t, covered, label_nodes)) = match_label_rule(g, w)? {
        nodes.extend(label_nodes);
        if let Some(prev_x) = x
            && *prev_x != x_in
        {
            return Err(g.err(w, "the modules read different input tensors"));
        }
        check_module_input(g, x_in, w)?;
        *x = Some(x_in);
        return Ok(Matched {
            lower: Vec::new(),
            upper: Vec::new(),
            layers,
            label: Some((rule, base_t, covered)),
            nodes,
            feature: None,
        });
    }
    // The indicator: Cast<bool>(ReduceMin(Cast<float>(And(x >= lower, x <= upper)))).
    let to_bool = match_cast_to_bool(g, &where_node.input[0], w)?;
    let (min, to_float) = match_all_of(g, &g.nodes[to_bool].input[0], to_bool)?;
    let and = g.expect(&g.nodes[to_float].input[0], "And", 2, 1, to_float)?;
    nodes.extend([to_bool, min, to_float, and]);
    let ai = &g.nodes[and].input;
    let op_of = |t: &str| {
        g.producer
            .get(t)
            .map_or("a graph input", |&p| g.nodes[p].op_type.as_str())
    };
    let (ge_t, le_t) = match (op_of(&ai[0]), op_of(&ai[1])) {
        ("GreaterOrEqual", "LessOrEqual") => (&ai[0], &ai[1]),
        ("LessOrEqual", "GreaterOrEqual") => (&ai[1], &ai[0]),
        (a, b) => {
            return Err(g.err(
                and,
                format!("And must combine GreaterOrEqual and LessOrEqual, not {a} and {b}"),
            ));
        }
    };
    let ge = g.expect(ge_t, "GreaterOrEqual", 2, 1, and)?;
    let le = g.expect(le_t, "LessOrEqual", 2, 1, and)?;
    nodes.extend([ge, le]);
    let (ge_in, le_in) = (&g.nodes[ge].input, &g.nodes[le].input);
    // A module at a feature layer reads Flatten(axis = 1) of a base tensor (checked to be
    // an activation once the base part is known); its box still compares x.
    let mut feature = None;
    if ge_in[0] != x_in {
        let fl = g
            .producer
            .get(x_in)
            .copied()
            .filter(|&f| is_flatten_axis1(g, f) && g.nodes[f].output.len() == 1);
        let Some(f) = fl else {
            return Err(g.err(
                ge,
                format!(
                    "the module input '{x_in}' must be the compared input or Flatten(axis = 1) \
                     of a base activation"
                ),
            ));
        };
        nodes.push(f);
        feature = Some(g.nodes[f].input[0].clone());
    }
    let x_in = ge_in[0].as_str();
    if le_in[0] != x_in {
        return Err(g.err(
            ge,
            format!("the box must compare one input '{x_in}' (x >= lower, x <= upper)"),
        ));
    }
    let (lower, ld) = g.constant(&ge_in[1], ge)?;
    let (upper, ud) = g.constant(&le_in[1], le)?;
    let n = lower.len();
    if ld != ud || upper.len() != n || !matches!(ld[..], [1, _] | [_]) {
        return Err(g.err(ge, format!("box corners of shapes {ld:?} and {ud:?}")));
    }
    if lower.iter().chain(&upper).any(|v| v.is_nan()) {
        return Err(g.err(ge, "a box corner is NaN"));
    }
    check_module_input(g, x_in, ge)?;
    match x {
        Some(prev_x) if *prev_x != x_in => {
            return Err(g.err(ge, "the modules read different input tensors"));
        }
        _ => *x = Some(g.nodes[ge].input[0].as_str()),
    }
    Ok(Matched {
        lower,
        upper,
        layers,
        label: None,
        nodes,
        feature,
    })
}

/// The indicator's last node, `Cast<bool>`, producing `tensor` (read by node `at`).
fn match_cast_to_bool(g: &Graph<'_>, tensor: &str, at: usize) -> Result<usize, ImportError> {
    let to_bool = g.expect(tensor, "Cast", 1, 1, at)?;
    g.only_attrs(to_bool, &["to"])?;
    if g.int_attr(to_bool, "to") != Some(pb::tensor_proto::DataType::Bool as i64) {
        return Err(g.err(to_bool, "the indicator must be cast to bool"));
    }
    Ok(to_bool)
}

/// "All comparisons hold", `ReduceMin<axes = [1], keepdims = 1>(Cast<float>(c))`,
/// producing `tensor` (read by node `at`), in both indicator forms: `(ReduceMin, Cast)`.
fn match_all_of(g: &Graph<'_>, tensor: &str, at: usize) -> Result<(usize, usize), ImportError> {
    let min = g.expect(tensor, "ReduceMin", 1, 1, at)?;
    g.only_attrs(min, &["axes", "keepdims"])?;
    let axes: Vec<i64> = g.nodes[min]
        .attribute
        .iter()
        .find(|a| a.name == "axes")
        .map(|a| a.ints.clone())
        .unwrap_or_default();
    if axes != [1] || g.int_attr(min, "keepdims").unwrap_or(1) != 1 {
        return Err(g.err(min, "the indicator must reduce over axis 1, keeping it"));
    }
    let to_float = g.expect(&g.nodes[min].input[0], "Cast", 1, 1, min)?;
    g.only_attrs(to_float, &["to"])?;
    if g.int_attr(to_float, "to") != Some(pb::tensor_proto::DataType::Float as i64) {
        return Err(g.err(to_float, "the comparisons must be cast to float"));
    }
    Ok((min, to_float))
}

/// Node `f` is `Flatten(axis = 1)` of one input.
fn is_flatten_axis1(g: &Graph<'_>, f: usize) -> bool {
    let n = &g.nodes[f];
    n.op_type == "Flatten"
        && n.input.len() == 1
        && g.only_attrs(f, &["axis"]).is_ok()
        && g.int_attr(f, "axis").unwrap_or(1) == 1
}

/// The module input must be the graph input or `Flatten(axis = 1)` of it.
fn check_module_input(g: &Graph<'_>, x_in: &str, at: usize) -> Result<(), ImportError> {
    let ok = x_in == g.input
        || g.producer
            .get(x_in)
            .is_some_and(|&f| is_flatten_axis1(g, f) && g.nodes[f].input[0] == g.input);
    if ok {
        Ok(())
    } else {
        Err(g.err(
            at,
            format!("the module input '{x_in}' must be the graph input or Flatten(axis = 1) of it"),
        ))
    }
}

/// The label-indicator condition of `Where` node `w`, as
/// [`crate::export::onnx::to_onnx_bytes_with_label_modules`] writes it:
/// `Cast<bool>(part (Mul part)?)`, each part
/// `ReduceMin<axes=[1], keepdims=1>(Cast<float>(Cmp(Gather<axis=1>(B, [s]),
/// Gather<axis=1>(B, others))))` with `Cmp` `Greater` or `GreaterOrEqual`, `B` the
/// base output. Only the exact part lists of a label (`l > 0..l`, `l >= l+1..n`) or a pair
/// (`l0 > l1`, `l1 > the others`) are accepted; `None` when the condition is not a label
/// rule at all (a box), an error when it looks like one but differs.
#[allow(clippy::type_complexity)]
fn match_label_rule(
    g: &Graph<'_>,
    w: usize,
) -> Result<Option<((usize, Option<usize>), String, usize, Vec<usize>)>, ImportError> {
    let cond = g.nodes[w].input[0].as_str();
    let Some(&to_bool) = g.producer.get(cond) else {
        return Ok(None);
    };
    let inner = g.nodes[to_bool]
        .input
        .first()
        .map(String::as_str)
        .unwrap_or("");
    let Some(&top) = g.producer.get(inner) else {
        return Ok(None);
    };
    // Part roots: the Mul's inputs, or the single ReduceMin.
    let mut nodes = Vec::new();
    let roots: Vec<String> = if g.nodes[top].op_type == "Mul" {
        let mul = g.expect(inner, "Mul", 2, 1, to_bool)?;
        nodes.push(mul);
        g.nodes[mul].input.clone()
    } else {
        vec![inner.to_string()]
    };
    // A label rule compares Gathers of the base output (a box compares the input).
    let is_label = roots.iter().all(|r| {
        g.producer
            .get(r.as_str())
            .and_then(|&m| g.nodes[m].input.first())
            .and_then(|c| g.producer.get(c.as_str()))
            .and_then(|&c| g.nodes[c].input.first())
            .and_then(|t| g.producer.get(t.as_str()))
            .and_then(|&k| g.nodes[k].input.first())
            .and_then(|t| g.producer.get(t.as_str()))
            .is_some_and(|&k| g.nodes[k].op_type == "Gather")
    });
    if !is_label {
        return Ok(None);
    }
    let to_bool = match_cast_to_bool(g, cond, w)?;
    nodes.push(to_bool);
    let mut base_t: Option<String> = None;
    // (subject, others, strict)
    let mut parts: Vec<(usize, Vec<usize>, bool)> = Vec::new();
    for r in &roots {
        let at = *nodes.first().unwrap_or(&to_bool);
        let (min, to_float) = match_all_of(g, r, at)?;
        let cmp_t = g.nodes[to_float].input[0].as_str();
        let strict = g
            .producer
            .get(cmp_t)
            .is_some_and(|&c| g.nodes[c].op_type == "Greater");
        let cmp = g.expect(
            cmp_t,
            if strict { "Greater" } else { "GreaterOrEqual" },
            2,
            1,
            to_float,
        )?;
        g.only_attrs(cmp, &[])?;
        let mut idx = Vec::new();
        for t in &g.nodes[cmp].input {
            let gather = g.expect(t, "Gather", 2, 1, cmp)?;
            g.only_attrs(gather, &["axis"])?;
            if g.int_attr(gather, "axis") != Some(1) {
                return Err(g.err(gather, "a label Gather must read axis 1"));
            }
            let src = g.nodes[gather].input[0].clone();
            match &base_t {
                Some(b) if *b != src => {
                    return Err(g.err(gather, format!("reads '{src}', not the base output '{b}'")));
                }
                _ => base_t = Some(src),
            }
            idx.push(int_constant(g, &g.nodes[gather].input[1], gather)?);
            nodes.extend([gather]);
        }
        nodes.extend([min, to_float, cmp]);
        let [subject, others] = &idx[..] else {
            return Err(g.err(cmp, "a comparison needs two inputs"));
        };
        let [s] = subject[..] else {
            return Err(g.err(cmp, "the compared label must be one index"));
        };
        parts.push((s, others.clone(), strict));
    }
    let base_t = base_t.unwrap_or_default();
    // Recover the rule and demand the exact parts the exporter writes for it.
    let err = || {
        g.err(
            w,
            format!("label indicator parts {parts:?} are neither a label nor a pair rule"),
        )
    };
    let Some(&(first, _, first_strict)) = parts.first() else {
        return Err(err());
    };
    let all_ids: Vec<usize> = parts
        .iter()
        .flat_map(|(s, o, _)| o.iter().copied().chain([*s]))
        .collect();
    let n_out = all_ids.iter().max().map_or(0, |m| m + 1);
    let expected = |rule: (usize, Option<usize>)| -> Vec<(usize, Vec<usize>, bool)> {
        let (top, second) = rule;
        let mut v = match second {
            None => vec![
                (top, (0..top).collect(), true),
                (top, (top + 1..n_out).collect(), false),
            ],
            Some(s) => vec![
                (top, vec![s], true),
                (
                    s,
                    (0..n_out).filter(|&j| j != top && j != s).collect(),
                    true,
                ),
            ],
        };
        v.retain(|(_, o, _)| !o.is_empty());
        v
    };
    let candidates = [
        (first, None),
        (
            first,
            parts
                .first()
                .and_then(|(_, o, _)| o.first().copied())
                .filter(|_| first_strict),
        ),
    ];
    for rule in candidates {
        if rule.1 == Some(rule.0) {
            continue;
        }
        if expected(rule) == parts {
            return Ok(Some((rule, base_t, n_out, nodes)));
        }
    }
    Err(err())
}

/// A 1-D int64 initializer's values as indices.
fn int_constant(g: &Graph<'_>, tensor: &str, at: usize) -> Result<Vec<usize>, ImportError> {
    let t = g
        .inits
        .get(tensor)
        .ok_or_else(|| g.err(at, format!("'{tensor}' should be a constant (initializer)")))?;
    if t.data_type != pb::tensor_proto::DataType::Int64 as i32 || t.dims.len() != 1 {
        return Err(g.err(at, format!("constant '{tensor}' is not a 1-D int64 tensor")));
    }
    let count = usize::try_from(t.dims[0]).map_err(|_| g.err(at, "negative dimension"))?;
    let raw: Vec<i64> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != 8 * count {
            return Err(g.err(at, format!("constant '{tensor}' has the wrong byte count")));
        }
        t.raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    } else {
        if t.int64_data.len() != count {
            return Err(g.err(at, format!("constant '{tensor}' has the wrong value count")));
        }
        t.int64_data.clone()
    };
    raw.into_iter()
        .map(|v| usize::try_from(v).map_err(|_| g.err(at, format!("negative index {v}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::onnx::{OnnxModule, to_onnx_bytes_with_modules};
    use crate::model::Layer;

    fn base() -> Network {
        let d1 = Dense::new(
            3,
            4,
            (0..12).map(|i| (i as f64 * 0.7).sin()).collect(),
            vec![0.1, -0.2, 0.3, 0.0],
        )
        .unwrap();
        let d2 = Dense::new(
            4,
            2,
            (0..8).map(|i| (i as f64 * 1.3).cos()).collect(),
            vec![0.5, -0.5],
        )
        .unwrap();
        Network::new(
            vec![3],
            vec![Layer::Dense(d1), Layer::Relu, Layer::Dense(d2)],
        )
        .unwrap()
    }

    fn module(seed: f64) -> Module {
        Module {
            feature_layer: 0,
            layers: vec![
                Dense::new(
                    3,
                    2,
                    (0..6)
                        .map(|i| (i as f64 + seed).sin() as f32 as f64)
                        .collect(),
                    vec![0.25, -0.125],
                )
                .unwrap(),
                Dense::new(2, 2, vec![1.0, -0.5, 0.75, 2.0], vec![0.0, 1.5]).unwrap(),
            ],
        }
    }

    fn exported() -> (Network, PatchModules, Vec<u8>) {
        let net = base();
        let modules = PatchModules {
            entries: vec![
                (
                    Indicator::Box(BoxBounds::new(vec![-1.0, -1.0, 0.0], vec![0.5, 1.0, 1.0])),
                    module(0.0),
                ),
                (
                    Indicator::Box(BoxBounds::new(vec![0.0, -0.5, -1.0], vec![1.0, 0.5, 0.25])),
                    module(2.0),
                ),
            ],
        };
        let bytes = export(&net, &modules);
        (net, modules, bytes)
    }

    /// `net` with box-indicator `modules`, exported over a `[1, 3]` input.
    fn export(net: &Network, modules: &PatchModules) -> Vec<u8> {
        let list: Vec<OnnxModule<'_>> = modules
            .entries
            .iter()
            .map(|(ind, m)| {
                let Indicator::Box(b) = ind else {
                    unreachable!()
                };
                OnnxModule {
                    lower: &b.lower,
                    upper: &b.upper,
                    layers: &m.layers,
                    feature_layer: m.feature_layer,
                }
            })
            .collect();
        to_onnx_bytes_with_modules(net, Some(&[1, 3]), &list).unwrap()
    }

    /// `path` reads back as a piecewise model with exactly `modules`, evaluating as
    /// `modules.eval` on `net` at 50 inputs.
    fn assert_reads_back(path: &std::path::Path, net: &Network, modules: &PatchModules) {
        let super::super::Model::Piecewise(pw) = super::super::load_model(path).unwrap() else {
            panic!("not read as piecewise")
        };
        assert_eq!(&pw.modules, modules);
        for k in 0..50 {
            let x: Vec<f64> = (0..3).map(|j| ((k * 3 + j) as f64 * 0.37).sin()).collect();
            let (a, b) = (pw.forward(&x), modules.eval(net, &x));
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() < 1e-5, "{a:?} {b:?}");
            }
        }
    }

    fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "prorepair-piecewise-{}-{name}.onnx",
            std::process::id()
        ));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn the_exported_graph_reads_back_as_the_same_piecewise_model() {
        let (net, modules, bytes) = exported();
        let path = write("roundtrip", &bytes);
        assert_reads_back(&path, &net, &modules);
        // The straight-line importer refuses it, naming the file and what it is.
        let err = super::super::load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("a patch-modules graph"), "{err}");
        // A plain network stays a plain network.
        let plain = write(
            "plain",
            &crate::export::to_onnx_bytes(&net, Some(&[1, 3])).unwrap(),
        );
        assert!(matches!(
            super::super::load_model(&plain).unwrap(),
            super::super::Model::Network(_)
        ));
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(plain);
    }

    /// An edit of the exported graph.
    type Edit = Box<dyn Fn(&mut pb::GraphProto)>;

    /// Changes to the pattern are refused with the file and the node named.
    #[test]
    fn anything_but_the_exact_pattern_is_a_clear_error() {
        let (_, _, bytes) = exported();
        let cases: Vec<(&str, Edit)> = vec![
            (
                "pm0_and",
                Box::new(|g| {
                    let n = g.node.iter_mut().find(|n| n.name == "pm0_ge").unwrap();
                    n.op_type = "Greater".into();
                }),
            ),
            (
                "pm1_all",
                Box::new(|g| {
                    let n = g.node.iter_mut().find(|n| n.name == "pm1_all").unwrap();
                    n.attribute
                        .iter_mut()
                        .find(|a| a.name == "axes")
                        .unwrap()
                        .ints = vec![0];
                }),
            ),
            (
                "pm0_dense0",
                Box::new(|g| {
                    let n = g.node.iter_mut().find(|n| n.name == "pm0_dense0").unwrap();
                    n.attribute.clear();
                }),
            ),
            (
                "pm1_cond",
                Box::new(|g| {
                    // A node that also reads the indicator.
                    g.node.push(pb::NodeProto {
                        op_type: "Identity".into(),
                        name: "extra".into(),
                        input: vec!["pm1_cond".into()],
                        output: vec!["extra_out".into()],
                        ..Default::default()
                    });
                }),
            ),
            (
                "pm1_ge",
                Box::new(|g| {
                    // The second module compares the base output instead of the input.
                    let n = g.node.iter_mut().find(|n| n.name == "pm1_ge").unwrap();
                    n.input[0] = "pm_base".into();
                }),
            ),
        ];
        for (k, (node, edit)) in cases.iter().enumerate() {
            let mut proto = pb::ModelProto::decode(bytes.as_slice()).unwrap();
            edit(proto.graph.as_mut().unwrap());
            let path = write(&format!("bad{k}"), &proto.encode_to_vec());
            let err = super::super::load_model(&path).unwrap_err().to_string();
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            assert!(err.contains("patch-modules graph"), "{node}: {err}");
            assert!(err.contains(&format!("node '{node}'")), "{node}: {err}");
            let _ = std::fs::remove_file(path);
        }
    }

    /// A module at feature layer 1 (the base's ReLU, 4 values) next to an input module:
    /// read back with its layer; a feature Flatten that reads anything but a base Relu
    /// output is refused, naming the node.
    #[test]
    fn feature_layer_modules_read_back_and_nothing_looser() {
        let net = base();
        let feature = Module {
            feature_layer: 1,
            layers: vec![
                Dense::new(
                    4,
                    2,
                    (0..8)
                        .map(|i| (i as f64 * 0.3).cos() as f32 as f64)
                        .collect(),
                    vec![0.5, -1.0],
                )
                .unwrap(),
            ],
        };
        let modules = PatchModules {
            entries: vec![
                (
                    Indicator::Box(BoxBounds::new(vec![-1.0, -1.0, 0.0], vec![0.5, 1.0, 1.0])),
                    feature,
                ),
                (
                    Indicator::Box(BoxBounds::new(vec![0.75, -0.5, -1.0], vec![1.0, 0.5, 0.25])),
                    module(2.0),
                ),
            ],
        };
        let bytes = export(&net, &modules);
        let path = write("feature", &bytes);
        assert_reads_back(&path, &net, &modules);
        // The feature Flatten reading the base's first Gemm (before the ReLU) instead.
        let mut proto = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let g = proto.graph.as_mut().unwrap();
        let gemm = g.node.iter().find(|n| n.op_type == "Gemm").unwrap().output[0].clone();
        g.node.iter_mut().find(|n| n.name == "pm_h1").unwrap().input[0] = gemm;
        let bad = write("feature-bad", &proto.encode_to_vec());
        let err = super::super::load_model(&bad).unwrap_err().to_string();
        assert!(err.contains("not the output of a Relu"), "{err}");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(bad);
    }
}
