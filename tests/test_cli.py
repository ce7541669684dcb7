import json
import os
import signal
import subprocess
import sys
import time

import pytest

from neurolite_keras import cli

TINY = {
    "hidden_size": 32,
    "projection_size": 32,
    "num_mixer_layers": 1,
    "bloom_filter_size": 512,
    "max_sequence_length": 32,
    "token_mixing_size": 16,
    "channel_mixing_size": 64,
    "num_hashes": 8,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Trains once through the command line on French SIB-200."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "config.json"
    config.write_text(json.dumps(TINY))
    output = folder / "run"
    code = cli.main(
        [
            "train",
            "--dataset",
            "sib200",
            "--languages",
            "fra_Latn",
            "--epochs",
            "2",
            "--config",
            str(config),
            "--output",
            str(output),
        ]
    )
    assert code == 0
    return output


def test_train_writes_model_and_metrics(run):
    metrics = json.loads((run / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "num_parameters",
        "backend",
        "train_seconds",
        "per_language",
    ):
        assert key in metrics
    assert list(metrics["per_language"]) == ["fra_Latn"]
    assert metrics["test_accuracy"] == metrics["per_language"]["fra_Latn"]
    # What reproduces the run beside the config: the recipe's settings.
    assert metrics["seed"] == 0 and metrics["weight_decay"] == 0.01
    assert metrics["learning_rate"] == 3e-3
    assert (run / "model.keras").is_file()
    assert not [p for p in os.listdir(run) if ".tmp" in p]


def test_evaluate_writes_json(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = cli.main(
        [
            "evaluate",
            str(run / "model.keras"),
            "--dataset",
            "sib200",
            "--languages",
            "fra_Latn",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_examples"] == 204
    assert "accuracy 0." in capsys.readouterr().out


def test_evaluate_own_file_with_an_unseen_label(run, tmp_path, capsys):
    test_file = tmp_path / "test.csv"
    test_file.write_text(
        "text,label\nLe match de rugby,sports\nUne recette de crêpes,cuisine\n"
    )
    code = cli.main(
        ["evaluate", str(run / "model.keras"), "--test-file", str(test_file)]
    )
    assert code == 0
    assert "'cuisine' unknown to the model" in capsys.readouterr().out


def test_predict_prints_label_and_probability(run, capsys):
    code = cli.main(
        [
            "predict",
            str(run / "model.keras"),
            "une phrase",
            "Le football est un sport.",
            "--top-k",
            "2",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    fields = lines[1].split("\t")
    assert 0.0 <= float(fields[1]) <= 1.0 and fields[-1].startswith("Le foot")


def test_export_int8_then_predict_and_evaluate_the_tflite(
    run, tmp_path, capsys
):
    import keras

    model = str(run / "model.keras")
    data = ["--dataset", "sib200", "--languages", "fra_Latn"]
    for bad in ("120", "nan", "-1"):
        code = cli.main(
            ["export", model, *data, "--calibration-percentile", bad]
        )
        assert code == 2
        err = capsys.readouterr().err
        assert "--calibration-percentile must be a number in [50, 100]" in err
    # Options that do not fit the quantization are named as flags, before
    # any data is read.
    for options, message in (
        (["--qat-epochs", "1", "--quantization", "float16"], "--qat-epochs 1"),
        (["--per-tensor", "--quantization", "float32"], "--per-tensor"),
        (
            ["--calibration-percentile", "99", "--quantization", "dynamic"],
            "applies to --quantization int8, not dynamic",
        ),
    ):
        assert cli.main(["export", model, *options]) == 2
        assert message in capsys.readouterr().err
    if keras.backend.backend() != "tensorflow":
        pytest.skip("one conversion is enough: it runs on TensorFlow")
    out = tmp_path / "model.tflite"
    code = cli.main(
        [
            "export",
            model,
            *data,
            "--quantization",
            "int8",
            "--calibration-percentile",
            "99.9",
            "--output",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "model.tflite.json").read_text())
    assert sidecar["quantization"]["calibration_percentile"] == 99.9
    capsys.readouterr()
    assert cli.main(["predict", str(out), "Le football est un sport."]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.split("\t")[0] in sidecar["label_names"]
    report = tmp_path / "eval.json"
    code = cli.main(["evaluate", str(out), *data, "--json", str(report)])
    assert code == 0
    assert 0.0 <= json.loads(report.read_text())["accuracy"] <= 1.0


def _write_csv(path, rows):
    path.write_text("\n".join(["text,label"] + rows) + "\n")
    return str(path)


def _own_files(folder, size=20):
    """Train, dev and test CSV files of a two-label toy task."""
    files = {}
    for name, count in (("train", size), ("dev", 4), ("test", 6)):
        rows = [f"phrase {i} sur le sport,sport" for i in range(count)] + [
            f"texte {i} de cuisine,cuisine" for i in range(count)
        ]
        files[name] = _write_csv(folder / f"{name}.csv", rows)
    (folder / "config.json").write_text(json.dumps(TINY))
    files["config"] = str(folder / "config.json")
    return files


def test_train_on_own_train_dev_and_test_files(tmp_path):
    files = _own_files(tmp_path)
    code = cli.main(
        [
            "train",
            "--train-file",
            files["train"],
            "--dev-file",
            files["dev"],
            "--test-file",
            files["test"],
            "--epochs",
            "1",
            "--config",
            files["config"],
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["dataset"] == "custom" and "per_language" not in metrics
    assert metrics["num_train_examples"] == 40
    assert metrics["num_test_examples"] == 12


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--dataset", "sib200", "--train-file", "t.csv"],
            "not allowed with argument",
        ),
        (
            [
                "evaluate",
                "m.keras",
                "--dataset",
                "sib200",
                "--test-file",
                "t.csv",
            ],
            "not allowed with argument",
        ),
        (
            ["evaluate", "m.keras", "--train-file", "t.csv"],
            "unrecognized arguments: --train-file",
        ),
        (
            ["train", "--learning-rate", "nan"],
            "--learning-rate: must be a positive finite number, got 'nan'",
        ),
        (["train", "--learning-rate", "-1"], "got '-1'"),
        (["train", "--learning-rate", "inf"], "got 'inf'"),
        (
            ["train", "--weight-decay", "-0.1"],
            "--weight-decay: must be a number from 0 to 1, got '-0.1'",
        ),
        (["train", "--weight-decay", "nan"], "got 'nan'"),
        (["train", "--epochs", "0"], "--epochs: must be a positive integer"),
        (["train", "--patience", "-1"], "--patience: must be an integer >= 0"),
        (
            ["predict", "m.keras", "hi", "--top-k", "0"],
            "--top-k: must be a positive integer, got '0'",
        ),
        (["predict", "m.keras", "hi", "--top-k", "-5"], "got '-5'"),
    ],
)
def test_bad_options_are_rejected_by_the_parser(
    argv, message, tmp_path, capsys
):
    if argv[0] == "train":
        argv = argv + ["--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dataset_brings_its_own_splits(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--dataset",
            "sib200",
            "--test-file",
            "t.csv",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "--dataset sib200 brings its own splits: drop --test-file" in (
        capsys.readouterr().err
    )


def test_train_refuses_bad_values_before_training(
    tmp_path, monkeypatch, capsys
):
    from neurolite_keras.recipes import train

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "train_classifier", no_training)
    files = _own_files(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text('{"hidden_size": 16,,}')
    (tmp_path / "unknown.json").write_text('{"hiden_size": 16}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.keras").mkdir()
    cases = [
        (
            ["--output", files["train"]],
            f"`--output` must be a folder, or a path that does not exist yet; "
            f"it is a file. Received: --output={files['train']!r}",
        ),
        (
            ["--output", str(tmp_path / "train.csv" / "run")],
            f"{files['train']!r} is a file, not a folder",
        ),
        (["--output", str(tmp_path / "sub")], "holds 'model.keras'"),
        (
            ["--config", str(tmp_path / "list.json")],
            "list.json: expected a JSON object of NeuroLiteConfig fields",
        ),
        (
            ["--config", str(tmp_path / "broken.json")],
            "broken.json: invalid JSON at line 1, column 20",
        ),
        (
            ["--config", str(tmp_path / "unknown.json")],
            "unknown.json: Unknown NeuroLiteConfig field(s): ['hiden_size']",
        ),
    ]
    for extra, message in cases:
        argv = [
            "train",
            "--train-file",
            files["train"],
            "--output",
            str(tmp_path / "out"),
        ] + extra
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_classifier_checks_its_arguments(tmp_path):
    from neurolite_keras.config import NeuroLiteConfig
    from neurolite_keras.datasets import load_text_files
    from neurolite_keras.recipes.train import train_classifier

    files = _own_files(tmp_path)
    data = load_text_files(files["train"], files["dev"])
    config = NeuroLiteConfig(**TINY)
    for value in (float("nan"), -1.0, 0, float("inf"), "0.1"):
        with pytest.raises(ValueError, match="`learning_rate` must be"):
            train_classifier(data, config, learning_rate=value)
    with pytest.raises(ValueError, match="`patience` must be"):
        train_classifier(data, config, patience=-1)
    for value in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=f"weight_decay={value!r}"):
            train_classifier(data, config, weight_decay=value)
    with pytest.raises(ValueError, match="`output_dir` must be a folder"):
        train_classifier(data, config, output_dir=files["train"])


def test_diverged_training_raises_and_keeps_previous_files(
    tmp_path, monkeypatch, capsys
):
    import keras

    from neurolite_keras.recipes import train

    # A NaN learning rate gets past no check now, so the optimizer is
    # swapped for one that ruins the weights at the first step.
    monkeypatch.setattr(
        train,
        "make_optimizer",
        lambda *args, **kwargs: keras.optimizers.SGD(float("nan")),
    )
    files = _own_files(tmp_path, size=8)
    output = tmp_path / "out"
    output.mkdir()
    (output / "metrics.json").write_text('{"previous": true}\n')
    code = cli.main(
        [
            "train",
            "--train-file",
            files["train"],
            "--dev-file",
            files["dev"],
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--config",
            files["config"],
            "--output",
            str(output),
        ]
    )
    assert code == 2
    assert "Training diverged" in capsys.readouterr().err
    assert sorted(os.listdir(output)) == ["metrics.json"]
    assert (output / "metrics.json").read_text() == '{"previous": true}\n'


def test_ctrl_c_says_what_was_written(tmp_path, monkeypatch, capsys):
    from neurolite_keras.recipes import train

    files = _own_files(tmp_path)
    output = tmp_path / "out"
    output.mkdir()
    (output / "metrics.json").write_text("{}\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def interrupted_while_saving(*args, output_dir, **kwargs):
        (output / "model.keras").write_text("new")
        raise KeyboardInterrupt

    argv = ["train", "--train-file", files["train"], "--output", str(output)]
    monkeypatch.setattr(train, "train_classifier", interrupted)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert (
        f"neurolite train: interrupted; nothing was written to {output}" in err
    )
    monkeypatch.setattr(train, "train_classifier", interrupted_while_saving)
    assert cli.main(argv) == 130
    assert f"interrupted while writing to {output}" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130(tmp_path):
    files = _own_files(tmp_path, size=200)
    output = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neurolite_keras.cli",
            "train",
            "--train-file",
            files["train"],
            "--epochs",
            "500",
            "--batch-size",
            "4",
            "--config",
            files["config"],
            "--output",
            str(output),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    # Keras prints "Epoch 1/500" once training has begun.
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "Epoch 1/" in line or not line:
            break
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    assert f"interrupted; nothing was written to {output}" in err
    assert "Traceback" not in err and not output.exists()


def test_errors_are_reported_not_raised(tmp_path, capsys):
    code = cli.main(["predict", str(tmp_path / "missing.keras"), "x"])
    assert code == 2
    assert "missing.keras" in capsys.readouterr().err
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(b"PK\x03\x04 cut short")
    assert cli.main(["predict", str(truncated), "hi"]) == 2
    err = capsys.readouterr().err
    assert f"{str(truncated)!r} exists but is not a readable .keras" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,y\na,b\n")
    code = cli.main(
        ["train", "--train-file", str(bad), "--output", str(tmp_path / "o")]
    )
    assert code == 2
    assert "missing column" in capsys.readouterr().err


def test_failed_run_keeps_previous_files(run, tmp_path):
    before = (run / "metrics.json").read_bytes()
    code = cli.main(
        [
            "train",
            "--train-file",
            str(tmp_path / "nope.csv"),
            "--output",
            str(run),
        ]
    )
    assert code == 2
    assert (run / "metrics.json").read_bytes() == before
