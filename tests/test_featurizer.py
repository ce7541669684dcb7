import os
import re
import subprocess
import sys

import mmh3
import numpy as np
import pytest

from neurolite_keras import TextFeaturizer
from neurolite_keras import tokenize

# Pinned outputs: any change to tokenization, n-grams or hashing shows here,
# and a phone port can check itself against the same numbers.
GOLDEN = {
    "Bonjour le monde": [
        [42, 744, 627, 444],
        [81, 649, 254, 658],
        [874, 635, 254, 801],
        [0, 0, 0, 0],
    ],
    "東京": [[759, 448, 376, 896], [983, 722, 8, 680], [0] * 4, [0] * 4],
    "हिन्दी": [[260, 175, 56, 533], [0] * 4, [0] * 4, [0] * 4],
}


def small_featurizer():
    return TextFeaturizer(
        max_sequence_length=4, num_hashes=4, bloom_filter_size=1000
    )


def test_golden_vectors():
    featurizer = small_featurizer()
    for text, expected in GOLDEN.items():
        assert featurizer(text)["hash_indices"][0].tolist() == expected


# Pinned outputs of the bottom-k scheme (6 values, 1,000 buckets).
GOLDEN_BOTTOM_K = {
    "Bonjour le monde": [
        [703, 650, 731, 901, 224, 954],
        [191, 436, 689, 155, 745, 801],
        [604, 665, 558, 511, 557, 265],
    ],
    "東京": [[230, 370, 918, -1, -1, -1], [479, 858, 194, -1, -1, -1], [0] * 6],
}


def test_bottom_k_golden_vectors_and_definition():
    featurizer = TextFeaturizer(
        max_sequence_length=3,
        num_hashes=6,
        bloom_filter_size=1000,
        minhash_scheme="bottom_k",
    )
    for text, expected in GOLDEN_BOTTOM_K.items():
        assert featurizer(text)["hash_indices"][0].tolist() == expected
    # The definition, computed independently: the smallest distinct
    # MurmurHash3 values of a token's n-grams, folded into the filter.
    prime = (1 << 31) - 1
    for token in ("le", "monde", "anticonstitutionnellement"):
        values = sorted(
            {
                mmh3.hash(gram, 0, signed=False) % prime
                for gram in featurizer.ngrams(token)
            }
        )[:6]
        expected = [v % 1000 for v in values] + [-1] * (6 - len(values))
        assert featurizer.token_indices([token]).tolist() == [expected]
    # An n-gram keeps its bucket in every token holding it; with
    # "k_functions" the shared n-grams rarely give shared indices.
    wide = TextFeaturizer(
        num_hashes=64, bloom_filter_size=1 << 20, minhash_scheme="bottom_k"
    )
    a, b = wide.token_indices(["économie", "économique"])
    shared = set(wide.ngrams("économie")) & set(wide.ngrams("économique"))
    assert len(set(a[a >= 0]) & set(b[b >= 0])) >= len(shared) - 1
    with pytest.raises(ValueError, match="minhash_scheme='top_k'"):
        TextFeaturizer(minhash_scheme="top_k")


def test_same_features_in_other_processes_and_hash_seeds():
    script = (
        "from neurolite_keras import TextFeaturizer\n"
        "f = TextFeaturizer(max_sequence_length=4, num_hashes=4, "
        "bloom_filter_size=1000)\n"
        "print(f('Bonjour le monde')['hash_indices'][0].tolist())\n"
    )
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(result.stdout.strip())
    assert outputs == {str(GOLDEN["Bonjour le monde"])}


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Où habite-t-elle ?", ["où", "habite", "-", "t", "-", "elle", "?"]),
        ("東京に住む", ["東", "京", "に", "住", "む"]),
        ("Привет, мир!", ["привет", ",", "мир", "!"]),
        ("مرحبا بالعالم", ["مرحبا", "بالعالم"]),
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),
        ("I ❤️ NY 👩‍👩‍👧", ["i", "❤️", "ny", "👩", "👩", "👧"]),
        ("mixed日本語text", ["mixed", "日", "本", "語", "text"]),
        ("", []),
        ("  \t\n ", []),
    ],
)
def test_tokenization_across_scripts(text, tokens):
    assert tokenize(text) == tokens


def test_padding_mask_and_empty_texts():
    featurizer = small_featurizer()
    features = featurizer(["Bonjour le monde", "", "   "])
    assert features["padding_mask"].tolist() == [
        [1, 1, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
    assert features["hash_indices"].dtype == np.int32
    assert not features["hash_indices"][1:].any()


def test_long_texts_are_truncated_cheaply():
    featurizer = TextFeaturizer(max_sequence_length=16)
    features = featurizer(["mot " * 25_000, "x" * 100_000])
    assert features["padding_mask"].sum(axis=1).tolist() == [16, 1]
    assert features["hash_indices"].max() < featurizer.bloom_filter_size


def test_indices_stay_in_range_and_cache_does_not_change_results():
    featurizer = TextFeaturizer(bloom_filter_size=97, cache_size=3)
    texts = ["le chat mange la souris", "the cat eats the mouse"] * 3
    first = featurizer(texts)["hash_indices"]
    again = TextFeaturizer(bloom_filter_size=97)(texts)["hash_indices"]
    np.testing.assert_array_equal(first, again)
    assert 0 <= first.min() and first.max() < 97


@pytest.mark.parametrize(
    "bad, where", [(None, "texts[1]"), (3.5, "texts[1]"), (12, "texts[1]")]
)
def test_non_strings_are_rejected_with_their_position(bad, where):
    with pytest.raises(TypeError, match=re.escape(f"`{where}` must be a str")):
        small_featurizer()(["ok", bad])


def test_invalid_settings():
    with pytest.raises(ValueError, match="num_hashes=0"):
        TextFeaturizer(num_hashes=0)
