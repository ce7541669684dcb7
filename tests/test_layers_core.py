import keras
import numpy as np
import pytest
from harness import check_layer

from neurolite_keras.layers import (
    HashProjection,
    MaskedMeanPooling,
    MlpMixerBlock,
)


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
    result = np.array(layer(indices))
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
    a = np.array(block(x, padding_mask=mask))
    b = np.array(block(noisy, padding_mask=mask))
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-5)
    assert np.all(a[:, 5:] == 0)


def test_mlp_mixer_rejects_other_lengths():
    block = MlpMixerBlock(8, token_mixing_size=6, channel_mixing_size=12)
    block(np.zeros((1, 8, 4), "float32"))
    with pytest.raises(ValueError, match="Received a sequence of length 9"):
        block(np.zeros((1, 9, 4), "float32"))


def test_masked_mean_pooling_handles_empty_sequences():
    x = np.ones((2, 3, 2), "float32")
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    pooled = np.array(MaskedMeanPooling()(x, padding_mask=mask))
    np.testing.assert_allclose(pooled, [[1, 1], [0, 0]])
