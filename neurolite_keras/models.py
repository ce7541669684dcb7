"""NeuroLite models: the backbone `NeuroLiteModel` and the task model
`NeuroLiteForClassification`, both functional Keras models built from a
`NeuroLiteConfig`."""

import os

import keras
import numpy as np

from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.featurizer import TextFeaturizer
from neurolite_keras.featurizer import check_texts
from neurolite_keras.layers import HashProjection
from neurolite_keras.layers import MaskedMeanPooling
from neurolite_keras.layers import MlpMixerBlock
from neurolite_keras.text_batches import TextBatches


def _as_config(config):
    if config is None:
        return NeuroLiteConfig.tiny()
    if isinstance(config, NeuroLiteConfig):
        return config.copy()
    if isinstance(config, dict):
        return NeuroLiteConfig.from_config(config)
    raise ValueError(
        "`config` must be a NeuroLiteConfig or a dict. "
        f"Received: {type(config).__name__}"
    )


def feature_inputs(config, batch_size=None):
    """The `keras.Input`s of a model: what `TextFeaturizer` produces."""
    length = config.max_sequence_length
    return {
        "hash_indices": keras.Input(
            (length, config.num_hashes), batch_size=batch_size,
            dtype="int32", name="hash_indices",
        ),
        "padding_mask": keras.Input(
            (length,), batch_size=batch_size, dtype="int32",
            name="padding_mask",
        ),
    }


def mixer_block(config, index):
    """The token-mixing block `config.mixer_type` selects."""
    common = {
        "channel_mixing_size": config.channel_mixing_size,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "name": f"mixer_{index}",
    }
    if config.mixer_type == "mlp":
        return MlpMixerBlock(
            sequence_length=config.max_sequence_length,
            token_mixing_size=config.token_mixing_size,
            **common,
        )
    raise ValueError(f"Unknown mixer_type {config.mixer_type!r}")


def _is_texts(x):
    if isinstance(x, str):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "UO"
    if isinstance(x, (list, tuple)) and x:
        return not isinstance(x[0], (np.ndarray, dict))
    return False


