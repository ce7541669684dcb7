import keras
import numpy as np
import pytest
from harness import check_layer

from neurolite_keras.layers import HashProjection
from neurolite_keras.layers import MaskedMaxPooling
from neurolite_keras.layers import MaskedMeanPooling
from neurolite_keras.layers import MlpMixerBlock
from neurolite_keras.layers import TokenDropout


def test_hash_projection_is_a_gather_sum(tmp_path):
    indices = np.random.default_rng(0).integers(0, 50, (2, 6, 4))
    output = check_layer(
        HashProjection,
        {"num_buckets": 50, "output_dim": 8, "combiner": "sum"},
        indices.astype("int32"),
        expected_output_shape=(2, 6, 8),
        expected_num_trainable_weights=1,
        run_training_step=False,
        tmp_path=tmp_path,
    )
    layer = HashProjection(50, 8, combiner="sum")
    result = keras.ops.convert_to_numpy(layer(indices))
    table = keras.ops.convert_to_numpy(layer.embeddings)
    counts = np.zeros((2, 6, 50))
    for b, s, k in np.ndindex(2, 6, 4):
        counts[b, s, indices[b, s, k]] += 1
    np.testing.assert_allclose(result, counts @ table, rtol=1e-5, atol=1e-6)
    assert output.shape == (2, 6, 8)


def test_hash_projection_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_buckets=0"):
        HashProjection(0, 8)
    with pytest.raises(ValueError, match="combiner='max'"):
        HashProjection(8, 8, combiner="max")


def test_mlp_mixer_block(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 8, 4)).astype("float32")
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3], "int32")
    check_layer(
        MlpMixerBlock,
        {
            "sequence_length": 8,
            "token_mixing_size": 6,
            "channel_mixing_size": 12,
        },
        {"inputs": x, "padding_mask": mask},
        expected_output_shape=(2, 8, 4),
        expected_num_trainable_weights=12,
        tmp_path=tmp_path,
    )


def test_mlp_mixer_ignores_padding_content():
    block = MlpMixerBlock(8, token_mixing_size=6, channel_mixing_size=12)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 8, 4)).astype("float32")
    mask = np.array([[1] * 5 + [0] * 3], "int32")
    noisy = x.copy()
    noisy[:, 5:] = rng.normal(size=(1, 3, 4)) * 100
    a = keras.ops.convert_to_numpy(block(x, padding_mask=mask))
    b = keras.ops.convert_to_numpy(block(noisy, padding_mask=mask))
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-5)
    # Without the mask the noise reaches real tokens: the check can fail.
    c = keras.ops.convert_to_numpy(block(noisy))
    assert not np.allclose(a[:, :5], c[:, :5], atol=1e-3)


def test_mlp_mixer_rejects_other_lengths():
    block = MlpMixerBlock(8, token_mixing_size=6, channel_mixing_size=12)
    block(np.zeros((1, 8, 4), "float32"))
    with pytest.raises(ValueError, match="Received a sequence of length 9"):
        block(np.zeros((1, 9, 4), "float32"))


def test_masked_mean_pooling_handles_empty_sequences():
    x = np.ones((2, 3, 2), "float32")
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    pooled = keras.ops.convert_to_numpy(
        MaskedMeanPooling()(x, padding_mask=mask)
    )
    np.testing.assert_allclose(pooled, [[1, 1], [0, 0]])


def test_masked_max_pooling_takes_the_max_of_real_tokens(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 6, 4)).astype("float32")
    # Real tokens anywhere (word dropout can drop the first one); padding
    # holding values far above the real ones; one empty sequence.
    mask = np.array(
        [[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], "int32"
    )
    x[mask == 0] = 50.0
    pooled = check_layer(
        MaskedMaxPooling,
        {},
        {"inputs": x, "padding_mask": mask},
        expected_output_shape=(3, 4),
        expected_num_trainable_weights=0,
        run_training_step=False,
        tmp_path=tmp_path,
    )
    expected = [x[i][mask[i] == 1].max(axis=0) for i in range(2)]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pooled)[:2], expected)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pooled)[2], 0.0)


