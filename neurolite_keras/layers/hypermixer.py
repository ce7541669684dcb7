"""`HyperMixerBlock`: token mixing with weights that a hypernetwork generates
from the tokens (Mai et al. 2023), then channel mixing, padding masked out."""

import math

import keras
import numpy as np
from keras import ops

from neurolite_keras.layers.chunking import per_position_in_chunks
from neurolite_keras.validation import check_positive_float
from neurolite_keras.validation import check_positive_int
from neurolite_keras.validation import check_rate

# Initial scale (gamma) of the layer normalization that ends token mixing:
# the branch then adds a tenth of the residual stream's scale at the start
# of training instead of as much again (see `HyperMixerBlock`).
MIXING_NORM_GAMMA_INIT = 0.1


def _frequencies(hidden_size):
    num_frequencies = (hidden_size + 1) // 2
    scale = -2.0 * math.log(10000.0) / max(hidden_size, 2)
    return np.exp(np.arange(num_frequencies) * scale)


def sinusoidal_positions(length, hidden_size, dtype="float32"):
    """Sine and cosine position features `(length, hidden_size)`.

    Depends on `length` alone, so it works for any length: a Python int
    gives a constant computed with numpy, a scalar tensor (a length known
    only when the graph runs) computes the same values in the graph. The
    first `ceil(hidden_size / 2)` columns are sines and the rest cosines,
    at geometrically spaced frequencies from 1 down to about 1/10000.
    """
    frequencies = _frequencies(hidden_size)
    if isinstance(length, int):
        angles = np.outer(np.arange(length), frequencies)
        features = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
        return ops.convert_to_tensor(features[:, :hidden_size], dtype)
    positions = ops.cast(ops.arange(length), "float32")
    angles = ops.expand_dims(positions, -1) * ops.convert_to_tensor(
        frequencies[None].astype("float32")
    )
    features = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
    return ops.cast(features[:, :hidden_size], dtype)


