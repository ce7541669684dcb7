"""Memory, routing and rules wired into the models, end to end."""

import keras
import numpy as np
import pytest

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras import NeuroLiteModel
from neurolite_keras import load_model

TINY = dict(
    hidden_size=32,
    projection_size=32,
    num_mixer_layers=1,
    bloom_filter_size=512,
    max_sequence_length=16,
    token_mixing_size=8,
    channel_mixing_size=32,
    num_episodic_slots=4,
    num_memory_slots=4,
    memory_key_size=16,
    expert_size=16,
)
RULES = {
    "rules": [
        {
            "name": "sport",
            "label": "pos",
            "effect": "support",
            "weight": 0.9,
            "when": {"any_keywords": ["match"]},
        },
    ]
}


@pytest.fixture(scope="module")
def full_model():
    config = NeuroLiteConfig(
        **TINY,
        use_external_memory=True,
        use_dynamic_routing=True,
        use_symbolic_module=True,
    )
    model = NeuroLiteForClassification(
        config, label_names=["neg", "pos"], rules=RULES
    )
    model.compile()
    model.fit(
        ["le match", "la pluie"] * 8, ["pos", "neg"] * 8, epochs=1, verbose=0
    )
    return model


def test_seed_memory_example_recalls_the_written_sentence():
    config = NeuroLiteConfig(**TINY)
    config.use_external_memory = True
    model = NeuroLiteModel(config)
    model(
        input_texts=["Alice est une ingénieure vivant à Paris."],
        update_memory=True,
    )
    model(input_texts=["Le train part à midi."], update_memory=True)
    result = model(input_texts=["Où habite-t-elle ?"])
    assert tuple(result.shape) == (1, 16, 32)
    recalled = model.recall(["Alice vit à Paris ?"], top_k=2)[0]
    assert {text for text, _, _ in recalled} == {
        "Alice est une ingénieure vivant à Paris.",
        "Le train part à midi.",
    }
    assert all(0.0 < weight <= 1.0 for _, _, weight in recalled)
    # A query without tokens recalls nothing.
    assert model.recall(["", "   "]) == [[], []]
    model.reset_memory()
    assert model.recall(["Où habite-t-elle ?"]) == [[]]


# The benchmark's example (benchmarks/memory_new_labels.py): five sentences
# written, then questions that each share one rare word with one of them.
WRITTEN = [
    "Marie est ingénieure à Lyon.",
    "Le marché couvert ouvre à sept heures le samedi.",
    "Une forte pluie est attendue demain sur la Bretagne.",
    "Le musée présente une nouvelle exposition de peinture.",
    "L'équipe de football a gagné son dernier match.",
]
QUESTIONS = {
    "Où travaille Marie ?": 0,
    "Il pleut en Bretagne ?": 2,
    "Quelle exposition ?": 3,
    "Parle-moi du football": 4,
}


def _recalled_first(model):
    model.reset_memory()
    model(input_texts=WRITTEN, update_memory=True)
    recalled = {q: model.recall([q], top_k=1)[0][0] for q in QUESTIONS}
    model.reset_memory()
    return {q: WRITTEN.index(text) for q, (text, _, _) in recalled.items()}


MEMORY = dict(TINY, use_external_memory=True, num_episodic_slots=8)


def test_untrained_lexical_keys_recall_the_sentence_that_shares_a_word():
    """The lexical keys hang on no trained weight: weighted so that they
    decide, they find in an untrained model, for each question, the
    sentence that shares a word with it (its learned keys, untrained, rank
    the sentences at random)."""
    model = NeuroLiteModel(NeuroLiteConfig(**MEMORY))
    model.memory.lexical_weight = 100.0
    assert _recalled_first(model) == QUESTIONS


def _slow_on_jax(test):
    # JAX compiles the training step for about a minute on two cores.
    if keras.backend.backend() == "jax":
        return pytest.mark.slow(test)
    return test


