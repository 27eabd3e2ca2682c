//! ONNX import through tract-onnx, and tract as the reference evaluator.
//!
//! [`load`] walks tract's TYPED graph (after `into_typed`, before any decluttering),
//! following the single data tensor from the input to the output:
//!
//! - `EinSum` (tract's form of `MatMul` and `Gemm`, either operand order, any
//!   transposition) with one constant operand becomes [`Layer::Dense`];
//! - `Add`/`Sub`/`Mul`/`Div` by constants (Gemm biases, input normalisation, BatchNorm,
//!   which tract expands to `Mul`+`Add`) are folded into the preceding Dense/Conv when
//!   one produced the tensor, else into the next one; an affine map with nothing to fold
//!   into becomes a diagonal Dense (vectors) or 1x1 Conv (images, per-channel constants);
//! - `Max` with a constant 0 is ReLU; `Sigmoid`, `Tanh`, `LeakyRelu` map one to one;
//!   exact GELU is recognised as the sub-graph `x * 0.5 * (1 + erf(x / sqrt 2))` (any
//!   arrangement of it: the sub-graph is evaluated at probe points and compared), which
//!   is also what tract makes of an ONNX `Gelu` op;
//! - `Conv` (2-D, OIHW, any padding, strides; groups or dilation other than 1 are an
//!   error), `MaxPool`, `AveragePool` (tract's `SumPool` with normalisation);
//! - reshapes (`Flatten`, `Reshape`, axis insertion/removal) that keep the row-major
//!   order; a reshape of an image to a vector becomes [`Layer::Flatten`].
//!
//! Anything else is an [`ImportError::UnsupportedOperator`] naming the operator and node.
//! tract errors (a truncated or non-ONNX file) become [`ImportError::InvalidOnnx`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{
    Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool,
};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::{DataFormat, LeakyRelu};
use tract_onnx::tract_hir::infer::Factoid;

use super::ImportError;
use crate::model::{Conv2d, Dense, Layer, Network, Pool2d};

/// Largest dense matrix (entries) an `EinSum` may expand to.
const MAX_DENSE_ENTRIES: usize = 1 << 28;
/// Largest element-wise sub-graph searched for a known activation pattern.
const MAX_REGION_NODES: usize = 32;

/// Import an ONNX file into the host IR (f64 parameters; see the module doc for the
/// supported operators and the input shape convention of [`super`]).
pub fn load(path: &Path) -> Result<Network, ImportError> {
    let parsed = typed_model(path)?;
    Importer::new(path, &parsed.model, &parsed.onnx_ops)?.run()
}

/// [`load`] on ONNX bytes already in memory; `path` names them in errors (the
/// patch-modules reader imports the base part of a graph this way).
pub(crate) fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Network, ImportError> {
    let parsed = typed_model_from(path, bytes)?;
    Importer::new(path, &parsed.model, &parsed.onnx_ops)?.run()
}

/// ONNX operators the importer can map, directly or after tract's translation, plus
/// the structural operators that only act on constants and shapes. Any other operator
/// is reported by its ONNX name before tract runs.
const KNOWN_ONNX_OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Gelu",
    "Conv",
    "BatchNormalization",
    "AveragePool",
    "MaxPool",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Constant",
    "Cast",
    "Shape",
    "Gather",
    "Concat",
    "Slice",
    "ConstantOfShape",
    "Transpose",
    "Pow",
    "Max",
    "Sqrt",
];

/// A parsed ONNX file: tract's typed graph, and the ONNX operator of each named node
/// (tract names nodes after the ONNX node, or its first output when unnamed).
struct Parsed {
    model: TypedModel,
    onnx_ops: HashMap<String, String>,
}

/// Parse an ONNX file into tract's typed graph, with every error named after the file.
fn typed_model(path: &Path) -> Result<Parsed, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    typed_model_from(path, &bytes)
}

/// [`typed_model`] on bytes in memory, named `path` in errors.
fn typed_model_from(path: &Path, bytes: &[u8]) -> Result<Parsed, ImportError> {
    let invalid = |e: TractError| ImportError::InvalidOnnx {
        path: path.to_path_buf(),
        message: one_line(&e),
    };
    let onnx = tract_onnx::onnx();
    // tract may panic on some malformed protobufs; a malformed file must stay an error.
    let caught = |what: &str| ImportError::InvalidOnnx {
        path: path.to_path_buf(),
        message: format!("the ONNX reader failed while {what}"),
    };
    let proto = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        onnx.proto_model_for_read(&mut &bytes[..])
    }))
    .map_err(|_| caught("decoding the protobuf"))?
    .map_err(invalid)?;
    let Some(graph) = proto.graph.as_ref() else {
        return Err(ImportError::InvalidOnnx {
            path: path.to_path_buf(),
            message: "the file holds no graph".into(),
        });
    };
    let mut onnx_ops = HashMap::new();
    for node in &graph.node {
        let name = if !node.name.is_empty() {
            node.name.clone()
        } else {
            node.output.first().cloned().unwrap_or_default()
        };
        if super::piecewise::PATTERN_OPS.contains(&node.op_type.as_str()) {
            // Say what the file is: the commands that read it take the base model.
            return Err(ImportError::UnsupportedUsage {
                path: path.to_path_buf(),
                op: node.op_type.clone(),
                node: name,
                problem: "a patch-modules graph (base + indicator + modules, as `apply \
                          --onnx-out` writes it) is read by `verify` and `eval` only; \
                          give the base model and the patch here"
                    .into(),
            });
        }
        if !KNOWN_ONNX_OPS.contains(&node.op_type.as_str()) {
            return Err(ImportError::UnsupportedOperator {
                path: path.to_path_buf(),
                op: node.op_type.clone(),
                node: name,
            });
        }
        onnx_ops.insert(name, node.op_type.clone());
    }
    let typed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> TractResult<TypedModel> {
            let mut model = onnx.model_for_proto_model(&proto)?;
            // Fix a symbolic batch dimension to 1 (our networks run on one input at a time).
            for ix in 0..model.input_outlets()?.len() {
                let fact = model.input_fact(ix)?.clone();
                let Some(dims) = fact
                    .shape
                    .dims()
                    .map(|d| d.concretize())
                    .collect::<Option<Vec<_>>>()
                else {
                    continue;
                };
                let tail: Option<Vec<usize>> =
                    dims.iter().skip(1).map(|d| d.to_usize().ok()).collect();
                if let (Some(first), Some(tail)) = (dims.first(), tail)
                    && first.to_usize().is_err()
                {
                    let shape: Vec<usize> = std::iter::once(1).chain(tail).collect();
                    let dt = fact.datum_type.concretize().unwrap_or(f32::datum_type());
                    model.set_input_fact(ix, InferenceFact::dt_shape(dt, shape))?;
                }
            }
            model.into_typed()
        },
    ))
    .map_err(|_| caught("typing the graph"))?
    .map_err(invalid)?;
    Ok(Parsed {
        model: typed,
        onnx_ops,
    })
}

