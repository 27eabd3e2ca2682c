#!/usr/bin/env python3
"""The malformed-input corpus for tests/import_malformed.rs: ONNX, .nnet and VNN-LIB
files that must each give a clear error naming the file, never a panic.

Run from this directory (needs `pip install onnx numpy`); the outputs are committed.
Every file is made here from scratch (nothing is copied from ../shared/data).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def model(nodes, inputs, outputs, inits, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def vec(name, n):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, n])


def image(name, c, h, w):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, h, w])


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# --- ONNX ---
dense = model(
    [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="gemm", transB=1), helper.make_node("Relu", ["h"], ["y"], name="relu")],
    [vec("x", 4)], [vec("y", 3)], [const("w", rng.normal(size=(3, 4))), const("b", rng.normal(size=3))],
)
dense_bytes = dense.SerializeToString()
write("truncated.onnx", dense_bytes[: len(dense_bytes) // 2])
write("random_bytes.onnx", rng.integers(0, 256, size=512, dtype=np.uint8).tobytes())
write("empty.onnx", b"")
write("text.onnx", b"this is not an ONNX model\n")

hidden = 3
lstm = model(
    [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm_1", hidden_size=hidden)],
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 1, hidden])],
    [const("W", rng.normal(size=(1, 4 * hidden, 4))), const("R", rng.normal(size=(1, 4 * hidden, hidden)))],
)
onnx.save(lstm, "lstm.onnx")

softmax = model(
    [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="gemm", transB=1), helper.make_node("Softmax", ["h"], ["y"], name="probabilities")],
    [vec("x", 4)], [vec("y", 3)], [const("w", rng.normal(size=(3, 4))), const("b", rng.normal(size=3))],
)
onnx.save(softmax, "softmax.onnx")

grouped = model(
    [helper.make_node("Conv", ["x", "w"], ["y"], name="grouped_conv", group=2)],
    [image("x", 4, 5, 5)], [image("y", 4, 3, 3)], [const("w", rng.normal(size=(4, 2, 3, 3)))],
)
onnx.save(grouped, "grouped_conv.onnx")

dilated = model(
    [helper.make_node("Conv", ["x", "w"], ["y"], name="dilated_conv", dilations=[2, 2])],
    [image("x", 1, 7, 7)], [image("y", 2, 3, 3)], [const("w", rng.normal(size=(2, 1, 3, 3)))],
)
onnx.save(dilated, "dilated_conv.onnx")

two_inputs = model(
    [helper.make_node("Add", ["a", "b"], ["y"], name="add_inputs")],
    [vec("a", 3), vec("b", 3)], [vec("y", 3)], [],
)
onnx.save(two_inputs, "two_inputs.onnx")

# x -> Relu and x -> Sigmoid, added: a branch that is no known activation.
branching = model(
    [
        helper.make_node("Relu", ["x"], ["r"], name="branch_relu"),
        helper.make_node("Sigmoid", ["x"], ["s"], name="branch_sigmoid"),
        helper.make_node("Add", ["r", "s"], ["y"], name="join"),
    ],
    [vec("x", 3)], [vec("y", 3)], [],
)
onnx.save(branching, "branching.onnx")

# Max with a non-zero constant (a shifted ReLU): not representable.
shifted = model(
    [helper.make_node("Max", ["x", "c"], ["y"], name="clip_below")],
    [vec("x", 3)], [vec("y", 3)], [const("c", [0.5])],
)
onnx.save(shifted, "max_nonzero.onnx")

# GELU with its linear factor clipped at 6: equal to GELU on [-6, 6] but not beyond, so
# a match by sampled values alone would import a different function.
gelu_clipped = model(
    [
        helper.make_node("Min", ["x", "six"], ["m"], name="clip"),
        helper.make_node("Div", ["x", "sqrt2"], ["d"], name="scale"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="shift"),
        helper.make_node("Mul", ["m", "e1"], ["p"], name="join"),
        helper.make_node("Mul", ["p", "half"], ["y"], name="halve"),
    ],
    [vec("x", 3)], [vec("y", 3)],
    [const("six", [6.0]), const("sqrt2", [np.sqrt(2.0)]), const("one", [1.0]), const("half", [0.5])],
)
onnx.save(gelu_clipped, "gelu_clipped.onnx")

# A round trip through float16 rounds every value: not the identity.
own = np.random.default_rng(11)  # its own stream: the files after keep their bytes
cast_f16 = model(
    [
        helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="gemm", transB=1),
    ],
    [vec("x", 4)], [vec("y", 3)], [const("w", own.normal(size=(3, 4))), const("b", own.normal(size=3))],
)
onnx.save(cast_f16, "cast_f16.onnx")

# --- .nnet (a 2-2-1 network) ---
NNET = """// test network
2,2,1,2,
2,2,1,
0,
-1,-1,
1,1,
0.0,0.0,0.0,
1.0,1.0,1.0,
1.0,2.0,
3.0,4.0,
0.5,
-0.5,
1.0,-1.0,
0.25,
"""
write("empty.nnet", b"")
write("wrong_layer_count.nnet", NNET.replace("2,2,1,\n", "2,2,2,1,\n").encode())
write("short_row.nnet", NNET.replace("3.0,4.0,\n", "3.0,\n").encode())
write("not_a_number.nnet", NNET.replace("1.0,-1.0,", "1.0,minus_one,").encode())
write("truncated.nnet", NNET[: NNET.index("1.0,-1.0,")].encode())
write("extra_data.nnet", (NNET + "7.0,\n").encode())
write("bad_header.nnet", NNET.replace("2,2,1,2,", "2.5,2,1,2,").encode())

# --- VNN-LIB ---
DECL = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
BOUNDS = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n"
VNNLIB = {
    "unclosed_paren": DECL + BOUNDS + "(assert (<= Y_0 Y_1)\n",
    "unexpected_close_paren": DECL + BOUNDS + "(assert (<= Y_0 Y_1)))\n",
    "unknown_variable": DECL + BOUNDS + "(assert (<= Y_0 Z_1))\n",
    "undeclared_variable": DECL + BOUNDS + "(assert (<= Y_0 Y_2))\n",
    "bad_number": DECL + BOUNDS + "(assert (<= Y_0 1.2.3))\n",
    "nonlinear_product": DECL + BOUNDS + "(assert (<= (* Y_0 Y_1) 1))\n",
    "implies": DECL + BOUNDS + "(assert (=> (<= Y_0 1) (<= Y_1 1)))\n",
    "missing_bound": DECL + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= Y_0 Y_1))\n",
    "empty_box": DECL + BOUNDS + "(assert (>= X_1 2))\n(assert (<= Y_0 Y_1))\n",
    "multi_variable_input": DECL + BOUNDS + "(assert (<= (+ X_0 X_1) 1))\n",
    "mixed_constraint": DECL + BOUNDS + "(assert (<= X_0 Y_1))\n",
    "duplicate_declaration": DECL + "(declare-const Y_1 Real)\n" + BOUNDS,
    "unsupported_sort": "(declare-const X_0 Int)\n",
    "unsupported_command": DECL + BOUNDS + "(push 1)\n",
    "no_inputs": "; nothing declared\n",
}
for name, text in VNNLIB.items():
    write(f"{name}.vnnlib", text.encode())
write("binary.vnnlib", rng.integers(0, 256, size=256, dtype=np.uint8).tobytes())
