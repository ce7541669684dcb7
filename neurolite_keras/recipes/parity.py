"""Parity of an exported `.tflite` model with its float `.keras` model.

`parity_figures` compares two logit arrays on the same texts (logit
differences, top-1 agreement, accuracies, per language) and checks the
export recipe's targets; `parity_report` runs a `.keras` model and its
`.tflite` export (through `LiteRTClassifier`) on texts and returns them.
"""

import os

import numpy as np

from neurolite_keras.featurizer import check_texts
from neurolite_keras.litert_runner import LiteRTClassifier


def _keras_logits(model, texts):
    outputs = model.predict(list(texts), verbose=0)
    return np.asarray(outputs["logits"], dtype="float32")


def _label_ids(model, labels):
    if labels is None:
        return None
    index = {name: i for i, name in enumerate(model.label_names)}
    return np.array(
        [
            index.get(str(label), label if isinstance(label, int) else -1)
            for label in labels
        ]
    )


def parity_figures(
    keras_logits,
    tflite_logits,
    label_ids=None,
    languages=None,
    quantization=None,
):
    """How closely TFLite logits follow Keras logits on the same texts.

    Args:
        keras_logits, tflite_logits: float arrays `(n, num_labels)`.
        label_ids: optional int array `(n,)` of true labels (-1 for labels
            the model does not know, which count as errors).
        languages: optional list of `n` language tags: accuracies are then
            the mean over languages, as in the project's SIB-200 figures.
        quantization: optional mode, which picks the targets checked.

    Returns:
        A dict with `num_texts`, `max_abs_logit_difference`,
        `mean_abs_logit_difference`, `top1_agreement`, with labels
        `keras_accuracy`, `tflite_accuracy` and `accuracy_drop` (fractions,
        0.01 is one point), with languages `per_language`, and `targets`:
        each target of the export recipe and whether it is met.
    """
    keras_logits = np.asarray(keras_logits, dtype="float64")
    tflite_logits = np.asarray(tflite_logits, dtype="float64")
    if keras_logits.shape != tflite_logits.shape or not len(keras_logits):
        raise ValueError(
            "Need two logit arrays of one non-empty shape. Received "
            f"{keras_logits.shape} and {tflite_logits.shape}."
        )
    keras_top = keras_logits.argmax(axis=1)
    tflite_top = tflite_logits.argmax(axis=1)
    difference = np.abs(keras_logits - tflite_logits)
    groups = None
    if languages is not None:
        languages = np.asarray(languages)
        groups = list(dict.fromkeys(languages.tolist()))

    def mean_over(values):
        if groups is None:
            return float(values.mean())
        return float(np.mean([values[languages == g].mean() for g in groups]))

    figures = {
        "num_texts": int(len(keras_logits)),
        "max_abs_logit_difference": float(difference.max()),
        "mean_abs_logit_difference": float(difference.mean()),
        "top1_agreement": mean_over(keras_top == tflite_top),
    }
    targets = {}
    if label_ids is not None:
        label_ids = np.asarray(label_ids)
        keras_accuracy = mean_over(keras_top == label_ids)
        tflite_accuracy = mean_over(tflite_top == label_ids)
        figures["keras_accuracy"] = keras_accuracy
        figures["tflite_accuracy"] = tflite_accuracy
        figures["accuracy_drop"] = keras_accuracy - tflite_accuracy
    if groups is not None:
        figures["per_language"] = {
            g: {
                "top1_agreement": float(
                    (keras_top == tflite_top)[languages == g].mean()
                ),
                **(
                    {
                        "keras_accuracy": float(
                            (keras_top == label_ids)[languages == g].mean()
                        ),
                        "tflite_accuracy": float(
                            (tflite_top == label_ids)[languages == g].mean()
                        ),
                    }
                    if label_ids is not None
                    else {}
                ),
            }
            for g in groups
        }
    if quantization == "float32":
        targets["logits_within_1e-4"] = (
            figures["max_abs_logit_difference"] <= 1e-4
        )
    elif quantization == "int8":
        targets["top1_agreement_at_least_0.99"] = (
            figures["top1_agreement"] >= 0.99
        )
        if label_ids is not None:
            targets["accuracy_drop_at_most_0.01"] = (
                figures["accuracy_drop"] <= 0.01
            )
    figures["targets"] = targets
    return figures


def parity_report(
    keras_model_path,
    tflite_path,
    texts,
    labels=None,
    languages=None,
    num_threads=1,
):
    """Parity of an exported `.tflite` with its float `.keras` model.

    Runs both on `texts` (the Keras model on the active backend, the
    `.tflite` through `LiteRTClassifier`) and compares their logits and,
    with `labels`, their accuracies. For an int8 export the targets are
    top-1 agreement of at least 99% and an accuracy at most one point
    lower; for float32, logits within 1e-4.

    Args:
        keras_model_path: the float `.keras` model.
        tflite_path: its export (with its sidecar beside it).
        texts: list of str, for example a SIB-200 test split's texts.
        labels: optional labels (names) of `texts`.
        languages: optional language of each text (SIB-200 splits carry
            them): accuracies are then means over languages.
        num_threads: int. Interpreter threads.

    Returns:
        The dict of `parity_figures`, plus `quantization`, `keras_model`
        and `tflite_model`.
    """
    from neurolite_keras.models import load_model

    texts = check_texts(texts)
    if not texts:
        raise ValueError("parity_report needs at least one text.")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"Got {len(texts)} texts but {len(labels)} labels.")
    if languages is not None and len(languages) != len(texts):
        raise ValueError(
            f"Got {len(texts)} texts but {len(languages)} languages."
        )
    runner = LiteRTClassifier(tflite_path, num_threads=num_threads)
    model = load_model(keras_model_path)
    if list(model.label_names) != runner.label_names:
        raise ValueError(
            f"{keras_model_path!r} and {tflite_path!r} have different label "
            f"names: {list(model.label_names)} vs {runner.label_names}."
        )
    quantization = runner.metadata.get("quantization", {}).get("mode")
    figures = parity_figures(
        _keras_logits(model, texts),
        runner.predict_logits(texts),
        _label_ids(model, labels),
        languages,
        quantization,
    )
    figures.update(
        {
            "quantization": quantization,
            "keras_model": os.fspath(keras_model_path),
            "tflite_model": os.fspath(tflite_path),
        }
    )
    return figures
