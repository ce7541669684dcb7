"""What the associative memory does on real data: new intents taught by
writing examples (no retraining), recall of a written sentence, and the
learned long-term slots.

Run (the figures in `benchmarks/results/memory/`; 20 minutes on two CPU
cores shared with other jobs, up to twice that when they are busier):

    KERAS_BACKEND=tensorflow nice -n 10 \\
        python benchmarks/memory_new_labels.py --data-dir ../shared/data

`--quick` trains on a few sentences per label for one epoch: it checks the
mechanics in about a minute, not the accuracy, and writes nothing unless
`--output-dir` is given.

1. New labels without retraining (Banking77, English, 77 intents). The 77
   intent names are sorted and every 7th one, starting from the first, is
   held out, the first 10 of those (`split_labels`). A tiny classifier
   with `use_external_memory=True` and 32-token inputs is trained by the
   recipe of `neurolite train` on the other 67 intents only (its head
   still has a row for each of the 77). Then, for k = 1, 5 and 10, the
   memory is emptied and k training sentences of each held-out intent (a
   fixed seeded draw; the k = 1 sentences are among the k = 5 ones, and so
   on) are written with their labels. Test accuracy over all 77 labels is
   reported on the held-out intents' sentences and on the trained
   intents' ones, before and after the writes.

   The readout (`READOUTS`: the memory's `label_lexical_weight`, the
   weight of what texts literally share in the written labels' scores,
   and `EpisodicLabelReadout.margin`, by how much a written prototype must
   beat a trained label) is chosen on the dev split (a stratified tenth of
   Banking77's training sentences, which the written examples are not
   drawn from): the setting with the best held-out-intent dev accuracy,
   averaged over k, among those that keep the trained intents' dev
   accuracy within `MAX_TRAINED_DROP` of its value before the writes at
   every k. The test split is never used for a choice.
2. The seed's example: sentences in French, one of them about a person,
   are written into the episodic memory of a trained backbone with
   `model(input_texts=[...], update_memory=True)`; the retrieval weights
   of questions about that person are printed, with the memory's keys as
   built (learned and lexical parts, `lexical_weight` of the memory) and
   with the learned keys alone (`lexical_weight` 0, the retrieval before
   lexical keys). Then the seed's own sentence is written alone and its
   pronoun question asked. The backbone is the one of part 3 with memory
   (trained on 14 languages, French among them).
3. Long-term slots (SIB-200, 14 languages, 7 topics; the tiny preset at
   half width, `sib200_config`, to keep the run short): the same pooled
   classifier (the backbone, masked mean pooling, a dense head) with the
   associative memory (learned long-term slots read by every token) and
   without it, the channel-mixing MLPs widened to about the same number of
   trainable parameters. Both train the same number of epochs with the
   recipe's optimizer and early stopping on dev accuracy; the score is the
   mean of the 14 languages' test accuracies. The run uses fewer epochs
   than a full training (`--sib-epochs`), which the table says.

   (`NeuroLiteForClassification` with memory classifies with
   `EpisodicLabelReadout`, a cosine head; this part builds a dense-head
   pooled classifier instead so that the two models differ only by the
   memory.)
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

from neurolite_keras import atomic_io
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.datasets import TextClassificationData
from neurolite_keras.datasets import load_dataset
from neurolite_keras.featurizer import TextFeaturizer
from neurolite_keras.layers import MaskedMeanPooling
from neurolite_keras.models import NeuroLiteForClassification
from neurolite_keras.models import NeuroLiteModel
from neurolite_keras.recipes.train import make_optimizer

NUM_NEW_LABELS = 10
LABEL_STEP = 7
SHOTS = (1, 5, 10)
MARGINS = tuple(round(0.05 * i, 2) for i in range(11))  # 0.0 to 0.5
LABEL_LEXICAL_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
# Readout settings tried: (label_lexical_weight, margin).
READOUTS = tuple((w, m) for w in LABEL_LEXICAL_WEIGHTS for m in MARGINS)
MAX_TRAINED_DROP = 0.01
DEFAULT_OUTPUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "memory"
)

# Part 2: written sentences (the first is about a person) and questions
# that refer back to her. Fixed before any run; all are reported.
PERSON = "Marie est ingénieure à Lyon."
OTHER_SENTENCES = (
    "Le marché couvert ouvre à sept heures le samedi.",
    "Une forte pluie est attendue demain sur la Bretagne.",
    "Le musée présente une nouvelle exposition de peinture.",
    "L'équipe de football a gagné son dernier match.",
)
QUESTIONS = (
    "Où travaille Marie ?",
    "Quel est le métier de Marie ?",
    "Où habite-t-elle ?",
)
# The seed's own example: one sentence written, then a question that
# refers back to it by a pronoun only.
SEED_SENTENCE = "Alice est une ingénieure vivant à Paris."
SEED_QUESTION = "Où habite-t-elle ?"


# --- Part 1: new labels without retraining --------------------------------


def split_labels(label_names, num_new=NUM_NEW_LABELS, step=LABEL_STEP):
    """(trained, held out): every `step`-th sorted name, the first
    `num_new` of them, is held out; both lists keep `label_names`' order."""
    names = sorted(label_names)
    held_out = names[::step][:num_new]
    if len(held_out) < num_new or len(held_out) >= len(names):
        raise ValueError(
            f"Cannot hold out {num_new} of {len(names)} labels taking every "
            f"{step}th one."
        )
    chosen = set(held_out)
    trained = [name for name in label_names if name not in chosen]
    return trained, [name for name in label_names if name in chosen]