/// A tract error as one line (its whole cause chain).
fn one_line(e: &TractError) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// An element-wise affine map `x -> scale * x + shift` on the current tensor (flattened).
#[derive(Clone, Debug)]
struct Affine {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

/// The state of the walk along the graph.
struct Importer<'a> {
    path: PathBuf,
    model: &'a TypedModel,
    /// The ONNX operator of each ONNX node name (for messages).
    onnx_ops: &'a HashMap<String, String>,
    /// Position of each node in the evaluation order.
    order_pos: HashMap<usize, usize>,
    order: Vec<usize>,
    /// Whether tensors carry a leading batch dimension of 1.
    has_batch: bool,
    /// The outlet holding the current tensor.
    current: OutletId,
    /// The IR shape of the network input.
    input_shape: Vec<usize>,
    /// The IR shape of the current tensor as the emitted layers produce it.
    ir_shape: Vec<usize>,
    layers: Vec<Layer>,
    /// An element-wise affine map not yet folded into a layer.
    pending: Option<Affine>,
    /// The current tensor is the direct output of the last (affine) layer, so an affine
    /// map can be folded into it.
    affine_open: bool,
}

/// What an element-wise sub-graph computes, when it is a known activation.
enum Region {
    /// A single node taking the current tensor once.
    Single(usize),
    /// A sub-graph of element-wise nodes from the current tensor to `join`.
    Elementwise { nodes: Vec<usize>, join: OutletId },
}

impl<'a> Importer<'a> {
    fn new(
        path: &Path,
        model: &'a TypedModel,
        onnx_ops: &'a HashMap<String, String>,
    ) -> Result<Self, ImportError> {
        let path = path.to_path_buf();
        let graph_err = |problem: String| ImportError::UnsupportedUsage {
            path: path.clone(),
            op: "graph".into(),
            node: "-".into(),
            problem,
        };
        let invalid = |e: TractError| ImportError::InvalidOnnx {
            path: path.clone(),
            message: one_line(&e),
        };
        let inputs = model.input_outlets().map_err(invalid)?;
        let outputs = model.output_outlets().map_err(invalid)?;
        if inputs.len() != 1 || outputs.len() != 1 {
            return Err(graph_err(format!(
                "the model has {} inputs and {} outputs; exactly one of each is supported",
                inputs.len(),
                outputs.len()
            )));
        }
        let input = inputs[0];
        let fact = model.outlet_fact(input).map_err(invalid)?;
        let Some(shape) = fact.shape.as_concrete() else {
            return Err(graph_err(format!(
                "the input shape {:?} is not concrete",
                fact.shape
            )));
        };
        if !fact.datum_type.is_float() {
            return Err(graph_err(format!(
                "the input type {:?} is not a float type",
                fact.datum_type
            )));
        }
        let has_batch = shape.len() >= 2 && shape[0] == 1;
        let order = model.eval_order().map_err(invalid)?;
        let order_pos = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut importer = Importer {
            path,
            model,
            onnx_ops,
            order_pos,
            order,
            has_batch,
            current: input,
            input_shape: Vec::new(),
            ir_shape: Vec::new(),
            layers: Vec::new(),
            pending: None,
            affine_open: false,
        };
        let ir = importer.canonical(shape, "input")?;
        if ir.iter().product::<usize>() == 0 {
            return Err(importer.usage(input.node, "the input has no elements".into()));
        }
        importer.input_shape = ir.clone();
        importer.ir_shape = ir;
        Ok(importer)
    }

    fn node_name(&self, node: usize) -> String {
        self.model.node(node).name.clone()
    }

    /// The operator of a node: the ONNX operator it comes from when known (tract names
    /// the nodes it creates for one ONNX node `name` as `name` or `name.suffix`), else
    /// tract's name for it.
    fn op_name(&self, node: usize) -> String {
        let n = self.model.node(node);
        let onnx = std::iter::successors(Some(n.name.as_str()), |s| {
            s.rsplit_once('.').map(|(prefix, _)| prefix)
        })
        .find_map(|k| self.onnx_ops.get(k));
        match onnx {
            Some(op) if op.as_str() != n.op.name() => format!("{op} ({})", n.op.name()),
            Some(op) => op.clone(),
            None => n.op.name().to_string(),
        }
    }

    fn usage(&self, node: usize, problem: String) -> ImportError {
        ImportError::UnsupportedUsage {
            path: self.path.clone(),
            op: self.op_name(node),
            node: self.node_name(node),
            problem,
        }
    }

    fn unsupported(&self, node: usize) -> ImportError {
        ImportError::UnsupportedOperator {
            path: self.path.clone(),
            op: self.op_name(node),
            node: self.node_name(node),
        }
    }

