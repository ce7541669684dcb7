"""NeuroLite against BERT-shaped Transformers, at small settings.

Run (from the repository root):

    python examples/benchmark_comparison.py

It runs `benchmarks/benchmark_comparison.py` with NeuroLite-tiny (float32
and int8 TFLite) against a BERT-tiny-shaped keras-hub Transformer, batch 1,
at 128 tokens and 512 for the latency growth, random weights, nothing
downloaded, and prints the table it writes to `--output-dir`. Every flag of
the benchmark is accepted and overrides these settings; `--full` runs the
benchmark's own defaults (all six models, 256 and 2048 tokens: about half
an hour). The benchmark's docstring says exactly what is timed and what
memory is counted.
"""

import importlib.util
import sys
from pathlib import Path

BENCHMARK = (
    Path(__file__).resolve().parent.parent
    / "benchmarks"
    / "benchmark_comparison.py"
)
QUICK = [
    "--models",
    "tiny,bert-tiny",
    "--sequence-length",
    "128",
    "--long-length",
    "512",
    "--repeats",
    "10",
    "--long-repeats",
    "3",
    "--calibration-size",
    "50",
    "--output-dir",
    "runs/benchmark_comparison",
]


def load_benchmark():
    """The benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_comparison", BENCHMARK
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--full" in argv:
        argv.remove("--full")
        settings = argv
        print("Full comparison: the benchmark's own defaults.")
    else:
        # Later flags win in argparse, so the user's override the quick ones.
        settings = QUICK + argv
        print(
            "Quick comparison: NeuroLite-tiny against a BERT-tiny-shaped "
            "Transformer (pass --full for all six models)."
        )
    print("benchmark_comparison.py " + " ".join(settings), flush=True)
    return load_benchmark().main(settings)


if __name__ == "__main__":
    sys.exit(main())
