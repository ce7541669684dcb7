"""Mobile export: QAT, int8 TFLite with built-in operators only, the LiteRT
runner and its sidecar.

Conversions need TensorFlow, so the tests that convert run under
`KERAS_BACKEND=tensorflow`; under JAX and PyTorch one test exports through
the recipe's TensorFlow subprocess. Converted models are shared through
module-scoped fixtures.
"""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras.datasets import load_sib200
from neurolite_keras.layers import HashProjection
from neurolite_keras.layers import MaskedMeanPooling
from neurolite_keras.litert_runner import LiteRTClassifier
from neurolite_keras.litert_runner import MissingSidecarError
from neurolite_keras.litert_runner import sidecar_path
from neurolite_keras.models import feature_inputs
from neurolite_keras.quantization import FakeQuant
from neurolite_keras.quantization import QuantizationAwareModel
from neurolite_keras.quantization import fake_quantize_weight
from neurolite_keras.recipes import export as export_recipe
from neurolite_keras.recipes.export import ExportError
from neurolite_keras.recipes.export import UnsupportedOperatorError
from neurolite_keras.recipes.export import export_model
from neurolite_keras.recipes.parity import parity_figures
from neurolite_keras.recipes.parity import parity_report
from neurolite_keras.tflite_ops import calibration_ranges
from neurolite_keras.tflite_ops import check_static_shapes
from neurolite_keras.tflite_ops import float_operators
from neurolite_keras.tflite_ops import list_operators
from neurolite_keras.tflite_ops import with_calibration_ranges

BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="conversion runs on TensorFlow"
)
LANGUAGES = ["eng_Latn", "fra_Latn", "deu_Latn"]


def tiny_config():
    return NeuroLiteConfig.tiny(
        hidden_size=32,
        projection_size=32,
        num_mixer_layers=2,
        bloom_filter_size=512,
        max_sequence_length=16,
        token_mixing_size=16,
        channel_mixing_size=64,
        num_hashes=4,
    )


@pytest.fixture(scope="module")
def sib200():
    path = os.environ["NEUROLITE_DATA_DIR"]
    if not os.path.isdir(os.path.join(path, "sib200")):
        pytest.skip(f"SIB-200 not found under {path}")
    return load_sib200(path, languages=LANGUAGES, download=False)


@pytest.fixture(scope="module")
def memorized(sib200):
    """30 training sentences per label, across the three languages."""
    rows = {}
    for index, label in enumerate(sib200.train.labels):
        rows.setdefault(label, []).append(index)
    keep = sorted(i for indices in rows.values() for i in indices[:30])
    return (
        [sib200.train.texts[i] for i in keep],
        [sib200.train.labels[i] for i in keep],
    )


@pytest.fixture(scope="module")
def trained(sib200, memorized, tmp_path_factory):
    """A tiny classifier fitted to `memorized`, and its `.keras` file.

    Fitting a few hundred sentences takes seconds and leaves decisions with
    clear margins, so int8 parity is tested on rounding, not on near-ties
    of a barely trained model (the held-out figures of a trained model come
    from `parity_report`, see the recipe).
    """
    keras.utils.set_random_seed(0)
    model = NeuroLiteForClassification(
        tiny_config(), label_names=sib200.label_names
    )
    model.compile(optimizer=keras.optimizers.AdamW(0.01))
    texts, labels = memorized
    model.fit(
        model.featurize(texts),
        {"logits": model.encode_labels(labels)},
        epochs=15,
        batch_size=35,
        verbose=0,
    )
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def held_out(sib200):
    """Dev sentences of every language (the model never trained on them)."""
    texts, labels = sib200.dev.texts, sib200.dev.labels
    keep = np.linspace(0, len(texts) - 1, 150).round().astype(int)
    return [texts[i] for i in keep], [labels[i] for i in keep]


def _export_all(modes, trained, sib200, folder):
    _, path = trained
    return {
        name: export_model(
            path,
            str(folder / f"{name}.tflite"),
            calibration_texts=sib200.train.texts,
            **kwargs,
        )
        for name, kwargs in modes.items()
    }


