"""Memory, routing and rules wired into the models, end to end."""

import numpy as np
import pytest

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras import NeuroLiteModel
from neurolite_keras import load_model

TINY = dict(
    hidden_size=32, projection_size=32, num_mixer_layers=1,
    bloom_filter_size=512, max_sequence_length=16, token_mixing_size=8,
    channel_mixing_size=32, num_episodic_slots=4, num_memory_slots=4,
    memory_key_size=16, expert_size=16,
)
RULES = {
    "rules": [
        {"name": "sport", "label": "pos", "effect": "support",
         "weight": 0.9, "when": {"any_keywords": ["match"]}},
    ]
}


@pytest.fixture(scope="module")
def full_model():
    config = NeuroLiteConfig(
        **TINY, use_external_memory=True, use_dynamic_routing=True,
        use_symbolic_module=True,
    )
    model = NeuroLiteForClassification(config, label_names=["neg", "pos"],
                                       rules=RULES)
    model.compile()
    model.fit(["le match", "la pluie"] * 8, ["pos", "neg"] * 8, epochs=1,
              verbose=0)
    return model


def test_seed_memory_example_recalls_the_written_sentence():
    config = NeuroLiteConfig(**TINY)
    config.use_external_memory = True
    model = NeuroLiteModel(config)
    model(input_texts=["Alice est une ingénieure vivant à Paris."],
          update_memory=True)
    model(input_texts=["Le train part à midi."], update_memory=True)
    result = model(input_texts=["Où habite-t-elle ?"])
    assert tuple(result.shape) == (1, 16, 32)
    recalled = model.recall(["Alice vit à Paris ?"], top_k=2)[0]
    assert {text for text, _, _ in recalled} == {
        "Alice est une ingénieure vivant à Paris.", "Le train part à midi.",
    }
    assert all(0.0 <= weight <= 1.0 for _, _, weight in recalled)
    model.reset_memory()
    assert model.recall(["Où habite-t-elle ?"]) == [[]]


def test_memory_state_round_trip_and_bad_state(full_model, tmp_path):
    model = full_model
    model.reset_memory()
    model.write_memory(["un grand match"], ["pos"])
    path = tmp_path / "memory.npz"
    model.save_memory_state(path)
    before = model.predict(["un grand match"], verbose=0)["logits"]
    model.reset_memory()
    model.load_memory_state(path)
    np.testing.assert_allclose(
        model.predict(["un grand match"], verbose=0)["logits"], before,
        atol=1e-5,
    )
    state = model.get_memory_state()
    state["episodic_keys"] = state["episodic_keys"][:, :3]
    with pytest.raises(ValueError, match="episodic_keys"):
        model.set_memory_state(state)
    np.testing.assert_allclose(
        model.predict(["un grand match"], verbose=0)["logits"], before,
        atol=1e-5,
    )


def test_rules_explain_and_edit_without_retraining(full_model):
    model = full_model
    (explained,) = model.explain(["le match de foot"])
    assert [r["name"] for r in explained["rules"]] == ["sport"]
    assert len(explained["experts"]) == 4
    before = model.predict_proba(["une belle journée"])[0]
    model.set_rules({
        "rules": RULES["rules"] + [
            {"name": "journee", "label": "pos", "effect": "support",
             "weight": 0.99, "when": {"any_keywords": ["journée"]}},
        ]
    })
    after = model.predict_proba(["une belle journée"])[0]
    # The rule adds evidence for "pos": its odds grow, whatever they were.
    assert after[1] / after[0] > 5 * before[1] / before[0], (before, after)
    model.set_rules(RULES)


def test_full_model_saves_and_reloads(full_model, tmp_path):
    model = full_model
    model.reset_memory()
    model.write_memory(["un grand match"], ["pos"])
    path = tmp_path / "full.keras"
    model.save(path)
    reloaded = load_model(path)
    texts = ["le match", "une recette"]
    np.testing.assert_allclose(
        reloaded.predict(texts, verbose=0)["logits"],
        model.predict(texts, verbose=0)["logits"], atol=1e-5,
    )
    assert reloaded.rules == model.rules
    assert reloaded.recall(["match"])[0][0][0] == "un grand match"