def _only(split, labels):
    keep = set(labels)
    return split.subset(i for i, y in enumerate(split.labels) if y in keep)


def examples_per_label(split, labels, count, seed=0):
    """`{label: [text, ...]}`, `count` texts each, a seeded draw."""
    rng = np.random.default_rng(seed)
    truth = np.asarray(split.labels)
    chosen = {}
    for label in labels:
        members = np.flatnonzero(truth == label)
        if len(members) < count:
            raise ValueError(
                f"Label {label!r} has {len(members)} examples; {count} are "
                "needed."
            )
        rng.shuffle(members)
        chosen[label] = [split.texts[i] for i in members[:count]]
    return chosen


def readout_logits(model, features, readouts):
    """`{(weight, margin): logits}` of a memory classifier for each readout
    setting: the memory's `label_lexical_weight` and the head's margin.

    The backbone runs once per weight (eagerly, by batches of 256); its head
    (`EpisodicLabelReadout`) is then called with each margin, which is all
    the margin changes.
    """
    head = model.get_layer("head")
    memory = model.backbone.memory
    # The head's two inputs (query and label scores) as a model's outputs.
    probe = keras.Model(model.input, head.input)
    total = len(features["padding_mask"])
    saved = memory.label_lexical_weight, head.margin
    logits = {}
    try:
        for weight in sorted({w for w, _ in readouts}):
            memory.label_lexical_weight = float(weight)
            parts = []
            for start in range(0, total, 256):
                batch = {k: v[start : start + 256] for k, v in features.items()}
                query, scores = probe(batch, training=False)
                parts.append(
                    (
                        keras.ops.convert_to_numpy(query),
                        keras.ops.convert_to_numpy(scores),
                    )
                )
            query = np.concatenate([p[0] for p in parts])
            scores = np.concatenate([p[1] for p in parts])
            for w, margin in readouts:
                if w == weight:
                    head.margin = float(margin)
                    logits[(w, margin)] = keras.ops.convert_to_numpy(
                        head(query, scores)
                    )
    finally:
        memory.label_lexical_weight, head.margin = saved
    return logits