@pytest.fixture(scope="module")
def exports(trained, sib200, tmp_path_factory):
    """One export per mode, made once for the module (TensorFlow only)."""
    if BACKEND != "tensorflow":
        pytest.skip("conversion runs on TensorFlow")
    modes = {
        "float32": {"quantization": "float32"},
        "int8": {"quantization": "int8"},
        "int8_per_tensor": {"quantization": "int8", "per_channel": False},
    }
    return _export_all(modes, trained, sib200, tmp_path_factory.mktemp("x"))


@pytest.fixture(scope="module")
def float_exports(trained, sib200, tmp_path_factory):
    if BACKEND != "tensorflow":
        pytest.skip("conversion runs on TensorFlow")
    modes = {
        "float16": {"quantization": "float16"},
        "dynamic": {"quantization": "dynamic"},
        "dynamic_per_tensor": {
            "quantization": "dynamic",
            "per_channel": False,
        },
    }
    return _export_all(modes, trained, sib200, tmp_path_factory.mktemp("f"))


def _keras_logits(model, texts):
    return np.asarray(model.predict(texts, verbose=0)["logits"])


# --- What the exported files hold ------------------------------------------


def _check_operators_and_shapes(result):
    operators = list_operators(result.tflite_path)
    assert operators, "no operator found"
    others = [op.name for op in operators if op.kind != "builtin"]
    assert not others, f"non-built-in operators: {others}"
    assert not {op.name for op in operators} & {"SHAPE", "WHERE", "RANGE"}
    check_static_shapes(result.tflite_path)
    with open(result.sidecar_path, encoding="utf-8") as file:
        sidecar = json.load(file)
    shapes = {i["name"]: i["shape"] for i in sidecar["inputs"]}
    assert shapes == {"hash_indices": [1, 16, 4], "padding_mask": [1, 16]}
    assert [i["dtype"] for i in sidecar["inputs"]] == ["int32", "int32"]


@tensorflow_only
@pytest.mark.parametrize("name", ["float32", "int8", "int8_per_tensor"])
def test_only_builtin_operators_and_static_shapes(exports, name):
    _check_operators_and_shapes(exports[name])


@tensorflow_only
@pytest.mark.slow
@pytest.mark.parametrize("name", ["float16", "dynamic", "dynamic_per_tensor"])
def test_float16_and_dynamic_exports(trained, float_exports, held_out, name):
    _check_operators_and_shapes(float_exports[name])
    model, _ = trained
    texts = held_out[0][:32]
    runner = LiteRTClassifier(float_exports[name].tflite_path, num_threads=2)
    logits = runner.predict_logits(texts)
    reference = _keras_logits(model, texts)
    assert np.abs(logits - reference).max() < 0.5
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95


@tensorflow_only
def test_int8_is_full_integer_with_per_channel_or_per_tensor_weights(
    exports,
):
    from ai_edge_litert.interpreter import Interpreter

    for name, per_channel in (("int8", True), ("int8_per_tensor", False)):
        path = exports[name].tflite_path
        # Every operator computes in int8: layer normalizations are traced
        # in `export_forms`, which has no NEG (TFLite has no int8 NEG).
        assert not float_operators(path)
        interpreter = Interpreter(model_path=path)
        tensors = interpreter.get_tensor_details()
        weights = [
            t
            for t in tensors
            if t["dtype"] == np.int8
            and "MatMul" in t["name"]
            and len(t["shape"]) == 2
        ]
        assert len(weights) == 9, [t["name"] for t in weights]
        for tensor in weights:
            scales = tensor["quantization_parameters"]["scales"]
            expected = tensor["shape"][0] if per_channel else 1
            assert len(scales) == expected, tensor["name"]
            zero_points = tensor["quantization_parameters"]["zero_points"]
            assert not np.any(zero_points)
    ratio = exports["int8"].size_bytes / exports["float32"].size_bytes
    assert ratio < 0.6, f"int8 is {ratio:.0%} of the float32 size"


