"""Tests of benchmarks/routing_and_rules.py: its parameter count, its rule
file, and its two experiments on a small slice of Banking77."""

import json

import keras
import numpy as np
import pytest
from conftest import REPO
from conftest import load_script

from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.datasets import TextClassificationData
from neurolite_keras.datasets import load_dataset
from neurolite_keras.models import NeuroLiteForClassification
from neurolite_keras.rules import RuleSet

bench = load_script(REPO / "benchmarks" / "routing_and_rules.py")

# Small enough to build and train in a few seconds.
SMALL = {
    "max_sequence_length": 8,
    "num_hashes": 4,
    "bloom_filter_size": 256,
    "projection_size": 16,
    "hidden_size": 16,
    "num_mixer_layers": 1,
    "token_mixing_size": 8,
    "channel_mixing_size": 16,
}
BACKEND = keras.backend.backend()
# Models this small train faster eagerly than they compile on TensorFlow;
# torch runs eagerly anyway. On JAX, eager steps are slower still and each
# new model's first step compiles for about 30 s of CPU, four times over,
# so the experiments are checked on the other two backends (the benchmark
# itself runs on TensorFlow).
EAGER = {"run_eagerly": True} if BACKEND == "tensorflow" else {}
trains_four_models = pytest.mark.skipif(
    BACKEND == "jax",
    reason="four tiny models' first train steps compile for about 2 min "
    "on JAX; tensorflow and torch cover these functions",
)


@pytest.fixture(scope="module")
def banking77():
    try:
        return load_dataset("banking77", download=False)
    except FileNotFoundError:
        pytest.skip("Banking77 not found under NEUROLITE_DATA_DIR")


def test_parameter_counts_on_a_known_config():
    # Hidden 16, 4 experts of width 8: the router has 16 * 4 weights and
    # each expert 16 * 8 + 8 + 8 * 16 + 16 = 280.
    def counts(**routing):
        config = NeuroLiteConfig.tiny(**SMALL, **routing)
        model = NeuroLiteForClassification(config, num_labels=3)
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        return bench.parameter_counts(model), trainable

    top1, trainable = counts(
        use_dynamic_routing=True, num_experts=4, expert_size=8
    )
    assert top1 == {
        "total": trainable,
        "active": trainable - 3 * 280,
        "moe_total": 64 + 4 * 280,
        "moe_active": 64 + 280,
    }
    top2, _ = counts(
        use_dynamic_routing=True, num_experts=4, expert_size=8,
        num_experts_per_token=2,
    )  # fmt: skip
    assert top2["active"] == trainable - 2 * 280
    assert top2["moe_active"] == 64 + 2 * 280
    one, trainable_one = counts(
        use_dynamic_routing=True, num_experts=1, expert_size=8
    )
    assert one == {
        "total": trainable_one,
        "active": trainable_one,
        "moe_total": 16 + 280,
        "moe_active": 16 + 280,
    }
    # The routed arm and the one-expert arm differ by 3 router columns.
    assert top1["active"] - one["active"] == 3 * 16
    dense, trainable_dense = counts()
    assert dense == {
        "total": trainable_dense, "active": trainable_dense,
        "moe_total": 0, "moe_active": 0,
    }  # fmt: skip


def test_rule_file_loads_and_names_only_real_labels(banking77):
    data = json.loads(bench.RULES_PATH.read_text())
    labels = set(banking77.label_names)
    assert data["labels"] == list(banking77.label_names)
    assert data["rules"] and {r["label"] for r in data["rules"]} <= labels
    rules = bench.load_rules(label_names=banking77.label_names)
    assert len(rules) == len(data["rules"])
    # The file is what derive_rules writes from the label names, so its
    # description says how it was made.
    assert data == bench.derive_rules(banking77.label_names)
    assert all(label in labels for label in bench.HAND_KEYWORDS)
    assert rules.explain(["Is there an age limit?"])[0][0]["label"] == (
        "age_limit"
    )
    # Every edit applies, and changes the rule set.
    for edit in bench.EDITS:
        assert bench.apply_edit(rules, edit) != rules
    with pytest.raises(ValueError, match="unknown label 'not_a_label'"):
        RuleSet.from_dict(
            {**data, "rules": [{**data["rules"][0], "label": "not_a_label"}]}
        )