def group_accuracies(logits, truth, held_out_ids):
    """Accuracy on the trained labels' examples and on the held-out ones."""
    predicted = np.argmax(logits, axis=1)
    new = np.isin(truth, held_out_ids)
    correct = predicted == truth
    return {
        "trained": float(correct[~new].mean()) if (~new).any() else None,
        "new": float(correct[new].mean()) if new.any() else None,
    }


def choose_readout(dev, readouts, max_drop=MAX_TRAINED_DROP):
    """The readout setting chosen on dev (see the module docstring); any
    sortable keys (margins, or `(weight, margin)` pairs).

    Args:
        dev: `{"before": {"trained": a}, "shots": {k: {setting:
            {"trained": a, "new": b}}}}`.
    """
    floor = dev["before"]["trained"] - max_drop
    passing = [
        m
        for m in readouts
        if all(row[m]["trained"] >= floor for row in dev["shots"].values())
    ]
    if not passing:
        return max(readouts)
    return max(
        passing,
        key=lambda m: (
            np.mean([row[m]["new"] for row in dev["shots"].values()]),
            m,
        ),
    )


def fit(model, data, features, epochs, batch_size, run_eagerly, verbose):
    """Trains `model` by the recipe of `neurolite train`: AdamW with warm-up
    and cosine decay, early stopping on dev accuracy keeping the best
    epoch. Returns a dict of training figures."""
    index = {name: i for i, name in enumerate(data.label_names)}

    def labels(split):
        return {"logits": np.array([index[y] for y in split.labels], "int32")}

    steps = -(-len(data.train) // batch_size)
    model.compile(
        optimizer=make_optimizer(3e-3, steps, epochs),
        loss={
            "logits": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            )
        },
        metrics={"logits": [keras.metrics.SparseCategoricalAccuracy("acc")]},
        run_eagerly=run_eagerly,
    )
    start = time.perf_counter()
    history = model.fit(
        features["train"],
        labels(data.train),
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(features["dev"], labels(data.dev)),
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_acc",
                mode="max",
                patience=5,
                restore_best_weights=True,
            )
        ],
        shuffle=True,
        verbose=verbose,
    )
    dev = history.history["val_acc"]
    return {
        "epochs_run": len(dev),
        "best_epoch": int(np.argmax(dev)) + 1,
        "dev_accuracy": float(max(dev)),
        "train_seconds": round(time.perf_counter() - start, 1),
        "trainable_parameters": trainable_count(model),
    }


def _features(featurize, data):
    return {
        name: featurize(getattr(data, name).texts)
        for name in ("train", "dev", "test")
    }