    fn tract(&self, node: usize) -> impl Fn(TractError) -> ImportError + '_ {
        move |e| self.usage(node, one_line(&e))
    }

    /// The concrete shape of an outlet.
    fn shape_of(&self, outlet: OutletId) -> Result<Vec<usize>, ImportError> {
        let fact = self
            .model
            .outlet_fact(outlet)
            .map_err(self.tract(outlet.node))?;
        fact.shape
            .as_concrete()
            .map(<[usize]>::to_vec)
            .ok_or_else(|| self.usage(outlet.node, format!("symbolic shape {:?}", fact.shape)))
    }

    /// The constant value of an outlet, in f64, with its shape.
    fn konst(&self, outlet: OutletId) -> Option<(Vec<f64>, Vec<usize>)> {
        let t = self.konst_tensor(outlet, 0)?;
        let t64 = t.cast_to::<f64>().ok()?;
        let values: Vec<f64> = t64
            .to_plain_array_view::<f64>()
            .ok()?
            .iter()
            .copied()
            .collect();
        Some((values, t.shape().to_vec()))
    }

    /// The constant tensor of an outlet: tract's folded constant, or (tract only folds
    /// small tensors eagerly, e.g. not a reshaped 200-element bias) the node evaluated
    /// on its constant inputs.
    fn konst_tensor(&self, outlet: OutletId, depth: usize) -> Option<Arc<Tensor>> {
        let fact = self.model.outlet_fact(outlet).ok()?;
        if let Some(k) = &fact.konst {
            return Some(k.clone());
        }
        let node = self.model.node(outlet.node);
        if depth > 16 || node.inputs.is_empty() {
            return None;
        }
        let inputs: TVec<TValue> = node
            .inputs
            .iter()
            .map(|i| self.konst_tensor(*i, depth + 1).map(|t| t.into_tvalue()))
            .collect::<Option<_>>()?;
        let outputs = node.op.eval_out_of_plan(inputs).ok()??;
        outputs
            .get(outlet.slot)
            .map(|v| v.clone().into_arc_tensor())
    }

    /// The IR shape of a tract shape: a vector (at most one dimension above 1) as `[n]`,
    /// else without the batch dimension.
    fn canonical(&self, shape: &[usize], node_for_errors: &str) -> Result<Vec<usize>, ImportError> {
        if shape.iter().filter(|&&d| d > 1).count() <= 1 {
            return Ok(vec![shape.iter().product()]);
        }
        match (self.has_batch, shape.split_first()) {
            (false, _) => Ok(shape.to_vec()),
            (true, Some((1, rest))) => Ok(rest.to_vec()),
            (true, _) => Err(ImportError::UnsupportedUsage {
                path: self.path.clone(),
                op: "graph".into(),
                node: node_for_errors.into(),
                problem: format!("tensor shape {shape:?} does not keep the batch dimension of 1"),
            }),
        }
    }

    /// Walk the graph from the input to the output.
    fn run(mut self) -> Result<Network, ImportError> {
        let output = self
            .model
            .output_outlets()
            .map_err(self.tract(self.current.node))?[0];
        loop {
            if self.current == output {
                if !self.model.outlet_successors(output).is_empty() {
                    return Err(self.usage(
                        output.node,
                        "the output tensor is also used inside the graph".into(),
                    ));
                }
                break;
            }
            match self.region()? {
                Region::Single(node) => self.convert(node)?,
                Region::Elementwise { nodes, join } => {
                    self.current = self.elementwise_activation(nodes, join)?;
                }
            }
        }
        self.flush_pending(None)?;
        let out_shape = self.shape_of(output)?;
        let network = Network::new(self.input_shape.clone(), std::mem::take(&mut self.layers))
            .map_err(|source| ImportError::Model {
                path: self.path.clone(),
                source,
            })?;
        let (want, got) = (out_shape.iter().product::<usize>(), network.output_dim());
        if want != got {
            return Err(ImportError::UnsupportedUsage {
                path: self.path.clone(),
                op: "graph".into(),
                node: self.node_name(output.node),
                problem: format!(
                    "internal: the imported network has {got} outputs, the graph {want}"
                ),
            });
        }
        Ok(network)
    }

    /// The nodes that consume the current tensor, up to the point where a single tensor
    /// carries on: one node, or an element-wise sub-graph (such as GELU's).
    fn region(&self) -> Result<Region, ImportError> {
        let x = self.current;
        let outputs = self.model.output_outlets().map_err(self.tract(x.node))?;
        let consumers =
            |o: OutletId| self.model.outlet_successors(o).len() + usize::from(outputs.contains(&o));
        let successors = self.model.outlet_successors(x);
        if successors.is_empty() {
            return Err(self.usage(
                x.node,
                "this tensor is not used, yet it is not the graph output".into(),
            ));
        }
        if successors.len() == 1 {
            return Ok(Region::Single(successors[0].node));
        }
        // Follow the nodes that depend on x, in evaluation order, until one tensor is left.
        let mut remaining: HashMap<OutletId, usize> = HashMap::from([(x, consumers(x))]);
        let mut nodes = Vec::new();
        let start = self.order_pos.get(&x.node).map_or(0, |p| p + 1);
        for &n in &self.order[start..] {
            let node = self.model.node(n);
            let tainted: Vec<OutletId> = node
                .inputs
                .iter()
                .copied()
                .filter(|i| remaining.contains_key(i))
                .collect();
            if tainted.is_empty() {
                continue;
            }
            for input in &node.inputs {
                if !remaining.contains_key(input) && self.konst(*input).is_none() {
                    return Err(self.usage(
                        n,
                        "the graph is not a chain: this node combines two computed tensors".into(),
                    ));
                }
            }
            for i in &tainted {
                if let Some(c) = remaining.get_mut(i) {
                    *c = c.saturating_sub(1);
                }
            }
            if node.outputs.len() != 1 {
                return Err(self.unsupported(n));
            }
            let out = OutletId::new(n, 0);
            remaining.insert(out, consumers(out));
            nodes.push(n);
            let live: Vec<OutletId> = remaining
                .iter()
                .filter(|(_, c)| **c > 0)
                .map(|(o, _)| *o)
                .collect();
            if live == [out] {
                return Ok(Region::Elementwise { nodes, join: out });
            }
            if nodes.len() >= MAX_REGION_NODES {
                break;
            }
        }
        Err(self.usage(
            x.node,
            "the graph branches here and the branches are not a supported activation".into(),
        ))
    }

    /// The index of the non-constant input of a node (the current tensor), checking the
    /// others are constants.
    fn data_input(&self, node: usize) -> Result<usize, ImportError> {
        let n = self.model.node(node);
        let mut data = None;
        for (slot, input) in n.inputs.iter().enumerate() {
            if *input == self.current && data.is_none() {
                data = Some(slot);
            } else if self.konst(*input).is_none() {
                return Err(self.usage(
                    node,
                    format!("input {slot} is neither the data tensor nor a constant"),
                ));
            }
        }
        data.ok_or_else(|| {
            self.usage(
                node,
                "internal: node does not consume the current tensor".into(),
            )
        })
    }

    /// Convert one node consuming the current tensor.
    fn convert(&mut self, node: usize) -> Result<(), ImportError> {
        let n = self.model.node(node);
        let data = self.data_input(node)?;
        if n.outputs.len() != 1 {
            return Err(self.unsupported(node));
        }
        let out = OutletId::new(node, 0);
        let op = &n.op;
        if let Some(einsum) = op.downcast_ref::<EinSum>() {
            self.einsum(node, einsum, data)?;
        } else if let Some(bin) = op.downcast_ref::<TypedBinOp>() {
            self.binary(node, bin, data)?;
        } else if let Some(ew) = op.downcast_ref::<ElementWiseOp>() {
            let layer = if let Some(leaky) = ew.0.downcast_ref::<LeakyRelu>() {
                Layer::LeakyRelu {
                    alpha: f64::from(leaky.alpha),
                }
            } else {
                match &*ew.0.name() {
                    "Sigmoid" => Layer::Sigmoid,
                    "Tanh" => Layer::Tanh,
                    "GeluExact" => Layer::Gelu,
                    _ => return Err(self.unsupported(node)),
                }
            };
            self.activation(node, layer)?;
        } else if let Some(axis) = op.downcast_ref::<AxisOp>() {
            self.reshape(node, axis)?;
        } else if let Some(conv) = op.downcast_ref::<Conv>() {
            self.conv(node, conv, data)?;
        } else if let Some(pool) = op.downcast_ref::<MaxPool>() {
            if pool.with_index_outputs.is_some() {
                return Err(self.usage(node, "MaxPool with index outputs".into()));
            }
            self.pool(node, &pool.pool_spec, true)?;
        } else if let Some(pool) = op.downcast_ref::<SumPool>() {
            if !pool.normalize {
                return Err(self.usage(node, "sum pooling without normalisation".into()));
            }
            self.pool(node, &pool.pool_spec, false)?;
            if pool.count_include_pad && self.last_pool_has_padding() {
                return Err(self.usage(
                    node,
                    "average pooling counting the padding (count_include_pad = 1)".into(),
                ));
            }
        } else if matches!(&*op.name(), "Identity" | "Cast") {
            // No numeric change the f32 bound does not cover: a Cast to f32 or f64 only
            // (a round trip through f16 rounds every value).
            let fact = self.model.outlet_fact(out).map_err(self.tract(node))?;
            if !matches!(fact.datum_type, DatumType::F32 | DatumType::F64) {
                return Err(self.usage(node, format!("cast to {:?}", fact.datum_type)));
            }
        } else {
            return Err(self.unsupported(node));
        }
        self.current = out;
        Ok(())
    }

    fn last_pool_has_padding(&self) -> bool {
        matches!(self.layers.last(), Some(Layer::AvgPool2d(p)) if p.pad_top + p.pad_left + p.pad_bottom + p.pad_right > 0)
    }

    /// Emit an activation layer (after folding any pending affine map).
    fn activation(&mut self, node: usize, layer: Layer) -> Result<(), ImportError> {
        if let Layer::LeakyRelu { alpha } = layer
            && !(0.0..1.0).contains(&alpha)
        {
            return Err(self.usage(node, format!("LeakyRelu alpha {alpha} outside [0, 1)")));
        }
        self.flush_pending(Some(node))?;
        self.push(node, layer)?;
        self.affine_open = false;
        Ok(())
    }

    /// Append a layer, tracking the IR shape.
    fn push(&mut self, node: usize, layer: Layer) -> Result<(), ImportError> {
        self.ir_shape = layer
            .output_shape(&self.ir_shape)
            .map_err(|p| self.usage(node, p))?;
        self.layers.push(layer);
        Ok(())
    }

    /// `EinSum` with one constant operand: a dense layer.
    fn einsum(&mut self, node: usize, op: &EinSum, data: usize) -> Result<(), ImportError> {
        let n = self.model.node(node);
        if op.q_params.is_some() || n.inputs.len() != 2 {
            return Err(self.usage(node, "quantised or multi-operand EinSum".into()));
        }
        let weight_slot = 1 - data;
        let x_shape = self.shape_of(n.inputs[data])?;
        let out_shape = self.shape_of(OutletId::new(node, 0))?;
        let (w, w_shape) = self
            .konst(n.inputs[weight_slot])
            .ok_or_else(|| self.usage(node, "the weight operand is not a constant".into()))?;
        let in_dim: usize = x_shape.iter().product();
        let out_dim: usize = out_shape.iter().product();
        if in_dim.saturating_mul(out_dim) > MAX_DENSE_ENTRIES {
            return Err(self.usage(
                node,
                format!("a {out_dim}x{in_dim} dense matrix is too large"),
            ));
        }
        // Every axis of the einsum: its size and its positions in x, w and the output.
        struct AxisInfo {
            size: usize,
            x: Vec<usize>,
            w: Vec<usize>,
            out: Vec<usize>,
        }
        let mut axes = Vec::new();
        for axis in op.axes.iter_all_axes() {
            let (x, w, out) = (
                axis.inputs[data].to_vec(),
                axis.inputs[weight_slot].to_vec(),
                axis.outputs[0].to_vec(),
            );
            let size = x
                .first()
                .map(|&p| x_shape.get(p))
                .or_else(|| w.first().map(|&p| w_shape.get(p)))
                .or_else(|| out.first().map(|&p| out_shape.get(p)))
                .flatten()
                .copied()
                .ok_or_else(|| self.usage(node, "EinSum axis out of range".into()))?;
            axes.push(AxisInfo { size, x, w, out });
        }
        let strides = |shape: &[usize]| -> Vec<usize> {
            let mut s = vec![1; shape.len()];
            for i in (0..shape.len().saturating_sub(1)).rev() {
                s[i] = s[i + 1] * shape[i + 1];
            }
            s
        };
        let (xs, ws, os) = (strides(&x_shape), strides(&w_shape), strides(&out_shape));
        let mut matrix = vec![0.0; in_dim * out_dim];
        let mut idx = vec![0usize; axes.len()];
        'outer: loop {
            let (mut xi, mut wi, mut oi) = (0, 0, 0);
            for (a, &v) in axes.iter().zip(&idx) {
                xi += a.x.iter().map(|&p| xs[p] * v).sum::<usize>();
                wi += a.w.iter().map(|&p| ws[p] * v).sum::<usize>();
                oi += a.out.iter().map(|&p| os[p] * v).sum::<usize>();
            }
            if let (Some(m), Some(wv)) = (matrix.get_mut(oi * in_dim + xi), w.get(wi)) {
                *m += wv;
            }
            for k in (0..axes.len()).rev() {
                idx[k] += 1;
                if idx[k] < axes[k].size {
                    continue 'outer;
                }
                idx[k] = 0;
            }
            break;
        }
        let mut dense = Dense::new(in_dim, out_dim, matrix, vec![0.0; out_dim])
            .map_err(|p| self.usage(node, p))?;
        if let Some(pending) = self.pending.take() {
            fold_before_dense(&mut dense, &pending);
        }
        self.push(node, Layer::Dense(dense))?;
        self.affine_open = true;
        Ok(())
    }

    /// A binary op with a constant: ReLU (`Max` with 0) or an element-wise affine map.
    fn binary(&mut self, node: usize, op: &TypedBinOp, data: usize) -> Result<(), ImportError> {
        let n = self.model.node(node);
        let x_shape = self.shape_of(self.current)?;
        let out_shape = self.shape_of(OutletId::new(node, 0))?;
        if x_shape != out_shape {
            return Err(self.usage(
                node,
                format!("broadcasts the data tensor {x_shape:?} to {out_shape:?}"),
            ));
        }
        let other = n.inputs[1 - data];
        let (c, c_shape) = self
            .konst(other)
            .ok_or_else(|| self.usage(node, "operand is not a constant".into()))?;
        let c = broadcast(&c, &c_shape, &x_shape).ok_or_else(|| {
            self.usage(
                node,
                format!("constant of shape {c_shape:?} does not broadcast to {x_shape:?}"),
            )
        })?;
        let numel = c.len();
        let data_first = data == 0;
        let affine = match (op.0.name(), data_first) {
            ("Max", _) => {
                if c.iter().any(|&v| v != 0.0) {
                    return Err(self.usage(
                        node,
                        "Max with a non-zero constant (only ReLU is supported)".into(),
                    ));
                }
                return self.activation(node, Layer::Relu);
            }
            ("Add", _) => Affine {
                scale: vec![1.0; numel],
                shift: c,
            },
            ("Sub", true) | ("SubF", false) => Affine {
                scale: vec![1.0; numel],
                shift: c.iter().map(|v| -v).collect(),
            },
            ("Sub", false) | ("SubF", true) => Affine {
                scale: vec![-1.0; numel],
                shift: c,
            },
            ("Mul", _) => Affine {
                scale: c,
                shift: vec![0.0; numel],
            },
            ("Div", true) => {
                if c.contains(&0.0) {
                    return Err(self.usage(node, "division by zero".into()));
                }
                Affine {
                    scale: c.iter().map(|v| 1.0 / v).collect(),
                    shift: vec![0.0; numel],
                }
            }
            _ => return Err(self.unsupported(node)),
        };
        self.affine(node, affine)
    }

    /// Fold an element-wise affine map into the last layer, or keep it for the next.
    fn affine(&mut self, node: usize, map: Affine) -> Result<(), ImportError> {
        let map = match self.pending.take() {
            // Compose: s2 * (s1 x + b1) + b2.
            Some(p) => Affine {
                scale: p.scale.iter().zip(&map.scale).map(|(a, b)| a * b).collect(),
                shift: p
                    .shift
                    .iter()
                    .zip(map.scale.iter().zip(&map.shift))
                    .map(|(b1, (s2, b2))| s2 * b1 + b2)
                    .collect(),
            },
            None => map,
        };
        if self.affine_open && self.fold_after_last(&map) {
            return Ok(());
        }
        let _ = node;
        self.pending = Some(map);
        Ok(())
    }

    /// Fold `map` into the last layer (a Dense or Conv producing the current tensor).
    fn fold_after_last(&mut self, map: &Affine) -> bool {
        match self.layers.last_mut() {
            Some(Layer::Dense(d)) if map.scale.len() == d.out_dim => {
                for o in 0..d.out_dim {
                    for w in &mut d.weight[o * d.in_dim..(o + 1) * d.in_dim] {
                        *w *= map.scale[o];
                    }
                    d.bias[o] = map.scale[o] * d.bias[o] + map.shift[o];
                }
                true
            }
            Some(Layer::Conv2d(c)) => {
                let plane = c.out_h() * c.out_w();
                let Some((scale, shift)) = per_channel(map, c.out_channels, plane) else {
                    return false;
                };
                let per_oc = c.in_channels * c.kernel_h * c.kernel_w;
                for oc in 0..c.out_channels {
                    for w in &mut c.weight[oc * per_oc..(oc + 1) * per_oc] {
                        *w *= scale[oc];
                    }
                    c.bias[oc] = scale[oc] * c.bias[oc] + shift[oc];
                }
                true
            }
            _ => false,
        }
    }

    /// Materialise the pending affine map before a non-affine layer (or the end):
    /// folded into the last layer when possible, else as a layer of its own.
    fn flush_pending(&mut self, node: Option<usize>) -> Result<(), ImportError> {
        let Some(map) = self.pending.take() else {
            return Ok(());
        };
        if map.scale.iter().all(|&s| s == 1.0) && map.shift.iter().all(|&b| b == 0.0) {
            return Ok(());
        }
        if self.affine_open && self.fold_after_last(&map) {
            return Ok(());
        }
        let node = node.unwrap_or(self.current.node);
        let layer = self.affine_layer(node, &map)?;
        self.push(node, layer)?;
        self.affine_open = true;
        Ok(())
    }

    /// An element-wise affine map as a layer: diagonal Dense on vectors, 1x1 Conv on
    /// images with per-channel constants.
    fn affine_layer(&self, node: usize, map: &Affine) -> Result<Layer, ImportError> {
        match self.ir_shape.as_slice() {
            [n] => {
                let mut weight = vec![0.0; n * n];
                for i in 0..*n {
                    weight[i * n + i] = map.scale[i];
                }
                Ok(Layer::Dense(
                    Dense::new(*n, *n, weight, map.shift.clone())
                        .map_err(|p| self.usage(node, p))?,
                ))
            }
            &[ch, h, w] => {
                let (scale, shift) = per_channel(map, ch, h * w).ok_or_else(|| {
                    self.usage(node, "an element-wise constant varying within a channel has no layer to fold into".into())
                })?;
                let mut weight = vec![0.0; ch * ch];
                for c in 0..ch {
                    weight[c * ch + c] = scale[c];
                }
                Ok(Layer::Conv2d(Conv2d {
                    in_channels: ch,
                    out_channels: ch,
                    in_h: h,
                    in_w: w,
                    kernel_h: 1,
                    kernel_w: 1,
                    stride_h: 1,
                    stride_w: 1,
                    pad_top: 0,
                    pad_left: 0,
                    pad_bottom: 0,
                    pad_right: 0,
                    weight,
                    bias: shift,
                }))
            }
            other => Err(self.usage(
                node,
                format!("element-wise constants on a tensor of shape {other:?}"),
            )),
        }
    }

    /// A reshape: order-preserving only; an image flattened to a vector emits Flatten.
    fn reshape(&mut self, node: usize, op: &AxisOp) -> Result<(), ImportError> {
        let x_shape = self.shape_of(self.current)?;
        if let AxisOp::Move(from, to) = op {
            // Moving an axis keeps the row-major order only when, of the axes between the
            // two positions (the moved one included), at most one is larger than 1.
            let (lo, hi) = ((*from).min(*to), (*from).max(*to));
            let big = x_shape
                .get(lo..=hi)
                .map_or(2, |s| s.iter().filter(|&&d| d > 1).count());
            if big > 1 {
                return Err(self.usage(node, "a transposition of the data tensor".into()));
            }
        }
        let out_shape = self.shape_of(OutletId::new(node, 0))?;
        let canonical = self.canonical(&out_shape, &self.node_name(node))?;
        if canonical.len() == 1 && self.ir_shape.len() > 1 {
            // Positions are unchanged, so a pending affine map stays valid.
            self.push(node, Layer::Flatten)?;
        }
        Ok(())
    }

    /// The `[c, h, w]` IR shape a spatial op needs, checked against the IR.
    fn image_input(&self, node: usize, format: DataFormat) -> Result<[usize; 3], ImportError> {
        let x_shape = self.shape_of(self.current)?;
        let body: &[usize] = match (format, x_shape.as_slice()) {
            (DataFormat::NCHW, [1, c, h, w]) | (DataFormat::CHW, [c, h, w]) => &[*c, *h, *w],
            _ => {
                return Err(self.usage(
                    node,
                    format!(
                        "needs an NCHW image with batch 1, gets shape {x_shape:?} ({format:?})"
                    ),
                ));
            }
        };
        let chw = [body[0], body[1], body[2]];
        if self.ir_shape != chw {
            return Err(self.usage(
                node,
                format!("the image {chw:?} was reshaped from {:?}; only flattening reshapes are supported", self.ir_shape),
            ));
        }
        Ok(chw)
    }

    /// Explicit 2-D padding `(top, left, bottom, right)` of a pool spec.
    fn padding(
        &self,
        node: usize,
        spec: &PoolSpec,
        hw: [usize; 2],
    ) -> Result<[usize; 4], ImportError> {
        if spec.rank() != 2 {
            return Err(self.usage(
                node,
                format!("{}-D spatial operation (only 2-D)", spec.rank()),
            ));
        }
        if spec.dilations().iter().any(|&d| d != 1) {
            return Err(self.usage(node, format!("dilation {:?} (only 1)", spec.dilations())));
        }
        if let PaddingSpec::ExplicitOnnxPool(_, _, true) = spec.padding {
            return Err(self.usage(node, "ceil_mode = 1".into()));
        }
        let computed = spec.computed_padding(&hw);
        Ok([
            computed[0].pad_before,
            computed[1].pad_before,
            computed[0].pad_after,
            computed[1].pad_after,
        ])
    }

    fn conv(&mut self, node: usize, op: &Conv, data: usize) -> Result<(), ImportError> {
        let n = self.model.node(node);
        if op.q_params.is_some() || n.inputs.len() != 3 || data != 0 {
            return Err(self.usage(node, "quantised convolution".into()));
        }
        if op.group != 1 {
            return Err(self.usage(node, format!("groups = {} (only 1)", op.group)));
        }
        if op.kernel_fmt != KernelFormat::OIHW {
            return Err(self.usage(
                node,
                format!("kernel format {:?} (only OIHW)", op.kernel_fmt),
            ));
        }
        let [c, h, w] = self.image_input(node, op.pool_spec.data_format)?;
        let [pad_top, pad_left, pad_bottom, pad_right] =
            self.padding(node, &op.pool_spec, [h, w])?;
        let (kernel, k_shape) = self
            .konst(n.inputs[1])
            .ok_or_else(|| self.usage(node, "the kernel is not a constant".into()))?;
        let (bias, b_shape) = self
            .konst(n.inputs[2])
            .ok_or_else(|| self.usage(node, "the bias is not a constant".into()))?;
        let &[oc, ic, kh, kw] = k_shape.as_slice() else {
            return Err(self.usage(node, format!("kernel shape {k_shape:?}")));
        };
        if ic != c {
            return Err(self.usage(
                node,
                format!("kernel expects {ic} input channels, the image has {c}"),
            ));
        }
        let bias = broadcast(&bias, &b_shape, &[oc])
            .ok_or_else(|| self.usage(node, format!("bias shape {b_shape:?}")))?;
        let strides = op.pool_spec.strides();
        let mut conv = Conv2d {
            in_channels: c,
            out_channels: oc,
            in_h: h,
            in_w: w,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: strides[0],
            stride_w: strides[1],
            pad_top,
            pad_left,
            pad_bottom,
            pad_right,
            weight: kernel,
            bias,
        };
        if let Some(pending) = self.pending.take()
            && !fold_before_conv(&mut conv, &pending)
        {
            // Not foldable through the zero padding: a 1x1 conv of its own.
            let layer = self.affine_layer(node, &pending)?;
            self.push(node, layer)?;
        }
        self.push(node, Layer::Conv2d(conv))?;
        self.affine_open = true;
        Ok(())
    }

    fn pool(&mut self, node: usize, spec: &PoolSpec, max: bool) -> Result<(), ImportError> {
        let [c, h, w] = self.image_input(node, spec.data_format)?;
        let [pad_top, pad_left, pad_bottom, pad_right] = self.padding(node, spec, [h, w])?;
        let strides = spec.strides();
        let pool = Pool2d {
            channels: c,
            in_h: h,
            in_w: w,
            kernel_h: spec.kernel_shape[0],
            kernel_w: spec.kernel_shape[1],
            stride_h: strides[0],
            stride_w: strides[1],
            pad_top,
            pad_left,
            pad_bottom,
            pad_right,
        };
        self.flush_pending(Some(node))?;
        self.push(
            node,
            if max {
                Layer::MaxPool2d(pool)
            } else {
                Layer::AvgPool2d(pool)
            },
        )?;
        self.affine_open = false;
        Ok(())
    }

    /// An element-wise sub-graph: accepted when it computes exact GELU, possibly with
    /// a few single-consumer element-wise nodes after the join (`x * (1 + erf) * 0.5`
    /// joins before the final scaling). Returns the outlet carrying the activation.
    fn elementwise_activation(
        &mut self,
        mut nodes: Vec<usize>,
        mut join: OutletId,
    ) -> Result<OutletId, ImportError> {
        let first = nodes[0];
        let x_shape = self.shape_of(self.current)?;
        let output = self.model.output_outlets().map_err(self.tract(first))?[0];
        for extra in 0..=4 {
            if extra > 0 {
                // Extend by the single consumer of the join, if element-wise with constants.
                let succ = self.model.outlet_successors(join);
                if join == output || succ.len() != 1 {
                    break;
                }
                let next = succ[0].node;
                let n = self.model.node(next);
                let elementwise = n.op.downcast_ref::<TypedBinOp>().is_some()
                    || n.op.downcast_ref::<ElementWiseOp>().is_some();
                if !elementwise || n.outputs.len() != 1 {
                    break;
                }
                nodes.push(next);
                join = OutletId::new(next, 0);
            }
            let mut element_wise = true;
            for &n in &nodes {
                if self.shape_of(OutletId::new(n, 0))? != x_shape {
                    element_wise = false;
                }
            }
            if !element_wise {
                break;
            }
            // Only the operators of `x * (1 + erf(x / sqrt 2)) / 2`: the samples below
            // then tell a wrong constant, and no clip or branch can hide beyond them.
            let gelu_ops = nodes.iter().all(|&n| {
                matches!(
                    &*self.model.node(n).op.name(),
                    "Mul" | "Add" | "Sub" | "Div" | "Erf"
                )
            });
            if !gelu_ops {
                break;
            }
            let mut matches = true;
            let far = [-1e3, -60.0, -20.0, 20.0, 60.0, 1e3];
            for v in (-40..=40).map(|i| f64::from(i) * 0.15).chain(far) {
                let got = match self.eval_scalar(&nodes, v) {
                    Ok(g) => g,
                    Err(_) => {
                        matches = false;
                        break;
                    }
                };
                let want = Layer::Gelu.activate(v);
                if got.is_nan() || (got - want).abs() > 1e-5 * (1.0 + want.abs()) {
                    matches = false;
                    break;
                }
            }
            if matches {
                self.activation(first, Layer::Gelu)?;
                return Ok(join);
            }
        }
        Err(self.usage(
            first,
            "the sub-graph starting here is not a supported activation (not GELU)".into(),
        ))
    }

    /// Evaluate an element-wise sub-graph on one scalar input value.
    fn eval_scalar(&self, nodes: &[usize], x: f64) -> Result<f64, ImportError> {
        let mut values: HashMap<OutletId, f64> = HashMap::from([(self.current, x)]);
        let mut last = x;
        let in_region: HashSet<usize> = nodes.iter().copied().collect();
        for &id in nodes {
            let n = self.model.node(id);
            let mut args = Vec::with_capacity(n.inputs.len());
            for input in &n.inputs {
                if let Some(v) = values.get(input) {
                    args.push(*v);
                } else if let Some((c, _)) = self
                    .konst(*input)
                    .filter(|_| !in_region.contains(&input.node))
                {
                    // Only uniform constants are element-wise scalars.
                    match c.first() {
                        Some(&v) if c.iter().all(|&e| e == v) => args.push(v),
                        _ => {
                            return Err(self.usage(
                                id,
                                "non-uniform constant in an activation sub-graph".into(),
                            ));
                        }
                    }
                } else {
                    return Err(
                        self.usage(id, "input from outside the activation sub-graph".into())
                    );
                }
            }
            let value = if let Some(bin) = n.op.downcast_ref::<TypedBinOp>() {
                let [a, b] = args[..] else {
                    return Err(self.unsupported(id));
                };
                match bin.0.name() {
                    "Add" => a + b,
                    "Sub" => a - b,
                    "SubF" => b - a,
                    "Mul" => a * b,
                    "Div" => a / b,
                    "Max" => a.max(b),
                    "Min" => a.min(b),
                    "Pow" => a.powf(b),
                    _ => return Err(self.unsupported(id)),
                }
            } else if let Some(ew) = n.op.downcast_ref::<ElementWiseOp>() {
                let [a] = args[..] else {
                    return Err(self.unsupported(id));
                };
                match &*ew.0.name() {
                    "Erf" => crate::model::erf(a),
                    "Tanh" => a.tanh(),
                    "Sigmoid" => 1.0 / (1.0 + (-a).exp()),
                    "Exp" => a.exp(),
                    "Abs" => a.abs(),
                    "Neg" => -a,
                    "Recip" => 1.0 / a,
                    "Sqrt" => a.sqrt(),
                    "Square" => a * a,
                    _ => return Err(self.unsupported(id)),
                }
            } else {
                return Err(self.unsupported(id));
            };
            values.insert(OutletId::new(id, 0), value);
            last = value;
        }
        Ok(last)
    }
}

