import json
import os

import pytest

from neurolite_keras import cli

TINY = {
    "hidden_size": 32, "projection_size": 32, "num_mixer_layers": 1,
    "bloom_filter_size": 512, "max_sequence_length": 32,
    "token_mixing_size": 16, "channel_mixing_size": 64, "num_hashes": 8,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Trains once through the command line on French SIB-200."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "config.json"
    config.write_text(json.dumps(TINY))
    output = folder / "run"
    code = cli.main([
        "train", "--dataset", "sib200", "--languages", "fra_Latn",
        "--epochs", "2", "--config", str(config), "--output", str(output),
    ])
    assert code == 0
    return output


def test_train_writes_model_and_metrics(run):
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test_accuracy", "num_parameters", "backend",
                "train_seconds", "per_language"):
        assert key in metrics
    assert list(metrics["per_language"]) == ["fra_Latn"]
    assert metrics["test_accuracy"] == metrics["per_language"]["fra_Latn"]
    assert (run / "model.keras").is_file()
    assert not [p for p in os.listdir(run) if ".tmp" in p]


def test_evaluate_writes_json(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = cli.main(["evaluate", str(run / "model.keras"), "--dataset",
                     "sib200", "--languages", "fra_Latn", "--json", str(out)])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_examples"] == 204
    assert "accuracy 0." in capsys.readouterr().out


def test_evaluate_own_file_with_an_unseen_label(run, tmp_path, capsys):
    test_file = tmp_path / "test.csv"
    test_file.write_text("text,label\nLe match de rugby,sports\n"
                         "Une recette de crêpes,cuisine\n")
    code = cli.main(["evaluate", str(run / "model.keras"), "--test-file",
                     str(test_file)])
    assert code == 0
    assert "'cuisine' unknown to the model" in capsys.readouterr().out


def test_predict_prints_label_and_probability(run, capsys):
    code = cli.main(["predict", str(run / "model.keras"), "une phrase",
                     "Le football est un sport.", "--top-k", "2"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    fields = lines[1].split("\t")
    assert 0.0 <= float(fields[1]) <= 1.0 and fields[-1].startswith("Le foot")


def test_train_on_own_files(tmp_path):
    rows = ["text,label"] + [f"phrase {i} sur le sport,sport" for i in
                             range(20)] + [f"texte {i} de cuisine,cuisine"
                                           for i in range(20)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    code = cli.main(["train", "--train-file", str(tmp_path / "train.csv"),
                     "--epochs", "1", "--config", str(tmp_path / "config.json"),
                     "--output", str(tmp_path / "out")])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["dataset"] == "custom" and "per_language" not in metrics


def test_errors_are_reported_not_raised(tmp_path, capsys):
    code = cli.main(["predict", str(tmp_path / "missing.keras"), "x"])
    assert code == 2
    assert "missing.keras" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,y\na,b\n")
    code = cli.main(["train", "--train-file", str(bad), "--output",
                     str(tmp_path / "o")])
    assert code == 2
    assert "missing column" in capsys.readouterr().err


def test_failed_run_keeps_previous_files(run, tmp_path):
    before = (run / "metrics.json").read_bytes()
    code = cli.main(["train", "--train-file", str(tmp_path / "nope.csv"),
                     "--output", str(run)])
    assert code == 2
    assert (run / "metrics.json").read_bytes() == before
