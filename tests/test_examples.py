"""Runs each example at small settings, as a user would: in a subprocess
with the current backend, reading the data through NEUROLITE_DATA_DIR."""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest
from conftest import load_script

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def run_script(path, *args, timeout=1800, cwd=REPO):
    """Runs a script with the current interpreter and backend; returns its
    standard output, or fails with the end of its standard error."""
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", keras.backend.backend())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    completed = subprocess.run(
        [sys.executable, str(path), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"{path.name} exited with {completed.returncode}:\n"
            f"{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
        )
    return completed.stdout


def test_simple_example():
    out = run_script(EXAMPLES / "simple_example.py")
    assert f"Backend: {keras.backend.backend()}" in out
    assert "Token vectors: shape (2, 64, 128)" in out
    assert "Embeddings: shape (2, 128)" in out
    assert "Cosine similarity of the first two" in out


def test_classification_example_quick(tmp_path, data_dir):
    out = run_script(
        EXAMPLES / "classification_example.py",
        "--quick",
        "--max-train",
        32,
        "--max-test",
        16,
        "--output",
        tmp_path,
    )
    assert "32 train / 16 dev / 16 test sentences" in out
    assert "Test accuracy:" in out
    # Each new sentence gets its two best labels.
    assert out.count("    -> ") == 4
    assert "reloaded model gives the same probabilities: True" in out
    assert (tmp_path / "model.keras").is_file()


def test_memory_and_routing_example_quick(tmp_path, data_dir):
    out = run_script(
        EXAMPLES / "memory_and_routing_example.py",
        "--quick",
        "--output",
        tmp_path,
    )
    # The seed example: three writes, then a question recalls them.
    assert out.count("  wrote: ") == 3
    assert len(re.findall(r"recalls slot \d with weight [01]\.\d+", out)) == 3
    # Experts' shares and the rules that fired, per prediction.
    assert "experts' share of training tokens in the last epoch" in out
    assert "rules fired: sport (support sports, matched match/football)" in out
    # A rule added after training raises its label's probability.
    before, after = map(
        float,
        re.search(
            r"rule 'cinema' added: .* ([\d.]+) -> ([\d.]+)", out
        ).groups(),
    )
    assert after > before
    assert "predicts the same: True" in out
    assert (tmp_path / "memory.npz").is_file()
    assert (tmp_path / "model.keras").is_file()


def _benchmark_module():
    return load_script(REPO / "benchmarks" / "benchmark_comparison.py")


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the benchmark builds and converts every model on TensorFlow in "
    "subprocesses whatever the backend, so the tensorflow run covers it",
)
def test_benchmark_comparison_example(tmp_path, data_dir):
    out = run_script(
        EXAMPLES / "benchmark_comparison.py",
        "--models",
        "tiny,bert-tiny",
        "--neurolite-formats",
        "int8",
        "--sequence-length",
        16,
        "--long-length",
        0,
        "--repeats",
        2,
        "--warmup",
        1,
        "--calibration-size",
        8,
        "--output-dir",
        tmp_path,
    )
    assert "| model | TFLite format |" in out
    report = json.loads((tmp_path / "benchmark_comparison.json").read_text())
    rows = {(r["model"], r["format"]): r for r in report["rows"]}
    assert set(rows) == {("tiny", "int8"), ("bert-tiny", "float32")}
    for row in rows.values():
        assert row.get("error") is None, row
        assert row["tflite_ms"] > 0 and row["keras_ms"] > 0
        assert row["memory_mb"] > 0 and row["tflite_file_mb"] > 0
        # The split of the memory figure: the mapped file and the arena.
        assert row["model_file_mb"] > 0 and row["anonymous_mb"] > 0
        assert row["process_peak_mb"] > row["memory_mb"]
    # BERT-tiny's size: 2 layers, hidden 128, 512 positions, 7-label head.
    assert rows["bert-tiny", "float32"]["num_parameters"] == 4_386_823
    # Full-integer weights: the int8 file is well under the float32 bytes.
    tiny = rows["tiny", "int8"]
    assert tiny["tflite_file_mb"] < tiny["num_parameters"] * 4 / 2**20 / 2
    assert report["meta"]["sequence_length"] == 16
    for name in ("md", "json", "png"):
        assert (tmp_path / f"benchmark_comparison.{name}").stat().st_size
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def _prepared(name, keras_ms, tflite_ms, formats=("float32",)):
    return {
        "num_parameters": 10,
        "keras_file_bytes": 2**20,
        "keras_latency": {"median_ms": keras_ms},
        "tflite": {
            q: {
                "bytes": 2**20,
                "measure": {
                    "latency": {"median_ms": tflite_ms},
                    "peak_beyond_interpreter_bytes": 3 * 2**20,
                },
            }
            for q in formats
        },
    }