/// `dense(scale * x + shift)` as one dense layer.
fn fold_before_dense(dense: &mut Dense, map: &Affine) {
    for o in 0..dense.out_dim {
        let row = &mut dense.weight[o * dense.in_dim..(o + 1) * dense.in_dim];
        let mut extra = 0.0;
        for (i, w) in row.iter_mut().enumerate() {
            extra += *w * map.shift[i];
            *w *= map.scale[i];
        }
        dense.bias[o] += extra;
    }
}

/// `conv(scale * x + shift)` as one conv, when the constants are per-channel and the
/// padding cannot see the shift (no padding, or no shift). False if not foldable.
fn fold_before_conv(conv: &mut Conv2d, map: &Affine) -> bool {
    let Some((scale, shift)) = per_channel(map, conv.in_channels, conv.in_h * conv.in_w) else {
        return false;
    };
    let padded = conv.pad_top + conv.pad_left + conv.pad_bottom + conv.pad_right > 0;
    if padded && shift.iter().any(|&b| b != 0.0) {
        return false;
    }
    let k = conv.kernel_h * conv.kernel_w;
    for oc in 0..conv.out_channels {
        for ic in 0..conv.in_channels {
            let block = &mut conv.weight
                [(oc * conv.in_channels + ic) * k..(oc * conv.in_channels + ic + 1) * k];
            let sum: f64 = block.iter().sum();
            conv.bias[oc] += sum * shift[ic];
            block.iter_mut().for_each(|w| *w *= scale[ic]);
        }
    }
    true
}

