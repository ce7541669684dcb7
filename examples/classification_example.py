"""Train a NeuroLite-tiny topic classifier on French SIB-200 sentences with
`model.fit` on raw strings, evaluate it, classify new sentences, save it
and reload it.

Run (from the repository root, any backend):

    python examples/classification_example.py            # 15 epochs
    python examples/classification_example.py --quick    # 1 epoch
    KERAS_BACKEND=torch python examples/classification_example.py \\
        --dataset snips

Data: SIB-200 French (701 train, 99 dev, 204 test sentences, 7 topics) or
SNIPS (English intents), read from `--data-dir` or `NEUROLITE_DATA_DIR`,
else downloaded once by the loaders. `--quick` keeps 64 training and 32
test sentences, one epoch and a 32-token model: it shows the steps, not
the accuracy. The full command-line recipe is `neurolite train`.
"""

import argparse
import os
import time

import keras
import numpy as np

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras import load_model
from neurolite_keras.atomic_io import save_model
from neurolite_keras.datasets import load_sib200
from neurolite_keras.datasets import load_snips

NEW_SENTENCES = {
    "sib200": [
        "L'équipe de France a remporté le match en prolongation.",
        "Le parlement a adopté la réforme des retraites cette nuit.",
        "Les chercheurs ont mis au point un nouveau processeur quantique.",
        "Ce vaccin réduit fortement le risque d'hospitalisation.",
    ],
    "snips": [
        "Will it rain in Lyon tomorrow?",
        "Book a table for four at an Italian restaurant tonight.",
        "Play some jazz by Miles Davis.",
        "Add this song to my workout playlist.",
    ],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", choices=("sib200", "snips"), default="sib200"
    )
    parser.add_argument(
        "--language",
        default="fra_Latn",
        help="SIB-200 language (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="keep at most this many training sentences",
    )
    parser.add_argument(
        "--max-test",
        type=int,
        default=None,
        help="keep at most this many test sentences",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="64 train / 32 test sentences, 1 epoch, 32 tokens",
    )
    parser.add_argument("--data-dir", help="folder holding the data sets")
    parser.add_argument(
        "--output",
        default="runs/classification_example",
        help="folder for model.keras (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
        args.max_train = args.max_train or 64
        args.max_test = args.max_test or 32
    for name in ("epochs", "batch_size", "max_train", "max_test"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, got {value}"
            )
    return args


def spread(split, limit, seed):
    """At most `limit` examples of `split`, drawn at random."""
    if limit is None or limit >= len(split):
        return split
    order = np.random.default_rng(seed).permutation(len(split))[:limit]
    return split.subset(sorted(order))


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    print(f"Backend: {keras.backend.backend()}")

    # 1. Data: real labelled sentences.
    if args.dataset == "sib200":
        data = load_sib200(args.data_dir, languages=[args.language])
    else:
        data = load_snips(args.data_dir)
    train = spread(data.train, args.max_train, args.seed)
    test = spread(data.test, args.max_test, args.seed)
    dev = spread(data.dev, args.max_test, args.seed)
    print(
        f"Data: {data.name}, {len(train)} train / {len(dev)} dev / "
        f"{len(test)} test sentences, labels {data.label_names}"
    )

    # 2. Model: the tiny preset, shorter inputs in quick mode.
    config = NeuroLiteConfig.tiny()
    if args.quick:
        config.max_sequence_length = 32
    model = NeuroLiteForClassification(config, label_names=data.label_names)
    model.compile()  # AdamW, cross-entropy on the logits, accuracy.
    print(f"Model: NeuroLite-tiny, {model.count_params():,} parameters")

    # 3. Training on raw strings; labels are names.
    start = time.perf_counter()
    model.fit(
        train.texts,
        train.labels,
        validation_data=(dev.texts, dev.labels),
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=2,
    )
    print(
        f"Trained {args.epochs} epoch(s) in {time.perf_counter() - start:.1f} s"
    )

    # 4. Evaluation on the test split.
    results = model.evaluate(
        test.texts, test.labels, verbose=0, return_dict=True
    )
    print(
        f"Test accuracy: {results['accuracy']:.3f} "
        f"(chance: {1 / model.num_labels:.3f})"
    )

    # 5. New sentences: the top two labels with their probabilities.
    sentences = NEW_SENTENCES[args.dataset]
    for text, best in zip(sentences, model.classify(sentences, top_k=2)):
        labels = ", ".join(f"{label} {p:.2f}" for label, p in best)
        print(f"  {text}\n    -> {labels}")

    # 6. Save (atomically) and reload; the reloaded model predicts the same.
    path = os.path.join(args.output, "model.keras")
    save_model(model, path)
    reloaded = load_model(path)
    before = model.predict_proba(sentences)
    after = reloaded.predict_proba(sentences)
    same = np.allclose(before, after, atol=1e-5)
    print(
        f"Saved {path} ({os.path.getsize(path) / 1e6:.1f} MB); reloaded "
        f"model gives the same probabilities: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