def new_labels_experiment(
    data,
    config,
    epochs,
    batch_size=64,
    shots=SHOTS,
    readouts=READOUTS,
    seed=0,
    run_eagerly=False,
    verbose=2,
):
    """Part 1. Returns `(results, model)`."""
    trained, held_out = split_labels(data.label_names)
    restricted = TextClassificationData(
        data.name,
        list(data.label_names),
        _only(data.train, trained),
        _only(data.dev, trained),
        _only(data.test, trained),
    )
    keras.utils.set_random_seed(seed)
    model = NeuroLiteForClassification(config, label_names=data.label_names)
    training = fit(
        model,
        restricted,
        _features(model.featurize, restricted),
        epochs,
        batch_size,
        run_eagerly,
        verbose,
    )
    index = {name: i for i, name in enumerate(model.label_names)}
    held_out_ids = [index[name] for name in held_out]
    support = examples_per_label(
        _only(data.train, held_out), held_out, max(shots), seed
    )
    splits = {}
    for name in ("dev", "test"):
        split = getattr(data, name)
        splits[name] = (
            model.featurize(split.texts),
            np.array([index[y] for y in split.labels]),
        )

    def measure(name, candidates):
        features, truth = splits[name]
        return {
            m: group_accuracies(logits, truth, held_out_ids)
            for m, logits in readout_logits(model, features, candidates).items()
        }

    model.reset_memory()
    first = readouts[:1]
    dev = {"before": measure("dev", first)[first[0]], "shots": {}}
    test = {"before": measure("test", first)[first[0]], "shots": {}}
    per_shot = {}
    for k in shots:
        model.reset_memory()
        texts = [t for label in held_out for t in support[label][:k]]
        labels = [label for label in held_out for _ in range(k)]
        model.write_memory(texts, labels)
        per_shot[k] = (
            measure("dev", readouts),
            measure("test", readouts),
        )
        dev["shots"][k] = per_shot[k][0]
    # The shortcut of `readout_logits` against the model itself, on dev
    # sentences read with the last memory written.
    features, _ = splits["dev"]
    sample = {name: value[:64] for name, value in features.items()}
    head = model.get_layer("head")
    direct = model.predict(sample, batch_size=64, verbose=0)["logits"]
    current = (model.backbone.memory.label_lexical_weight, head.margin)
    shortcut = readout_logits(model, sample, [current])[current]
    readout_check = float(np.abs(np.asarray(direct) - shortcut).max())
    chosen = choose_readout(dev, readouts)
    for k in shots:
        test["shots"][k] = per_shot[k][1][chosen]
    model.reset_memory()
    # Kept in the config, so saved with the model.
    weight, margin = chosen
    model.memory_label_lexical_weight = weight
    model.memory_readout_margin = margin

    def counts(split):
        new = np.isin(split[1], held_out_ids)
        return {"trained": int((~new).sum()), "new": int(new.sum())}

    results = {
        "held_out_labels": held_out,
        "num_trained_labels": len(trained),
        "margin": margin,
        "label_lexical_weight": weight,
        "margin_rule": (
            "best mean held-out dev accuracy over k among label lexical "
            f"weights {sorted({w for w, _ in readouts})} and margins "
            f"{sorted({m for _, m in readouts})} keeping trained-intent dev "
            "accuracy within "
            f"{MAX_TRAINED_DROP} of its value before the writes"
        ),
        "scale": model.get_layer("head").scale,
        "readout_check_max_abs_difference": readout_check,
        "test": {
            "before": test["before"],
            "shots": {str(k): v for k, v in test["shots"].items()},
        },
        "dev_sweep": {
            "before": dev["before"],
            "shots": {
                str(k): {
                    str(w): {str(m): row[(w, m)] for v, m in row if v == w}
                    for w in dict.fromkeys(w for w, _ in row)
                }
                for k, row in dev["shots"].items()
            },
        },
        "num_test_examples": counts(splits["test"]),
        "num_train_examples": len(restricted.train),
        "epochs": epochs,
        "epochs_run": training["epochs_run"],
        "best_epoch": training["best_epoch"],
        "dev_accuracy_trained_labels": training["dev_accuracy"],
        "trainable_parameters": training["trainable_parameters"],
        "train_seconds": training["train_seconds"],
        "config": config.get_config(),
    }
    return results, model


# --- Part 3: long-term slots ----------------------------------------------


def pooled_classifier(config, num_labels, name="pooled_classifier"):
    """The backbone (with memory if `config` says so), masked mean pooling
    and a dense head; returns `(model, backbone)`."""
    backbone = NeuroLiteModel(config, name="backbone")
    inputs = dict(backbone.input)
    hidden = backbone(inputs)
    pooled = MaskedMeanPooling(name="pooling")(
        hidden, padding_mask=inputs["padding_mask"]
    )
    pooled = keras.layers.Dropout(config.dropout_rate, name="head_dropout")(
        pooled
    )
    logits = keras.layers.Dense(num_labels, name="head")(pooled)
    return keras.Model(inputs, {"logits": logits}, name=name), backbone


def trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def matched_config(with_memory, num_labels):
    """`with_memory` without memory, its channel-mixing width set so that
    the trainable parameter count is the closest to the memory model's."""
    target = trainable_count(pooled_classifier(with_memory, num_labels)[0])
    base = with_memory.copy(use_external_memory=False)

    def count(width):
        return trainable_count(
            pooled_classifier(base.copy(channel_mixing_size=width), num_labels)[
                0
            ]
        )

    width = base.channel_mixing_size
    slope = (count(width + 16) - count(width)) / 16
    width = max(1, width + int(round((target - count(width)) / slope)))
    return base.copy(channel_mixing_size=width), target


def train_pooled(data, config, epochs, batch_size, features, seed, **options):
    """Trains one arm of part 3; returns `(metrics, backbone)`."""
    keras.utils.set_random_seed(seed)
    model, backbone = pooled_classifier(config, len(data.label_names))
    training = fit(model, data, features, epochs, batch_size, **options)
    index = {name: i for i, name in enumerate(data.label_names)}
    truth = np.array([index[y] for y in data.test.labels])
    logits = model.predict(features["test"], batch_size=256, verbose=0)
    correct = np.argmax(logits["logits"], axis=1) == truth
    languages = np.asarray(data.test.languages)
    per_language = {
        lang: float(correct[languages == lang].mean())
        for lang in dict.fromkeys(data.test.languages)
    }
    return {
        "test_accuracy": float(np.mean(list(per_language.values()))),
        "per_language": per_language,
        "channel_mixing_size": config.channel_mixing_size,
        **training,
    }, backbone


def long_term_slots_experiment(
    data, config, epochs, batch_size=64, seed=0, run_eagerly=False, verbose=2
):
    """Part 3. Returns `(results, backbone of the memory arm)`."""
    without, target = matched_config(config, len(data.label_names))
    features = _features(TextFeaturizer.from_config(config), data)
    arms = {}
    backbone = None
    for name, arm in (("with_memory", config), ("without_memory", without)):
        arms[name], trained = train_pooled(
            data,
            arm,
            epochs,
            batch_size,
            features,
            seed,
            run_eagerly=run_eagerly,
            verbose=verbose,
        )
        if name == "with_memory":
            backbone = trained
        print(f"SIB-200 {name}: {arms[name]['test_accuracy']:.3f}", flush=True)
    arms["with_memory"]["num_memory_slots"] = config.num_memory_slots
    return {
        "epochs": epochs,
        "num_train_examples": len(data.train),
        "languages": list(dict.fromkeys(data.test.languages)),
        "target_trainable_parameters": target,
        "config": config.get_config(),
        **arms,
    }, backbone


# --- Part 2: recall of a written sentence ---------------------------------


def _recall_weights(backbone, question, written):
    """`{text: weight}` of `question` over the written texts."""
    recalled = backbone.recall([question], top_k=len(written))[0]
    return {text: weight for text, _, weight in recalled}


def recall_demo(backbone):
    """Writes the part-2 sentences and returns each question's weights,
    with the memory's keys as built and with its learned keys alone."""
    memory = backbone.memory
    lexical_weight = memory.lexical_weight
    written = [PERSON, *OTHER_SENTENCES]
    rows = []
    try:
        backbone.reset_memory()
        backbone(input_texts=written, update_memory=True)
        for question in QUESTIONS:
            memory.lexical_weight = 0.0
            learned = _recall_weights(backbone, question, written)
            memory.lexical_weight = lexical_weight
            weights = _recall_weights(backbone, question, written)
            best = max(weights, key=weights.get)
            rows.append(
                {
                    "question": question,
                    "weights": weights,
                    "recalled": best,
                    "person_recalled": best == PERSON,
                    "long_term_weight": 1.0 - sum(weights.values()),
                    "learned_keys_only": {
                        "weights": learned,
                        "person_recalled": max(learned, key=learned.get)
                        == PERSON,
                    },
                }
            )
        backbone.reset_memory()
        backbone(input_texts=[SEED_SENTENCE], update_memory=True)
        seed = {"sentence": SEED_SENTENCE, "question": SEED_QUESTION}
        for name, value in (("learned_keys_only", 0.0), ("weight", None)):
            memory.lexical_weight = lexical_weight if value is None else value
            weights = _recall_weights(backbone, SEED_QUESTION, [SEED_SENTENCE])
            seed[name] = weights[SEED_SENTENCE]
    finally:
        memory.lexical_weight = lexical_weight
        backbone.reset_memory()
    return {
        "written": written,
        "person": PERSON,
        "lexical_weight": lexical_weight,
        "questions": rows,
        "seed_example": seed,
    }


