"""Tests of the rule engine (`RuleSet`) and of `SymbolicFusion`."""

import json
import os

import keras
import numpy as np
import pytest
from harness import check_layer

from neurolite_keras.layers.symbolic import SymbolicFusion
from neurolite_keras.rules import NEGATION_CUES
from neurolite_keras.rules import RuleSet
from neurolite_keras.tokenizer import tokenize

LABELS = ["refund", "card", "other"]


def _rule(name="asks_refund", **fields):
    rule = {
        "name": name,
        "label": "refund",
        "weight": 0.8,
        "when": {"any_keywords": ["refund"]},
    }
    rule.update(fields)
    return rule


def _rules(*rules, **sections):
    return {"labels": LABELS, "rules": list(rules), **sections}


def _negation():
    return {
        "cues": list(NEGATION_CUES["en"] + NEGATION_CUES["fr"]),
        "scope": 3,
    }


# --- Validation ---


@pytest.mark.parametrize(
    "rule, message",
    [
        (_rule(label="refnd"), r"rule 'asks_refund' \(rules\[0\]\).*'refnd'"),
        (
            _rule(when={"regex": "(unclosed"}),
            r"rule 'asks_refund'.*invalid regular expression",
        ),
        (
            {"name": "no_weight", "label": "refund", "when": {"regex": "x"}},
            r"rule 'no_weight'.*missing field\(s\) \['weight'\]",
        ),
        (
            {"label": "refund", "weight": 0.5, "when": {"regex": "x"}},
            r"rules\[0\].*missing field\(s\) \['name'\]",
        ),
        (_rule(colour="red"), r"rule 'asks_refund'.*unknown field.*colour"),
        (_rule(weight=1.5), r"rule 'asks_refund'.*`weight`.*1\.5"),
        (_rule(weight=-0.1), r"rule 'asks_refund'.*`weight`"),
        (_rule(weight=True), r"rule 'asks_refund'.*`weight`"),
        (_rule(weight=float("nan")), r"rule 'asks_refund'.*`weight`"),
        (_rule(effect="boost"), r"rule 'asks_refund'.*`effect`.*'boost'"),
        (_rule(negated="yes"), r"rule 'asks_refund'.*`negated`"),
        (_rule(when={}), r"rule 'asks_refund'.*`when`"),
        (_rule(when={"keywords": ["a"]}), r"rule 'asks_refund'.*'keywords'"),
        (_rule(when={"any_keywords": []}), r"rule 'asks_refund'.*non-empty"),
        (_rule(when={"any_keywords": [" "]}), r"rule 'asks_refund'.*' '"),
        (_rule(when={"lexicon": "money"}), r"rule 'asks_refund'.*lexicon"),
        (
            _rule(negated=True),
            r"rule 'asks_refund'.*declares no `negation`",
        ),
        ("not a rule", r"rules\[0\]: a rule must be a dict"),
    ],
)
def test_invalid_rules_raise_naming_the_rule(rule, message):
    with pytest.raises(ValueError, match=message):
        RuleSet.from_dict(_rules(rule))


def test_other_invalid_rule_sets():
    with pytest.raises(ValueError, match=r"rule 'twice' \(rules\[1\]\).*dup"):
        RuleSet.from_dict(_rules(_rule("twice"), _rule("twice")))
    with pytest.raises(ValueError, match="regular expressions ignore"):
        RuleSet.from_dict(
            _rules(
                _rule(negated=True, when={"regex": "refund"}),
                negation=_negation(),
            )
        )
    with pytest.raises(ValueError, match="unknown top-level.*'rule'"):
        RuleSet.from_dict({"rule": []})
    with pytest.raises(ValueError, match="version"):
        RuleSet.from_dict({"version": 2})
    with pytest.raises(ValueError, match=r"negation.scope.*0"):
        RuleSet.from_dict({"negation": {"cues": ["not"], "scope": 0}})
    with pytest.raises(ValueError, match="misses `cues`"):
        RuleSet.from_dict({"negation": {"scope": 2}})
    with pytest.raises(ValueError, match="lexicon 'money'"):
        RuleSet.from_dict({"lexicons": {"money": []}})
    with pytest.raises(ValueError, match="duplicate label"):
        RuleSet.from_dict({"labels": ["a", "a"]})
    with pytest.raises(ValueError, match="expects a dict"):
        RuleSet.from_dict([])


