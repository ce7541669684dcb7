"""Tests of benchmarks/bloom_capacity.py on two SIB-200 languages."""

import numpy as np
import pytest
from conftest import REPO
from conftest import load_script

from neurolite_keras.datasets import load_sib200
from neurolite_keras.featurizer import TextFeaturizer

bench = load_script(REPO / "benchmarks" / "bloom_capacity.py")


def test_bags_count_each_real_token_index_once_per_hash():
    featurizer = TextFeaturizer(
        max_sequence_length=6, num_hashes=4, bloom_filter_size=64
    )
    texts = ["le chat le chat", ""]
    bags = bench.bloom_bags(featurizer, texts).toarray()
    features = featurizer(texts)
    expected = np.zeros((2, 64))
    for row in range(2):
        for position in np.flatnonzero(features["padding_mask"][row]):
            for index in features["hash_indices"][row, position]:
                expected[row, index] += 1
    np.testing.assert_array_equal(bags, expected)
    assert bags[0].sum() == 4 * 4 and bags[1].sum() == 0


def test_bags_leave_out_the_empty_slots_of_bottom_k():
    featurizer = TextFeaturizer(
        max_sequence_length=4,
        num_hashes=8,
        bloom_filter_size=64,
        minhash_scheme="bottom_k",
    )
    features = featurizer(["a le"])
    filled = features["hash_indices"][0, :2]
    assert (filled == -1).any()
    bags = bench.bloom_bags(featurizer, ["a le"]).toarray()
    expected = np.bincount(filled[filled >= 0], minlength=64)
    np.testing.assert_array_equal(bags[0], expected)


@pytest.mark.parametrize("buckets", [4096])
def test_probe_beats_chance_and_writes_its_table(buckets, tmp_path):
    data = load_sib200(languages=["fra_Latn", "eng_Latn"])
    row = bench.linear_probe(data, {"bloom_filter_size": buckets})
    # Seven topics: chance is about 0.14 (a little more for the largest).
    assert 0.3 < row["test_accuracy"] <= 1.0
    assert row["featurizer"]["bloom_filter_size"] == buckets
    table = bench.markdown({"rows": [row], "command": "x"})
    assert f"| {buckets:,} | 16 | 2-4 |" in table