# --- The whole run and its report -----------------------------------------


def banking77_config(**overrides):
    """Tiny, with memory; Banking77 texts are short (p99 50 tokens)."""
    settings = {"max_sequence_length": 32, "use_external_memory": True}
    return NeuroLiteConfig.tiny(**{**settings, **overrides})


def sib200_config(**overrides):
    """Tiny at half width (64 features, key 32), with memory: one SIB-200
    epoch of the full tiny preset took 16 minutes on the shared cores."""
    settings = {
        "use_external_memory": True,
        "hidden_size": 64,
        "token_mixing_size": 32,
        "channel_mixing_size": 192,
        "memory_key_size": 32,
    }
    return NeuroLiteConfig.tiny(**{**settings, **overrides})


def run(
    banking,
    sib,
    epochs=5,
    sib_epochs=2,
    batch_size=64,
    seed=0,
    banking_config=None,
    sib_config=None,
    shots=SHOTS,
    run_eagerly=False,
    model_path=None,
    verbose=2,
):
    """All three parts; returns the results dict (what the JSON holds).

    `model_path` (a `.keras` name) keeps the trained Banking77 classifier,
    its memory empty, with the margin chosen on dev (in its config's
    `memory_readout_margin`).

    `run_eagerly=True` skips tracing the training and prediction steps,
    which takes longer than training on the tests' few sentences.
    """
    started = time.perf_counter()
    results = {"backend": keras.backend.backend()}
    results["new_labels"], model = new_labels_experiment(
        banking,
        banking_config or banking77_config(),
        epochs,
        batch_size=batch_size,
        shots=shots,
        seed=seed,
        run_eagerly=run_eagerly,
        verbose=verbose,
    )
    print_new_labels(results["new_labels"])
    if model_path is not None:
        atomic_io.save_model(model, model_path)
    results["long_term_slots"], backbone = long_term_slots_experiment(
        sib,
        sib_config or sib200_config(),
        sib_epochs,
        batch_size=batch_size,
        seed=seed,
        run_eagerly=run_eagerly,
        verbose=verbose,
    )
    results["recall"] = recall_demo(backbone)
    print_recall(results["recall"])
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


def print_new_labels(part):
    test = part["test"]
    print(
        f"label lexical weight {part['label_lexical_weight']}, margin "
        f"{part['margin']} (chosen on dev)"
    )
    print(
        f"before: trained {test['before']['trained']:.3f} "
        f"new {test['before']['new']:.3f}"
    )
    for k, row in test["shots"].items():
        print(f"k={k}: trained {row['trained']:.3f} new {row['new']:.3f}")


def print_recall(part):
    for row in part["questions"]:
        print(row["question"])
        learned = row["learned_keys_only"]["weights"]
        for text, weight in row["weights"].items():
            print(f"  {weight:.4f}  ({learned[text]:.4f} learned)  {text}")
    seed = part["seed_example"]
    print(
        f"{seed['question']} after {seed['sentence']!r} alone: "
        f"{seed['weight']:.4f} ({seed['learned_keys_only']:.4f} learned)"
    )


def _fraction(value):
    return "-" if value is None else f"{value:.3f}"