def test_empty_rule_set_is_valid_and_gives_zero_evidence():
    for empty in (
        RuleSet(),
        RuleSet.from_dict({}),
        RuleSet.from_dict(_rules()),
    ):
        evidence = empty.evaluate(["anything at all", ""], LABELS)
        assert evidence.shape == (2, 2, 3) and evidence.dtype == np.float32
        assert not evidence.any()
        assert empty.explain(["anything"]) == [[]]
        assert len(empty) == 0
    with pytest.raises(ValueError, match="label_names"):
        RuleSet().evaluate(["text"])


def test_labels_are_checked_against_the_model():
    rules = RuleSet.from_dict({"rules": [_rule(label="refund")]})
    with pytest.raises(ValueError, match=r"rule 'asks_refund'.*not among"):
        rules.evaluate(["refund"], label_names=["card", "other"])
    with pytest.raises(ValueError, match=r"rule 'asks_refund'.*not among"):
        rules.check_labels(["card", "other"])
    assert rules.check_labels(("refund",)) == ["refund"]
    # The model's label order decides the evidence layout.
    evidence = rules.evaluate(["refund"], label_names=["other", "refund"])
    np.testing.assert_allclose(evidence[0, 0], [0.0, 0.8], rtol=1e-6)


# --- Matching ---


def _fires(rule_set, text):
    return [fired["name"] for fired in rule_set.explain([text])[0]]


def test_negation_scope_in_english_and_french():
    happy = {"any_keywords": ["happy", "content", "satisfait"]}
    rule_set = RuleSet.from_dict(
        {
            "labels": ["positive", "negative"],
            "negation": _negation(),
            "rules": [
                {"name": "pos", "label": "positive", "weight": 0.7,
                 "when": happy},
                {"name": "neg", "label": "negative", "weight": 0.6,
                 "negated": True, "when": happy},
            ],
        }
    )  # fmt: skip
    cases = {
        "I am happy": ["pos"],
        "I am not happy": ["neg"],
        "I am not very happy": ["neg"],
        "I don’t feel happy": ["neg"],  # Typographic apostrophe.
        "Not tired at all just happy": ["pos"],  # Out of scope (3 words).
        "Not tired. Happy!": ["pos"],  # A sentence break ends the scope.
        "Je suis content": ["pos"],
        "Je ne suis pas content": ["neg"],
        "Je n'étais jamais très satisfait": ["neg"],
        "Pas content du tout mais satisfait au final": ["pos", "neg"],
    }
    for text, expected in cases.items():
        assert _fires(rule_set, text) == expected, text


def test_keyword_forms():
    rule_set = RuleSet.from_dict(
        {
            "labels": LABELS,
            "lexicons": {"plastic": ["carte bancaire", "credit card"]},
            "rules": [
                _rule("phrase", when={"any_keywords": ["money back"]}),
                _rule("prefix", when={"any_keywords": ["reimburs*"]}),
                _rule("both", label="card",
                      when={"all_keywords": ["card", "declin*"]}),
                _rule("lexicon", label="card", when={"lexicon": "plastic"}),
                _rule("regex", label="other",
                      when={"regex": r"\b\d+ ?(eur|usd|€)"}),
                _rule("chinese", when={"any_keywords": ["退款"]}),
            ],
        }
    )  # fmt: skip
    cases = {
        "I want my MONEY back": ["phrase"],
        "money, back": [],  # Tokens must be consecutive.
        "Please reimburse me": ["prefix"],
        "Card declined twice": ["both"],
        "My card works": [],
        "Ma Carte Bancaire est bloquée": ["lexicon"],
        "It cost 30 EUR": ["regex"],
        "我要退款": ["chinese"],
    }
    for text, expected in cases.items():
        assert _fires(rule_set, text) == expected, text
    fired = rule_set.explain(["It cost 30 EUR"])[0][0]
    assert fired == {
        "name": "regex",
        "label": "other",
        "effect": "support",
        "weight": 0.8,
        "negated": False,
        "matched": ["30 eur"],
    }


def test_evidence_is_a_noisy_or_of_the_firing_rules():
    rule_set = RuleSet.from_dict(
        _rules(
            _rule("a", weight=0.5),
            _rule("b", weight=0.5, when={"any_keywords": ["money"]}),
            _rule("c", label="card", effect="oppose", weight=0.9),
            _rule("d", label="other", weight=1.0),
        )
    )
    evidence = rule_set.evaluate(["refund my money", "money", "nothing"])
    np.testing.assert_allclose(
        evidence[0], [[0.75, 0.0, 1.0], [0.0, 0.9, 0.0]], rtol=1e-6
    )
    np.testing.assert_allclose(evidence[1], [[0.5, 0, 0], [0, 0, 0]])
    assert not evidence[2].any()


