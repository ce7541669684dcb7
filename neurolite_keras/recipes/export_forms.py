"""Graph forms that convert to fast TFLite kernels, used while tracing for
export.

A layer's Keras `call` is written for training on every backend; the
TFLite converter then maps each traced operation to one TFLite operator.
Some layers trace into operators that the int8 CPU path runs badly, though
an equal arrangement of the same arithmetic runs well. `export_forms(model)`
is a context manager under which such layers of `model` trace into that
arrangement; `convert_model` traces the model inside it. Outside it, and
in every `.keras` file, the layers compute as before: nothing a model
learns or computes in Keras changes.

**Layer normalization.** Keras 3 (TensorFlow backend) computes
`x * inv + (-mean * inv + beta)` with `inv = gamma * rsqrt(var +
epsilon)` and `var = mean(squared_difference(x, mean))`. In a
full-integer model the XNNPACK delegate (the LiteRT interpreter's default
CPU path) has no int8 kernel for `SQUARED_DIFFERENCE`, and the converter
has no int8 `NEG` (it keeps it in float between a `DEQUANTIZE` and a
`QUANTIZE`), so each normalization cut the XNNPACK graph into pieces and
ran a slow broadcasting `SQUARED_DIFFERENCE` kernel of TFLite's own. The
export form is the same arithmetic, term for term, written
`x * inv + (beta - mean * inv)` with `var = mean(centered * centered)`,
`centered = x - mean`: only `MEAN`, `SUB`, `MUL` and `ADD`, which XNNPACK
runs in int8. The per-token `ADD` of epsilon and `RSQRT` (one value per
token) still run outside XNNPACK. In float32 it gives the values Keras
gives; in int8 it quantizes the same tensors, plus `centered` (rounded
once more before it is squared, where `SQUARED_DIFFERENCE` squares the
exact difference of its int8 inputs). That rounding moves logits by
about as much as calibrating on a different sample of sentences: on the
four fitted models of the export tests, the mean logit error against the
float model was within -8% and +2% of the Keras form's, and the one
sentence that flipped (a logit margin of 0.01) flips with the Keras form
too when 199, 201 or 300 sentences calibrate instead of 200.

Measured on the tiny preset at 256 tokens, batch 1, one thread, side by
side on two shared CPU cores: the int8 model went from 31 XNNPACK
partitions and 4.0 ms to 22 partitions and 2.1 ms (the float32 model: 2.8
ms, unchanged) with untrained weights, and to 20 partitions and 1.6 ms
with trained-like normalization weights (with untrained ones, a
normalization right after another sees token means of exactly zero,
whose int8 scale XNNPACK rejects for two subtractions).
"""

import contextlib
import functools

import keras
import numpy as np
from keras import ops


def _normalizes_last_axis(layer, rank):
    axes = layer.axis if isinstance(layer.axis, list) else [layer.axis]
    return [axis % rank for axis in axes] == [rank - 1]


def layer_norm_export_form(layer, inputs, use_beta=True):
    """`layer` (a `keras.layers.LayerNormalization`) applied to `inputs`
    in the export form: Keras' arithmetic, with the variance as
    `mean(centered * centered)` and no negation.

    Falls back to the layer's own computation where the form does not
    apply: normalization over other axes than the last one, or the
    deprecated `rms_scaling`.

    Args:
        layer: the `LayerNormalization`.
        inputs: its input tensor.
        use_beta: bool. `False` leaves out a `beta` known to be all
            zeros (a layer never trained): `beta - mean * inv` would
            otherwise subtract from an int8 constant whose scale is too
            small for XNNPACK. Keras' own form, `-mean * inv + beta`, has
            the zeros folded away by the converter. Defaults to `True`.
    """
    rank = len(inputs.shape)
    if layer.rms_scaling or not _normalizes_last_axis(layer, rank):
        return type(layer).call(layer, inputs)
    # As Keras does: statistics in at least float32.
    x = ops.cast(inputs, "float32")
    mean = ops.mean(x, axis=-1, keepdims=True)
    centered = ops.subtract(x, mean)
    variance = ops.mean(
        ops.multiply(centered, centered), axis=-1, keepdims=True
    )
    inv = ops.rsqrt(ops.add(variance, layer.epsilon))
    if layer.gamma is not None:
        inv = ops.multiply(inv, ops.cast(layer.gamma, "float32"))
    # Keras' `x * inv + (beta - mean * inv)`, term for term, so that the
    # int8 tensors are the ones of the Keras form; only the negation of
    # the mean becomes a subtraction. (Other arrangements, equal in
    # float, were measured to follow the float model less closely in
    # int8.)
    offset = ops.multiply(mean, inv)
    if layer.beta is not None and use_beta:
        offset = ops.subtract(ops.cast(layer.beta, "float32"), offset)
        outputs = ops.add(ops.multiply(x, inv), offset)
    else:
        outputs = ops.subtract(ops.multiply(x, inv), offset)
    return ops.cast(outputs, layer.compute_dtype)


def _layer_norm_form(layer):
    """The export form of `layer`, told whether its `beta` is zero."""
    beta = getattr(layer, "beta", None)
    use_beta = beta is not None and bool(
        np.any(keras.ops.convert_to_numpy(beta.value))
    )
    return functools.partial(layer_norm_export_form, use_beta=use_beta)


def _export_form_layers(model):
    # The private recursive walk that `Model.quantize` uses; only read.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.LayerNormalization):
            yield layer, _layer_norm_form(layer)


@contextlib.contextmanager
def export_forms(model):
    """Within this context, `model`'s layers with an export form (its
    layer normalizations) trace into that form.

    Each such layer gets an instance-level `call` for the duration of the
    context, removed on exit, also on error. Trace (for example
    `tf.function.get_concrete_function`) inside the context; a function
    traced inside keeps the export form.

    Yields:
        The number of layers given an export form.

    Example:

    >>> inputs = keras.Input((4, 8))
    >>> norm = keras.layers.LayerNormalization()
    >>> model = keras.Model(inputs, norm(inputs))
    >>> norm.set_weights([np.full(8, 2.0), np.full(8, 0.5)])
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, (2, 4, 8))
    >>> with export_forms(model) as count:
    ...     exported = keras.ops.convert_to_numpy(model(x))
    >>> count, "call" in vars(norm)
    (1, False)
    >>> reference = keras.ops.convert_to_numpy(model(x))
    >>> bool(np.abs(exported - reference).max() < 1e-5)
    True
    """
    changed = []
    try:
        for layer, form in _export_form_layers(model):
            if "call" in vars(layer):
                continue  # Already in an enclosing context.
            layer.call = functools.partial(form, layer)
            changed.append(layer)
        yield len(changed)
    finally:
        for layer in changed:
            del layer.call
