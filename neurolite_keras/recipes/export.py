"""Export recipe: a trained NeuroLite `.keras` classifier to a `.tflite`
file a phone can run, with only TFLite built-in operators.

Run it as `neurolite export MODEL.keras --quantization int8 [--qat-epochs N]
[--output FILE]`, or call `export_model`. It writes `FILE.tflite` and,
beside it, `FILE.tflite.json` (the sidecar: featurizer settings, label
names, tensors, quantization and golden featurizer vectors), which
`LiteRTClassifier` reads to classify raw text with no `.keras` file.

This module holds the conversion (`convert_model`, its operator and shape
checks, `static_input_signature`), the sidecar, the TensorFlow subprocess
and `export_model`. Beside it in `neurolite_keras.recipes`: `qat` (the
quantization-aware fine-tune), `memory_export` (the episodic memory as
explicit state) and `parity` (the `.tflite` against the `.keras` model).

Quantization modes:

- `"float32"`: no quantization; logits match Keras within 1e-5.
- `"float16"`: float16 weights, float32 compute.
- `"dynamic"`: int8 weights, float32 activations.
- `"int8"`: full integer. Weights are int8 with one scale per output unit
  (`per_channel=True`) or one per tensor (`per_channel=False`, for
  accelerators such as Android NNAPI that reject per-channel fully
  connected weights); activations are int8, with ranges calibrated on real
  sentences. With `qat_epochs > 0` the model is first fine-tuned with fake
  int8 weights (`QuantizationAwareModel`, through
  `qat.quantization_aware_fine_tune`) on the given training texts, on
  whichever backend is active.

Inputs and outputs: the model's inputs stay int32 in every mode
(`hash_indices` are Bloom filter indices, `padding_mask` is 0 or 1; the
first int8 operation quantizes inside the graph). The output is float32
logits (the graph ends with one dequantize), or int8 with
`int8_output=True`, whose scale and zero point the sidecar records. Batch 1
and the sequence length are static.

A classifier with episodic memory (`use_external_memory=True`) exports
its memory as explicit state (`memory_export.memory_serving_model`): the
five state arrays of `neurolite_keras.memory_state` are extra inputs,
their updated values `new_<name>` extra outputs, and `write_mask` /
`write_labels` say whether a call also writes its text, so an app keeps
the state, feeds it back and saves it (`LiteRTClassifier.write_memory`,
`save_memory_state`).
The `.tflite` file starts from an empty memory: the contents of the
`.keras` model's memory travel as a `.npz` state file
(`model.save_memory_state`, then `LiteRTClassifier.load_memory_state`).
Such a model exports as float32, float16 or dynamic, not int8.

Conversion needs the TensorFlow backend. A model trained under JAX or
PyTorch is converted in a subprocess, `python -m
neurolite_keras.recipes.export --request R --result S`, that runs with
`KERAS_BACKEND=tensorflow`; its errors come back as the same exceptions.

Measured on two shared CPU cores (tiny preset, trained on three SIB-200
languages): an int8 conversion with 200 calibration sentences takes about
20 seconds; the file is 1.1 MB; see `benchmarks/export_size_latency.py` for
sizes and latencies of every preset.
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings

import keras
import numpy as np

from neurolite_keras import atomic_io
from neurolite_keras.featurizer import check_texts
from neurolite_keras.litert_runner import MEMORY_SIDECAR_VERSION
from neurolite_keras.litert_runner import SIDECAR_FORMAT
from neurolite_keras.litert_runner import SIDECAR_VERSION
from neurolite_keras.litert_runner import SIGNATURE_KEY
from neurolite_keras.litert_runner import LiteRTClassifier
from neurolite_keras.litert_runner import sidecar_path
from neurolite_keras.quantization import check_quantization
from neurolite_keras.recipes.export_forms import export_forms
from neurolite_keras.recipes.memory_export import MEMORY_INPUT_DESCRIPTIONS
from neurolite_keras.recipes.memory_export import _memory_sidecar
from neurolite_keras.recipes.memory_export import memory_layer
from neurolite_keras.recipes.memory_export import memory_serving_model
from neurolite_keras.recipes.parity import _keras_logits
from neurolite_keras.recipes.parity import _label_ids
from neurolite_keras.recipes.parity import parity_figures
from neurolite_keras.recipes.qat import quantization_aware_fine_tune
from neurolite_keras.tflite_ops import calibration_ranges
from neurolite_keras.tflite_ops import check_builtin_only
from neurolite_keras.tflite_ops import check_static_shapes
from neurolite_keras.tflite_ops import operator_counts
from neurolite_keras.tflite_ops import with_calibration_ranges
from neurolite_keras.validation import check_number_in

# A few texts in several scripts whose features the sidecar records, so a
# port of the featurizer can check itself against them.
GOLDEN_TEXTS = (
    "Le chat dort sur le canapé depuis ce matin.",
    "The quick brown fox jumps over the lazy dog.",
    "Der Zug nach München fährt um 8:15 Uhr ab.",
    "Москва — столица России.",
    "القاهرة أكبر مدينة في أفريقيا.",
    "भारत एक विशाल देश है।",
    "我喜欢在周末学习新的语言。",
    "東京は日本の首都です。",
    "Emoji 🙂 and numbers 12345!",
    "",
)

# Fewer calibration sentences than this draw a warning.
MIN_CALIBRATION_TEXTS = 20

# Each int8 activation range spans 99.99% of that tensor's calibration
# values, 0.005% falling outside at each end (see `percentile_ranges`).
CALIBRATION_PERCENTILE = 99.99

INPUT_DESCRIPTIONS = {
    "hash_indices": "Bloom filter indices of each token, in "
    "[0, bloom_filter_size), or -1 for an empty slot (bottom_k MinHash); "
    "padding rows hold 0",
    "padding_mask": "1 for a real token, 0 for padding",
}


class ExportError(RuntimeError):
    """The conversion to TFLite failed; the message says why."""


class UnsupportedOperatorError(ExportError):
    """A layer uses an operation that has no TFLite built-in operator.

    Attributes:
        layer: name of the layer, or `None` if it could not be told.
        op: the TensorFlow operation, such as `"Erfinv"`.
    """

    def __init__(self, message, layer=None, op=None):
        super().__init__(message)
        self.layer = layer
        self.op = op


@dataclasses.dataclass
class ExportResult:
    """What `export_model` wrote.

    Attributes:
        tflite_path: str. The `.tflite` file.
        sidecar_path: str. Its sidecar JSON.
        quantization: str. The mode.
        per_channel: bool. Per-channel weight scales (int8, dynamic).
        size_bytes: int. Size of the `.tflite` file.
        operators: dict. Operator name to number of uses.
        parity: dict or `None`. `parity_figures` on the validation texts,
            against the `.keras` model given to `export_model`.
        calibration_parity: dict or `None`. For int8, `parity_figures` on
            up to 64 calibration texts: a quick check that the int8 model
            follows the float one (a warning is raised below 95% top-1
            agreement).
        qat: dict or `None`. Epochs and losses of the QAT fine-tune.
    """

    tflite_path: str
    sidecar_path: str
    quantization: str
    per_channel: bool
    size_bytes: int
    operators: dict
    parity: dict = None
    calibration_parity: dict = None
    qat: dict = None


# --- Conversion (TensorFlow backend) ---------------------------------------


def _input_specs(model):
    """Input name -> (shape with batch 1, dtype); every dimension static."""
    inputs = model.input
    if not isinstance(inputs, dict):
        raise ExportError(
            "Export expects a model whose inputs are a dict of named "
            f"tensors (hash_indices, padding_mask); {model.name!r} takes "
            f"{type(inputs).__name__}."
        )
    specs = {}
    for name, tensor in inputs.items():
        # A free batch dimension becomes 1; a fixed first dimension (the
        # episodic memory's state tensors, shaped by slot) is kept.
        shape = tuple(tensor.shape)
        if shape and shape[0] is None:
            shape = (1, *shape[1:])
        if any(d is None for d in shape):
            raise ExportError(
                f"Input {name!r} of {model.name!r} has shape {tensor.shape}: "
                "every dimension but the batch must be fixed for export."
            )
        specs[name] = (shape, str(tensor.dtype))
    return specs


def static_input_signature(model, batch_size=1):
    """The model's inputs as `keras.InputSpec`s with a fixed batch size.

    Pass it to `model.export(path, format="litert", input_signature=...)`:
    without it Keras (3.15) derives the signature with the batch dimension
    set to `None`, even for a model built on `Input(batch_size=1)`, and
    the `.tflite` file gets a dynamic batch.

    Returns:
        A one-element list holding a dict of `keras.InputSpec`.
    """
    return [
        {
            name: keras.InputSpec(
                shape=(batch_size, *shape[1:]), dtype=dtype, name=name
            )
            for name, (shape, dtype) in _input_specs(model).items()
        }
    ]


def _layer_for_node(model, node):
    """The layer a TensorFlow node path such as `m_1/mixer_0_1/Erfinv`
    belongs to: the deepest path segment naming a layer."""
    names = {model.name: model}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        names.setdefault(layer.name, layer)
    for segment in reversed(node.split("/")[:-1]):
        for candidate in (segment, re.sub(r"_\d+$", "", segment)):
            if candidate in names and names[candidate] is not model:
                return names[candidate]
    return None


def _explain_conversion_error(error, model, quantization):
    """A short error naming the layer and op, from a converter message."""
    text = str(error)
    unsupported = re.findall(
        r"'tf\.(\w+)' op is neither a custom op nor a flex op", text
    )
    if unsupported:
        op = unsupported[0]
        nodes = re.findall(r'fused\["' + op + r':", "([^"@]+)', text)
        layer = _layer_for_node(model, nodes[0]) if nodes else None
        where = (
            f"Layer {layer.name!r} ({type(layer).__name__})"
            if layer is not None
            else "A layer"
        )
        others = sorted(set(unsupported) - {op})
        also = f" (also: {', '.join(others)})" if others else ""
        return UnsupportedOperatorError(
            f"{where} uses the TensorFlow op {op!r}{also}, which has no "
            "TFLite built-in operator, so the model cannot be exported with "
            "built-in operators only. Rewrite that layer with operations "
            "that TFLite has built-ins for.",
            layer=None if layer is None else layer.name,
            op=op,
        )
    lines = [
        line.strip()
        for line in text.splitlines()
        if "error:" in line and "failed while converting" not in line
    ]
    detail = lines[0] if lines else (text.strip().splitlines() or [""])[-1]
    return ExportError(
        f"TFLite conversion ({quantization}) of {model.name!r} failed: "
        f"{detail[:600]}"
    )


def convert_model(
    model,
    quantization="float32",
    calibration_features=None,
    per_channel=True,
    int8_output=False,
    calibration_percentile=CALIBRATION_PERCENTILE,
):
    """Converts a Keras model to TFLite flatbuffer bytes (TensorFlow only).

    The model is traced with batch 1 in a `tf.function`, written with its
    variables as a SavedModel in a temporary folder, and converted with
    TFLite built-in operators only (`TFLITE_BUILTINS`, or
    `TFLITE_BUILTINS_INT8` for `"int8"`). Variables become constants.
    Layer normalizations are traced in the form of `export_forms`: the
    same arithmetic with operators that XNNPACK (LiteRT's CPU path) runs
    in int8, which makes an int8 model about twice as fast.

    Args:
        model: a Keras model whose inputs are a dict of fixed-size tensors.
        quantization: one of `QUANTIZATIONS`.
        calibration_features: for `"int8"`, a dict of arrays with one row
            per calibration example (the featurizer's output).
        per_channel: bool. Per-channel weight scales (`"int8"`,
            `"dynamic"`).
        int8_output: bool. Leave the output int8 (`"int8"` only).
        calibration_percentile: float in [50, 100]. For `"int8"`, the
            share of each activation's calibration values, in percent,
            that its int8 range spans: the rest, half at each end, is
            clipped (see `percentile_ranges`). `100` keeps the
            converter's own min/max ranges. Defaults to
            `CALIBRATION_PERCENTILE` (99.99).

    Returns:
        bytes.

    Raises:
        UnsupportedOperatorError: a layer uses an op with no built-in.
        ExportError: any other conversion failure.
    """
    import tensorflow as tf

    check_quantization(quantization)
    _check_percentile(calibration_percentile)
    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            "convert_model needs the TensorFlow backend; export_model "
            "switches to it by itself."
        )
    specs = _input_specs(model)
    signature = [
        {
            name: tf.TensorSpec(shape, dtype, name=name)
            for name, (shape, dtype) in specs.items()
        }
    ]

    @tf.function(input_signature=signature)
    def serve(inputs):
        return model(inputs, training=False)

    # A bare module that tracks only the variables: saving the Keras model
    # itself would also trace every sublayer's default signature.
    module = tf.Module()
    module.model_variables = [variable.value for variable in model.variables]
    module.serve = serve
    with tempfile.TemporaryDirectory(prefix="neurolite-savedmodel-") as folder:
        # Traced (by `get_concrete_function`) in the export forms.
        with warnings.catch_warnings(), export_forms(model):
            warnings.simplefilter("ignore")
            tf.saved_model.save(
                module,
                folder,
                signatures={SIGNATURE_KEY: serve.get_concrete_function()},
            )
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if not per_channel:
            converter._experimental_disable_per_channel = True
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True  # noqa: E501
        percentile = quantization == "int8" and calibration_percentile < 100
        if quantization == "int8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            ]
            converter.representative_dataset = _representative_dataset(
                calibration_features, specs
            )
            if int8_output:
                converter.inference_output_type = tf.int8
            # Stop after calibration: the ranges are narrowed, then the
            # model is quantized as `convert` would have.
            converter._experimental_calibrate_only = percentile
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flatbuffer = converter.convert()
                if percentile:
                    calibrated = with_calibration_ranges(
                        flatbuffer,
                        percentile_ranges(
                            flatbuffer,
                            _representative_dataset(
                                calibration_features, specs
                            ),
                            calibration_percentile,
                        ),
                    )
                    flatbuffer = _quantize_calibrated(
                        calibrated, per_channel, int8_output
                    )
                return flatbuffer
        except Exception as error:  # The converter raises several types.
            raise _explain_conversion_error(
                error, model, quantization
            ) from None


def _representative_dataset(features, specs):
    if features is None:
        raise ValueError(
            "Full-integer (int8) export needs calibration features."
        )
    sizes = {len(features[name]) for name in specs}
    if len(sizes) != 1 or not sizes.pop():
        raise ValueError(
            "The calibration set is empty: int8 export needs real sentences "
            "to calibrate activation ranges (pass `calibration_texts`)."
        )

    def generate():
        for row in range(len(features[next(iter(specs))])):
            yield {
                name: np.asarray(features[name][row : row + 1], dtype=dtype)
                for name, (_, dtype) in specs.items()
            }

    return generate


# --- Activation ranges (int8) ------------------------------------------------


def _check_percentile(percentile):
    return check_number_in("calibration_percentile", percentile, 50.0, 100.0)


def percentile_ranges(calibrated, dataset, percentile):
    """Activation ranges that span `percentile` % of the calibration
    values of each tensor.

    Runs the calibrated float model (the converter's output before int8
    quantization) on the calibration rows with LiteRT, keeping every
    intermediate tensor, and sets each recorded range to the percentiles
    `(100 - percentile) / 2` and `100 - (100 - percentile) / 2` of that
    tensor's values (every element of every row), never wider than the
    recorded min and max. A tensor with too few values to clip one keeps
    its min and max.

    Why: a range set by min and max follows the rarest values. In the
    trained tiny SIB-200 model, one channel of the residual stream reaches
    +169 at one position of the longest sentences while the other values
    stay within about -90 and +75: the int8 step of that stream, and of
    most activations, was 1.5 to 1.8 times coarser than the bulk of the
    values needs, and that rounding noise flipped near-tie decisions.

    Args:
        calibrated: bytes of the calibrated float model.
        dataset: the representative dataset (a function returning an
            iterator of input dicts, one row each).
        percentile: float in [50, 100).

    Returns:
        A dict of tensor index to `(min, max)`, for
        `tflite_ops.with_calibration_ranges`.
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType

    recorded = calibration_ranges(calibrated)
    interpreter = Interpreter(
        model_content=calibrated,
        experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        ),
        experimental_preserve_all_tensors=True,
    )
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    rows = list(dataset())
    tail = (100.0 - percentile) / 200.0
    sizes = {
        t["index"]: int(np.prod(t["shape"]))
        for t in interpreter.get_tensor_details()
        if t["index"] in recorded
    }
    # How many values fall outside the range at each end, per tensor.
    clipped = {i: int(tail * len(rows) * sizes[i]) for i in recorded}
    tensors = [i for i in recorded if clipped[i]]
    lowest = {i: np.empty(0, "float32") for i in tensors}
    highest = {i: np.empty(0, "float32") for i in tensors}
    for row in rows:
        runner(**row)
        for i in tensors:
            # The `keep` lowest and highest values seen so far.
            keep = clipped[i] + 1
            values = interpreter.get_tensor(i).reshape(-1)
            low, high = lowest[i], highest[i]
            # Once `keep` values are held, only values beyond them count:
            # one comparison pass, then a partition of the few left.
            low = np.concatenate(
                [
                    values[values < low.max()] if low.size == keep else values,
                    low,
                ]
            )
            if low.size > keep:
                low = np.partition(low, keep - 1)[:keep]
            high = np.concatenate(
                [
                    values[values > high.min()]
                    if high.size == keep
                    else values,
                    high,
                ]
            )
            if high.size > keep:
                high = np.partition(high, high.size - keep)[-keep:]
            lowest[i], highest[i] = low, high
    ranges = {}
    for i in tensors:
        low, high = recorded[i]
        ranges[i] = (
            max(low, float(np.max(lowest[i]))),
            min(high, float(np.min(highest[i]))),
        )
    return ranges


def _quantize_calibrated(calibrated, per_channel, int8_output):
    """The int8 model from a calibrated float one, as `convert` makes it.

    `tf.lite.TFLiteConverter` has no public step between calibration and
    quantization; this is the call `convert` makes after calibrating, which
    TensorFlow's own `tf.lite.experimental.QuantizationDebugger` makes too.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    return tflite_convert.mlir_quantize(
        calibrated,
        disable_per_channel=not per_channel,
        input_data_type=tf.float32,
        output_data_type=tf.int8 if int8_output else tf.float32,
        disable_per_channel_for_dense_layers=not per_channel,
    )


# --- Writing the `.tflite` file and its sidecar -------------------------------


def _check_memory_quantization(quantization):
    if quantization == "int8":
        # TODO: full-integer memory export. The graph converts with int8
        # built-ins, but int8 keys and label scores (ranges calibrated on
        # sample states) lose the memory's parity: on a tiny model, after
        # a few writes and reads, logits differed by up to 12.6 at a logit
        # scale of 16, a read recalled another slot, and the usage record
        # then replaced another slot. Keeping the memory in float inside
        # an int8 backbone needs a mixed-precision conversion.
        raise ExportError(
            "A classifier with episodic memory (use_external_memory=True) "
            "exports as float32, float16 or dynamic, not int8: with int8 "
            "activations the keys written at run time and the label scores "
            "are rounded to ranges fixed before any write, so reads recall "
            "other slots and the state no longer follows the Keras model. "
            "Pass quantization='float32' (or --quantization float32)."
        )


def _tensor_details(details):
    scale, zero_point = details["quantization"]
    return {
        "shape": [int(d) for d in details["shape"]],
        "dtype": np.dtype(details["dtype"]).name,
        "quantization": (
            {"scale": float(scale), "zero_point": int(zero_point)}
            if scale
            else None
        ),
    }


def _io_details(flatbuffer):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    inputs = [
        {
            "name": name,
            **_tensor_details(details),
            "description": INPUT_DESCRIPTIONS.get(
                name, MEMORY_INPUT_DESCRIPTIONS.get(name, "")
            ),
        }
        for name, details in sorted(runner.get_input_details().items())
    ]
    outputs = [
        {"name": name, **_tensor_details(details)}
        for name, details in sorted(runner.get_output_details().items())
    ]
    return inputs, outputs


def _weights_description(quantization, per_channel):
    if quantization == "float32":
        return "float32"
    if quantization == "float16":
        return "float16"
    grain = "per-channel" if per_channel else "per-tensor"
    return (
        f"int8, symmetric {grain} scales for fully connected weights; "
        "embedding tables int8 per-tensor with a zero point"
        if quantization == "int8"
        else f"int8, symmetric {grain} scales (dequantized at run time)"
    )


def _calibration_texts(texts, limit):
    """At most `limit` texts, evenly spread (data sets often concatenate
    languages or classes)."""
    if len(texts) <= limit:
        return list(texts)
    positions = np.linspace(0, len(texts) - 1, limit).round().astype(int)
    return [texts[i] for i in positions]


def _convert_and_write(
    model_path,
    output_path,
    quantization,
    per_channel=True,
    int8_output=False,
    calibration_percentile=CALIBRATION_PERCENTILE,
    calibration_texts=None,
    validation_texts=None,
    validation_labels=None,
    source_model_path=None,
    qat=None,
):
    """Loads, converts, checks and writes the `.tflite` and its sidecar
    (TensorFlow backend). Returns an `ExportResult`."""
    import tensorflow as tf

    from neurolite_keras import __version__
    from neurolite_keras.models import load_model

    try:
        model = load_model(model_path)
    except FileNotFoundError:
        raise
    except Exception as error:  # Keras raises several types here.
        raise ExportError(
            f"Could not load {model_path!r} as a Keras model: "
            f"{type(error).__name__}: {str(error)[:300]}"
        ) from None
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "label_names"):
        raise ExportError(
            f"{model_path!r} holds a {type(model).__name__}; export needs a "
            "NeuroLite classifier (NeuroLiteForClassification), which "
            "carries its featurizer settings and label names."
        )
    if validation_labels and not set(validation_labels) & set(
        model.label_names
    ):
        raise ValueError(
            f"None of the validation labels are labels of {model_path!r} "
            f"(such as {sorted(set(validation_labels))[:3]}; the model has "
            f"{sorted(model.label_names)[:3]}...): the texts come from "
            "another data set than the model's, so parity on them would "
            "mean nothing. Pass the data set the model was trained on."
        )
    featurizer = model.featurizer
    memory = memory_layer(model)
    target = model
    if memory is not None:
        _check_memory_quantization(quantization)
        target = memory_serving_model(model)
    features = None
    if quantization == "int8":
        # With rules, the calibration inputs include their evidence.
        features = model.featurize(check_texts(calibration_texts or []))
    flatbuffer = convert_model(
        target,
        quantization,
        features,
        per_channel,
        int8_output,
        calibration_percentile=calibration_percentile,
    )
    try:
        check_builtin_only(flatbuffer)
        check_static_shapes(flatbuffer)
    except ValueError as error:
        raise ExportError(str(error)) from None
    counts = {op.name: n for op, n in operator_counts(flatbuffer).items()}
    inputs, outputs = _io_details(flatbuffer)

    with tempfile.TemporaryDirectory(prefix="neurolite-export-") as folder:
        # Run the converted model through the runner for the golden
        # outputs and the parity figures.
        staged = os.path.join(folder, "model.tflite")
        with open(staged, "wb") as file:
            file.write(flatbuffer)
        sidecar = {
            "format": SIDECAR_FORMAT,
            # A runner older than the memory sidecar must refuse the file.
            "format_version": (
                SIDECAR_VERSION if memory is None else MEMORY_SIDECAR_VERSION
            ),
            "task": "text-classification",
            "tflite_file": os.path.basename(output_path),
            "tflite_size_bytes": len(flatbuffer),
            "tflite_sha256": _sha256(flatbuffer),
            "signature": SIGNATURE_KEY,
            "output_name": "logits",
            "label_names": list(model.label_names),
            "featurizer": featurizer.get_config(),
            "config": config.get_config(),
            "inputs": inputs,
            "outputs": outputs,
            "quantization": {
                "mode": quantization,
                "weights": _weights_description(quantization, per_channel),
                "activations": "int8" if quantization == "int8" else "float32",
                "per_channel": bool(per_channel),
                "input_types": sorted({i["dtype"] for i in inputs}),
                "output_type": outputs[0]["dtype"] if outputs else None,
                "calibration_texts": (
                    len(calibration_texts or [])
                    if quantization == "int8"
                    else 0
                ),
                "calibration_percentile": (
                    calibration_percentile if quantization == "int8" else None
                ),
                "qat_epochs": 0 if qat is None else qat["epochs"],
            },
            "operators": counts,
            "memory": None if memory is None else _memory_sidecar(memory),
            "rules": (
                model.rules.to_dict() if config.use_symbolic_module else None
            ),
            "golden_vectors": featurizer.golden_vectors(list(GOLDEN_TEXTS)),
            "qat": qat,
            "parity": None,
            "calibration_parity": None,
            "created_with": {
                "neurolite_keras": __version__,
                "keras": keras.__version__,
                "tensorflow": tf.__version__,
                "source_model": os.path.basename(
                    source_model_path or model_path
                ),
            },
        }
        atomic_io.write_text(sidecar_path(staged), _to_json(sidecar))
        runner = LiteRTClassifier(staged)
        golden_logits = runner.predict_logits(list(GOLDEN_TEXTS))
        for golden, logits in zip(sidecar["golden_vectors"], golden_logits):
            golden["tflite_logits"] = [float(x) for x in logits]
        reference = model
        if validation_texts or quantization == "int8":
            if source_model_path and source_model_path != model_path:
                reference = load_model(source_model_path)
        if memory is not None:
            # Parity with the episodic contents the `.keras` file holds.
            runner.set_memory_state(reference.get_memory_state())
        if quantization == "int8":
            sample = _calibration_texts(calibration_texts, 64)
            sidecar["calibration_parity"] = parity_figures(
                _keras_logits(reference, sample),
                runner.predict_logits(sample),
                quantization=quantization,
            )
        if validation_texts:
            sidecar["parity"] = parity_figures(
                _keras_logits(reference, validation_texts),
                runner.predict_logits(validation_texts),
                _label_ids(reference, validation_labels),
                quantization=quantization,
            )
        del runner

    _write_pair(output_path, flatbuffer, _to_json(sidecar))
    return ExportResult(
        tflite_path=output_path,
        sidecar_path=sidecar_path(output_path),
        quantization=quantization,
        per_channel=bool(per_channel),
        size_bytes=len(flatbuffer),
        operators=counts,
        parity=sidecar["parity"],
        calibration_parity=sidecar["calibration_parity"],
        qat=qat,
    )


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+]+,\s*)*-?[\d.eE+]+)\s*\]")


def _to_json(data):
    """Indented JSON with each list of numbers on one line."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    text = _NUMBER_LIST.sub(
        lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text
    )
    return text + "\n"


