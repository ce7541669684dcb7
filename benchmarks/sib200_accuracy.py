"""SIB-200 topic accuracy of NeuroLite presets against two common baselines.

Run (about an hour on two CPU cores for the three presets):

    KERAS_BACKEND=tensorflow python benchmarks/sib200_accuracy.py \
        --data-dir ../shared/data --output-dir benchmarks/results/sib200

In one run, on the 14 languages' test sets (mean over languages and
French): TF-IDF over character and word n-grams with a linear SVM
(scikit-learn), a fastText-style model (mean of hashed word and character
n-gram embeddings, then a linear softmax), and NeuroLite presets trained by
the same recipe as `neurolite train`. Also measures featurizer throughput
on one core and seconds per training epoch on each requested backend.
Writes `sib200_accuracy.json` and `.md` to the output folder.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from neurolite_keras import atomic_io
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.datasets import load_sib200
from neurolite_keras.featurizer import TextFeaturizer


def per_language_accuracy(predicted, split):
    predicted = np.asarray(predicted)
    truth = np.asarray(split.labels)
    languages = np.asarray(split.languages)
    result = {
        lang: float(
            np.mean(predicted[languages == lang] == truth[languages == lang])
        )
        for lang in dict.fromkeys(split.languages)
    }
    return {
        "test_accuracy": float(np.mean(list(result.values()))),
        "french": result.get("fra_Latn"),
        "per_language": result,
    }


def tfidf_svm(data):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.pipeline import make_union
    from sklearn.svm import LinearSVC

    features = make_union(
        TfidfVectorizer(
            analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=2
        ),
        TfidfVectorizer(
            analyzer="word",
            ngram_range=(1, 2),
            sublinear_tf=True,
            token_pattern=r"(?u)\b\w+\b",
        ),
    )
    model = make_pipeline(features, LinearSVC(C=0.5))
    start = time.perf_counter()
    model.fit(data.train.texts, data.train.labels)
    seconds = time.perf_counter() - start
    result = per_language_accuracy(model.predict(data.test.texts), data.test)
    result["train_seconds"] = round(seconds, 1)
    return result


def fasttext_style(data, epochs=15, buckets=1 << 17, dim=32, seed=0):
    """Mean of hashed word/bigram/char n-gram embeddings, then a softmax."""
    import keras
    import mmh3

    from neurolite_keras.tokenizer import tokenize

    def grams(text):
        words = tokenize(text)
        out = list(words) + [f"{a} {b}" for a, b in zip(words, words[1:])]
        for word in words:
            wrapped = f"<{word}>"
            out += [wrapped[i : i + 3] for i in range(len(wrapped) - 2)]
        return out

    def encode(texts, length=256):
        ids = np.zeros((len(texts), length), "int32")
        for row, text in enumerate(texts):
            hashed = [
                1 + mmh3.hash(g, 7, signed=False) % (buckets - 1)
                for g in grams(text)
            ][:length]
            ids[row, : len(hashed)] = hashed
        return ids

    labels = sorted(set(data.train.labels))
    index = {name: i for i, name in enumerate(labels)}
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(buckets, dim, mask_zero=True)(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(len(labels))(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    y = np.array([index[label] for label in data.train.labels])
    y_dev = np.array([index[label] for label in data.dev.labels])
    start = time.perf_counter()
    model.fit(
        encode(data.train.texts),
        y,
        batch_size=64,
        epochs=epochs,
        validation_data=(encode(data.dev.texts), y_dev),
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(
                "val_accuracy",
                patience=5,
                mode="max",
                restore_best_weights=True,
            )
        ],
    )
    seconds = time.perf_counter() - start
    predicted = np.argmax(
        model.predict(encode(data.test.texts), verbose=0), axis=1
    )
    result = per_language_accuracy([labels[i] for i in predicted], data.test)
    result["train_seconds"] = round(seconds, 1)
    return result


def neurolite(data, preset, epochs, batch_size, mixer=None, overrides=None):
    from neurolite_keras.recipes.train import train_classifier

    config = NeuroLiteConfig.preset(preset, **(overrides or {}))
    if mixer:
        config.mixer_type = mixer
    _, metrics = train_classifier(
        data,
        config,
        epochs=epochs,
        batch_size=batch_size,
        verbose=2,
    )
    return summarize_run(metrics)


def summarize_run(metrics):
    """The figures of a `train_classifier` / `neurolite train` run."""
    return {
        "test_accuracy": metrics["test_accuracy"],
        "french": metrics["per_language"]["fra_Latn"],
        "per_language": metrics["per_language"],
        "train_seconds": metrics["train_seconds"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "num_parameters": metrics["num_parameters"],
        "backend": metrics["backend"],
        "mixer": metrics["config"]["mixer_type"],
    }


def model_name(preset, mixer, config=None, seed=0):
    """`NeuroLite-tiny (mlp, 65,536 x 8 Bloom, mean+max pooling)`: the row
    name, ending with `, seed N` for a run of another seed than 0.

    The projection's shape and the pooling are part of the name because
    the presets changed them (tiny was 4,096 x 128, then 16,384 x 32, with
    mean pooling), so rows of runs made with different presets stay apart.
    """
    if config is None:
        config = NeuroLiteConfig.preset(preset).get_config()
    mixer = mixer or config["mixer_type"]
    # Runs saved before `pooling` was a field were mean-pooled.
    pooling = config.get("pooling", "mean").replace("_", "+")
    # And before `minhash_scheme` was, with the k-functions scheme.
    scheme = ""
    if config.get("minhash_scheme", "k_functions") == "bottom_k":
        scheme = (
            f", bottom-k MinHash {config['num_hashes']} x "
            f"{config['ngram_min']}-{config['ngram_max']}-grams"
        )
    seed = f", seed {seed}" if seed else ""
    return (
        f"NeuroLite-{preset} ({mixer}, {config['bloom_filter_size']:,} x "
        f"{config['projection_size']} Bloom{scheme}, {pooling} pooling{seed})"
    )


def preset_of(config):
    """The preset whose mixer sizes `config` (a dict) has, or `"custom"`.

    The projection is left out: `benchmarks/configs/sib200_*.json` change
    it, and the row name shows it.
    """
    sizes = ("hidden_size", "num_mixer_layers", "channel_mixing_size")
    for preset in ("tiny", "small", "base"):
        reference = NeuroLiteConfig.preset(preset).get_config()
        if all(config[k] == reference[k] for k in sizes):
            return preset
    return "custom"


def featurizer_throughput(texts, repeats=3):
    """Sentences per second on one core: cold cache, then warm cache."""
    cold, warm = [], []
    for _ in range(repeats):
        featurizer = TextFeaturizer.from_config(NeuroLiteConfig.tiny())
        start = time.perf_counter()
        featurizer(texts)
        cold.append(len(texts) / (time.perf_counter() - start))
        start = time.perf_counter()
        featurizer(texts)
        warm.append(len(texts) / (time.perf_counter() - start))
    return {
        "cold_cache": round(statistics.median(cold)),
        "warm_cache": round(statistics.median(warm)),
    }


# Times `steps` training steps of the tiny preset after one untimed pass
# (which compiles), then scales the median step to a full epoch.
_EPOCH_SCRIPT = """
import json, statistics, sys, time
import keras
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.datasets import load_sib200
from neurolite_keras.models import NeuroLiteForClassification
data = load_sib200(sys.argv[1])
steps, batch = int(sys.argv[2]), 64
texts = data.train.texts[: steps * batch]
labels = data.train.labels[: steps * batch]
model = NeuroLiteForClassification(NeuroLiteConfig.tiny(),
                                   label_names=data.label_names)
