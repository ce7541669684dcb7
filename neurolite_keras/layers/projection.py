"""`HashProjection`: the hashing bottleneck, an embedding bag over a Bloom
filter."""

import keras
from keras import ops

from neurolite_keras.validation import check_choice
from neurolite_keras.validation import check_positive_int
from neurolite_keras.validation import check_rate


@keras.saving.register_keras_serializable(package="neurolite")
class HashProjection(keras.layers.Layer):
    """Projects counting-Bloom-filter indices to a dense bottleneck.

    A token is described by `num_hashes` indices into a counting Bloom
    filter of `num_buckets` buckets (see `TextFeaturizer`). Multiplying the
    filter's count vector by a `(num_buckets, output_dim)` matrix equals
    summing the matrix rows its indices select, so this layer gathers and
    sums those rows and never builds the count vector. There is no
    vocabulary: unseen words, typos and new scripts map to rows shared with
    the n-grams they contain.

    Args:
        num_buckets: int. Size of the Bloom filter, so rows of the matrix.
        output_dim: int. Width of the bottleneck.
        combiner: str. `"mean"` (sum divided by the number of indices) or
            `"sum"`. Defaults to `"mean"`.
        embeddings_initializer: initializer of the matrix. Defaults to
            `"glorot_uniform"`.
        dropout_rate: float in `[0, 1)`. In training, each of a token's
            indices is dropped with this probability and the rows left are
            combined (the mean over the kept rows with `"mean"`; the sum
            rescaled by the kept fraction with `"sum"`). This makes the
            model rely on the n-gram fingerprints words share rather than on
            each word's exact set of indices. Defaults to `0.0`.
        seed: int or `None`. Seed of that dropout.
        ignore_negative: bool. When `True`, negative indices mark empty
            slots (a token with fewer indices than slots, as the
            featurizer's `"bottom_k"` MinHash gives) and are left out of the
            sum and of the mean's count. Defaults to `False`, where every
            slot holds an index.
        **kwargs: base `Layer` arguments (`name`, `dtype`...).

    Call arguments:
        inputs: int tensor `(batch, sequence, num_hashes)` with values in
            `[0, num_buckets)`, or -1 for an empty slot when
            `ignore_negative`. Out-of-range indices are a caller error:
            some backends clip them, others raise.
        training: bool. Index dropout is applied only in training.

    Returns:
        Float tensor `(batch, sequence, output_dim)`.

    Example:

    >>> layer = HashProjection(num_buckets=64, output_dim=8)
    >>> tuple(layer(np.zeros((2, 5, 4), "int32")).shape)
    (2, 5, 8)
    """

    def __init__(
        self,
        num_buckets,
        output_dim,
        combiner="mean",
        embeddings_initializer="glorot_uniform",
        dropout_rate=0.0,
        seed=None,
        ignore_negative=False,
        **kwargs,
    ):
        check_positive_int("num_buckets", num_buckets)
        check_positive_int("output_dim", output_dim)
        check_choice("combiner", combiner, ("mean", "sum"))
        check_rate("dropout_rate", dropout_rate)
        super().__init__(**kwargs)
        if not isinstance(ignore_negative, bool):
            raise ValueError(
                "`ignore_negative` must be True or False. "
                f"Received: ignore_negative={ignore_negative!r}"
            )
        self.ignore_negative = ignore_negative
        self.dropout_rate = float(dropout_rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.num_buckets = num_buckets
        self.output_dim = output_dim
        self.combiner = combiner
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "HashProjection expects indices of shape (batch, sequence, "
                f"num_hashes). Received shape: {input_shape}"
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_buckets, self.output_dim),
            initializer=self.embeddings_initializer,
        )

    def call(self, inputs, training=False):
        indices = ops.cast(inputs, "int32")
        # 0/1 per slot, or `None` where every slot holds an index.
        present = None
        if self.ignore_negative:
            present = ops.cast(indices >= 0, self.compute_dtype)
            indices = ops.maximum(indices, 0)
        rows = ops.take(self.embeddings, indices, axis=0)
        num_hashes = ops.cast(ops.shape(indices)[-1], rows.dtype)
        keep = present
        if training and self.dropout_rate > 0:
            kept = keras.random.uniform(
                ops.shape(indices), seed=self.seed_generator
            )
            kept = ops.cast(kept >= self.dropout_rate, rows.dtype)
            keep = kept if present is None else present * kept
        if keep is None:
            outputs = ops.sum(rows, axis=-2)
            if self.combiner == "mean":
                outputs = outputs / num_hashes
            return outputs
        outputs = ops.sum(rows * ops.expand_dims(keep, -1), axis=-2)
        # A token with no index left (all dropped) gives zeros.
        count = ops.maximum(ops.sum(keep, axis=-1, keepdims=True), 1.0)
        if self.combiner == "mean":
            return outputs / count
        # "sum": rescaled by the kept fraction of the indices present.
        if present is not None:
            num_hashes = ops.maximum(
                ops.sum(present, axis=-1, keepdims=True), 1.0
            )
        return outputs * (num_hashes / count)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_buckets": self.num_buckets,
                "output_dim": self.output_dim,
                "combiner": self.combiner,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "dropout_rate": self.dropout_rate,
                "seed": self.seed,
                "ignore_negative": self.ignore_negative,
            }
        )
        return config