@tensorflow_only
def test_sidecar_carries_featurizer_labels_and_golden_vectors(trained, exports):
    model, _ = trained
    result = exports["int8"]
    with open(result.sidecar_path, encoding="utf-8") as file:
        sidecar = json.load(file)
    assert sidecar["format"] == "neurolite-litert"
    assert sidecar["label_names"] == model.label_names
    assert sidecar["featurizer"] == model.featurizer.get_config()
    assert sidecar["config"] == model.config.get_config()
    assert sidecar["quantization"]["mode"] == "int8"
    assert sidecar["quantization"]["per_channel"] is True
    assert sidecar["quantization"]["calibration_texts"] == 200
    assert sidecar["quantization"]["calibration_percentile"] == 99.99
    assert sidecar["outputs"][0]["name"] == "logits"
    assert sidecar["outputs"][0]["shape"] == [1, len(model.label_names)]
    assert set(sidecar["operators"]) == {
        op.name for op in list_operators(result.tflite_path)
    }
    goldens = sidecar["golden_vectors"]
    assert len(goldens) >= 8 and goldens[-1]["text"] == ""
    features = model.featurizer([g["text"] for g in goldens])
    for row, golden in enumerate(goldens):
        assert golden["hash_indices"] == features["hash_indices"][row].tolist()
        assert golden["padding_mask"] == features["padding_mask"][row].tolist()
        assert golden["tokens"] == model.featurizer.tokenize(golden["text"])
    runner = LiteRTClassifier(result.tflite_path)
    logits = runner.predict_logits([g["text"] for g in goldens])
    np.testing.assert_allclose(
        logits, [g["tflite_logits"] for g in goldens], atol=1e-6
    )


@tensorflow_only
def test_percentile_calibration_narrows_ranges_within_min_and_max(
    trained, sib200, monkeypatch
):
    """int8 ranges span 99.99% of each activation's calibration values:
    every range written back lies within the converter's min and max, some
    are narrower, and the rest of the model is left as it was."""
    model, _ = trained
    written = []
    original = export_recipe.with_calibration_ranges

    def record(calibrated, ranges):
        result = original(calibrated, ranges)
        written.append((calibrated, ranges, result))
        return result

    monkeypatch.setattr(export_recipe, "with_calibration_ranges", record)
    features = model.featurize(sib200.train.texts[:40])
    export_recipe.convert_model(model, "int8", features)
    ((calibrated, ranges, result),) = written
    recorded = calibration_ranges(calibrated)
    assert ranges and set(ranges) <= set(recorded)
    for index, (low, high) in ranges.items():
        assert recorded[index][0] <= low <= high <= recorded[index][1]
    assert any(ranges[i] != recorded[i] for i in ranges)
    assert calibration_ranges(result) == {**recorded, **ranges}
    assert len(result) == len(calibrated)
    index = next(iter(ranges))
    with pytest.raises(ValueError, match="is empty"):
        with_calibration_ranges(calibrated, {index: (1.0, 0.0)})
    # 100 keeps the converter's own ranges: nothing is rewritten.
    written.clear()
    export_recipe.convert_model(
        model, "int8", features, calibration_percentile=100
    )
    assert not written


# --- Parity ----------------------------------------------------------------


@tensorflow_only
def test_float32_logits_match_keras(trained, exports, held_out):
    model, _ = trained
    texts = held_out[0][:48]
    runner = LiteRTClassifier(exports["float32"].tflite_path)
    difference = np.abs(
        runner.predict_logits(texts) - _keras_logits(model, texts)
    )
    assert difference.max() <= 1e-4


@tensorflow_only
@pytest.mark.parametrize("name", ["int8", "int8_per_tensor"])
def test_int8_agrees_with_float_model(
    trained, exports, memorized, held_out, name
):
    _, path = trained
    texts, labels = memorized
    keep = np.linspace(0, len(texts) - 1, 64).round().astype(int)
    # One report, two groups: sentences the model fitted (clear margins)
    # and unseen ones, where this tiny model's decisions are closer.
    report = parity_report(
        path,
        exports[name].tflite_path,
        [texts[i] for i in keep] + held_out[0],
        [labels[i] for i in keep] + held_out[1],
        languages=["fitted"] * 64 + ["unseen"] * len(held_out[0]),
    )
    fitted, unseen = (
        report["per_language"]["fitted"],
        report["per_language"]["unseen"],
    )
    assert fitted["top1_agreement"] >= 0.99, report
    assert fitted["keras_accuracy"] - fitted["tflite_accuracy"] <= 0.01
    # A broken activation range gives about 40% here.
    assert unseen["top1_agreement"] >= 0.95, report
    assert report["num_texts"] == 64 + len(held_out[0])