def test_benchmark_rows_growth_and_aims():
    module = _benchmark_module()
    results = {
        "tiny": {
            256: _prepared("tiny", 4.0, 2.0, ("float32", "int8")),
            2048: _prepared("tiny", 32.0, 16.0, ("float32", "int8")),
        },
        "bert-base": {
            256: _prepared("bert-base", 500.0, 300.0),
            2048: {"error": "RuntimeError: out of memory"},
        },
        "bert-tiny": {256: {"error": "RuntimeError: boom"}},
    }
    rows = module.collect_rows(results, 256, 2048)
    by_key = {(r["model"], r["format"]): r for r in rows}
    assert by_key["tiny", "int8"]["tflite_growth"] == pytest.approx(8.0)
    assert by_key["tiny", "int8"]["keras_growth"] == pytest.approx(8.0)
    assert by_key["bert-base", "float32"]["long_error"].endswith("memory")
    assert by_key["bert-tiny", "float32"]["error"] == "RuntimeError: boom"
    aims = module.check_aims(rows)
    assert aims["speedup"]["value"] == pytest.approx(150.0)
    assert aims["speedup"]["met"] and aims["memory_mb"]["met"]
    table = module.markdown(
        rows,
        aims,
        {
            "sequence_length": 256,
            "long_length": 2048,
            "machine": "test",
            "repeats": 3,
            "long_repeats": 2,
            "warmup": 1,
            "threads": 1,
        },
    )
    assert "| bert-tiny | float32 | failed: RuntimeError: boom |" in table
    assert "150.0x faster" in table


def test_benchmark_memory_split_and_table():
    module = _benchmark_module()
    library = "/venv/site-packages/ai_edge_litert"
    kind = module.mapping_kind
    assert kind("/tmp/m.tflite", "/tmp/m.tflite", library) == "model_file"
    assert kind(f"{library}/libLiteRt.so", "/m", library) == (
        "interpreter_library"
    )
    assert kind("/usr/lib/libc.so.6", "/m", library) == "other_files"
    assert kind("[heap]", "/m", library) == "anonymous"
    assert kind("", "/m", library) == "anonymous"
    measured = {
        "peak_beyond_interpreter_bytes": 5 * 2**20,
        "rss_growth_bytes": 4 * 2**20,
        "process_peak_rss_bytes": 60 * 2**20,
        "rss_growth_by_kind_bytes": {
            "model_file": 2**20,
            "anonymous": 2 * 2**20,
            "interpreter_library": 2**20 // 2,
            "other_files": 2**20 // 2,
        },
    }
    columns = module.memory_columns(measured)
    assert columns["memory_mb"] == 5.0
    assert columns["peak_minus_end_mb"] == 1.0
    assert columns["anonymous_mb"] == 2.0
    assert columns["uss_growth_mb"] is None
    row = {
        "model": "tiny",
        "format": "int8",
        "num_parameters": 10,
        "keras_file_mb": 1.0,
        "keras_ms": 2.0,
        "tflite_ms": 1.0,
        **columns,
    }
    aims = module.check_aims([row])
    assert not aims["memory_mb"]["met"]
    table = module.markdown(
        [row],
        aims,
        {
            "sequence_length": 256,
            "long_length": 0,
            "machine": "test",
            "repeats": 3,
            "warmup": 1,
            "threads": 1,
            "command": "python benchmark_comparison.py",
            "seconds": 60.0,
            "load_average_start": [1.0, 2.0, 3.0],
            "load_average_end": [4.0, 5.0, 6.0],
        },
    )
    assert "| tiny | int8 | 5.00 | 1.00 | 2.00 | 0.50 | 0.50 | 1.00 |" in table
    assert "not met, 1.00 MB over" in table
    assert "1.0, 2.0, 3.0 at the start and 4.0, 5.0, 6.0 at the end" in table


def test_benchmark_rejects_unknown_model():
    module = _benchmark_module()
    with pytest.raises(SystemExit):
        module.build_parser().parse_args(["--models", "tiny,gpt-5"])