def test_evidence_shape_does_not_depend_on_the_rules():
    texts = ["refund please", "card", "hello"]
    shapes = set()
    for count in (0, 1, 5):
        rules = [_rule(f"r{i}", weight=0.1 * (i + 1)) for i in range(count)]
        shapes.add(RuleSet.from_dict(_rules(*rules)).evaluate(texts).shape)
    assert shapes == {(3, 2, 3)}


def test_keywords_are_tokenized_like_texts():
    # The engine reads the featurizer's tokens, so keyword matching follows
    # the same normalization (NFKC, case folding).
    assert tokenize("ＲＥＦＵＮＤ") == ["refund"]
    rule_set = RuleSet.from_dict(_rules(_rule()))
    assert _fires(rule_set, "ＲＥＦＵＮＤ now") == ["asks_refund"]


# --- Storage and editing ---


def test_dict_and_json_round_trips(tmp_path):
    data = _rules(
        _rule(),
        _rule("not_card", label="card", effect="oppose", negated=True),
        lexicons={"money": ["cash", "refund"]},
        negation=_negation(),
    )
    rule_set = RuleSet.from_dict(data)
    canonical = rule_set.to_dict()
    assert canonical["rules"][0]["effect"] == "support"
    assert RuleSet.from_dict(canonical) == rule_set
    # `to_dict` is a copy: editing it leaves the rule set unchanged.
    canonical["rules"][0]["weight"] = 0.1
    assert rule_set.to_dict()["rules"][0]["weight"] == 0.8

    path = tmp_path / "rules.json"
    rule_set.to_json_file(path)
    assert RuleSet.from_json_file(path) == rule_set
    assert RuleSet.from_file(path) == rule_set
    assert json.loads(path.read_text(encoding="utf-8")) == rule_set.to_dict()


def test_description_travels_with_the_rules(tmp_path):
    # Free text, so that a rule file says how it was made; it changes
    # nothing else and survives edits, files and a model's config.
    lines = ["Written by hand.", "Keywords from the label names."]
    rule_set = RuleSet.from_dict(_rules(_rule(), description=lines))
    plain = RuleSet.from_dict(_rules(_rule()))
    assert rule_set.to_dict()["description"] == lines
    assert "description" not in plain.to_dict()
    texts = ["a refund please"]
    np.testing.assert_array_equal(
        rule_set.evaluate(texts), plain.evaluate(texts)
    )
    edited = rule_set.with_rule(_rule("card_words", label="card"))
    assert edited.without_rule("card_words").to_dict() == rule_set.to_dict()
    rule_set.to_json_file(tmp_path / "rules.json")
    again = RuleSet.from_json_file(tmp_path / "rules.json")
    assert again == rule_set and again != plain
    one_line = RuleSet.from_dict(_rules(description="One line."))
    assert one_line.to_dict()["description"] == "One line."
    for bad in (3, ["ok", 4], {"text": "x"}):
        with pytest.raises(ValueError, match="`description`"):
            RuleSet.from_dict(_rules(description=bad))


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "rules.json"
    RuleSet.from_dict(_rules(_rule())).to_json_file(path)
    before = path.read_text(encoding="utf-8")

    def broken_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        RuleSet().to_json_file(path)
    assert path.read_text(encoding="utf-8") == before
    assert os.listdir(tmp_path) == ["rules.json"]