def test_stratified_subset_is_seeded_and_covers_every_label(banking77):
    small = bench.stratified_subset(banking77.train, 0.1, seed=0)
    again = bench.stratified_subset(banking77.train, 0.1, seed=0)
    other = bench.stratified_subset(banking77.train, 0.1, seed=1)
    assert small.texts == again.texts and small.texts != other.texts
    assert set(small.labels) == set(banking77.train.labels)
    assert abs(len(small) - 0.1 * len(banking77.train)) < 77
    with pytest.raises(ValueError, match="fraction"):
        bench.stratified_subset(banking77.train, 0.0)


@pytest.fixture(scope="module")
def small_data(banking77):
    # About 2 texts per label to train on, 1 per label to test.
    return TextClassificationData(
        "banking77",
        banking77.label_names,
        bench.stratified_subset(banking77.train, 0.02, seed=0),
        bench.stratified_subset(banking77.dev, 0.02, seed=0),
        bench.stratified_subset(banking77.test, 0.02, seed=0),
    )


@pytest.fixture(scope="module")
def routing_result(small_data):
    return bench.routing_experiment(
        small_data, NeuroLiteConfig.tiny(**SMALL), epochs=1, batch_size=256,
        repeats=3, warmup=1, compile_options=EAGER,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rules_result(small_data):
    rules = bench.load_rules(label_names=small_data.label_names)
    return bench.rules_experiment(
        small_data, rules, NeuroLiteConfig.tiny(**SMALL), fraction=0.5,
        epochs=1, batch_size=256, compile_options=EAGER,
    )  # fmt: skip


@trains_four_models
def test_routing_experiment_at_quick_scale(routing_result):
    assert set(routing_result["arms"]) == set(bench.ROUTING_ARMS)
    for name, arm in routing_result["arms"].items():
        experts = bench.ROUTING_ARMS[name]["num_experts"]
        assert arm["num_experts"] == experts
        assert len(arm["test_expert_usage"]) == experts
        assert len(arm["train_expert_usage"]) == experts
        assert sum(arm["test_expert_usage"]) == pytest.approx(1.0, abs=1e-3)
        assert sum(arm["train_expert_usage"]) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= arm["test_accuracy"] <= 1.0
        assert arm["latency"]["calls"] == 3
        assert 0 < arm["latency"]["min_ms"] <= arm["latency"]["median_ms"]
    routed, one = (routing_result["arms"][k] for k in ("routed", "one_expert"))
    assert routed["active"] < routed["total"]
    assert one["active"] == one["total"]
    # Equal active parameters but for the 3 extra router columns.
    assert routed["active"] - one["active"] == 3 * SMALL["hidden_size"]


@trains_four_models
def test_rules_experiment_at_quick_scale(rules_result, small_data):
    run = rules_result["runs"][0]
    assert run["with_rules"]["num_parameters"] == (
        run["without_rules"]["num_parameters"] + 2 * len(small_data.label_names)
    )
    assert (
        run["with_rules"]["num_train_examples"]
        == (rules_result["num_train_examples"])
    )
    assert len(rules_result["edits"]) == len(bench.EDITS)
    for edit in rules_result["edits"]:
        # Only texts whose rule evidence changed may change prediction.
        assert edit["changed_unaffected"] == 0
        assert edit["changed"] <= edit["affected"] <= len(small_data.test)
        assert len(edit["examples"]) <= min(3, edit["changed"])
    alone = rules_result["rules_alone"]
    assert 0.0 < alone["coverage"] <= 1.0
    assert alone["accuracy"] <= alone["accuracy_where_fired"]


@trains_four_models
def test_results_are_written_as_markdown_and_json(
    routing_result, rules_result, small_data, tmp_path
):
    results = {
        "run": {"backend": keras.backend.backend(), "minutes": 0.1,
                "cpu_count": 2, "load_average": "1.0 -> 1.0"},
        "num_test_examples": len(small_data.test),
        "routing": routing_result,
        "rules": rules_result,
    }  # fmt: skip
    bench.write_results(results, tmp_path)
    markdown = (tmp_path / "routing_and_rules.md").read_text()
    assert "| 4 experts, top-1, width 128 |" in markdown
    assert markdown.count("| with rules |") == 1
    for edit in bench.EDITS:
        assert f"| {bench.describe_edit(edit)} |" in markdown
    saved = json.loads((tmp_path / "routing_and_rules.json").read_text())
    assert saved["routing"]["arms"]["routed"]["num_experts"] == 4
    assert saved["rules"]["edits"][0]["edit"] == bench.EDITS[0]
