"""The checks every NeuroLite layer goes through, in one place.

`check_layer` builds a layer from its arguments, calls it, and checks the
output shape, the weight counts, one training step through `model.fit`, the
config round trip and a `.keras` save and reload, on whichever backend
`KERAS_BACKEND` selects.
"""

import os

import keras
import numpy as np


def _as_inputs(data):
    return data if isinstance(data, dict) else {"inputs": data}


def _functional(layer, inputs, call_kwargs):
    """A functional model around `layer`, with every array as an input."""
    symbolic = {
        name: keras.Input(
            shape=value.shape[1:], dtype=str(value.dtype), name=name
        )
        for name, value in inputs.items()
    }
    args = dict(call_kwargs)
    first = next(iter(symbolic))
    for name in list(symbolic)[1:]:
        args[name] = symbolic[name]
    outputs = layer(symbolic[first], **args)
    return keras.Model(symbolic, outputs)


def check_layer(
    layer_cls,
    init_kwargs,
    input_data,
    call_kwargs=None,
    expected_output_shape=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    run_training_step=True,
    tmp_path=None,
):
    """Runs the shared layer checks; returns the layer's first output.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: array, or dict of arrays whose first entry is the main
            input and whose others are passed as call keywords.
        call_kwargs: extra constant call keywords (not tensors).
        expected_output_shape: tuple, checked when given.
        expected_num_trainable_weights: int, checked when given.
        expected_num_non_trainable_weights: int, checked when given.
        run_training_step: bool. Fit one step on a mean-squared loss.
        tmp_path: folder for the `.keras` round trip; skipped when `None`.
    """
    call_kwargs = call_kwargs or {}
    inputs = _as_inputs(input_data)
    layer = layer_cls(**init_kwargs)
    model = _functional(layer, inputs, call_kwargs)
    output = model.predict(inputs, verbose=0)
    main = output[0] if isinstance(output, (list, tuple)) else output
    if isinstance(main, dict):
        main = next(iter(main.values()))
    if expected_output_shape is not None:
        assert tuple(main.shape) == tuple(expected_output_shape), main.shape
    assert np.all(np.isfinite(main)), "layer output holds NaN or inf"
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    if expected_num_non_trainable_weights is not None:
        assert (
            len(layer.non_trainable_weights)
            == expected_num_non_trainable_weights
        )

    # The config round trip rebuilds an equal layer.
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    if run_training_step:
        before = [
            keras.ops.convert_to_numpy(w) for w in layer.trainable_weights
        ]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        target = np.random.default_rng(0).normal(size=main.shape)
        history = model.fit(
            inputs,
            target.astype("float32"),
            epochs=1,
            batch_size=len(main),
            verbose=0,
        )
        assert np.isfinite(history.history["loss"][0])
        after = [keras.ops.convert_to_numpy(w) for w in layer.trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before, after)), (
            "a training step changed no trainable weight"
        )
        main = model.predict(inputs, verbose=0)
        if isinstance(main, dict):
            main = next(iter(main.values()))
        elif isinstance(main, (list, tuple)):
            main = main[0]

    if tmp_path is not None:
        path = os.path.join(str(tmp_path), f"{layer_cls.__name__}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        again = reloaded.predict(inputs, verbose=0)
        if isinstance(again, dict):
            again = next(iter(again.values()))
        elif isinstance(again, (list, tuple)):
            again = again[0]
        np.testing.assert_allclose(again, main, rtol=1e-5, atol=1e-5)
    return main