/// The per-channel scale and shift of a map over a `[channels, plane]` tensor, if it is
/// constant within each channel.
fn per_channel(map: &Affine, channels: usize, plane: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    if map.scale.len() != channels * plane || plane == 0 {
        return None;
    }
    let mut scale = Vec::with_capacity(channels);
    let mut shift = Vec::with_capacity(channels);
    for c in 0..channels {
        let (s, b) = (
            &map.scale[c * plane..(c + 1) * plane],
            &map.shift[c * plane..(c + 1) * plane],
        );
        if s.iter().any(|&v| v != s[0]) || b.iter().any(|&v| v != b[0]) {
            return None;
        }
        scale.push(s[0]);
        shift.push(b[0]);
    }
    Some((scale, shift))
}

/// Broadcast `values` of shape `from` to shape `to` (numpy rules), flattened.
fn broadcast(values: &[f64], from: &[usize], to: &[usize]) -> Option<Vec<f64>> {
    if from.len() > to.len() {
        // Leading ones beyond the target rank are harmless.
        let extra = from.len() - to.len();
        if from[..extra].iter().any(|&d| d != 1) {
            return None;
        }
        return broadcast(values, &from[extra..], to);
    }
    let offset = to.len() - from.len();
    for (i, &d) in from.iter().enumerate() {
        if d != 1 && d != to[offset + i] {
            return None;
        }
    }
    if values.len() != from.iter().product::<usize>() {
        return None;
    }
    let numel: usize = to.iter().product();
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; to.len()];
    for _ in 0..numel {
        let mut src = 0;
        for (i, &d) in from.iter().enumerate() {
            let v = if d == 1 { 0 } else { idx[offset + i] };
            src = src * d + v;
        }
        out.push(values[src]);
        for k in (0..to.len()).rev() {
            idx[k] += 1;
            if idx[k] < to[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    Some(out)
}

/// tract as the reference evaluator of an ONNX file (optimised plan, batch 1, f32).
#[derive(Debug)]
pub struct TractModel {
    path: PathBuf,
    input_shape: Vec<usize>,
    output_len: usize,
    plan: std::sync::Arc<TypedRunnableModel>,
    /// A reusable evaluation state (spawning one per call costs more than the run).
    state: Mutex<Option<TypedSimpleState>>,
}

impl TractModel {
    /// Load and optimise an ONNX file for evaluation.
    pub fn load(path: &Path) -> Result<Self, ImportError> {
        let model = typed_model(path)?.model;
        let invalid = |e: TractError| ImportError::InvalidOnnx {
            path: path.to_path_buf(),
            message: one_line(&e),
        };
        let input = model.input_outlets().map_err(invalid)?.first().copied();
        let output = model.output_outlets().map_err(invalid)?.first().copied();
        let (Some(input), Some(output)) = (input, output) else {
            return Err(ImportError::Run {
                path: path.to_path_buf(),
                problem: "the model has no input or no output".into(),
            });
        };
        let concrete = |o: OutletId| -> Result<Vec<usize>, ImportError> {
            let fact = model.outlet_fact(o).map_err(invalid)?;
            fact.shape
                .as_concrete()
                .map(<[usize]>::to_vec)
                .ok_or_else(|| ImportError::Run {
                    path: path.to_path_buf(),
                    problem: format!("symbolic shape {:?}", fact.shape),
                })
        };
        let input_shape = concrete(input)?;
        let output_len = concrete(output)?.iter().product();
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(invalid)?;
        Ok(Self {
            path: path.to_path_buf(),
            input_shape,
            output_len,
            plan,
            state: Mutex::new(None),
        })
    }

    /// The ONNX input shape (batch dimension included).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Number of input values (the flattened input tensor).
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of output values.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Evaluate on one input (flattened row-major), returning the flattened output.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, ImportError> {
        let fail = |problem: String| ImportError::Run {
            path: self.path.clone(),
            problem,
        };
        if input.len() != self.input_len() {
            return Err(fail(format!(
                "the input has {} values, the model expects {}",
                input.len(),
                self.input_len()
            )));
        }
        let tensor =
            Tensor::from_shape(&self.input_shape, input).map_err(|e| fail(one_line(&e)))?;
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(self.plan.spawn().map_err(|e| fail(one_line(&e)))?);
        }
        let state = guard
            .as_mut()
            .ok_or_else(|| fail("no evaluation state".into()))?;
        let outputs = state
            .run(tvec!(tensor.into()))
            .map_err(|e| fail(one_line(&e)))?;
        let out = outputs.first().ok_or_else(|| fail("no output".into()))?;
        let out = out.cast_to::<f32>().map_err(|e| fail(one_line(&e)))?;
        let view = out
            .to_plain_array_view::<f32>()
            .map_err(|e| fail(one_line(&e)))?;
        Ok(view.iter().copied().collect())
    }

    /// Evaluate on several inputs stored one after the other; outputs likewise.
    pub fn run_batch(&self, inputs: &[f32]) -> Result<Vec<f32>, ImportError> {
        let n = self.input_len();
        if n == 0 || !inputs.len().is_multiple_of(n) {
            return Err(ImportError::Run {
                path: self.path.clone(),
                problem: format!(
                    "{} values are not a whole number of inputs of {n}",
                    inputs.len()
                ),
            });
        }
        let mut out = Vec::with_capacity(inputs.len() / n * self.output_len);
        for row in inputs.chunks(n) {
            out.extend(self.run(row)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy_rules() {
        assert_eq!(
            broadcast(&[1.0, 2.0], &[2, 1], &[1, 2, 3]).unwrap(),
            vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
        );
        assert_eq!(broadcast(&[5.0], &[], &[2]).unwrap(), vec![5.0, 5.0]);
        assert_eq!(
            broadcast(&[1.0, 2.0, 3.0], &[1, 1, 3], &[3]).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        assert!(broadcast(&[1.0, 2.0], &[2], &[3]).is_none());
    }

    #[test]
    fn folding_affine_maps_into_dense_is_exact() {
        let dense = Dense::new(2, 1, vec![2.0, -1.0], vec![0.5]).unwrap();
        let map = Affine {
            scale: vec![0.5, 4.0],
            shift: vec![1.0, -2.0],
        };
        let x = [0.3, -0.7];
        let mapped: Vec<f64> = x
            .iter()
            .zip(map.scale.iter().zip(&map.shift))
            .map(|(v, (s, b))| s * v + b)
            .collect();
        let mut folded = dense.clone();
        fold_before_dense(&mut folded, &map);
        assert!((folded.apply(&x)[0] - dense.apply(&mapped)[0]).abs() < 1e-12);
    }

    #[test]
    fn folding_per_channel_maps_into_conv_is_exact() {
        let conv = Conv2d {
            in_channels: 2,
            out_channels: 1,
            in_h: 2,
            in_w: 2,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
            weight: (1..=8).map(f64::from).collect(),
            bias: vec![0.25],
        };
        let map = Affine {
            scale: vec![2.0, 2.0, 2.0, 2.0, -1.0, -1.0, -1.0, -1.0],
            shift: vec![0.5; 8],
        };
        let x: Vec<f64> = (0..8).map(|i| f64::from(i) * 0.1).collect();
        let mapped: Vec<f64> = x
            .iter()
            .zip(map.scale.iter().zip(&map.shift))
            .map(|(v, (s, b))| s * v + b)
            .collect();
        let mut folded = conv.clone();
        assert!(fold_before_conv(&mut folded, &map));
        assert!((folded.apply(&x)[0] - conv.apply(&mapped)[0]).abs() < 1e-12);
        // A shift would leak into the zero padding: not folded.
        let mut padded = Conv2d { pad_top: 1, ..conv };
        assert!(!fold_before_conv(&mut padded, &map));
    }

    #[test]
    #[ignore = "diagnostic: DUMP=a.onnx,b.onnx prints tract's typed graph"]
    fn dump() {
        for p in std::env::var("DUMP")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let m = typed_model(Path::new(p)).unwrap().model;
            println!("== {p}");
            for id in m.eval_order().unwrap() {
                let n = m.node(id);
                println!(
                    "{id} {} [{}] {:?} -> {:?}",
                    n.name,
                    n.op.name(),
                    n.inputs,
                    n.outputs[0].fact
                );
            }
        }
    }
}
