"""HyperMixer and FNet token mixers: shapes, serialization, masking, the
Fourier forms against numpy, and TFLite conversion with built-ins only."""

import weakref

import keras
import numpy as np
import pytest
from harness import check_layer
from keras import ops

from neurolite_keras.layers import hypermixer
from neurolite_keras.layers.fnet import FNetBlock
from neurolite_keras.layers.hypermixer import HyperMixerBlock


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


_JITTED = weakref.WeakKeyDictionary()


def _apply(block, x, mask=None):
    """`block(x, padding_mask=mask)` as numpy. On JAX the call goes through
    one `jax.jit` per block: eager JAX compiles every op for every new
    shape, several times slower than compiling the block once."""
    if keras.backend.backend() != "jax":
        return _numpy(block(x, padding_mask=mask))
    import jax

    if not block.built:
        block.build(x.shape)
    if block not in _JITTED:
        _JITTED[block] = jax.jit(
            lambda trainable, x, mask: block.stateless_call(
                trainable, [], x, padding_mask=mask
            )[0]
        )
    trainable = [v.value for v in block.trainable_variables]
    return _numpy(_JITTED[block](trainable, x, mask))


def _padded_batch(seed=0, length=8, hidden=4, num_real=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, length, hidden)).astype("float32")
    mask = np.array([[1] * length, [1] * num_real + [0] * (length - num_real)])
    return x, mask.astype("int32")


# HyperMixer.


def test_hypermixer_block(tmp_path):
    x, mask = _padded_batch()
    check_layer(
        HyperMixerBlock,
        {"token_mixing_size": 6, "channel_mixing_size": 12},
        {"inputs": x, "padding_mask": mask},
        expected_output_shape=(2, 8, 4),
        expected_num_trainable_weights=18,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


def test_hypermixer_ignores_padding_content():
    block = HyperMixerBlock(token_mixing_size=6, channel_mixing_size=12)
    x, mask = _padded_batch(seed=1)
    noisy = x.copy()
    noisy[1, 5:] = np.random.default_rng(2).normal(size=(3, 4)) * 100
    a = _apply(block, x, mask)
    b = _apply(block, noisy, mask)
    np.testing.assert_allclose(a[1, :5], b[1, :5], rtol=1e-5, atol=1e-5)
    # Without the mask the noise does reach real tokens: the check can fail.
    assert not np.allclose(a[1, :5], _apply(block, noisy)[1, :5])


def test_hypermixer_any_length_and_padding_amount():
    """One block, several lengths; trailing padding changes nothing."""
    block = HyperMixerBlock(token_mixing_size=6, channel_mixing_size=12)
    x, _ = _padded_batch(seed=3)
    alone = _apply(block, x[:, :5])
    mask = np.array([[1] * 5 + [0] * 3] * 2, "int32")
    padded = _apply(block, x, mask)
    assert padded.shape == (2, 8, 4)
    np.testing.assert_allclose(padded[:, :5], alone, rtol=1e-5, atol=1e-5)
    assert len(block.weights) == 18  # No weight was added for new lengths.


def test_hypermixer_mixes_tokens():
    """A real token's output depends on the other real tokens."""
    block = HyperMixerBlock(token_mixing_size=6, channel_mixing_size=12)
    x, _ = _padded_batch(seed=4)
    changed = x.copy()
    changed[0, 5, 0] += 1.0
    a = _apply(block, x)
    b = _apply(block, changed)
    assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-4
    np.testing.assert_array_equal(a[1], b[1])


def test_hypermixer_token_mixing_starts_small():
    """At initialisation the token-mixing branch adds about a tenth of the
    residual stream's scale, at any length. With the mixing norm's gamma at
    ones it added as much again (a std ratio of 1.0), and a tiny HyperMixer
    classifier stayed at chance on SIB-200 for three epochs."""
    hidden = 32
    block = HyperMixerBlock(token_mixing_size=16, channel_mixing_size=64)
    block.build((2, None, hidden))
    # Silence channel mixing: the block's output minus its input is then
    # the token-mixing branch alone.
    kernel = block.channel_dense_out.kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    for length in (8, 64):
        x, mask = _padded_batch(
            seed=6, length=length, hidden=hidden, num_real=length // 2
        )
        branch = _apply(block, x, mask) - x
        real = mask.astype(bool)
        ratio = branch[real].std() / x[real].std()
        assert 0.05 < ratio < 0.25, (length, ratio)


def test_hypermixer_unknown_length_in_a_model():
    inputs = keras.Input((None, 4))
    block = HyperMixerBlock(token_mixing_size=6, channel_mixing_size=12)
    model = keras.Model(inputs, block(inputs))
    x, _ = _padded_batch(seed=5)
    for length in (5, 8):
        np.testing.assert_allclose(
            model.predict(x[:, :length], verbose=0),
            _apply(block, x[:, :length]),
            rtol=1e-5,
            atol=1e-5,
        )


def test_hypermixer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="token_mixing_size=0"):
        HyperMixerBlock(0, 8)
    with pytest.raises(ValueError, match="channel_mixing_size=-1"):
        HyperMixerBlock(8, -1)
    with pytest.raises(ValueError, match="dropout_rate=1.5"):
        HyperMixerBlock(8, 8, dropout_rate=1.5)
    with pytest.raises(ValueError, match="layer_norm_epsilon=0"):
        HyperMixerBlock(8, 8, layer_norm_epsilon=0)
    with pytest.raises(ValueError, match="Received shape"):
        HyperMixerBlock(8, 8)(np.zeros((2, 4), "float32"))