def markdown(results):
    part = results["new_labels"]
    test, counts = part["test"], part["num_test_examples"]
    lines = [
        "New intents taught by writing labelled examples into episodic "
        "memory, without retraining (Banking77 test accuracy over all 77 "
        f"intents; a tiny classifier with memory, 32-token inputs, trained "
        f"{part['epochs_run']} epochs on {part['num_trained_labels']} "
        f"intents; {len(part['held_out_labels'])} held out; label lexical "
        f"weight {part['label_lexical_weight']} and readout margin "
        f"{part['margin']} chosen on the dev split):",
        "",
        f"| examples written per new intent | trained intents "
        f"({counts['trained']:,} sentences) | new intents "
        f"({counts['new']:,} sentences) |",
        "|---|---|---|",
        f"| none (before) | {_fraction(test['before']['trained'])} | "
        f"{_fraction(test['before']['new'])} |",
    ]
    for k, row in test["shots"].items():
        lines.append(
            f"| {k} | {_fraction(row['trained'])} | {_fraction(row['new'])} |"
        )
    held_out = ", ".join(f"`{name}`" for name in part["held_out_labels"])
    sweep = part["dev_sweep"]
    most = max(sweep["shots"], key=int)
    lines += [
        "",
        f"Held-out intents: {held_out}. The margin trades the two, and the "
        "lexical weight sets how it trades them: held-out intents' dev "
        f"accuracy (trained intents' in brackets; "
        f"{sweep['before']['trained']:.3f} before the writes) with {most} "
        "examples written per new intent:",
        "",
    ]
    by_weight = sweep["shots"][most]
    margins = list(next(iter(by_weight.values())))
    lines += [
        "| label lexical weight \\ margin | " + " | ".join(margins) + " |",
        "|---" * (len(margins) + 1) + "|",
    ]
    for weight, row in by_weight.items():
        cells = [
            f"{_fraction(row[m]['new'])} ({_fraction(row[m]['trained'])})"
            for m in margins
        ]
        lines.append(f"| {weight} | " + " | ".join(cells) + " |")
    lines.append("")

    slots = results["long_term_slots"]
    with_memory, without = slots["with_memory"], slots["without_memory"]
    lines += [
        "Learned long-term memory slots (SIB-200, mean test accuracy of "
        f"{len(slots['languages'])} languages; the tiny preset at width "
        f"{slots['config']['hidden_size']}, trained only "
        f"{slots['epochs']} epoch(s) to fit the run on two shared cores, "
        "so both figures are far below fully trained ones):",
        "",
        "| model | trainable parameters | test accuracy | French |",
        "|---|---|---|---|",
    ]
    for name, row in (
        (
            f"with memory ({with_memory['num_memory_slots']} long-term slots)",
            with_memory,
        ),
        (
            "without memory, channel MLP widened to "
            f"{without['channel_mixing_size']}",
            without,
        ),
    ):
        lines.append(
            f"| {name} | {row['trainable_parameters']:,} | "
            f"{row['test_accuracy']:.3f} | "
            f"{_fraction(row['per_language'].get('fra_Latn'))} |"
        )

    recall = results["recall"]
    person = recall["person"]
    lines += [
        "",
        "The original example, on the SIB-200 model with memory: five "
        f"sentences written, the first about a person ({person!r}); "
        "sentence-level retrieval weight of each question on her slot, on "
        "the best other written slot, and on the learned long-term slots "
        "together (each row sums to 1 over all slots), with the memory's "
        "keys (learned and lexical parts, lexical weight "
        f"{recall['lexical_weight']}), and with the learned keys alone (the "
        "retrieval before lexical keys):",
        "",
        "| question | weight on her sentence | best other | long-term "
        "slots | recalled | learned keys alone: her sentence, best other, "
        "recalled |",
        "|---|---|---|---|---|---|",
    ]

    def best_other(weights):
        return max(w for text, w in weights.items() if text != person)

    for row in recall["questions"]:
        learned = row["learned_keys_only"]
        lines.append(
            f"| {row['question']} | {row['weights'][person]:.3f} | "
            f"{best_other(row['weights']):.3f} | "
            f"{row['long_term_weight']:.3f} | "
            f"{'her sentence' if row['person_recalled'] else 'another'} | "
            f"{learned['weights'][person]:.3f}, "
            f"{best_other(learned['weights']):.3f}, "
            f"{'hers' if learned['person_recalled'] else 'another'} |"
        )
    seed = recall["seed_example"]
    lines += [
        "",
        f"The seed's own example: {seed['sentence']!r} written alone, then "
        f"{seed['question']!r}: weight {seed['weight']:.3f} on its slot "
        f"({seed['learned_keys_only']:.3f} with the learned keys alone), "
        "the rest on the long-term slots. The question shares no word with "
        "the sentence, so the lexical part cannot help; with the sentence "
        "alone in memory it is recalled whatever its weight.",
    ]
    lines += [
        "",
        f"Backend {results['backend']}, whole run "
        f"{results['total_seconds'] / 60:.0f} min on two shared CPU cores; "
        f"command: `{results.get('command', '')}`.",
    ]
    return "\n".join(lines) + "\n"


