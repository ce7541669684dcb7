"""Tests of `MixtureOfExperts`: shapes, routing against a NumPy reference,
the auxiliary loss on every backend, saving, usage statistics and TFLite."""

import math
import os
import warnings

import keras
import numpy as np
import pytest
from harness import check_layer

from neurolite_keras.layers.pooling import MaskedMeanPooling
from neurolite_keras.layers.routing import ExpertUsageCallback
from neurolite_keras.layers.routing import MixtureOfExperts
from neurolite_keras.layers.routing import load_balancing_loss
from neurolite_keras.layers.routing import moe_parameter_counts
from neurolite_keras.layers.symbolic import SymbolicFusion

BACKEND = keras.backend.backend()
# The docstring examples' sizes, so that JAX compiles each shape once.
HIDDEN, EXPERTS, EXPERT_SIZE, LABELS = 6, 4, 8, 3


def _as_numpy(x):
    return keras.ops.convert_to_numpy(x)


# --- A NumPy reference of the layer and of a tiny classifier around it ---

_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_moe(x, mask, weights, k, capacity_factor=None, training=False):
    """Returns (outputs, aux loss) in float64, computed token by token."""
    router, w_in, b_in, w_out, b_out = (np.float64(w) for w in weights)
    x, mask = np.float64(x), np.float64(mask)
    num_experts = router.shape[1]
    probs = _softmax(x @ router)
    top = np.argsort(-probs, axis=-1)[..., :k]
    top_p = np.take_along_axis(probs, top, -1)
    if k > 1:
        top_p = top_p / top_p.sum(-1, keepdims=True)
    batch, length = mask.shape
    keep = np.ones((batch, length, k))
    if training and capacity_factor is not None:
        capacity = max(
            math.ceil(capacity_factor * k * mask.sum() / num_experts), 1
        )
        load = np.zeros(num_experts)
        for slot in range(k):
            for b in range(batch):
                for s in range(length):
                    if not mask[b, s]:
                        continue
                    expert = top[b, s, slot]
                    load[expert] += 1
                    keep[b, s, slot] = load[expert] <= capacity
    outputs = np.zeros_like(x)
    chosen = np.zeros((batch, length, num_experts))
    for b in range(batch):
        for s in range(length):
            if not mask[b, s]:
                continue
            for slot in range(k):
                e = top[b, s, slot]
                chosen[b, s, e] = 1.0
                hidden = _gelu(x[b, s] @ w_in[e] + b_in[e])
                expert_out = hidden @ w_out[e] + b_out[e]
                outputs[b, s] += (
                    keep[b, s, slot] * top_p[b, s, slot] * (expert_out)
                )
    real = mask.reshape(-1).astype(bool)
    shares = chosen.reshape(-1, num_experts)[real].sum(0)
    shares = shares / max(shares.sum(), 1.0)
    mean_probs = probs.reshape(-1, num_experts)[real].mean(0)
    aux = num_experts * float(np.sum(shares * mean_probs))
    return outputs, aux


def reference_classifier_loss(
    x, mask, labels, moe_weights, head_weights, k, capacity_factor, aux_weight
):
    routed, aux = reference_moe(
        x, mask, moe_weights, k, capacity_factor, training=True
    )
    pooled = (routed * mask[..., None]).sum(1) / np.maximum(
        mask.sum(1, keepdims=True), 1.0
    )
    logits = pooled @ np.float64(head_weights[0]) + np.float64(head_weights[1])
    log_probs = np.log(_softmax(logits))
    task = -np.mean(log_probs[np.arange(len(labels)), labels])
    return task + aux_weight * aux


def _batch(seed=0, batch=3, length=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, HIDDEN)).astype("float32")
    mask = np.ones((batch, length), "float32")
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    labels = rng.integers(0, LABELS, batch).astype("int32")
    return x, mask, labels


def _moe_weights(seed=1):
    rng = np.random.default_rng(seed)
    shapes = [
        (HIDDEN, EXPERTS),
        (EXPERTS, HIDDEN, EXPERT_SIZE),
        (EXPERTS, EXPERT_SIZE),
        (EXPERTS, EXPERT_SIZE, HIDDEN),
        (EXPERTS, HIDDEN),
    ]
    return [rng.normal(scale=0.7, size=s).astype("float32") for s in shapes]


def _classifier(moe, length=5, batch_size=None):
    x = keras.Input((length, HIDDEN), batch_size=batch_size, name="x")
    mask = keras.Input((length,), batch_size=batch_size, name="mask")
    routed = moe(x, padding_mask=mask)
    pooled = MaskedMeanPooling()(routed, padding_mask=mask)
    logits = keras.layers.Dense(LABELS, name="head")(pooled)
    return keras.Model({"x": x, "mask": mask}, logits)


