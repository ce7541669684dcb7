"""NeuroLite against standard Transformer encoders: size, speed and memory
on a CPU, in Keras and in TFLite.

Run (from the repository root; 17 minutes on two CPU cores shared with
other jobs, load average 6 to 10, most of it converting and timing
BERT-base):

    python benchmarks/benchmark_comparison.py \
        --output-dir benchmarks/results/comparison

Small settings, well under a minute (what the test suite runs):

    python benchmarks/benchmark_comparison.py --models tiny,bert-tiny \\
        --sequence-length 64 --long-length 0 --repeats 5

What is compared, batch 1, `--sequence-length` tokens (default 256), every
model with a 7-label classification head and random weights (latency,
memory and size do not depend on the values of the weights, but for a
little of NeuroLite's int8 latency: see `export_size_latency.py`;
nothing is downloaded and nothing is trained):

- NeuroLite `tiny`, `small`, `base`: `NeuroLiteForClassification` built
  from `NeuroLiteConfig.preset(p, max_sequence_length=L)`.
- `bert-base` (12 layers, hidden 768, 12 heads, MLP 3072), `bert-tiny`
  (2 layers, hidden 128, 2 heads, MLP 512): `keras_hub.models.BertBackbone`
  with these sizes, WordPiece vocabulary size 30,522 and 512 positions, a
  dense head on the pooled output. `distilbert` (6 layers, hidden 768, 12
  heads, MLP 3072): `keras_hub.models.DistilBertBackbone`, the head on the
  first token. Built from explicit sizes, never from a preset.

What is measured, each step in its own subprocess:

- parameters (`model.count_params()`) and the `.keras` file's size;
- Keras latency: `model.predict_on_batch(features)` on the TensorFlow
  backend, its default predict function (a `tf.function`, no XLA), inputs
  already featurized as NumPy arrays, all CPU threads TensorFlow takes;
- TFLite latency: `interpreter.invoke()` of the `ai-edge-litert`
  interpreter (`--threads`, default 1, its default delegates, so XNNPACK
  for float kernels), inputs set once beforehand. Baselines are exported in
  float32 with `neurolite_keras.recipes.export.convert_model`; NeuroLite
  in float32 and full-integer int8 with `export_model`, the int8 one
  calibrated on `--calibration-size` real SIB-200 training sentences spread
  over the 14 languages;
- each latency: `--warmup` untimed calls, then the median of `--repeats`
  timed calls (`--long-repeats` at the long length);
- memory of the inference process, each `.tflite` file in a fresh
  Python process (Linux figures; `/proc` and psutil). The baseline is
  taken once the interpreter is warm: NumPy, psutil and the interpreter
  imported, the input arrays loaded, and a one-operator model (`a + b` in
  float32, converted once per run into the work folder; XNNPACK runs it)
  loaded, allocated and invoked and kept alive, so the interpreter's core
  code, operator registry, XNNPACK delegate and allocator are counted in
  the baseline, not against the model. Then the peak resident set (VmHWM)
  is reset through `/proc/self/clear_refs` and the model is loaded, its
  tensors allocated, its inputs set and it runs the warm-up and timed
  calls. Reported: the peak resident set minus the baseline's (the aim's
  figure: every page newly resident at the peak); its split by kind of
  mapping in `/proc/self/smaps` at the end of the run (the mapped model
  file, anonymous memory such as the tensor arena, heap and XNNPACK's
  repacked weights, `ai_edge_litert`'s library pages first touched by
  this model's operators, other files) and the peak's excess over the
  end; the growth of the unique and proportional set sizes (psutil USS and
  PSS); and the absolute peak resident set of the process. Where
  `/proc/self/clear_refs` cannot be written, `ru_maxrss` is used and the
  JSON says so;
- the growth of latency with length: the same measurements at
  `--long-length` (default 2048; `0` skips it) on models built for that
  length (BERT models then get that many positions, and NeuroLite's
  MLP-Mixer its token-mixing weights for that length), reported as
  t(long)/t(short) in Keras and in TFLite;
- NeuroLite's featurizer (hashing, outside the model) on the same input,
  cold cache, so the cost left out of the model latencies is visible; the
  baselines' WordPiece tokenizer is left out likewise.

A model that cannot be built, converted or run gets its error in the table
instead of stopping the run. Writes `benchmark_comparison.md`, `.json` and
`.png` into `--output-dir`, each atomically; converted models go to a
temporary folder that is deleted at the end (or `--work-dir`, kept).

Figures from a run are in the report of the run that produced them, not
here: the machine, its load and the library versions change them.
"""

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEUROLITE_MODELS = ("tiny", "small", "base")
BASELINE_MODELS = ("bert-base", "distilbert", "bert-tiny")
MODELS = NEUROLITE_MODELS + BASELINE_MODELS
NEUROLITE_FORMATS = ("float32", "int8")
NUM_LABELS = 7
VOCABULARY_SIZE = 30522
BASELINE_POSITIONS = 512
BASELINE_SIZES = {
    "bert-base": {
        "family": "bert",
        "num_layers": 12,
        "num_heads": 12,
        "hidden_dim": 768,
        "intermediate_dim": 3072,
    },
    "distilbert": {
        "family": "distilbert",
        "num_layers": 6,
        "num_heads": 12,
        "hidden_dim": 768,
        "intermediate_dim": 3072,
    },
    "bert-tiny": {
        "family": "bert",
        "num_layers": 2,
        "num_heads": 2,
        "hidden_dim": 128,
        "intermediate_dim": 512,
    },
}
# The aims of the issue: NeuroLite-tiny int8 TFLite at least this many
# times faster than BERT-base float32 TFLite, using at most this much
# memory beyond the interpreter.
AIM_SPEEDUP = 50.0
AIM_MEMORY_MB = 4.0
REFERENCE_MODEL = ("bert-base", "float32")
TARGET_MODEL = ("tiny", "int8")
MB = 1024 * 1024
# Where the resident set of the inference process grows, by mapping: the
# `.tflite` file mapped by the interpreter, anonymous memory (tensor arena,
# heap, weights repacked by XNNPACK), the interpreter's shared libraries
# (code and data of `ai_edge_litert`) and any other file.
MEMORY_KINDS = ("model_file", "anonymous", "interpreter_library", "other_files")
_STEP_NUMBERS = itertools.count()