@keras.saving.register_keras_serializable(package="neurolite")
class NeuroLiteModel(keras.Model):
    """The NeuroLite backbone: texts to contextual token vectors.

    A functional model over the featurizer's outputs: the hashing projection
    (an embedding bag over counting-Bloom-filter indices, no vocabulary),
    a dense bottleneck, then `num_mixer_layers` token-mixing blocks of
    `mixer_type`. Cost grows linearly with the sequence length.

    Besides feature tensors, it accepts raw texts as in the original
    interface: `model(input_texts=[...])` featurizes them first.

    Args:
        config: `NeuroLiteConfig` or its dict. Defaults to
            `NeuroLiteConfig.tiny()`.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Inputs:
        A dict with `hash_indices`, int32 `(batch, max_sequence_length,
        num_hashes)`, and `padding_mask`, int32 `(batch,
        max_sequence_length)`, as `featurize` returns.

    Returns:
        Float tensor `(batch, max_sequence_length, hidden_size)`. Vectors at
        padded positions carry no meaning; use the padding mask.

    Example:

    >>> model = NeuroLiteModel(NeuroLiteConfig.tiny(hidden_size=32))
    >>> outputs = model(input_texts=["NeuroLite est léger."])
    >>> tuple(outputs.shape)
    (1, 64, 32)
    """

    def __init__(self, config=None, **kwargs):
        config = _as_config(config)
        # === Layers ===
        projection = HashProjection(
            config.bloom_filter_size, config.projection_size,
            name="hash_projection",
        )
        bottleneck = keras.layers.Dense(config.hidden_size, name="bottleneck")
        bottleneck_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="bottleneck_norm"
        )
        dropout = keras.layers.Dropout(config.dropout_rate, name="dropout")
        blocks = [mixer_block(config, i) for i in range(config.num_mixer_layers)]
        final_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="final_norm"
        )

        # === Functional model ===
        inputs = feature_inputs(config)
        padding_mask = inputs["padding_mask"]
        x = projection(inputs["hash_indices"])
        x = dropout(bottleneck_norm(bottleneck(x)))
        for block in blocks:
            x = block(x, padding_mask=padding_mask)
        outputs = final_norm(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.config = config
        self.featurizer = TextFeaturizer.from_config(config)

    def featurize(self, texts):
        """Model inputs for `texts` (a str or a sequence of str)."""
        return self.featurizer(texts)

    def __call__(self, *args, input_texts=None, **kwargs):
        if input_texts is None:
            return super().__call__(*args, **kwargs)
        if args or "inputs" in kwargs:
            raise ValueError(
                "Pass either feature tensors or `input_texts`, not both."
            )
        return super().__call__(self.featurize(input_texts), **kwargs)

    def get_config(self):
        return {
            "config": self.config.get_config(),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="neurolite")
class NeuroLiteForClassification(keras.Model):
    """A text classifier: the NeuroLite backbone, masked mean pooling and a
    dense head.

    `fit`, `evaluate` and `predict` take raw texts (a list of str) as well
    as feature dicts; labels may be label names or integer ids. Outputs are
    a dict with `"logits"`, `(batch, num_labels)`.

    Args:
        config: `NeuroLiteConfig` or its dict. Defaults to
            `NeuroLiteConfig.tiny()`.
        num_labels: int. Number of classes. Defaults to the length of
            `label_names`, else `2`.
        label_names: list of str, or `None` for `"0"`, `"1"`...
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:

    >>> model = NeuroLiteForClassification(
    ...     NeuroLiteConfig.tiny(hidden_size=32), label_names=["neg", "pos"])
    >>> outputs = model(input_texts=["Texte à classifier"])
    >>> tuple(outputs["logits"].shape)
    (1, 2)
    """

    def __init__(self, config=None, num_labels=None, label_names=None,
                 **kwargs):
        config = _as_config(config)
        label_names = _check_labels(num_labels, label_names)
        # === Layers ===
        backbone = NeuroLiteModel(config, name="backbone")
        pooling = MaskedMeanPooling(name="pooling")
        dropout = keras.layers.Dropout(config.dropout_rate, name="head_dropout")
        head = keras.layers.Dense(len(label_names), name="logits")

        # === Functional model ===
        inputs = dict(backbone.input)
        hidden = backbone(inputs)
        pooled = dropout(pooling(hidden, padding_mask=inputs["padding_mask"]))
        outputs = {"logits": head(pooled)}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.config = config
        self.label_names = label_names
        self.num_labels = len(label_names)

    @property
    def featurizer(self):
        return self.backbone.featurizer

    def featurize(self, texts):
        """Model inputs for `texts` (a str or a sequence of str)."""
        return self.backbone.featurize(texts)

    def __call__(self, *args, input_texts=None, **kwargs):
        if input_texts is None:
            return super().__call__(*args, **kwargs)
        if args or "inputs" in kwargs:
            raise ValueError(
                "Pass either feature tensors or `input_texts`, not both."
            )
        return super().__call__(self.featurize(input_texts), **kwargs)

    # --- Labels -----------------------------------------------------------

    def encode_labels(self, labels):
        """Label ids for `labels` (names or ids); raises on unknown ones."""
        labels = list(np.asarray(labels).reshape(-1).tolist())
        index = {name: i for i, name in enumerate(self.label_names)}
        ids, unknown = [], []
        for label in labels:
            if isinstance(label, str):
                if label not in index:
                    unknown.append(label)
                    continue
                ids.append(index[label])
            elif isinstance(label, (int, np.integer)) and not isinstance(
                label, bool
            ) and 0 <= label < self.num_labels:
                ids.append(int(label))
            else:
                unknown.append(label)
        if unknown:
            shown = sorted({repr(u) for u in unknown})[:10]
            raise ValueError(
                f"{len(unknown)} label(s) unknown to this model: "
                f"{', '.join(shown)}. Known labels: {self.label_names}"
            )
        return np.array(ids, dtype="int32")

    # --- Training and inference on raw text -------------------------------

    def compile(self, optimizer="auto", loss="auto", metrics="auto",
                **kwargs):
        """`keras.Model.compile` with defaults for text classification.

        `"auto"` means AdamW (learning rate 2e-3), sparse categorical
        cross-entropy on the logits, and accuracy.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(2e-3, weight_decay=0.01)
        if loss == "auto":
            loss = {
                "logits": keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                )
            }
        if metrics == "auto":
            metrics = {
                "logits": [
                    keras.metrics.SparseCategoricalAccuracy(name="accuracy")
                ]
            }
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)

    def compile_from_config(self, config):
        # Restores what `compile` was given when the model was saved.
        return super().compile_from_config(config)

    def _batches(self, x, y=None, batch_size=None, shuffle=False):
        texts = check_texts(x, "x")
        labels = None if y is None else self.encode_labels(y)
        return TextBatches(
            texts, labels, self.featurize, batch_size=batch_size or 32,
            shuffle=shuffle,
        )

    def fit(self, x=None, y=None, batch_size=None, validation_data=None,
            shuffle=True, **kwargs):
        """`keras.Model.fit`, also on raw texts and label names.

        With `x` a list of str and `y` labels, batches are featurized on the
        fly; `validation_data` may then be a `(texts, labels)` pair.
        """
        if _is_texts(x):
            x = self._batches(x, y, batch_size, shuffle=shuffle)
            y = batch_size = None
            if validation_data is not None:
                val_x, val_y = validation_data
                validation_data = self._batches(val_x, val_y, x.batch_size)
        return super().fit(x, y, batch_size=batch_size,
                           validation_data=validation_data, shuffle=shuffle,
                           **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.evaluate`, also on raw texts and label names."""
        if _is_texts(x):
            x, y, batch_size = self._batches(x, y, batch_size), None, None
        return super().evaluate(x, y, batch_size=batch_size, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", **kwargs):
        """`keras.Model.predict`, also on raw texts: returns `{"logits"}`."""
        if _is_texts(x):
            texts = check_texts(x, "x")
            if not texts:
                return {"logits": np.zeros((0, self.num_labels), "float32")}
            x, batch_size = self._batches(texts, batch_size=batch_size), None
        return super().predict(x, batch_size=batch_size, verbose=verbose,
                               **kwargs)

    def predict_proba(self, texts, batch_size=64):
        """Class probabilities, `(len(texts), num_labels)` float32."""
        logits = self.predict(texts, batch_size=batch_size, verbose=0)
        return _softmax(np.asarray(logits["logits"], dtype="float64"))

    def classify(self, texts, top_k=1, batch_size=64):
        """The `top_k` (label, probability) pairs of each text, best first."""
        probabilities = self.predict_proba(texts, batch_size=batch_size)
        top_k = max(1, min(int(top_k), self.num_labels))
        order = np.argsort(-probabilities, axis=1)[:, :top_k]
        return [
            [(self.label_names[j], float(row[j])) for j in best]
            for row, best in zip(probabilities, order)
        ]

    def get_config(self):
        return {
            "config": self.config.get_config(),
            "label_names": list(self.label_names),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype("float32")


def _check_labels(num_labels, label_names):
    if label_names is not None:
        if isinstance(label_names, str):
            raise ValueError(
                "`label_names` must be a list of str, not one str. "
                f"Received: {label_names!r}"
            )
        label_names = [str(name) for name in label_names]
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"`label_names` has duplicates: {label_names}")
        if num_labels is not None and num_labels != len(label_names):
            raise ValueError(
                f"`num_labels`={num_labels} but {len(label_names)} label "
                "names were given."
            )
    else:
        if num_labels is None:
            num_labels = 2
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) \
                or num_labels < 1:
            raise ValueError(
                "`num_labels` must be a positive integer. "
                f"Received: num_labels={num_labels!r}"
            )
        label_names = [str(i) for i in range(num_labels)]
    if not label_names:
        raise ValueError("A classifier needs at least one label.")
    return label_names


def load_model(path):
    """Loads a NeuroLite `.keras` file, with a clear error if it is missing."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}")
    return keras.saving.load_model(path)
