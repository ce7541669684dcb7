"""Tests of benchmarks/sib200_accuracy.py: the row names of its table."""

from conftest import REPO
from conftest import load_script

from neurolite_keras import NeuroLiteConfig

bench = load_script(REPO / "benchmarks" / "sib200_accuracy.py")


def test_row_names_tell_configs_and_seeds_apart():
    config = NeuroLiteConfig.tiny(
        bloom_filter_size=81920,
        projection_size=8,
        minhash_scheme="bottom_k",
        num_hashes=32,
        ngram_min=1,
        pooling="mean_max",
    ).get_config()
    name = bench.model_name("tiny", "hypermixer", config)
    assert name == (
        "NeuroLite-tiny (hypermixer, 81,920 x 8 Bloom, bottom-k MinHash "
        "32 x 1-4-grams, mean+max pooling)"
    )
    assert bench.model_name("tiny", "hypermixer", config, seed=0) == name
    assert bench.model_name("tiny", "hypermixer", config, seed=1) == (
        name[:-1] + ", seed 1)"
    )
    # A run saved before `pooling` and `minhash_scheme` were fields.
    old = {k: v for k, v in config.items() if k != "pooling"}
    del old["minhash_scheme"]
    assert bench.model_name("tiny", "mlp", old) == (
        "NeuroLite-tiny (mlp, 81,920 x 8 Bloom, mean pooling)"
    )
