"""`AssociativeMemory`: a modern-Hopfield memory (Ramsauer et al. 2020) with
learned long-term slots and episodic slots written at inference, and
`EpisodicLabelReadout`, a cosine classifier head whose labels labelled
episodic slots can extend without retraining."""

import warnings

import keras
import numpy as np
from keras import ops

from neurolite_keras import memory_state
from neurolite_keras.validation import check_int_in
from neurolite_keras.validation import check_number_in
from neurolite_keras.validation import check_positive_float
from neurolite_keras.validation import check_positive_int
from neurolite_keras.validation import check_rate

# Score given to excluded slots before the softmax; their weight is then
# multiplied by zero as well, so it is exactly zero.
_EXCLUDED = -1e9
# Label score of a label that no episodic slot carries (cosines are >= -1).
ABSENT_LABEL_SCORE = -2.0

# Lexical keys (see `AssociativeMemory`). A band mixes two of a token's
# MinHash indices into one bucket, so two tokens share a band's bucket with
# probability about J**2 (J: the Jaccard similarity of their character
# n-gram sets) plus chance collisions: a word matches itself in every band,
# its inflections in many, and words that merely share an affix in few.
HASHES_PER_BAND = 2
# Lexical buckets per band that `lexical_key_size` gives.
LEXICAL_BUCKETS_PER_BAND = 64
# Odd multipliers (and a per-band offset) that mix a band's two indices.
_SKETCH_MULTIPLIER = 40503
_COUNTER_MULTIPLIER = 30011
_COUNTER_BAND_OFFSET = 7919
# Smooth inverse frequency: a token of estimated frequency p weighs
# a / (a + p) in its text's lexical key (Arora et al. 2017, "A Simple but
# Tough-to-Beat Baseline for Sentence Embeddings").
_SIF_SMOOTHING = 1e-3
# Bucket counts are mixed with int32 products: at most this many.
_MAX_BUCKETS = 32768


def lexical_key_size(num_hashes, buckets_per_band=LEXICAL_BUCKETS_PER_BAND):
    """The `lexical_size` of a memory whose texts have `num_hashes` MinHash
    indices per token: `buckets_per_band` for each band of
    `HASHES_PER_BAND` indices.

    Args:
        num_hashes: int. MinHash indices per token (`config.num_hashes`).
        buckets_per_band: int. Defaults to `LEXICAL_BUCKETS_PER_BAND`.

    Returns:
        int.

    Example:

    >>> lexical_key_size(16)  # The tiny preset: 8 bands of 64 buckets.
    512
    """
    return _num_bands(num_hashes) * buckets_per_band


def _num_bands(num_hashes):
    return max(1, num_hashes // HASHES_PER_BAND)


def _band_buckets(hash_indices, num_buckets, multiplier, band_offset=0):
    """int32 `(batch, sequence, bands)`: each band's two MinHash indices
    mixed into a bucket in `[0, num_buckets)`. Integer ops only (FLOOR_MOD
    in TFLite); every product stays below `num_buckets**2`.

    An empty bottom-k slot (-1) folds into the last bucket, so short words'
    trailing bands all meet there: lexical keys were tuned and measured
    with `minhash_scheme="k_functions"`, where every slot is filled."""
    indices = ops.cast(hash_indices, "int32")
    num_hashes = indices.shape[-1]
    bands = _num_bands(num_hashes)
    if num_hashes == 1:
        first = second = indices
    else:
        first = indices[..., 0 : HASHES_PER_BAND * bands : HASHES_PER_BAND]
        second = indices[..., 1 : HASHES_PER_BAND * bands : HASHES_PER_BAND]
    first = ops.mod(first, num_buckets)
    second = ops.mod(second, num_buckets)
    mixed = first + (multiplier % num_buckets) * second
    if band_offset:
        offsets = np.arange(bands, dtype="int64") * band_offset % num_buckets
        mixed = mixed + ops.convert_to_tensor(offsets.astype("int32"))
    return ops.cast(ops.mod(mixed, num_buckets), "int32")


def _l2_normalize(x):
    # A zero vector stays zero (an empty text's key reads as no match). No
    # epsilon: a float16 export stores a tiny one as 0, and 0 * rsqrt(0) is
    # NaN, which a write would then spread into every key of the state.
    norm_squared = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.where(norm_squared > 0, norm_squared, 1.0))


def _masked_softmax(scores, valid):
    """Softmax over the last axis where `valid` (0/1, broadcast) is 1."""
    scores = ops.where(valid > 0, scores, _EXCLUDED)
    scores = scores - ops.max(scores, axis=-1, keepdims=True)
    weights = ops.exp(scores) * valid
    return weights / ops.sum(weights, axis=-1, keepdims=True)


def _written_key(sentence_query, lexical):
    """The key a text is written with: its learned part, then its lexical
    part when the memory has one."""
    if lexical is None:
        return sentence_query
    return ops.concatenate([sentence_query, lexical], axis=-1)


def _first_max_one_hot(x):
    """int32 one-hot of the first maximum along the last axis (no argmax)."""
    is_max = ops.cast(x >= ops.max(x, axis=-1, keepdims=True), "int32")
    first = ops.cast(ops.cumsum(is_max, axis=-1) == 1, "int32")
    return is_max * first


