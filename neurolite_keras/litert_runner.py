"""`LiteRTClassifier`: a NeuroLite `.tflite` file run on raw text.

The runner needs only the `.tflite` file, its sidecar JSON (written beside
it by `neurolite export`, named `<file>.tflite.json`), NumPy and
`ai-edge-litert`: no Keras model, no TensorFlow. The sidecar carries what
the flatbuffer cannot: the featurizer settings, the label names, the
input and output tensors, the quantization parameters, and golden
featurizer vectors that a port of the featurizer to Android or iOS can
check itself against.

It exposes `label_names` and `predict_proba(texts)` like the Keras
classifier, so the same evaluation code scores both.
"""

import hashlib
import json
import os

import numpy as np

from neurolite_keras.featurizer import TextFeaturizer
from neurolite_keras.featurizer import check_texts

SIDECAR_FORMAT = "neurolite-litert"
SIDECAR_VERSION = 1
SIGNATURE_KEY = "serving_default"


class MissingSidecarError(FileNotFoundError):
    """A `.tflite` file has no sidecar JSON beside it."""


def sidecar_path(tflite_path):
    """Where the sidecar of `tflite_path` lives: `<tflite_path>.json`."""
    return os.fspath(tflite_path) + ".json"


def file_sha256(path):
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(tflite_path, path=None):
    """Loads and checks the sidecar of `tflite_path`.

    Args:
        tflite_path: path of the `.tflite` file.
        path: the sidecar's path, if not `<tflite_path>.json`.

    Returns:
        The sidecar as a dict.

    Raises:
        FileNotFoundError: no `.tflite` file.
        MissingSidecarError: no sidecar.
        ValueError: a sidecar that is not valid JSON, not a NeuroLite
            sidecar, of a newer format, or missing a field.
    """
    tflite_path = os.fspath(tflite_path)
    if not os.path.isfile(tflite_path):
        raise FileNotFoundError(f"No .tflite file at {tflite_path!r}")
    path = sidecar_path(tflite_path) if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise MissingSidecarError(
            f"No sidecar file {path!r} beside {tflite_path!r}. It carries "
            "the featurizer settings and label names that the model needs "
            "to run on text; export the model with `neurolite export`, "
            "which writes both files."
        )
    try:
        with open(path, encoding="utf-8") as file:
            sidecar = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Sidecar {path!r} is not valid JSON: {error}"
        ) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise ValueError(
            f"{path!r} is not a NeuroLite sidecar (expected "
            f'"format": "{SIDECAR_FORMAT}").'
        )
    version = sidecar.get("format_version")
    if not isinstance(version, int) or version > SIDECAR_VERSION:
        raise ValueError(
            f"Sidecar {path!r} has format_version {version!r}; this version "
            f"of NeuroLite reads up to {SIDECAR_VERSION}. Upgrade "
            "neurolite-keras."
        )
    missing = [
        key
        for key in ("featurizer", "label_names", "inputs", "outputs")
        if key not in sidecar
    ]
    if missing:
        raise ValueError(f"Sidecar {path!r} lacks the field(s) {missing}.")
    return sidecar


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype("float32")