def _set_moe_weights(moe, weights):
    # Trainable weights first, then the three statistics (left as built).
    trainable = [moe.router_kernel, moe.expert_kernel_in, moe.expert_bias_in]
    trainable += [moe.expert_kernel_out, moe.expert_bias_out]
    for variable, value in zip(trainable, weights):
        variable.assign(value)


# --- Tests ---


def test_check_layer(tmp_path):
    x, mask, _ = _batch()
    output = check_layer(
        MixtureOfExperts,
        {"num_experts": EXPERTS, "expert_size": EXPERT_SIZE},
        {"inputs": x, "padding_mask": mask},
        expected_output_shape=(3, 5, HIDDEN),
        expected_num_trainable_weights=5,
        expected_num_non_trainable_weights=3,
        tmp_path=tmp_path,
    )
    # Padded tokens are not routed: their output is exactly zero.
    assert np.all(output[mask == 0] == 0)


def test_rejects_bad_arguments():
    cases = [
        ({"num_experts": 0}, "num_experts=0"),
        ({"expert_size": -1}, "expert_size=-1"),
        ({"num_experts_per_token": 5}, "num_experts_per_token=5"),
        ({"aux_loss_weight": -0.1}, "aux_loss_weight=-0.1"),
        ({"aux_loss_weight": float("nan")}, "aux_loss_weight=nan"),
        ({"capacity_factor": 0}, "capacity_factor=0"),
        ({"capacity_factor": "big"}, "capacity_factor='big'"),
        ({"renormalize_weights": "yes"}, "renormalize_weights='yes'"),
        ({"activation": 3}, "activation=3"),
        ({"dropout_rate": 1.0}, "dropout_rate=1.0"),
    ]
    for overrides, message in cases:
        kwargs = {"num_experts": 4, "expert_size": 8, **overrides}
        with pytest.raises(ValueError, match=message):
            MixtureOfExperts(**kwargs)
    with pytest.raises(ValueError, match="activation"):
        MixtureOfExperts(4, 8, activation="no_such_activation")
    with pytest.raises(ValueError, match=r"\(batch, sequence, hidden\)"):
        MixtureOfExperts(4, 8)(np.zeros((2, 6), "float32"))


@pytest.mark.parametrize(
    "k, capacity_factor, training",
    [(1, None, False), (2, None, True), (2, 0.5, True)],
)
def test_matches_reference(k, capacity_factor, training):
    x, mask, _ = _batch()
    moe = MixtureOfExperts(
        EXPERTS,
        EXPERT_SIZE,
        num_experts_per_token=k,
        capacity_factor=capacity_factor,
        aux_loss_weight=0.5,
    )
    moe.build(x.shape)
    weights = _moe_weights()
    _set_moe_weights(moe, weights)
    outputs = _as_numpy(moe(x, padding_mask=mask, training=training))
    expected, aux = reference_moe(
        x, mask, weights, k, capacity_factor, training=training
    )
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    if training:
        assert len(moe.losses) == 1
        np.testing.assert_allclose(
            float(_as_numpy(moe.losses[0])), 0.5 * aux, rtol=1e-5
        )
    else:
        assert moe.losses == []


def test_capacity_drops_to_the_residual_path_only_in_training():
    x, mask, _ = _batch()
    moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE, capacity_factor=0.3)
    moe.build(x.shape)
    _set_moe_weights(moe, _moe_weights())
    trained = _as_numpy(moe(x, padding_mask=mask, training=True))
    served = _as_numpy(moe(x, padding_mask=mask))
    # Dropped tokens give zero (the caller's residual carries them); at
    # inference every real token is served.
    real = mask != 0
    dropped = real & np.all(trained == 0, axis=-1)
    assert dropped.any()
    assert not np.any(np.all(served[real] == 0, axis=-1))
    stats = moe.routing_statistics()
    assert stats["batches"] == 1
    np.testing.assert_allclose(
        stats["dropped_fraction"], dropped.sum() / real.sum(), rtol=1e-6
    )


def test_ties_keep_every_tied_expert():
    # An all-zero token scores every expert alike: all are kept, each with
    # its probability 1 / num_experts, whatever the backend.
    moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE)
    _, usage = moe(
        np.zeros((1, 2, HIDDEN), "float32"), return_expert_usage=True
    )
    gates = _as_numpy(usage["expert_weights"])
    np.testing.assert_allclose(gates, np.full((1, 2, EXPERTS), 1 / EXPERTS))