@tensorflow_only
@pytest.mark.parametrize(
    "mixer, routing, scheme",
    [
        ("hypermixer", False, "k_functions"),
        ("fnet", False, "k_functions"),
        ("mlp", True, "k_functions"),
        ("mlp", False, "bottom_k"),
    ],
)
def test_every_mixer_exports_to_int8_with_parity(
    sib200, memorized, tmp_path, mixer, routing, scheme
):
    """HyperMixer and FNet classifiers, an MLP-Mixer with a mixture of
    experts, and one fed bottom-k MinHash indices (empty slots are -1; the
    plain MLP-Mixer is `trained` above), pass the same int8 checks:
    built-in operators, static shapes, agreement."""
    keras.utils.set_random_seed(0)
    config = tiny_config()
    config.mixer_type = mixer
    config.use_dynamic_routing = routing
    config.minhash_scheme = scheme
    model = NeuroLiteForClassification(config, label_names=sib200.label_names)
    model.compile(optimizer=keras.optimizers.AdamW(0.01))
    texts, labels = memorized
    model.fit(texts, labels, epochs=15, batch_size=35, verbose=0)
    path = str(tmp_path / f"{mixer}.keras")
    model.save(path)
    if scheme == "bottom_k":
        features = model.featurize(texts)["hash_indices"]
        assert (features == -1).any()
        reloaded = keras.saving.load_model(path)
        np.testing.assert_allclose(
            _keras_logits(reloaded, texts[:20]),
            _keras_logits(model, texts[:20]),
            atol=1e-5,
        )
    result = export_model(
        path,
        str(tmp_path / f"{mixer}.tflite"),
        calibration_texts=sib200.train.texts,
    )
    _check_operators_and_shapes(result)
    # All 210 fitted sentences: on 64, one flip of a near-tie (a margin of
    # 0.01 logits) already failed the 0.99 bar.
    report = parity_report(path, result.tflite_path, texts, labels)
    assert report["top1_agreement"] >= 0.99, report
    assert report["accuracy_drop"] <= 0.01, report


@tensorflow_only
def test_rules_travel_in_the_sidecar_and_fire_in_litert(
    sib200, memorized, tmp_path
):
    """A classifier with a symbolic module: the sidecar carries its rules,
    and the runner evaluates them beside the featurizer, as Keras does."""
    rules = {
        "rules": [
            {
                "name": "sport",
                "label": "sports",
                "weight": 0.9,
                "when": {"any_keywords": ["match", "football", "olympi*"]},
            }
        ]
    }
    config = tiny_config()
    config.use_symbolic_module = True
    model = NeuroLiteForClassification(
        config, label_names=sib200.label_names, rules=rules
    )
    model.compile(optimizer=keras.optimizers.AdamW(0.01))
    texts, labels = memorized
    model.fit(texts[:70], labels[:70], epochs=2, batch_size=35, verbose=0)
    path = str(tmp_path / "rules.keras")
    model.save(path)
    result = export_model(
        path, str(tmp_path / "rules.tflite"), quantization="float32"
    )
    with open(result.sidecar_path, encoding="utf-8") as file:
        assert json.load(file)["rules"]["rules"][0]["name"] == "sport"
    runner = LiteRTClassifier(result.tflite_path)
    probe = ["The football match ended in a draw.", "Le parlement a voté."]
    evidence = runner.featurize(probe)["rule_evidence"]
    assert evidence[0, 0, sib200.label_names.index("sports")] > 0.8
    assert not evidence[1].any()
    np.testing.assert_allclose(
        runner.predict_logits(probe), _keras_logits(model, probe), atol=1e-4
    )


def test_parity_figures_checks_its_targets():
    keras_logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    tflite_logits = keras_logits + 1e-5
    figures = parity_figures(
        keras_logits,
        tflite_logits,
        np.array([0, 1, 1]),
        languages=["fr", "fr", "en"],
        quantization="float32",
    )
    assert figures["top1_agreement"] == 1.0
    # Accuracy is the mean over languages: fr 1.0, en 0.0.
    assert figures["keras_accuracy"] == pytest.approx(0.5)
    assert figures["targets"] == {"logits_within_1e-4": True}
    flipped = tflite_logits[:, ::-1]
    figures = parity_figures(keras_logits, flipped, quantization="int8")
    assert figures["targets"] == {"top1_agreement_at_least_0.99": False}