def shrink(data, per_label, languages=None):
    """A small slice: `per_label` examples of each label in each split
    (and only `languages`, for SIB-200), for `--quick` and the tests."""

    def take(split):
        kept, seen = [], {}
        for i, label in enumerate(split.labels):
            if languages and split.languages[i] not in languages:
                continue
            key = (label, split.languages[i] if split.languages else None)
            if seen.get(key, 0) < per_label:
                seen[key] = seen.get(key, 0) + 1
                kept.append(i)
        return split.subset(kept)

    return TextClassificationData(
        data.name,
        list(data.label_names),
        take(data.train),
        take(data.dev),
        take(data.test),
    )


def save(results, output_dir):
    path = os.path.join(output_dir, "memory_new_labels.json")
    atomic_io.write_json(path, results)
    atomic_io.write_text(path[:-5] + ".md", markdown(results))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=os.environ.get("NEUROLITE_DATA_DIR")
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help=f"defaults to {DEFAULT_OUTPUT} (nothing with --quick)",
    )
    parser.add_argument("--epochs", type=int, default=5, help="Banking77")
    parser.add_argument("--sib-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save-model", help="a .keras file for the Banking77 classifier"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="12 sentences per label, one epoch, small models",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "sib_epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    banking = load_dataset("banking77", data_dir=args.data_dir)
    sib = load_dataset("sib200", data_dir=args.data_dir)
    options = {}
    output_dir = args.output_dir
    if args.quick:
        banking = shrink(banking, 12)
        sib = shrink(sib, 6, languages={"fra_Latn", "eng_Latn"})
        args.epochs = args.sib_epochs = 1
        small = {"hidden_size": 32, "projection_size": 32}
        small.update(num_mixer_layers=1, channel_mixing_size=64)
        options = {
            "banking_config": banking77_config(**small),
            "sib_config": sib200_config(**small),
        }
    elif output_dir is None:
        output_dir = DEFAULT_OUTPUT
    results = run(
        banking,
        sib,
        epochs=args.epochs,
        sib_epochs=args.sib_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        model_path=args.save_model,
        verbose=2,
        **options,
    )
    # The command that gives these figures (`--save-model` changes none).
    words = list(argv if argv is not None else sys.argv[1:])
    if "--save-model" in words:
        at = words.index("--save-model")
        del words[at : at + 2]
    results["command"] = " ".join(
        ["python benchmarks/memory_new_labels.py", *words]
    )
    text = markdown(results)
    print(text)
    if output_dir is not None:
        print("wrote", save(results, output_dir))
    else:
        print(json.dumps(results["new_labels"]["test"]))
    return results


if __name__ == "__main__":
    main()
