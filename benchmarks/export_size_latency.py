"""Size of the exported `.tflite` file per preset and quantization, and
latency at 256 tokens, batch 1, one and two threads, Keras beside TFLite.

Run (2 to 3 minutes on two CPU cores shared with other jobs, load average
3 to 6, for the three presets and four modes):

    KERAS_BACKEND=tensorflow python benchmarks/export_size_latency.py \
        --data-dir ../shared/data --output-dir benchmarks/results/export

What is measured, in one run:

- Models: NeuroLite-tiny, -small and -base classifiers with 7 labels and
  random weights, built at `max_sequence_length=256` so that latency is
  measured at 256 tokens (the MLP-Mixer's token-mixing weights fix the
  length; at the presets' own length of 64 the files are a little
  smaller). Sizes and float latencies do not depend on the weights'
  values; the int8 ranges are calibrated on real SIB-200 dev sentences.
  Int8 latency depends on them a little: with untrained (all-zero)
  normalization offsets, a layer normalization right after another sees
  token means of exactly zero, whose int8 scale XNNPACK rejects, so two
  subtractions run on TFLite's slower kernels (tiny: 2.1 ms against 1.6
  ms with trained-like offsets; see `neurolite_keras.recipes.export_forms`).
- Size: bytes of each `.tflite` file written by `export_model`, against
  the aims of issue 3 for int8 (tiny 1.5 MB, small 4 MB, base 10 MB).
- Latency: one text of 256 real tokens (SIB-200 sentences joined), batch
  1, timed interleaved: for each preset and thread count (1, then 2), one
  fresh process pinned to that many cores loads the Keras model and the
  four TFLite files and calls them in turn, one call each per round (the
  order rotated every round), so that the load of a shared machine falls
  on all of them alike. `--warmup` untimed rounds, then `--runs` timed
  rounds; Keras is timed in `--keras-runs` of them, spread evenly. Each
  figure is the median (and 90th percentile) of its timed calls. TFLite:
  `ai_edge_litert` interpreter's signature runner (inputs in, outputs
  out) with `num_threads` 1 or 2 (XNNPACK, the default CPU path). Keras:
  the compiled predict function (`model.predict_on_batch`) on the active
  backend, with TensorFlow's or PyTorch's thread count set to the same
  number. The featurizer's time for the same text (cold token cache) is
  listed apart: it runs before either model. The load average at the
  start and the end goes into the JSON and under the table.

Writes `export_size_latency.json` and `export_size_latency.md` (both
atomically) to `--output-dir`, and prints the markdown table.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from neurolite_keras import atomic_io
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.featurizer import TextFeaturizer

SIZE_AIMS_MB = {"tiny": 1.5, "small": 4.0, "base": 10.0}
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
SEQUENCE_LENGTH = 256
NUM_LABELS = 7


def long_text(texts, featurizer, length):
    """Real sentences joined until the featurizer keeps `length` tokens."""
    joined = []
    for text in texts:
        joined.append(text)
        if len(featurizer.tokenize(" ".join(joined))) >= length:
            return " ".join(joined)
    raise ValueError(f"Not enough text for {length} tokens.")


def _summary(seconds):
    """Median and 90th percentile of durations in seconds, in ms."""
    seconds = sorted(seconds)
    return {
        "median_ms": round(1000 * statistics.median(seconds), 3),
        "p90_ms": round(1000 * seconds[int(0.9 * (len(seconds) - 1))], 3),
        "runs": len(seconds),
    }


def timings(call, runs, warmup):
    """Median and 90th percentile of `runs` calls, in milliseconds."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return _summary(seconds)