def test_sinusoidal_positions_static_and_in_graph():
    features = _numpy(hypermixer.sinusoidal_positions(6, 5))
    assert features.shape == (6, 5)
    np.testing.assert_allclose(features[:, 0], np.sin(np.arange(6)), atol=1e-6)
    np.testing.assert_allclose(features[0, 3:], 1.0, atol=1e-6)
    length = ops.convert_to_tensor(6, "int32")
    in_graph = _numpy(hypermixer.sinusoidal_positions(length, 5))
    np.testing.assert_allclose(in_graph, features, atol=1e-5)


# FNet.


@pytest.mark.parametrize("implementation", ["dft", "fft"])
def test_fnet_block(tmp_path, implementation):
    x, mask = _padded_batch()
    output = check_layer(
        FNetBlock,
        {"channel_mixing_size": 12, "implementation": implementation},
        {"inputs": x, "padding_mask": mask},
        expected_output_shape=(2, 8, 4),
        expected_num_trainable_weights=8,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )
    assert np.all(np.isfinite(output))


@pytest.mark.parametrize("shape", [(2, 8, 4), (1, 7, 5)])
def test_fnet_fourier_forms_match_numpy(shape):
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    expected = np.fft.fft2(x.astype("float64")).real
    block = FNetBlock(channel_mixing_size=4)
    block.build(shape)
    tensor = ops.convert_to_tensor(x)
    forms = {
        "dft static": block._fourier_dft(tensor, shape[1]),
        "dft in graph": block._fourier_dft(
            tensor, ops.convert_to_tensor(shape[1], "int32")
        ),
        "fft": block._fourier_fft(tensor),
    }
    for name, got in forms.items():
        np.testing.assert_allclose(
            _numpy(got), expected, rtol=1e-4, atol=1e-4, err_msg=name
        )


def _layer_norm(x, gamma, beta, epsilon=1e-5):
    mean = x.mean(-1, keepdims=True)
    variance = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _gelu(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def test_fnet_block_matches_a_numpy_reference():
    """The whole block: post-LN Fourier mixing, then post-LN MLP."""
    block = FNetBlock(channel_mixing_size=12, implementation="dft")
    x, mask = _padded_batch(seed=6)
    out = _apply(block, x, mask)
    w = {v.path.split("/", 1)[1]: _numpy(v) for v in block.weights}
    m = mask[..., None].astype("float64")
    y = x * m
    y = _layer_norm(
        y + np.fft.fft2(y).real, w["mixing_norm/gamma"], w["mixing_norm/beta"]
    )
    h = _gelu(y @ w["channel_dense_in/kernel"] + w["channel_dense_in/bias"])
    h = h @ w["channel_dense_out/kernel"] + w["channel_dense_out/bias"]
    y = _layer_norm(y + h, w["channel_norm/gamma"], w["channel_norm/beta"])
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)


def test_fnet_masking_is_as_documented():
    block = FNetBlock(channel_mixing_size=12)
    x, mask = _padded_batch(seed=7)
    noisy = x.copy()
    noisy[1, 5:] = 100.0
    a = _apply(block, x, mask)
    b = _apply(block, noisy, mask)
    np.testing.assert_allclose(a[1, :5], b[1, :5], rtol=1e-5, atol=1e-5)
    # Documented: the transform spans the padded length, so the amount of
    # padding changes real tokens' outputs.
    longer = np.concatenate([x, np.zeros((2, 4, 4), "float32")], axis=1)
    longer_mask = np.concatenate([mask, np.zeros((2, 4), "int32")], axis=1)
    c = _apply(block, longer, longer_mask)
    assert not np.allclose(a[1, :5], c[1, :5], atol=1e-3)


