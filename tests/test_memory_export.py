"""A classifier with episodic memory exported to TFLite with its state as
explicit tensors, run by `LiteRTClassifier`: writes, reads, labels never
trained, state files, and parity with the Keras model after a sequence of
writes and reads."""

import json

import keras
import numpy as np
import pytest

from neurolite_keras import memory_state
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.models import NeuroLiteForClassification
from neurolite_keras.recipes import export as export_recipe
from neurolite_keras.recipes.memory_export import memory_serving_model

TINY = {
    "max_sequence_length": 8,
    "num_hashes": 4,
    "bloom_filter_size": 256,
    "projection_size": 16,
    "hidden_size": 16,
    "num_mixer_layers": 1,
    "token_mixing_size": 8,
    "channel_mixing_size": 16,
    "num_memory_slots": 4,
    "num_episodic_slots": 3,
    "memory_key_size": 8,
    "use_external_memory": True,
}
LABELS = ["greeting", "weather", "sport", "taught"]
# Writes (text, label) and reads (text, None); the fourth write replaces
# the least recently used slot, "taught" was never trained.
SEQUENCE = [
    ("ouvrir un compte en ligne", "taught"),
    ("il neige en montagne", "weather"),
    ("comment ouvrir un compte", None),
    ("bonsoir tout le monde", None),
    ("la finale du tournoi", "sport"),
    ("fermer mon compte bancaire", "taught"),
    ("ouvrir un compte", None),
    ("", None),
]


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _assert_states_close(actual, expected):
    assert sorted(actual) == sorted(memory_state.STATE_FIELDS)
    for name in memory_state.STATE_FIELDS:
        np.testing.assert_allclose(
            np.asarray(actual[name]),
            np.asarray(expected[name]),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    model = NeuroLiteForClassification(
        NeuroLiteConfig.tiny(**TINY), label_names=LABELS
    )
    # Untrained weights serve for parity; a nonzero query center (which
    # training would move) is part of what the export must carry.
    center = model.backbone.memory.query_center
    center.assign(np.random.default_rng(0).normal(size=center.shape) * 0.1)
    return model


def _keras_step(model, text, label):
    """One step on the Keras model's variables: the logits of a read, or
    `None` for a write."""
    if label is not None:
        model.write_memory([text], [label])
        return None
    return _numpy(model(model.featurize([text]))["logits"])[0]


def test_serving_model_matches_the_variable_model(classifier):
    """The explicit-state graph, in Keras on this backend, gives the
    variable model's logits and state after each write and read."""
    classifier.reset_memory()
    serving = memory_serving_model(classifier)
    assert sorted(serving.input) == sorted(
        ["hash_indices", "padding_mask", "write_mask", "write_labels"]
        + list(memory_state.STATE_FIELDS)
    )
    state = classifier.get_memory_state()
    index = {name: i for i, name in enumerate(LABELS)}
    for text, label in SEQUENCE:
        last_used = state["episodic_last_used"]
        # Empty slots first, then the least recently used (reads refresh).
        expected_slot = int(np.argmin(last_used))
        expected = _keras_step(classifier, text, label)
        outputs = serving(
            {
                **classifier.featurize([text]),
                "write_mask": np.array([label is not None], "float32"),
                "write_labels": np.array([index.get(label, -1)], "int32"),
                **state,
            }
        )
        state = {
            name: _numpy(outputs[f"new_{name}"])
            for name in memory_state.STATE_FIELDS
        }
        _assert_states_close(state, classifier.get_memory_state())
        if expected is not None:
            np.testing.assert_allclose(
                _numpy(outputs["logits"])[0], expected, rtol=1e-5, atol=1e-5
            )
        else:
            assert state["episodic_labels"][expected_slot] == index[label]
    # Four texts were written into three slots: one was replaced.
    assert state["episodic_step"][0] > 4
    with pytest.raises(ValueError, match="no episodic memory"):
        memory_serving_model(
            NeuroLiteForClassification(
                NeuroLiteConfig.tiny(**{**TINY, "use_external_memory": False})
            )
        )


# TFLite (TensorFlow backend only).


@pytest.fixture
def tensorflow_backend():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs KERAS_BACKEND=tensorflow")


@pytest.fixture(scope="module")
def exported(classifier, tmp_path_factory):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs KERAS_BACKEND=tensorflow")
    folder = tmp_path_factory.mktemp("memory_export")
    classifier.reset_memory()
    classifier.save(folder / "model.keras")
    result = export_recipe.export_model(
        folder / "model.keras", quantization="float32"
    )
    return result, folder


def _runner(exported):
    from neurolite_keras.litert_runner import LiteRTClassifier

    return LiteRTClassifier(exported[0].tflite_path)


def test_export_declares_the_state_and_uses_builtins(
    tensorflow_backend, exported
):
    result, _ = exported
    assert not [op for op in result.operators if "FLEX" in op.upper()]
    assert not [op for op in result.operators if "SCATTER" in op.upper()]
    with open(result.sidecar_path, encoding="utf-8") as file:
        sidecar = json.load(file)
    assert sidecar["format_version"] == 2
    memory = sidecar["memory"]
    assert memory["num_episodic_slots"] == 3
    assert memory["num_labels"] == len(LABELS)
    inputs = {tensor["name"]: tensor for tensor in sidecar["inputs"]}
    outputs = {tensor["name"] for tensor in sidecar["outputs"]}
    for entry in memory["state"]:
        assert inputs[entry["input"]]["shape"] == entry["shape"]
        assert inputs[entry["input"]]["dtype"] == entry["dtype"]
        assert entry["output"] in outputs
    assert {"logits", "memory_attention"} <= outputs


def test_runner_matches_keras_after_writes_and_reads(
    tensorflow_backend, classifier, exported, tmp_path
):
    runner = _runner(exported)
    classifier.reset_memory()
    _assert_states_close(
        runner.get_memory_state(), classifier.get_memory_state()
    )
    for text, label in SEQUENCE:
        expected = _keras_step(classifier, text, label)
        if label is None:
            logits = runner.predict_logits([text])[0]
            np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
        else:
            slots = runner.write_memory([text], [label])
            assert slots.tolist() == [
                int(
                    np.argmax(
                        classifier.get_memory_state()["episodic_last_used"]
                    )
                )
            ]
        _assert_states_close(
            runner.get_memory_state(), classifier.get_memory_state()
        )
    recalled = runner.recall(["fermer mon compte bancaire"], top_k=2)[0]
    assert len(recalled) == 2 and recalled[0][1] >= recalled[1][1]
    # A label never trained: once one text is written with it, that text's
    # logit for it is scale * (1 - margin), its cosine with itself being 1.
    saved = runner.get_memory_state()
    runner.reset_memory()
    text, taught = "fermer mon compte bancaire", LABELS.index("taught")
    before = runner.predict_logits([text])[0, taught]
    assert runner.write_memory([text], ["taught"]).tolist() == [0]
    after = runner.predict_logits([text])[0, taught]
    head = classifier.get_layer("head")
    np.testing.assert_allclose(after, head.scale * (1 - head.margin), 1e-4)
    assert after > before
    runner.set_memory_state(saved)

    # The state file round trip; Keras and the runner read each other's.
    path = tmp_path / "state.npz"
    runner.save_memory_state(path)
    runner.reset_memory()
    assert runner.get_memory_state()["episodic_last_used"].tolist() == [-1] * 3
    runner.load_memory_state(path)
    _assert_states_close(runner.get_memory_state(), saved)
    classifier.load_memory_state(path)
    probe = ["ouvrir un compte", "il pleut"]
    np.testing.assert_allclose(
        runner.predict_logits(probe),
        np.stack([_keras_step(classifier, t, None) for t in probe]),
        rtol=1e-4,
        atol=1e-4,
    )
    classifier.reset_memory()


def test_runner_refuses_bad_state_and_labels(tensorflow_backend, exported):
    runner = _runner(exported)
    runner.write_memory(["bonjour"], ["greeting"])
    before = runner.get_memory_state()
    wrong = dict(before, episodic_keys=np.zeros((4, 8), "float32"))
    with pytest.raises(ValueError, match="4 episodic slots"):
        runner.set_memory_state(wrong)
    with pytest.raises(ValueError, match="must hold integers"):
        runner.set_memory_state(
            dict(before, episodic_labels=np.zeros(3, "float32"))
        )
    with pytest.raises(ValueError, match="unknown to this model: 'nope'"):
        runner.write_memory(["bonjour"], ["nope"])
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        runner.write_memory(["a", "b"], ["greeting"])
    _assert_states_close(runner.get_memory_state(), before)
    assert runner.write_memory([]).tolist() == []
    with pytest.warns(UserWarning, match="no tokens"):
        assert runner.write_memory([""]).tolist() == [-1]


def test_int8_export_of_memory_is_refused_clearly(tensorflow_backend, exported):
    _, folder = exported
    with pytest.raises(
        export_recipe.ExportError, match="episodic memory.*not int8"
    ):
        export_recipe.export_model(
            folder / "model.keras",
            folder / "int8.tflite",
            quantization="int8",
            calibration_texts=["bonjour"],
        )
    assert not (folder / "int8.tflite").exists()


def test_float16_export_keeps_the_state_finite(tensorflow_backend, exported):
    """An empty text's zero query once made a float16 export's state NaN
    (the normalization's epsilon stored as 0 in float16)."""
    from neurolite_keras.litert_runner import LiteRTClassifier

    _, folder = exported
    result = export_recipe.export_model(
        folder / "model.keras", folder / "half.tflite", quantization="float16"
    )
    runner = LiteRTClassifier(result.tflite_path)
    assert np.isfinite(runner.predict_logits([""])).all()
    with pytest.warns(UserWarning, match="no tokens"):
        runner.write_memory(["", "bonjour à tous"], [None, "greeting"])
    keys = runner.get_memory_state()["episodic_keys"]
    assert np.isfinite(keys).all()
    # The learned key, then the lexical key: each of unit length.
    key_size = TINY["memory_key_size"]
    for part in (keys[0, :key_size], keys[0, key_size:]):
        np.testing.assert_allclose(np.linalg.norm(part), 1.0, rtol=1e-3)
