"""The `neurolite` command line: train, evaluate, predict and export.

This module is the only place in the package that prints.
"""

import argparse
import json
import math
import os
import signal
import sys
import threading

from neurolite_keras.datasets import DATASET_NAMES

# Exit status of a run stopped with Ctrl-C (128 + SIGINT), as shells use.
INTERRUPTED_EXIT_CODE = 130


def _argument_type(convert, accept, requirement):
    """An argparse `type`: `convert(text)` when `accept` holds for it, else
    an error saying `requirement` and quoting the text."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(
                f"must be {requirement}, got {text!r}"
            )
        return value

    return parse


_positive_int = _argument_type(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _argument_type(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _argument_type(
    float, lambda v: 0 < v < math.inf, "a positive finite number"
)
_weight_decay = _argument_type(
    float, lambda v: 0 <= v <= 1, "a number from 0 to 1"
)


def _add_data_arguments(parser, command):
    """Data options: `--dataset`, or the user's files `command` reads.

    `train` reads `--train-file` with optional `--dev-file` and
    `--test-file`; `export` reads `--train-file` and `--dev-file` (for
    calibration and QAT); `evaluate` reads `--test-file`. `--dataset`
    excludes the files, which it replaces.
    """
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset", choices=DATASET_NAMES, help="a built-in data set"
    )
    if command == "evaluate":
        source.add_argument("--test-file", help="CSV, TSV or JSONL to score on")
    else:
        source.add_argument("--train-file", help="your own CSV, TSV or JSONL")
        group.add_argument(
            "--dev-file",
            help="dev split of your own data "
            "(default: a stratified tenth of --train-file)",
        )
    if command == "train":
        group.add_argument(
            "--test-file",
            help="test split of your own data (default: the dev split)",
        )
    group.add_argument(
        "--data-dir",
        help="folder holding the data sets "
        "(default: $NEUROLITE_DATA_DIR, then a download)",
    )
    group.add_argument("--text-column", default="text")
    group.add_argument("--label-column", default="label")
    group.add_argument(
        "--languages",
        help="SIB-200 languages, comma separated (default: all 14)",
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="neurolite",
        description="Tiny vocabulary-free text classifiers for phones.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a classifier")
    _add_data_arguments(train, "train")
    train.add_argument(
        "--preset", default="tiny", choices=("tiny", "small", "base")
    )
    train.add_argument(
        "--mixer",
        choices=("mlp", "hypermixer", "fnet"),
        help="token mixer (default: the preset's)",
    )
    train.add_argument(
        "--config",
        help="JSON file of NeuroLiteConfig fields that override the preset",
    )
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--batch-size", type=_positive_int, default=64)
    train.add_argument("--learning-rate", type=_positive_float, default=3e-3)
    train.add_argument(
        "--weight-decay",
        type=_weight_decay,
        default=0.01,
        help="AdamW weight decay, 0 to 1 (default: 0.01)",
    )
    train.add_argument("--patience", type=_non_negative_int, default=5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--output",
        required=True,
        help="folder for model.keras and metrics.json",
    )

    evaluate = commands.add_parser("evaluate", help="score a model")
    evaluate.add_argument("model", help="a .keras or .tflite file")
    _add_data_arguments(evaluate, "evaluate")
    evaluate.add_argument("--json", help="write the metrics to this file")

    predict = commands.add_parser("predict", help="classify texts")
    predict.add_argument("model", help="a .keras or .tflite file")
    predict.add_argument("texts", nargs="+", help="texts to classify")
    predict.add_argument(
        "--top-k",
        type=_positive_int,
        default=1,
        help="labels shown per text (at most all of them)",
    )

    export = commands.add_parser("export", help="convert to TFLite")
    export.add_argument("model", help="a .keras classifier")
    export.add_argument(
        "--quantization",
        default="int8",
        choices=("float32", "float16", "dynamic", "int8"),
    )
    export.add_argument(
        "--qat-epochs",
        type=_non_negative_int,
        default=0,
        help="quantization-aware fine-tuning epochs before "
        "an int8 export (0: post-training calibration)",
    )
    export.add_argument(
        "--per-tensor",
        action="store_true",
        help="per-tensor weight scales (Android NNAPI)",
    )
    export.add_argument(
        "--calibration-percentile",
        type=float,
        default=None,
        help="int8 only: share (%%), in [50, 100], of each activation's "
        "calibration values its range spans; 100 keeps min and max "
        "(default 99.99)",
    )
    export.add_argument(
        "--output", help="the .tflite file (default: beside the model)"
    )
    _add_data_arguments(export, "export")

    return parser


def _export(args):
    from neurolite_keras.recipes.export import ExportError
    from neurolite_keras.recipes.export import export_model

    _check_export_options(args)
    train_texts = train_labels = dev_texts = dev_labels = None
    if args.dataset or args.train_file:
        data = _load_data(args, for_training=True)
        train_texts, train_labels = data.train.texts, data.train.labels
        dev_texts, dev_labels = data.dev.texts, data.dev.labels
    elif args.qat_epochs or args.quantization == "int8":
        raise ValueError(
            "int8 export needs real sentences for calibration or QAT: pass "
            "--dataset or --train-file."
        )
    try:
        result = export_model(
            args.model,
            args.output,
            quantization=args.quantization,
            qat_epochs=args.qat_epochs,
            calibration_texts=train_texts,
            train_texts=train_texts,
            train_labels=train_labels,
            validation_texts=dev_texts,
            validation_labels=dev_labels,
            per_channel=not args.per_tensor,
            verbose="auto",
            **(
                {}
                if args.calibration_percentile is None
                else {"calibration_percentile": args.calibration_percentile}
            ),
        )
    except ExportError as error:
        raise ValueError(str(error)) from None
    print(
        f"wrote {result.tflite_path} ({result.size_bytes:,} bytes, "
        f"{result.quantization}) and {result.sidecar_path}"
    )
    if result.parity:
        print(f"parity on the dev split: {json.dumps(result.parity)}")


def _check_export_options(args):
    """Options that do not fit the asked quantization, named as flags."""
    quantization = args.quantization
    if args.qat_epochs and quantization != "int8":
        raise ValueError(
            f"--qat-epochs {args.qat_epochs} prepares an int8 export: add "
            f"--quantization int8, or drop --qat-epochs for "
            f"--quantization {quantization}."
        )
    if args.per_tensor and quantization not in ("int8", "dynamic"):
        raise ValueError(
            "--per-tensor sets int8 weight scales: it applies to "
            f"--quantization int8 or dynamic, not {quantization}."
        )
    percentile = args.calibration_percentile
    if percentile is not None:
        if quantization != "int8":
            raise ValueError(
                "--calibration-percentile sets int8 activation ranges: it "
                f"applies to --quantization int8, not {quantization}."
            )
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(
                "--calibration-percentile must be a number in [50, 100]. "
                f"Received: {percentile}"
            )


def _load_data(args, for_training):
    from neurolite_keras import datasets

    languages = None
    if args.languages:
        languages = [lang.strip() for lang in args.languages.split(",")]
    columns = {
        "text_column": args.text_column,
        "label_column": args.label_column,
    }
    if args.dataset:
        split_files = [
            f"--{name.replace('_', '-')}"
            for name in ("dev_file", "test_file")
            if for_training and getattr(args, name, None)
        ]
        if split_files:
            raise ValueError(
                f"--dataset {args.dataset} brings its own splits: drop "
                f"{' and '.join(split_files)}, or pass --train-file instead "
                "of --dataset."
            )
        if args.dataset == "sib200":
            return datasets.load_sib200(args.data_dir, languages=languages)
        return datasets.load_dataset(args.dataset, args.data_dir)
    if for_training:
        if not args.train_file:
            raise ValueError(f"{args.command} needs --dataset or --train-file.")
        return datasets.load_text_files(
            args.train_file,
            args.dev_file,
            getattr(args, "test_file", None),
            **columns,
        )
    if not args.test_file:
        raise ValueError("evaluate needs --dataset or --test-file.")
    split = datasets.load_text_file(args.test_file, **columns)
    return datasets.TextClassificationData("custom", [], split, split, split)


def load_predictor(path):
    """A `.keras` classifier or a `.tflite` runner, by file extension."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}")
    if path.endswith(".tflite"):
        from neurolite_keras.litert_runner import LiteRTClassifier

        return LiteRTClassifier(path)
    from neurolite_keras.models import load_model

    return load_model(path)


_JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _read_config_file(path):
    """The `NeuroLiteConfig` fields of the JSON object in `path`."""
    with open(path, "rb") as file:
        raw = file.read()
    try:
        overrides = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"--config {path}: invalid JSON at line {error.lineno}, column "
            f"{error.colno}: {error.msg}."
        ) from None
    if not isinstance(overrides, dict):
        kind = _JSON_KINDS.get(type(overrides), type(overrides).__name__)
        raise ValueError(
            f"--config {path}: expected a JSON object of NeuroLiteConfig "
            f'fields, such as {{"hidden_size": 64}}; got a JSON {kind}.'
        )
    return overrides


def _train(args):
    from neurolite_keras.config import NeuroLiteConfig
    from neurolite_keras.recipes.train import check_output_dir
    from neurolite_keras.recipes.train import train_classifier

    # Everything that can be checked is checked before the data are read
    # and long before training ends.
    check_output_dir(args.output, name="--output")
    overrides = _read_config_file(args.config) if args.config else {}
    if args.mixer:
        overrides["mixer_type"] = args.mixer
    try:
        config = NeuroLiteConfig.preset(args.preset, **overrides)
    except ValueError as error:
        if not args.config:
            raise
        raise ValueError(f"--config {args.config}: {error}") from None
    data = _load_data(args, for_training=True)
    _, metrics = train_classifier(
        data,
        config,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        patience=args.patience,
        output_dir=args.output,
        seed=args.seed,
    )
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}  "
        f"({metrics['num_parameters']:,} parameters, "
        f"{metrics['backend']}, {metrics['train_seconds']:.0f} s)"
    )
    for lang, accuracy in metrics.get("per_language", {}).items():
        print(f"  {lang:10s} {accuracy:.4f}")
    print(
        f"wrote {os.path.join(args.output, 'model.keras')} and "
        f"{os.path.join(args.output, 'metrics.json')}"
    )