model.compile()
start = time.perf_counter()
model.fit(texts[:batch], labels[:batch], batch_size=batch, verbose=0)
compile_seconds = time.perf_counter() - start
class Steps(keras.callbacks.Callback):
    times = []
    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)
model.fit(texts, labels, batch_size=batch, verbose=0, callbacks=[Steps()])
step = statistics.median(Steps.times)
epoch_steps = -(-len(data.train) // batch)
print(json.dumps({"median_step_seconds": step, "timed_steps": steps,
                  "epoch_seconds": step * epoch_steps,
                  "first_step_seconds": compile_seconds}))
"""


def epoch_seconds(backend, data_dir, steps=30):
    """Seconds per tiny training epoch under `backend`, in a subprocess:
    the median of `steps` timed steps (after a compiling one) times the
    number of steps in an epoch."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", _EPOCH_SCRIPT, data_dir, str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(results):
    rows = [
        "| model | parameters | languages | SIB-200 test mean | French | "
        "train seconds | epochs (best) | backend |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results["models"].items():
        params = r.get("num_parameters")
        epochs = (
            f"{r['epochs_run']} ({r['best_epoch']})"
            if "epochs_run" in r
            else "-"
        )
        rows.append(
            f"| {name} | {f'{params:,}' if params else '-'} | "
            f"{len(r.get('per_language', {})) or '-'} | "
            f"{r['test_accuracy']:.3f} | {r['french']:.3f} | "
            f"{r['train_seconds']:.0f} | {epochs} | "
            f"{r.get('backend', '-')} |"
        )
    lines = rows + [""]
    if results.get("command"):
        lines.append(f"Command: `python {results['command']}`.")
        lines.append("")
    throughput = results.get("featurizer_sentences_per_second")
    if throughput:
        lines.append(
            f"Featurizer, one core: {throughput['cold_cache']:,} sentences/s "
            f"(cold cache), {throughput['warm_cache']:,} sentences/s (warm)."
        )
    for backend, timing in results.get("epoch_seconds", {}).items():
        if "error" in timing:
            lines.append(f"- {backend}: failed ({timing['error']})")
        else:
            lines.append(
                f"- tiny, one SIB-200 epoch (9,814 sentences, batch 64) on "
                f"{backend}: {timing['epoch_seconds']:.0f} s (median step "
                f"{timing['median_step_seconds'] * 1000:.0f} ms over "
                f"{timing['timed_steps']} steps; first, compiling step "
                f"{timing['first_step_seconds']:.1f} s)"
            )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=os.environ.get("NEUROLITE_DATA_DIR")
    )
    parser.add_argument("--output-dir", default="benchmarks/results/sib200")
    parser.add_argument(
        "--models",
        default="tiny,small,base",
        help="presets to train, each optionally with a mixer: "
        "tiny,tiny:hypermixer,tiny:fnet,small,base",
    )
    parser.add_argument(
        "--from-runs",
        default="",
        help="folders written by `neurolite train --dataset sib200`, "
        "comma separated, whose metrics.json to report instead of training "
        "again (preset and mixer are read from the run's config)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="JSON file of NeuroLiteConfig fields that override each preset "
        "(as `neurolite train --config`)",
    )
    parser.add_argument(
        "--languages",
        default=None,
        help="comma-separated SIB-200 languages (default: all 14)",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baselines", default="tfidf_svm,fasttext")
    parser.add_argument(
        "--epoch-timing-backends", default="", help="e.g. tensorflow,jax,torch"
    )
    args = parser.parse_args()

    overrides = {}
    if args.config:
        with open(args.config, encoding="utf-8") as file:
            overrides = json.load(file)
        if not isinstance(overrides, dict):
            parser.error(f"{args.config} must hold a JSON object of fields")
    languages = None
    if args.languages:
        languages = [lang.strip() for lang in args.languages.split(",")]
    data = load_sib200(args.data_dir, languages=languages)
    results = {"models": {}, "command": " ".join(sys.argv)}
    path = os.path.join(args.output_dir, "sib200_accuracy.json")
    if os.path.exists(path):  # Resume: keep figures of an earlier run.
        with open(path, encoding="utf-8") as file:
            results["models"] = json.load(file).get("models", {})

    def save():
        atomic_io.write_json(path, results)
        atomic_io.write_text(path[:-5] + ".md", markdown(results))

    runners = {
        "tfidf_svm": ("TF-IDF char+word n-grams + linear SVM", tfidf_svm),
        "fasttext": ("fastText-style hashed n-grams", fasttext_style),
    }
    for key in filter(None, args.baselines.split(",")):
        name, run = runners[key]
        results["models"][name] = run(data)
        print(name, json.dumps(results["models"][name]["test_accuracy"]))
        save()
    throughput = featurizer_throughput(data.train.texts)
    results["featurizer_sentences_per_second"] = throughput
    for folder in filter(None, args.from_runs.split(",")):
        with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        if metrics.get("dataset") != "sib200":
            parser.error(f"{folder} is not a SIB-200 run")
        summary = summarize_run(metrics)
        preset = preset_of(metrics["config"])
        summary["source"] = f"neurolite train run in {folder}"
        # Runs saved before metrics held the seed used seed 0.
        name = model_name(
            preset, summary["mixer"], metrics["config"], metrics.get("seed", 0)
        )
        results["models"][name] = summary
        save()
    for entry in filter(None, args.models.split(",")):
        preset, _, mixer = entry.partition(":")
        config = NeuroLiteConfig.preset(preset, **overrides).get_config()
        name = model_name(preset, mixer, config)
        results["models"][name] = neurolite(
            data, preset, args.epochs, args.batch_size, mixer or None, overrides
        )
        print(name, results["models"][name]["test_accuracy"])
        save()
    timings = {}
    for backend in filter(None, args.epoch_timing_backends.split(",")):
        timings[backend] = epoch_seconds(backend, args.data_dir)
    if timings:
        results["epoch_seconds"] = timings
    save()
    print(markdown(results))


if __name__ == "__main__":
    main()