def test_fnet_dft_and_fft_agree_in_a_model_of_unknown_length():
    inputs = keras.Input((None, 4))
    dft = FNetBlock(channel_mixing_size=12, implementation="dft")
    model = keras.Model(inputs, dft(inputs))
    fft = FNetBlock(channel_mixing_size=12, implementation="fft")
    fft.build((None, None, 4))
    fft.set_weights(dft.get_weights())
    x, _ = _padded_batch(seed=9)
    for length in (5, 8):
        np.testing.assert_allclose(
            model.predict(x[:, :length], verbose=0),
            _apply(fft, x[:, :length]),
            rtol=1e-4,
            atol=1e-4,
        )


def test_fnet_auto_implementation():
    block = FNetBlock(channel_mixing_size=4)
    short = "dft" if keras.backend.backend() == "tensorflow" else "fft"
    assert block.implementation_for(64) == short
    assert block.implementation_for(FNetBlock.AUTO_DFT_MAX_LENGTH) == short
    assert block.implementation_for(513) == "fft"
    assert block.implementation_for(None) == "fft"
    fixed = FNetBlock(channel_mixing_size=4, implementation="dft")
    assert fixed.implementation_for(4096) == "dft"


def test_fnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="implementation='matmul'"):
        FNetBlock(8, implementation="matmul")
    with pytest.raises(ValueError, match="channel_mixing_size=0"):
        FNetBlock(0)
    with pytest.raises(ValueError, match="dropout_rate=-0.1"):
        FNetBlock(8, dropout_rate=-0.1)
    with pytest.raises(ValueError, match="layer_norm_epsilon='small'"):
        FNetBlock(8, layer_norm_epsilon="small")
    with pytest.raises(ValueError, match="Received shape"):
        FNetBlock(8)(np.zeros((2, 4), "float32"))


# TFLite conversion (TensorFlow backend only).


def tflite_operator_names(tflite_bytes):
    """Sorted names of the operators a TFLite flatbuffer uses.

    Built-in operators come back by their `BuiltinOperator` name
    (`"FULLY_CONNECTED"`); custom and Flex operators by their custom code
    (`"FlexFFT2D"`). Reads the flatbuffer directly, so it works for models
    an interpreter without the Flex delegate could not load.
    """
    from ai_edge_litert import schema_py_generated as schema

    names = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    used = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                used.add(code.CustomCode().decode())
            else:
                used.add(names[builtin])
    return sorted(used)


def _non_builtin(names):
    from ai_edge_litert import schema_py_generated as schema

    builtin = {
        name
        for name in vars(schema.BuiltinOperator)
        if not name.startswith("_") and name != "CUSTOM"
    }
    return [name for name in names if name not in builtin]


def _tiny_model(block, length=16, hidden=8):
    tokens = keras.Input((length, hidden), batch_size=1, name="tokens")
    mask = keras.Input((length,), batch_size=1, name="mask")
    return keras.Model([tokens, mask], block(tokens, padding_mask=mask))


