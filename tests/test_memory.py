"""AssociativeMemory and EpisodicLabelReadout: retrieval, writes and the
replacement policy, state checks and files, the explicit-state form against
the variable form, and TFLite conversion with built-ins only."""

import doctest
import os

import keras
import numpy as np
import pytest
from harness import check_layer

from neurolite_keras import memory_state
from neurolite_keras.layers import memory as memory_module
from neurolite_keras.layers.memory import ABSENT_LABEL_SCORE
from neurolite_keras.layers.memory import AssociativeMemory
from neurolite_keras.layers.memory import EpisodicLabelReadout
from neurolite_keras.memory_state import load_memory_state
from neurolite_keras.memory_state import save_memory_state

SEQUENCE, HIDDEN, SLOTS, KEY = 6, 8, 3, 16
# Lexical keys of texts with 4 MinHash indices per token: 2 bands of 64.
HASHES, LEXICAL = 4, 128


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _texts(count, seed=0, num_real=None):
    """Random memory inputs for `count` texts, with their padding mask."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(count, SEQUENCE, HIDDEN)).astype("float32")
    mask = np.ones((count, SEQUENCE), "float32")
    if num_real is not None:
        mask[:, num_real:] = 0
        hidden[:, num_real:] = 0
    return hidden, mask


def _hashed_texts(texts, seed=0):
    """MinHash indices `(len(texts), SEQUENCE, HASHES)` and the padding
    mask of texts given as lists of word ids: each word has its own random
    indices, as the featurizer gives a word the same ones every time."""
    words = np.random.default_rng(seed).integers(0, 16384, (5000, HASHES))
    hashes = np.zeros((len(texts), SEQUENCE, HASHES), "int32")
    mask = np.zeros((len(texts), SEQUENCE), "float32")
    for row, text in enumerate(texts):
        hashes[row, : len(text)] = words[text]
        mask[row, : len(text)] = 1
    return hashes, mask


def _memory(num_labels=5, **kwargs):
    memory = AssociativeMemory(
        num_memory_slots=4,
        num_episodic_slots=SLOTS,
        key_size=KEY,
        num_labels=num_labels,
        **kwargs,
    )
    memory.build((None, SEQUENCE, HIDDEN))
    return memory


def _episodic_attention(memory, hidden, mask):
    _, attention = memory(hidden, padding_mask=mask, return_attention=True)
    return _numpy(attention)[:, memory.num_memory_slots :]


def _assert_states_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(
            np.asarray(actual[name]),
            np.asarray(expected[name]),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )


def test_docstring_examples_run():
    result = doctest.testmod(
        memory_module, extraglobs={"np": np}, verbose=False
    )
    assert result.attempted > 0
    assert result.failed == 0


def test_associative_memory_layer_checks(tmp_path):
    hidden, mask = _texts(2, num_real=4)
    check_layer(
        AssociativeMemory,
        {"num_memory_slots": 4, "num_episodic_slots": SLOTS, "key_size": KEY},
        {"inputs": hidden, "padding_mask": mask},
        expected_output_shape=(2, SEQUENCE, HIDDEN),
        # Norm, query, output and gate (2 each), long-term keys and values.
        expected_num_trainable_weights=10,
        # The episodic state and the query center.
        expected_num_non_trainable_weights=len(memory_state.STATE_FIELDS) + 1,
        tmp_path=tmp_path,
    )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_episodic_slots=0"):
        AssociativeMemory(4, 0, KEY)
    with pytest.raises(ValueError, match="beta=-1"):
        AssociativeMemory(4, 2, KEY, beta=-1)
    with pytest.raises(ValueError, match="centering_momentum=1.0"):
        AssociativeMemory(4, 2, KEY, centering_momentum=1.0)
    with pytest.raises(ValueError, match="num_labels=-3"):
        AssociativeMemory(4, 2, KEY, num_labels=-3)
    with pytest.raises(ValueError, match="margin=1.5"):
        EpisodicLabelReadout(4, margin=1.5)
    with pytest.raises(ValueError, match="num_labels=0"):
        EpisodicLabelReadout(0)
    memory = _memory(num_labels=0)
    hidden, mask = _texts(1)
    with pytest.raises(ValueError, match="num_labels > 0"):
        memory(hidden, return_label_scores=True)
    with pytest.raises(ValueError, match="explicit `state`"):
        memory(hidden, write_mask=np.ones((1,), "float32"))
    with pytest.raises(ValueError, match="hidden size 5"):
        memory.write(np.zeros((1, SEQUENCE, 5), "float32"))
    with pytest.raises(ValueError, match="is not built yet"):
        AssociativeMemory(4, 2, KEY).get_state()


def test_a_written_text_is_recalled_with_the_highest_weight():
    memory = _memory()
    hidden, mask = _texts(3, num_real=5)
    assert memory.write(hidden, padding_mask=mask).tolist() == [0, 1, 2]
    # A query close to each written text (its tokens with noise added).
    noisy = hidden + 0.3 * np.random.default_rng(1).normal(size=hidden.shape)
    noisy = (noisy * mask[..., None]).astype("float32")
    _, attention = memory(noisy, padding_mask=mask, return_attention=True)
    attention = _numpy(attention)
    assert attention.shape == (3, 4 + SLOTS)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-5)
    assert attention.argmax(axis=1).tolist() == [4, 5, 6]


def _lexical_keys(memory, texts, seed=0):
    """Writes `texts` (lists of word ids) with random token states and
    returns their lexical keys, one row per text."""
    memory.reset()
    hashes, mask = _hashed_texts(texts)
    hidden = np.random.default_rng(seed).normal(size=(*mask.shape, HIDDEN))
    hidden = (hidden * mask[..., None]).astype("float32")
    memory.write(hidden, mask, hash_indices=hashes)
    return memory.get_state()["episodic_keys"][: len(texts), KEY:]


def test_lexical_keys_match_shared_words_and_discount_frequent_ones():
    memory = _memory(num_labels=0, lexical_size=LEXICAL)
    # Word 1 will be frequent, words 2 and 3 rare; 10-13 occur once.
    text, shares_rare, shares_frequent = [1, 2, 3], [2, 10, 11], [1, 12, 13]
    keys = _lexical_keys(memory, [text, shares_rare, shares_frequent])
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, rtol=1e-5)
    # Before any training every word weighs the same: one shared word of
    # three gives a cosine near 1/3, whichever it is.
    rare, frequent = keys[0] @ keys[1], keys[0] @ keys[2]
    assert 0.2 < rare < 0.5 and 0.2 < frequent < 0.5, (rare, frequent)
    # The same words with other token states: the same lexical key.
    again = _lexical_keys(memory, [text, [20, 21, 22], [23, 24]], seed=1)
    np.testing.assert_allclose(again[0] @ keys[0], 1.0, rtol=1e-5)
    assert abs(again[0] @ again[1]) < 0.2 and abs(again[0] @ again[2]) < 0.2

    # Training counts the words: word 1 is in every training text.
    hashes, mask = _hashed_texts([[1, 30 + i, 40 + i] for i in range(8)])
    hidden = np.ones((8, SEQUENCE, HIDDEN), "float32")
    memory(hidden, padding_mask=mask, hash_indices=hashes, training=True)
    assert _numpy(memory.tokens_counted).tolist() == [24.0]
    # Each token adds to one counter per band: the shares sum to 2.
    frequencies = _numpy(memory.token_frequencies)
    np.testing.assert_allclose(frequencies.sum(), 2.0, rtol=1e-5)
    memory(hidden, padding_mask=mask, hash_indices=hashes)  # Frozen.
    assert _numpy(memory.tokens_counted).tolist() == [24.0]
    keys = _lexical_keys(memory, [text, shares_rare, shares_frequent])
    rare, frequent = keys[0] @ keys[1], keys[0] @ keys[2]
    assert rare > 0.3 and abs(frequent) < 0.1, (rare, frequent)


def test_shared_words_outweigh_the_learned_keys():
    """The text whose token states are the query's own (learned cosine
    about 1) loses to the one that shares most of its words, unless the
    lexical part is switched off."""
    keras.utils.set_random_seed(0)
    memory = _memory(num_labels=0, lexical_size=LEXICAL)
    hidden, _ = _texts(3, seed=14)
    # Text 0 shares three of the query's four words; texts 1 and 2 none.
    hashes, mask = _hashed_texts([[1, 2, 3, 4], [7, 8, 9, 5], [10, 11, 6]])
    query_hashes, query_mask = _hashed_texts([[1, 2, 3, 12]])
    memory.write(hidden, mask, hash_indices=hashes)
    # The query's token states are text 1's, slightly moved.
    query = hidden[1:2] + 0.1 * hidden[2:3]
    weights, streams = {}, {}
    for lexical_weight in (0.0, 3.0):
        memory.lexical_weight = lexical_weight
        stream, attention = memory(
            query,
            padding_mask=query_mask,
            hash_indices=query_hashes,
            return_attention=True,
        )
        weights[lexical_weight] = _numpy(attention)[0, 4:]
        streams[lexical_weight] = _numpy(stream)
    assert weights[0.0].argmax() == 1, weights
    assert weights[3.0].argmax() == 0, weights
    # Token reads use the learned keys only: the stream is the same.
    np.testing.assert_array_equal(streams[0.0], streams[3.0])


def test_lexical_memory_layer_checks(tmp_path):
    hidden, mask = _texts(2, num_real=4)
    hashes, _ = _hashed_texts([[1, 2, 3, 4], [5, 6, 7, 8]])
    check_layer(
        AssociativeMemory,
        {
            "num_memory_slots": 4,
            "num_episodic_slots": SLOTS,
            "key_size": KEY,
            "lexical_size": LEXICAL,
        },
        {"inputs": hidden, "padding_mask": mask, "hash_indices": hashes},
        expected_output_shape=(2, SEQUENCE, HIDDEN),
        expected_num_trainable_weights=10,
        # The episodic state, the query center and the token frequencies.
        expected_num_non_trainable_weights=len(memory_state.STATE_FIELDS) + 3,
        tmp_path=tmp_path,
    )


def test_lexical_memory_rejects_bad_arguments_and_states():
    with pytest.raises(ValueError, match="lexical_size=-1"):
        AssociativeMemory(4, 2, KEY, lexical_size=-1)
    with pytest.raises(ValueError, match="lexical_weight=-0.5"):
        AssociativeMemory(4, 2, KEY, lexical_weight=-0.5)
    with pytest.raises(ValueError, match="num_frequency_counters=40000"):
        AssociativeMemory(4, 2, KEY, num_frequency_counters=40000)
    with pytest.raises(ValueError, match="label_lexical_weight=nan"):
        AssociativeMemory(4, 2, KEY, label_lexical_weight=float("nan"))
    hidden, mask = _texts(1)
    hashes, _ = _hashed_texts([[1, 2, 3]])
    odd = _memory(lexical_size=LEXICAL + 1)
    with pytest.raises(ValueError, match="multiple of the number of bands"):
        odd(hidden, padding_mask=mask, hash_indices=hashes)
    memory = _memory(lexical_size=LEXICAL)
    with pytest.raises(ValueError, match="pass the texts' `hash_indices`"):
        memory(hidden, padding_mask=mask)
    with pytest.raises(ValueError, match="`hash_indices` of shape"):
        memory.write(hidden, mask)
    assert memory.get_state()["episodic_step"].tolist() == [0]
    # A state without the lexical part (from a memory without one).
    state = memory_state.empty_memory_state(SLOTS, KEY, HIDDEN)
    with pytest.raises(ValueError, match=r"learned key 16 \+ lexical key 128"):
        memory.set_state(state)
    _assert_states_equal(
        memory.get_state(),
        memory_state.empty_memory_state(SLOTS, KEY, HIDDEN, LEXICAL),
    )


def test_empty_slots_get_exactly_zero_weight():
    memory = _memory()
    hidden, mask = _texts(3)
    before = _numpy(memory(hidden, padding_mask=mask))
    # Garbage in empty slots (last_used -1) must change nothing.
    state = memory.get_state()
    rng = np.random.default_rng(3)
    state["episodic_keys"] = rng.normal(size=(SLOTS, KEY)) * 100
    state["episodic_values"] = rng.normal(size=(SLOTS, HIDDEN)) * 100
    memory.set_state(state)
    np.testing.assert_array_equal(
        _numpy(memory(hidden, padding_mask=mask)), before
    )
    assert np.all(_episodic_attention(memory, hidden, mask) == 0)
    memory.write(hidden[:1])
    attention = _episodic_attention(memory, hidden, mask)
    assert np.all(attention[:, 1:] == 0) and np.all(attention[:, 0] > 0)


def test_replacement_fills_empty_slots_then_the_least_recently_used():
    memory = _memory()
    hidden, mask = _texts(5, seed=4)
    assert memory.write(hidden[:3], labels=[0, 1, 2]).tolist() == [0, 1, 2]
    # Reading text 0 refreshes slot 0, so slot 1 is now the oldest.
    memory(hidden[:1], padding_mask=mask[:1])
    state = memory.get_state()
    assert state["episodic_last_used"].tolist() == [4, 2, 3]
    assert state["episodic_step"].tolist() == [4]
    assert memory.write(hidden[3:4], labels=[3]).tolist() == [1]
    assert memory.write(hidden[4:5], labels=[4]).tolist() == [2]
    state = memory.get_state()
    assert state["episodic_labels"].tolist() == [0, 3, 4]
    # An emptied slot is filled before any used one.
    state["episodic_last_used"][0] = -1
    memory.set_state(state)
    assert memory.write(hidden[:1]).tolist() == [0]
    # Training calls leave the usage record alone and move the center.
    before = memory.get_state()
    memory(hidden[:3], padding_mask=mask[:3], training=True)
    _assert_states_equal(memory.get_state(), before)
    center = _numpy(memory.query_center)
    assert np.abs(center).max() > 0
    memory(hidden[:3], padding_mask=mask[:3])
    np.testing.assert_array_equal(_numpy(memory.query_center), center)


def test_a_batched_write_equals_writes_one_by_one():
    hidden, mask = _texts(3, seed=5, num_real=4)
    one_by_one = _memory()
    batched = _memory()
    batched.set_weights(one_by_one.get_weights())
    for i in range(3):
        one_by_one.write(hidden[i : i + 1], mask[i : i + 1], labels=[i])
    batched.write(hidden, mask, labels=[0, 1, 2])
    _assert_states_equal(batched.get_state(), one_by_one.get_state())


def test_writing_more_texts_than_slots_keeps_the_last():
    memory = _memory()
    hidden, mask = _texts(SLOTS + 2, seed=6)
    labels = list(range(SLOTS + 2))
    with pytest.warns(UserWarning, match="only the last 3 are kept"):
        slots = memory.write(hidden, mask, labels=labels)
    assert slots.tolist() == [-1, -1, 0, 1, 2]
    assert memory.get_state()["episodic_labels"].tolist() == [2, 3, 4]


def test_empty_batch_and_empty_texts():
    memory = _memory()
    before = memory.get_state()
    empty = np.zeros((0, SEQUENCE, HIDDEN), "float32")
    assert memory.write(empty).shape == (0,)
    _assert_states_equal(memory.get_state(), before)

    hidden, mask = _texts(3, seed=7)
    mask[1] = 0
    with pytest.warns(UserWarning, match=r"Texts \[1\] have no tokens"):
        assert memory.write(hidden, mask).tolist() == [0, -1, 1]
    assert memory.get_state()["episodic_last_used"].tolist() == [1, 2, -1]
    _, attention, scores = memory(
        hidden,
        padding_mask=mask,
        return_attention=True,
        return_label_scores=True,
    )
    assert np.all(_numpy(attention)[1] == 0)
    assert np.all(_numpy(scores)[1] == ABSENT_LABEL_SCORE)


def test_write_rejects_bad_labels():
    memory = _memory(num_labels=5)
    hidden, mask = _texts(2)
    with pytest.raises(ValueError, match="Received 5 at position 1"):
        memory.write(hidden, mask, labels=[0, 5])
    with pytest.raises(ValueError, match="2 integers"):
        memory.write(hidden, mask, labels=[0])
    with pytest.raises(ValueError, match=r"padding_mask.*shape \(2, 6\)"):
        memory.write(hidden, mask[:, :3])
    assert memory.get_state()["episodic_step"].tolist() == [0]


def _bad_states(state):
    def changed(name, value):
        return {**state, name: value}

    keys = state["episodic_keys"]
    return {
        "wrong slot count": (
            changed("episodic_keys", np.zeros((SLOTS + 1, KEY), "float32")),
            "holds 4 episodic slots; this memory has num_episodic_slots=3",
        ),
        "wrong key size": (
            changed("episodic_keys", np.zeros((SLOTS, KEY + 1), "float32")),
            r"`episodic_keys` must have shape \(3, 16\)",
        ),
        "wrong dtype": (
            changed("episodic_labels", state["episodic_labels"] * 1.0),
            "`episodic_labels` must hold integers",
        ),
        "float given as int": (
            changed("episodic_keys", keys.astype("int32")),
            "`episodic_keys` must hold floats",
        ),
        "missing array": (
            {k: v for k, v in state.items() if k != "episodic_step"},
            r"Missing: \['episodic_step'\]",
        ),
        "unexpected array": (
            {**state, "extra": np.zeros(1)},
            r"unexpected: \['extra'\]",
        ),
        "not finite": (
            changed("episodic_keys", np.full_like(keys, np.nan)),
            "NaN or infinite",
        ),
        "label out of range": (
            changed("episodic_labels", np.full((SLOTS,), 9, "int32")),
            "holds label 9; this memory has num_labels=5",
        ),
        "stamp after step": (
            changed("episodic_last_used", np.full((SLOTS,), 50, "int32")),
            "after the memory's `episodic_step`",
        ),
        "not a dict": ([1, 2, 3], "must be a dict of arrays"),
    }


@pytest.mark.parametrize(
    "case", list(_bad_states(memory_state.empty_memory_state(3, 16, 8)))
)
def test_a_bad_state_is_refused_and_the_memory_unchanged(case):
    memory = _memory()
    hidden, mask = _texts(3, seed=8)
    memory.write(hidden, mask, labels=[1, 2, -1])
    before = memory.get_state()
    bad, message = _bad_states(before)[case]
    with pytest.raises(ValueError, match=message):
        memory.set_state(bad)
    _assert_states_equal(memory.get_state(), before)


def test_state_file_round_trip_and_damaged_files(tmp_path):
    memory = _memory()
    hidden, mask = _texts(3, seed=9)
    memory.write(hidden, mask, labels=[3, -1, 0])
    state = memory.get_state()
    path = tmp_path / "memory.npz"
    save_memory_state(path, state)
    memory.reset()
    memory.set_state(load_memory_state(path))
    _assert_states_equal(memory.get_state(), state)
    assert [p.name for p in tmp_path.iterdir()] == ["memory.npz"]

    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_memory_state(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, episodic_keys=np.zeros(3))
    with pytest.raises(ValueError, match="not a NeuroLite memory state"):
        load_memory_state(foreign)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled.npy"):
        load_memory_state(pickled)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_memory_state(tmp_path / "missing.npz")
    # A failed load leaves the memory as it was.
    _assert_states_equal(memory.get_state(), state)


def test_a_failed_save_leaves_the_previous_file(tmp_path):
    path = tmp_path / "memory.npz"
    state = memory_state.empty_memory_state(SLOTS, KEY, HIDDEN)
    save_memory_state(path, state)
    before = path.read_bytes()
    bad = {**state, "episodic_keys": np.array(["a", "b"])}
    with pytest.raises(ValueError, match="must hold floats"):
        save_memory_state(path, bad)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["memory.npz"]


def test_keras_file_keeps_the_episodic_contents(tmp_path):
    inputs = keras.Input((SEQUENCE, HIDDEN), name="hidden")
    mask = keras.Input((SEQUENCE,), name="mask")
    memory = AssociativeMemory(4, SLOTS, KEY, num_labels=5, name="memory")
    outputs = memory(inputs, padding_mask=mask, return_attention=True)
    model = keras.Model([inputs, mask], list(outputs))
    hidden, text_mask = _texts(3, seed=10, num_real=5)
    memory.write(hidden[:1], text_mask[:1], labels=[4])
    state = memory.get_state()
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    _assert_states_equal(reloaded.get_layer("memory").get_state(), state)
    for a, b in zip(model([hidden, text_mask]), reloaded([hidden, text_mask])):
        np.testing.assert_allclose(_numpy(a), _numpy(b), rtol=1e-5, atol=1e-6)


def test_predict_reads_refresh_the_usage_record():
    inputs = keras.Input((SEQUENCE, HIDDEN))
    memory = AssociativeMemory(4, SLOTS, KEY)
    model = keras.Model(inputs, memory(inputs))
    hidden, _ = _texts(3, seed=11)
    memory.write(hidden[:1])
    memory.write(hidden[1:2])
    assert memory.get_state()["episodic_step"].tolist() == [2]
    model.predict(hidden[:1], verbose=0)
    state = memory.get_state()
    assert state["episodic_step"].tolist() == [3]
    assert state["episodic_last_used"].tolist() == [3, 2, -1]


def _sequence(seed=12):
    """Writes and reads: (hidden, mask, write, label, hash_indices) per
    step, batch 1; a read near a written text shares two of its words."""
    hidden, mask = _texts(4, seed=seed, num_real=5)
    words = np.arange(1, 21).reshape(4, 5)
    hashes, _ = _hashed_texts(words)
    near_hashes, _ = _hashed_texts(
        np.concatenate([words[:, :2], words[:, 2:] + 20], 1)
    )
    rng = np.random.default_rng(seed)
    near = hidden + 0.2 * rng.normal(size=hidden.shape) * mask[..., None]
    near = near.astype("float32")
    steps = [(hidden, hashes, 0, 1, 1), (hidden, hashes, 1, 1, 2)]
    steps += [(near, near_hashes, 0, 0, -1), (hidden, hashes, 2, 1, 3)]
    steps += [(hidden, hashes, 3, 1, 4), (near, near_hashes, 3, 0, -1)]
    steps += [(near, near_hashes, 1, 0, -1)]
    return [
        (h[i : i + 1], mask[:1], w, label, x[i : i + 1])
        for h, x, i, w, label in steps
    ]


_READ_OUTPUTS = ("outputs", "attention", "scores", "query")


def _variable_step(
    memory, hidden, mask, write, label, hashes=None, readout=None
):
    """One step of `_sequence` on the layer's variables; the read outputs
    by name, or `None` for a write."""
    if write:
        memory.write(hidden, mask, labels=[label], hash_indices=hashes)
        return None
    outputs = memory(
        hidden,
        padding_mask=mask,
        hash_indices=hashes,
        return_attention=True,
        return_label_scores=True,
        return_sentence_query=True,
    )
    named = dict(zip(_READ_OUTPUTS, outputs))
    if readout is not None:
        named["logits"] = readout(named["query"], named["scores"])
    return {key: _numpy(value) for key, value in named.items()}


@pytest.mark.parametrize("lexical_size", [0, LEXICAL])
def test_explicit_state_matches_the_variables(lexical_size):
    memory = _memory(lexical_size=lexical_size)
    state = memory.get_state()
    for hidden, mask, write, label, hashes in _sequence():
        hashes = hashes if lexical_size else None
        expected = _variable_step(memory, hidden, mask, write, label, hashes)
        *outputs, state = memory(
            hidden,
            padding_mask=mask,
            hash_indices=hashes,
            return_attention=True,
            return_label_scores=True,
            return_sentence_query=True,
            state=state,
            write_mask=np.array([write], "float32"),
            write_labels=np.array([label], "int32"),
        )
        state = {name: _numpy(value) for name, value in state.items()}
        _assert_states_equal(state, memory.get_state())
        if expected is not None:
            for key, value in zip(_READ_OUTPUTS, outputs):
                np.testing.assert_allclose(
                    _numpy(value), expected[key], rtol=1e-5, atol=1e-6
                )
    assert memory.get_state()["episodic_labels"].tolist() == [1, 4, 3]


def test_label_scores_and_readout(tmp_path):
    memory = _memory(num_labels=5)
    hidden, mask = _texts(3, seed=13)
    _, scores, query = memory(
        hidden,
        padding_mask=mask,
        return_label_scores=True,
        return_sentence_query=True,
    )
    assert np.all(_numpy(scores) == ABSENT_LABEL_SCORE)
    np.testing.assert_allclose(
        np.linalg.norm(_numpy(query), axis=1), 1.0, rtol=1e-5
    )
    readout = EpisodicLabelReadout(5, scale=16.0, margin=0.2)
    # Trained label 0 points at text 1, label 1 at text 2.
    readout.build(tuple(query.shape), tuple(scores.shape))
    weights = np.zeros((5, KEY), "float32")
    weights[0], weights[1] = _numpy(query)[1], _numpy(query)[2]
    weights[2:] = np.random.default_rng(0).normal(size=(3, KEY))
    readout.label_weights.assign(weights)
    # With no labelled slot the logits are exactly the cosine classifier's.
    unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    plain = _numpy(readout(query, scores))
    np.testing.assert_allclose(plain, 16.0 * _numpy(query) @ unit.T, atol=1e-4)

    memory.write(hidden[:1], mask[:1], labels=[3])
    _, scores, query = memory(
        hidden,
        padding_mask=mask,
        return_label_scores=True,
        return_sentence_query=True,
    )
    scores = _numpy(scores)
    np.testing.assert_allclose(scores[0, 3], 1.0, rtol=1e-5)
    assert np.all(np.delete(scores, 3, axis=1) == ABSENT_LABEL_SCORE)
    logits = _numpy(readout(query, scores))
    np.testing.assert_allclose(logits[0, 3], 16.0 * 0.8, rtol=1e-5)
    # The written text takes its label; the others keep their trained one.
    assert logits.argmax(axis=1).tolist() == [3, 0, 1]
    check_layer(
        EpisodicLabelReadout,
        {"num_labels": 5},
        {"sentence_query": _numpy(query), "label_scores": scores},
        expected_output_shape=(3, 5),
        expected_num_trainable_weights=1,
        tmp_path=tmp_path,
    )


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_label_scores_with_the_lexical_part(weight):
    memory = _memory(
        num_labels=5, lexical_size=LEXICAL, label_lexical_weight=weight
    )
    assert memory.get_config()["label_lexical_weight"] == weight
    # Two written texts of label 3 share words with the first query.
    written = [[1, 2, 3], [1, 4, 5], [6, 7, 8]]
    hashes, mask = _hashed_texts(written)
    hidden, _ = _texts(3, seed=5)
    memory.write(hidden, mask, labels=[3, 3, 1], hash_indices=hashes)
    queries = [[1, 2, 9], [10, 11, 12]]
    query_hashes, query_mask = _hashed_texts(queries)
    query_hidden, _ = _texts(2, seed=6)
    _, scores, query = memory(
        query_hidden,
        padding_mask=query_mask,
        hash_indices=query_hashes,
        return_label_scores=True,
        return_sentence_query=True,
    )
    # The queries' lexical keys, as a write stores them.
    memory.reset()
    memory.write(query_hidden, query_mask, hash_indices=query_hashes)
    query_lexical = memory.get_state()["episodic_keys"][:2, KEY:]
    memory.reset()
    memory.write(hidden, mask, labels=[3, 3, 1], hash_indices=hashes)
    keys = memory.get_state()["episodic_keys"]

    # The definition: learned part, then sqrt(w) times the lexical part,
    # normalized; a label's prototype is its slots' normalized mean key.
    root = np.sqrt(weight)
    slot_keys = _unit(
        np.concatenate([_unit(keys[:, :KEY]), root * keys[:, KEY:]], axis=1)
    )
    text_keys = _unit(
        np.concatenate([_numpy(query), root * query_lexical], axis=1)
    )
    expected = np.full((2, 5), ABSENT_LABEL_SCORE, "float32")
    expected[:, 3] = text_keys @ _unit(slot_keys[0] + slot_keys[1])
    expected[:, 1] = text_keys @ slot_keys[2]
    np.testing.assert_allclose(_numpy(scores), expected, atol=1e-5)
    # The query that shares two words of label 3's texts gains on it.
    lexical_gain = query_lexical[0] @ _unit(keys[0, KEY:] + keys[1, KEY:])
    assert lexical_gain > 0.3


class _RunningSum(keras.layers.Layer):
    """Adds its inputs into a two-element state and returns the total."""

    def build(self, input_shape):
        self.total = self.add_weight(
            name="total", shape=(2,), initializer="zeros", trainable=False
        )

    def call(self, inputs, state=None):
        if state is None:  # Variable form.
            total = self.total + keras.ops.sum(inputs, axis=0)
            self.total.assign(total)
            return total
        return state + keras.ops.sum(inputs, axis=0)  # Explicit form.


def test_running_sum_state_updated_in_call():
    """Public-report case: invoked twice with ones, it reads [1, 1] then
    [2, 2], called directly and through `predict`."""
    inputs = keras.Input((2,), batch_size=1)
    layer = _RunningSum()
    model = keras.Model(inputs, layer(inputs))
    ones = np.ones((1, 2), "float32")
    assert _numpy(model(ones)).tolist() == [1, 1]
    assert _numpy(model(ones)).tolist() == [2, 2]
    layer.total.assign(np.zeros(2, "float32"))
    assert model.predict(ones, verbose=0).tolist() == [1, 1]
    assert model.predict(ones, verbose=0).tolist() == [2, 2]


# TFLite (TensorFlow backend only).


@pytest.fixture
def tensorflow_backend():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs KERAS_BACKEND=tensorflow")


def _convert(model):
    """Converts a Keras model with built-in operators only; weights frozen."""
    import tensorflow as tf

    specs = {
        t.name: tf.TensorSpec(t.shape, t.dtype, name=t.name)
        for t in model.inputs
    }
    serve = tf.function(lambda inputs: model(inputs), input_signature=[specs])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


class _Lite:
    """A TFLite interpreter fed by input name; outputs in flattening order
    of the model's (sorted) output dict."""

    def __init__(self, tflite_bytes, output_names):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=tflite_bytes)
        self.interpreter.allocate_tensors()
        self.output_names = sorted(output_names)

    def op_names(self):
        return sorted(
            {op["op_name"] for op in self.interpreter._get_ops_details()}
        )

    def __call__(self, **inputs):
        for detail in self.interpreter.get_input_details():
            value = np.asarray(inputs[detail["name"]])
            self.interpreter.set_tensor(
                detail["index"], value.astype(detail["dtype"])
            )
        self.interpreter.invoke()
        details = sorted(
            self.interpreter.get_output_details(),
            key=lambda d: (
                int(d["name"].rpartition("_")[2] or 0)
                if "_" in d["name"]
                else 0
            ),
        )
        return {
            name: self.interpreter.get_tensor(detail["index"])
            for name, detail in zip(self.output_names, details)
        }