def test_one_expert_is_a_plain_feed_forward_block():
    # The "no routing" arm of a comparison at equal active parameters: the
    # one expert takes every real token with weight 1, and no warning (such
    # as Keras' about a softmax over one value) is raised.
    x, mask, _ = _batch()
    moe = MixtureOfExperts(1, EXPERT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, usage = moe(x, padding_mask=mask, return_expert_usage=True)
    w_in, b_in, w_out, b_out = (
        _as_numpy(w)[0]
        for w in (moe.expert_kernel_in, moe.expert_bias_in,
                  moe.expert_kernel_out, moe.expert_bias_out)
    )  # fmt: skip
    expected = (_gelu(x @ w_in + b_in) @ w_out + b_out) * mask[..., None]
    np.testing.assert_allclose(_as_numpy(y), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        _as_numpy(usage["expert_weights"])[..., 0], mask
    )


def test_load_balancing_loss_values():
    # Uniform probabilities and balanced assignments give 1.
    probs = np.full((4, 2), 0.5, "float32")
    chosen = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], "float32")
    assert float(_as_numpy(load_balancing_loss(probs, chosen))) == 1.0
    # Everything on expert 0 with certainty gives num_experts.
    certain = np.array([[1.0, 0.0]] * 4, "float32")
    everything = np.array([[1, 0]] * 4, "float32")
    loss = load_balancing_loss(certain, everything)
    assert float(_as_numpy(loss)) == 2.0
    # Masked tokens count nowhere; no real token gives 0.
    mask = np.array([1, 1, 0, 0])
    skewed = load_balancing_loss(certain, everything, mask)
    assert float(_as_numpy(skewed)) == 2.0
    none = load_balancing_loss(certain, everything, np.zeros(4))
    assert float(_as_numpy(none)) == 0.0


def test_padding_is_neither_routed_nor_counted():
    x, mask, _ = _batch()
    noisy = x.copy()
    noisy[mask == 0] = 100.0
    results = []
    for inputs in (x, noisy):
        moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE, capacity_factor=1.0)
        moe.build(x.shape)
        _set_moe_weights(moe, _moe_weights())
        out = _as_numpy(moe(inputs, padding_mask=mask, training=True))
        results.append(
            (out, float(_as_numpy(moe.losses[0])), moe.routing_statistics())
        )
    (a, loss_a, stats_a), (b, loss_b, stats_b) = results
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert np.all(b[mask == 0] == 0)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    np.testing.assert_allclose(
        stats_a["expert_fractions"], stats_b["expert_fractions"], atol=1e-6
    )


@pytest.mark.parametrize("k, capacity_factor", [(1, None), (2, 0.75)])
def test_total_loss_is_the_same_on_every_backend(k, capacity_factor):
    """Task plus auxiliary loss equals one NumPy reference, whichever
    backend runs: through `compute_loss` and through a `fit` step (at a
    zero learning rate, so the weights stay put)."""
    x, mask, labels = _batch()
    aux_weight = 0.3
    moe = MixtureOfExperts(
        EXPERTS,
        EXPERT_SIZE,
        num_experts_per_token=k,
        capacity_factor=capacity_factor,
        aux_loss_weight=aux_weight,
        name="moe",
    )
    model = _classifier(moe)
    rng = np.random.default_rng(2)
    head = [
        rng.normal(size=(HIDDEN, LABELS)).astype("float32"),
        rng.normal(size=(LABELS,)).astype("float32"),
    ]
    _set_moe_weights(moe, _moe_weights())
    model.get_layer("head").set_weights(head)
    expected = reference_classifier_loss(
        x, mask, labels, _moe_weights(), head, k, capacity_factor, aux_weight
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs = {"x": x, "mask": mask}
    predictions = model(inputs, training=True)
    assert len(model.losses) == 1
    loss = model.compute_loss(x=inputs, y=labels, y_pred=predictions)
    np.testing.assert_allclose(float(_as_numpy(loss)), expected, rtol=1e-5)

    history = model.fit(
        inputs, labels, batch_size=len(labels), shuffle=False, verbose=0
    )
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


def test_shared_block_counts_both_auxiliary_losses():
    """One layer called on two inputs adds two auxiliary terms, also inside
    a jit-compiled JAX train step."""
    x, mask, labels = _batch()
    y, mask_y, _ = _batch(seed=5)
    aux_weight = 0.2
    moe = MixtureOfExperts(
        EXPERTS, EXPERT_SIZE, aux_loss_weight=aux_weight, name="shared"
    )
    inputs = {
        name: keras.Input(shape, name=name)
        for name, shape in [
            ("a", (5, HIDDEN)),
            ("a_mask", (5,)),
            ("b", (5, HIDDEN)),
            ("b_mask", (5,)),
        ]
    }
    pooling = MaskedMeanPooling()
    pooled_a = pooling(
        moe(inputs["a"], padding_mask=inputs["a_mask"]),
        padding_mask=inputs["a_mask"],
    )
    pooled_b = pooling(
        moe(inputs["b"], padding_mask=inputs["b_mask"]),
        padding_mask=inputs["b_mask"],
    )
    logits = keras.layers.Dense(LABELS, name="head")(
        keras.layers.Concatenate()([pooled_a, pooled_b])
    )
    model = keras.Model(inputs, logits)
    _set_moe_weights(moe, _moe_weights())
    rng = np.random.default_rng(4)
    head = [
        rng.normal(size=(2 * HIDDEN, LABELS)).astype("float32"),
        rng.normal(size=(LABELS,)).astype("float32"),
    ]
    model.get_layer("head").set_weights(head)
    data = {"a": x, "a_mask": mask, "b": y, "b_mask": mask_y}

    model(data, training=True)
    assert len(model.losses) == 2

    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=BACKEND == "jax",
    )
    moe.reset_routing_statistics()
    pooled = []
    aux = 0.0
    for tokens, padding in ((x, mask), (y, mask_y)):
        routed, aux_term = reference_moe(
            tokens, padding, _moe_weights(), 1, training=True
        )
        pooled.append(
            (routed * padding[..., None]).sum(1) / padding.sum(1)[:, None]
        )
        aux += aux_term
    reference_logits = np.concatenate(pooled, -1) @ head[0] + head[1]
    log_probs = np.log(_softmax(reference_logits))
    task = -np.mean(log_probs[np.arange(3), labels])
    history = model.fit(data, labels, batch_size=3, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        history.history["loss"][0], task + aux_weight * aux, rtol=1e-5
    )
    # Both calls of the one training step were counted in the statistics.
    assert moe.routing_statistics()["batches"] == 2