class LiteRTClassifier:
    """Classifies raw texts with an exported NeuroLite `.tflite` model.

    Featurizes each text with the settings of the sidecar, runs the
    interpreter once per text (the model's batch is 1) and returns class
    probabilities. An int8 output is dequantized with the tensor's scale
    and zero point.

    Args:
        tflite_path: path of the `.tflite` file.
        num_threads: int. Interpreter threads. Defaults to `1`.
        sidecar: path of the sidecar, if not `<tflite_path>.json`.
        verify: bool. Check that the sidecar was written for this very
            file (SHA-256 of its bytes) and that the featurizer reproduces
            the golden vectors. Defaults to `True`.

    Attributes:
        label_names: list of str, in the order of the model's outputs.
        num_labels: int.
        featurizer: the `TextFeaturizer` the model expects.
        metadata: the sidecar dict.

    Example (`model.tflite` and `model.tflite.json` written by
    `neurolite export`):

    ```python
    classifier = LiteRTClassifier("model.tflite")
    classifier.classify(["Le match a fini tard."])
    # [[("sports", 0.91)]]
    ```
    """

    def __init__(self, tflite_path, num_threads=1, sidecar=None, verify=True):
        if (
            isinstance(num_threads, bool)
            or not isinstance(num_threads, int)
            or num_threads < 1
        ):
            raise ValueError(
                "`num_threads` must be a positive integer. "
                f"Received: num_threads={num_threads!r}"
            )
        self.tflite_path = os.fspath(tflite_path)
        self.num_threads = num_threads
        self.metadata = read_sidecar(self.tflite_path, sidecar)
        expected = self.metadata.get("tflite_sha256")
        if verify and expected and expected != file_sha256(self.tflite_path):
            raise ValueError(
                f"The sidecar of {self.tflite_path!r} was written for a "
                "different .tflite file (SHA-256 mismatch); export again to "
                "write both files together."
            )
        self.label_names = [str(name) for name in self.metadata["label_names"]]
        self.num_labels = len(self.label_names)
        self.featurizer = TextFeaturizer(**self.metadata["featurizer"])
        if verify:
            self.check_golden_vectors()

        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(
            model_path=self.tflite_path, num_threads=num_threads
        )
        signatures = self._interpreter.get_signature_list()
        key = self.metadata.get("signature", SIGNATURE_KEY)
        if key not in signatures:
            raise ValueError(
                f"{self.tflite_path!r} has no signature {key!r}; it has "
                f"{sorted(signatures)}."
            )
        self._runner = self._interpreter.get_signature_runner(key)
        self._inputs = self._runner.get_input_details()
        outputs = self._runner.get_output_details()
        self._output_name = self.metadata.get("output_name", "logits")
        if self._output_name not in outputs:
            raise ValueError(
                f"{self.tflite_path!r} has no output {self._output_name!r}; "
                f"it has {sorted(outputs)}."
            )
        self._output = outputs[self._output_name]
        shape = tuple(int(d) for d in self._output["shape"])
        if shape != (1, self.num_labels):
            raise ValueError(
                f"{self.tflite_path!r} outputs shape {shape}, but its "
                f"sidecar lists {self.num_labels} labels."
            )

    def check_golden_vectors(self):
        """Raises `ValueError` if the featurizer disagrees with the sidecar.

        The golden vectors were computed by the featurizer at export time;
        a mismatch means this installation hashes text differently, and
        the model would see other inputs than it was trained on.
        """
        for golden in self.metadata.get("golden_vectors", []):
            features = self.featurizer([golden["text"]])
            for key in ("hash_indices", "padding_mask"):
                if features[key][0].tolist() != golden[key]:
                    raise ValueError(
                        f"The featurizer gives other {key} than the golden "
                        f"vector of {golden['text']!r} in the sidecar of "
                        f"{self.tflite_path!r}."
                    )

    def featurize(self, texts):
        """Model inputs for `texts` (a str or a sequence of str)."""
        return self.featurizer(texts)

    def _feed(self, name, array):
        detail = self._inputs[name]
        dtype = detail["dtype"]
        scale, zero_point = detail["quantization"]
        if scale and np.issubdtype(dtype, np.integer) and dtype != np.int32:
            array = np.round(array / scale + zero_point)
        return np.asarray(array).astype(dtype)

    def predict_logits(self, texts):
        """Logits, float32 `(len(texts), num_labels)`."""
        texts = check_texts(texts)
        logits = np.zeros((len(texts), self.num_labels), dtype="float32")
        if not texts:
            return logits
        features = self.featurizer(texts)
        scale, zero_point = self._output["quantization"]
        for row in range(len(texts)):
            feeds = {
                name: self._feed(name, features[name][row : row + 1])
                for name in self._inputs
            }
            output = self._runner(**feeds)[self._output_name]
            output = np.asarray(output, dtype="float32")
            if scale:
                output = (output - zero_point) * scale
            logits[row] = output[0]
        return logits

    def predict_proba(self, texts, batch_size=None):
        """Class probabilities, float32 `(len(texts), num_labels)`.

        `batch_size` is accepted for compatibility with the Keras
        classifier and ignored: the exported model runs one text at a time.
        """
        del batch_size
        return _softmax(self.predict_logits(texts).astype("float64"))

    def classify(self, texts, top_k=1):
        """The `top_k` (label, probability) pairs of each text, best first."""
        probabilities = self.predict_proba(texts)
        top_k = max(1, min(int(top_k), self.num_labels))
        order = np.argsort(-probabilities, axis=1)[:, :top_k]
        return [
            [(self.label_names[j], float(row[j])) for j in best]
            for row, best in zip(probabilities, order)
        ]

    def __repr__(self):
        quantization = self.metadata.get("quantization", {}).get("mode")
        return (
            f"LiteRTClassifier({self.tflite_path!r}, "
            f"quantization={quantization!r}, labels={self.num_labels}, "
            f"num_threads={self.num_threads})"
        )