@_slow_on_jax
def test_a_briefly_trained_model_recalls_the_sentence_of_a_rare_word(
    data_dir,
):
    """After one epoch on 200 French sentences, the memory has counted
    their words: frequent ones ("le", "de", ".") weigh little, and each
    question recalls the written sentence that shares its rare word, with
    the learned and lexical keys mixed as built."""
    from neurolite_keras.datasets import load_sib200

    train = load_sib200(data_dir, languages=["fra_Latn"]).train
    model = NeuroLiteForClassification(
        NeuroLiteConfig(**MEMORY), label_names=sorted(set(train.labels))
    )
    model.compile()
    model.fit(train.texts[:200], train.labels[:200], epochs=1, verbose=0)
    memory = model.backbone.memory
    # Every backend's `fit` counted the tokens (less those that word
    # dropout hid); each adds to one counter per band (16 hashes: 8 bands).
    counted = keras.ops.convert_to_numpy(memory.tokens_counted)[0]
    assert counted > 2000, counted
    frequencies = keras.ops.convert_to_numpy(memory.token_frequencies)
    np.testing.assert_allclose(frequencies.sum(), 8.0, rtol=1e-4)
    assert memory.lexical_weight == 3.0
    assert _recalled_first(model) == QUESTIONS


def test_memory_state_round_trip_and_bad_state(full_model, tmp_path):
    model = full_model
    model.reset_memory()
    # One label per text, the labels named as the caller gave them.
    with pytest.raises(ValueError, match=r"2 texts but 1 labels.*\['pos'\]"):
        model.write_memory(["un", "deux"], ["pos"])
    model.write_memory(["un grand match"], ["pos"])
    path = tmp_path / "memory.npz"
    model.save_memory_state(path)
    before = model.predict(["un grand match"], verbose=0)["logits"]
    model.reset_memory()
    model.load_memory_state(path)
    np.testing.assert_allclose(
        model.predict(["un grand match"], verbose=0)["logits"],
        before,
        atol=1e-5,
    )
    state = model.get_memory_state()
    state["episodic_keys"] = state["episodic_keys"][:, :3]
    with pytest.raises(ValueError, match="episodic_keys"):
        model.set_memory_state(state)
    np.testing.assert_allclose(
        model.predict(["un grand match"], verbose=0)["logits"],
        before,
        atol=1e-5,
    )


def test_rules_explain_and_edit_without_retraining(full_model):
    model = full_model
    (explained,) = model.explain(["le match de foot"])
    assert [r["name"] for r in explained["rules"]] == ["sport"]
    assert len(explained["experts"]) == 4
    before = model.predict_proba(["une belle journée"])[0]
    model.set_rules(
        {
            "rules": RULES["rules"]
            + [
                {
                    "name": "journee",
                    "label": "pos",
                    "effect": "support",
                    "weight": 0.99,
                    "when": {"any_keywords": ["journée"]},
                },
            ]
        }
    )
    after = model.predict_proba(["une belle journée"])[0]
    # The rule adds evidence for "pos": its odds grow, whatever they were.
    assert after[1] / after[0] > 5 * before[1] / before[0], (before, after)
    model.set_rules(RULES)


def test_full_model_saves_and_reloads(full_model, tmp_path):
    model = full_model
    model.reset_memory()
    # One label per text, the labels named as the caller gave them.
    with pytest.raises(ValueError, match=r"2 texts but 1 labels.*\['pos'\]"):
        model.write_memory(["un", "deux"], ["pos"])
    model.write_memory(["un grand match"], ["pos"])
    path = tmp_path / "full.keras"
    model.save(path)
    reloaded = load_model(path)
    texts = ["le match", "une recette"]
    np.testing.assert_allclose(
        reloaded.predict(texts, verbose=0)["logits"],
        model.predict(texts, verbose=0)["logits"],
        atol=1e-5,
    )
    assert reloaded.rules == model.rules
    assert reloaded.recall(["match"])[0][0][0] == "un grand match"
