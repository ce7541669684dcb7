"""Masked pooling over the real tokens of each sequence: `MaskedMeanPooling`
and `MaskedMaxPooling`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="neurolite")
class MaskedMeanPooling(keras.layers.Layer):
    """Averages token vectors over the positions the padding mask keeps.

    A sequence with no real token (an empty text) pools to zeros rather
    than dividing by zero.

    Call arguments:
        inputs: float tensor `(batch, sequence, hidden)`.
        padding_mask: tensor `(batch, sequence)`, nonzero for real tokens.

    Returns:
        Float tensor `(batch, hidden)`.

    Example:

    >>> pooled = MaskedMeanPooling()(
    ...     np.ones((1, 3, 2)), padding_mask=np.array([[1, 1, 0]]))
    >>> tuple(pooled.shape)
    (1, 2)
    """

    def call(self, inputs, padding_mask):
        mask = ops.expand_dims(ops.cast(padding_mask, inputs.dtype), -1)
        total = ops.sum(inputs * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), 1.0)
        return total / count

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="neurolite")
class MaskedMaxPooling(keras.layers.Layer):
    """The largest value of each feature over the real tokens.

    Where mean pooling gives every token the same say, max pooling lets the
    few tokens that carry a feature strongly (the topic words of a
    sentence) set it. A sequence with no real token pools to zeros.

    Padded positions are not pushed to a large negative number before the
    maximum: each takes the smallest value of its feature over the whole
    sequence, which cannot exceed any real token's value, so it never wins
    the maximum. Every tensor then keeps the value range of the inputs,
    which an int8 export quantizes with (a `-1e9` filler would set that
    range and crush the real values).

    Call arguments:
        inputs: float tensor `(batch, sequence, hidden)`.
        padding_mask: tensor `(batch, sequence)`, nonzero for real tokens.

    Returns:
        Float tensor `(batch, hidden)`.

    Example:

    >>> pooled = MaskedMaxPooling()(
    ...     np.array([[[1.0, -2.0], [3.0, -4.0], [9.0, 9.0]]]),
    ...     padding_mask=np.array([[1, 1, 0]]))
    >>> ops.convert_to_numpy(pooled).tolist()
    [[3.0, -2.0]]
    """

    def call(self, inputs, padding_mask):
        mask = ops.expand_dims(ops.cast(padding_mask, inputs.dtype), -1)
        floor = ops.min(inputs, axis=1, keepdims=True)
        filled = inputs * mask + floor * (1.0 - mask)
        has_tokens = ops.cast(ops.sum(mask, axis=1) > 0, inputs.dtype)
        return ops.max(filled, axis=1) * has_tokens

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
