"""The episodic memory of a classifier as explicit TFLite state.

`memory_serving_model` rebuilds a classifier with
`use_external_memory=True` as a batch-1 functional model whose memory
reads the state arrays of `neurolite_keras.memory_state` as inputs and
returns their updated values as `new_<name>` outputs; `memory_layer`
finds a classifier's memory, and `_memory_sidecar` describes the state
tensors for the sidecar `neurolite_keras.recipes.export` writes.
"""

import keras

from neurolite_keras import memory_state
from neurolite_keras.layers.memory import AssociativeMemory
from neurolite_keras.litert_runner import MEMORY_STATE_OUTPUT_PREFIX

MEMORY_INPUT_DESCRIPTIONS = {
    "write_mask": "1.0 to write this text into episodic memory, 0.0 to "
    "only read",
    "write_labels": "label id of the text written (-1: none)",
    **{
        name: f"episodic memory state `{name}` (see "
        "neurolite_keras.memory_state); feed back the `new_` output"
        for name in memory_state.STATE_FIELDS
    },
}


def memory_layer(model):
    """The classifier's `AssociativeMemory`, or `None` without one."""
    config = getattr(model, "config", None)
    if config is None or not config.use_external_memory:
        return None
    return model.backbone.memory


def memory_serving_model(model):
    """The classifier as TFLite runs it: episodic state in, new state out.

    Builds a functional model over the same layers (so the same weights)
    as `model`, batch 1, whose memory reads the state given as inputs and
    returns the updated state instead of changing its variables (the
    explicit-state form of `AssociativeMemory`). One call reads one text
    and, when `write_mask` is 1, also writes it with label `write_labels`.

    Inputs: `hash_indices`, `padding_mask` (as the featurizer gives them,
    batch 1), `write_mask` float32 `(1,)`, `write_labels` int32 `(1,)`,
    and the five state arrays of `neurolite_keras.memory_state`, shaped by
    slot (no batch dimension); with a symbolic module also
    `rule_evidence`. Outputs: `logits`, `memory_attention` (the
    sentence-level retrieval weights, long-term slots first) and
    `new_<name>` for each state array.

    Args:
        model: a `NeuroLiteForClassification` built with
            `use_external_memory=True`.

    Returns:
        A `keras.Model`.
    """
    memory = memory_layer(model)
    if memory is None:
        raise ValueError(
            f"{model.name!r} has no episodic memory: build it with "
            "`config.use_external_memory = True`."
        )
    config = model.config
    length = config.max_sequence_length
    inputs = {
        "hash_indices": keras.Input(
            batch_shape=(1, length, config.num_hashes),
            dtype="int32",
            name="hash_indices",
        ),
        "padding_mask": keras.Input(
            batch_shape=(1, length), dtype="int32", name="padding_mask"
        ),
        "write_mask": keras.Input(
            batch_shape=(1,), dtype="float32", name="write_mask"
        ),
        "write_labels": keras.Input(
            batch_shape=(1,), dtype="int32", name="write_labels"
        ),
    }
    shapes = memory_state.memory_state_shapes(
        memory.num_episodic_slots,
        memory.key_size,
        memory.value_size,
        memory.lexical_size,
    )
    for name in memory_state.STATE_FIELDS:
        inputs[name] = keras.Input(
            batch_shape=shapes[name],
            dtype="float32" if name in memory_state.FLOAT_FIELDS else "int32",
            name=name,
        )
    features = {k: inputs[k] for k in ("hash_indices", "padding_mask")}
    # The backbone up to the memory's input, sharing its layers.
    hidden = model.backbone.memory_probe(features)
    # A copy of the memory with the same weights: a functional model checks
    # its graph with the output structure of a layer's first call, which
    # for the classifier's memory has no state outputs.
    stateful = AssociativeMemory.from_config(memory.get_config())
    stateful.build(hidden.shape)
    stateful.set_weights(memory.get_weights())
    stream, attention, label_scores, new_state = stateful(
        hidden,
        padding_mask=inputs["padding_mask"],
        hash_indices=inputs["hash_indices"],
        return_attention=True,
        return_label_scores=True,
        state={name: inputs[name] for name in memory_state.STATE_FIELDS},
        write_mask=inputs["write_mask"],
        write_labels=inputs["write_labels"],
    )
    # The classifier's layers after the memory (head dropout is a no-op at
    # inference).
    stream = model.backbone.get_layer("final_norm")(stream)
    pooled = _pooled(model, stream, inputs["padding_mask"])
    logits = model.get_layer("head")(
        model.get_layer("head_query")(pooled), label_scores
    )
    if config.use_symbolic_module:
        inputs["rule_evidence"] = keras.Input(
            batch_shape=(1, 2, model.num_labels),
            dtype="float32",
            name="rule_evidence",
        )
        logits = model.get_layer("rules")(logits, inputs["rule_evidence"])
    outputs = {"logits": logits, "memory_attention": attention}
    for name in memory_state.STATE_FIELDS:
        outputs[MEMORY_STATE_OUTPUT_PREFIX + name] = new_state[name]
    return keras.Model(inputs, outputs, name=f"{model.name}_with_state")


def _pooled(model, stream, padding_mask):
    """`stream` pooled by the classifier's own pooling layers: mean
    (`pooling`) and / or max (`max_pooling`), joined by its `pooled` layer
    when it has both."""
    names = {layer.name for layer in model.layers}
    pooled = [
        model.get_layer(name)(stream, padding_mask=padding_mask)
        for name in ("pooling", "max_pooling")
        if name in names
    ]
    if len(pooled) > 1:
        return model.get_layer("pooled")(pooled)
    return pooled[0]


def _memory_sidecar(memory):
    """The sidecar's `memory` section: sizes and tensor names."""
    shapes = memory_state.memory_state_shapes(
        memory.num_episodic_slots,
        memory.key_size,
        memory.value_size,
        memory.lexical_size,
    )
    return {
        "num_memory_slots": memory.num_memory_slots,
        "num_episodic_slots": memory.num_episodic_slots,
        "key_size": memory.key_size,
        "lexical_size": memory.lexical_size,
        "lexical_weight": memory.lexical_weight,
        "value_size": memory.value_size,
        "num_labels": memory.num_labels,
        "state_format": memory_state.FORMAT_VERSION,
        "write_mask_input": "write_mask",
        "write_labels_input": "write_labels",
        "attention_output": "memory_attention",
        "state": [
            {
                "name": name,
                "input": name,
                "output": MEMORY_STATE_OUTPUT_PREFIX + name,
                "shape": list(shapes[name]),
                "dtype": "float32"
                if name in memory_state.FLOAT_FIELDS
                else "int32",
            }
            for name in memory_state.STATE_FIELDS
        ],
    }
