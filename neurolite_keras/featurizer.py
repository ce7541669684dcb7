"""Vocabulary-free text features: MinHash over character n-grams, folded
into counting-Bloom-filter indices (pNLP-Mixer's projection, Fusco et al.
2023).

The featurizer runs outside the graph, in NumPy, so that the exported model
holds only built-in operators; a phone port reimplements these few steps
and checks itself against the golden vectors written beside the model.

The algorithm, exactly:

1. `tokenize` the NFKC-normalized, case-folded text (see `tokenizer.py`)
   and keep the first `max_sequence_length` tokens.
2. For each token, keep its first `max_token_chars` characters, wrap it as
   `"<" + token + ">"`, and take every character n-gram of that string for
   n in `[ngram_min, ngram_max]`, plus the whole wrapped token when it is
   longer than `ngram_max`.
3. Hash each n-gram's UTF-8 bytes with MurmurHash3 (x86, 32-bit, seed
   `hash_seed`) to an unsigned integer `x`, reduced modulo `P = 2**31 - 1`.
4. The token's `num_hashes` MinHash values, by `minhash_scheme`:
   - `"k_functions"` (pNLP-Mixer): for `k` in `range(num_hashes)`, the k-th
     value is `min over n-grams of (a_k * x + b_k) mod P`, where
     `a_k = 1 + murmur3("minhash-a-{k}") mod (P - 1)` and
     `b_k = murmur3("minhash-b-{k}") mod P` (same seed);
   - `"bottom_k"`: the distinct values `x` of the token's n-grams, sorted
     ascending, the first `num_hashes` of them. A token with fewer
     distinct values fills its remaining slots with -1 ("no index").
5. The token's k-th Bloom index is its k-th value modulo
   `bloom_filter_size` (-1 stays -1). The multiset of a token's indices is
   its counting Bloom filter.

With `"k_functions"` the same n-gram lands in a different bucket for each
function, so two tokens share an index only when the same function picks
the same n-gram; with `"bottom_k"` an n-gram has one bucket, shared by
every token that holds it (fastText's subwords, capped at `num_hashes` per
token, the cap choosing n-grams by hash so the choice is consistent).
"""

import mmh3
import numpy as np

from neurolite_keras.tokenizer import tokenize

_PRIME = (1 << 31) - 1


def check_texts(texts, name="texts"):
    """Returns `texts` as a list of str, or raises naming the bad entry.

    A single str is taken as one text. `None`, numbers and other non-str
    entries raise a `TypeError` that names their position and value.
    """
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray):
        texts = texts.reshape(-1).tolist()
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(
            f"`{name}` must be a str or a sequence of str. "
            f"Received: {type(texts).__name__}"
        ) from None
    for index, text in enumerate(texts):
        if isinstance(text, bytes):
            try:
                texts[index] = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(
                    f"`{name}[{index}]` is bytes that are not valid UTF-8: "
                    f"{text!r:.60}"
                ) from None
        elif not isinstance(text, str):
            raise TypeError(
                f"`{name}[{index}]` must be a str. Received "
                f"{type(text).__name__}: {text!r:.60}"
            )
    return texts


