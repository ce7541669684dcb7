"""Loaders for SIB-200, Banking77, SNIPS and the user's own labelled files.

Each built-in data set is read from a local folder laid out as its source
publishes it (`<root>/sib200/<lang>/{train,dev,test}.tsv`,
`<root>/banking77/{train,test}.csv`,
`<root>/snips/<Intent>/{train_<Intent>_full,validate_<Intent>}.json`). The
root is the `data_dir` argument, else the `NEUROLITE_DATA_DIR` environment
variable. When the files are not there, they are downloaded once from the
sources' public repositories at a pinned commit, checked against SHA-256
sums shipped with the package, and cached under `NEUROLITE_CACHE_DIR`
(default `~/.cache/neurolite`).
"""

import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import urllib.request

import numpy as np

from neurolite_keras import atomic_io

SIB200_LANGUAGES = (
    "fra_Latn",
    "eng_Latn",
    "deu_Latn",
    "spa_Latn",
    "ita_Latn",
    "por_Latn",
    "nld_Latn",
    "pol_Latn",
    "tur_Latn",
    "rus_Cyrl",
    "arb_Arab",
    "hin_Deva",
    "zho_Hans",
    "jpn_Jpan",
)
SIB200_LABELS = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)
SNIPS_INTENTS = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)
DATASET_NAMES = ("sib200", "banking77", "snips")

_RAW = "https://raw.githubusercontent.com"
_SOURCES = {
    "sib200": (
        f"{_RAW}/dadelani/sib-200/593cea88519930f776c1a4a1980b6a35b39dca57/"
        "data/annotated/"
    ),
    "banking77": (
        f"{_RAW}/PolyAI-LDN/task-specific-datasets/"
        "57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data/"
    ),
    "snips": (
        f"{_RAW}/sonos/nlu-benchmark/b86ac7f1577868c42158d0dec77db50956046696/"
        "2017-06-custom-intent-engines/"
    ),
}
_DEV_FRACTION = 0.1


class DatasetNotFoundError(FileNotFoundError):
    """A data set is neither on disk nor downloadable."""


@dataclasses.dataclass
class TextSplit:
    """Texts with their string labels, and a language tag per text if known."""

    texts: list
    labels: list
    languages: list = None

    def __len__(self):
        return len(self.texts)

    def subset(self, indices):
        indices = list(indices)
        return TextSplit(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            None
            if self.languages is None
            else [self.languages[i] for i in indices],
        )


@dataclasses.dataclass
class TextClassificationData:
    """A labelled data set: label names and train, dev and test splits."""

    name: str
    label_names: list
    train: TextSplit
    dev: TextSplit
    test: TextSplit


def _checksums():
    path = pathlib.Path(__file__).with_name("data_checksums.json")
    return json.loads(path.read_text())