def _evaluate(args):
    from neurolite_keras import atomic_io
    from neurolite_keras.evaluation import evaluate_predictor

    predictor = load_predictor(args.model)
    data = _load_data(args, for_training=False)
    metrics = evaluate_predictor(predictor, data.test)
    metrics["model"] = args.model
    print(
        f"accuracy {metrics['accuracy']:.4f} on "
        f"{metrics['num_examples']} examples"
    )
    for lang, accuracy in metrics.get("per_language", {}).items():
        print(f"  {lang:10s} {accuracy:.4f}")
    for label, count in metrics["unknown_labels"].items():
        print(
            f"  label {label!r} unknown to the model: {count} example(s) "
            "counted as errors"
        )
    if args.json:
        atomic_io.write_json(args.json, metrics)
        print(f"wrote {args.json}")


def _predict(args):
    predictor = load_predictor(args.model)
    probabilities = predictor.predict_proba(args.texts)
    top_k = min(args.top_k, probabilities.shape[1])
    for text, row in zip(args.texts, probabilities):
        best = row.argsort()[::-1][:top_k]
        labels = "\t".join(
            f"{predictor.label_names[j]}\t{row[j]:.4f}" for j in best
        )
        print(f"{labels}\t{text}")


def _folder_state(path):
    """Names, sizes and modification times of the files in `path`."""
    try:
        with os.scandir(path) as entries:
            return {
                entry.name: (entry.stat().st_size, entry.stat().st_mtime_ns)
                for entry in entries
            }
    except OSError:
        return None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "train": _train,
        "evaluate": _evaluate,
        "predict": _predict,
        "export": _export,
    }
    output_before = None
    if args.command == "train":
        output_before = _folder_state(args.output)
    # SIGTERM stops a command as Ctrl-C does: atomic writers clean up and
    # an export's conversion subprocess is stopped before we exit.
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        handlers[args.command](args)
    except KeyboardInterrupt:
        message = "interrupted"
        if args.command == "train":
            if _folder_state(args.output) == output_before:
                message += f"; nothing was written to {args.output}"
            else:
                message += (
                    f" while writing to {args.output}: its model.keras and "
                    "metrics.json may come from different runs"
                )
        print(f"neurolite {args.command}: {message}", file=sys.stderr)
        if argv is None:
            # Run from the command line, the process ends here: after an
            # interrupt, the interpreter's shutdown can crash in XLA's
            # destructors under JAX (a segfault instead of this exit code),
            # and the atomic writers have already cleaned up.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED_EXIT_CODE)
        return INTERRUPTED_EXIT_CODE
    except (ValueError, OSError) as error:
        print(f"neurolite {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