@keras.saving.register_keras_serializable(package="neurolite")
class AssociativeMemory(keras.layers.Layer):
    """Modern-Hopfield associative memory read by every token.

    Each token queries a memory of two levels and adds what it reads to the
    token stream. Long-term slots are trainable keys and values learned with
    the rest of the model. Episodic slots are written at inference, one per
    text, by `write()`: a phone can teach the model new examples without
    retraining, keep them across restarts (`get_state` / `set_state`, or the
    `.keras` file, since they are non-trainable weights) and see which one a
    query recalled (`return_attention=True`).

    Retrieval is one modern-Hopfield update (Ramsauer et al. 2020, "Hopfield
    Networks is All You Need"): with `h = LayerNorm(inputs)`, the query of a
    token is `q = normalize(W_q h - c)`, its weights over slots are
    `softmax(beta * q . k_j)` over the long-term slots and the valid episodic
    slots (keys are unit vectors, so `q . k` is a cosine), and the read is
    the weighted sum of the slot values, merged through a learned gate:
    `inputs + sigmoid(W_g [h, read]) * W_o read`. Empty episodic slots get
    exactly zero weight. Cost is linear in the sequence length.

    A text's key is the query of its pooled state: `normalize(W_q p - c)`
    where `p` is the mean of `h` over the real tokens; its value is `p`. A
    later text about the same content has a pooled query close to that key,
    and its tokens read that slot's value. `c` is a moving average of the
    texts' queries `W_q p` during training (frozen otherwise, like a batch
    normalization mean); removing it makes a cosine measure what two texts
    share beyond what every text shares.

    Lexical keys (`lexical_size > 0`, the call then needs `hash_indices`):
    the learned key follows what a model was trained on (a topic
    classifier's keys encode topic), so a question that names the person
    of a written sentence may still recall another sentence on its topic.
    An episodic key then also holds a lexical part: a sketch of what the
    text literally says, from the featurizer's MinHash indices. Each token
    falls in one bucket per band (two indices mixed, see
    `HASHES_PER_BAND`); a text's sketch is the mean of its tokens' one-hot
    buckets, each token weighted by its smooth inverse frequency
    `a / (a + p)` (Arora et al. 2017, `a = 1e-3`), minus `1 / buckets`
    (what a random token puts in a bucket), normalized. `p` is the token's
    frequency in the training texts, estimated by a counting Bloom filter
    of `num_frequency_counters` counters (the smallest counter of its
    bands; non-trainable, counted in training, frozen otherwise; before
    any training every token weighs 1). A rare word that two texts share,
    such as a name, then gives them a high lexical cosine; frequent words
    add little. Sentence retrieval scores an episodic slot by
    `q . k + lexical_weight * x . x_j` (`x` the text's lexical key, `x_j`
    the slot's): the inner product of the concatenated keys, the lexical
    parts scaled by `sqrt(lexical_weight)`. A long-term slot has no lexical
    part and keeps its score `q . k`, so a text that shares no word with
    any written one is retrieved as without lexical keys, up to the small
    lexical cosines of unrelated texts. Token reads use the learned parts
    only, so the token stream a text gets does not depend on the lexical
    part; it changes what `return_attention` reports, which slot a read
    refreshes and, with `label_lexical_weight > 0`, the label scores.

    Label scores (`num_labels > 0`, `return_label_scores=True`): per label,
    the cosine between the text's key and the label's prototype, the
    normalized mean key of its valid episodic slots. A key is the learned
    part, or, with lexical keys and `label_lexical_weight = w > 0`, the
    learned part joined by `sqrt(w)` times the lexical part, normalized:
    the score is then `(q . k + w x . x_k) / (1 + w)` for a text and a
    slot that both have tokens. A trained classifier's learned keys put a
    new intent's sentences close to the trained intents they resemble
    (Banking77's `declined_transfer` and `declined_card_payment`); the
    words that a new intent's written examples share with its test
    sentences, and with few others, tell them apart.

    Replacement policy (least recently used): every slot records the step of
    its last use (`episodic_last_used`, `-1` for an empty slot). A write
    stamps its slot with a fresh step; a read (outside training, when
    `track_reads`) stamps the episodic slot that got the highest sentence
    weight of a text. A write fills the empty slots first, in index order,
    then replaces the least recently used slot. Batched writes fill slots in
    the same order, as one-hot masks blended arithmetically: no scatter
    operation, so the exported model holds TFLite built-in operators only.

    Two ways to hold the episodic state:

    - Variables (default): the layer reads its own non-trainable weights;
      reads update the usage record; `write()` writes eagerly.
    - Explicit state, for TFLite export: pass `state` (a dict of the five
      arrays described in `neurolite_keras.memory_state`) and optionally
      `write_mask` / `write_labels`; the layer returns the new state as an
      extra output and changes no variable. Both paths run the same code,
      so a sequence of calls gives the same numbers either way. In one call,
      rows with `write_mask` 1 are written after every row has read the
      incoming state; only the other rows count as reads for the usage
      record.

    **Note:** an empty text (no real token) reads like any other, but is
    never written and its attention and label scores are empty (zeros and
    `ABSENT_LABEL_SCORE`). Written keys are computed with the query
    projection, center and token frequencies of the moment: after further
    training, `reset()` the memory and write its texts again. A pronoun
    shares no word with the sentence it refers to: the lexical part cannot
    resolve it, only the learned part can. Step stamps are int32: after
    2**31 - 1 writes and reads the counter overflows, which no phone will
    reach.

    Args:
        num_memory_slots: int. Learned long-term slots.
        num_episodic_slots: int. Slots written at inference.
        key_size: int. Width of queries and keys.
        beta: float. Inverse temperature of the Hopfield update, applied to
            cosine similarities. Defaults to `8.0`.
        num_labels: int. When positive, episodic slots may carry labels in
            `[0, num_labels)` and `return_label_scores` gives each text's
            similarity to each label (for `EpisodicLabelReadout`).
            Defaults to `0`.
        track_reads: bool. Whether reads refresh the usage record of the
            slot they recall. Defaults to `True`.
        centering_momentum: float in `[0, 1)`. Momentum of the moving
            average `c` of the queries, updated in training. Defaults to
            `0.99`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        keys_initializer: initializer of the long-term keys. Defaults to
            a unit normal.
        values_initializer: initializer of the long-term values. Defaults
            to a unit normal.
        lexical_size: int, at most 32768. Width of the lexical part of the
            episodic keys (`0`: none); a multiple of the number of bands,
            `num_hashes // 2` (see `lexical_key_size`). Defaults to `0`.
        lexical_weight: float, `0` to `100`. Weight of the lexical cosine
            in sentence retrieval, added to the learned one. The default
            lets a rare word shared with one written text outweigh the
            topic that the learned keys follow: a shared name gives a
            lexical cosine near 0.3 and unrelated texts one near 0 (+-0.05),
            while a topic classifier's learned cosines spread over about
            +-0.7. Defaults to `3.0`.
        num_frequency_counters: int, at most 32768. Counters of the token
            frequency estimate (with `lexical_size > 0`). Defaults to
            `16384`.
        label_lexical_weight: float, `0` to `100`. Weight `w` of the
            lexical part in the label scores (see above); ignored without
            lexical keys. On Banking77 (`benchmarks/memory_new_labels.py`,
            10 examples written per new intent, trained intents kept
            within a point), `2` recalled 57.5% of the new intents' dev
            sentences and `0` at best 26.0%. Defaults to `0` (the scores
            of layers saved before it existed).
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: float tensor `(batch, sequence, hidden)`.
        padding_mask: optional tensor `(batch, sequence)`, nonzero for real
            tokens.
        hash_indices: int tensor `(batch, sequence, num_hashes)`, the
            featurizer's MinHash indices of the same texts. Required when
            `lexical_size > 0`, ignored otherwise.
        training: bool. During training the usage record is left alone,
            and the query center `c` and the token counts are updated.
        return_attention: bool. Also return the sentence-level retrieval
            weights `(batch, num_memory_slots + num_episodic_slots)`: the
            softmax of `beta` times the similarity between the text's keys
            and each slot's (the cosine of the learned keys, mixed with the
            lexical cosine when `lexical_size > 0`), long-term slots first,
            then episodic slot `j` at column `num_memory_slots + j`. Each
            row sums to 1. Its argmax over the episodic columns is the
            written text the query recalls.
        return_label_scores: bool. Also return `(batch, num_labels)`: per
            label, the cosine between the pooled query and the label's
            prototype, the normalized mean key of the episodic slots with
            that label (with one slot, its key); `ABSENT_LABEL_SCORE` where
            no slot has the label. Requires `num_labels > 0`. (The mean
            rather than the best slot: with more slots per label the best
            one is closer to any text by chance; measured on Banking77, the
            mean keeps the readout's margin about the same for 1 to 10
            examples per label.)
        return_sentence_query: bool. Also return `(batch, key_size)`: each
            text's unit-length pooled query, the learned part of the key it
            would be written with (the features of `EpisodicLabelReadout`).
        state: optional dict of tensors, the explicit episodic state.
        write_mask: optional `(batch,)` tensor, 1 for the rows to write.
            Only with `state`.
        write_labels: optional int `(batch,)` tensor of labels for the
            written rows (`-1`: none). Only with `state`.

    Returns:
        The updated token stream, shaped like `inputs`; with any of the
        options, a tuple: the stream, then the attention, the label scores,
        the sentence query and the new state, each only when asked for.

    Example:

    >>> memory = AssociativeMemory(
    ...     num_memory_slots=4, num_episodic_slots=3, key_size=16)
    >>> hidden = np.random.default_rng(0).normal(size=(1, 6, 8))
    >>> hidden = hidden.astype("float32")
    >>> tuple(memory(hidden).shape)
    (1, 6, 8)
    >>> memory.write(hidden).tolist()
    [0]
    >>> _, attention = memory(hidden, return_attention=True)
    >>> int(np.argmax(ops.convert_to_numpy(attention)[0]))  # 0-3: long-term
    4
    """

    def __init__(
        self,
        num_memory_slots,
        num_episodic_slots,
        key_size,
        beta=8.0,
        num_labels=0,
        track_reads=True,
        centering_momentum=0.99,
        layer_norm_epsilon=1e-5,
        keys_initializer=None,
        values_initializer=None,
        lexical_size=0,
        lexical_weight=3.0,
        num_frequency_counters=16384,
        label_lexical_weight=0.0,
        **kwargs,
    ):
        check_positive_int("num_memory_slots", num_memory_slots)
        check_positive_int("num_episodic_slots", num_episodic_slots)
        check_positive_int("key_size", key_size)
        beta = check_positive_float("beta", beta)
        if (
            isinstance(num_labels, bool)
            or not isinstance(num_labels, int)
            or num_labels < 0
        ):
            raise ValueError(
                "`num_labels` must be a non-negative integer. "
                f"Received: num_labels={num_labels!r}"
            )
        if not isinstance(track_reads, bool):
            raise ValueError(
                "`track_reads` must be True or False. "
                f"Received: track_reads={track_reads!r}"
            )
        centering_momentum = check_rate(
            "centering_momentum", centering_momentum
        )
        layer_norm_epsilon = check_positive_float(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        lexical_size = check_int_in(
            "lexical_size", lexical_size, 0, _MAX_BUCKETS
        )
        lexical_weight = check_number_in(
            "lexical_weight", lexical_weight, 0.0, 100.0
        )
        check_int_in(
            "num_frequency_counters", num_frequency_counters, 1, _MAX_BUCKETS
        )
        label_lexical_weight = check_number_in(
            "label_lexical_weight", label_lexical_weight, 0.0, 100.0
        )
        super().__init__(**kwargs)
        self.num_memory_slots = num_memory_slots
        self.num_episodic_slots = num_episodic_slots
        self.key_size = key_size
        self.beta = beta
        self.num_labels = num_labels
        self.track_reads = track_reads
        self.centering_momentum = centering_momentum
        self.layer_norm_epsilon = layer_norm_epsilon
        self.keys_initializer = keras.initializers.get(
            keys_initializer or keras.initializers.RandomNormal(stddev=1.0)
        )
        self.values_initializer = keras.initializers.get(
            values_initializer or keras.initializers.RandomNormal(stddev=1.0)
        )
        self.lexical_size = lexical_size
        self.lexical_weight = lexical_weight
        self.num_frequency_counters = num_frequency_counters
        self.label_lexical_weight = label_lexical_weight
        self.value_size = None
        self.supports_masking = False

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "AssociativeMemory expects inputs of shape (batch, sequence, "
                f"hidden) with a known hidden size. Received: {input_shape}"
            )
        hidden_size = input_shape[-1]
        self.value_size = hidden_size
        self.input_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="input_norm"
        )
        self.input_norm.build(input_shape)
        self.query_dense = keras.layers.Dense(self.key_size, name="query")
        self.query_dense.build(input_shape)
        self.output_dense = keras.layers.Dense(hidden_size, name="output")
        self.output_dense.build(input_shape)
        self.gate_dense = keras.layers.Dense(
            hidden_size, activation="sigmoid", name="gate"
        )
        self.gate_dense.build((*input_shape[:-1], 2 * hidden_size))
        self.memory_keys = self.add_weight(
            name="memory_keys",
            shape=(self.num_memory_slots, self.key_size),
            initializer=self.keys_initializer,
        )
        self.memory_values = self.add_weight(
            name="memory_values",
            shape=(self.num_memory_slots, hidden_size),
            initializer=self.values_initializer,
        )
        self.query_center = self.add_weight(
            name="query_center",
            shape=(self.key_size,),
            initializer="zeros",
            trainable=False,
        )
        if self.lexical_size:
            # Each counter's share of the training tokens (per band), and
            # how many tokens were counted: frequencies rather than counts,
            # so that a float16 export stores them without overflow.
            self.token_frequencies = self.add_weight(
                name="token_frequencies",
                shape=(self.num_frequency_counters,),
                initializer="zeros",
                trainable=False,
            )
            self.tokens_counted = self.add_weight(
                name="tokens_counted",
                shape=(1,),
                initializer="zeros",
                trainable=False,
            )
        # The episodic state: non-trainable, so saved with the model.
        sizes = (self.num_episodic_slots, self.key_size, hidden_size)
        shapes = memory_state.memory_state_shapes(*sizes, self.lexical_size)
        empty = memory_state.empty_memory_state(*sizes, self.lexical_size)
        for name in memory_state.STATE_FIELDS:
            variable = self.add_weight(
                name=name,
                shape=shapes[name],
                dtype=str(empty[name].dtype),
                initializer=keras.initializers.Constant(
                    float(empty[name].flat[0])
                ),
                trainable=False,
            )
            setattr(self, name, variable)

    # Reading and writing, shared by the variable and explicit-state paths.

    def _variable_state(self):
        return {name: getattr(self, name) for name in memory_state.STATE_FIELDS}

    def _lexical_key(self, hash_indices, mask, has_tokens, training):
        """Each text's unit lexical key `(batch, lexical_size)` (zeros for a
        text without tokens); in training, also counts the tokens."""
        num_hashes = hash_indices.shape[-1]
        bands = _num_bands(num_hashes or 1)
        if num_hashes is None or self.lexical_size % bands:
            raise ValueError(
                f"AssociativeMemory '{self.name}': `lexical_size` must be a "
                f"multiple of the number of bands, num_hashes // "
                f"{HASHES_PER_BAND}. Received: lexical_size="
                f"{self.lexical_size}, num_hashes={num_hashes}"
            )
        dtype = mask.dtype
        counters = _band_buckets(
            hash_indices,
            self.num_frequency_counters,
            _COUNTER_MULTIPLIER,
            _COUNTER_BAND_OFFSET,
        )
        if training:
            # Running mean over all tokens counted so far.
            hits = ops.ones_like(counters, dtype="float32") * ops.cast(
                mask, "float32"
            )
            batch_counts = ops.segment_sum(
                ops.reshape(hits, (-1,)),
                ops.reshape(counters, (-1,)),
                num_segments=self.num_frequency_counters,
            )
            new_tokens = ops.sum(ops.cast(mask, "float32"))
            seen = self.tokens_counted + new_tokens
            self.token_frequencies.assign(
                (self.token_frequencies * self.tokens_counted + batch_counts)
                / ops.maximum(seen, 1.0)
            )
            self.tokens_counted.assign(seen)
        frequencies = ops.cast(self.token_frequencies, dtype)
        frequency = ops.min(ops.take(frequencies, counters, axis=0), axis=-1)
        weights = _SIF_SMOOTHING / (_SIF_SMOOTHING + frequency)
        weights = ops.expand_dims(weights * mask[..., 0], -1)  # (b, t, 1)
        buckets = self.lexical_size // bands
        sketch = ops.one_hot(
            _band_buckets(hash_indices, buckets, _SKETCH_MULTIPLIER),
            buckets,
            dtype=dtype,
        )
        total = ops.sum(weights, axis=1)
        total = ops.where(total > 0, total, 1.0)
        pooled = ops.sum(ops.expand_dims(weights, -1) * sketch, axis=1)
        pooled = ops.reshape(
            pooled / ops.expand_dims(total, -1) - 1.0 / buckets,
            (-1, self.lexical_size),
        )
        return _l2_normalize(pooled * has_tokens)

    def _encode(self, inputs, padding_mask, hash_indices=None, training=False):
        """Normalized tokens, the mask, each text's pooled state, its query
        (the learned part of its key), the query center, and its lexical
        key (`None` without `lexical_size`)."""
        dtype = inputs.dtype
        if padding_mask is None:
            mask = ops.ones(ops.shape(inputs)[:2], dtype=dtype)
        else:
            mask = ops.cast(padding_mask, dtype)
        mask = ops.expand_dims(mask, -1)
        count = ops.sum(mask, axis=1)
        has_tokens = ops.cast(count > 0, dtype)
        h = self.input_norm(inputs)
        pooled = ops.sum(h * mask, axis=1) / ops.maximum(count, 1.0)
        pooled_query = self.query_dense(pooled)
        if training:
            # Moving average of the texts' queries, as batch normalization
            # tracks its mean; frozen outside training.
            batch_mean = ops.sum(pooled_query * has_tokens, axis=0) / (
                ops.maximum(ops.sum(has_tokens), 1.0)
            )
            momentum = self.centering_momentum
            self.query_center.assign(
                momentum * self.query_center
                + (1.0 - momentum) * ops.cast(batch_mean, "float32")
            )
        center = ops.cast(self.query_center, dtype)
        sentence_query = _l2_normalize(pooled_query - center)
        lexical = None
        if self.lexical_size:
            if hash_indices is None:
                raise ValueError(
                    f"AssociativeMemory '{self.name}' has lexical keys "
                    f"(lexical_size={self.lexical_size}): pass the texts' "
                    "`hash_indices` as well."
                )
            lexical = self._lexical_key(
                hash_indices, mask, has_tokens, training
            )
        return h, mask, has_tokens, pooled, sentence_query, center, lexical

    def _step(
        self,
        inputs,
        padding_mask,
        hash_indices,
        state,
        write_mask,
        write_labels,
        track,
        training=False,
    ):
        """One read and optional write; returns (results, new_state)."""
        m = self.num_memory_slots
        dtype = inputs.dtype
        h, mask, has_tokens, pooled, sentence_query, center, lexical = (
            self._encode(inputs, padding_mask, hash_indices, training)
        )

        # The slots: long-term first, then episodic; empty ones excluded.
        # Each part of a stored key is normalized on its own.
        last_used = ops.cast(state["episodic_last_used"], "int32")
        valid_episodic = ops.cast(last_used >= 0, dtype)
        stored_keys = ops.cast(state["episodic_keys"], dtype)
        keys = ops.concatenate(
            [
                _l2_normalize(ops.cast(self.memory_keys, dtype)),
                _l2_normalize(stored_keys[:, : self.key_size]),
            ],
            axis=0,
        )
        values = ops.concatenate(
            [
                ops.cast(self.memory_values, dtype),
                ops.cast(state["episodic_values"], dtype),
            ],
            axis=0,
        )
        valid = ops.concatenate(
            [ops.ones((m,), dtype=dtype), valid_episodic], axis=0
        )

        # Token retrieval: one Hopfield update per token, then the gate.
        queries = _l2_normalize(self.query_dense(h) - center)
        weights = _masked_softmax(
            self.beta * ops.matmul(queries, ops.transpose(keys)), valid
        )
        read = ops.matmul(weights, values)
        gate = self.gate_dense(ops.concatenate([h, read], axis=-1))
        outputs = inputs + mask * gate * self.output_dense(read)

        # Sentence retrieval: the pooled query against every key, and the
        # lexical key against the episodic slots' lexical parts.
        similarity = ops.matmul(sentence_query, ops.transpose(keys))
        lexical_keys = None
        if lexical is not None:
            lexical_keys = _l2_normalize(stored_keys[:, self.key_size :])
            lexical_similarity = ops.matmul(
                lexical, ops.transpose(lexical_keys)
            )
            similarity = similarity + self.lexical_weight * (
                ops.concatenate(
                    [ops.zeros_like(similarity[:, :m]), lexical_similarity],
                    axis=-1,
                )
            )
        attention = _masked_softmax(self.beta * similarity, valid)
        attention = attention * has_tokens
        results = {
            "outputs": outputs,
            "attention": attention,
            "sentence_query": sentence_query,
        }
        if self.num_labels:
            scores = self._label_scores(
                sentence_query,
                keys[m:],
                state["episodic_labels"],
                valid_episodic,
                lexical,
                lexical_keys,
            )
            results["label_scores"] = scores * has_tokens + (
                ABSENT_LABEL_SCORE * (1.0 - has_tokens)
            )

        new_state, _ = self._update_state(
            state,
            attention if track else None,
            _written_key(sentence_query, lexical),
            pooled,
            has_tokens[:, 0],
            write_mask,
            write_labels,
        )
        return results, new_state

    def _label_scores(
        self,
        sentence_query,
        keys,
        labels,
        valid_episodic,
        lexical=None,
        lexical_keys=None,
    ):
        """Cosine between each text's key and each label's prototype, the
        normalized mean key of the valid slots with that label. A key is
        the learned part, joined by `sqrt(label_lexical_weight)` times the
        lexical part when there is one, then normalized."""
        weight = self.label_lexical_weight
        if lexical is not None and weight:
            scale = weight**0.5
            sentence_query = _l2_normalize(
                ops.concatenate([sentence_query, scale * lexical], axis=-1)
            )
            keys = _l2_normalize(
                ops.concatenate([keys, scale * lexical_keys], axis=-1)
            )
        num_labels = self.num_labels
        dtype = sentence_query.dtype
        labels = ops.cast(labels, "int32")
        labelled = (
            valid_episodic
            * ops.cast(labels >= 0, dtype)
            * ops.cast(labels < num_labels, dtype)
        )
        one_hot = ops.one_hot(
            ops.clip(labels, 0, num_labels - 1), num_labels, dtype=dtype
        ) * ops.expand_dims(labelled, -1)
        prototypes = _l2_normalize(ops.matmul(ops.transpose(one_hot), keys))
        present = ops.max(one_hot, axis=0)
        scores = ops.matmul(sentence_query, ops.transpose(prototypes))
        return ops.where(present > 0, scores, ABSENT_LABEL_SCORE)

    def _update_state(
        self,
        state,
        attention,
        written_key,
        pooled,
        has_tokens,
        write_mask,
        write_labels,
    ):
        """The state after the reads (when `attention` is given, each
        reading text stamps the slot it recalls) and the writes (when
        `write_mask` is given); also returns the int32 `(batch, slots)`
        one-hot of the slot each written row went to, or `None`."""
        m = self.num_memory_slots
        e = self.num_episodic_slots
        step = ops.cast(state["episodic_step"], "int32")
        last_used = ops.cast(state["episodic_last_used"], "int32")
        nonempty = ops.cast(has_tokens > 0, "int32")
        writing = nonempty if write_mask is not None else None
        if writing is not None:
            writing = writing * ops.cast(
                ops.cast(write_mask, "float32") > 0, "int32"
            )

        # Reads: each reading text stamps the episodic slot it recalls most.
        if attention is not None:
            reading = nonempty if writing is None else nonempty - writing
            top = _first_max_one_hot(attention)[:, m:]
            touched = ops.max(top * ops.expand_dims(reading, -1), axis=0)
            touched = touched * ops.cast(last_used >= 0, "int32")
            step = step + ops.max(touched)
            last_used = ops.where(touched > 0, step, last_used)

        new_state = {
            "episodic_keys": ops.cast(state["episodic_keys"], "float32"),
            "episodic_values": ops.cast(state["episodic_values"], "float32"),
            "episodic_labels": ops.cast(state["episodic_labels"], "int32"),
            "episodic_last_used": last_used,
            "episodic_step": step,
        }
        if writing is None:
            return new_state, None

        # Writes: the k-th written row takes the slot of rank k, where empty
        # slots rank first by index, then the least recently used. When
        # more rows than slots are written, only the last `e` are kept.
        num_written = ops.sum(writing)
        position = ops.cumsum(writing) - 1 - ops.maximum(num_written - e, 0)
        keep = writing * ops.cast(position >= 0, "int32")
        earlier = ops.convert_to_tensor(np.tril(np.ones((e, e), "int32"), -1))
        before = ops.cast(
            ops.expand_dims(last_used, 0) < ops.expand_dims(last_used, 1),
            "int32",
        )
        tied = ops.cast(
            ops.expand_dims(last_used, 0) == ops.expand_dims(last_used, 1),
            "int32",
        )
        rank = ops.sum(before + tied * earlier, axis=1)
        assignment = ops.expand_dims(keep, -1) * ops.cast(
            ops.expand_dims(rank, 0) == ops.expand_dims(position, -1), "int32"
        )
        assigned = ops.max(assignment, axis=0)
        blend = ops.cast(ops.transpose(assignment), "float32")
        kept = ops.expand_dims(1.0 - ops.cast(assigned, "float32"), -1)
        new_state["episodic_keys"] = new_state[
            "episodic_keys"
        ] * kept + ops.matmul(blend, ops.cast(written_key, "float32"))
        new_state["episodic_values"] = new_state[
            "episodic_values"
        ] * kept + ops.matmul(blend, ops.cast(pooled, "float32"))
        if write_labels is None:
            labels_in = -ops.ones_like(writing)
        else:
            labels_in = ops.cast(write_labels, "int32")
        new_labels = ops.sum(assignment * ops.expand_dims(labels_in, -1), 0)
        new_state["episodic_labels"] = ops.where(
            assigned > 0, new_labels, new_state["episodic_labels"]
        )
        stamps = step + 1 + position
        new_stamps = ops.sum(assignment * ops.expand_dims(stamps, -1), 0)
        new_state["episodic_last_used"] = ops.where(
            assigned > 0, new_stamps, last_used
        )
        new_state["episodic_step"] = step + ops.minimum(num_written, e)
        return new_state, assignment

    def call(
        self,
        inputs,
        padding_mask=None,
        hash_indices=None,
        training=None,
        return_attention=False,
        return_label_scores=False,
        return_sentence_query=False,
        state=None,
        write_mask=None,
        write_labels=None,
    ):
        if return_label_scores and not self.num_labels:
            raise ValueError(
                "`return_label_scores=True` needs a memory built with "
                f"num_labels > 0. Received: num_labels={self.num_labels}"
            )
        if state is None and (
            write_mask is not None or write_labels is not None
        ):
            raise ValueError(
                "`write_mask` and `write_labels` need an explicit `state`; "
                "to write into the layer's own slots, call `write()`."
            )
        explicit = state is not None
        if not explicit:
            state = self._variable_state()
        track = self.track_reads and not training
        results, new_state = self._step(
            inputs,
            padding_mask,
            hash_indices,
            state,
            write_mask,
            write_labels,
            track,
            training=bool(training),
        )
        if not explicit and track:
            self.episodic_last_used.assign(new_state["episodic_last_used"])
            self.episodic_step.assign(new_state["episodic_step"])

        outputs = [results["outputs"]]
        if return_attention:
            outputs.append(results["attention"])
        if return_label_scores:
            outputs.append(results["label_scores"])
        if return_sentence_query:
            outputs.append(results["sentence_query"])
        if explicit:
            outputs.append(new_state)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # Eager state handling (outside `model.fit`).

    def _require_built(self, what):
        if not self.built:
            raise ValueError(
                f"AssociativeMemory '{self.name}' is not built yet, so it has "
                f"no episodic slots to {what}. Call it on a batch first."
            )

    def write(
        self, keys_source, padding_mask=None, labels=None, hash_indices=None
    ):
        """Writes one episodic slot per text; returns the slots written.

        Each text's key is its pooled query (and its lexical key) and its
        value its pooled state (see the class docstring); slots are chosen
        by the replacement policy. Runs eagerly, outside `model.fit`.

        - An empty batch is a no-op and returns an empty array.
        - A text with no real token is not written (slot `-1`, a warning).
        - More texts than `num_episodic_slots`: only the last ones are kept
          (slot `-1` for the others, a warning).

        Args:
            keys_source: float array `(batch, sequence, hidden)`, the
                memory's input for the texts (the backbone's output).
            padding_mask: optional array `(batch, sequence)`, nonzero for
                real tokens.
            labels: optional int sequence `(batch,)`; `-1` for no label.
                With `num_labels > 0`, labels must be below it.
            hash_indices: int array `(batch, sequence, num_hashes)`, the
                texts' MinHash indices. Required with `lexical_size > 0`.

        Returns:
            int32 NumPy array `(batch,)`: the slot index of each text.
        """
        shape = tuple(ops.shape(keys_source))
        if len(shape) != 3:
            raise ValueError(
                "`keys_source` must have shape (batch, sequence, hidden), "
                f"the memory's input. Received shape: {shape}"
            )
        if not self.built:
            self.build(shape)
        if shape[-1] != self.value_size:
            raise ValueError(
                f"`keys_source` has hidden size {shape[-1]}; memory "
                f"'{self.name}' was built for {self.value_size}."
            )
        batch = shape[0]
        if padding_mask is not None:
            mask_shape = tuple(ops.shape(padding_mask))
            if mask_shape != shape[:2]:
                raise ValueError(
                    f"`padding_mask` must have shape {shape[:2]}. "
                    f"Received shape: {mask_shape}"
                )
        labels = self._check_labels(labels, batch)
        if self.lexical_size:
            hash_shape = (
                None if hash_indices is None else tuple(ops.shape(hash_indices))
            )
            if hash_shape is None or hash_shape[:2] != shape[:2]:
                raise ValueError(
                    f"Memory '{self.name}' has lexical keys: `hash_indices` "
                    f"of shape {shape[:2]} + (num_hashes,) is required. "
                    f"Received shape: {hash_shape}"
                )
        if batch == 0:
            return np.zeros((0,), "int32")

        if padding_mask is None:
            nonempty = np.ones((batch,), bool)
        else:
            nonempty = ops.convert_to_numpy(padding_mask).sum(axis=1) > 0
        if not nonempty.all():
            warnings.warn(
                f"Texts {np.flatnonzero(~nonempty).tolist()} have no tokens "
                "and were not written to episodic memory.",
                stacklevel=2,
            )
        if nonempty.sum() > self.num_episodic_slots:
            warnings.warn(
                f"Writing {int(nonempty.sum())} texts into "
                f"{self.num_episodic_slots} episodic slots: only the last "
                f"{self.num_episodic_slots} are kept.",
                stacklevel=2,
            )

        inputs = ops.cast(keys_source, self.compute_dtype)
        _, _, has_tokens, pooled, sentence_query, _, lexical = self._encode(
            inputs, padding_mask, hash_indices
        )
        new_state, assignment = self._update_state(
            self._variable_state(),
            None,
            _written_key(sentence_query, lexical),
            pooled,
            has_tokens[:, 0],
            ops.ones((batch,), dtype="int32"),
            ops.convert_to_tensor(labels),
        )
        for name in memory_state.STATE_FIELDS:
            getattr(self, name).assign(new_state[name])
        assignment = ops.convert_to_numpy(assignment)
        return np.where(
            assignment.any(axis=1), assignment.argmax(axis=1), -1
        ).astype("int32")

    def _check_labels(self, labels, batch):
        if labels is None:
            return np.full((batch,), -1, "int32")
        array = np.asarray(labels)
        if array.shape != (batch,) or (
            array.size and array.dtype.kind not in "iu"
        ):
            raise ValueError(
                f"`labels` must be {batch} integers, one per text. "
                f"Received: {labels!r:.80}"
            )
        upper = self.num_labels if self.num_labels else np.iinfo("int32").max
        bad = (array < -1) | (array >= upper)
        if bad.any():
            raise ValueError(
                f"`labels` must be -1 (none) or in [0, {upper}). Received "
                f"{array[bad][0]} at position {int(np.flatnonzero(bad)[0])}"
            )
        return array.astype("int32")

    def reset(self):
        """Empties every episodic slot and sets the step counter to 0."""
        self._require_built("reset")
        empty = memory_state.empty_memory_state(
            self.num_episodic_slots,
            self.key_size,
            self.value_size,
            self.lexical_size,
        )
        for name, value in empty.items():
            getattr(self, name).assign(value)

    def get_state(self):
        """Returns the episodic state as a dict of NumPy arrays (copies)."""
        self._require_built("read")
        return {
            name: np.array(ops.convert_to_numpy(getattr(self, name)))
            for name in memory_state.STATE_FIELDS
        }

    def set_state(self, state):
        """Replaces the episodic state after checking all of it.

        Raises:
            ValueError: a name, shape (slot count included), dtype or value
                is wrong; the current memory is then left unchanged.
        """
        self._require_built("set")
        clean = memory_state.validate_memory_state(
            state,
            self.num_episodic_slots,
            self.key_size,
            self.value_size,
            lexical_size=self.lexical_size,
            num_labels=self.num_labels,
            where=f"AssociativeMemory '{self.name}'.set_state",
        )
        for name in memory_state.STATE_FIELDS:
            getattr(self, name).assign(clean[name])

    def compute_output_spec(
        self,
        inputs,
        padding_mask=None,
        hash_indices=None,
        training=None,
        return_attention=False,
        return_label_scores=False,
        return_sentence_query=False,
        state=None,
        write_mask=None,
        write_labels=None,
    ):
        batch = inputs.shape[0]
        dtype = self.compute_dtype
        outputs = [keras.KerasTensor(inputs.shape, dtype=dtype)]
        if return_attention:
            slots = self.num_memory_slots + self.num_episodic_slots
            outputs.append(keras.KerasTensor((batch, slots), dtype=dtype))
        if return_label_scores:
            outputs.append(
                keras.KerasTensor((batch, self.num_labels), dtype=dtype)
            )
        if return_sentence_query:
            outputs.append(keras.KerasTensor((batch, self.key_size), dtype))
        if state is not None:
            shapes = memory_state.memory_state_shapes(
                self.num_episodic_slots,
                self.key_size,
                inputs.shape[-1],
                self.lexical_size,
            )
            outputs.append(
                {
                    name: keras.KerasTensor(
                        shapes[name],
                        dtype="float32"
                        if name in memory_state.FLOAT_FIELDS
                        else "int32",
                    )
                    for name in memory_state.STATE_FIELDS
                }
            )
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_memory_slots": self.num_memory_slots,
                "num_episodic_slots": self.num_episodic_slots,
                "key_size": self.key_size,
                "beta": self.beta,
                "num_labels": self.num_labels,
                "track_reads": self.track_reads,
                "centering_momentum": self.centering_momentum,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "keys_initializer": keras.initializers.serialize(
                    self.keys_initializer
                ),
                "values_initializer": keras.initializers.serialize(
                    self.values_initializer
                ),
                "lexical_size": self.lexical_size,
                "lexical_weight": self.lexical_weight,
                "num_frequency_counters": self.num_frequency_counters,
                "label_lexical_weight": self.label_lexical_weight,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="neurolite")
