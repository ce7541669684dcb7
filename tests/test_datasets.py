import hashlib
import json

import pytest

from neurolite_keras import datasets


def test_sib200_splits_and_languages(data_dir):
    data = datasets.load_sib200(data_dir)
    assert (len(data.train), len(data.dev), len(data.test)) == (
        9814,
        1386,
        2856,
    )
    assert len(data.label_names) == 7
    assert set(data.train.labels) == set(data.label_names)
    assert data.test.languages.count("fra_Latn") == 204
    french = datasets.load_sib200(data_dir, languages=["fra_Latn"])
    assert len(french.train) == 701 and set(french.train.languages) == {
        "fra_Latn"
    }
    with pytest.raises(ValueError, match="xxx_Latn"):
        datasets.load_sib200(data_dir, languages=["xxx_Latn"])


def test_banking77_takes_a_stratified_dev_split(data_dir):
    data = datasets.load_banking77(data_dir)
    assert len(data.train) + len(data.dev) == 10003
    assert len(data.test) == 3080 and len(data.label_names) == 77
    assert set(data.dev.labels) == set(data.label_names)
    assert 900 <= len(data.dev) <= 1100


def test_snips_recovers_the_cesu8_emoji(data_dir):
    data = datasets.load_snips(data_dir)
    assert len(data.train) + len(data.dev) == 13784
    assert len(data.test) == 700
    texts = data.train.texts + data.dev.texts
    assert not any(
        0xD800 <= ord(c) <= 0xDFFF for text in texts for c in text
    ), "a lone surrogate survived decoding"
    assert any(ord(c) > 0xFFFF for text in texts for c in text)


def _serve_from(local_root, calls):
    def fetch(url):
        calls.append(url)
        for dataset, prefix in datasets._SOURCES.items():
            if url.startswith(prefix):
                return (local_root / dataset / url[len(prefix) :]).read_bytes()
        raise OSError(f"unexpected url {url}")

    return fetch


def test_download_fallback_verifies_and_caches(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("NEUROLITE_DATA_DIR")
    monkeypatch.setenv("NEUROLITE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(datasets, "_fetch_bytes", _serve_from(data_dir, calls))
    data = datasets.load_banking77()
    assert len(data.test) == 3080
    assert len(calls) == 3
    cached = tmp_path / "cache" / "datasets" / "banking77" / "test.csv"
    assert cached.is_file()
    datasets.load_banking77()
    assert len(calls) == 3, "the cached copy was not reused"


def test_download_with_a_wrong_checksum_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("NEUROLITE_DATA_DIR")
    monkeypatch.setenv("NEUROLITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_fetch_bytes", lambda url: b"tampered")
    with pytest.raises(datasets.DatasetNotFoundError, match="Checksum"):
        datasets.load_banking77()
    assert not list((tmp_path / "cache").rglob("*.csv"))


def test_neither_local_nor_download_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROLITE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("NEUROLITE_CACHE_DIR", str(tmp_path / "cache"))

    def offline(url):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets, "_fetch_bytes", offline)
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load_sib200()
    message = str(info.value)
    assert "NEUROLITE_DATA_DIR" in message and "--data-dir" in message
    assert "network unreachable" in message and "internet" in message
    assert str(tmp_path / "empty") in message


def test_user_files_in_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "train.csv"
    csv_file.write_text('text,label\n"Bonjour, ça va ?",greeting\nbye,bye\n')
    split = datasets.load_text_file(csv_file)
    assert split.texts == ["Bonjour, ça va ?", "bye"]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"phrase": t, "y": 1}) for t in ["a", "b"])
    )
    split = datasets.load_text_file(
        jsonl, text_column="phrase", label_column="y"
    )
    assert split.labels == ["1", "1"]


def test_user_file_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        datasets.load_text_file(tmp_path / "missing.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sentence,category\nhello,x\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'"):
        datasets.load_text_file(wrong)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"text,label\nok,a\nbad \xff\xfe,b\n")
    with pytest.raises(ValueError, match="line 3 is not valid UTF-8"):
        datasets.load_text_file(binary)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: invalid JSON"):
        datasets.load_text_file(broken)
    other = tmp_path / "data.parquet"
    other.write_text("x")
    with pytest.raises(ValueError, match="unknown file type '.parquet'"):
        datasets.load_text_file(other)


def test_checksums_cover_every_downloaded_file():
    sums = datasets._checksums()
    assert all(len(h) == 64 for h in sums.values())
    assert "banking77/train.csv" in sums
    assert hashlib.sha256(b"").hexdigest() not in sums.values()


def test_dev_split_never_takes_a_label_s_only_examples(tmp_path):
    rows = (
        ["text,label"]
        + [f"sport {i},sport" for i in range(12)]
        + [
            "une seule recette,cuisine",
            "deux,pair",
            "trois,pair",
        ]
    )
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    data = datasets.load_text_files(tmp_path / "train.csv")
    assert data.label_names == ["cuisine", "pair", "sport"]
    assert data.train.labels.count("cuisine") == 1
    assert "cuisine" not in data.dev.labels
    # Two examples: one for dev, one kept for training.
    assert data.train.labels.count("pair") == data.dev.labels.count("pair")
    assert data.dev.labels.count("sport") == 1
    assert set(data.dev.labels) <= set(data.label_names)
    assert len(data.train) + len(data.dev) == 15


def test_no_dev_split_from_labels_seen_once(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    with pytest.raises(ValueError, match=r"train.csv: no label has two"):
        datasets.load_text_files(tmp_path / "train.csv")