def _explicit_state_model(memory, readout):
    shapes = memory_state.memory_state_shapes(SLOTS, KEY, HIDDEN)
    inputs = {
        "hidden": keras.Input((SEQUENCE, HIDDEN), batch_size=1, name="hidden"),
        "mask": keras.Input((SEQUENCE,), batch_size=1, name="mask"),
        "write_mask": keras.Input((), batch_size=1, name="write_mask"),
        "write_labels": keras.Input(
            (), batch_size=1, dtype="int32", name="write_labels"
        ),
    }
    for name in memory_state.STATE_FIELDS:
        dtype = "float32" if name in memory_state.FLOAT_FIELDS else "int32"
        inputs[name] = keras.Input(
            batch_shape=shapes[name], dtype=dtype, name=name
        )
    state = {name: inputs[name] for name in memory_state.STATE_FIELDS}
    *outputs, new_state = memory(
        inputs["hidden"],
        padding_mask=inputs["mask"],
        return_attention=True,
        return_label_scores=True,
        return_sentence_query=True,
        state=state,
        write_mask=inputs["write_mask"],
        write_labels=inputs["write_labels"],
    )
    named = dict(zip(_READ_OUTPUTS, outputs))
    named["logits"] = readout(named["query"], named["scores"])
    named.update({f"new_{k}": v for k, v in new_state.items()})
    return keras.Model(inputs, named), sorted(named)


