"""What a `.tflite` file holds: its operators and the shapes of its tensors.

The file is read as a flatbuffer with the schema that ships with
`ai-edge-litert`, without building an interpreter, so a model that a phone
could not run (Flex or custom operators) can still be inspected and
rejected with a clear message.

A NeuroLite export must hold only TFLite built-in operators (no Flex ops,
which need the TensorFlow runtime on the phone, and no custom ops), and
only static shapes: batch 1 and the fixed sequence length, with no
operator whose output shape depends on the data.

Example:

>>> import tensorflow as tf
>>> module = tf.Module()
>>> module.f = tf.function(
...     lambda x: {"y": tf.nn.relu(x) + 1.0},
...     input_signature=[tf.TensorSpec((1, 4), tf.float32)])
>>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
...     [module.f.get_concrete_function()], module)
>>> flatbuffer = converter.convert()
>>> sorted(op.name for op in list_operators(flatbuffer))
['ADD', 'RELU']
>>> check_builtin_only(flatbuffer)
>>> check_static_shapes(flatbuffer)

A calibrated float model (the TFLite converter's step before int8
quantization) also carries the activation range it recorded for each
tensor: `calibration_ranges` reads them and `with_calibration_ranges`
writes others in their place.
"""

import dataclasses
import os

from ai_edge_litert import schema_py_generated as _schema

# Operators whose output shape depends on the values of their inputs: a
# phone runtime has to resize tensors while running them.
DYNAMIC_SHAPE_OPERATORS = frozenset(
    {
        "BROADCAST_ARGS",
        "NON_MAX_SUPPRESSION_V4",
        "NON_MAX_SUPPRESSION_V5",
        "RANGE",
        "SHAPE",
        "UNIQUE",
        "WHERE",
    }
)

