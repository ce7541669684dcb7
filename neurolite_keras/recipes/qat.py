"""Quantization-aware fine-tuning of a classifier before an int8 export.

`quantization_aware_fine_tune` wraps a classifier in a
`QuantizationAwareModel` (fake int8 weights) and trains it on the active
backend toward the float model's own predictions, so the full-integer
export (`neurolite_keras.recipes.export.export_model` with
`qat_epochs > 0`) follows the float model closely.
"""

import keras
import numpy as np

from neurolite_keras.featurizer import check_texts
from neurolite_keras.quantization import QuantizationAwareModel


def quantization_aware_fine_tune(
    model,
    texts,
    labels=None,
    epochs=1,
    per_channel=True,
    distillation=1.0,
    batch_size=32,
    learning_rate=1e-5,
    verbose=0,
):
    """Fine-tunes a classifier in place with fake int8 weights.

    Wraps `model` in a `QuantizationAwareModel`, sets its output range from
    a first batch, and trains it with AdamW on the active backend. The
    targets are soft: a mix of the float model's own predictions, taken
    before fine-tuning (self-distillation, weight `distillation`), and the
    one-hot labels (weight `1 - distillation`). Distillation keeps the
    quantized model's decisions close to the float model's, which is what
    the export's parity targets measure. `model`'s own variables are
    updated: export it afterwards with the same `per_channel`.

    Args:
        model: a `NeuroLiteForClassification`.
        texts: list of str, training texts.
        labels: their labels (names or ids); needed when `distillation`
            is below 1.
        epochs: int. Defaults to `1`.
        per_channel: bool. Weight scales per output unit or per tensor.
        distillation: float in [0, 1]. Defaults to `1.0`.
        batch_size: int. Defaults to `32`.
        learning_rate: float. Small, so that the model stays close to the
            float one it starts from. Defaults to `1e-5`.
        verbose: Keras' progress setting. Defaults to `0`.

    Returns:
        The Keras `History`.
    """
    texts = check_texts(texts, "train_texts")
    if not texts:
        raise ValueError("Quantization-aware training needs training texts.")
    if (
        isinstance(distillation, bool)
        or not isinstance(distillation, (int, float))
        or not 0.0 <= distillation <= 1.0
    ):
        raise ValueError(
            "`distillation` must be a number in [0, 1]. "
            f"Received: distillation={distillation!r}"
        )
    features = model.featurize(texts)
    teacher = model.predict(features, batch_size=64, verbose=0)["logits"]
    teacher = np.asarray(teacher, dtype="float64")
    teacher = np.exp(teacher - teacher.max(axis=1, keepdims=True))
    targets = distillation * teacher / teacher.sum(axis=1, keepdims=True)
    if distillation < 1.0:
        if labels is None:
            raise ValueError(
                f"distillation={distillation} mixes in the labels: pass "
                "`labels`."
            )
        ids = model.encode_labels(labels)
        if len(ids) != len(texts):
            raise ValueError(f"Got {len(texts)} texts but {len(ids)} labels.")
        targets += (1.0 - distillation) * np.eye(model.num_labels)[ids]
    qat = QuantizationAwareModel(model, per_channel=per_channel)
    qat.calibrate({name: value[:64] for name, value in features.items()})
    qat.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.0),
        loss={"logits": keras.losses.CategoricalCrossentropy(from_logits=True)},
    )
    return qat.fit(
        features,
        {"logits": targets.astype("float32")},
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=verbose,
    )