# --- The LiteRT runner -----------------------------------------------------


@tensorflow_only
def test_runner_classifies_raw_text(exports):
    runner = LiteRTClassifier(exports["int8"].tflite_path, num_threads=1)
    texts = ["Le match de football a fini tard.", "", "🙂 " * 40]
    probabilities = runner.predict_proba(texts)
    assert probabilities.shape == (3, len(runner.label_names))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert runner.predict_proba([]).shape == (0, len(runner.label_names))
    (best,) = runner.classify(texts[0])
    assert best[0][0] in runner.label_names
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        runner.predict_proba(["ok", None])


@tensorflow_only
def test_runner_needs_its_own_sidecar(exports, tmp_path):
    source = exports["float32"].tflite_path
    lonely = tmp_path / "lonely.tflite"
    lonely.write_bytes(open(source, "rb").read())
    with pytest.raises(MissingSidecarError, match="lonely.tflite.json"):
        LiteRTClassifier(str(lonely))
    # A sidecar written for another file is refused.
    other = tmp_path / "other.tflite"
    other.write_bytes(open(exports["int8"].tflite_path, "rb").read())
    (tmp_path / "other.tflite.json").write_text(
        open(sidecar_path(source), encoding="utf-8").read(), encoding="utf-8"
    )
    with pytest.raises(ValueError, match="SHA-256"):
        LiteRTClassifier(str(other))
    with pytest.raises(FileNotFoundError, match="No .tflite file"):
        LiteRTClassifier(str(tmp_path / "missing.tflite"))


# --- Errors that help ------------------------------------------------------


def test_bad_arguments_give_clear_errors(trained, tmp_path):
    _, path = trained
    out = str(tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="Unknown quantization 'int4'"):
        export_model(path, out, quantization="int4")
    with pytest.raises(ValueError, match="calibration set is empty"):
        export_model(path, out, quantization="int8", calibration_texts=[])
    with pytest.raises(ValueError, match="calibrates activation ranges"):
        export_model(path, out, quantization="int8")
    with pytest.raises(ValueError, match="quantization='int8'"):
        export_model(path, out, quantization="float16", qat_epochs=1)
    with pytest.raises(ValueError, match="needs training data"):
        export_model(
            path,
            out,
            quantization="int8",
            qat_epochs=1,
            calibration_texts=["x"],
        )
    for bad in (101, 10, True, "99"):
        with pytest.raises(ValueError, match="calibration_percentile="):
            export_model(
                path,
                out,
                quantization="int8",
                calibration_texts=["x"],
                calibration_percentile=bad,
            )
    with pytest.raises(ValueError, match="only empty texts"):
        export_model(
            path, out, quantization="int8", calibration_texts=["", " \t"]
        )
    with pytest.raises(FileNotFoundError, match="No model file"):
        export_model(str(tmp_path / "none.keras"), out)
    assert os.listdir(tmp_path) == []


def test_output_that_cannot_be_written_is_refused_before_converting(
    trained, tmp_path
):
    _, path = trained
    (tmp_path / "folder.tflite").mkdir()
    (tmp_path / "pair.tflite.json").mkdir()
    (tmp_path / "file").write_text("x")
    for out, message in (
        ("folder.tflite", "is a directory"),
        ("pair.tflite", "pair.tflite.json' is a directory"),
        ("file/m.tflite", "is a file, not a folder"),
    ):
        with pytest.raises(ValueError, match=message):
            export_model(path, str(tmp_path / out), quantization="float32")
    assert sorted(os.listdir(tmp_path)) == [
        "file",
        "folder.tflite",
        "pair.tflite.json",
    ]


@tensorflow_only
def test_validation_data_of_another_data_set_is_refused(trained, tmp_path):
    _, path = trained
    with pytest.raises(ValueError, match="another data set"):
        export_model(
            path,
            str(tmp_path / "m.tflite"),
            quantization="float32",
            validation_texts=["I lost my card"],
            validation_labels=["lost_or_stolen_card"],
        )
    assert os.listdir(tmp_path) == []


