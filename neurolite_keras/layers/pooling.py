"""`MaskedMeanPooling`: the mean of the real tokens of each sequence."""

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