def _sha256(data):
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --- The recipe ------------------------------------------------------------


def _check_pair(texts, labels, what):
    texts = check_texts(texts, f"{what}_texts")
    if labels is not None:
        labels = list(np.asarray(labels).reshape(-1).tolist())
        if len(labels) != len(texts):
            raise ValueError(
                f"Got {len(texts)} {what} texts but {len(labels)} labels."
            )
    return texts, labels


def export_model(
    model_path,
    output_path=None,
    quantization="int8",
    qat_epochs=0,
    calibration_texts=None,
    train_texts=None,
    train_labels=None,
    validation_texts=None,
    validation_labels=None,
    per_channel=True,
    int8_output=False,
    calibration_percentile=CALIBRATION_PERCENTILE,
    num_calibration_texts=200,
    qat_batch_size=32,
    qat_learning_rate=1e-5,
    qat_distillation=1.0,
    verbose=0,
):
    """Exports a NeuroLite `.keras` classifier to `.tflite` plus sidecar.

    Works under any backend: QAT (if asked) runs on the active backend,
    and the conversion runs on TensorFlow, in a subprocess when another
    backend is active. Both files are written atomically at the end; a
    failed export leaves no file behind and an earlier export intact.

    Args:
        model_path: path of the `.keras` file.
        output_path: path of the `.tflite` file. Defaults to `model_path`
            with the suffix `.tflite`.
        quantization: `"float32"`, `"float16"`, `"dynamic"` or `"int8"`.
            Defaults to `"int8"`.
        qat_epochs: int. Epochs of quantization-aware fine-tuning before
            an int8 export; `0` calibrates the float model post-training.
            Defaults to `0`.
        calibration_texts: list of str, real sentences whose activations
            set the int8 ranges (at most `num_calibration_texts` are used,
            evenly spread). Defaults to the training texts.
        train_texts, train_labels: training data for QAT.
        validation_texts, validation_labels: optional texts (and labels)
            on which the sidecar records parity with the `.keras` model.
        per_channel: bool. Per-channel weight scales; `False` for
            per-tensor ones (Android NNAPI). Defaults to `True`.
        int8_output: bool. Leave the int8 model's output in int8.
            Defaults to `False` (float32 logits).
        calibration_percentile: float in [50, 100]. Share, in percent, of
            each activation's calibration values that its int8 range spans
            (see `convert_model`). Defaults to `CALIBRATION_PERCENTILE`.
        num_calibration_texts: int. Defaults to `200`.
        qat_batch_size: int. Defaults to `32`.
        qat_learning_rate: float. Defaults to `1e-5`.
        qat_distillation: float in [0, 1]. Weight of the float model's own
            predictions in the QAT targets, the rest going to the labels
            (see `quantization_aware_fine_tune`). Defaults to `1.0`, which
            needs no labels.
        verbose: Keras' progress setting for QAT. Defaults to `0`.

    Returns:
        An `ExportResult`.

    Raises:
        ValueError: an unknown quantization, an empty calibration set, QAT
            without training data, or other bad arguments.
        FileNotFoundError: no model file.
        UnsupportedOperatorError: a layer's op has no TFLite built-in.
        ExportError: the conversion failed otherwise.
    """
    quantization = check_quantization(quantization)
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"No model file at {model_path!r}")
    if not model_path.endswith(".keras"):
        raise ValueError(
            f"Export reads a .keras model file. Received: {model_path!r}"
        )
    if output_path is None:
        output_path = os.path.splitext(model_path)[0] + ".tflite"
    output_path = os.path.abspath(os.fspath(output_path))
    if not output_path.endswith(".tflite"):
        raise ValueError(
            f"The output file name must end in '.tflite'. Received: "
            f"{output_path!r}"
        )
    _check_output_path(output_path)
    for name, value, low in (
        ("qat_epochs", qat_epochs, 0),
        ("num_calibration_texts", num_calibration_texts, 1),
        ("qat_batch_size", qat_batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"`{name}` must be an integer >= {low}. "
                f"Received: {name}={value!r}"
            )
    for name, value in (
        ("per_channel", per_channel),
        ("int8_output", int8_output),
    ):
        if not isinstance(value, bool):
            raise ValueError(
                f"`{name}` must be True or False. Received: {name}={value!r}"
            )
    calibration_percentile = _check_percentile(calibration_percentile)
    if qat_epochs and quantization != "int8":
        raise ValueError(
            "Quantization-aware training prepares a full-integer export: "
            f"use quantization='int8' with qat_epochs={qat_epochs}, or "
            f"qat_epochs=0 with quantization={quantization!r}."
        )
    if int8_output and quantization != "int8":
        raise ValueError("`int8_output=True` needs quantization='int8'.")
    if train_texts is not None:
        train_texts, train_labels = _check_pair(
            train_texts, train_labels, "train"
        )
    if qat_epochs and not train_texts:
        raise ValueError(
            f"qat_epochs={qat_epochs} needs training data: pass "
            "`train_texts` (and `train_labels` when qat_distillation < 1)."
        )
    calibration = None
    if quantization == "int8":
        if calibration_texts is None:
            calibration_texts = train_texts
        if calibration_texts is None:
            raise ValueError(
                "Full-integer (int8) export calibrates activation ranges on "
                "real sentences: pass `calibration_texts` (or training "
                "texts)."
            )
        calibration = check_texts(calibration_texts, "calibration_texts")
        # Empty texts are all padding: they calibrate nothing.
        calibration = [text for text in calibration if text.strip()]
        if not calibration:
            raise ValueError(
                "The calibration set is empty (or holds only empty texts): "
                "int8 export needs real sentences to calibrate activation "
                "ranges."
            )
        if len(calibration) < MIN_CALIBRATION_TEXTS:
            warnings.warn(
                f"Only {len(calibration)} calibration sentence(s): int8 "
                "ranges set on so few often clip real inputs. Pass "
                f"{MIN_CALIBRATION_TEXTS} or more (200 are used by default).",
                stacklevel=2,
            )
        calibration = _calibration_texts(calibration, num_calibration_texts)
    if validation_texts is not None:
        validation_texts, validation_labels = _check_pair(
            validation_texts, validation_labels, "validation"
        )

    with tempfile.TemporaryDirectory(prefix="neurolite-export-") as folder:
        source = model_path
        qat = None
        if qat_epochs:
            from neurolite_keras.models import load_model

            model = load_model(model_path)
            if memory_layer(model) is not None:
                _check_memory_quantization(quantization)
            history = quantization_aware_fine_tune(
                model,
                train_texts,
                train_labels,
                epochs=qat_epochs,
                per_channel=per_channel,
                distillation=qat_distillation,
                batch_size=qat_batch_size,
                learning_rate=qat_learning_rate,
                verbose=verbose,
            )
            qat = {
                "epochs": qat_epochs,
                "backend": keras.backend.backend(),
                "learning_rate": qat_learning_rate,
                "distillation": qat_distillation,
                "num_texts": len(train_texts),
                "loss": [float(x) for x in history.history["loss"]],
            }
            source = os.path.join(folder, "qat_model.keras")
            model.save(source)
        request = {
            "model_path": source,
            "output_path": output_path,
            "quantization": quantization,
            "per_channel": per_channel,
            "int8_output": int8_output,
            "calibration_percentile": calibration_percentile,
            "calibration_texts": calibration,
            "validation_texts": validation_texts,
            "validation_labels": validation_labels,
            "source_model_path": os.path.abspath(model_path),
            "qat": qat,
        }
        if keras.backend.backend() == "tensorflow":
            result = _convert_and_write(**request)
        else:
            result = _convert_in_subprocess(request, folder)
    check = result.calibration_parity
    if check is not None and check["top1_agreement"] < 0.95:
        cause = (
            f"calibration_percentile={calibration_percentile} clips "
            f"{100 - calibration_percentile:g}% of each activation's "
            "values; 99.99 (the default) or 100 keep more. Another"
            if calibration_percentile < 99
            else "A"
        )
        warnings.warn(
            f"The int8 model agrees with the float model on only "
            f"{check['top1_agreement']:.0%} of {check['num_texts']} "
            f"calibration sentences. {cause} frequent cause is an all-zero "
            "row "
            "(such as a zeroed padding position) entering a layer "
            "normalization: its 1/sqrt(epsilon) stretches the int8 range of "
            "every real token.",
            stacklevel=2,
        )
    return result


def _check_output_path(output_path):
    """Refuses, before any conversion, an output the files cannot take."""
    for path in (output_path, sidecar_path(output_path)):
        if os.path.isdir(path):
            raise ValueError(f"The output {path!r} is a directory.")
    folder = os.path.dirname(output_path)
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if folder and not os.path.isdir(folder):
        raise ValueError(
            f"Cannot write {output_path!r}: {folder!r} is a file, not a folder."
        )


def _write_pair(output_path, flatbuffer, sidecar_text):
    """Writes the `.tflite` and its sidecar, each atomically; if the
    sidecar cannot be written, the previous `.tflite` is put back."""
    previous = None
    if os.path.isfile(output_path):
        with open(output_path, "rb") as file:
            previous = file.read()
    atomic_io.write_bytes(output_path, flatbuffer)
    try:
        atomic_io.write_text(sidecar_path(output_path), sidecar_text)
    except BaseException:
        if previous is None:
            os.remove(output_path)
        else:
            atomic_io.write_bytes(output_path, previous)
        raise


# --- The TensorFlow subprocess ---------------------------------------------

_ERRORS = {
    "ValueError": ValueError,
    "FileNotFoundError": FileNotFoundError,
    "ExportError": ExportError,
}


def _convert_in_subprocess(request, folder):
    """Runs `_convert_and_write` under `KERAS_BACKEND=tensorflow`."""
    request_path = os.path.join(folder, "request.json")
    result_path = os.path.join(folder, "result.json")
    with open(request_path, "w", encoding="utf-8") as file:
        json.dump(request, file, ensure_ascii=False)
    package_root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH")) if p
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [
        sys.executable,
        "-m",
        "neurolite_keras.recipes.export",
        "--request",
        request_path,
        "--result",
        result_path,
    ]
    log_path = os.path.join(folder, "conversion.log")
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            returncode = process.wait()
        finally:
            # Interrupted (Ctrl-C, or SIGTERM through the command line):
            # the conversion must not write the output after we return.
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    if not os.path.isfile(result_path):
        with open(log_path, encoding="utf-8", errors="replace") as file:
            tail = "\n".join(file.read().strip().splitlines()[-15:])
        raise ExportError(
            "The TensorFlow conversion subprocess exited with code "
            f"{returncode} and no result. Its last output:\n{tail}"
        )
    with open(result_path, encoding="utf-8") as file:
        result = json.load(file)
    if result["ok"]:
        return ExportResult(**result["result"])
    kind, message = result["error_type"], result["message"]
    if kind == "UnsupportedOperatorError":
        raise UnsupportedOperatorError(
            message, layer=result.get("layer"), op=result.get("op")
        )
    raise _ERRORS.get(kind, ExportError)(message)


def _worker(request_path, result_path):
    """The subprocess side: convert, then report in `result_path`."""
    with open(request_path, encoding="utf-8") as file:
        request = json.load(file)
    try:
        if keras.backend.backend() != "tensorflow":
            raise ExportError(
                "The conversion subprocess did not get the TensorFlow "
                f"backend (it has {keras.backend.backend()!r})."
            )
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise ExportError(
                "Export needs TensorFlow for the conversion: pip install "
                "'neurolite-keras[export]'."
            ) from None
        result = {
            "ok": True,
            "result": dataclasses.asdict(_convert_and_write(**request)),
        }
        status = 0
    except Exception as error:  # Reported to the parent process.
        result = {
            "ok": False,
            "error_type": type(error).__name__,
            "message": str(error),
            "layer": getattr(error, "layer", None),
            "op": getattr(error, "op", None),
        }
        status = 1
    atomic_io.write_json(result_path, result)
    return status


# --- Parity ----------------------------------------------------------------
def main(argv=None):
    """Entry of the conversion subprocess (not a user command: use
    `neurolite export`)."""
    parser = argparse.ArgumentParser(
        prog="python -m neurolite_keras.recipes.export",
        description="TensorFlow side of `neurolite export` (internal).",
    )
    parser.add_argument("--request", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    return _worker(args.request, args.result)


if __name__ == "__main__":
    sys.exit(main())
