"""`MlpMixerBlock`: token mixing and channel mixing with MLPs (Tolstikhin et
al. 2021), with padding masked out."""

import keras
from keras import ops

from neurolite_keras.layers.chunking import per_position_in_chunks
from neurolite_keras.validation import check_positive_int
from neurolite_keras.validation import check_rate


@keras.saving.register_keras_serializable(package="neurolite")
class MlpMixerBlock(keras.layers.Layer):
    """One MLP-Mixer block over a padded token sequence.

    Token mixing applies an MLP along the sequence axis, shared by every
    channel; channel mixing applies an MLP along the feature axis, shared by
    every token. Each sits behind a layer normalization and a residual
    connection. Cost is linear in the sequence length.

    **Note on length:** the token-mixing weights are sized for
    `sequence_length`, so the block only accepts inputs of exactly that
    length. The featurizer pads shorter texts and truncates longer ones to
    `max_sequence_length`; a tensor of another length raises a `ValueError`.

    **Note on masking:** padded positions are zeroed before token mixing, so
    they contribute nothing to real tokens: real tokens' outputs do not
    depend on what finite values the padding held (zeroing is a product
    with the mask, and NaN times 0 is NaN). The output at padded positions
    is not zeroed and carries no meaning. Leaving it is deliberate: a row of
    zeros entering the next layer normalization has zero variance, and
    in an int8 export its `1/sqrt(epsilon)` would set the quantization
    range of that normalization for every real token.

    Args:
        sequence_length: int. Number of token positions.
        token_mixing_size: int. Hidden width of the token-mixing MLP.
        channel_mixing_size: int. Hidden width of the channel-mixing MLP.
        dropout_rate: float. Dropout after each MLP. Defaults to `0.0`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: float tensor `(batch, sequence_length, hidden)`.
        padding_mask: optional tensor `(batch, sequence_length)`, nonzero
            for real tokens.
        training: bool, whether dropout is active.

    Returns:
        Float tensor with the shape of `inputs`.

    Example:

    >>> block = MlpMixerBlock(16, token_mixing_size=8, channel_mixing_size=32)
    >>> tuple(block(np.ones((2, 16, 4)), padding_mask=np.ones((2, 16))).shape)
    (2, 16, 4)
    """

    def __init__(
        self,
        sequence_length,
        token_mixing_size,
        channel_mixing_size,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        check_positive_int("sequence_length", sequence_length)
        check_positive_int("token_mixing_size", token_mixing_size)
        check_positive_int("channel_mixing_size", channel_mixing_size)
        check_rate("dropout_rate", dropout_rate)
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.token_mixing_size = token_mixing_size
        self.channel_mixing_size = channel_mixing_size
        self.dropout_rate = dropout_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.supports_masking = False

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "MlpMixerBlock expects inputs of shape (batch, sequence, "
                f"hidden). Received shape: {input_shape}"
            )
        self._check_length(input_shape[1])
        hidden_size = input_shape[-1]
        self.token_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="token_norm"
        )
        self.token_norm.build(input_shape)
        transposed_shape = (input_shape[0], hidden_size, self.sequence_length)
        self.token_dense_in = keras.layers.Dense(
            self.token_mixing_size, activation="gelu", name="token_dense_in"
        )
        self.token_dense_in.build(transposed_shape)
        self.token_dense_out = keras.layers.Dense(
            self.sequence_length, name="token_dense_out"
        )
        self.token_dense_out.build(
            (input_shape[0], hidden_size, self.token_mixing_size)
        )
        self.channel_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="channel_norm"
        )
        self.channel_norm.build(input_shape)
        self.channel_dense_in = keras.layers.Dense(
            self.channel_mixing_size, activation="gelu", name="channel_dense_in"
        )
        self.channel_dense_in.build(input_shape)
        self.channel_dense_out = keras.layers.Dense(
            hidden_size, name="channel_dense_out"
        )
        self.channel_dense_out.build(
            (*input_shape[:-1], self.channel_mixing_size)
        )
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def _check_length(self, length):
        if length is not None and length != self.sequence_length:
            raise ValueError(
                f"MlpMixerBlock '{self.name}' mixes exactly "
                f"{self.sequence_length} positions (its token-mixing weights "
                f"fix the length). Received a sequence of length {length}. "
                "Pad or truncate inputs to `sequence_length`; the featurizer "
                "does this for texts."
            )

    def call(self, inputs, padding_mask=None, training=None):
        self._check_length(inputs.shape[1])
        mask = None
        if padding_mask is not None:
            mask = ops.expand_dims(ops.cast(padding_mask, inputs.dtype), -1)

        # Token mixing: an MLP across positions, applied to each channel.
        x = self.token_norm(inputs)
        if mask is not None:
            x = x * mask
        x = ops.transpose(x, (0, 2, 1))
        x = self.token_dense_out(self.token_dense_in(x))
        x = ops.transpose(x, (0, 2, 1))
        x = inputs + self.dropout(x, training=training)

        # Channel mixing: an MLP across features, applied to each token.
        y = per_position_in_chunks(self._channel_mlp, x)
        return x + self.dropout(y, training=training)

    def _channel_mlp(self, x):
        return self.channel_dense_out(
            self.channel_dense_in(self.channel_norm(x))
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "token_mixing_size": self.token_mixing_size,
                "channel_mixing_size": self.channel_mixing_size,
                "dropout_rate": self.dropout_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
