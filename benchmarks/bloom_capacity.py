"""How much the counting Bloom filter lets a classifier tell apart.

Run (about two minutes on one CPU core; no Keras model is trained):

    python benchmarks/bloom_capacity.py --data-dir ../shared/data \\
        --output-dir benchmarks/results/bloom_capacity

For each featurizer setting, every SIB-200 sentence becomes the bag of its
tokens' Bloom filter indices (a `bloom_filter_size`-long count vector, the
vector the hashing projection multiplies without building it). A linear
SVM on those bags (sublinear TF-IDF weighting, scikit-learn) is trained on
the 14 languages' training sentences and scored on their test sentences
(mean of the 14 per-language accuracies, as in `sib200_accuracy.py`).

The figure is a probe of the input, not of NeuroLite: a model that only
adds up its tokens' projection rows sees no more than this bag, so when
the bag's linear accuracy is low, the projection (not the mixer) is what
limits the model. Writes `bloom_capacity.json` and `.md` atomically.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from neurolite_keras import atomic_io
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.datasets import load_sib200
from neurolite_keras.featurizer import TextFeaturizer

DEFAULT_SETTINGS = (
    {"bloom_filter_size": 4096},
    {"bloom_filter_size": 8192},
    {"bloom_filter_size": 16384},
    {"bloom_filter_size": 32768},
    {"bloom_filter_size": 65536},
    {"bloom_filter_size": 16384, "num_hashes": 8},
    {"bloom_filter_size": 16384, "ngram_min": 3, "ngram_max": 5},
    {"bloom_filter_size": 65536, "minhash_scheme": "bottom_k"},
    {
        "bloom_filter_size": 65536,
        "minhash_scheme": "bottom_k",
        "num_hashes": 24,
        "ngram_min": 3,
        "ngram_max": 5,
    },
    {
        "bloom_filter_size": 65536,
        "minhash_scheme": "bottom_k",
        "num_hashes": 32,
        "ngram_min": 1,
        "ngram_max": 5,
    },
)


def bloom_bags(featurizer, texts):
    """Sparse `(len(texts), bloom_filter_size)` counts of Bloom indices."""
    import scipy.sparse

    features = featurizer(texts)
    indices = features["hash_indices"]
    # Real tokens' filled slots (bottom-k MinHash leaves -1 in the others).
    keep = features["padding_mask"].astype(bool)[..., None] & (indices >= 0)
    rows = np.broadcast_to(np.arange(len(texts))[:, None, None], indices.shape)
    rows, columns = rows[keep], indices[keep]
    bags = scipy.sparse.csr_matrix(
        (np.ones(columns.size), (rows.ravel(), columns.ravel())),
        shape=(len(texts), featurizer.bloom_filter_size),
    )
    bags.sum_duplicates()
    return bags


def linear_probe(data, settings, C=0.5):
    """Mean per-language test accuracy of a linear SVM on Bloom bags."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.svm import LinearSVC

    config = NeuroLiteConfig(**settings)
    featurizer = TextFeaturizer.from_config(config)
    start = time.perf_counter()
    train = bloom_bags(featurizer, data.train.texts)
    test = bloom_bags(featurizer, data.test.texts)
    weighting = TfidfTransformer(sublinear_tf=True).fit(train)
    classifier = LinearSVC(C=C).fit(
        weighting.transform(train), data.train.labels
    )
    predicted = classifier.predict(weighting.transform(test))
    correct = predicted == np.asarray(data.test.labels)
    languages = np.asarray(data.test.languages)
    per_language = {
        language: float(correct[languages == language].mean())
        for language in dict.fromkeys(data.test.languages)
    }
    return {
        "settings": settings,
        "featurizer": featurizer.get_config(),
        "test_accuracy": float(np.mean(list(per_language.values()))),
        "french": per_language.get("fra_Latn"),
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(results):
    lines = [
        "Linear SVM on the bag of each sentence's Bloom filter indices "
        "(SIB-200 test, mean of 14 languages; a probe of what the hashing "
        "input keeps, not a NeuroLite result):",
        "",
        "| featurizer setting | MinHash | buckets | values per token "
        "| n-grams | test accuracy | French |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        f = row["featurizer"]
        changed = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        lines.append(
            f"| {changed} | {f.get('minhash_scheme', 'k_functions')} "
            f"| {f['bloom_filter_size']:,} | {f['num_hashes']} "
            f"| {f['ngram_min']}-{f['ngram_max']} "
            f"| {row['test_accuracy']:.3f} | {row['french']:.3f} |"
        )
    lines += ["", f"Command: `{results['command']}`.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output-dir", default=None)
    parser.add_argument(
        "--settings",
        default=None,
        help="JSON list of featurizer overrides (default: the module's list)",
    )
    args = parser.parse_args(argv)
    settings = DEFAULT_SETTINGS
    if args.settings:
        settings = json.loads(args.settings)
        if not isinstance(settings, list) or not all(
            isinstance(s, dict) for s in settings
        ):
            parser.error(
                "--settings must be a JSON list of objects. "
                f"Received: {args.settings!r}"
            )
    data = load_sib200(args.data_dir)
    results = {
        "command": "python benchmarks/bloom_capacity.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": [],
    }
    for setting in settings:
        row = linear_probe(data, dict(setting))
        results["rows"].append(row)
        print(
            json.dumps(row["settings"]),
            f"test {row['test_accuracy']:.4f}",
            f"French {row['french']:.4f}",
            f"({row['seconds']} s)",
            flush=True,
        )
    table = markdown(results)
    print(table)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, "bloom_capacity.json")
        atomic_io.write_json(path, results)
        atomic_io.write_text(path[:-5] + ".md", table)


if __name__ == "__main__":
    main()
