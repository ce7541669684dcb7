"""Tests of benchmarks/memory_new_labels.py: its label split and margin
rule, and the whole run at `--quick` scale on small slices of Banking77
and SIB-200 (the structure of its results, not their accuracy)."""

import keras
import numpy as np
import pytest
from conftest import REPO
from conftest import load_script

from neurolite_keras.datasets import load_dataset

bench = load_script(REPO / "benchmarks" / "memory_new_labels.py")

SMALL = {
    "max_sequence_length": 8,
    "num_hashes": 4,
    "bloom_filter_size": 256,
    "projection_size": 8,
    "hidden_size": 8,
    "num_mixer_layers": 1,
    "token_mixing_size": 4,
    "channel_mixing_size": 8,
    "num_memory_slots": 4,
    "memory_key_size": 8,
    "num_episodic_slots": 24,
}


def test_label_split_and_margin_rule():
    names = [f"intent_{i:02d}" for i in range(77)]
    trained, held_out = bench.split_labels(names[::-1])
    assert held_out == sorted(names)[::7][:10][::-1]
    assert len(trained) == 67 and not set(trained) & set(held_out)
    with pytest.raises(ValueError, match="Cannot hold out 10 of 20"):
        bench.split_labels(names[:20])

    def row(trained, new):
        return {"trained": trained, "new": new}

    # Margin 0.0 teaches the most but costs the trained labels 5 points;
    # 0.1 is the best that stays within one point.
    dev = {
        "before": row(0.90, 0.0),
        "shots": {
            1: {0.0: row(0.85, 0.5), 0.1: row(0.895, 0.3), 0.2: row(0.9, 0.1)},
            5: {0.0: row(0.85, 0.6), 0.1: row(0.893, 0.4), 0.2: row(0.9, 0.2)},
        },
    }
    assert bench.choose_readout(dev, (0.0, 0.1, 0.2)) == 0.1
    # Settings as (label lexical weight, margin) pairs: the lexical weight
    # 2 at margin 0 teaches more at the same cost.
    pairs = {
        k: {(0.0, m): value for m, value in shot.items()}
        for k, shot in dev["shots"].items()
    }
    pairs[1][(2.0, 0.0)] = row(0.894, 0.45)
    pairs[5][(2.0, 0.0)] = row(0.892, 0.5)
    readouts = [*pairs[1]]
    chosen = bench.choose_readout({**dev, "shots": pairs}, readouts)
    assert chosen == (2.0, 0.0)


def _in_unit_interval(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _slow_on_jax(test):
    # JAX compiles every new shape of every eagerly run op and each step
    # function: the run takes minutes there, seconds elsewhere.
    if keras.backend.backend() == "jax":
        return pytest.mark.slow(test)
    return test


@_slow_on_jax
def test_quick_run_structure(data_dir):
    banking = bench.shrink(load_dataset("banking77", data_dir=data_dir), 2)
    sib = bench.shrink(
        load_dataset("sib200", data_dir=data_dir), 2, languages={"fra_Latn"}
    )
    results = bench.run(
        banking,
        sib,
        epochs=1,
        sib_epochs=1,
        # Tracing the step functions takes longer than these few steps
        # (compiling them is still the faster way on JAX).
        run_eagerly=keras.backend.backend() != "jax",
        banking_config=bench.banking77_config(**SMALL),
        sib_config=bench.sib200_config(**SMALL),
        shots=(1, 2),
        verbose=0,
    )
    part = results["new_labels"]
    assert len(part["held_out_labels"]) == 10
    assert part["num_test_examples"] == {"trained": 134, "new": 20}
    assert part["margin"] in bench.MARGINS
    assert part["label_lexical_weight"] in bench.LABEL_LEXICAL_WEIGHTS
    saved = (part["label_lexical_weight"], part["margin"])
    assert saved in bench.READOUTS
    assert part["readout_check_max_abs_difference"] < 1e-4
    rows = [part["test"]["before"], *part["test"]["shots"].values()]
    assert sorted(part["test"]["shots"]) == ["1", "2"]
    for row in rows:
        assert _in_unit_interval(row["trained"]), row
        assert _in_unit_interval(row["new"]), row

    slots = results["long_term_slots"]
    for arm in ("with_memory", "without_memory"):
        assert _in_unit_interval(slots[arm]["test_accuracy"])
        assert list(slots[arm]["per_language"]) == ["fra_Latn"]
    budget = slots["target_trainable_parameters"]
    assert slots["with_memory"]["trainable_parameters"] == budget
    gap = abs(slots["without_memory"]["trainable_parameters"] - budget)
    assert gap <= budget * 0.02

    recall = results["recall"]
    assert len(recall["questions"]) == len(bench.QUESTIONS)
    for row in recall["questions"]:
        weights = list(row["weights"].values())
        assert sorted(row["weights"]) == sorted(recall["written"])
        assert all(_in_unit_interval(w) for w in weights)
        assert sum(weights) <= 1.0 + 1e-5
        assert row["recalled"] == max(row["weights"], key=row["weights"].get)
        learned = row["learned_keys_only"]["weights"]
        assert sorted(learned) == sorted(recall["written"])
    seed = recall["seed_example"]
    assert _in_unit_interval(seed["weight"])
    assert _in_unit_interval(seed["learned_keys_only"])

    table = bench.markdown(results)
    assert "| none (before) |" in table and "| 2 |" in table
    for weight in bench.LABEL_LEXICAL_WEIGHTS:
        assert f"| {weight} | " in table
    assert "learned keys alone" in table and bench.SEED_QUESTION in table
    assert np.isfinite(results["total_seconds"])