class TextFeaturizer:
    """Turns raw texts into the integer inputs of a NeuroLite model.

    For each text it returns `hash_indices`, the Bloom filter indices of each
    token (see the module docstring for the exact algorithm), and
    `padding_mask`, 1 for real tokens and 0 for padding (a padding token's
    indices are 0; with `minhash_scheme="bottom_k"` a real token's unused
    slots are -1, which `HashProjection(ignore_negative=True)` leaves out).
    The result does not depend on the process, `PYTHONHASHSEED` or the
    machine. Token results are cached, so features of natural text cost
    little more than tokenization.

    Texts longer than `max_sequence_length` tokens are truncated; an empty or
    whitespace-only text gives an all-zero mask (a model then predicts from
    its biases alone).

    Args:
        max_sequence_length: int. Tokens kept per text.
        num_hashes: int. MinHash values per token.
        minhash_scheme: str. `"k_functions"` or `"bottom_k"` (see the
            module docstring).
        bloom_filter_size: int. Range of the indices.
        ngram_min, ngram_max: int. Character n-gram orders.
        max_token_chars: int. Characters of a token that are hashed.
        lowercase: bool. Case-fold before hashing.
        hash_seed: int. MurmurHash3 seed.
        cache_size: int. Tokens kept in the cache. Defaults to `200_000`.

    Example:

    >>> featurizer = TextFeaturizer(max_sequence_length=8, num_hashes=4)
    >>> features = featurizer(["Bonjour le monde", ""])
    >>> features["hash_indices"].shape, features["padding_mask"].tolist()[1]
    ((2, 8, 4), [0, 0, 0, 0, 0, 0, 0, 0])
    """

    def __init__(
        self,
        max_sequence_length=64,
        num_hashes=16,
        bloom_filter_size=16384,
        ngram_min=2,
        ngram_max=4,
        max_token_chars=32,
        lowercase=True,
        hash_seed=0,
        cache_size=200_000,
        minhash_scheme="k_functions",
    ):
        # Reuse the config's validation so both report the same errors.
        from neurolite_keras.config import NeuroLiteConfig

        NeuroLiteConfig(
            max_sequence_length=max_sequence_length,
            num_hashes=num_hashes,
            minhash_scheme=minhash_scheme,
            bloom_filter_size=bloom_filter_size,
            ngram_min=ngram_min,
            ngram_max=ngram_max,
            max_token_chars=max_token_chars,
            lowercase=lowercase,
            hash_seed=hash_seed,
        )
        if isinstance(cache_size, bool) or not isinstance(cache_size, int):
            raise ValueError(
                f"`cache_size` must be an integer. Received: {cache_size!r}"
            )
        self.max_sequence_length = max_sequence_length
        self.num_hashes = num_hashes
        self.minhash_scheme = minhash_scheme
        self.bloom_filter_size = bloom_filter_size
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self.max_token_chars = max_token_chars
        self.lowercase = lowercase
        self.hash_seed = hash_seed
        self.cache_size = cache_size
        self._cache = {}
        k = np.arange(num_hashes)
        self._a = np.array(
            [1 + self._hash(f"minhash-a-{i}") % (_PRIME - 1) for i in k],
            dtype=np.uint64,
        )[:, None]
        self._b = np.array(
            [self._hash(f"minhash-b-{i}") % _PRIME for i in k],
            dtype=np.uint64,
        )[:, None]

    @classmethod
    def from_config(cls, config, **kwargs):
        """Builds the featurizer a `NeuroLiteConfig` describes."""
        return cls(**config.featurizer_config(), **kwargs)

    def get_config(self):
        return {
            "max_sequence_length": self.max_sequence_length,
            "num_hashes": self.num_hashes,
            "minhash_scheme": self.minhash_scheme,
            "bloom_filter_size": self.bloom_filter_size,
            "ngram_min": self.ngram_min,
            "ngram_max": self.ngram_max,
            "max_token_chars": self.max_token_chars,
            "lowercase": self.lowercase,
            "hash_seed": self.hash_seed,
        }

    def _hash(self, text):
        return mmh3.hash(text, self.hash_seed, signed=False)

    def tokenize(self, text):
        return tokenize(
            text, max_tokens=self.max_sequence_length, lowercase=self.lowercase
        )

    def ngrams(self, token):
        """The character n-grams of one token that are hashed."""
        wrapped = f"<{token[: self.max_token_chars]}>"
        grams = [
            wrapped[i : i + n]
            for n in range(self.ngram_min, self.ngram_max + 1)
            for i in range(len(wrapped) - n + 1)
        ]
        if len(wrapped) > self.ngram_max or not grams:
            grams.append(wrapped)
        return grams

    def token_indices(self, tokens):
        """Bloom indices of each token: int32 array `(len(tokens), K)`."""
        if not tokens:
            return np.zeros((0, self.num_hashes), np.int32)
        found = {t: self._cache.get(t) for t in tokens}
        missing = [t for t, row in found.items() if row is None]
        if missing:
            found.update(self._hash_tokens(missing))
        return np.stack([found[t] for t in tokens])

    def _hash_tokens(self, tokens):
        hashes, starts = [], []
        for token in tokens:
            starts.append(len(hashes))
            hashes.extend(self._hash(gram) for gram in self.ngrams(token))
        x = np.array(hashes, dtype=np.uint64) % _PRIME
        if self.minhash_scheme == "bottom_k":
            indices = np.full((len(tokens), self.num_hashes), -1, np.int32)
            ends = starts[1:] + [len(hashes)]
            for row, (start, end) in enumerate(zip(starts, ends)):
                smallest = np.unique(x[start:end])[: self.num_hashes]
                indices[row, : smallest.size] = (
                    smallest % self.bloom_filter_size
                )
        else:
            permuted = (self._a * x[None, :] + self._b) % _PRIME
            minhash = np.minimum.reduceat(permuted, starts, axis=1)
            indices = (minhash % self.bloom_filter_size).T.astype(np.int32)
        rows = dict(zip(tokens, indices))
        if len(self._cache) + len(rows) > self.cache_size:
            self._cache.clear()
        if len(rows) <= self.cache_size:
            self._cache.update(rows)
        return rows

    def __call__(self, texts):
        """Features of `texts` (a str or a sequence of str).

        Returns:
            A dict with `hash_indices`, int32 `(batch, max_sequence_length,
            num_hashes)`, and `padding_mask`, int32 `(batch,
            max_sequence_length)`.
        """
        texts = check_texts(texts)
        length = self.max_sequence_length
        hash_indices = np.zeros(
            (len(texts), length, self.num_hashes), dtype=np.int32
        )
        padding_mask = np.zeros((len(texts), length), dtype=np.int32)
        token_lists = [self.tokenize(text) for text in texts]
        lengths = [len(tokens) for tokens in token_lists]
        flat = self.token_indices([t for tokens in token_lists for t in tokens])
        offset = 0
        for row, n in enumerate(lengths):
            hash_indices[row, :n] = flat[offset : offset + n]
            padding_mask[row, :n] = 1
            offset += n
        return {"hash_indices": hash_indices, "padding_mask": padding_mask}

    def golden_vectors(self, texts):
        """Texts with their tokens and features, for checking a port."""
        features = self(texts)
        return [
            {
                "text": text,
                "tokens": self.tokenize(text),
                "hash_indices": features["hash_indices"][i].tolist(),
                "padding_mask": features["padding_mask"][i].tolist(),
            }
            for i, text in enumerate(check_texts(texts))
        ]
