import json
import os
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras import NeuroLiteModel
from neurolite_keras import load_model
from neurolite_keras.datasets import TextSplit
from neurolite_keras.datasets import load_sib200
from neurolite_keras.evaluation import evaluate_predictor

SMALL = dict(
    hidden_size=32,
    projection_size=32,
    num_mixer_layers=2,
    bloom_filter_size=512,
    max_sequence_length=32,
    token_mixing_size=16,
    channel_mixing_size=64,
    num_hashes=8,
)
BAD_TEXTS = [
    "",
    "   \t ",
    "Paris " * 20_000,
    "y" * 100_000,
    "Je ❤️ Paris 👩‍👩‍👧 東京 Москва مرحبا हिन्दी",
]


@pytest.fixture(scope="module")
def french():
    data = load_sib200(os.environ["NEUROLITE_DATA_DIR"], languages=["fra_Latn"])
    return data


@pytest.fixture(scope="module")
def trained(french, tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = NeuroLiteForClassification(
        NeuroLiteConfig(**SMALL), label_names=french.label_names
    )
    model.compile()
    history = model.fit(
        french.train.texts,
        french.train.labels,
        batch_size=32,
        # Three epochs: after two, dev accuracy ranged from 0.25 to 0.31
        # over the backends, too near the bar below.
        epochs=3,
        validation_data=(french.dev.texts, french.dev.labels),
        verbose=0,
    )
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return model, history, path


def test_backbone_maps_texts_to_token_vectors():
    model = NeuroLiteModel(NeuroLiteConfig(**SMALL))
    outputs = model(input_texts=["NeuroLite est une architecture légère."])
    assert tuple(outputs.shape) == (1, 32, 32)
    embedding = keras.ops.mean(outputs, axis=1)
    assert tuple(embedding.shape) == (1, 32)
    with pytest.raises(ValueError, match="not both"):
        model(model.featurize(["a"]), input_texts=["a"])


def test_fit_on_raw_text_learns(trained, french):
    model, history, _ = trained
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "val_accuracy" in history.history
    result = evaluate_predictor(model, french.dev)
    assert result["accuracy"] > 1.5 / 7, result


def test_predict_on_strings_returns_logits(trained):
    model, _, _ = trained
    outputs = model.predict(["Le match de football", "La santé"], verbose=0)
    assert outputs["logits"].shape == (2, 7)
    (best,) = model.classify(["Le match de football"])
    assert best[0][0] in model.label_names and 0 <= best[0][1] <= 1
    label = keras.ops.argmax(model(input_texts=["Texte"])["logits"], axis=1)
    assert label.shape == (1,)


def test_saved_model_reloads_with_the_same_predictions(trained):
    model, _, path = trained
    texts = ["Le président a signé la loi.", "Un vaccin contre la grippe"]
    reloaded = load_model(path)
    assert isinstance(reloaded, NeuroLiteForClassification)
    assert reloaded.label_names == model.label_names
    np.testing.assert_allclose(
        reloaded.predict(texts, verbose=0)["logits"],
        model.predict(texts, verbose=0)["logits"],
        rtol=1e-5,
        atol=1e-5,
    )


OTHER_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


@pytest.mark.parametrize("backend", ["same", "other"])
def test_fresh_process_and_other_backend_give_the_same_predictions(
    trained, backend
):
    model, _, path = trained
    texts = ["Le président a signé la loi.", "Un vaccin contre la grippe"]
    name = keras.backend.backend()
    if backend == "other":
        name = OTHER_BACKEND[name]
    script = (
        "import json, sys\n"
        "from neurolite_keras import load_model\n"
        "model = load_model(sys.argv[1])\n"
        "texts = json.loads(sys.argv[2])\n"
        "print(json.dumps(model.predict(texts, verbose=0)['logits']"
        ".tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), json.dumps(texts)],
        env=dict(os.environ, KERAS_BACKEND=name),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    logits = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(
        logits,
        model.predict(texts, verbose=0)["logits"],
        rtol=1e-4,
        atol=1e-4,
    )


def test_odd_texts_give_finite_probabilities(trained):
    model, _, _ = trained
    probabilities = model.predict_proba(BAD_TEXTS)
    assert probabilities.shape == (len(BAD_TEXTS), 7)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    # Empty and whitespace-only texts have no tokens: same prediction,
    # from the biases alone.
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)


@pytest.mark.parametrize("bad", [None, 42, 3.5])
def test_non_string_texts_are_rejected_by_position(trained, bad):
    model, _, _ = trained
    with pytest.raises(TypeError, match=r"x\[1\]` must be a str"):
        model.predict(["ok", bad, "ok"], verbose=0)


def test_unknown_labels(trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match="'cuisine'"):
        model.evaluate(["Une recette"], ["cuisine"], verbose=0)
    split = TextSplit(["Une recette", "Le match"], ["cuisine", "sports"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_predictor(model, split)
    assert result["unknown_labels"] == {"cuisine": 1}
    assert result["accuracy"] <= 0.5
    assert any("cuisine" in str(w.message) for w in caught)


def test_empty_batch_predicts_nothing(trained):
    model, _, _ = trained
    assert model.predict([], verbose=0)["logits"].shape == (0, 7)


def test_label_arguments_are_checked():
    config = NeuroLiteConfig(**SMALL)
    with pytest.raises(ValueError, match="num_labels=0"):
        NeuroLiteForClassification(config, num_labels=0)
    with pytest.raises(ValueError, match="duplicates"):
        NeuroLiteForClassification(config, label_names=["a", "a"])
    with pytest.raises(ValueError, match="`num_labels`=3"):
        NeuroLiteForClassification(config, num_labels=3, label_names=["a"])


TINY = dict(
    hidden_size=16,
    projection_size=16,
    num_mixer_layers=1,
    bloom_filter_size=128,
    max_sequence_length=16,
    token_mixing_size=8,
    channel_mixing_size=16,
    num_hashes=4,
)
TEXTS = ["le match de foot", "une bonne soupe", "le tennis", "un gâteau"]
LABELS = ["sport", "food", "sport", "food"]


def _tiny_classifier():
    model = NeuroLiteForClassification(
        NeuroLiteConfig(**TINY), label_names=["food", "sport"]
    )
    model.compile()
    return model


BAD_CALLS = {
    "fit texts without labels": (
        lambda m: m.fit(TEXTS[:2], epochs=1, verbose=0),
        "`y` is required with raw texts",
    ),
    "fit on no texts": (
        lambda m: m.fit([], [], verbose=0),
        r"`x` is empty.*Received: x=\[\]",
    ),
    "evaluate on no texts": (
        lambda m: m.evaluate([], [], verbose=0),
        "`x` is empty",
    ),
    "evaluate texts without labels": (
        lambda m: m.evaluate(TEXTS, verbose=0),
        "`y` is required",
    ),
    "fewer labels than texts": (
        lambda m: m.fit(TEXTS, LABELS[:3], verbose=0),
        r"`x` has 4 text\(s\) but `y` has 3 label\(s\)",
    ),
    "zero epochs": (
        lambda m: m.fit(TEXTS, LABELS, epochs=0, verbose=0),
        "`epochs` must be a positive integer. Received: epochs=0",
    ),
    "fractional epochs": (
        lambda m: m.fit(TEXTS, LABELS, epochs=1.5, verbose=0),
        "epochs=1.5",
    ),
    "empty validation texts": (
        lambda m: m.fit(TEXTS, LABELS, validation_data=([], []), verbose=0),
        r"`validation_data\[0\]` is empty",
    ),
    "validation texts without labels": (
        lambda m: m.fit(TEXTS, LABELS, validation_data=(TEXTS,), verbose=0),
        r"`\(texts, labels\)` pair",
    ),
    "predict on None": (
        lambda m: m.predict(None, verbose=0),
        "`x` is required.*Received: x=None",
    ),
    "classify with top_k=0": (
        lambda m: m.classify(TEXTS, top_k=0),
        "`top_k` must be a positive integer. Received: top_k=0",
    ),
}


def test_bad_fit_evaluate_predict_calls_leave_the_model_working():
    # Under JAX a Keras loop that fails midway used to leave the model with
    # no weights ("'NoneType' object is not callable" on every later call):
    # every bad call must be rejected before Keras runs.
    model = _tiny_classifier()
    model.fit(TEXTS, LABELS, epochs=1, verbose=0)
    before = [np.array(w) for w in model.get_weights()]
    for name, (call, message) in BAD_CALLS.items():
        with pytest.raises(ValueError, match=message):
            call(model)
        logits = model.predict(TEXTS[:1], verbose=0)["logits"]
        assert logits.shape == (1, 2) and np.all(np.isfinite(logits)), name
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    history = model.fit(TEXTS, LABELS, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(TEXTS, verbose=0)["logits"].shape == (4, 2)


def test_truncated_or_fake_keras_file_is_named_as_unreadable(trained, tmp_path):
    _, _, path = trained
    data = path.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    fake = tmp_path / "fake.keras"
    fake.write_text("not a model")
    for bad in (truncated, fake):
        with pytest.raises(ValueError, match="not a readable .keras archive"):
            load_model(bad)
    with pytest.raises(ValueError, match=r"fake.keras' exists but"):
        load_model(fake)
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(other_zip)
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_model(tmp_path / "missing.keras")


def test_load_model_compiles_without_warnings_and_evaluates(trained):
    model, _, path = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = load_model(path)
    assert not [str(w.message) for w in caught]
    assert type(reloaded.optimizer) is type(model.optimizer)
    # The optimizer's state came back with it, not a fresh optimizer.
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations)
    texts, labels = ["Le match de football"], ["sports"]
    np.testing.assert_allclose(
        reloaded.evaluate(texts, labels, verbose=0),
        model.evaluate(texts, labels, verbose=0),
        rtol=1e-4,
        atol=1e-4,
    )


def test_model_saved_uncompiled_loads_compiled(tmp_path):
    model = NeuroLiteForClassification(
        NeuroLiteConfig(**TINY), label_names=["food", "sport"]
    )
    model(input_texts=["build"])
    path = tmp_path / "uncompiled.keras"
    model.save(path)
    reloaded = load_model(path)
    loss, accuracy = reloaded.evaluate(TEXTS, LABELS, verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1


@pytest.mark.parametrize("pooling", ["mean", "max", "mean_max"])
def test_pooling_choices_save_and_reload(pooling, tmp_path):
    config = NeuroLiteConfig(**SMALL, pooling=pooling)
    model = NeuroLiteForClassification(config, label_names=["food", "sport"])
    head_inputs = {"mean": 32, "max": 32, "mean_max": 64}[pooling]
    assert model.get_layer("head").kernel.shape == (head_inputs, 2)
    texts = ["une pizza chaude", "le match de foot", ""]
    before = model.predict(texts, verbose=0)["logits"]
    assert np.all(np.isfinite(before))
    path = tmp_path / "pooled.keras"
    model.save(path)
    again = load_model(path).predict(texts, verbose=0)["logits"]
    np.testing.assert_allclose(again, before, rtol=1e-5, atol=1e-5)


def test_model_saved_before_newer_fields_loads_as_it_was_built():
    """A config saved before `pooling`, `memory_lexical_weight` and
    `memory_label_lexical_weight` existed rebuilds the model it came from:
    mean pooling, no lexical keys, learned keys alone in label scores."""
    newer = ("pooling", "memory_lexical_weight", "memory_label_lexical_weight")
    config = NeuroLiteConfig(
        **SMALL,
        pooling="mean",
        use_external_memory=True,
        memory_lexical_weight=0.0,
        memory_label_lexical_weight=0.0,
    )
    model = NeuroLiteForClassification(config, label_names=["a", "b"])
    saved = model.get_config()
    for name in newer:
        del saved["config"][name]
    rebuilt = NeuroLiteForClassification.from_config(saved)
    assert rebuilt.config.pooling == "mean"
    assert rebuilt.config.memory_lexical_weight == 0.0
    assert rebuilt.config.memory_label_lexical_weight == 0.0
    assert rebuilt.backbone.memory.lexical_size == 0
    assert rebuilt.backbone.memory.label_lexical_weight == 0.0
    rebuilt.set_weights(model.get_weights())
    features = model.featurize(["le match de foot"])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(rebuilt(features)["logits"]),
        keras.ops.convert_to_numpy(model(features)["logits"]),
        rtol=1e-5,
        atol=1e-5,
    )
    # Built today, the same config has lexical keys: other weight shapes.
    current = NeuroLiteForClassification(
        config.copy(memory_lexical_weight=3.0), label_names=["a", "b"]
    )
    assert current.backbone.memory.lexical_size > 0


def test_package_exports_the_litert_runner_without_heavy_imports():
    # The runner is named `neurolite_keras.LiteRTClassifier` in the README;
    # importing the package must still not load LiteRT or TensorFlow.
    script = (
        "import sys\n"
        "import neurolite_keras\n"
        "from neurolite_keras import LiteRTClassifier\n"
        "from neurolite_keras.litert_runner import LiteRTClassifier as R\n"
        "assert LiteRTClassifier is R\n"
        "print(sorted({'ai_edge_litert', 'tensorflow'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