def _tflite_bytes(model):
    """Converts `model` with TFLite built-in operators only."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _run_tflite(tflite_bytes, tokens, mask):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        value = tokens if "tokens" in detail["name"] else mask
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    interpreter.invoke()
    output = interpreter.get_output_details()[0]["index"]
    return interpreter.get_tensor(output)


def _tflite_inputs(length=16, hidden=8):
    rng = np.random.default_rng(8)
    tokens = rng.normal(size=(1, length, hidden)).astype("float32")
    mask = (np.arange(length) < length - 3)[None].astype("float32")
    return tokens, mask


@pytest.fixture
def tensorflow_backend():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion needs KERAS_BACKEND=tensorflow")


@pytest.mark.parametrize(
    "make_block",
    [
        lambda: HyperMixerBlock(token_mixing_size=6, channel_mixing_size=12),
        lambda: FNetBlock(channel_mixing_size=12),  # auto: dft at length 16
    ],
    ids=["hypermixer", "fnet-auto"],
)
def test_tflite_conversion_uses_builtins_only(tensorflow_backend, make_block):
    model = _tiny_model(make_block())
    tflite = _tflite_bytes(model)
    names = tflite_operator_names(tflite)
    assert "FULLY_CONNECTED" in names or "BATCH_MATMUL" in names, names
    assert _non_builtin(names) == [], names
    tokens, mask = _tflite_inputs()
    expected = _numpy(model([tokens, mask]))
    np.testing.assert_allclose(
        _run_tflite(tflite, tokens, mask), expected, rtol=1e-4, atol=1e-4
    )


def _real_fft2_from_rfft(x):
    """Re(FFT2(x)) over the last two axes, from real FFTs (`ops.rfft`) only.

    With `X F_h = A - iB` (A, B real), `Re(F_s X F_h) = Re(F_s A) +
    Im(F_s B)`; each FFT of a real signal is an `rfft` whose missing half
    follows from conjugate symmetry.
    """

    def full_spectrum(signal):  # FFT of a real signal along the last axis.
        size = signal.shape[-1]
        real, imag = ops.rfft(signal)
        tail = slice(1, (size + 1) // 2)
        real = ops.concatenate([real, ops.flip(real[..., tail], -1)], -1)
        imag = ops.concatenate([imag, -ops.flip(imag[..., tail], -1)], -1)
        return real, imag

    a, minus_b = full_spectrum(x)  # along hidden: A and -B.
    a_real, _ = full_spectrum(ops.transpose(a, (0, 2, 1)))
    _, b_imag = full_spectrum(ops.transpose(-minus_b, (0, 2, 1)))
    return ops.transpose(a_real + b_imag, (0, 2, 1))


class _RfftFNetBlock(FNetBlock):
    """An FNet block whose FFT form is built on `ops.rfft`."""

    def _fourier_fft(self, x):
        return _real_fft2_from_rfft(x)


@pytest.mark.parametrize("fft_op", ["fft2", "rfft"])
def test_fft_based_fnet_converts_or_names_the_op(tensorflow_backend, fft_op):
    """The public-report case: an FNet block on `ops.fft2` / `ops.rfft`,
    converted with built-ins only, converts or fails naming the op; the
    built-in (DFT) form converts and matches the FFT form."""
    cls = FNetBlock if fft_op == "fft2" else _RfftFNetBlock
    fft_block = cls(channel_mixing_size=12, implementation="fft", name=fft_op)
    fft_model = _tiny_model(fft_block)
    dft_model = _tiny_model(
        FNetBlock(channel_mixing_size=12, implementation="dft")
    )
    dft_model.set_weights(fft_model.get_weights())
    tokens, mask = _tflite_inputs()
    keras_fft = _numpy(fft_model([tokens, mask]))
    np.testing.assert_allclose(
        _numpy(dft_model([tokens, mask])), keras_fft, rtol=1e-4, atol=1e-4
    )

    try:
        fft_tflite = _tflite_bytes(fft_model)
    except Exception as error:  # The converter's error must name the op.
        assert "FFT" in str(error), str(error)[-2000:]
    else:
        names = tflite_operator_names(fft_tflite)
        assert _non_builtin(names) == [], names
        np.testing.assert_allclose(
            _run_tflite(fft_tflite, tokens, mask),
            keras_fft,
            rtol=1e-4,
            atol=1e-4,
        )

    dft_tflite = _tflite_bytes(dft_model)
    assert _non_builtin(tflite_operator_names(dft_tflite)) == []
    np.testing.assert_allclose(
        _run_tflite(dft_tflite, tokens, mask), keras_fft, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("kind", ["mlp", "hypermixer", "fnet"])
def test_long_sequences_give_the_same_output_in_chunks(monkeypatch, kind):
    """Past `CHUNK_POSITIONS` tokens the channel MLP runs a block of
    positions at a time; the output is the whole-sequence computation's."""
    from neurolite_keras.layers import fnet
    from neurolite_keras.layers import mlp_mixer
    from neurolite_keras.layers.chunking import CHUNK_POSITIONS
    from neurolite_keras.layers.chunking import per_position_in_chunks

    length = 2 * CHUNK_POSITIONS + 76
    module, block = {
        "mlp": (mlp_mixer, mlp_mixer.MlpMixerBlock(length, 8, 16)),
        "hypermixer": (hypermixer, HyperMixerBlock(8, 16)),
        "fnet": (fnet, FNetBlock(16, implementation="fft")),
    }[kind]
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, length, 8)).astype("float32")
    mask = np.ones((2, length), "int32")
    mask[1, 700:] = 0
    chunked = _numpy(block(x, padding_mask=mask))
    calls = []

    def whole(function, inputs):
        calls.append(inputs.shape)
        return function(inputs)

    monkeypatch.setattr(module, "per_position_in_chunks", whole)
    np.testing.assert_allclose(
        _numpy(block(x, padding_mask=mask)), chunked, rtol=1e-5, atol=1e-5
    )
    assert calls  # The block went through the patched function.
    # The helper itself: blocks of `chunk` positions, the last shorter.
    seen = []
    out = per_position_in_chunks(
        lambda t: seen.append(t.shape[1]) or t * 2.0, x, chunk=500
    )
    assert seen == [500, 500, 100]
    np.testing.assert_allclose(_numpy(out), x * 2.0)