def test_every_expert_survives_a_save_after_partial_routing(tmp_path):
    x, mask, _ = _batch()
    positive = np.abs(x)
    moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE, name="moe")
    model = _classifier(moe)
    weights = _moe_weights()
    # A router that sends every positive input to expert 0.
    weights[0] = np.zeros_like(weights[0])
    weights[0][:, 0] = 5.0
    _set_moe_weights(moe, weights)
    _, usage = moe(positive, padding_mask=mask, return_expert_usage=True)
    fractions = _as_numpy(usage["expert_fractions"])
    np.testing.assert_allclose(fractions[:, 0], 1.0)
    before = model.predict({"x": positive, "mask": mask}, verbose=0)

    path = os.path.join(str(tmp_path), "routed.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    again = reloaded.get_layer("moe")
    assert again.expert_kernel_in.shape == (EXPERTS, HIDDEN, EXPERT_SIZE)
    for name in ("expert_kernel_in", "expert_kernel_out", "expert_bias_out"):
        np.testing.assert_array_equal(
            _as_numpy(getattr(again, name)), _as_numpy(getattr(moe, name))
        )
    after = reloaded.predict({"x": positive, "mask": mask}, verbose=0)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    # Inputs that reach the experts never used before saving agree too.
    negative = -positive
    np.testing.assert_allclose(
        reloaded.predict({"x": negative, "mask": mask}, verbose=0),
        model.predict({"x": negative, "mask": mask}, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )


def test_expert_usage_reaches_history_and_predictions():
    x, mask, labels = _batch()
    moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE, name="moe")
    model = _classifier(moe)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    data = {"x": x, "mask": mask}
    history = model.fit(
        data,
        labels,
        batch_size=2,
        epochs=2,
        verbose=0,
        validation_data=(data, labels),
        callbacks=[ExpertUsageCallback()],
    )
    logs = history.history
    per_epoch = np.array([logs[f"moe_expert_{i}"] for i in range(EXPERTS)])
    assert per_epoch.shape == (EXPERTS, 2)
    np.testing.assert_allclose(per_epoch.sum(axis=0), 1.0, rtol=1e-5)
    assert logs["moe_dropped"] == [0.0, 0.0]
    stats = moe.routing_statistics()
    assert stats["batches"] == 4  # Two batches a epoch, two epochs.
    np.testing.assert_allclose(
        per_epoch.mean(axis=1), stats["expert_fractions"]
    )

    # At inference: each token's weights and each sequence's shares.
    _, usage = moe(x, padding_mask=mask, return_expert_usage=True)
    gates = _as_numpy(usage["expert_weights"])
    fractions = _as_numpy(usage["expert_fractions"])
    assert gates.shape == (3, 5, EXPERTS)
    assert np.all(gates[mask == 0] == 0)
    chosen = np.argmax(gates, axis=-1)
    for row in range(3):
        counts = np.bincount(chosen[row][mask[row] == 1], minlength=EXPERTS)
        np.testing.assert_allclose(fractions[row], counts / counts.sum())


def test_usage_of_a_nested_routed_block_at_inference():
    """The wiring the models use: a backbone with a residual routed block
    after its mixers, inside a classifier; usage is read through a
    sub-model up to the block's input and an eager call of the layer."""
    x, mask, _ = _batch()
    tokens = keras.Input((5, HIDDEN), name="x")
    padding = keras.Input((5,), name="mask")
    normed = keras.layers.LayerNormalization(name="moe_norm")(tokens)
    moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE, name="moe")
    routed = keras.layers.Add(name="moe_residual")(
        [tokens, moe(normed, padding_mask=padding)]
    )
    backbone = keras.Model({"x": tokens, "mask": padding}, routed)
    inputs = {
        "x": keras.Input((5, HIDDEN), name="x"),
        "mask": keras.Input((5,), name="mask"),
    }
    pooled = MaskedMeanPooling()(backbone(inputs), padding_mask=inputs["mask"])
    classifier = keras.Model(inputs, keras.layers.Dense(LABELS)(pooled))

    layer = classifier.get_layer(backbone.name).get_layer("moe")
    upstream = keras.Model(
        backbone.input, backbone.get_layer("moe_norm").output
    )
    hidden = upstream.predict({"x": x, "mask": mask}, verbose=0)
    _, usage = layer(hidden, padding_mask=mask, return_expert_usage=True)
    fractions = _as_numpy(usage["expert_fractions"])
    # The same shares as routing the normalized tokens by hand.
    chosen = np.argmax(hidden @ _as_numpy(layer.router_kernel), axis=-1)
    for row in range(3):
        counts = np.bincount(chosen[row][mask[row] == 1], minlength=EXPERTS)
        np.testing.assert_allclose(fractions[row], counts / counts.sum())