def test_a_failed_sidecar_write_puts_the_previous_model_back(
    tmp_path, monkeypatch
):
    out = str(tmp_path / "m.tflite")
    export_recipe._write_pair(out, b"old model", "{}")

    def fail(path, text):
        raise OSError("disk full")

    monkeypatch.setattr(export_recipe.atomic_io, "write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        export_recipe._write_pair(out, b"new model", "{}")
    with open(out, "rb") as file:
        assert file.read() == b"old model"
    with pytest.raises(OSError, match="disk full"):
        export_recipe._write_pair(str(tmp_path / "new.tflite"), b"x", "{}")
    assert sorted(os.listdir(tmp_path)) == ["m.tflite", "m.tflite.json"]


def test_interrupted_export_stops_its_conversion_subprocess(
    trained, tmp_path, monkeypatch
):
    """Ctrl-C (or SIGTERM through the command line) while the TensorFlow
    subprocess converts: the subprocess is stopped, so it cannot write the
    output after the caller has returned."""
    _, path = trained
    started = []
    real_popen = export_recipe.subprocess.Popen

    class InterruptedPopen(real_popen):
        def wait(self, timeout=None):
            if not started:
                started.append(self)
                raise KeyboardInterrupt
            return super().wait(timeout)

    monkeypatch.setattr(export_recipe.subprocess, "Popen", InterruptedPopen)
    out = str(tmp_path / "out" / "m.tflite")
    request = {
        "model_path": path,
        "output_path": out,
        "quantization": "float32",
    }
    folder = tmp_path / "work"
    folder.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_recipe._convert_in_subprocess(request, str(folder))
    (process,) = started
    assert process.poll() is not None
    assert not os.path.exists(out)


def test_broken_model_file_fails_cleanly_on_every_backend(tmp_path):
    # Under JAX and PyTorch the error comes back from the TensorFlow
    # subprocess; either way it is one clear exception and no file.
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    with pytest.raises((ValueError, ExportError)) as info:
        export_model(
            str(broken), str(tmp_path / "out.tflite"), quantization="float32"
        )
    assert "Traceback" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["broken.keras"]


@keras.saving.register_keras_serializable(package="neurolite_tests")
class InverseErf(keras.layers.Layer):
    """A layer whose op (Erfinv) has no TFLite built-in."""

    def call(self, inputs):
        return ops.erfinv(ops.tanh(inputs) * 0.5)


@keras.saving.register_keras_serializable(package="neurolite_tests")
class ClassifierWithInverseErf(keras.Model):
    """A minimal classifier with the attributes export needs."""

    def __init__(self, config, label_names, **kwargs):
        self.config = NeuroLiteConfig.from_config(config)
        self.label_names = list(label_names)
        inputs = feature_inputs(self.config)
        x = HashProjection(self.config.bloom_filter_size, 8, name="projection")(
            inputs["hash_indices"]
        )
        x = InverseErf(name="inverse_erf")(x)
        x = MaskedMeanPooling()(x, padding_mask=inputs["padding_mask"])
        logits = keras.layers.Dense(len(self.label_names), name="logits")(x)
        super().__init__(inputs, {"logits": logits}, **kwargs)

    @property
    def featurizer(self):
        from neurolite_keras.featurizer import TextFeaturizer

        return TextFeaturizer.from_config(self.config)

    def get_config(self):
        return {
            "config": self.config.get_config(),
            "label_names": self.label_names,
            "name": self.name,
        }


@tensorflow_only
def test_unsupported_op_names_layer_and_op_and_leaves_no_file(tmp_path):
    model = ClassifierWithInverseErf(tiny_config().get_config(), ["a", "b"])
    path = str(tmp_path / "odd.keras")
    model.save(path)
    out = tmp_path / "odd.tflite"
    out.write_bytes(b"previous export")
    with pytest.raises(UnsupportedOperatorError) as info:
        export_model(path, str(out), quantization="float32")
    message = str(info.value)
    assert "'inverse_erf'" in message and "'Erfinv'" in message, message
    assert "Traceback" not in message and len(message) < 400
    assert (info.value.layer, info.value.op) == ("inverse_erf", "Erfinv")
    assert out.read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["odd.keras", "odd.tflite"]


# --- Cases from public reports ---------------------------------------------


@tensorflow_only
@pytest.mark.parametrize(
    "entry_point",
    [pytest.param("model.export", marks=pytest.mark.slow), "from_keras_model"],
)
def test_static_batch_survives_conversion(
    trained, held_out, tmp_path, entry_point
):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    classifier, _ = trained
    inputs = feature_inputs(classifier.config, batch_size=1)
    model = keras.Model(inputs, classifier(inputs))
    path = str(tmp_path / "static.tflite")
    if entry_point == "model.export":
        # Keras derives the export signature with the batch set to None;
        # the explicit batch-1 signature keeps it static.
        model.export(
            path,
            format="litert",
            verbose=False,
            input_signature=export_recipe.static_input_signature(model),
        )
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        with open(path, "wb") as file:
            file.write(converter.convert())
    interpreter = Interpreter(model_path=path)
    for detail in interpreter.get_input_details():
        assert detail["shape_signature"][0] == 1, detail
    check_static_shapes(path)
    runner = interpreter.get_signature_runner()
    features = classifier.featurize(held_out[0][:8])
    expected = np.asarray(model.predict(features, verbose=0)["logits"])
    for row in range(8):
        output = runner(**{k: v[row : row + 1] for k, v in features.items()})
        np.testing.assert_allclose(
            output["logits"][0], expected[row], atol=1e-5
        )


def _numpy_fake_quant(x, low, high):
    """Reference fake quantization (8 bits, 256 levels) in float32."""
    x, low, high = (np.float32(v) for v in (x, low, high))
    scale = (high - low) / np.float32(255)
    zero_point = np.round(np.clip(-low / scale, 0, 255))
    nudged_low = (0 - zero_point) * scale
    nudged_high = (255 - zero_point) * scale
    clipped = np.clip(x, nudged_low, nudged_high)
    quant_zero = np.floor(-nudged_low / scale + np.float32(0.5))
    out = np.floor((clipped - nudged_low) / scale - quant_zero + 0.5) * scale
    return out.astype("float32"), nudged_low, nudged_high


def test_fake_quant_with_learnable_range_trains_the_same_everywhere():
    rng = np.random.default_rng(7)
    x = (2.0 * rng.standard_normal((8, 4))).astype("float32")
    y = (0.5 * rng.standard_normal((8, 3))).astype("float32")
    kernel = (0.5 * rng.standard_normal((4, 3))).astype("float32")
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.Constant(kernel)
    )
    quantizer = FakeQuant(initial_min=-1.0, initial_max=1.0)
    model = keras.Model(inputs, quantizer(dense(inputs)))
    learning_rate = 0.1
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    before = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = [ops.convert_to_numpy(v) for v in model.trainable_variables]

    # NumPy reference of the loss and the straight-through gradients.
    z = x @ kernel
    out, low, high = _numpy_fake_quant(z, -1.0, 1.0)
    loss = np.mean((out - y) ** 2)
    upstream = 2.0 * (out - y) / out.size
    inside = (z >= low) & (z <= high)
    expected = {
        "kernel": x.T @ np.where(inside, upstream, 0.0),
        "bias": np.where(inside, upstream, 0.0).sum(axis=0),
        "min": upstream[z < low].sum(),
        "max": upstream[z > high].sum(),
    }
    assert history.history["loss"][0] == pytest.approx(loss, abs=1e-5)
    for variable, old, new in zip(model.trainable_variables, before, after):
        gradient = (old - new) / learning_rate
        assert gradient.shape == tuple(variable.shape), variable.path
        name = variable.path.split("/")[-1]
        np.testing.assert_allclose(
            gradient, expected[name], atol=1e-4, err_msg=variable.path
        )
    assert abs(expected["min"]) > 1e-3 and abs(expected["max"]) > 1e-3


