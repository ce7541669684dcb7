"""How NeuroLite token mixers scale with sequence length, against a
Transformer encoder of the same width and depth.

Run (from the repository root):

    python benchmarks/mixer_scaling.py --output-dir benchmarks/results

What it does: CPU, batch 1, random weights. For each width (the sizes of
the `tiny` and `base` presets: hidden 128, 4 layers, channel MLP 384,
token MLP 64; hidden 256, 6 layers, channel MLP 1024, token MLP 128) and
each sequence length, it builds one
stack per model, `HashProjection -> Dense(hidden) -> blocks ->
MaskedMeanPooling`, with MLP-Mixer, HyperMixer or FNet (FFT form) blocks,
or `keras_hub.layers.TransformerEncoder` blocks (`num_heads = hidden //
64`, `intermediate_dim` = channel MLP width, GELU). The MLP-Mixer is built
with `sequence_length` set to each length. Every model gets an all-ones
padding mask.

What is timed: one call of the backend's compiled forward function (on
JAX, `jax.jit` of `model.stateless_call`, waited on with
`block_until_ready`; on TensorFlow, a `tf.function` of `model(x)`; on
torch, `model(x)` under `torch.no_grad()`), on inputs already on the
device. Each model gets `--warmup` untimed calls (compilation included;
after the first, no new one starts once 20 s are spent). Then come
`--repeats` rounds over every model and length of one width, in a new
random order each round, so that load on a shared machine, which comes
and goes, hits them alike and ratios compare like with like; in a round
each model and length is called back to back for at least 0.25 s (once
at least), each call timed on its own (no new round starts after
`--width-budget` seconds once 3 are done). The figures are the medians
of those calls' latencies (wall time) and of their CPU time (the
process's, all threads: on a shared machine it counts the work, not the
waits for a core; the minimum latency is in the JSON). It prints
markdown tables (milliseconds), for latency and for CPU time,
t(4096)/t(512) per model (linear cost gives about 8) and the issue's aims
(every NeuroLite mixer at most 9, and faster than the Transformer at every
length from 256 up), and writes `mixer_scaling.md`, `mixer_scaling.json`
and `mixer_scaling.png` into `--output-dir`, each atomically.

Last full run (default flags, JAX, 2 quiet CPU cores, 3 min):
t(4096)/t(512) of latency, mlp / hypermixer / fnet-fft / transformer:
tiny 6.83 / 5.91 / 6.82 / 42.4, base 8.57 / 7.69 / 8.45 / 48.2; of CPU
time: tiny 7.57 / 7.01 / 7.23 / 49.1, base 8.41 / 7.82 / 8.27 / 44.5.
Every mixer met both aims. The run after it with `--chunk-positions 0`
(channel MLPs over whole sequences, as before blocks of 512 positions were
added; `benchmarks/results/mixers_whole_sequences`) gave base 9.15 / 8.53
/ 9.59 / 36.0 in latency (9.23 / 8.61 / 9.35 / 36.3 in CPU time), base
mlp and fnet-fft missing the 9x aim: at 4,096 tokens blocks took base
latency from 215 to 201 ms (mlp), 229 to 209 (hypermixer) and 216 to 196
(fnet-fft). The machine, its load and the backend change these figures.
"""

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

WIDTHS = ("tiny", "base")


def width_sizes(width):
    """The sizes of the NeuroLite preset `width` that set the cost of a
    forward pass (the Bloom filter's size does not: a gather)."""
    from neurolite_keras.config import NeuroLiteConfig

    config = NeuroLiteConfig.preset(width)
    return {
        "projection_size": config.projection_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_mixer_layers,
        "channel_mixing_size": config.channel_mixing_size,
        "token_mixing_size": config.token_mixing_size,
    }


MODELS = ("mlp", "hypermixer", "fnet-fft", "fnet-dft", "transformer")
DEFAULT_MODELS = ("mlp", "hypermixer", "fnet-fft", "transformer")
MIXERS = ("mlp", "hypermixer", "fnet-fft", "fnet-dft")
DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096)
NUM_BUCKETS = 4096
NUM_HASHES = 16
MAX_RATIO = 9.0
COMPARE_FROM_LENGTH = 256
MIN_REPEATS = 3
WARMUP_BUDGET_S = 20.0
BURST_S = 0.25

