"""Training recipe: a NeuroLite classifier on a labelled data set.

Run it from the command line (`neurolite train ...`) or call
`train_classifier`:

    neurolite train --dataset sib200 --preset tiny --epochs 30 --output DIR

Hardware, run time and accuracy: two CPU cores. One SIB-200 epoch (14
languages, 9,814 sentences, batch 64) of the tiny preset took 632 s on the
TensorFlow backend while four other jobs shared the two cores; an idle
machine has not been timed yet. The accuracy it reaches is the one
`benchmarks/sib200_accuracy.py` writes into the README's results table.
"""

import os
import time

import keras

from neurolite_keras import atomic_io
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.evaluation import evaluate_predictor
from neurolite_keras.layers.routing import ExpertUsageCallback
from neurolite_keras.models import NeuroLiteForClassification


def make_optimizer(learning_rate, steps_per_epoch, epochs, weight_decay=0.01):
    """AdamW with one epoch of linear warm-up, then cosine decay."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(steps_per_epoch, total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.1,
        decay_steps=max(1, total - warmup),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(schedule, weight_decay=weight_decay)


def train_classifier(
    data,
    config,
    epochs=30,
    batch_size=64,
    learning_rate=3e-3,
    patience=5,
    output_dir=None,
    seed=0,
    verbose="auto",
):
    """Trains, early-stops on dev accuracy, evaluates and saves a classifier.

    Args:
        data: `TextClassificationData` (see `neurolite_keras.datasets`).
        config: `NeuroLiteConfig`.
        epochs: int. Upper bound on epochs.
        batch_size: int.
        learning_rate: float. Peak AdamW learning rate.
        patience: int. Epochs without dev improvement before stopping; the
            best epoch's weights are kept.
        output_dir: folder for `model.keras` and `metrics.json`, written
            atomically at the end; `None` writes nothing.
        seed: int. Seeds weights, dropout and shuffling.
        verbose: Keras' progress setting.

    Returns:
        `(model, metrics)`: the trained classifier and a dict with at least
        `test_accuracy`, `dev_accuracy`, `num_parameters`, `backend`,
        `train_seconds`, `epochs_run` and, with languages, `per_language`.
    """
    if not isinstance(config, NeuroLiteConfig):
        raise ValueError(
            f"`config` must be a NeuroLiteConfig. Received: {config!r:.80}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be a positive integer. "
                f"Received: {name}={value!r}"
            )
    if not len(data.train):
        raise ValueError("The training split is empty.")
    keras.utils.set_random_seed(seed)
    model = NeuroLiteForClassification(config, label_names=data.label_names)
    steps = -(-len(data.train) // batch_size)
    model.compile(optimizer=make_optimizer(learning_rate, steps, epochs))
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=patience,
            restore_best_weights=True,
        )
    ]
    if config.use_dynamic_routing:
        callbacks.append(ExpertUsageCallback())
    start = time.perf_counter()
    history = model.fit(
        data.train.texts, data.train.labels, batch_size=batch_size,
        epochs=epochs, validation_data=(data.dev.texts, data.dev.labels),
        callbacks=callbacks, verbose=verbose,
    )
    train_seconds = time.perf_counter() - start
    epochs_run = len(history.history["loss"])

    test = evaluate_predictor(model, data.test)
    dev = evaluate_predictor(model, data.dev)
    metrics = {
        "dataset": data.name,
        "test_accuracy": test["accuracy"],
        "dev_accuracy": dev["accuracy"],
        "num_parameters": int(model.count_params()),
        "backend": keras.backend.backend(),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / epochs_run, 2),
        "epochs_run": epochs_run,
        "best_epoch": int(max(range(epochs_run),
                              key=lambda i: history.history["val_accuracy"][i])
                          ) + 1,
        "num_train_examples": len(data.train),
        "num_test_examples": test["num_examples"],
        "config": config.get_config(),
    }
    if "per_language" in test:
        metrics["per_language"] = test["per_language"]
        metrics["pooled_test_accuracy"] = test["pooled_accuracy"]
    if output_dir is not None:
        save_run(model, metrics, output_dir)
    return model, metrics


def save_run(model, metrics, output_dir):
    """Writes `model.keras` then `metrics.json`, each atomically."""
    os.makedirs(output_dir, exist_ok=True)
    atomic_io.save_model(model, os.path.join(output_dir, "model.keras"))
    atomic_io.write_json(os.path.join(output_dir, "metrics.json"), metrics)
