"""NeuroLite against standard Transformer encoders: size, speed and memory
on a CPU, in Keras and in TFLite.

Run (from the repository root; about 20 to 30 minutes on two shared CPU
cores, most of it converting and timing BERT-base):

    python benchmarks/benchmark_comparison.py \
        --output-dir benchmarks/results/comparison

Small settings, well under a minute (what the test suite runs):

    python benchmarks/benchmark_comparison.py --models tiny,bert-tiny \\
        --sequence-length 64 --long-length 0 --repeats 5

What is compared, batch 1, `--sequence-length` tokens (default 256), every
model with a 7-label classification head and random weights (latency,
memory and size do not depend on the values of the weights; nothing is
downloaded and nothing is trained):

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
- peak memory of the inference process: each `.tflite` file runs in a
  fresh Python process that imports NumPy and the interpreter and loads
  the input arrays; then its resident set (VmRSS) is read and its peak
  (VmHWM) reset through `/proc/self/clear_refs`; then the interpreter loads
  the model, allocates its tensors and runs warm-up and timed calls. The
  figure is the peak resident set afterwards minus the resident set before
  loading: the model file's pages, the tensor arena, delegate buffers
  (XNNPACK packs float weights again) and interpreter code first touched by
  this model's kernels. Where `/proc/self/clear_refs` cannot be written,
  `ru_maxrss` is used and the JSON says so;
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
        "--worker", choices=("prepare", "measure"), help=argparse.SUPPRESS
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


def _status_kb(field):
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
    return _status_kb("VmHWM") is not None


def _rss_parts():
    return {kind: _status_kb(kind) for kind in ("RssAnon", "RssFile")}


def _rss_and_peak():
    import resource

    rss = _status_kb("VmRSS")
    peak = _status_kb("VmHWM")
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss
    if peak is None:
        # ru_maxrss is in kilobytes on Linux, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return rss, peak


# --- The `measure` worker: one .tflite file in a fresh process --------------


def measure_tflite(request):
    """Latency and memory of one `.tflite` file; runs in its own process."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    with np.load(request["inputs"]) as archive:
        arrays = {name: archive[name] for name in archive.files}
    rss_before, _ = _rss_and_peak()
    parts_before = _rss_parts()
    peak_reset = _reset_peak()

    interpreter = Interpreter(
        model_path=request["tflite_path"], num_threads=request["threads"]
    )
    interpreter.allocate_tensors()
    rss_loaded, _ = _rss_and_peak()
    fed = []
    for detail in interpreter.get_input_details():
        name = _match_input(detail["name"], arrays)
        interpreter.set_tensor(
            detail["index"], arrays[name].astype(detail["dtype"])
        )
        fed.append(name)
    latency = time_calls(
        interpreter.invoke, request["warmup"], request["repeats"]
    )
    output = interpreter.get_tensor(
        interpreter.get_output_details()[0]["index"]
    )
    if not np.all(np.isfinite(output.astype("float64"))):
        raise ValueError("The interpreter's output is not finite.")
    rss_after, peak = _rss_and_peak()
    parts_after = _rss_parts()
    return {
        "latency": latency,
        "inputs": fed,
        "rss_before_load_bytes": rss_before,
        "rss_after_load_bytes": rss_loaded,
        "rss_after_run_bytes": rss_after,
        "peak_rss_bytes": peak,
        "peak_beyond_interpreter_bytes": peak - rss_before,
        # Where the resident set grew: anonymous memory (arena, delegate
        # buffers, heap) and file-backed pages (the mapped model file and
        # interpreter code first touched).
        "growth_by_kind_bytes": {
            kind: parts_after[kind] - parts_before[kind]
            for kind in parts_after
            if parts_before.get(kind) is not None
            and parts_after[kind] is not None
        },
        "peak_source": (
            "VmHWM reset after import"
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
        if args.worker == "prepare":
            payload = {"ok": True, "result": prepare(request)}
        else:
            payload = {"ok": True, "result": measure_tflite(request)}
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


def benchmark_model(name, length, repeats, args, work_dir, log):
    """Prepare, then measure each converted file; a dict per format."""
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
                    "memory_mb": (
                        measured["peak_beyond_interpreter_bytes"] / MB
                        if measured
                        else None
                    ),
                    "featurize_ms": base.get("featurize", {}).get("median_ms"),
                    "error": entry.get("error"),
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
        "TFLite peak MB beyond interpreter",
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
        "Peak memory: fresh process per `.tflite`, peak resident set while "
        "loading and running minus the resident set after importing NumPy "
        "and the interpreter.",
    ]
    if featurize:
        lines.append(
            f"NeuroLite's featurizer, outside the model, takes "
            f"{_number(min(featurize))} ms for this {short}-token input "
            "(cold cache); BERT's WordPiece tokenizer is likewise left out."
        )
    for key, aim in aims.items():
        if key == "speedup":
            lines.append(
                f"Aim: tiny int8 TFLite {aim['value']:.1f}x faster than "
                f"BERT-base float32 TFLite (aim >= {aim['aim']:.0f}x): "
                f"{'met' if aim['met'] else 'not met'}."
            )
        else:
            lines.append(
                f"Aim: tiny int8 TFLite peak memory beyond the interpreter "
                f"{aim['value']:.2f} MB (aim <= {aim['aim']:.0f} MB): "
                f"{'met' if aim['met'] else 'not met'}."
            )
    return "\n".join(lines) + "\n"


def plot(rows, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.get("tflite_ms")]
    if not measured:
        return False
    labels = [f"{r['model']}\n{r['format']}" for r in measured]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    positions = range(len(measured))
    axes[0].bar(
        [p - 0.2 for p in positions],
        [r["keras_ms"] for r in measured],
        0.4,
        label="Keras",
    )
    axes[0].bar(
        [p + 0.2 for p in positions],
        [r["tflite_ms"] for r in measured],
        0.4,
        label="TFLite",
    )
    axes[0].set_yscale("log")
    axes[0].set_xticks(list(positions), labels, fontsize=8)
    axes[0].set_ylabel("latency, ms (log)")
    axes[0].set_title(f"batch 1, {meta['sequence_length']} tokens")
    axes[0].legend()
    axes[1].bar(
        list(positions),
        [r["memory_mb"] or 0 for r in measured],
        color="tab:green",
    )
    axes[1].set_yscale("log")
    axes[1].set_xticks(list(positions), labels, fontsize=8)
    axes[1].set_ylabel("MB (log)")
    axes[1].set_title("TFLite peak memory beyond the interpreter")
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
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
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
            "memory": "fresh process per .tflite; peak resident set "
            "(VmHWM, reset after import) minus VmRSS after "
            "importing numpy and ai_edge_litert and loading the "
            "input arrays, before loading the model",
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
        results = {}
        for name in args.models:
            results[name] = {}
            for length in lengths:
                repeats = (
                    args.repeats if length == lengths[0] else args.long_repeats
                )
                results[name][length] = benchmark_model(
                    name, length, repeats, args, work_dir, log
                )
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)

    rows = collect_rows(
        results, lengths[0], meta["long_length"], args.neurolite_formats
    )
    aims = check_aims(rows)
    meta["load_average_end"] = _load()
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
