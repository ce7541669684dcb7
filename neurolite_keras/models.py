"""NeuroLite models: the backbone `NeuroLiteModel` and the task model
`NeuroLiteForClassification`, both functional Keras models built from a
`NeuroLiteConfig`."""

import os
import zipfile
import zlib

import keras
import numpy as np

from neurolite_keras import memory_state
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.featurizer import TextFeaturizer
from neurolite_keras.featurizer import check_texts
from neurolite_keras.layers import FNetBlock
from neurolite_keras.layers import HashProjection
from neurolite_keras.layers import HyperMixerBlock
from neurolite_keras.layers import MaskedMaxPooling
from neurolite_keras.layers import MaskedMeanPooling
from neurolite_keras.layers import MlpMixerBlock
from neurolite_keras.layers import TokenDropout
from neurolite_keras.layers.memory import AssociativeMemory
from neurolite_keras.layers.memory import EpisodicLabelReadout
from neurolite_keras.layers.memory import lexical_key_size
from neurolite_keras.layers.routing import MixtureOfExperts
from neurolite_keras.layers.symbolic import SymbolicFusion
from neurolite_keras.rules import RuleSet
from neurolite_keras.text_batches import TextBatches
from neurolite_keras.validation import check_positive_int


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
            (length, config.num_hashes),
            batch_size=batch_size,
            dtype="int32",
            name="hash_indices",
        ),
        "padding_mask": keras.Input(
            (length,),
            batch_size=batch_size,
            dtype="int32",
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
    if config.mixer_type == "hypermixer":
        return HyperMixerBlock(
            token_mixing_size=config.token_mixing_size, **common
        )
    return FNetBlock(**common)


def make_memory(config, num_labels, name):
    """The `AssociativeMemory` of a model of `config`, with lexical keys
    (`lexical_key_size` of the featurizer's `num_hashes`) unless
    `config.memory_lexical_weight` is 0."""
    weight = config.memory_lexical_weight
    return AssociativeMemory(
        num_memory_slots=config.num_memory_slots,
        num_episodic_slots=config.num_episodic_slots,
        key_size=config.memory_key_size,
        num_labels=num_labels,
        lexical_size=lexical_key_size(config.num_hashes) if weight else 0,
        lexical_weight=weight,
        label_lexical_weight=config.memory_label_lexical_weight,
        name=name,
    )


# Fields of a classifier's config that can be set on the built model.
_READOUT_SETTINGS = ("memory_readout_margin", "memory_label_lexical_weight")


def _saved_config(config):
    """A saved model's config dict, with the values that fields added
    since then had before they existed: mean pooling, no lexical keys, and
    learned keys alone in label scores."""
    before = {
        "pooling": "mean",
        "memory_lexical_weight": 0.0,
        "memory_label_lexical_weight": 0.0,
    }
    return {**before, **config}


def _call_on_texts(model, call, args, input_texts, update_memory, kwargs):
    """`model(input_texts=..., update_memory=...)` as the seed promised."""
    if input_texts is None:
        if update_memory:
            raise ValueError("`update_memory=True` needs `input_texts`.")
        return call(*args, **kwargs)
    if args or "inputs" in kwargs:
        raise ValueError(
            "Pass either feature tensors or `input_texts`, not both."
        )
    if update_memory:
        model.write_memory(input_texts)
    return call(model.featurize(input_texts), **kwargs)


def _check_x_given(x):
    if x is None:
        raise ValueError(
            "`x` is required: a list of str, or a dict of feature arrays. "
            "Received: x=None"
        )


def _is_texts(x):
    if isinstance(x, str):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "UO"
    if isinstance(x, (list, tuple)):
        return not x or not isinstance(x[0], (np.ndarray, dict))
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
            `NeuroLiteConfig.tiny()`. The model keeps a frozen copy as
            `model.config`: setting one of its fields raises, since the
            built model would not change (build a new one from
            `model.config.copy(field=...)`).
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

    def __init__(self, config=None, num_memory_labels=0, **kwargs):
        config = _as_config(config)
        # === Layers ===
        projection = HashProjection(
            config.bloom_filter_size,
            config.projection_size,
            dropout_rate=config.hash_dropout_rate,
            ignore_negative=config.minhash_scheme == "bottom_k",
            name="hash_projection",
        )
        bottleneck = keras.layers.Dense(config.hidden_size, name="bottleneck")
        bottleneck_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="bottleneck_norm"
        )
        dropout = keras.layers.Dropout(config.dropout_rate, name="dropout")
        blocks = [
            mixer_block(config, i) for i in range(config.num_mixer_layers)
        ]
        final_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="final_norm"
        )
        experts = memory = None
        if config.use_dynamic_routing:
            experts_norm = keras.layers.LayerNormalization(
                epsilon=config.layer_norm_epsilon, name="experts_norm"
            )
            experts = MixtureOfExperts(
                num_experts=config.num_experts,
                expert_size=config.expert_size,
                num_experts_per_token=config.num_experts_per_token,
                aux_loss_weight=config.router_aux_loss_weight,
                dropout_rate=config.dropout_rate,
                name="experts",
            )
        if config.use_external_memory:
            memory = make_memory(config, num_memory_labels, name="memory")

        # === Functional model ===
        inputs = feature_inputs(config)
        padding_mask = inputs["padding_mask"]
        x = projection(inputs["hash_indices"])
        x = dropout(bottleneck_norm(bottleneck(x)))
        for block in blocks:
            x = block(x, padding_mask=padding_mask)
        experts_input = None
        if experts is not None:
            experts_input = experts_norm(x)
            routed = experts(experts_input, padding_mask=padding_mask)
            routed = keras.layers.Dropout(
                config.dropout_rate, name="experts_dropout"
            )(routed)
            x = keras.layers.Add(name="experts_residual")([x, routed])
        memory_input = x
        label_scores = None
        if memory is not None and num_memory_labels:
            x, label_scores = memory(
                x,
                padding_mask=padding_mask,
                hash_indices=inputs["hash_indices"],
                return_label_scores=True,
            )
        elif memory is not None:
            x = memory(
                x,
                padding_mask=padding_mask,
                hash_indices=inputs["hash_indices"],
            )
        outputs = final_norm(x)
        if label_scores is not None:
            # A classifier's backbone also hands on, per label, how well the
            # text matches the labelled episodic slots.
            outputs = {
                "sequence_output": outputs,
                "memory_label_scores": label_scores,
            }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.config = config.frozen()
        self.num_memory_labels = num_memory_labels
        self.featurizer = TextFeaturizer.from_config(config)
        self.experts = experts
        self.memory = memory
        self.memory_texts = [None] * (
            config.num_episodic_slots if memory is not None else 0
        )
        # Sub-models up to the memory's and the experts' inputs, sharing
        # the layers, for writing, recall and routing statistics.
        self._memory_probe = (
            keras.Model(inputs, memory_input) if memory is not None else None
        )
        self._experts_probe = (
            keras.Model(inputs, experts_input) if experts is not None else None
        )

    @property
    def memory_probe(self):
        """The backbone up to the memory's input, or `None` without memory.

        A functional sub-model that shares the backbone's layers: it maps
        the feature inputs (as `featurize` returns them) to the token states
        the memory reads, `(batch, max_sequence_length, hidden_size)`, which
        `memory.write` and `memory(..., state=...)` take with the features'
        `padding_mask` and `hash_indices`.
        """
        return self._memory_probe

    def expert_usage(self, texts):
        """Each text's share of token assignments per expert, `(n, E)`."""
        if self.experts is None:
            raise ValueError(
                "This model has no experts: build it with "
                "`config.use_dynamic_routing = True`."
            )
        features = self.featurizer(check_texts(texts))
        hidden = self._experts_probe.predict_on_batch(features)
        _, usage = self.experts(
            hidden,
            padding_mask=features["padding_mask"],
            return_expert_usage=True,
        )
        return keras.ops.convert_to_numpy(usage["expert_fractions"])

    def featurize(self, texts):
        """Model inputs for `texts` (a str or a sequence of str)."""
        return self.featurizer(texts)

    def __call__(self, *args, input_texts=None, update_memory=False, **kwargs):
        return _call_on_texts(
            self, super().__call__, args, input_texts, update_memory, kwargs
        )

    # --- External memory ----------------------------------------------------

    def _require_memory(self):
        if self.memory is None:
            raise ValueError(
                "This model has no external memory: build it with "
                "`config.use_external_memory = True`."
            )

    def write_memory(self, texts, labels=None):
        """Writes one episodic slot per text; returns the slot indices.

        Slots are replaced least recently used first once the memory is
        full (see `AssociativeMemory`). `labels` (label ids, `-1` for none)
        let labelled slots vote in a classifier's predictions.
        """
        self._require_memory()
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0,), "int32")
        features = self.featurizer(texts)
        hidden = self._memory_probe.predict_on_batch(features)
        slots = self.memory.write(
            hidden,
            padding_mask=features["padding_mask"],
            labels=labels,
            hash_indices=features["hash_indices"],
        )
        for text, slot in zip(texts, np.asarray(slots).tolist()):
            if slot >= 0:
                self.memory_texts[slot] = text
        return slots

    def recall(self, texts, top_k=3):
        """The written texts each query recalls: `(text, slot, weight)`.

        The weights are the sentence-level Hopfield retrieval weights on the
        episodic slots (the long-term slots take the rest of the mass): the
        learned keys' cosine mixed with the lexical keys' (see
        `AssociativeMemory`), so a question that shares a rare word, such
        as a name, with a written text recalls it. A query without tokens
        (empty, or only spaces) recalls nothing: `[]`.
        """
        self._require_memory()
        texts = check_texts(texts)
        features = self.featurizer(texts)
        hidden = self._memory_probe.predict_on_batch(features)
        _, attention = self.memory(
            hidden,
            padding_mask=features["padding_mask"],
            hash_indices=features["hash_indices"],
            return_attention=True,
        )
        episodic = keras.ops.convert_to_numpy(attention)[
            :, self.config.num_memory_slots :
        ]
        results = []
        for row in episodic:
            # A slot of weight 0 was not recalled (an empty query gives
            # every slot 0).
            order = [
                j
                for j in np.argsort(-row)
                if self.memory_texts[j] and row[j] > 0
            ]
            results.append(
                [
                    (self.memory_texts[j], int(j), float(row[j]))
                    for j in order[:top_k]
                ]
            )
        return results

    def reset_memory(self):
        """Empties the episodic slots (learned slots stay)."""
        self._require_memory()
        self.memory.reset()
        self.memory_texts = [None] * self.config.num_episodic_slots

    def get_memory_state(self):
        """The episodic memory as a dict of NumPy arrays.

        The texts the slots came from are not part of it: they are kept in
        `memory_texts` and saved in the `.keras` file.
        """
        self._require_memory()
        return dict(self.memory.get_state())

    def set_memory_state(self, state):
        """Restores `get_memory_state()`'s output; on error nothing changes.

        `memory_texts` are forgotten, since the state does not carry them.
        """
        self._require_memory()
        self.memory.set_state(state)
        self.memory_texts = [None] * self.config.num_episodic_slots

    def save_memory_state(self, path):
        """Writes the episodic memory to a `.npz` file, atomically."""
        memory_state.save_memory_state(path, self.get_memory_state())

    def load_memory_state(self, path):
        """Reads a `.npz` memory file; on error the memory is unchanged."""
        self.set_memory_state(memory_state.load_memory_state(path))

    def get_config(self):
        return {
            "config": self.config.get_config(),
            "num_memory_labels": self.num_memory_labels,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = _saved_config(config["config"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="neurolite")
class NeuroLiteForClassification(keras.Model):
    """A text classifier: the NeuroLite backbone, masked pooling of its
    token vectors (`config.pooling`: mean, max or both) and a dense head.

    `fit`, `evaluate` and `predict` take raw texts (a list of str) as well
    as feature dicts; labels may be label names or integer ids. Outputs are
    a dict with `"logits"`, `(batch, num_labels)`.

    Args:
        config: `NeuroLiteConfig` or its dict. Defaults to
            `NeuroLiteConfig.tiny()`. The model keeps a frozen copy as
            `model.config`: setting one of its fields raises, since the
            built model would not change (build a new one from
            `model.config.copy(field=...)`).
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

    def __init__(
        self,
        config=None,
        num_labels=None,
        label_names=None,
        rules=None,
        **kwargs,
    ):
        config = _as_config(config)
        label_names = _check_labels(num_labels, label_names)
        num_labels = len(label_names)
        rules = _check_rules(rules, label_names)
        # === Layers ===
        memory_labels = num_labels if config.use_external_memory else 0
        backbone = NeuroLiteModel(
            config, num_memory_labels=memory_labels, name="backbone"
        )
        token_dropout = TokenDropout(
            config.token_dropout_rate, name="token_dropout"
        )
        poolings = []
        if config.pooling in ("mean", "mean_max"):
            poolings.append(MaskedMeanPooling(name="pooling"))
        if config.pooling in ("max", "mean_max"):
            poolings.append(MaskedMaxPooling(name="max_pooling"))
        dropout = keras.layers.Dropout(config.dropout_rate, name="head_dropout")
        fusion = None
        if config.use_symbolic_module:
            fusion = SymbolicFusion(num_labels, name="rules")
        head_query = None
        if memory_labels:
            # A cosine head in which labelled episodic slots vote like
            # trained label vectors (see `EpisodicLabelReadout`). The
            # trained vectors are matched against the pooled text after the
            # memory read, so the long-term slots, the gate and the read
            # train with the classifier; written examples are matched
            # through the memory's label scores, in the key space they were
            # written in.
            head_query = keras.layers.Dense(
                config.memory_key_size, name="head_query"
            )
            head = EpisodicLabelReadout(
                num_labels, margin=config.memory_readout_margin, name="head"
            )
        else:
            head = keras.layers.Dense(num_labels, name="head")

        # === Functional model ===
        inputs = dict(backbone.input)
        if fusion is not None:
            inputs["rule_evidence"] = keras.Input(
                (2, num_labels), dtype="float32", name="rule_evidence"
            )
        # Word dropout (training only): the backbone and the pooling both
        # skip the dropped tokens.
        padding_mask = token_dropout(inputs["padding_mask"])
        backbone_inputs = {k: inputs[k] for k in backbone.input}
        backbone_inputs["padding_mask"] = padding_mask
        hidden = backbone(backbone_inputs)
        sequence = hidden["sequence_output"] if memory_labels else hidden
        pooled = [
            pool(sequence, padding_mask=padding_mask) for pool in poolings
        ]
        if len(pooled) > 1:
            pooled = [keras.layers.Concatenate(name="pooled")(pooled)]
        pooled = dropout(pooled[0])
        if memory_labels:
            logits = head(head_query(pooled), hidden["memory_label_scores"])
        else:
            logits = head(pooled)
        if fusion is not None:
            logits = fusion(logits, inputs["rule_evidence"])
        super().__init__(inputs=inputs, outputs={"logits": logits}, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.config = config.frozen()
        self.label_names = label_names
        self.num_labels = num_labels
        self.rules = rules

    @property
    def featurizer(self):
        return self.backbone.featurizer

    def featurize(self, texts):
        """Model inputs for `texts`: features, and rule evidence if used."""
        features = self.backbone.featurize(texts)
        if self.config.use_symbolic_module:
            features["rule_evidence"] = self.rules.evaluate(
                texts, self.label_names
            )
        return features

    def __call__(self, *args, input_texts=None, update_memory=False, **kwargs):
        return _call_on_texts(
            self, super().__call__, args, input_texts, update_memory, kwargs
        )

    # --- Rules and memory ---------------------------------------------------

    def set_rules(self, rules):
        """Replaces the rule set; predictions change with no retraining."""
        if not self.config.use_symbolic_module:
            raise ValueError(
                "This model has no symbolic module: build it with "
                "`config.use_symbolic_module = True`."
            )
        self.rules = _check_rules(rules, self.label_names)

    @property
    def memory_readout_margin(self):
        """The readout's margin (see `EpisodicLabelReadout`), or `None`
        without memory. Set it to a margin chosen on held-out data: the head
        uses it at once and `config.memory_readout_margin` keeps it, so it
        is saved with the model."""
        if not self.config.use_external_memory:
            return None
        return self.get_layer("head").margin

    @property
    def memory_label_lexical_weight(self):
        """The weight of the lexical part in the label scores of written
        examples (see `AssociativeMemory`), or `None` without memory. Set
        like `memory_readout_margin`, with which it is chosen."""
        if not self.config.use_external_memory:
            return None
        return self.backbone.memory.label_lexical_weight

    def __setattr__(self, name, value):
        # The readout settings go to `_set_readout`, which checks them, not
        # through Keras' attribute tracking: on TensorFlow it skips setting
        # an attribute to the object it already holds (`None`, read from a
        # model without memory), and the check with it.
        if name in _READOUT_SETTINGS:
            self._set_readout(**{name: value})
        else:
            super().__setattr__(name, value)

    def _set_readout(self, **field):
        """Sets a readout field in the config (which checks it and keeps it
        in the saved model) and in the layer that reads it at each call."""
        if not self.config.use_external_memory:
            ((name, value),) = field.items()
            raise ValueError(
                f"This model has no external memory, so no `{name}` "
                f"(received {value!r}): build it with "
                "`config.use_external_memory = True`."
            )
        self.config = self.config.copy(**field).frozen()
        self.backbone.config = self.backbone.config.copy(**field).frozen()
        self.get_layer("head").margin = self.config.memory_readout_margin
        self.backbone.memory.label_lexical_weight = (
            self.config.memory_label_lexical_weight
        )
        # Traced step functions hold the old values as constants.
        for model in (self, self.backbone):
            model.train_function = None
            model.test_function = None
            model.predict_function = None

    def write_memory(self, texts, labels=None):
        """Writes texts into episodic memory; labels (names or ids) let
        them vote for their label, including one never seen in training."""
        texts = check_texts(texts)
        if labels is not None and len(labels) != len(texts):
            raise ValueError(
                f"`write_memory` got {len(texts)} texts but {len(labels)} "
                f"labels: give one label per text. Received: labels="
                f"{labels!r:.200}"
            )
        ids = None if labels is None else self.encode_labels(labels)
        return self.backbone.write_memory(texts, ids)

    def recall(self, texts, top_k=3):
        return self.backbone.recall(texts, top_k)

    def reset_memory(self):
        self.backbone.reset_memory()

    def get_memory_state(self):
        return self.backbone.get_memory_state()

    def set_memory_state(self, state):
        self.backbone.set_memory_state(state)

    def save_memory_state(self, path):
        self.backbone.save_memory_state(path)

    def load_memory_state(self, path):
        self.backbone.load_memory_state(path)

    def explain(self, texts, top_k=3):
        """Per text: top labels, fired rules, expert usage, recalled slots."""
        texts = check_texts(texts)
        results = [
            {"text": t, "labels": labels}
            for t, labels in zip(texts, self.classify(texts, top_k))
        ]
        if self.config.use_symbolic_module:
            for result, fired in zip(results, self.rules.explain(texts)):
                result["rules"] = fired
        if self.config.use_dynamic_routing:
            usage = self.backbone.expert_usage(texts)
            for result, fractions in zip(results, usage):
                result["experts"] = [round(float(f), 4) for f in fractions]
        if self.config.use_external_memory:
            for result, recalled in zip(results, self.recall(texts, top_k)):
                result["memory"] = recalled
        return results

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
            elif (
                isinstance(label, (int, np.integer))
                and not isinstance(label, bool)
                and 0 <= label < self.num_labels
            ):
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

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
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
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, **kwargs
        )

    def compile_from_config(self, config):
        # Restores what `compile` was given when the model was saved (Keras'
        # own version skips, with a warning, a model whose `compile` is
        # overridden, and then the loaded model cannot `evaluate`).
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            # So that the saved optimizer variables load into it.
            self.optimizer.build(self.trainable_variables)

    def _batches(self, x, y=None, batch_size=None, shuffle=False):
        texts = check_texts(x, "x")
        labels = None if y is None else self.encode_labels(y)
        return TextBatches(
            texts,
            labels,
            self.featurize,
            batch_size=32 if batch_size is None else batch_size,
            shuffle=shuffle,
        )

    def _labelled_batches(
        self, x, y, batch_size=None, shuffle=False, names=("x", "y")
    ):
        """`_batches` of labelled texts, checked before Keras sees them.

        A Keras loop that fails midway can leave a JAX model without its
        weights, so whatever can be checked is checked here.
        """
        x_name, y_name = names
        texts = check_texts(x, x_name)
        if y is None:
            raise ValueError(
                f"`{y_name}` is required with raw texts: one label (name or "
                f"id) per text of `{x_name}`. Received: {y_name}=None"
            )
        if not texts:
            raise ValueError(
                f"`{x_name}` is empty: at least one text is needed. "
                f"Received: {x_name}={x!r}"
            )
        labels = self.encode_labels(y)
        if len(labels) != len(texts):
            raise ValueError(
                f"`{x_name}` has {len(texts)} text(s) but `{y_name}` has "
                f"{len(labels)} label(s)."
            )
        return self._batches(texts, labels, batch_size, shuffle=shuffle)

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        validation_data=None,
        shuffle=True,
        **kwargs,
    ):
        """`keras.Model.fit`, also on raw texts and label names.

        With `x` a list of str and `y` labels, batches are featurized on the
        fly; `validation_data` may then be a `(texts, labels)` pair. Raw
        texts are checked before Keras runs (labels given, at least one
        text, one label per text), and so is `epochs`: a bad call raises a
        `ValueError` and leaves the model as it was.
        """
        check_positive_int("epochs", kwargs.get("epochs", 1))
        _check_x_given(x)
        # TODO: feature dicts are left to Keras' own checks. Under JAX a
        # Keras `fit` whose first step raises cannot put the weights back
        # (it drops them before that step), so the model stays broken.
        if _is_texts(x):
            x = self._labelled_batches(x, y, batch_size, shuffle=shuffle)
            y = batch_size = None
            if validation_data is not None:
                if (
                    not isinstance(validation_data, (tuple, list))
                    or len(validation_data) != 2
                ):
                    raise ValueError(
                        "With raw texts, `validation_data` must be a "
                        "`(texts, labels)` pair. Received: "
                        f"{type(validation_data).__name__}"
                    )
                val_x, val_y = validation_data
                validation_data = self._labelled_batches(
                    val_x,
                    val_y,
                    x.batch_size,
                    names=("validation_data[0]", "validation_data[1]"),
                )
        return super().fit(
            x,
            y,
            batch_size=batch_size,
            validation_data=validation_data,
            shuffle=shuffle,
            **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.evaluate`, also on raw texts and label names.

        Raw texts are checked as in `fit`.
        """
        _check_x_given(x)
        if _is_texts(x):
            x = self._labelled_batches(x, y, batch_size)
            y = batch_size = None
        return super().evaluate(x, y, batch_size=batch_size, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", **kwargs):
        """`keras.Model.predict`, also on raw texts: returns `{"logits"}`.

        An empty list of texts gives logits of shape `(0, num_labels)`;
        `x=None` raises a `ValueError`.
        """
        _check_x_given(x)
        if _is_texts(x):
            texts = check_texts(x, "x")
            if not texts:
                return {"logits": np.zeros((0, self.num_labels), "float32")}
            x, batch_size = self._batches(texts, batch_size=batch_size), None
        return super().predict(
            x, batch_size=batch_size, verbose=verbose, **kwargs
        )

    def predict_proba(self, texts, batch_size=64):
        """Class probabilities, `(len(texts), num_labels)` float32."""
        logits = self.predict(texts, batch_size=batch_size, verbose=0)
        return _softmax(np.asarray(logits["logits"], dtype="float64"))

    def classify(self, texts, top_k=1, batch_size=64):
        """The `top_k` (label, probability) pairs of each text, best first."""
        probabilities = self.predict_proba(texts, batch_size=batch_size)
        top_k = min(check_positive_int("top_k", top_k), self.num_labels)
        order = np.argsort(-probabilities, axis=1)[:, :top_k]
        return [
            [(self.label_names[j], float(row[j])) for j in best]
            for row, best in zip(probabilities, order)
        ]

    def get_config(self):
        config = {
            "config": self.config.get_config(),
            "label_names": list(self.label_names),
            "name": self.name,
            "trainable": self.trainable,
        }
        if self.config.use_symbolic_module:
            config["rules"] = self.rules.to_dict()
        if self.config.use_external_memory:
            # The slot vectors are weights; the texts they came from ride in
            # the config so that `recall` can name them after reloading.
            config["memory_texts"] = list(self.backbone.memory_texts)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        memory_texts = config.pop("memory_texts", None)
        config["config"] = _saved_config(config["config"])
        model = cls(**config)
        if memory_texts is not None:
            model.backbone.memory_texts = list(memory_texts)
        return model


def _check_rules(rules, label_names):
    if rules is None:
        return RuleSet()
    if isinstance(rules, dict):
        rules = RuleSet.from_dict(rules)
    if not isinstance(rules, RuleSet):
        raise ValueError(
            "`rules` must be a RuleSet or its dict. "
            f"Received: {type(rules).__name__}"
        )
    rules.check_labels(label_names)
    return rules


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
        if (
            isinstance(num_labels, bool)
            or not isinstance(num_labels, int)
            or num_labels < 1
        ):
            raise ValueError(
                "`num_labels` must be a positive integer. "
                f"Received: num_labels={num_labels!r}"
            )
        label_names = [str(i) for i in range(num_labels)]
    if not label_names:
        raise ValueError("A classifier needs at least one label.")
    return label_names


def load_model(path):
    """Loads a NeuroLite `.keras` file, compiled as it was when saved.

    A classifier saved without being compiled is compiled with the
    defaults of `NeuroLiteForClassification.compile`, so that `evaluate`
    works.

    Raises:
        FileNotFoundError: there is no file at `path`.
        ValueError: the file is there but is not a readable `.keras`
            archive (a truncated copy, or some other kind of file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}")
    if path.endswith(".keras"):
        _check_keras_archive(path)
    model = keras.saving.load_model(path)
    if isinstance(model, NeuroLiteForClassification) and not model.compiled:
        model.compile()
    return model


def _check_keras_archive(path):
    """Raises a `ValueError` unless `path` is a whole `.keras` zip."""
    problem = None
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            if damaged is not None:
                problem = f"its member {damaged!r} is damaged"
            elif "config.json" not in archive.namelist():
                problem = "it has no config.json"
    except (zipfile.BadZipFile, EOFError, zlib.error):
        problem = "it is not a zip file"
    if problem:
        raise ValueError(
            f"{path!r} exists but is not a readable .keras archive "
            f"({problem}): it may be truncated, or not a Keras model."
        )