# --- Arguments -------------------------------------------------------------


def _model_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(MODELS)}, "
            f"got {text!r}"
        )
    return list(dict.fromkeys(names))


def _format_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in NEUROLITE_FORMATS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of "
            f"{','.join(NEUROLITE_FORMATS)}, got {text!r}"
        )
    return list(dict.fromkeys(names))


def _count(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {value}"
            )
        return value

    return parse


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        type=_model_list,
        default=list(MODELS),
        help=f"comma-separated subset of {','.join(MODELS)} (default: all)",
    )
    parser.add_argument(
        "--sequence-length",
        type=_count(1),
        default=256,
        help="tokens per input (default: %(default)s)",
    )
    parser.add_argument(
        "--long-length",
        type=_count(0),
        default=2048,
        help="length for the latency growth, 0 to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=_count(1),
        default=20,
        help="timed calls per measurement (default: %(default)s)",
    )
    parser.add_argument(
        "--long-repeats",
        type=_count(1),
        default=5,
        help="timed calls at --long-length (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=_count(1),
        default=3,
        help="untimed calls before timing (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=_count(1),
        default=1,
        help="TFLite interpreter threads (default: %(default)s)",
    )
    parser.add_argument(
        "--neurolite-formats",
        type=_format_list,
        default=list(NEUROLITE_FORMATS),
        help="TFLite formats of the NeuroLite models, among float32,int8 "
        "(default: both; the baselines are float32)",
    )
    parser.add_argument(
        "--calibration-size",
        type=_count(1),
        default=100,
        help="SIB-200 sentences calibrating the int8 export "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        help="folder holding sib200/ (default: $NEUROLITE_DATA_DIR, then "
        "the download fallback)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("benchmarks/results/comparison"),
        help="folder for benchmark_comparison.{md,json,png}",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep the built models here (default: a temporary folder, "
        "deleted at the end)",
    )
    parser.add_argument(
        "--step-timeout",
        type=_count(1),
        default=1800,
        help="seconds before one subprocess step is abandoned "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    # The subprocess side (internal).
    parser.add_argument(
        "--worker",
        choices=("one-op", "prepare", "measure"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--request", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


# --- Timing and memory helpers (no Keras, no TensorFlow) --------------------


def summarize(seconds):
    """Median, min and max in milliseconds of a list of durations."""
    values = sorted(s * 1000.0 for s in seconds)
    return {
        "median_ms": round(statistics.median(values), 4),
        "min_ms": round(values[0], 4),
        "max_ms": round(values[-1], 4),
        "repeats": len(values),
    }


def time_calls(function, warmup, repeats):
    """Runs `function` `warmup` times, then times `repeats` calls."""
    for _ in range(warmup):
        function()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return summarize(durations)


def _status_bytes(field):
    """A `VmRSS`-style field of /proc/self/status, in bytes (or None)."""
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak():
    """Resets VmHWM to the current resident set; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
            file.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _peak_rss():
    """The peak resident set: VmHWM, else `ru_maxrss` (whole process)."""
    peak = _status_bytes("VmHWM")
    if peak is None:
        import resource

        # ru_maxrss is in kilobytes on Linux, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return peak


def mapping_kind(path, model_path, library_dir):
    """Which part of the memory a mapping of /proc/self/smaps holds."""
    if path == model_path:
        return "model_file"
    if library_dir and path.startswith(library_dir + os.sep):
        return "interpreter_library"
    if path.startswith("/"):
        return "other_files"
    # No path, [heap], [stack], [anon:...]: memory the process allocated.
    return "anonymous"


def _resident_by_kind(model_path, library_dir):
    """Resident bytes per `mapping_kind`, summed over /proc/self/smaps
    (None where it cannot be read)."""
    totals = dict.fromkeys(MEMORY_KINDS, 0)
    kind = None
    try:
        with open("/proc/self/smaps", encoding="utf-8") as file:
            for line in file:
                fields = line.split()
                if not fields[0].endswith(":"):
                    # A mapping's header: address, mode, offset, device,
                    # inode, then the path if it has one.
                    path = " ".join(fields[5:])
                    kind = mapping_kind(path, model_path, library_dir)
                elif fields[0] == "Rss:" and kind:
                    totals[kind] += int(fields[1]) * 1024
    except OSError:
        return None
    return totals


def memory_snapshot(model_path, library_dir):
    """The process's memory now: resident set, peak resident set, unique
    and proportional set sizes (psutil) and the resident set by kind."""
    snapshot = {"rss": _status_bytes("VmRSS"), "peak": _peak_rss()}
    try:
        import psutil

        process = psutil.Process()
        if snapshot["rss"] is None:
            snapshot["rss"] = process.memory_info().rss
        full = process.memory_full_info()
        snapshot["uss"] = full.uss
        snapshot["pss"] = getattr(full, "pss", None)
    except (ImportError, OSError, AttributeError):
        snapshot["uss"] = snapshot["pss"] = None
    snapshot["by_kind"] = _resident_by_kind(model_path, library_dir)
    return snapshot


def _growth(before, after):
    if before is None or after is None:
        return None
    return after - before


# --- The `one-op` worker: the model that warms the interpreter --------------


def make_one_op_model(request):
    """Converts `a + b` (float32, shape (1, 8)) into a one-operator
    `.tflite` file at `request["path"]`."""
    import tensorflow as tf

    spec = tf.TensorSpec((1, 8), tf.float32)

    @tf.function(input_signature=[spec, spec])
    def add(a, b):
        return a + b

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [add.get_concrete_function()], add
    )
    flatbuffer = converter.convert()
    _write_bytes(request["path"], flatbuffer)
    return {"path": request["path"], "bytes": len(flatbuffer)}


# --- The `measure` worker: one .tflite file in a fresh process --------------


def _interpreter(path, threads, arrays=None):
    """An interpreter with its tensors allocated and its inputs set (from
    `arrays`, else ones); also the names of the arrays fed."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    fed = []
    for detail in interpreter.get_input_details():
        if arrays is None:
            value = np.ones(detail["shape"], detail["dtype"])
        else:
            name = _match_input(detail["name"], arrays)
            value = arrays[name].astype(detail["dtype"])
            fed.append(name)
        interpreter.set_tensor(detail["index"], value)
    return interpreter, fed


def measure_tflite(request):
    """Latency and memory of one `.tflite` file; runs in its own process.

    Memory: after importing NumPy and the interpreter and loading the
    input arrays, the process loads, allocates and invokes a one-operator
    model (`request["one_op_path"]`), which it keeps, so that the
    interpreter's core code, its XNNPACK delegate and the allocator are
    warm. That state is the baseline. Then the peak resident set is reset,
    and the model is loaded, allocated, fed and invoked (warm-up and timed
    calls); the growth over the baseline is the model's memory.
    """
    import gc

    import ai_edge_litert
    import numpy as np

    with np.load(request["inputs"]) as archive:
        arrays = {name: archive[name] for name in archive.files}
    model_path = os.path.realpath(request["tflite_path"])
    library_dir = os.path.dirname(os.path.realpath(ai_edge_litert.__file__))
    threads = request["threads"]

    warm, _ = _interpreter(request["one_op_path"], threads)
    for _ in range(request["warmup"]):
        warm.invoke()
    # A private method, but the only way to list a model's operators.
    details = getattr(warm, "_get_ops_details", list)
    warm_ops = [op["op_name"] for op in details()]
    # A first snapshot imports psutil and runs the reading code once, so
    # that neither is counted against the model.
    memory_snapshot(model_path, library_dir)
    gc.collect()
    before = memory_snapshot(model_path, library_dir)
    peak_reset = _reset_peak()

    interpreter, fed = _interpreter(model_path, threads, arrays)
    rss_loaded = _status_bytes("VmRSS")
    latency = time_calls(
        interpreter.invoke, request["warmup"], request["repeats"]
    )
    output = interpreter.get_tensor(
        interpreter.get_output_details()[0]["index"]
    )
    if not np.all(np.isfinite(output.astype("float64"))):
        raise ValueError("The interpreter's output is not finite.")
    after = memory_snapshot(model_path, library_dir)

    by_kind = None
    if before["by_kind"] is not None and after["by_kind"] is not None:
        by_kind = {
            kind: after["by_kind"][kind] - before["by_kind"][kind]
            for kind in MEMORY_KINDS
        }
    return {
        "latency": latency,
        "inputs": fed,
        "one_op_model_operators": warm_ops,
        "baseline_rss_bytes": before["rss"],
        "rss_after_load_bytes": rss_loaded,
        "rss_after_run_bytes": after["rss"],
        "peak_rss_bytes": after["peak"],
        # The whole process's peak: imports, baseline, model and all.
        "process_peak_rss_bytes": max(before["peak"], after["peak"]),
        "peak_beyond_interpreter_bytes": after["peak"] - before["rss"],
        "rss_growth_bytes": after["rss"] - before["rss"],
        "uss_growth_bytes": _growth(before["uss"], after["uss"]),
        "pss_growth_bytes": _growth(before["pss"], after["pss"]),
        "rss_growth_by_kind_bytes": by_kind,
        "peak_source": (
            "VmHWM reset after the one-operator model ran"
            if peak_reset
            else "ru_maxrss (peak over the whole process)"
        ),
    }


def _match_input(tensor_name, arrays):
    """The array feeding a TFLite input tensor such as
    `serving_default_token_ids:0`."""
    base = tensor_name.split(":")[0]
    for name in sorted(arrays, key=len, reverse=True):
        if base == name or base.endswith("_" + name):
            return name
    raise ValueError(
        f"No input array for the TFLite tensor {tensor_name!r}; "
        f"have {sorted(arrays)}."
    )


# --- The `prepare` worker: build, time in Keras, convert (TensorFlow) -------


def _long_text(length, data_dir):
    """Real SIB-200 sentences joined until they fill `length` tokens."""
    from neurolite_keras.datasets import load_sib200
    from neurolite_keras.tokenizer import tokenize

    data = load_sib200(data_dir, languages=["fra_Latn", "eng_Latn"])
    parts, count = [], 0
    for text in data.train.texts:
        parts.append(text)
        count += len(tokenize(text))
        if count >= length:
            return " ".join(parts)
    raise ValueError(f"SIB-200 has fewer than {length} tokens to join.")


def _calibration_texts(data_dir):
    from neurolite_keras.datasets import load_sib200

    return load_sib200(data_dir).train.texts


def build_baseline(name, length):
    """A keras-hub Transformer classifier with static inputs, random
    weights, and the inputs to time it on."""
    import keras
    import keras_hub
    import numpy as np

    sizes = dict(BASELINE_SIZES[name])
    family = sizes.pop("family")
    positions = max(BASELINE_POSITIONS, length)
    names = ["token_ids", "padding_mask"]
    if family == "bert":
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=VOCABULARY_SIZE,
            max_sequence_length=positions,
            **sizes,
        )
        names.append("segment_ids")
    else:
        backbone = keras_hub.models.DistilBertBackbone(
            vocabulary_size=VOCABULARY_SIZE,
            max_sequence_length=positions,
            **sizes,
        )
    inputs = {
        key: keras.Input((length,), batch_size=None, dtype="int32", name=key)
        for key in names
    }
    outputs = backbone(inputs)
    if family == "bert":
        pooled = outputs["pooled_output"]
    else:
        pooled = outputs[:, 0, :]
    logits = keras.layers.Dense(NUM_LABELS, name="logits")(pooled)
    model = keras.Model(inputs, {"logits": logits}, name=name.replace("-", "_"))
    rng = np.random.default_rng(0)
    arrays = {
        "token_ids": rng.integers(1000, VOCABULARY_SIZE, (1, length)),
        "padding_mask": np.ones((1, length)),
        "segment_ids": np.zeros((1, length)),
    }
    arrays = {key: arrays[key].astype("int32") for key in names}
    return model, arrays, {"positions": positions, **sizes}


def build_neurolite(preset, length):
    from neurolite_keras.config import NeuroLiteConfig
    from neurolite_keras.datasets import SIB200_LABELS
    from neurolite_keras.models import NeuroLiteForClassification

    config = NeuroLiteConfig.preset(preset, max_sequence_length=length)
    model = NeuroLiteForClassification(config, label_names=SIB200_LABELS)
    return model, config


def _error_text(error):
    text = f"{type(error).__name__}: {error}".strip()
    return " ".join(text.split())[:400]


def prepare(request):
    """Builds one model at one length, times it in Keras, converts it."""
    import keras
    import numpy as np

    from neurolite_keras import atomic_io

    keras.utils.set_random_seed(request["seed"])
    name, length = request["model"], request["length"]
    folder = Path(request["work_dir"])
    stem = folder / f"{name}-{length}"
    result = {
        "model": name,
        "length": length,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "tflite": {},
    }

    if name in NEUROLITE_MODELS:
        model, config = build_neurolite(name, length)
        text = _long_text(length, request["data_dir"])
        arrays = model.featurize([text])
        filled = int(arrays["padding_mask"].sum())
        if filled != length:
            raise ValueError(f"The input fills {filled} of {length} tokens.")
        result["config"] = config.get_config()
        # The featurizer's own cost, with an empty (disabled) token cache.
        from neurolite_keras.featurizer import TextFeaturizer

        cold = TextFeaturizer.from_config(config, cache_size=0)
        result["featurize"] = time_calls(
            lambda: cold([text]), 1, request["repeats"]
        )
    else:
        model, arrays, sizes = build_baseline(name, length)
        result["sizes"] = sizes
    result["num_parameters"] = int(model.count_params())

    keras_path = stem.with_suffix(".keras")
    atomic_io.save_model(model, keras_path)
    result["keras_file_bytes"] = keras_path.stat().st_size
    result["keras_latency"] = time_calls(
        lambda: model.predict_on_batch(arrays),
        request["warmup"],
        request["repeats"],
    )
    result["keras_jit_compile"] = bool(getattr(model, "jit_compile", False))
    inputs_path = stem.with_suffix(".inputs.npz")
    np.savez(inputs_path, **{k: np.asarray(v) for k, v in arrays.items()})
    result["inputs"] = str(inputs_path)

    for quantization in request["formats"]:
        tflite_path = Path(f"{stem}-{quantization}.tflite")
        start = time.perf_counter()
        try:
            entry = _convert(
                model, name, keras_path, tflite_path, quantization, request
            )
        except Exception as error:  # Reported in the table, not raised.
            entry = {"error": _error_text(error)}
        entry["convert_seconds"] = round(time.perf_counter() - start, 1)
        result["tflite"][quantization] = entry
    return result


def _convert(model, name, keras_path, tflite_path, quantization, request):
    from neurolite_keras import atomic_io
    from neurolite_keras.tflite_ops import non_builtin_operators

    if name in NEUROLITE_MODELS:
        from neurolite_keras.recipes.export import export_model

        calibration = None
        if quantization == "int8":
            calibration = _calibration_texts(request["data_dir"])
        exported = export_model(
            keras_path,
            tflite_path,
            quantization=quantization,
            calibration_texts=calibration,
            num_calibration_texts=request["calibration_size"],
        )
        return {
            "path": str(tflite_path),
            "bytes": exported.size_bytes,
            "calibration_texts": (
                request["calibration_size"] if calibration else 0
            ),
            "non_builtin_operators": [],
        }
    from neurolite_keras.recipes.export import convert_model

    flatbuffer = convert_model(model, quantization)
    atomic_io.write_bytes(tflite_path, flatbuffer)
    return {
        "path": str(tflite_path),
        "bytes": len(flatbuffer),
        "non_builtin_operators": [
            op.name for op in non_builtin_operators(flatbuffer)
        ],
    }


def _run_worker(args):
    with open(args.request, encoding="utf-8") as file:
        request = json.load(file)
    try:
        work = {
            "one-op": make_one_op_model,
            "prepare": prepare,
            "measure": measure_tflite,
        }[args.worker]
        payload = {"ok": True, "result": work(request)}
        status = 0
    except Exception as error:  # Reported to the parent process.
        payload = {"ok": False, "error": _error_text(error)}
        status = 1
    _write_text(Path(args.result), json.dumps(payload, indent=2))
    return status


# --- The parent process: steps, table, JSON, plot ---------------------------


def _write_bytes(path, data):
    """Writes `path` atomically (temporary file in its folder, then
    `os.replace`), so a failed run leaves an earlier file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_text(path, text):
    _write_bytes(path, text.encode("utf-8"))


def run_step(kind, request, work_dir, timeout):
    """Runs one worker subprocess; returns its result or raises
    RuntimeError with the reason."""
    tag = f"{kind}-{next(_STEP_NUMBERS)}"
    request_path = Path(work_dir) / f"{tag}.request.json"
    result_path = Path(work_dir) / f"{tag}.result.json"
    request_path.write_text(json.dumps(request), encoding="utf-8")
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH")) if p
    )
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--request",
        str(request_path),
        "--result",
        str(result_path),
    ]
    try:
        completed = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{kind} step timed out after {timeout} s") from None
    if not result_path.is_file():
        tail = " | ".join(completed.stderr.strip().splitlines()[-3:])
        raise RuntimeError(
            f"{kind} step exited with code {completed.returncode} and no "
            f"result: {tail[-300:]}"
        )
    payload = json.loads(result_path.read_text(encoding="utf-8"))
    if not payload["ok"]:
        raise RuntimeError(payload["error"])
    return payload["result"]


def formats_of(name, neurolite_formats=NEUROLITE_FORMATS):
    if name in NEUROLITE_MODELS:
        return tuple(neurolite_formats)
    return ("float32",)


def benchmark_model(name, length, repeats, args, work_dir, log, one_op_path):
    """Prepare, then measure each converted file; a dict per format.
    `one_op_path` is the model that warms the interpreter before each
    memory baseline."""
    request = {
        "model": name,
        "length": length,
        "work_dir": str(work_dir),
        "formats": list(formats_of(name, args.neurolite_formats)),
        "seed": args.seed,
        "warmup": args.warmup,
        "repeats": repeats,
        "calibration_size": args.calibration_size,
        "data_dir": args.data_dir,
    }
    log(f"{name} @ {length}: build, Keras timing, conversion")
    try:
        prepared = run_step("prepare", request, work_dir, args.step_timeout)
    except RuntimeError as error:
        log(f"  failed: {error}")
        return {"error": str(error)}
    for quantization, entry in prepared["tflite"].items():
        if "error" in entry:
            log(f"  {quantization}: conversion failed: {entry['error']}")
            continue
        log(
            f"  {quantization}: {entry['bytes'] / MB:.2f} MB, "
            f"converted in {entry['convert_seconds']} s; timing TFLite"
        )
        try:
            entry["measure"] = run_step(
                "measure",
                {
                    "tflite_path": entry["path"],
                    "one_op_path": one_op_path,
                    "inputs": prepared["inputs"],
                    "threads": args.threads,
                    "warmup": args.warmup,
                    "repeats": repeats,
                },
                work_dir,
                args.step_timeout,
            )
        except RuntimeError as error:
            entry["error"] = f"run failed: {error}"
            log(f"  {quantization}: {entry['error']}")
        _delete(entry.get("path"), keep=args.work_dir is not None)
    _delete(
        Path(work_dir) / f"{name}-{length}.keras",
        keep=args.work_dir is not None,
    )
    return prepared


def _delete(path, keep):
    # Built models of BERT-base weigh hundreds of MB: drop them once
    # measured unless the user asked to keep them.
    if not keep and path and os.path.exists(path):
        os.remove(path)


def _tflite_median(prepared, quantization):
    entry = (prepared or {}).get("tflite", {}).get(quantization, {})
    return entry.get("measure", {}).get("latency", {}).get("median_ms")


def _mb(value):
    return None if value is None else value / MB


def memory_columns(measured):
    """The memory figures of one `measure` result, in MiB (None where not
    measured). `memory_mb` is the headline: peak resident set beyond the
    warm interpreter. The growth by kind is at the end of the run;
    `peak_minus_end_mb` is what the peak held above it."""
    peak = measured.get("peak_beyond_interpreter_bytes")
    end = measured.get("rss_growth_bytes")
    by_kind = measured.get("rss_growth_by_kind_bytes") or {}
    columns = {
        "memory_mb": _mb(peak),
        "process_peak_mb": _mb(measured.get("process_peak_rss_bytes")),
        "baseline_rss_mb": _mb(measured.get("baseline_rss_bytes")),
        "uss_growth_mb": _mb(measured.get("uss_growth_bytes")),
        "pss_growth_mb": _mb(measured.get("pss_growth_bytes")),
        "peak_minus_end_mb": (
            None if peak is None or end is None else _mb(peak - end)
        ),
    }
    for kind in MEMORY_KINDS:
        columns[f"{kind}_mb"] = _mb(by_kind.get(kind))
    return columns


def collect_rows(results, short, long, neurolite_formats=NEUROLITE_FORMATS):
    """One row per (model, format) with the table's figures."""
    rows = []
    for name, by_length in results.items():
        base = by_length.get(short, {})
        far = by_length.get(long, {}) if long else {}
        for quantization in formats_of(name, neurolite_formats):
            row = {"model": name, "format": quantization}
            if "error" in base:
                row["error"] = base["error"]
                rows.append(row)
                continue
            entry = base["tflite"].get(quantization, {})
            measured = entry.get("measure", {})
            row.update(
                {
                    "num_parameters": base["num_parameters"],
                    "keras_file_mb": base["keras_file_bytes"] / MB,
                    "keras_ms": base["keras_latency"]["median_ms"],
                    "tflite_file_mb": entry.get("bytes", 0) / MB or None,
                    "tflite_ms": measured.get("latency", {}).get("median_ms"),
                    "featurize_ms": base.get("featurize", {}).get("median_ms"),
                    "error": entry.get("error"),
                    **memory_columns(measured),
                }
            )
            if long and "error" not in far:
                far_keras = far.get("keras_latency", {}).get("median_ms")
                if far_keras and row["keras_ms"]:
                    row["keras_growth"] = far_keras / row["keras_ms"]
                far_tflite = _tflite_median(far, quantization)
                if far_tflite and row["tflite_ms"]:
                    row["tflite_growth"] = far_tflite / row["tflite_ms"]
                row["keras_long_ms"] = far_keras
                row["tflite_long_ms"] = far_tflite
            elif long:
                row["long_error"] = far.get("error")
            rows.append(row)
    return rows


def check_aims(rows):
    """The issue's aims, when both rows were measured."""
    find = {(r["model"], r["format"]): r for r in rows}
    target, reference = find.get(TARGET_MODEL), find.get(REFERENCE_MODEL)
    aims = {}
    if (
        target
        and reference
        and target.get("tflite_ms")
        and reference.get("tflite_ms")
    ):
        speedup = reference["tflite_ms"] / target["tflite_ms"]
        aims["speedup"] = {
            "value": speedup,
            "aim": AIM_SPEEDUP,
            "met": speedup >= AIM_SPEEDUP,
        }
    if target and target.get("memory_mb") is not None:
        aims["memory_mb"] = {
            "value": target["memory_mb"],
            "aim": AIM_MEMORY_MB,
            "met": target["memory_mb"] <= AIM_MEMORY_MB,
        }
    return aims


def _number(value, digits=2):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


MEMORY_HEADER = (
    "model",
    "TFLite format",
    "peak RSS beyond warm interpreter",
    "model file pages",
    "anonymous (arena, heap)",
    "interpreter library pages",
    "other file pages",
    "peak minus end",
    "USS growth",
    "PSS growth",
    "process peak RSS",
)
MEMORY_LEGEND = (
    "Memory, in MB of 2^20 bytes, of the process that runs one `.tflite` "
    "file (Linux, fresh Python process per file). Baseline: the process has "
    "imported NumPy, psutil and `ai_edge_litert`, loaded the input arrays, "
    "and loaded, allocated and invoked a one-operator model (`a + b`, "
    "float32 ADD, run by XNNPACK) that it keeps, so the interpreter's core "
    "code, operator registry, XNNPACK delegate and `malloc` are warm; the "
    "baseline is its resident set (VmRSS) then. The peak (VmHWM) is reset "
    "there, then the model is loaded, its tensors allocated, its inputs "
    "set, and it runs the warm-up and timed calls. "
    "**peak RSS beyond warm interpreter**: the peak resident set over that "
    "span minus the baseline: every page the process newly held at its "
    "peak, whatever its kind (the aim's figure). The next five columns "
    "split it: resident-set growth from the baseline to the end of the run "
    "per kind of mapping in `/proc/self/smaps`. **model file pages**: the "
    "`.tflite` file mapped by the interpreter (the pages read). "
    "**anonymous**: heap and anonymous mappings: the tensor arena, weights "
    "repacked by XNNPACK, the interpreter's structures, Python objects. "
    "**interpreter library pages**: code and data of `ai_edge_litert`'s "
    "shared libraries first touched by this model's operators (the "
    "one-operator model did not touch them); they are file-backed and "
    "shared with any other process running LiteRT. **other file pages**: "
    "other files (C and C++ libraries, NumPy). **peak minus end**: what the "
    "peak held above the end of the run (memory freed before the end). "
    "**USS growth** and **PSS growth** (psutil, baseline to end of run): "
    "unique set size, pages mapped by this process only (file pages shared "
    "with another process are left out), and proportional set size, each "
    "shared page divided by the number of processes mapping it. **process "
    "peak RSS**: the absolute peak resident set of the whole process "
    "(Python, NumPy, psutil, the interpreter, the one-operator model and "
    "the model). Not counted anywhere: the featurizer (inputs are "
    "featurized beforehand) and the converter. Parameters times four is "
    "not used."
)


def _run_line(meta):
    parts = [f"Command: `{meta['command']}`"]
    if meta.get("seconds") is not None:
        parts.append(f"{meta['seconds'] / 60:.0f} min")
    start, end = meta.get("load_average_start"), meta.get("load_average_end")
    if start or end:
        parts.append(
            "load average (1, 5, 15 min) "
            f"{', '.join(map(str, start or []))} at the start and "
            f"{', '.join(map(str, end or []))} at the end"
        )
    versions = meta.get("versions")
    if versions:
        parts.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    return "; ".join(parts) + "."


def _memory_aim_line(aim, row):
    verdict = "met" if aim["met"] else "not met"
    margin = aim["value"] - aim["aim"]
    over = (
        f", {margin:.2f} MB over"
        if margin > 0
        else f", {-margin:.2f} MB to spare"
    )
    split = [
        f"{_number(row.get(f'{kind}_mb'))} MB {label}"
        for kind, label in (
            ("model_file", "model file pages"),
            ("anonymous", "anonymous"),
            ("interpreter_library", "interpreter library pages"),
            ("other_files", "other file pages"),
        )
        if row.get(f"{kind}_mb") is not None
    ]
    if row.get("peak_minus_end_mb") is not None:
        split.append(f"{_number(row['peak_minus_end_mb'])} MB peak minus end")
    return (
        f"Aim: tiny int8 TFLite peak RSS beyond the warm interpreter "
        f"{aim['value']:.2f} MB (aim <= {aim['aim']:.0f} MB): {verdict}"
        f"{over}" + (f" ({'; '.join(split)})" if split else "") + "."
    )


def markdown(rows, aims, meta):
    short, long = meta["sequence_length"], meta["long_length"]
    header = [
        "model",
        "TFLite format",
        "parameters",
        ".keras MB",
        ".tflite MB",
        f"Keras ms @{short}",
        f"TFLite ms @{short}",
        "TFLite peak RSS MB beyond warm interpreter",
    ]
    if long:
        header += [
            f"Keras t({long})/t({short})",
            f"TFLite t({long})/t({short})",
        ]
    lines = [
        f"Batch 1, {short} tokens, random weights, 7-label head. "
        f"{meta['machine']}. Median of {meta['repeats']} timed calls after "
        f"{meta['warmup']} warm-up calls"
        + (f" ({meta['long_repeats']} at {long} tokens)" if long else "")
        + f"; TFLite with {meta['threads']} thread(s).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        if row.get("error") and row.get("num_parameters") is None:
            cells = [row["model"], row["format"], f"failed: {row['error']}"] + [
                "-"
            ] * (len(header) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        tflite = _number(row.get("tflite_ms"))
        if row.get("error"):
            tflite = f"failed: {row['error'][:160]}"
        cells = [
            row["model"],
            row["format"],
            f"{row['num_parameters']:,}",
            _number(row["keras_file_mb"]),
            _number(row.get("tflite_file_mb")),
            _number(row["keras_ms"]),
            tflite,
            _number(row.get("memory_mb")),
        ]
        if long:
            cells += [
                _number(row.get("keras_growth")),
                _number(row.get("tflite_growth")),
            ]
        lines.append("| " + " | ".join(cells).replace("\n", " ") + " |")
    featurize = [r["featurize_ms"] for r in rows if r.get("featurize_ms")]
    lines += [
        "",
        "Keras: `predict_on_batch` on the TensorFlow backend (tf.function, "
        "no XLA), featurized inputs. TFLite: `interpreter.invoke()` only. "
        "Memory: see the table below"
        + (
            f"; t({long})/t({short}): median latency at {long} tokens over "
            f"the median at {short}, models built for each length"
            if long
            else ""
        )
        + ".",
    ]
    if featurize:
        lines.append(
            f"NeuroLite's featurizer, outside the model, takes "
            f"{_number(min(featurize))} ms for this {short}-token input "
            "(cold cache); BERT's WordPiece tokenizer is likewise left out."
        )
    by_key = {(r["model"], r["format"]): r for r in rows}
    for key, aim in aims.items():
        if key == "speedup":
            lines.append(
                f"Aim: tiny int8 TFLite {aim['value']:.1f}x faster than "
                f"BERT-base float32 TFLite (aim >= {aim['aim']:.0f}x): "
                f"{'met' if aim['met'] else 'not met'}."
            )
        else:
            lines.append(_memory_aim_line(aim, by_key[TARGET_MODEL]))
    memory_rows = [r for r in rows if r.get("memory_mb") is not None]
    if memory_rows:
        lines += [
            "",
            "| " + " | ".join(MEMORY_HEADER) + " |",
            "|" + "---|" * len(MEMORY_HEADER),
        ]
        for row in memory_rows:
            cells = [row["model"], row["format"]] + [
                _number(row.get(key))
                for key in (
                    "memory_mb",
                    "model_file_mb",
                    "anonymous_mb",
                    "interpreter_library_mb",
                    "other_files_mb",
                    "peak_minus_end_mb",
                    "uss_growth_mb",
                    "pss_growth_mb",
                    "process_peak_mb",
                )
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", MEMORY_LEGEND]
    if meta.get("command"):
        lines += ["", _run_line(meta)]
    return "\n".join(lines) + "\n"


def _log_panel(axis, series, width):
    """Bars of several series on a log axis whose floor is the power of
    ten below the smallest value, so that bar heights compare. `series`
    is a list of (x positions, values, style); missing values are
    skipped. Returns the bars of each series."""
    values = [v for _, column, _ in series for v in column if v]
    if not values:
        return [None] * len(series)
    floor = 10 ** math.floor(math.log10(min(values)))
    drawn = []
    for positions, column, style in series:
        kept = [(p, v) for p, v in zip(positions, column) if v]
        drawn.append(
            axis.bar(
                [p for p, _ in kept],
                [v - floor for _, v in kept],
                width,
                bottom=floor,
                **style,
            )
        )
    axis.set_yscale("log")
    axis.set_ylim(floor, max(values) * 2)
    return drawn


def _tick(value, _):
    return f"{value:g}"


def _minor_tick(value, _):
    # Label 2 and 5 times a power of ten only, where a panel spans less
    # than a few decades and has room for them.
    digit = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if digit in (2, 5) else ""


def plot(rows, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    measured = [r for r in rows if r.get("tflite_ms")]
    if not measured:
        return False
    labels = [f"{r['model']}\n{r['format']}" for r in measured]
    short, long = meta["sequence_length"], meta.get("long_length")
    panels = 3 if long else 2
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8))
    positions = list(range(len(measured)))
    left = [p - 0.2 for p in positions]
    right = [p + 0.2 for p in positions]

    _log_panel(
        axes[0],
        [
            (left, [r["keras_ms"] for r in measured], {"label": "Keras"}),
            (right, [r["tflite_ms"] for r in measured], {"label": "TFLite"}),
        ],
        0.4,
    )
    axes[0].set_ylabel("median latency, ms (log)")
    axes[0].set_title(f"Latency, batch 1, {short} tokens", fontsize=10)

    memory = [r.get("memory_mb") for r in measured]
    (bars,) = _log_panel(
        axes[1], [(positions, memory, {"color": "tab:green"})], 0.6
    )
    if bars is not None:
        axes[1].bar_label(bars, [f"{m:.1f}" for m in memory if m], fontsize=7)
    axes[1].axhline(
        AIM_MEMORY_MB,
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label=f"aim for tiny int8: {AIM_MEMORY_MB:.0f} MB",
    )
    axes[1].set_ylabel("MB of 2^20 bytes (log)")
    axes[1].set_title(
        "TFLite peak RSS beyond the warm interpreter", fontsize=10
    )

    if long:
        _log_panel(
            axes[2],
            [
                (
                    left,
                    [r.get("keras_growth") for r in measured],
                    {"label": "Keras"},
                ),
                (
                    right,
                    [r.get("tflite_growth") for r in measured],
                    {"label": "TFLite"},
                ),
            ],
            0.4,
        )
        axes[2].axhline(
            long / short,
            color="gray",
            linestyle=":",
            linewidth=1,
            label=f"linear in length ({long / short:g}x)",
        )
        axes[2].set_ylabel(f"t({long}) / t({short}) (log)")
        axes[2].set_title(
            f"Latency growth, {short} to {long} tokens", fontsize=10
        )
    for axis in axes:
        axis.set_xticks(positions, labels, fontsize=7)
        axis.yaxis.set_major_formatter(FuncFormatter(_tick))
        axis.yaxis.set_minor_formatter(FuncFormatter(_minor_tick))
        axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    _write_bytes(path, buffer.getvalue())
    return True


def _machine():
    cores = os.cpu_count()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {cores} logical CPU(s)"


def _versions():
    from importlib import metadata

    versions = {}
    for package in ("ai-edge-litert", "tensorflow", "keras", "keras-hub"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return _run_worker(args)

    def log(message):
        print(message, flush=True)

    meta = {
        "command": " ".join(
            ["python", os.path.relpath(sys.argv[0]), *(argv or sys.argv[1:])]
        ),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": _machine(),
        "python": platform.python_version(),
        "load_average_start": _load(),
        "sequence_length": args.sequence_length,
        "long_length": args.long_length,
        "repeats": args.repeats,
        "long_repeats": args.long_repeats,
        "warmup": args.warmup,
        "threads": args.threads,
        "calibration_size": args.calibration_size,
        "weights": "random (latency, size and memory do not depend on them)",
        "timed": {
            "keras": "model.predict_on_batch(featurized inputs), TensorFlow "
            "backend, default predict function (tf.function)",
            "tflite": "interpreter.invoke() with inputs set beforehand",
            "memory": "fresh process per .tflite. Baseline: after "
            "importing numpy and ai_edge_litert, loading the input "
            "arrays, and loading, allocating and invoking a "
            "one-operator model (float32 ADD) kept alive, so the "
            "interpreter's code, delegate and allocator are warm. "
            "Then VmHWM is reset and the model is loaded, allocated, "
            "fed and invoked (warm-up and timed calls). Reported: peak "
            "resident set (VmHWM) minus the baseline's VmRSS; USS and "
            "PSS growth (psutil) and resident-set growth per mapping "
            "kind (/proc/self/smaps) from baseline to end of run; the "
            "process's absolute peak resident set",
        },
    }
    lengths = [args.sequence_length]
    if args.long_length and args.long_length != args.sequence_length:
        lengths.append(args.long_length)
    else:
        meta["long_length"] = 0

    start = time.perf_counter()
    work_dir = args.work_dir
    temporary = None
    if work_dir is None:
        temporary = tempfile.mkdtemp(prefix="neurolite-comparison-")
        work_dir = Path(temporary)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        log("one-operator model for the memory baselines")
        one_op = run_step(
            "one-op",
            {"path": str(work_dir / "one-op-add.tflite")},
            work_dir,
            args.step_timeout,
        )
        results = {}
        for name in args.models:
            results[name] = {}
            for length in lengths:
                repeats = (
                    args.repeats if length == lengths[0] else args.long_repeats
                )
                results[name][length] = benchmark_model(
                    name, length, repeats, args, work_dir, log, one_op["path"]
                )
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)

    rows = collect_rows(
        results, lengths[0], meta["long_length"], args.neurolite_formats
    )
    aims = check_aims(rows)
    meta["load_average_end"] = _load()
    meta["versions"] = _versions()
    meta["seconds"] = round(time.perf_counter() - start, 1)
    for prepared in (r for m in results.values() for r in m.values()):
        if "keras_version" in prepared:
            meta["keras_version"] = prepared["keras_version"]
    table = markdown(rows, aims, meta)
    output = args.output_dir
    _write_text(output / "benchmark_comparison.md", table)
    _write_text(
        output / "benchmark_comparison.json",
        json.dumps(
            {
                "meta": meta,
                "rows": rows,
                "aims": aims,
                "raw": {
                    name: {str(k): v for k, v in by.items()}
                    for name, by in results.items()
                },
            },
            indent=2,
            default=str,
        )
        + "\n",
    )
    wrote = ["benchmark_comparison.md", "benchmark_comparison.json"]
    if not args.no_plot and plot(
        rows, meta, output / "benchmark_comparison.png"
    ):
        wrote.append("benchmark_comparison.png")
    print()
    print(table)
    print(
        f"wrote {', '.join(str(output / name) for name in wrote)} "
        f"in {meta['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