def test_tflite_explicit_state_builtins_and_parity(tensorflow_backend):
    """The exported memory takes and returns its state, converts with
    built-in operators only (no scatter), and matches the variable form
    after a sequence of writes and reads."""
    memory = _memory()
    readout = EpisodicLabelReadout(5, name="readout")
    model, output_names = _explicit_state_model(memory, readout)
    lite = _Lite(_convert(model), output_names)
    names = lite.op_names()
    assert "CUMSUM" in names and "ONE_HOT" in names, names
    assert not [n for n in names if "SCATTER" in n.upper()], names
    assert not [n for n in names if n.upper().startswith("FLEX")], names

    state = memory.get_state()
    for hidden, mask, write, label, _ in _sequence():
        expected = _variable_step(
            memory, hidden, mask, write, label, readout=readout
        )
        result = lite(
            hidden=hidden,
            mask=mask,
            write_mask=np.array([write]),
            write_labels=np.array([label]),
            **state,
        )
        state = {
            name: result[f"new_{name}"] for name in memory_state.STATE_FIELDS
        }
        _assert_states_equal(state, memory.get_state())
        if expected is not None:
            for key, value in expected.items():
                np.testing.assert_allclose(
                    result[key], value, rtol=1e-4, atol=1e-4, err_msg=key
                )