def interleaved_timings(calls, runs, warmup):
    """Times several calls side by side, one call of each per round.

    Args:
        calls: dict of name to a function of no arguments.
        runs: dict of name to the number of timed calls it gets; the
            rounds number the largest of them, and a call with fewer is
            timed in rounds spread evenly over them.
        warmup: untimed rounds first, every call in each.

    Returns:
        dict of name to its `_summary`.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    rounds = max(runs.values())
    seconds = {name: [] for name in names}
    for index in range(rounds):
        # Rotate the order so that no call always follows the same one.
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            wanted = runs[name]
            if (index + 1) * wanted // rounds == index * wanted // rounds:
                continue
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: _summary(seconds[name]) for name in names}


def latency_worker(request):
    """Runs in a fresh process pinned to `threads` cores: the Keras model
    and every TFLite file of one preset, timed interleaved."""
    threads = request["threads"]
    if hasattr(os, "sched_setaffinity"):
        # Pin the process to `threads` cores: holds for every backend.
        cores = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, cores)
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
    from ai_edge_litert.interpreter import Interpreter

    from neurolite_keras.models import load_model

    with np.load(request["features_path"]) as data:
        features = {name: data[name] for name in data.files}
    model = load_model(request["model_path"])
    calls = {"keras": functools.partial(model.predict_on_batch, features)}
    runs = {"keras": request["keras_runs"]}
    for quantization, path in request["tflite_paths"].items():
        interpreter = Interpreter(model_path=path, num_threads=threads)
        runner = interpreter.get_signature_runner()
        calls[quantization] = functools.partial(runner, **features)
        runs[quantization] = request["runs"]
    result = interleaved_timings(calls, runs, request["warmup"])
    return {"backend": backend, "latency": result}


def interleaved_latency(request, folder):
    """`latency_worker` in a subprocess; its result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(request["threads"]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    request_path = os.path.join(
        folder, f"latency-{request['preset']}-{request['threads']}.json"
    )
    with open(request_path, "w", encoding="utf-8") as file:
        json.dump(request, file)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        request_path,
    ]
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False
    )
    if completed.returncode:
        raise RuntimeError(
            f"Latency worker failed:\n{completed.stderr[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def benchmark_preset(preset, args, calibration, text, folder):
    import keras

    from neurolite_keras.models import NeuroLiteForClassification
    from neurolite_keras.recipes.export import export_model

    config = NeuroLiteConfig.preset(preset, max_sequence_length=SEQUENCE_LENGTH)
    keras.utils.set_random_seed(0)
    model = NeuroLiteForClassification(config, num_labels=NUM_LABELS)
    model_path = os.path.join(folder, f"{preset}.keras")
    model.save(model_path)
    features = model.featurize([text])
    if int(features["padding_mask"].sum()) != SEQUENCE_LENGTH:
        raise ValueError(f"The text does not fill {SEQUENCE_LENGTH} tokens.")
    features_path = os.path.join(folder, f"{preset}-features.npz")
    np.savez(features_path, **features)
    cold = TextFeaturizer(**config.featurizer_config(), cache_size=0)
    parameters = int(model.count_params())
    rows = [
        {
            "preset": preset,
            "format": f"keras ({keras.backend.backend()}, float32)",
            "parameters": parameters,
            "size_mb": round(os.path.getsize(model_path) / 1e6, 3),
            "featurizer": timings(lambda: cold([text]), args.runs, 3),
        }
    ]
    tflite_paths = {}
    for quantization in args.quantizations:
        start = time.perf_counter()
        result = export_model(
            model_path,
            os.path.join(folder, f"{preset}-{quantization}.tflite"),
            quantization=quantization,
            calibration_texts=calibration,
            num_calibration_texts=args.num_calibration_texts,
        )
        export_seconds = time.perf_counter() - start
        size_mb = result.size_bytes / 1e6
        tflite_paths[quantization] = result.tflite_path
        row = {
            "preset": preset,
            "format": f"tflite {quantization}",
            "quantization": quantization,
            "parameters": parameters,
            "size_mb": round(size_mb, 3),
            "export_seconds": round(export_seconds, 1),
        }
        if quantization == "int8":
            row["size_aim_mb"] = SIZE_AIMS_MB[preset]
            row["meets_size_aim"] = size_mb <= SIZE_AIMS_MB[preset]
        rows.append(row)
        print(f"  {preset} {quantization}: {size_mb:.2f} MB", flush=True)
    for row in rows:
        row["latency"] = {}
    for threads in (1, 2):
        print(f"  {preset}: timing, {threads} thread(s)", flush=True)
        measured = interleaved_latency(
            {
                "preset": preset,
                "threads": threads,
                "model_path": model_path,
                "features_path": features_path,
                "tflite_paths": tflite_paths,
                "runs": args.runs,
                "keras_runs": args.keras_runs,
                "warmup": args.warmup,
            },
            folder,
        )
        for row in rows:
            name = row.get("quantization", "keras")
            row["latency"][str(threads)] = measured["latency"][name]
    return rows


def markdown(rows, settings):
    lines = [
        "| preset | format | parameters | size (MB) | 1 thread (ms) "
        "| 2 threads (ms) | featurizer (ms) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        size = f"{row['size_mb']:.2f}"
        if "size_aim_mb" in row:
            mark = "meets" if row["meets_size_aim"] else "misses"
            size += f" ({mark} {row['size_aim_mb']})"
        featurizer = row.get("featurizer", {}).get("median_ms")
        lines.append(
            f"| {row['preset']} | {row['format']} | {row['parameters']:,} "
            f"| {size} | {row['latency']['1']['median_ms']:.2f} "
            f"| {row['latency']['2']['median_ms']:.2f} "
            f"| {'' if featurizer is None else f'{featurizer:.2f}'} |"
        )
    lines += [
        "",
        f"Batch 1, {settings['sequence_length']} tokens, median of "
        f"{settings['runs']} TFLite runs and {settings['keras_runs']} Keras "
        f"runs after {settings['warmup']} warm-up runs, the Keras model and "
        "the TFLite files of a preset called in turn, one call each per "
        "round, in one process pinned to as many cores as threads; random "
        f"weights; {settings['machine']}.",
    ]
    start = settings.get("load_average_start")
    end = settings.get("load_average_end")
    if start and end:
        lines[-1] += (
            f" Load average (1, 5, 15 min) {', '.join(map(str, start))} "
            f"at the start, {', '.join(map(str, end))} at the end"
            f" ({settings['seconds'] / 60:.0f} min)."
        )
    return "\n".join(lines) + "\n"


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(SIZE_AIMS_MB))
    parser.add_argument(
        "--quantizations",
        nargs="+",
        default=list(QUANTIZATIONS),
        choices=QUANTIZATIONS,
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--keras-runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--num-calibration-texts", type=int, default=100)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output-dir", default="benchmarks/results/export")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        with open(args.worker, encoding="utf-8") as file:
            request = json.load(file)
        print(json.dumps(latency_worker(request)))
        return 0
    if min(args.runs, args.keras_runs) < 50:
        parser.error("--runs and --keras-runs must be at least 50.")
    unknown = sorted(set(args.presets) - set(SIZE_AIMS_MB))
    if unknown:
        parser.error(f"unknown presets {unknown}")

    from neurolite_keras.datasets import load_sib200

    data = load_sib200(args.data_dir)
    calibration = data.dev.texts
    featurizer = TextFeaturizer(max_sequence_length=SEQUENCE_LENGTH)
    text = long_text(data.test.texts, featurizer, SEQUENCE_LENGTH)
    settings = {
        "sequence_length": SEQUENCE_LENGTH,
        "batch_size": 1,
        "runs": args.runs,
        "keras_runs": args.keras_runs,
        "warmup": args.warmup,
        "weights": "random (seed 0)",
        "num_calibration_texts": args.num_calibration_texts,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()}",
        "timing": "interleaved: per preset and thread count, one process "
        "pinned to that many cores calls the Keras model and each TFLite "
        "file in turn, one call each per round, order rotated per round; "
        "Keras timed in keras_runs of the runs rounds, spread evenly",
        "load_average_start": _load(),
    }
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="neurolite-bench-") as folder:
        for preset in args.presets:
            print(f"{preset}...", flush=True)
            rows.extend(
                benchmark_preset(preset, args, calibration, text, folder)
            )
    settings["load_average_end"] = _load()
    settings["seconds"] = round(time.perf_counter() - start, 1)
    table = markdown(rows, settings)
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    atomic_io.write_json(
        os.path.join(args.output_dir, "export_size_latency.json"),
        {"settings": settings, "results": rows},
    )
    atomic_io.write_text(
        os.path.join(args.output_dir, "export_size_latency.md"), table
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
