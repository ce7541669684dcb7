"""Parity of a trained classifier's TFLite exports on the SIB-200 test set.

    KERAS_BACKEND=tensorflow python benchmarks/export_parity.py \
        runs/sib200-tiny/model.keras --data-dir ../shared/data \
        --output-dir benchmarks/results/export_parity

Exports the model (trained by `neurolite train --dataset sib200`) to
float32, int8 with per-channel weight scales and int8 with per-tensor
scales (post-training calibration on training sentences, each activation's
range spanning 99.99% of its calibration values), int8 with the
converter's min/max ranges for comparison (`--qat-epochs N` adds a QAT
variant), then compares each `.tflite`, run by the LiteRT
interpreter on raw text, with the float `.keras` model on all 14 test
sets: the largest logit difference, top-1 agreement and accuracy (means
over languages). The targets of the export recipe: float32 logits within
1e-4; int8 top-1 agreement at least 99% and accuracy at most one point
lower. Writes `export_parity.json` and `export_parity.md` atomically.
"""

import argparse
import os
import sys
import tempfile

from neurolite_keras import atomic_io
from neurolite_keras.datasets import load_sib200
from neurolite_keras.recipes.export import export_model
from neurolite_keras.recipes.parity import parity_report

VARIANTS = {
    "float32": {"quantization": "float32"},
    "int8 (per-channel)": {"quantization": "int8"},
    "int8 (per-tensor)": {"quantization": "int8", "per_channel": False},
    # The converter's own ranges (min and max of the calibration values),
    # the recipe's default before percentile ranges.
    "int8 (per-channel, min/max ranges)": {
        "quantization": "int8",
        "calibration_percentile": 100,
    },
}


def measure(model_path, data, variants, folder):
    rows = {}
    for name, options in variants.items():
        path = os.path.join(folder, name.split()[0] + str(len(rows)))
        result = export_model(
            model_path,
            path + ".tflite",
            calibration_texts=data.train.texts,
            train_texts=data.train.texts,
            train_labels=data.train.labels,
            **options,
        )
        report = parity_report(
            model_path,
            result.tflite_path,
            data.test.texts,
            data.test.labels,
            languages=data.test.languages,
        )
        report.pop("per_language", None)
        report["size_bytes"] = result.size_bytes
        rows[name] = report
    return rows


def markdown(rows, model_path):
    lines = [
        f"Exports of `{model_path}` against the float Keras model on the "
        "SIB-200 test sets (2,856 sentences; accuracies and agreement are "
        "means over the 14 languages).",
        "",
        "| export | size | max abs logit diff | top-1 agreement | "
        "Keras accuracy | TFLite accuracy | targets met |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows.items():
        met = all(r["targets"].values()) if r["targets"] else True
        lines.append(
            f"| {name} | {r['size_bytes'] / 1e6:.2f} MB | "
            f"{r['max_abs_logit_difference']:.2g} | "
            f"{r['top1_agreement']:.4f} | {r['keras_accuracy']:.4f} | "
            f"{r['tflite_accuracy']:.4f} | "
            f"{'yes' if met else 'NO: ' + str(r['targets'])} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a SIB-200 classifier (.keras)")
    parser.add_argument(
        "--data-dir", default=os.environ.get("NEUROLITE_DATA_DIR")
    )
    parser.add_argument(
        "--output-dir", default="benchmarks/results/export_parity"
    )
    parser.add_argument("--qat-epochs", type=int, default=0)
    args = parser.parse_args()
    if not os.path.isfile(args.model):
        parser.error(f"no model file at {args.model!r}")
    data = load_sib200(args.data_dir)
    variants = dict(VARIANTS)
    if args.qat_epochs:
        variants[f"int8 (per-channel, QAT {args.qat_epochs} epochs)"] = {
            "quantization": "int8",
            "qat_epochs": args.qat_epochs,
        }
    with tempfile.TemporaryDirectory(prefix="neurolite-parity-") as folder:
        rows = measure(args.model, data, variants, folder)
    table = markdown(rows, args.model)
    report = {"model": args.model, "command": " ".join(sys.argv), "rows": rows}
    atomic_io.write_json(
        os.path.join(args.output_dir, "export_parity.json"), report
    )
    atomic_io.write_text(
        os.path.join(args.output_dir, "export_parity.md"), table
    )
    print(table)


if __name__ == "__main__":
    main()