_BUILTIN_NAMES = {
    code: name
    for name, code in vars(_schema.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(code, int)
}
_TENSOR_TYPE_NAMES = {
    code: name.lower()
    for name, code in vars(_schema.TensorType).items()
    if not name.startswith("_") and isinstance(code, int)
}


class NonBuiltinOperatorError(ValueError):
    """A `.tflite` file holds Flex or custom operators."""


class DynamicShapeError(ValueError):
    """A `.tflite` file has tensors of unknown size or dynamic-shape ops."""


@dataclasses.dataclass(frozen=True, order=True)
class Operator:
    """One operator code of a `.tflite` file.

    Attributes:
        name: str. The built-in name (`"FULLY_CONNECTED"`), or the custom
            code of a custom or Flex operator (`"FlexErfinv"`).
        kind: str. `"builtin"`, `"flex"` (a TensorFlow kernel, needs the
            Flex delegate) or `"custom"`.
        version: int. The operator version the file asks for.
    """

    name: str
    kind: str
    version: int


def _read(model):
    """The flatbuffer root of `model`: a path or the file's bytes."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        where = "the given bytes"
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No .tflite file at {path!r}")
        with open(path, "rb") as file:
            data = file.read()
        where = repr(path)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier)."
        )
    return _schema.Model.GetRootAs(data, 0)


def _operator_code(code):
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin != _schema.BuiltinOperator.CUSTOM:
        name = _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")
        return Operator(name, "builtin", code.Version())
    custom = (code.CustomCode() or b"").decode("utf-8", "replace")
    kind = "flex" if custom.startswith("Flex") else "custom"
    return Operator(custom, kind, code.Version())


def operator_counts(model):
    """How often each operator is used, over every subgraph.

    Args:
        model: path of a `.tflite` file, or its bytes.

    Returns:
        A dict mapping each `Operator` to its number of uses, sorted by
        name.
    """
    root = _read(model)
    codes = [
        _operator_code(root.OperatorCodes(i))
        for i in range(root.OperatorCodesLength())
    ]
    counts = {}
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            operator = codes[subgraph.Operators(i).OpcodeIndex()]
            counts[operator] = counts.get(operator, 0) + 1
    return dict(sorted(counts.items()))


def list_operators(model):
    """The distinct operators a `.tflite` file uses, sorted by name."""
    return list(operator_counts(model))


def non_builtin_operators(model):
    """The Flex and custom operators of a `.tflite` file (empty if none)."""
    return [op for op in list_operators(model) if op.kind != "builtin"]


def check_builtin_only(model):
    """Raises `NonBuiltinOperatorError` unless every op is a built-in."""
    others = non_builtin_operators(model)
    if others:
        listed = ", ".join(f"{op.name} ({op.kind})" for op in others)
        raise NonBuiltinOperatorError(
            f"The model uses operators that are not TFLite built-ins: "
            f"{listed}. A phone runtime without the Flex delegate or a "
            "custom-op library cannot run it."
        )


# Operators that only convert between float and integer tensors.
CONVERSION_OPERATORS = frozenset({"CAST", "DEQUANTIZE", "QUANTIZE"})


def float_operators(model):
    """Operators that compute in floating point.

    Every operator with a float input or output, except the conversions
    `CAST`, `QUANTIZE` and `DEQUANTIZE`. A full-integer model has none.

    Returns:
        A sorted list of `(operator name, output tensor name)` pairs.
    """
    root = _read(model)
    codes = [
        _operator_code(root.OperatorCodes(i))
        for i in range(root.OperatorCodesLength())
    ]
    floats = {_schema.TensorType.FLOAT32, _schema.TensorType.FLOAT16}
    found = set()
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(i)
            name = codes[operator.OpcodeIndex()].name
            if name in CONVERSION_OPERATORS:
                continue
            indices = [
                int(t)
                for t in (
                    *operator.InputsAsNumpy().tolist(),
                    *operator.OutputsAsNumpy().tolist(),
                )
                if t >= 0
            ]
            if any(subgraph.Tensors(t).Type() in floats for t in indices):
                output = operator.Outputs(0) if operator.OutputsLength() else -1
                tensor = subgraph.Tensors(output) if output >= 0 else None
                label = (tensor.Name() or b"").decode() if tensor else ""
                found.add((name, label))
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Name, static shape, shape signature and type of one tensor."""

    name: str
    shape: tuple
    shape_signature: tuple
    dtype: str


def tensors(model):
    """Every tensor of every subgraph, as `TensorInfo`."""
    root = _read(model)
    found = []
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for i in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(i)
            shape = (
                tuple(int(d) for d in tensor.ShapeAsNumpy())
                if (tensor.ShapeLength())
                else ()
            )
            signature = (
                tuple(int(d) for d in tensor.ShapeSignatureAsNumpy())
                if tensor.ShapeSignatureLength()
                else shape
            )
            found.append(
                TensorInfo(
                    (tensor.Name() or b"").decode("utf-8", "replace"),
                    shape,
                    signature,
                    _TENSOR_TYPE_NAMES.get(tensor.Type(), str(tensor.Type())),
                )
            )
    return found


def dynamic_tensors(model):
    """Tensors whose shape signature holds an unknown (-1) dimension."""
    return [t for t in tensors(model) if any(d < 0 for d in t.shape_signature)]


def check_static_shapes(model):
    """Raises `DynamicShapeError` on unknown dimensions or dynamic ops."""
    problems = []
    unknown = dynamic_tensors(model)
    if unknown:
        shown = ", ".join(
            f"{t.name} {list(t.shape_signature)}" for t in unknown[:5]
        )
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        problems.append(f"tensors with unknown dimensions: {shown}{more}")
    dynamic = sorted(
        op.name
        for op in list_operators(model)
        if op.name in DYNAMIC_SHAPE_OPERATORS
    )
    if dynamic:
        problems.append(f"dynamic-shape operators: {', '.join(dynamic)}")
    if problems:
        raise DynamicShapeError(
            "The model is not fully static (batch 1 and a fixed sequence "
            f"length were expected): {'; '.join(problems)}."
        )


def calibration_ranges(model):
    """The activation ranges recorded in a calibrated float model.

    The TFLite converter's calibration step runs the float model on the
    representative data and writes, into each tensor it saw, the lowest
    and highest value met; its int8 quantizer then derives each scale and
    zero point from that range.

    Args:
        model: a calibrated float `.tflite` model, path or bytes.

    Returns:
        A dict mapping tensor index (in the first subgraph) to
        `(min, max)`, for every tensor with one recorded range.
    """
    subgraph = _read(model).Subgraphs(0)
    ranges = {}
    for index in range(subgraph.TensorsLength()):
        quantization = subgraph.Tensors(index).Quantization()
        if (
            quantization is not None
            and quantization.MinLength() == 1
            and quantization.MaxLength() == 1
        ):
            ranges[index] = (
                float(quantization.Min(0)),
                float(quantization.Max(0)),
            )
    return ranges


def with_calibration_ranges(model, ranges):
    """A calibrated float model with other activation ranges.

    Args:
        model: bytes of a calibrated float `.tflite` model.
        ranges: dict of tensor index to `(min, max)`, for tensors that
            `calibration_ranges` lists.

    Returns:
        The model's bytes, with those ranges written in place (the file
        keeps its size and layout).
    """
    _read(model)
    data = bytearray(model)
    subgraph = _schema.Model.GetRootAs(data, 0).Subgraphs(0)
    for index, (low, high) in ranges.items():
        quantization = subgraph.Tensors(index).Quantization()
        if (
            quantization is None
            or quantization.MinLength() != 1
            or quantization.MaxLength() != 1
        ):
            raise ValueError(f"Tensor {index} has no recorded range.")
        if not low <= high:
            raise ValueError(
                f"Tensor {index}: the range [{low}, {high}] is empty."
            )
        # Views into `data`: writing them edits the flatbuffer.
        quantization.MinAsNumpy()[0] = low
        quantization.MaxAsNumpy()[0] = high
    return bytes(data)