class EpisodicLabelReadout(keras.layers.Layer):
    """Cosine classifier whose labels can be extended by episodic slots.

    A classification head for a model with an `AssociativeMemory` built
    with `num_labels`. It scores each label twice and keeps the larger
    score: by the cosine between a query `q` (in `NeuroLiteForClassification`,
    a projection of the pooled text after the memory read) and one learned
    weight vector per label, and by the memory's label score `s_l`, the
    cosine between the text and the prototype (mean key) of the label's
    episodic slots, measured in the key space the slots were written in.
    A label the model never saw in training (it keeps a row in the head,
    which training pushes away from every text) is taught by writing a few
    labelled examples: a text closer to their prototype than to any trained
    label takes the new label; a text closer to a trained label keeps its
    prediction. Nothing is retrained. A text far from every written example
    keeps its trained scores, changed only by what the memory read adds to
    its token stream, so by little when it attends little to the new slots.

    The logits are `scale * max(cos(q, w_l), s_l - margin)`, where `w_l`
    is the label's weight and `s_l` is `ABSENT_LABEL_SCORE` for a label
    without slots. With no labelled slot they are exactly
    `scale * cos(q, w_l)`, so training with an empty memory trains a plain
    cosine classifier. Both scores are cosines on the same scale, so one
    knob decides the competition: `margin`, by how much a written
    prototype must be closer than a trained label to win. It trades
    accuracy on the new labels against accuracy on the trained ones and
    only matters at inference (`scale` does not change the argmax). Choose
    it on held-out data, as `benchmarks/memory_new_labels.py` does (its
    results, with the margin it chose, are in the README).

    Args:
        num_labels: int. Number of labels, trained and to be taught.
        scale: float. Logit scale (inverse temperature) of the cosines.
            Defaults to `16.0`.
        margin: float in `[0, 1)`. Defaults to `0.2`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        sentence_query: float tensor `(batch, query_size)`: the query
            the trained label vectors are matched against.
        label_scores: float tensor `(batch, num_labels)`, from
            `AssociativeMemory(..., return_label_scores=True)`.

    Returns:
        Float tensor `(batch, num_labels)` of logits.

    Example:

    >>> readout = EpisodicLabelReadout(num_labels=3, margin=0.2)
    >>> readout.build((None, 2))
    >>> _ = readout.label_weights.assign(np.array([[1, 0], [0, 1], [-1, 0]]))
    >>> query = np.array([[0.6, -0.8]], "float32")  # cosines 0.6, -0.8, -0.6
    >>> empty = np.full((1, 3), -2.0, "float32")  # no labelled slot
    >>> int(np.argmax(ops.convert_to_numpy(readout(query, empty))[0]))
    0
    >>> taught = np.array([[-2.0, -2.0, 0.95]], "float32")  # label 2's slots
    >>> int(np.argmax(ops.convert_to_numpy(readout(query, taught))[0]))
    2
    """

    def __init__(self, num_labels, scale=16.0, margin=0.2, **kwargs):
        check_positive_int("num_labels", num_labels)
        scale = check_positive_float("scale", scale)
        margin = check_rate("margin", margin)
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.scale = scale
        self.margin = margin

    def build(self, sentence_query_shape, label_scores_shape=None):
        if sentence_query_shape[-1] is None:
            raise ValueError(
                "EpisodicLabelReadout needs a known query size. Received "
                f"shape: {sentence_query_shape}"
            )
        self.label_weights = self.add_weight(
            name="label_weights",
            shape=(self.num_labels, sentence_query_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )

    def call(self, sentence_query, label_scores):
        query = _l2_normalize(sentence_query)
        weights = _l2_normalize(ops.cast(self.label_weights, query.dtype))
        cosine = ops.matmul(query, ops.transpose(weights))
        episodic = ops.cast(label_scores, query.dtype) - self.margin
        return self.scale * ops.maximum(cosine, episodic)

    def compute_output_shape(self, sentence_query_shape, label_scores_shape):
        return (sentence_query_shape[0], self.num_labels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_labels": self.num_labels,
                "scale": self.scale,
                "margin": self.margin,
            }
        )
        return config
