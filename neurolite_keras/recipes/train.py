"""Training recipe: a NeuroLite classifier on a labelled data set.

Run it from the command line (`neurolite train ...`) or call
`train_classifier`:

    neurolite train --dataset sib200 --preset tiny --epochs 30 --output DIR

Hardware, run time and accuracy: two CPU cores. Eight SIB-200 epochs (14
languages, 9,814 sentences, batch 64) of the tiny preset took 2,562 s on
the TensorFlow backend (320 s each) while other jobs shared the two cores,
and reached 0.552 mean test accuracy; the README's results table has the
figures `benchmarks/sib200_accuracy.py` reports.
"""

import os
import time

import keras
import numpy as np

from neurolite_keras import atomic_io
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.evaluation import evaluate_predictor
from neurolite_keras.layers.routing import ExpertUsageCallback
from neurolite_keras.models import NeuroLiteForClassification
from neurolite_keras.validation import check_number_in
from neurolite_keras.validation import check_positive_float
from neurolite_keras.validation import check_positive_int


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
    weight_decay=0.01,
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
        learning_rate: float. Peak AdamW learning rate, finite and above
            zero.
        weight_decay: float in `[0, 1]`. AdamW's decoupled weight decay
            (applied to every weight, scaled by the learning rate).
        patience: int >= 0. Epochs without dev improvement before stopping;
            the best epoch's weights are kept.
        output_dir: folder for `model.keras` and `metrics.json`, written
            atomically at the end; `None` writes nothing. It is checked
            before training (see `check_output_dir`).
        seed: int. Seeds weights, dropout and shuffling.
        verbose: Keras' progress setting.

    Returns:
        `(model, metrics)`: the trained classifier and a dict with at least
        `test_accuracy`, `dev_accuracy`, `num_parameters`, `backend`,
        `train_seconds`, `epochs_run` and, with languages, `per_language`.

    Raises:
        ValueError: a bad argument or an empty split (before training), or
            a run whose loss or weights became NaN or infinite (training
            stops at the first such batch, and nothing is saved).
    """
    if not isinstance(config, NeuroLiteConfig):
        raise ValueError(
            f"`config` must be a NeuroLiteConfig. Received: {config!r:.80}"
        )
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive_float("learning_rate", learning_rate)
    weight_decay = check_number_in("weight_decay", weight_decay, 0.0, 1.0)
    if (
        isinstance(patience, bool)
        or not isinstance(patience, int)
        or patience < 0
    ):
        raise ValueError(
            "`patience` must be an integer >= 0. "
            f"Received: patience={patience!r}"
        )
    if output_dir is not None:
        check_output_dir(output_dir)
    for name in ("train", "dev", "test"):
        if not len(getattr(data, name)):
            raise ValueError(f"The {name} split is empty.")
    keras.utils.set_random_seed(seed)
    model = NeuroLiteForClassification(config, label_names=data.label_names)
    steps = -(-len(data.train) // batch_size)
    model.compile(
        optimizer=make_optimizer(learning_rate, steps, epochs, weight_decay)
    )
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            mode="max",
            patience=patience,
            restore_best_weights=True,
        ),
    ]
    if config.use_dynamic_routing:
        callbacks.append(ExpertUsageCallback())
    start = time.perf_counter()
    history = model.fit(
        data.train.texts,
        data.train.labels,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(data.dev.texts, data.dev.labels),
        callbacks=callbacks,
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - start
    losses = history.history["loss"]
    if not np.all(np.isfinite(losses)) or not _finite_weights(model):
        # The early stopping may have put back an earlier epoch's weights,
        # but the run did not finish: it must not pass for a trained model.
        raise ValueError(
            "Training diverged: the loss or the weights became NaN or "
            f"infinite (loss per epoch: {[round(x, 4) for x in losses]}). "
            "Nothing was saved. Try a lower learning rate (learning_rate="
            f"{learning_rate!r})."
        )
    epochs_run = len(losses)

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
        "best_epoch": int(
            max(
                range(epochs_run),
                key=lambda i: history.history["val_accuracy"][i],
            )
        )
        + 1,
        "num_train_examples": len(data.train),
        "num_test_examples": test["num_examples"],
        "seed": seed,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "config": config.get_config(),
    }
    if "per_language" in test:
        metrics["per_language"] = test["per_language"]
        metrics["pooled_test_accuracy"] = test["pooled_accuracy"]
    if output_dir is not None:
        save_run(model, metrics, output_dir)
    return model, metrics


def _finite_weights(model):
    return all(
        np.all(np.isfinite(w))
        for w in model.get_weights()
        if w.dtype.kind == "f"
    )


def check_output_dir(path, name="output_dir"):
    """Raises a `ValueError` unless `save_run` can write into `path`.

    `path` must be a folder, or not exist yet with the nearest existing
    folder above it writable; `model.keras` and `metrics.json` in it, if
    present, must be files. Nothing is created.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"`{name}` must be a folder, or a path that does not exist yet; "
            f"it is a file. Received: {name}={path!r}"
        )
    if os.path.isdir(path):
        for file_name in ("model.keras", "metrics.json"):
            target = os.path.join(path, file_name)
            if os.path.exists(target) and not os.path.isfile(target):
                raise ValueError(
                    f"`{name}` holds {file_name!r}, which is not a file, so "
                    f"it cannot be replaced. Received: {name}={path!r}"
                )
        existing = path
    else:
        existing = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ValueError(
                f"`{name}` cannot be created: {existing!r} is a file, not a "
                f"folder. Received: {name}={path!r}"
            )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"`{name}` cannot be written: no write permission in "
            f"{existing!r}. Received: {name}={path!r}"
        )
    return path


def save_run(model, metrics, output_dir):
    """Writes `model.keras` then `metrics.json`, each atomically."""
    os.makedirs(output_dir, exist_ok=True)
    atomic_io.save_model(model, os.path.join(output_dir, "model.keras"))
    atomic_io.write_json(os.path.join(output_dir, "metrics.json"), metrics)
