"""`FNetBlock`: Fourier token mixing (Lee-Thorp et al. 2022) and a channel
MLP, with a matrix form that converts to TFLite built-in operators."""

import keras
import numpy as np
from keras import ops

from neurolite_keras.layers.chunking import per_position_in_chunks
from neurolite_keras.validation import check_choice
from neurolite_keras.validation import check_positive_float
from neurolite_keras.validation import check_positive_int
from neurolite_keras.validation import check_rate

IMPLEMENTATIONS = ("auto", "dft", "fft")


def dft_matrices(size):
    """Cosine and sine matrices `C[j, k] = cos(2 pi j k / size)` and
    `S[j, k] = sin(2 pi j k / size)`, float64 numpy arrays.

    The discrete Fourier transform matrix is `C - iS`. `j * k` is reduced
    modulo `size` in integers first, so large sizes keep full precision.
    """
    index = np.arange(size, dtype=np.int64)
    angles = (2.0 * np.pi / size) * (np.outer(index, index) % size)
    return np.cos(angles), np.sin(angles)


def _dft_matrices_in_graph(size):
    """`dft_matrices` for a length known only when the graph runs."""
    index = ops.arange(size, dtype="int32")
    products = ops.mod(
        ops.expand_dims(index, 1) * ops.expand_dims(index, 0), size
    )
    angles = ops.cast(products, "float32") * (
        2.0 * np.pi / ops.cast(size, "float32")
    )
    return ops.cos(angles), ops.sin(angles)