TIMED = {
    "jax": "jax.jit(model.stateless_call)(...).block_until_ready()",
    "tensorflow": "tf.function(model)(x) (eager result, CPU)",
    "torch": "model(x) under torch.no_grad() (eager)",
}


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive integers, got {text!r}"
        )
    return sorted(set(values))


def _name_list(choices):
    def parse(text):
        names = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {list(choices)}, "
                f"got {text!r}"
            )
        return names

    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--lengths",
        type=_int_list,
        default=list(DEFAULT_LENGTHS),
        help="comma-separated sequence lengths (default: %(default)s)",
    )
    parser.add_argument(
        "--widths",
        type=_name_list(tuple(WIDTHS)),
        default=list(WIDTHS),
        help="comma-separated widths among tiny,base (default: both)",
    )
    parser.add_argument(
        "--models",
        type=_name_list(MODELS),
        default=list(DEFAULT_MODELS),
        help=f"comma-separated models among {','.join(MODELS)} "
        f"(default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="timed rounds; each times every model and length for at least "
        f"{BURST_S} s (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed calls per model"
    )
    parser.add_argument(
        "--width-budget",
        type=float,
        default=600.0,
        help="seconds of timed rounds per width after which no new round "
        f"starts, once {MIN_REPEATS} rounds are done (default: %(default)s)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("benchmarks/results/mixers"),
        help="folder for mixer_scaling.{md,json,png}",
    )
    parser.add_argument(
        "--backend",
        choices=("jax", "tensorflow", "torch"),
        default=os.environ.get("KERAS_BACKEND", "jax"),
        help="Keras backend (default: $KERAS_BACKEND, else jax)",
    )
    parser.add_argument(
        "--chunk-positions",
        type=int,
        default=None,
        help="positions per block of the mixers' channel MLP "
        "(neurolite_keras.layers.chunking.CHUNK_POSITIONS, 512 unless set); "
        "0 computes each sequence whole",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.chunk_positions is not None and args.chunk_positions < 0:
        parser.error(
            f"--chunk-positions must be 0 or more, got {args.chunk_positions}"
        )
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not args.width_budget > 0:
        parser.error(
            f"--width-budget must be positive, got {args.width_budget}"
        )
    if args.warmup < 1:
        parser.error(f"--warmup must be at least 1, got {args.warmup}")
    return args


def build_model(kind, width, length):
    """`HashProjection -> Dense -> blocks -> pooling` for one model kind."""
    import keras
    import keras_hub

    from neurolite_keras.layers import HashProjection
    from neurolite_keras.layers import MaskedMeanPooling
    from neurolite_keras.layers import MlpMixerBlock
    from neurolite_keras.layers.fnet import FNetBlock
    from neurolite_keras.layers.hypermixer import HyperMixerBlock

    sizes = width_sizes(width)
    hidden = sizes["hidden_size"]
    indices = keras.Input((length, NUM_HASHES), dtype="int32", name="indices")
    mask = keras.Input((length,), dtype="int32", name="padding_mask")
    x = HashProjection(NUM_BUCKETS, sizes["projection_size"])(indices)
    x = keras.layers.Dense(hidden)(x)
    for _ in range(sizes["num_layers"]):
        if kind == "mlp":
            block = MlpMixerBlock(
                length,
                token_mixing_size=sizes["token_mixing_size"],
                channel_mixing_size=sizes["channel_mixing_size"],
            )
        elif kind == "hypermixer":
            block = HyperMixerBlock(
                token_mixing_size=sizes["token_mixing_size"],
                channel_mixing_size=sizes["channel_mixing_size"],
            )
        elif kind == "fnet-fft":
            block = FNetBlock(
                channel_mixing_size=sizes["channel_mixing_size"],
                implementation="fft",
            )
        elif kind == "fnet-dft":
            block = FNetBlock(
                channel_mixing_size=sizes["channel_mixing_size"],
                implementation="dft",
            )
        elif kind == "transformer":
            block = keras_hub.layers.TransformerEncoder(
                intermediate_dim=sizes["channel_mixing_size"],
                num_heads=max(1, hidden // 64),
                activation="gelu",
            )
        else:
            raise ValueError(f"Unknown model kind: {kind!r}")
        x = block(x, padding_mask=mask)
    outputs = MaskedMeanPooling()(x, padding_mask=mask)
    return keras.Model({"indices": indices, "padding_mask": mask}, outputs)


def compiled_forward(model, backend):
    """A function of the inputs that runs one finished forward pass."""
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def forward(trainable, non_trainable, inputs):
            outputs, _ = model.stateless_call(
                trainable, non_trainable, inputs, training=False
            )
            return outputs

        def run(inputs):
            return forward(trainable, non_trainable, inputs).block_until_ready()

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        forward = tf.function(lambda inputs: model(inputs, training=False))
        return forward
    import torch

    def run(inputs):
        with torch.no_grad():
            return model(inputs, training=False)

    return run


def make_inputs(length, seed):
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    indices = rng.integers(0, NUM_BUCKETS, (1, length, NUM_HASHES))
    return {
        "indices": keras.ops.convert_to_tensor(indices.astype("int32")),
        "padding_mask": keras.ops.convert_to_tensor(
            np.ones((1, length), "int32")
        ),
    }


def _warm_up(run, inputs, count):
    start = time.perf_counter()
    for index in range(count):
        # The first call compiles; later ones only settle caches, so a model
        # slow enough to pass the budget skips them.
        if index and time.perf_counter() - start > WARMUP_BUDGET_S:
            break
        run(inputs)
    return time.perf_counter() - start


def measure(args):
    """Latencies (ms) of every (width, model, length); prints as it goes."""
    import keras

    order = random.Random(args.seed)
    results = []
    for width in args.widths:
        runners = {}
        for length in args.lengths:
            inputs = make_inputs(length, args.seed)
            for kind in args.models:
                keras.utils.set_random_seed(args.seed)
                model = build_model(kind, width, length)
                run = compiled_forward(model, args.backend)
                warmup_s = _warm_up(run, inputs, args.warmup)
                runners[kind, length] = (model, run, inputs, warmup_s)
                print(
                    f"{width:4s} {kind:11s} length {length:5d}: compiled and "
                    f"warmed up in {warmup_s:.1f} s",
                    flush=True,
                )
        # Rounds over every (model, length) of this width, in a new random
        # order each round, so load on the shared machine, which comes and
        # goes, hits every model and length alike. In a round each one is
        # called back to back for at least BURST_S seconds (once at least),
        # every call timed on its own.
        times = {key: [] for key in runners}
        cpu_times = {key: [] for key in runners}
        width_start = time.perf_counter()
        for round_index in range(args.repeats):
            if (
                round_index >= MIN_REPEATS
                and time.perf_counter() - width_start > args.width_budget
            ):
                break
            keys = list(runners)
            order.shuffle(keys)
            for key in keys:
                _, run, inputs, _ = runners[key]
                burst_start = time.perf_counter()
                while True:
                    start = time.perf_counter()
                    cpu_start = time.process_time()
                    run(inputs)
                    cpu_end = time.process_time()
                    end = time.perf_counter()
                    times[key].append(1e3 * (end - start))
                    cpu_times[key].append(1e3 * (cpu_end - cpu_start))
                    if end - burst_start >= BURST_S:
                        break
            print(
                f"{width}: round {round_index + 1} done, "
                f"{time.perf_counter() - width_start:.0f} s",
                flush=True,
            )
        for (kind, length), (model, _, _, warmup_s) in runners.items():
            samples = times[kind, length]
            cpu_samples = cpu_times[kind, length]
            results.append(
                {
                    "width": width,
                    "model": kind,
                    "length": length,
                    "median_ms": statistics.median(samples),
                    "min_ms": min(samples),
                    "cpu_ms": statistics.median(cpu_samples),
                    "num_calls": len(samples),
                    "times_ms": samples,
                    "cpu_times_ms": cpu_samples,
                    "warmup_s": warmup_s,
                    "num_parameters": model.count_params(),
                }
            )
            print(
                f"{width:4s} {kind:11s} length {length:5d}: "
                f"median {statistics.median(samples):9.2f} ms, "
                f"min {min(samples):9.2f} ms, CPU time "
                f"{statistics.median(cpu_samples):9.2f} ms "
                f"({len(samples)} calls)",
                flush=True,
            )
        del runners
    return results


def _stat(results, width, model, length, statistic):
    for row in results:
        if (row["width"], row["model"], row["length"]) == (
            width,
            model,
            length,
        ):
            return row[f"{statistic}_ms"]
    return None


def summarize(results, args, statistic):
    """Ratios t(4096)/t(512) and the issue's aims, on one statistic."""
    ratios, aims = {}, []
    for width in args.widths:
        for model in args.models:
            low = _stat(results, width, model, 512, statistic)
            high = _stat(results, width, model, 4096, statistic)
            ratio = high / low if low and high else None
            ratios[f"{width}/{model}"] = ratio
            if model not in MIXERS:
                continue
            slower = []
            if "transformer" in args.models:
                for length in args.lengths:
                    if length < COMPARE_FROM_LENGTH:
                        continue
                    mine = _stat(results, width, model, length, statistic)
                    theirs = _stat(
                        results, width, "transformer", length, statistic
                    )
                    if mine >= theirs:
                        slower.append(length)
            aims.append(
                {
                    "width": width,
                    "model": model,
                    "ratio_4096_512": ratio,
                    "ratio_ok": None if ratio is None else ratio <= MAX_RATIO,
                    "slower_than_transformer_at": slower,
                    "compared": "transformer" in args.models,
                }
            )
    return ratios, aims


def _table(results, ratios, args, statistic):
    lengths = args.lengths
    lines = [
        "| width | model | params | "
        + " | ".join(str(n) for n in lengths)
        + " | t(4096)/t(512) |",
        "|---|---|---:|" + "---:|" * len(lengths) + "---:|",
    ]
    for width in args.widths:
        for model in args.models:
            params = next(
                r["num_parameters"]
                for r in results
                if r["width"] == width and r["model"] == model
            )
            cells = [
                f"{_stat(results, width, model, n, statistic):.1f}"
                for n in lengths
            ]
            ratio = ratios[f"{width}/{model}"]
            ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
            lines.append(
                f"| {width} | {model} | {params:,} | "
                + " | ".join(cells)
                + f" | {ratio_text} |"
            )
    return lines


def _aim_lines(aims):
    lines = []
    for aim in aims:
        ratio = aim["ratio_4096_512"]
        ratio_text = (
            "ratio n/a (needs 512 and 4096)"
            if ratio is None
            else f"ratio {ratio:.2f} {'ok' if aim['ratio_ok'] else 'MISSED'}"
        )
        if not aim["compared"]:
            speed_text = "no Transformer measured"
        elif aim["slower_than_transformer_at"]:
            speed_text = "not faster than the Transformer at " + ", ".join(
                str(n) for n in aim["slower_than_transformer_at"]
            )
        else:
            speed_text = (
                "faster than the Transformer at every measured length "
                f">= {COMPARE_FROM_LENGTH}"
            )
        lines.append(f"- {aim['width']} {aim['model']}: {ratio_text}; ")
        lines[-1] += speed_text + "."
    return lines


def markdown(results, summaries, args, environment):
    calls = [row["num_calls"] for row in results]
    lines = [
        f"Forward latency, ms, batch 1, CPU, backend {args.backend}. "
        f"Timed: {TIMED[args.backend]}. After {args.warmup} warm-up calls, "
        f"{min(calls)} to {max(calls)} timed calls per model and length, "
        "in rounds over every model and length of a width. NeuroLite "
        "mixers run their channel MLP in blocks of "
        f"{environment['chunk_positions']} positions (0: whole sequences).",
    ]
    names = {
        "median": "Median latency (the figure asked for)",
        "cpu": "Median CPU time of the process per call, all threads (the "
        "work done; unlike latency, it does not count time spent waiting "
        "for a core that other work on the machine holds)",
    }
    for statistic, (ratios, aims) in summaries.items():
        lines += ["", f"### {names[statistic]}", ""]
        lines += _table(results, ratios, args, statistic)
        lines += [
            "",
            "Aims: t(4096)/t(512) <= 9; faster than the Transformer of the "
            f"same width at every length >= {COMPARE_FROM_LENGTH}.",
            "",
        ]
        lines += _aim_lines(aims)
    lines += [
        "",
        f"Machine: {environment['cpu_count']} CPUs, load average "
        f"{environment['load_average_start']} at start, "
        f"{environment['load_average_end']} at end; "
        f"Keras {environment['keras_version']}; run {environment['date']}, "
        f"{environment['run_minutes']} min.",
    ]
    return "\n".join(lines) + "\n"


def _atomic_write(path, write):
    """Calls `write(temp_path)`, then moves the file onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes it owner-only.
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def _write_text(path, text):
    def write(temp):
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def plot(results, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (
        ("median", "median latency, ms"),
        ("cpu", "median CPU time per call, ms"),
    )
    figure, axes = plt.subplots(
        len(rows),
        len(args.widths),
        figsize=(6 * len(args.widths), 4.5 * len(rows)),
        squeeze=False,
    )
    for row, (statistic, label) in zip(axes, rows):
        for axis, width in zip(row, args.widths):
            for model in args.models:
                values = [
                    _stat(results, width, model, n, statistic)
                    for n in args.lengths
                ]
                axis.plot(args.lengths, values, marker="o", label=model)
            first = _stat(
                results, width, args.models[0], args.lengths[0], statistic
            )
            axis.plot(
                args.lengths,
                [first * n / args.lengths[0] for n in args.lengths],
                color="grey",
                linestyle=":",
                label="linear in length",
            )
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xticks(args.lengths, [str(n) for n in args.lengths])
            axis.set_xlabel("sequence length")
            axis.set_ylabel(f"{label} (batch 1, CPU)")
            axis.set_title(f"{width} width")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
    figure.suptitle(f"Mixer scaling, backend {args.backend}")
    figure.tight_layout()
    _atomic_write(path, lambda temp: figure.savefig(temp, format="png"))
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # Run from a checkout, not installed.
    import keras

    if keras.backend.backend() != args.backend:
        sys.exit(
            f"Keras was already imported with backend "
            f"{keras.backend.backend()!r}; run with KERAS_BACKEND="
            f"{args.backend}."
        )
    from neurolite_keras.layers import chunking

    if args.chunk_positions is not None:
        chunking.CHUNK_POSITIONS = args.chunk_positions
    environment = {
        "chunk_positions": chunking.CHUNK_POSITIONS,
        "backend": args.backend,
        "keras_version": keras.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "timed": TIMED[args.backend],
    }
    print(
        f"Backend {args.backend}; timed: {TIMED[args.backend]}; median of "
        f"calls from up to {args.repeats} rounds over every model and length, "
        f"after {args.warmup} warm-up calls.",
        flush=True,
    )
    started = time.perf_counter()
    results = measure(args)
    environment["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    environment["run_minutes"] = round((time.perf_counter() - started) / 60, 1)
    summaries = {
        statistic: summarize(results, args, statistic)
        for statistic in ("median", "cpu")
    }
    table = markdown(results, summaries, args, environment)
    print()
    print(table)
    for statistic, (ratios, _) in summaries.items():
        for model, ratio in ratios.items():
            text = "n/a" if ratio is None else f"{ratio:.2f}"
            print(f"t(4096)/t(512) {model} ({statistic}): {text}")

    output_dir = args.output_dir
    _write_text(output_dir / "mixer_scaling.md", table)
    report = {
        "environment": environment,
        "arguments": {
            "lengths": args.lengths,
            "widths": {w: width_sizes(w) for w in args.widths},
            "models": args.models,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "burst_s": BURST_S,
            "width_budget_s": args.width_budget,
            "seed": args.seed,
        },
        "results": results,
        "ratios_4096_512": {s: r for s, (r, _) in summaries.items()},
        "aims": {s: a for s, (_, a) in summaries.items()},
    }
    _write_text(
        output_dir / "mixer_scaling.json", json.dumps(report, indent=2) + "\n"
    )
    plot(results, args, output_dir / "mixer_scaling.png")
    print(f"Wrote {output_dir}/mixer_scaling.{{md,json,png}}")


if __name__ == "__main__":
    main()