def test_bad_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"rules": [', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json: invalid JSON"):
        RuleSet.from_json_file(broken)
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.yml"):
        RuleSet.from_file(tmp_path / "rules.txt")


def test_yaml_files(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(_rules(_rule())), encoding="utf-8")
    assert RuleSet.from_file(path) == RuleSet.from_dict(_rules(_rule()))
    empty = tmp_path / "empty.yml"
    empty.write_text("", encoding="utf-8")
    assert len(RuleSet.from_file(empty)) == 0


def test_with_rule_and_without_rule():
    rule_set = RuleSet.from_dict(_rules(_rule()))
    louder = rule_set.with_rule(_rule(weight=0.95))
    assert louder.names == ("asks_refund",)
    assert louder.evaluate(["refund"])[0, 0, 0] == pytest.approx(0.95)
    assert rule_set.evaluate(["refund"])[0, 0, 0] == pytest.approx(0.8)
    more = rule_set.with_rule(_rule("cards", label="card"))
    assert more.names == ("asks_refund", "cards")
    assert len(more.without_rule("asks_refund")) == 1
    with pytest.raises(ValueError, match="No rule named 'nope'"):
        rule_set.without_rule("nope")
    with pytest.raises(ValueError, match="rule 'bad'"):
        rule_set.with_rule(_rule("bad", weight=7))


# --- SymbolicFusion ---


def test_symbolic_fusion_check_layer(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3)).astype("float32")
    evidence = rng.uniform(size=(4, 2, 3)).astype("float32")
    check_layer(
        SymbolicFusion,
        {"num_labels": 3},
        {"logits": logits, "rule_evidence": evidence},
        expected_output_shape=(4, 3),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


def test_symbolic_fusion_values_and_errors():
    fusion = SymbolicFusion(2, initial_support_scale=2.0)
    logits = np.array([[0.5, -0.5]], "float32")
    evidence = np.array([[[0.5, 0.0], [0.0, 0.75]]], "float32")
    fused = keras.ops.convert_to_numpy(fusion(logits, evidence))
    # Support 0.5 adds 2 * log 2; opposition 0.75 removes 1 * log 4.
    np.testing.assert_allclose(
        fused, [[0.5 + 2 * np.log(2), -0.5 - np.log(4)]], rtol=1e-5
    )
    np.testing.assert_allclose(
        fusion.rule_scales()["support"], [2.0, 2.0], rtol=1e-5
    )
    # No evidence leaves the logits unchanged.
    same = fusion(logits, np.zeros((1, 2, 2), "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(same), logits)
    # Certain evidence is clipped, not infinite.
    certain = fusion(logits, np.ones((1, 2, 2), "float32"))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(certain)))

    for kwargs, message in [
        ({"num_labels": 0}, "num_labels=0"),
        ({"num_labels": 2, "initial_support_scale": 0}, "scale=0"),
        ({"num_labels": 2, "max_evidence": 1.0}, "max_evidence=1.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            SymbolicFusion(**kwargs)
    with pytest.raises(ValueError, match=r"\(batch, 2, 2\)"):
        SymbolicFusion(2)(logits, np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match=r"logits of shape \(batch, 3\)"):
        SymbolicFusion(3)(logits, np.zeros((1, 2, 3), "float32"))


def _features(texts, size=32):
    """A stand-in featurizer: a hashed bag of tokens (stable across runs)."""
    out = np.zeros((len(texts), size), "float32")
    for row, text in enumerate(texts):
        for token in tokenize(text):
            out[row, sum(map(ord, token)) % size] += 1.0
    return out


def test_editing_a_rule_changes_predictions_without_retraining(tmp_path):
    rule_set = RuleSet.from_dict(
        _rules(
            _rule("asks_refund", when={"any_keywords": ["refund"]}),
            _rule("card_words", label="card", weight=0.8,
                  when={"any_keywords": ["card"]}),
        )
    )  # fmt: skip
    features = keras.Input((32,), name="features")
    evidence = keras.Input((2, 3), name="rule_evidence")
    logits = keras.layers.Dense(3, name="head")(features)
    fused = SymbolicFusion(3, name="fusion")(logits, evidence)
    model = keras.Model(
        {"features": features, "rule_evidence": evidence}, fused
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train = ["refund please", "my card", "hello there", "card lost"] * 4
    labels = np.array([0, 1, 2, 1] * 4)

    def inputs(texts, rules):
        return {
            "features": _features(texts),
            "rule_evidence": rules.evaluate(texts, LABELS),
        }

    model.fit(inputs(train, rule_set), labels, epochs=3, verbose=0)

    text = ["could you reimburse me"]  # No rule fires: unseen words.
    before = model.predict(inputs(text, rule_set), verbose=0)
    edited = rule_set.with_rule(
        _rule("asks_refund", weight=0.99,
              when={"any_keywords": ["refund", "reimburse"]})
    )  # fmt: skip
    after = model.predict(inputs(text, edited), verbose=0)
    assert np.argmax(after[0]) == 0
    assert after[0, 0] - before[0, 0] > 1.0  # The edit moved the logit.
    np.testing.assert_allclose(after[0, 1:], before[0, 1:], rtol=1e-6)

    # Removing a rule takes its evidence away again.
    removed = edited.without_rule("asks_refund")
    np.testing.assert_allclose(
        model.predict(inputs(text, removed), verbose=0), before, rtol=1e-6
    )

    # The trained fusion reloads; the rule file travels beside it.
    model.save(tmp_path / "fused.keras")
    edited.to_json_file(tmp_path / "rules.json")
    reloaded = keras.saving.load_model(tmp_path / "fused.keras")
    rules_again = RuleSet.from_json_file(tmp_path / "rules.json")
    np.testing.assert_allclose(
        reloaded.predict(inputs(text, rules_again), verbose=0),
        after,
        rtol=1e-5,
        atol=1e-6,
    )