def test_hash_projection_index_dropout_only_in_training():
    indices = np.random.default_rng(2).integers(0, 50, (4, 6, 8))
    layer = HashProjection(50, 3, dropout_rate=0.5, seed=3)
    layer.build(indices.shape)
    layer.embeddings.assign(np.ones((50, 3), "float32"))
    # Inference: every index counts. Training: the mean over the kept rows
    # of an all-ones table is 1, or 0 where a token lost every index.
    inference = keras.ops.convert_to_numpy(layer(indices))
    np.testing.assert_allclose(inference, 1.0)
    trained = keras.ops.convert_to_numpy(layer(indices, training=True))
    assert set(np.unique(trained.round(5))) <= {0.0, 1.0}
    summed = HashProjection(50, 3, combiner="sum", dropout_rate=0.5, seed=3)
    summed.build(indices.shape)
    summed.embeddings.assign(np.ones((50, 3), "float32"))
    out = keras.ops.convert_to_numpy(summed(indices, training=True))
    assert set(np.unique(out.round(4))) <= {0.0, 8.0}
    # On a random table some rows were dropped: training output differs.
    layer.embeddings.assign(np.random.default_rng(4).normal(size=(50, 3)))
    a = keras.ops.convert_to_numpy(layer(indices))
    b = keras.ops.convert_to_numpy(layer(indices, training=True))
    assert not np.allclose(a, b)
    assert HashProjection.from_config(layer.get_config()).dropout_rate == 0.5
    with pytest.raises(ValueError, match="dropout_rate=1"):
        HashProjection(50, 3, dropout_rate=1)


def test_hash_projection_leaves_out_empty_slots(tmp_path):
    rng = np.random.default_rng(5)
    indices = rng.integers(0, 50, (3, 5, 6)).astype("int32")
    indices[..., 4:] = -1
    indices[0, 0, 1:] = -1
    check_layer(
        HashProjection,
        {"num_buckets": 50, "output_dim": 4, "ignore_negative": True},
        indices,
        expected_output_shape=(3, 5, 4),
        expected_num_trainable_weights=1,
        run_training_step=False,
        tmp_path=tmp_path,
    )
    for combiner in ("mean", "sum"):
        layer = HashProjection(
            50, 4, combiner=combiner, ignore_negative=True, dropout_rate=0.5
        )
        result = keras.ops.convert_to_numpy(layer(indices))
        table = keras.ops.convert_to_numpy(layer.embeddings)
        expected = np.zeros((3, 5, 4))
        for b, s in np.ndindex(3, 5):
            present = indices[b, s][indices[b, s] >= 0]
            rows = table[present]
            expected[b, s] = rows.mean(0) if combiner == "mean" else rows.sum(0)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
        # In training, the dropout draws from the slots present only: an
        # all-ones table gives a mean of 1 (or 0 where all were dropped).
        layer.embeddings.assign(np.ones((50, 4), "float32"))
        trained = keras.ops.convert_to_numpy(layer(indices, training=True))
        if combiner == "mean":
            assert set(np.unique(trained.round(5))) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="ignore_negative=1"):
        HashProjection(50, 4, ignore_negative=1)


def test_token_dropout_drops_real_tokens_in_training_only():
    mask = np.zeros((100, 100), "int32")
    mask[:, :60] = 1
    layer = TokenDropout(0.3, seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(mask)), mask)
    dropped = keras.ops.convert_to_numpy(layer(mask, training=True))
    assert dropped.dtype == np.int32
    assert not dropped[:, 60:].any()  # Padding never becomes a token.
    assert 0.27 < 1 - dropped[:, :60].mean() < 0.33
    again = TokenDropout.from_config(layer.get_config())
    assert (again.rate, again.seed) == (0.3, 0)
    with pytest.raises(ValueError, match="rate=-0.1"):
        TokenDropout(-0.1)
