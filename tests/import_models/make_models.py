#!/usr/bin/env python3
"""Small synthetic ONNX models that exercise the importer's operators beyond the real
networks in ../shared/data (Conv, BatchNorm, pools, LeakyReLU, Tanh, GELU, Gemm with
alpha/beta and transposes, MatMul with the weight on the left, normalisation constants).

Run from this directory (needs `pip install onnx numpy`); the outputs are committed.
Weights are seeded random numbers: these models compute nothing meaningful, they only
have to agree with tract after import (tests/import_ops.rs).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(20261123)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def rand(name, *shape, scale=0.5):
    return const(name, rng.normal(0.0, scale, size=shape))


def save(graph, path, opset=13):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="prorepair-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.save(model, path)


def conv_net():
    """Per-channel normalisation -> Conv(pad 1) -> BatchNorm -> ReLU -> MaxPool ->
    Conv(stride 2, asymmetric pads) -> BatchNorm -> LeakyReLU -> AveragePool -> Flatten
    -> Gemm -> Tanh -> Gemm."""
    inits = [
        const("mean", rng.uniform(0.1, 0.5, size=(1, 3, 1, 1))),
        const("std", rng.uniform(0.5, 2.0, size=(1, 3, 1, 1))),
        rand("w1", 4, 3, 3, 3),
        rand("b1", 4),
        const("bn1_scale", rng.uniform(0.5, 1.5, size=4)),
        rand("bn1_bias", 4),
        rand("bn1_mean", 4),
        const("bn1_var", rng.uniform(0.5, 2.0, size=4)),
        rand("w2", 5, 4, 3, 2),
        rand("b2", 5),
        const("bn2_scale", rng.uniform(0.5, 1.5, size=5)),
        rand("bn2_bias", 5),
        rand("bn2_mean", 5),
        const("bn2_var", rng.uniform(0.5, 2.0, size=5)),
        rand("w3", 7, 5 * 1 * 2),
        rand("b3", 7),
        rand("w4", 7, 3),
        rand("b4", 3),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="normalise_sub"),
        helper.make_node("Div", ["centred", "std"], ["normed"], name="normalise_div"),
        helper.make_node("Conv", ["normed", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["n1"], name="bn1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", strides=[2, 2], pads=[1, 0, 0, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["n2"], name="bn2"),
        helper.make_node("LeakyRelu", ["n2"], ["r2"], name="leaky2", alpha=0.1),
        helper.make_node("AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 0, 1]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g3"], name="gemm3", transB=1),
        helper.make_node("Tanh", ["g3"], ["t3"], name="tanh3"),
        helper.make_node("Gemm", ["t3", "w4", "b4"], ["y"], name="gemm4"),
    ]
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    save(graph, "conv_bn_pool.onnx")


def dense_variants():
    """Gemm with alpha/beta and transA on a column, MatMul with the weight on the left,
    Mul/Add by constants, Sigmoid, GELU written out with Erf, ReLU then BatchNorm-like
    scaling folded into the next layer."""
    inits = [
        rand("wa", 4, 6),
        rand("ba", 6),
        const("three", 3.0),
        rand("shift", 6),
        rand("wb", 5, 6),
        rand("bb", 5, 1),
        const("sqrt2", np.sqrt(2.0)),
        const("one", 1.0),
        const("half", 0.5),
        const("relu_scale", rng.uniform(0.5, 2.0, size=(5, 1))),
        rand("wc", 5, 6),
        rand("bc", 6),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "wa", "ba"], ["a"], name="gemm_a", alpha=0.5, beta=2.0),
        helper.make_node("Mul", ["a", "three"], ["a3"], name="times_three"),
        helper.make_node("Add", ["shift", "a3"], ["a4"], name="add_shift"),
        helper.make_node("Sigmoid", ["a4"], ["s"], name="sigmoid"),
        # [1, 6] -> [6, 1]: the same row-major order.
        helper.make_node("Transpose", ["s"], ["st"], name="to_column", perm=[1, 0]),
        helper.make_node("MatMul", ["wb", "st"], ["m"], name="weight_on_left"),
        helper.make_node("Add", ["m", "bb"], ["h"], name="column_bias"),
        # gelu(h) = h * 0.5 * (1 + erf(h / sqrt 2))
        helper.make_node("Div", ["h", "sqrt2"], ["hd"], name="gelu_div"),
        helper.make_node("Erf", ["hd"], ["he"], name="gelu_erf"),
        helper.make_node("Add", ["he", "one"], ["hp"], name="gelu_add"),
        helper.make_node("Mul", ["h", "hp"], ["hm"], name="gelu_mul"),
        helper.make_node("Mul", ["hm", "half"], ["g"], name="gelu_half"),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "relu_scale"], ["rs"], name="scale_after_relu"),
        helper.make_node("Gemm", ["rs", "wc", "bc"], ["y"], name="gemm_c", transA=1),
    ]
    graph = helper.make_graph(
        nodes, "dense_variants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        inits,
    )
    save(graph, "dense_variants.onnx")


def gelu_op():
    """The opset-20 Gelu operator."""
    inits = [rand("w", 3, 4), rand("b", 4)]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="gemm"),
        helper.make_node("Gelu", ["h"], ["y"], name="gelu"),
    ]
    graph = helper.make_graph(
        nodes, "gelu_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    save(graph, "gelu_op.onnx", opset=20)


if __name__ == "__main__":
    conv_net()
    dense_variants()
    gelu_op()
