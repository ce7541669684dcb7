"""`TokenDropout`: drops whole tokens from the padding mask in training."""

import keras
from keras import ops

from neurolite_keras.validation import check_rate


@keras.saving.register_keras_serializable(package="neurolite")
class TokenDropout(keras.layers.Layer):
    """Removes random real tokens from a padding mask, in training only.

    Word dropout (as in deep averaging networks): each real token is
    treated as padding with probability `rate`, so the mixers and the
    pooling skip it and a classifier cannot lean on any single word. At
    inference the mask passes unchanged, so an exported model has no
    random op. A text may lose all its tokens in a training step; it then
    pools to zeros like an empty text.

    Args:
        rate: float in `[0, 1)`. Probability of dropping each real token.
        seed: int or `None`. Seed of the dropout.
        **kwargs: base `Layer` arguments.

    Call arguments:
        padding_mask: int tensor `(batch, sequence)`, 1 for real tokens.
        training: bool.

    Returns:
        Int32 tensor `(batch, sequence)`: the mask with dropped tokens at 0.

    Example:

    >>> layer = TokenDropout(0.5, seed=1)
    >>> mask = np.ones((1, 6), "int32")
    >>> keras.ops.convert_to_numpy(layer(mask)).tolist()
    [[1, 1, 1, 1, 1, 1]]
    >>> kept = layer(mask, training=True)
    >>> int(keras.ops.convert_to_numpy(keras.ops.sum(kept))) < 6
    True
    """

    def __init__(self, rate, seed=None, **kwargs):
        check_rate("rate", rate)
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, padding_mask, training=False):
        mask = ops.cast(padding_mask, "int32")
        if not training or self.rate == 0:
            return mask
        draw = keras.random.uniform(ops.shape(mask), seed=self.seed_generator)
        return mask * ops.cast(draw >= self.rate, "int32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, padding_mask, training=False):
        return keras.KerasTensor(padding_mask.shape, dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