# --- Quantization-aware training -------------------------------------------


def test_fake_quantized_weights_sit_on_the_int8_grid():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((16, 5)).astype("float32")
    per_channel = ops.convert_to_numpy(
        fake_quantize_weight(kernel, "per_channel")
    )
    scales = np.abs(kernel).max(axis=0) / 127
    steps = per_channel / scales
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(per_channel - kernel).max() <= scales.max() / 2 + 1e-6
    per_tensor = ops.convert_to_numpy(
        fake_quantize_weight(kernel, "per_tensor")
    )
    steps = per_tensor / (np.abs(kernel).max() / 127)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    with pytest.raises(ValueError, match="scheme"):
        fake_quantize_weight(kernel, "per_row")


def test_qat_reaches_every_dense_and_round_trips(sib200, tmp_path):
    keras.utils.set_random_seed(1)
    model = NeuroLiteForClassification(
        tiny_config(), label_names=sib200.label_names
    )
    qat = QuantizationAwareModel(model)
    dense_kernels = {
        layer.kernel.path
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.Dense)
    }
    covered = {w.path for w in qat.quantized_weights}
    assert dense_kernels <= covered
    assert "mixer_1/token_dense_in/kernel" in covered
    assert any(w.scheme == "asymmetric" for w in qat.quantized_weights)

    texts, labels = sib200.train.texts[:64], sib200.train.labels[:64]
    features = model.featurize(texts)
    nested = model.get_layer("backbone").get_layer("mixer_0")
    before = ops.convert_to_numpy(nested.token_dense_in.kernel)
    float_logits = _keras_logits(model, features)
    qat.calibrate(features)
    qat.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss={
            "logits": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            )
        },
    )
    history = qat.fit(
        features,
        {"logits": model.encode_labels(labels)},
        batch_size=32,
        epochs=1,
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][0])
    after = ops.convert_to_numpy(nested.token_dense_in.kernel)
    assert not np.allclose(before, after), "nested Dense got no gradient"

    quantized = qat.predict(features, verbose=0)["logits"]
    trained_float = _keras_logits(model, features)
    assert not np.allclose(trained_float, float_logits)
    assert not np.allclose(quantized, trained_float)
    # The logits go through the output fake quantizer: 256 levels at most.
    assert len(np.unique(quantized)) <= 256
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, QuantizationAwareModel)
    np.testing.assert_allclose(
        restored.predict(features, verbose=0)["logits"], quantized, atol=1e-5
    )