@keras.saving.register_keras_serializable(package="neurolite")
class HyperMixerBlock(keras.layers.Layer):
    """One HyperMixer block: token mixing by a generated MLP, then channel
    mixing.

    MLP-Mixer mixes tokens with an MLP whose weights have one row per
    position, which fixes the sequence length and ties each weight to a
    position rather than to what sits there. HyperMixer (Mai et al. 2023,
    https://arxiv.org/abs/2203.03691) generates those rows instead: two
    small hypernetworks, shared by every position, map each token (plus a
    sinusoidal position feature) to its row of `W1` and of `W2`, both
    `(sequence, token_mixing_size)`. Token mixing is then
    `W2 @ gelu(W1^T @ X)` for the normalized tokens `X`, followed by a layer
    normalization (as in the authors' implementation, so the output scale
    does not grow with the number of tokens) whose scale starts at 0.1
    rather than 1 (see the note on training). Channel mixing is the MLP of
    `MlpMixerBlock`. Both sit behind a layer normalization and a residual
    connection. No weight depends on the length, so one block handles any
    sequence length, and the cost is linear in it.

    The hypernetworks are MLPs `hidden -> token_mixing_size (gelu) ->
    token_mixing_size`, one for `W1` and one for `W2` (untied).

    **Note on masking:** padded positions are zeroed after the first layer
    normalization, so they add nothing to `W1^T @ X` and contribute nothing
    to real tokens. Real tokens' outputs depend neither on what (finite
    values) the padding holds nor on how much padding follows them
    (position features count from the start of the sequence). The output
    at padded positions is not zeroed and carries no meaning: a zero row
    entering a layer normalization would, in an int8 export, stretch that
    normalization's quantization range by `1/sqrt(epsilon)` for every real
    token.

    **Note on length:** any length works, including a length that changes
    between calls or is unknown when the model is built. The hidden state
    `W1^T @ X` sums over the real tokens, so a model trained on short texts
    sees larger sums on much longer ones; the layer normalization after
    token mixing keeps the output scale in check.

    **Note on training:** the layer normalization that ends token mixing gives
    every token unit variance whatever its input. With its scale (gamma) at
    ones, as first written, each block's token-mixing branch added that much to
    a residual stream that starts smaller (standard deviation 0.47 in a freshly
    built tiny classifier with the 16,384 x 32 projection, 0.15 with
    65,536 x 8), and with a gain above one, since the branch multiplies three
    functions of the tokens (`W1`, `X`, `W2`). On SIB-200 sentences
    (16,384 x 32), a small change of a block's input changed what its two
    branches add by 3.5, 1.3, 1.1 and 1.0 times that change in the four blocks
    (MLP-Mixer: 1.6, 0.9, 0.7, 0.6), and the gradient reaching the Bloom
    projection was 7 times the MLP-Mixer's. The gamma now starts at
    `MIXING_NORM_GAMMA_INIT` (0.1): gains 1.3, 0.8, 0.7, 0.6 and a gradient 1.3
    times the MLP-Mixer's, so the blocks start close to the identity, as the
    MLP-Mixer's do. Dividing `W1^T @ X` by the number of real tokens changes
    little (gains 3.2, 1.3, 1.1, 0.9): the normalization cancels that scale.

    Test accuracy after five epochs (gamma 1 / gamma 0.1 / MLP-Mixer) of a
    tiny classifier on SIB-200 fra, eng, rus and zho, with the dropouts of
    `benchmarks/configs/sib200_tiny.json`, `recipes.train.make_optimizer`
    (peak learning rate 3e-3), batch 64, TensorFlow:

    - 16,384 x 32 projection, mean pooling, seed 0: 0.31 / 0.60 / 0.57
      (training accuracy after three epochs 0.25 / 0.68 / 0.65);
    - 65,536 x 8 projection, mean and max pooling: 0.64 / 0.44 / 0.25 with
      seed 0, 0.25 / 0.59 / 0.25 with seed 1.

    In the first setting with gamma 1, neither dividing `W1^T @ X` by the
    number of real tokens (with or without the final normalization) nor a
    peak learning rate of 1e-3 lifted training accuracy above 0.28 in three
    epochs; gamma 0 learned as 0.1 does. Still open: with this recipe any
    mixer can sit near chance for several epochs, depending on the seed
    (the MLP-Mixer did in both runs of the second setting), a plateau that
    does not come from this block.

    Args:
        token_mixing_size: int. Width of the generated token-mixing MLP,
            which is also the hidden and output width of each hypernetwork.
        channel_mixing_size: int. Hidden width of the channel-mixing MLP.
        dropout_rate: float. Dropout after each MLP. Defaults to `0.0`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: float tensor `(batch, sequence, hidden)`; `sequence` may be
            any length.
        padding_mask: optional tensor `(batch, sequence)`, nonzero for real
            tokens.
        training: bool, whether dropout is active.

    Returns:
        Float tensor with the shape of `inputs`.

    Example:

    >>> block = HyperMixerBlock(token_mixing_size=6, channel_mixing_size=12)
    >>> tuple(block(np.ones((2, 8, 4)), padding_mask=np.ones((2, 8))).shape)
    (2, 8, 4)
    """

    def __init__(
        self,
        token_mixing_size,
        channel_mixing_size,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        check_positive_int("token_mixing_size", token_mixing_size)
        check_positive_int("channel_mixing_size", channel_mixing_size)
        check_rate("dropout_rate", dropout_rate)
        check_positive_float("layer_norm_epsilon", layer_norm_epsilon)
        super().__init__(**kwargs)
        self.token_mixing_size = token_mixing_size
        self.channel_mixing_size = channel_mixing_size
        self.dropout_rate = dropout_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.supports_masking = False

    def _norm(self, name, input_shape, gamma_initializer="ones"):
        norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            gamma_initializer=gamma_initializer,
            name=name,
        )
        norm.build(input_shape)
        return norm

    def _dense(self, units, input_shape, name, activation=None):
        dense = keras.layers.Dense(units, activation=activation, name=name)
        dense.build(input_shape)
        return dense

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "HyperMixerBlock expects inputs of shape (batch, sequence, "
                f"hidden) with a known hidden size. Received shape: "
                f"{input_shape}"
            )
        hidden_size = input_shape[-1]
        hyper_shape = (*input_shape[:-1], self.token_mixing_size)
        self.token_norm = self._norm("token_norm", input_shape)
        # Two hypernetworks: token (+ position) -> its row of W1 / of W2.
        self.hyper_in_dense_in = self._dense(
            self.token_mixing_size, input_shape, "hyper_in_dense_in", "gelu"
        )
        self.hyper_in_dense_out = self._dense(
            self.token_mixing_size, hyper_shape, "hyper_in_dense_out"
        )
        self.hyper_out_dense_in = self._dense(
            self.token_mixing_size, input_shape, "hyper_out_dense_in", "gelu"
        )
        self.hyper_out_dense_out = self._dense(
            self.token_mixing_size, hyper_shape, "hyper_out_dense_out"
        )
        # The token-mixing branch starts small (see "Note on training").
        self.mixing_norm = self._norm(
            "mixing_norm",
            input_shape,
            keras.initializers.Constant(MIXING_NORM_GAMMA_INIT),
        )
        self.channel_norm = self._norm("channel_norm", input_shape)
        self.channel_dense_in = self._dense(
            self.channel_mixing_size, input_shape, "channel_dense_in", "gelu"
        )
        self.channel_dense_out = self._dense(
            hidden_size,
            (*input_shape[:-1], self.channel_mixing_size),
            "channel_dense_out",
        )
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def call(self, inputs, padding_mask=None, training=None):
        mask = None
        if padding_mask is not None:
            mask = ops.expand_dims(ops.cast(padding_mask, inputs.dtype), -1)
        length = inputs.shape[1]
        if length is None:
            length = ops.shape(inputs)[1]

        # Token mixing, step 1: normalized tokens, padding zeroed.
        x = self.token_norm(inputs)
        if mask is not None:
            x = x * mask

        # Step 2: each token, with its position, generates its rows of the
        # token-mixing weights. A padded token's rows meet its zeroed `x`
        # in `W1^T @ X`, and those of `W2` only reach padded outputs.
        positions = sinusoidal_positions(length, inputs.shape[-1], x.dtype)
        hyper_inputs = x + ops.expand_dims(positions, 0)
        w1 = self.hyper_in_dense_out(self.hyper_in_dense_in(hyper_inputs))
        w2 = self.hyper_out_dense_out(self.hyper_out_dense_in(hyper_inputs))

        # Step 3: the generated MLP across positions, W2 @ gelu(W1^T @ X):
        # (batch, token_mixing, hidden), then back to (batch, seq, hidden).
        hidden = ops.gelu(ops.matmul(ops.transpose(w1, (0, 2, 1)), x))
        mixed = self.mixing_norm(ops.matmul(w2, hidden))
        x = inputs + self.dropout(mixed, training=training)

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
                "token_mixing_size": self.token_mixing_size,
                "channel_mixing_size": self.channel_mixing_size,
                "dropout_rate": self.dropout_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
