"""`LiteRTClassifier`: a NeuroLite `.tflite` file run on raw text.

The runner needs only the `.tflite` file, its sidecar JSON (written beside
it by `neurolite export`, named `<file>.tflite.json`), NumPy and
`ai-edge-litert`: no Keras model, no TensorFlow. The sidecar carries what
the flatbuffer cannot: the featurizer settings, the label names, the
input and output tensors, the quantization parameters, and golden
featurizer vectors that a port of the featurizer to Android or iOS can
check itself against.

It exposes `label_names` and `predict_proba(texts)` like the Keras
classifier, so the same evaluation code scores both. A model exported with
episodic memory also keeps its memory state here, between calls: texts
(and labels, new ones included) are written with `write_memory`, the state
is read, replaced and saved with the methods and `.npz` files of
`neurolite_keras.memory_state`, the same as the Keras model's.
"""

import hashlib
import json
import os
import warnings

import numpy as np

from neurolite_keras import memory_state
from neurolite_keras.featurizer import TextFeaturizer
from neurolite_keras.featurizer import check_texts
from neurolite_keras.rules import RuleSet

SIDECAR_FORMAT = "neurolite-litert"
# Written for a model without memory; a model with episodic memory gets
# version 2 (its `memory` section), which older runners refuse.
SIDECAR_VERSION = 1
MEMORY_SIDECAR_VERSION = 2
SIGNATURE_KEY = "serving_default"
# The output carrying the updated value of a state input `name`.
MEMORY_STATE_OUTPUT_PREFIX = "new_"


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
    if not isinstance(version, int) or version > MEMORY_SIDECAR_VERSION:
        raise ValueError(
            f"Sidecar {path!r} has format_version {version!r}; this version "
            f"of NeuroLite reads up to {MEMORY_SIDECAR_VERSION}. Upgrade "
            "neurolite-keras."
        )
    required = ["featurizer", "label_names", "inputs", "outputs"]
    if version >= MEMORY_SIDECAR_VERSION:
        required.append("memory")
    missing = [key for key in required if key not in sidecar]
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

    With episodic memory (a classifier exported with
    `use_external_memory=True`), the runner holds the memory's state, empty
    at first, and feeds it to every call: `predict_logits` and the methods
    built on it read the memory (refreshing the usage record of the slot
    each text recalls, as the Keras model does), `write_memory` writes
    labelled texts, and `get_memory_state`, `set_memory_state`,
    `reset_memory`, `save_memory_state` and `load_memory_state` handle the
    state as the Keras model's methods of the same names do, with the same
    checks and the same `.npz` files. One text per call: a sequence of
    calls gives the state and logits that the Keras model gives for the
    same texts one at a time.

    Attributes:
        label_names: list of str, in the order of the model's outputs.
        num_labels: int.
        featurizer: the `TextFeaturizer` the model expects.
        metadata: the sidecar dict.
        memory: the sidecar's `memory` section (sizes and state tensor
            names), or `None` for a model without episodic memory.

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
        # A model with a symbolic module takes rule evidence as an input;
        # its rules travel in the sidecar and are evaluated here, beside
        # the featurizer, as in Keras.
        self.rules = None
        if self.metadata.get("rules") is not None:
            self.rules = RuleSet.from_dict(self.metadata["rules"])
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
        self.memory = self.metadata.get("memory")
        self._state = None
        self._memory_inputs = set()
        if self.metadata.get("format_version", 1) >= MEMORY_SIDECAR_VERSION:
            if not isinstance(self.memory, dict):
                raise ValueError(
                    f"The sidecar of {self.tflite_path!r} has format "
                    "version 2 but no `memory` section."
                )
        if self.memory is not None:
            self._check_memory_tensors(outputs)
            self.reset_memory()

    # --- Episodic memory ---------------------------------------------------

    def _check_memory_tensors(self, outputs):
        """Checks that the sidecar's memory tensors are in the model."""
        memory = self.memory
        try:
            shapes = memory_state.memory_state_shapes(*self._memory_sizes())
            names = [memory["write_mask_input"], memory["write_labels_input"]]
            state = {entry["name"]: entry for entry in memory["state"]}
            names += [state[name]["input"] for name in shapes]
            wanted = [memory["attention_output"]]
            wanted += [state[name]["output"] for name in shapes]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"The sidecar of {self.tflite_path!r} has an incomplete "
                f"`memory` section ({type(error).__name__}: {error})."
            ) from None
        missing = [n for n in names if n not in self._inputs]
        missing += [n for n in wanted if n not in outputs]
        if missing:
            raise ValueError(
                f"{self.tflite_path!r} lacks the memory tensors {missing} "
                "that its sidecar lists; export the model again."
            )
        for name, shape in shapes.items():
            found = tuple(
                int(d) for d in self._inputs[state[name]["input"]]["shape"]
            )
            if found != shape:
                raise ValueError(
                    f"{self.tflite_path!r} takes `{name}` of shape {found}; "
                    f"its sidecar describes shape {shape}."
                )
        self._memory_inputs = set(names)
        self._state_entries = [state[name] for name in shapes]

    def _require_memory(self):
        if self.memory is None:
            raise ValueError(
                f"{self.tflite_path!r} has no episodic memory: export a "
                "classifier built with `use_external_memory=True`."
            )

    def _memory_sizes(self):
        """Slots, learned key, value and lexical key widths (a sidecar
        written before lexical keys has no `lexical_size`: `0`)."""
        return (
            int(self.memory["num_episodic_slots"]),
            int(self.memory["key_size"]),
            int(self.memory["value_size"]),
            int(self.memory.get("lexical_size", 0)),
        )

    def _label_ids(self, labels, count):
        """Label ids (`-1` for none) from names, ids or `None`."""
        if labels is None:
            return [-1] * count
        if isinstance(labels, str):
            labels = [labels]
        labels = list(np.asarray(labels, dtype=object).reshape(-1))
        if len(labels) != count:
            raise ValueError(f"Got {count} texts but {len(labels)} labels.")
        index = {name: i for i, name in enumerate(self.label_names)}
        ids, unknown = [], []
        for label in labels:
            if label is None:
                ids.append(-1)
            elif isinstance(label, str) and label in index:
                ids.append(index[label])
            elif (
                isinstance(label, (int, np.integer))
                and not isinstance(label, bool)
                and 0 <= label < self.num_labels
            ):
                ids.append(int(label))
            else:
                unknown.append(label)
        if unknown:
            shown = sorted({repr(u) for u in unknown})[:10]
            raise ValueError(
                f"{len(unknown)} label(s) unknown to this model: "
                f"{', '.join(shown)}. Known labels: {self.label_names}"
            )
        return ids

    def write_memory(self, texts, labels=None):
        """Writes one episodic slot per text; returns the slot indices.

        Texts are written one at a time, in order; once the memory is full
        each write replaces the least recently used slot. A labelled slot
        votes for its label, one never seen in training included.

        - An empty list is a no-op and returns an empty array.
        - A text with no token is not written (slot `-1`, a warning).
        - More texts than slots: the last ones are kept (a warning). The
          step counter then counts every write, where a batched Keras
          `write_memory` counts only the kept ones.

        Args:
            texts: str or sequence of str.
            labels: `None`, or one label per text: a name, an id, or
                `None` for a text written without a label.

        Returns:
            int32 NumPy array: the slot of each text, `-1` if not written.
        """
        self._require_memory()
        texts = check_texts(texts)
        ids = self._label_ids(labels, len(texts))
        if not texts:
            return np.zeros((0,), "int32")
        features = self.featurize(texts)
        empty = np.asarray(features["padding_mask"]).sum(axis=1) == 0
        if empty.any():
            warnings.warn(
                f"Texts {np.flatnonzero(empty).tolist()} have no tokens and "
                "were not written to episodic memory.",
                stacklevel=2,
            )
        slots_count = self._memory_sizes()[0]
        if int((~empty).sum()) > slots_count:
            warnings.warn(
                f"Writing {int((~empty).sum())} texts into {slots_count} "
                f"episodic slots: only the last {slots_count} are kept.",
                stacklevel=2,
            )
        slots = np.full((len(texts),), -1, "int32")
        for row in range(len(texts)):
            before = int(self._state["episodic_step"][0])
            self._invoke(features, row, write=True, label=ids[row])
            step = int(self._state["episodic_step"][0])
            if step != before:
                stamped = self._state["episodic_last_used"] == step
                slots[row] = int(np.flatnonzero(stamped)[0])
        return slots

    def recall(self, texts, top_k=3):
        """The episodic slots each text recalls: `(slot, weight)` pairs,
        highest weight first, over the filled slots (the written texts
        themselves are not kept in the state)."""
        self._require_memory()
        texts = check_texts(texts)
        num_memory_slots = int(self.memory["num_memory_slots"])
        name = self.memory["attention_output"]
        results = []
        if not texts:
            return results
        features = self.featurize(texts)
        for row in range(len(texts)):
            filled = np.flatnonzero(self._state["episodic_last_used"] >= 0)
            outputs = self._invoke(features, row)
            weights = np.asarray(outputs[name])[0, num_memory_slots:]
            order = filled[np.argsort(-weights[filled], kind="stable")]
            results.append(
                [(int(j), float(weights[j])) for j in order[: int(top_k)]]
            )
        return results

    def reset_memory(self):
        """Empties every episodic slot and sets the step counter to 0."""
        self._require_memory()
        self._state = memory_state.empty_memory_state(*self._memory_sizes())

    def get_memory_state(self):
        """The episodic state as a dict of NumPy arrays (copies)."""
        self._require_memory()
        return {name: np.array(value) for name, value in self._state.items()}

    def set_memory_state(self, state):
        """Replaces the episodic state after checking all of it.

        Accepts what `get_memory_state` returns here or on the Keras model
        the file was exported from.

        Raises:
            ValueError: a name, shape (slot count included), dtype or value
                is wrong; the current state is then left unchanged.
        """
        self._require_memory()
        slots, key_size, value_size, lexical_size = self._memory_sizes()
        self._state = memory_state.validate_memory_state(
            state,
            slots,
            key_size,
            value_size,
            lexical_size=lexical_size,
            num_labels=int(self.memory.get("num_labels", 0)),
            where=f"LiteRTClassifier({self.tflite_path!r}).set_memory_state",
        )

    def save_memory_state(self, path):
        """Writes the episodic state to a `.npz` file, atomically."""
        memory_state.save_memory_state(path, self.get_memory_state())

    def load_memory_state(self, path):
        """Reads a `.npz` state file; on error the state is unchanged."""
        self._require_memory()
        self.set_memory_state(memory_state.load_memory_state(path))

    def _invoke(self, features, row, write=False, label=-1):
        """Runs the model on text `row`; with memory, feeds the state and
        keeps the new one. Returns the outputs by name."""
        feeds = {
            name: self._feed(name, features[name][row : row + 1])
            for name in self._inputs
            if name not in self._memory_inputs
        }
        if self.memory is not None:
            feeds[self.memory["write_mask_input"]] = np.array(
                [1.0 if write else 0.0], "float32"
            )
            feeds[self.memory["write_labels_input"]] = np.array(
                [label], "int32"
            )
            for entry in self._state_entries:
                feeds[entry["input"]] = self._state[entry["name"]]
        outputs = self._runner(**feeds)
        if self.memory is not None:
            self._state = {
                entry["name"]: np.array(outputs[entry["output"]])
                for entry in self._state_entries
            }
        return outputs

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
        """Model inputs for `texts` (a str or a sequence of str): the
        features, and the rule evidence if the model has rules."""
        features = self.featurizer(texts)
        if self.rules is not None:
            features["rule_evidence"] = self.rules.evaluate(
                check_texts(texts), self.label_names
            )
        return features

    def _feed(self, name, array):
        detail = self._inputs[name]
        dtype = detail["dtype"]
        scale, zero_point = detail["quantization"]
        if scale and np.issubdtype(dtype, np.integer) and dtype != np.int32:
            array = np.round(array / scale + zero_point)
        return np.asarray(array).astype(dtype)

    def predict_logits(self, texts):
        """Logits, float32 `(len(texts), num_labels)`; with memory, the
        texts read it one after the other."""
        texts = check_texts(texts)
        logits = np.zeros((len(texts), self.num_labels), dtype="float32")
        if not texts:
            return logits
        features = self.featurize(texts)
        scale, zero_point = self._output["quantization"]
        for row in range(len(texts)):
            output = self._invoke(features, row)[self._output_name]
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
        memory = ""
        if self.memory is not None:
            memory = f", episodic_slots={self.memory['num_episodic_slots']}"
        return (
            f"LiteRTClassifier({self.tflite_path!r}, "
            f"quantization={quantization!r}, labels={self.num_labels}"
            f"{memory}, num_threads={self.num_threads})"
        )
