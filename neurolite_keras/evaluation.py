"""Accuracy of any predictor on labelled texts, per language when known.

A predictor is anything with `label_names` and `predict_proba(texts)`: the
Keras classifier and the LiteRT runner alike, so both are scored by the same
code.
"""

import collections
import warnings

import numpy as np


def evaluate_predictor(predictor, split, batch_size=64):
    """Scores `predictor` on a `TextSplit`.

    Labels the model never saw in training cannot be predicted: their
    examples count as errors, are tallied under `unknown_labels`, and a
    warning says so (rather than the evaluation failing).

    Returns:
        A dict with `accuracy`, `num_examples`, `unknown_labels` (label ->
        count) and, when the split has languages, `per_language` (language
        -> accuracy) and `accuracy` as the mean over languages, with
        `pooled_accuracy` over all examples.
    """
    if not len(split):
        raise ValueError("Cannot evaluate on an empty split.")
    kwargs = {"batch_size": batch_size} if batch_size else {}
    try:
        probabilities = predictor.predict_proba(split.texts, **kwargs)
    except TypeError:
        probabilities = predictor.predict_proba(split.texts)
    predicted = np.argmax(probabilities, axis=1)
    index = {name: i for i, name in enumerate(predictor.label_names)}
    truth = np.array([index.get(str(label), -1) for label in split.labels])
    unknown = collections.Counter(
        str(label) for label, t in zip(split.labels, truth) if t < 0
    )
    if unknown:
        warnings.warn(
            f"{sum(unknown.values())} example(s) carry labels the model was "
            f"not trained on ({', '.join(sorted(unknown))}); they count as "
            "errors.",
            stacklevel=2,
        )
    correct = predicted == truth
    result = {
        "accuracy": float(correct.mean()),
        "num_examples": int(len(correct)),
        "unknown_labels": dict(sorted(unknown.items())),
    }
    if split.languages is not None:
        languages = np.array(split.languages)
        per_language = {
            lang: float(correct[languages == lang].mean())
            for lang in dict.fromkeys(split.languages)
        }
        result["pooled_accuracy"] = result["accuracy"]
        result["accuracy"] = float(np.mean(list(per_language.values())))
        result["per_language"] = per_language
    return result