def test_a_scatter_write_into_a_variable_needs_flex(tensorflow_backend):
    """Public-report case: a memory write done as a scatter update needs
    TF Select (Flex) ops. With TF 2.21 the tensor form
    (`TensorScatterUpdate`) lowers to the built-in SCATTER_ND, but a scatter
    into a variable (`ResourceScatterNdUpdate`) is still refused by the
    built-ins-only converter; the one-hot form above passes."""
    import tensorflow as tf

    module = tf.Module()
    module.keys = tf.Variable(np.zeros((SLOTS, KEY), "float32"))

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, KEY), tf.float32),
            tf.TensorSpec((1, 1), tf.int32),
        ]
    )
    def write(key, slot):
        module.keys.scatter_nd_update(slot, key)
        return module.keys.read_value()

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [write.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_enable_resource_variables = True
    with pytest.raises(Exception, match="ResourceScatterNdUpdate"):
        converter.convert()


def test_tflite_running_sum_with_explicit_state(tensorflow_backend):
    """Public-report case in TFLite: the state is an input and an output;
    fed back, two invocations with ones read [1, 1] then [2, 2]."""
    inputs = keras.Input((2,), batch_size=1, name="inputs")
    state = keras.Input(batch_shape=(2,), name="state")
    total = _RunningSum()(inputs, state=state)
    model = keras.Model({"inputs": inputs, "state": state}, {"total": total})
    lite = _Lite(_convert(model), ["total"])
    ones = np.ones((1, 2), "float32")
    first = lite(inputs=ones, state=np.zeros(2, "float32"))["total"]
    second = lite(inputs=ones, state=first)["total"]
    assert first.tolist() == [1, 1] and second.tolist() == [2, 2]
    keras_total = model({"inputs": ones, "state": first})["total"]
    assert _numpy(keras_total).tolist() == [2, 2]