def _fetch_bytes(url):
    """Downloads `url`. Tests replace this function; nothing else calls out."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def cache_dir():
    return pathlib.Path(
        os.environ.get("NEUROLITE_CACHE_DIR")
        or pathlib.Path.home() / ".cache" / "neurolite"
    )


def _download(dataset, relative_paths, root):
    """Downloads the files of `dataset` under `root`, verifying each."""
    sums = _checksums()
    for relative in relative_paths:
        target = root / relative
        if target.exists():
            continue
        source = relative[len(dataset) + 1 :]
        url = _SOURCES[dataset] + source
        data = _fetch_bytes(url)
        digest = hashlib.sha256(data).hexdigest()
        if digest != sums[relative]:
            raise OSError(
                f"Checksum mismatch for {url}: got sha256 {digest}, expected "
                f"{sums[relative]}. The file was not saved."
            )
        atomic_io.write_bytes(target, data)


def _dataset_root(dataset, relative_paths, data_dir=None, download=True):
    """The root folder holding `relative_paths`, downloading if needed."""
    explicit = data_dir or os.environ.get("NEUROLITE_DATA_DIR")
    looked = []
    if explicit:
        root = pathlib.Path(explicit).expanduser()
        looked.append(str(root / dataset))
        if all((root / p).is_file() for p in relative_paths):
            return root
    cached = cache_dir() / "datasets"
    if all((cached / p).is_file() for p in relative_paths):
        return cached
    reason = "downloading is switched off"
    if download:
        try:
            _download(dataset, relative_paths, cached)
            return cached
        except OSError as error:
            reason = f"the download failed ({error})"
    where = ", ".join(looked) if looked else "no local folder given"
    raise DatasetNotFoundError(
        f"Data set {dataset!r} not found ({where}) and {reason}. Either pass "
        f"--data-dir / data_dir=, or set NEUROLITE_DATA_DIR, to a folder "
        f"holding '{dataset}/' laid out as its source publishes it; or "
        f"connect to the internet so it can be downloaded to {cached}."
    )


def _split_dev(split, seed=0, fraction=_DEV_FRACTION):
    """Takes a stratified `fraction` of `split` as a dev set.

    Each label gives at least one example to dev and keeps at least one for
    training: a label with a single example stays in train only (so the
    dev set may lack it, or be empty if every label is that rare).
    """
    rng = np.random.default_rng(seed)
    labels = np.array(split.labels)
    dev = []
    for label in sorted(set(split.labels)):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        size = max(1, int(round(len(members) * fraction)))
        dev.extend(members[: min(size, len(members) - 1)])
    dev_set = set(int(i) for i in dev)
    train = [i for i in range(len(split)) if i not in dev_set]
    return split.subset(train), split.subset(sorted(dev_set))


def load_sib200(data_dir=None, languages=None, download=True):
    """SIB-200 topic classification (7 labels), several languages at once.

    The splits concatenate the chosen languages; `languages` of each split
    tells which language each text is in.

    Args:
        data_dir: folder holding `sib200/`. Defaults to
            `NEUROLITE_DATA_DIR`, then the cache, then a download.
        languages: FLORES codes such as `"fra_Latn"`. Defaults to the 14
            languages of `SIB200_LANGUAGES`.
        download: bool. Allow the download fallback.
    """
    languages = list(languages or SIB200_LANGUAGES)
    unknown = sorted(set(languages) - set(SIB200_LANGUAGES))
    if unknown:
        raise ValueError(
            f"Unknown SIB-200 language(s) {unknown}. "
            f"Available: {list(SIB200_LANGUAGES)}"
        )
    splits = ("train", "dev", "test")
    paths = [f"sib200/{lang}/{s}.tsv" for lang in languages for s in splits]
    root = _dataset_root("sib200", paths, data_dir, download)
    result = {}
    for split in splits:
        texts, labels, langs = [], [], []
        for lang in languages:
            path = root / "sib200" / lang / f"{split}.tsv"
            rows = _read_delimited(path, delimiter="\t", quoting=csv.QUOTE_NONE)
            for line, row in rows:
                if set(row) < {"category", "text"}:
                    raise ValueError(f"{path}:{line}: missing columns: {row}")
                texts.append(row["text"])
                labels.append(row["category"])
                langs.append(lang)
        result[split] = TextSplit(texts, labels, langs)
    return TextClassificationData(
        "sib200",
        list(SIB200_LABELS),
        result["train"],
        result["dev"],
        result["test"],
    )


def load_banking77(data_dir=None, download=True, seed=0):
    """Banking77 intent classification (77 labels, English).

    The source has no dev split: a stratified tenth of train is held out.
    """
    paths = [
        f"banking77/{name}"
        for name in ("train.csv", "test.csv", "categories.json")
    ]
    root = _dataset_root("banking77", paths, data_dir, download)
    folder = root / "banking77"
    label_names = json.loads((folder / "categories.json").read_text("utf-8"))
    splits = {}
    for split in ("train", "test"):
        rows = _read_delimited(folder / f"{split}.csv", delimiter=",")
        splits[split] = TextSplit(
            [row["text"] for _, row in rows],
            [row["category"] for _, row in rows],
        )
    train, dev = _split_dev(splits["train"], seed)
    return TextClassificationData(
        "banking77", list(label_names), train, dev, splits["test"]
    )


def _read_snips_file(path):
    raw = path.read_bytes()
    # One emoji in PlayMusic is stored as a CESU-8 surrogate pair; decoding
    # with surrogatepass and pairing through UTF-16 recovers it.
    text = raw.decode("utf-8", errors="surrogatepass")
    text = text.encode("utf-16", errors="surrogatepass").decode("utf-16")
    data = json.loads(text)
    (utterances,) = data.values()
    return ["".join(chunk["text"] for chunk in u["data"]) for u in utterances]


def load_snips(data_dir=None, download=True, seed=0):
    """SNIPS intent classification (7 intents, English).

    Test is the usual `validate_<Intent>.json` files; a stratified tenth of
    train is held out as dev.
    """
    paths = []
    for intent in SNIPS_INTENTS:
        paths.append(f"snips/{intent}/train_{intent}_full.json")
        paths.append(f"snips/{intent}/validate_{intent}.json")
    root = _dataset_root("snips", paths, data_dir, download)
    splits = {"train": ([], []), "test": ([], [])}
    for intent in SNIPS_INTENTS:
        folder = root / "snips" / intent
        for split, name in (
            ("train", f"train_{intent}_full.json"),
            ("test", f"validate_{intent}.json"),
        ):
            texts = _read_snips_file(folder / name)
            splits[split][0].extend(texts)
            splits[split][1].extend([intent] * len(texts))
    train, dev = _split_dev(TextSplit(*splits["train"]), seed)
    return TextClassificationData(
        "snips", list(SNIPS_INTENTS), train, dev, TextSplit(*splits["test"])
    )


def load_dataset(name, data_dir=None, download=True):
    """Loads a built-in data set by name: `sib200`, `banking77` or `snips`."""
    loaders = {
        "sib200": load_sib200,
        "banking77": load_banking77,
        "snips": load_snips,
    }
    if name not in loaders:
        raise ValueError(
            f"Unknown data set {name!r}. Available: {sorted(loaders)}"
        )
    return loaders[name](data_dir=data_dir, download=download)


def _decode(path, raw):
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} is not valid UTF-8 "
            f"(byte {raw[error.start : error.start + 1]!r} at offset "
            f"{error.start})."
        ) from None


def _read_delimited(path, delimiter, quoting=csv.QUOTE_MINIMAL):
    """Rows of a CSV/TSV file as (line number, dict) pairs."""
    path = pathlib.Path(path)
    text = _decode(path, path.read_bytes())
    reader = csv.DictReader(
        io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting
    )
    rows = []
    for row in reader:
        if None in row:
            raise ValueError(
                f"{path}:{reader.line_num}: more fields than the header "
                f"{reader.fieldnames}."
            )
        rows.append((reader.line_num, row))
    return rows


def load_text_file(path, text_column="text", label_column="label"):
    """Reads a labelled file of the user's: CSV, TSV or JSON Lines.

    The format follows the extension (`.csv`, `.tsv`, `.jsonl`/`.ndjson`).
    Every row needs `text_column` and `label_column`; labels are read as
    strings. An empty text is kept (a model predicts it from its biases).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension, undecodable bytes, missing columns,
            or a bad row; the message names the file and the line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
        if not rows:
            raise ValueError(f"{path}: no rows after the header.")
        header = list(rows[0][1])
    elif suffix in (".jsonl", ".ndjson"):
        text = _decode(path, path.read_bytes())
        rows, header = [], None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: invalid JSON ({error.msg})."
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{number}: expected a JSON object, got "
                    f"{type(row).__name__}."
                )
            rows.append((number, row))
            header = header or list(row)
        if not rows:
            raise ValueError(f"{path}: no records.")
    else:
        raise ValueError(
            f"{path}: unknown file type {suffix!r}; expected .csv, .tsv, "
            ".jsonl or .ndjson."
        )
    texts, labels = [], []
    for number, row in rows:
        missing = [c for c in (text_column, label_column) if c not in row]
        if missing:
            raise ValueError(
                f"{path}:{number}: missing column(s) {missing}; the file "
                f"has {sorted(row)}. Choose columns with --text-column and "
                "--label-column."
            )
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str):
            raise ValueError(
                f"{path}:{number}: {text_column!r} must be a string, got "
                f"{text!r:.60}."
            )
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ValueError(f"{path}:{number}: empty {label_column!r}.")
        texts.append(text)
        labels.append(str(label))
    return TextSplit(texts, labels)


def load_text_files(train_file, dev_file=None, test_file=None, **columns):
    """Builds a data set from the user's files (see `load_text_file`).

    Without a dev file a stratified tenth of train is used (a label with a
    single example stays in train); without a test file the dev split
    doubles as test. Label names are sorted.

    Raises:
        ValueError: besides `load_text_file`'s errors, no dev file and no
            label with two examples or more to hold one out.
    """
    train = load_text_file(train_file, **columns)
    if dev_file:
        dev = load_text_file(dev_file, **columns)
    else:
        train, dev = _split_dev(train)
        if not len(dev):
            raise ValueError(
                f"{train_file}: no label has two examples or more, so no "
                "dev split can be held out of it; give a dev file "
                "(--dev-file)."
            )
    test = load_text_file(test_file, **columns) if test_file else dev
    label_names = sorted(set(train.labels))
    return TextClassificationData("custom", label_names, train, dev, test)