@tensorflow_only
@pytest.mark.slow
def test_int8_export_after_qat(trained, sib200, held_out, tmp_path):
    _, path = trained
    texts = sib200.train.texts[::6]
    result = export_model(
        path,
        str(tmp_path / "qat.tflite"),
        quantization="int8",
        qat_epochs=1,
        train_texts=texts,
        validation_texts=held_out[0][:64],
        validation_labels=held_out[1][:64],
    )
    assert result.qat["epochs"] == 1 and result.qat["backend"] == "tensorflow"
    assert result.parity["top1_agreement"] >= 0.95, result.parity
    assert [
        op for op in list_operators(result.tflite_path) if op.kind != "builtin"
    ] == []
    with open(result.sidecar_path, encoding="utf-8") as file:
        assert json.load(file)["quantization"]["qat_epochs"] == 1


@pytest.mark.skipif(
    BACKEND == "tensorflow", reason="tests the TensorFlow subprocess"
)
@pytest.mark.parametrize(
    "qat_epochs", [0, pytest.param(1, marks=pytest.mark.slow)]
)
def test_model_trained_on_this_backend_exports_through_subprocess(
    trained, sib200, held_out, tmp_path, qat_epochs
):
    model, path = trained
    result = export_model(
        path,
        str(tmp_path / "tiny.tflite"),
        quantization="int8",
        qat_epochs=qat_epochs,
        train_texts=sib200.train.texts[:64],
    )
    if qat_epochs:
        assert result.qat["backend"] == BACKEND
    assert all(
        op.kind == "builtin" for op in list_operators(result.tflite_path)
    )
    runner = LiteRTClassifier(result.tflite_path)
    assert runner.label_names == model.label_names
    texts = held_out[0][:40]
    agreement = (
        runner.predict_proba(texts).argmax(1)
        == _keras_logits(model, texts).argmax(1)
    ).mean()
    assert agreement >= 0.9