@keras.saving.register_keras_serializable(package="neurolite")
class FNetBlock(keras.layers.Layer):
    """One FNet block: the real part of a 2-D Fourier transform mixes the
    tokens, then an MLP mixes the channels.

    FNet (Lee-Thorp et al. 2022, https://arxiv.org/abs/2105.03824)
    replaces attention with a parameter-free mixing: the real part of the
    discrete Fourier transform over the sequence and hidden axes,
    `Re(F_seq @ X @ F_hidden)`. As in the paper, each sub-layer is
    post-normalized: `x = LN(x + Re(FFT2(x)))`, then
    `x = LN(x + MLP(x))`; the output of every block is layer-normalized,
    so the Fourier sums, which grow with `sequence * hidden`, never pile
    up in the residual stream. Dropout follows the MLP.

    Two forms compute the same mixing (they agree within 1e-4), chosen by
    `implementation`:

    - `"dft"`: with `C = cos(2 pi j k / n)` and `S = sin(2 pi j k / n)`,
      `Re(F_s X F_h) = C_s X C_h - S_s X S_h`: two matrix products with
      constant matrices (numpy-computed when the length is static, computed
      in the graph otherwise). It converts to TFLite with built-in
      operators only (`FULLY_CONNECTED` / `BATCH_MATMUL`, `SPLIT`,
      `CONCATENATION`), float32 or int8. Cost is `O(n^2 * hidden)` in the
      sequence length `n`, and each block holds one `(n, 2n)` constant
      (2 MB of float32 at `n = 512`).
    - `"fft"`: `keras.ops.fft2`, `O(n log n)`, and on CPU the faster form
      at every length we measured (a hidden-128 block on JAX: 0.9 against
      1.1 ms at `n = 64`, 5 against 10 ms at `n = 512`). TFLite has no
      built-in complex FFT, so this form converts only with TF Select (a
      Flex `FFT2D` op): use it in Keras, not for export.
    - `"auto"` (default): `"dft"` on the TensorFlow backend (the one that
      exports to TFLite) when the sequence length is static and at most
      `AUTO_DFT_MAX_LENGTH` (512); `"fft"` otherwise. So a model trained on
      JAX or torch runs the FFT, and the same model rebuilt on TensorFlow
      for export gets the built-in form, as exported NeuroLite models have
      a static length. To export a model longer than 512, pass
      `implementation="dft"`. `implementation_for(length)` tells which form
      a length gets.

    The mixing runs in float32 whatever the layer's compute dtype.

    **Note on masking:** padded positions are zeroed before the Fourier
    mixing, so their content never reaches real tokens. The block output at
    padded positions is not zeroed and carries no meaning (a zero row would
    enter the next layer normalization with zero variance, which ruins an
    int8 export's range for that normalization). The transform still spans
    the whole padded length: frequencies are those of length `n`, so a real
    token's output depends on how much padding there is (the same text
    padded to 64 or to 128 gives different outputs), though not on what the
    padding holds. Pad every text to one length, as the featurizer does.

    Args:
        channel_mixing_size: int. Hidden width of the channel-mixing MLP.
        dropout_rate: float. Dropout after the MLP. Defaults to `0.0`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        implementation: str. `"auto"`, `"dft"` or `"fft"`, see above.
            Defaults to `"auto"`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: float tensor `(batch, sequence, hidden)`.
        padding_mask: optional tensor `(batch, sequence)`, nonzero for real
            tokens.
        training: bool, whether dropout is active.

    Returns:
        Float tensor with the shape of `inputs`.

    Example:

    >>> block = FNetBlock(channel_mixing_size=12)
    >>> tuple(block(np.ones((2, 8, 4)), padding_mask=np.ones((2, 8))).shape)
    (2, 8, 4)
    >>> block.implementation_for(4096)
    'fft'
    >>> FNetBlock(12, implementation="dft").implementation_for(4096)
    'dft'
    """

    AUTO_DFT_MAX_LENGTH = 512

    def __init__(
        self,
        channel_mixing_size,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-5,
        implementation="auto",
        **kwargs,
    ):
        check_positive_int("channel_mixing_size", channel_mixing_size)
        check_rate("dropout_rate", dropout_rate)
        check_positive_float("layer_norm_epsilon", layer_norm_epsilon)
        check_choice("implementation", implementation, IMPLEMENTATIONS)
        super().__init__(**kwargs)
        self.channel_mixing_size = channel_mixing_size
        self.dropout_rate = dropout_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.implementation = implementation
        self.supports_masking = False
        self._sequence_dft = {}

    def implementation_for(self, sequence_length):
        """The form (`"dft"` or `"fft"`) used for `sequence_length` (an int,
        or `None` for a length unknown until the graph runs) on the current
        backend."""
        if self.implementation != "auto":
            return self.implementation
        if (
            keras.backend.backend() == "tensorflow"
            and sequence_length is not None
            and sequence_length <= self.AUTO_DFT_MAX_LENGTH
        ):
            return "dft"
        return "fft"

    def _norm(self, name, input_shape):
        norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name=name
        )
        norm.build(input_shape)
        return norm

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "FNetBlock expects inputs of shape (batch, sequence, hidden) "
                f"with a known hidden size. Received shape: {input_shape}"
            )
        hidden_size = input_shape[-1]
        # Hidden-axis DFT as one (hidden, 2 * hidden) matrix [C_h | S_h].
        cosine, sine = dft_matrices(hidden_size)
        self._hidden_dft = np.concatenate([cosine, sine], 1).astype("float32")
        self.mixing_norm = self._norm("mixing_norm", input_shape)
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
        self.channel_norm = self._norm("channel_norm", input_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def _sequence_matrix(self, length):
        """`[C_s | -S_s]`, `(length, 2 * length)`, for the sequence axis."""
        if isinstance(length, int):
            if length not in self._sequence_dft:
                cosine, sine = dft_matrices(length)
                self._sequence_dft[length] = np.concatenate(
                    [cosine, -sine], 1
                ).astype("float32")
            return ops.convert_to_tensor(self._sequence_dft[length])
        cosine, sine = _dft_matrices_in_graph(length)
        return ops.concatenate([cosine, -sine], 1)

    def _fourier_dft(self, x, length):
        # X @ [C_h | S_h] -> X C_h and X S_h, stacked along the sequence axis
        # so that [C_s | -S_s] @ [X C_h ; X S_h] = C_s X C_h - S_s X S_h.
        x_cos, x_sin = ops.split(
            ops.matmul(x, ops.convert_to_tensor(self._hidden_dft)), 2, axis=-1
        )
        stacked = ops.concatenate([x_cos, x_sin], axis=1)
        return ops.matmul(self._sequence_matrix(length), stacked)

    def _fourier_fft(self, x):
        real, _ = ops.fft2((x, ops.zeros_like(x)))
        return real

    def call(self, inputs, padding_mask=None, training=None):
        mask = None
        if padding_mask is not None:
            mask = ops.expand_dims(ops.cast(padding_mask, inputs.dtype), -1)
        x = inputs if mask is None else inputs * mask

        # Token mixing: real part of the 2-D DFT, in float32, post-LN.
        static_length = inputs.shape[1]
        x32 = ops.cast(x, "float32")
        if self.implementation_for(static_length) == "dft":
            length = static_length
            if length is None:
                length = ops.shape(inputs)[1]
            mixed = self._fourier_dft(x32, length)
        else:
            mixed = self._fourier_fft(x32)
        x = self.mixing_norm(x + ops.cast(mixed, x.dtype))

        # Channel mixing: an MLP across features, applied to each token.
        y = per_position_in_chunks(self._channel_mlp, x)
        return self.channel_norm(x + self.dropout(y, training=training))

    def _channel_mlp(self, x):
        return self.channel_dense_out(self.channel_dense_in(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channel_mixing_size": self.channel_mixing_size,
                "dropout_rate": self.dropout_rate,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "implementation": self.implementation,
            }
        )
        return config