def test_parameter_counts_match_the_layer():
    moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE, num_experts_per_token=2)
    moe.build((None, 5, HIDDEN))
    counts = moe_parameter_counts(HIDDEN, EXPERTS, EXPERT_SIZE, 2)
    trainable = sum(int(np.prod(w.shape)) for w in moe.trainable_weights)
    assert counts["total"] == trainable
    per_expert = 2 * HIDDEN * EXPERT_SIZE + EXPERT_SIZE + HIDDEN
    assert counts["active"] == HIDDEN * EXPERTS + 2 * per_expert


def _tflite_ops(path):
    """Names of the operators of a .tflite file, with their kinds."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    return interpreter, {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TFLite export needs TF")
def test_exports_to_tflite_with_builtin_operators_only(tmp_path):
    import tensorflow as tf

    length = 5
    x = keras.Input((length, HIDDEN), batch_size=1, name="x")
    mask = keras.Input((length,), batch_size=1, name="mask")
    evidence = keras.Input((2, LABELS), batch_size=1, name="rule_evidence")
    moe = MixtureOfExperts(EXPERTS, EXPERT_SIZE, num_experts_per_token=2)
    routed = keras.layers.Add()(
        [x, moe(keras.layers.LayerNormalization()(x), padding_mask=mask)]
    )
    pooled = MaskedMeanPooling()(routed, padding_mask=mask)
    logits = SymbolicFusion(LABELS)(
        keras.layers.Dense(LABELS)(pooled), evidence
    )
    model = keras.Model(
        {"x": x, "mask": mask, "rule_evidence": evidence}, {"logits": logits}
    )
    path = os.path.join(str(tmp_path), "moe.tflite")
    model.export(
        path,
        format="litert",
        verbose=False,
        target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
    )
    interpreter, ops = _tflite_ops(path)
    assert "TOPK_V2" in ops and "FULLY_CONNECTED" in ops
    foreign = sorted(
        op
        for op in ops
        if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")
    )
    assert not foreign, f"non-built-in operators: {foreign}"

    rng = np.random.default_rng(3)
    sample = {
        "x": rng.normal(size=(1, length, HIDDEN)).astype("float32"),
        "mask": np.array([[1, 1, 1, 0, 0]], "float32"),
        "rule_evidence": rng.uniform(size=(1, 2, LABELS)).astype("float32"),
    }
    runner = interpreter.get_signature_runner()
    got = runner(**sample)["logits"]
    expected = _as_numpy(model(sample)["logits"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
