import numpy as np
import pytest

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification


def test_keyword_construction_from_the_original_interface():
    config = NeuroLiteConfig(
        hidden_size=256,
        num_mixer_layers=6,
        use_external_memory=True,
        use_dynamic_routing=True,
        use_symbolic_module=True,
        num_experts=4,
    )
    assert config.hidden_size == 256 and config.num_experts == 4
    config.use_external_memory = False
    assert config.use_external_memory is False


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_size", 0),
        ("hidden_size", -3),
        ("hidden_size", 2.5),
        ("hidden_size", True),
        ("dropout_rate", 1.5),
        ("mixer_type", "attention"),
        ("pooling", "sum"),
        ("memory_lexical_weight", -1.0),
        ("use_external_memory", "yes"),
        ("router_aux_loss_weight", -1.0),
        ("memory_readout_margin", 1.0),
        ("memory_readout_margin", -0.1),
        ("memory_label_lexical_weight", -2.0),
    ],
)
def test_invalid_values_name_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        NeuroLiteConfig(**{field: value})
    config = NeuroLiteConfig.tiny()
    before = getattr(config, field)
    with pytest.raises(ValueError, match=field):
        setattr(config, field, value)
    assert getattr(config, field) == before


def test_unknown_fields_and_inconsistent_values():
    with pytest.raises(ValueError, match="hiden_size"):
        NeuroLiteConfig(hiden_size=3)
    config = NeuroLiteConfig.tiny()
    with pytest.raises(AttributeError, match="hiden_size"):
        config.hiden_size = 3
    with pytest.raises(ValueError, match="ngram_min"):
        config.ngram_min = 9
    assert config.ngram_min == 2
    with pytest.raises(ValueError, match="num_experts_per_token"):
        NeuroLiteConfig(num_experts=2, num_experts_per_token=3)
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        NeuroLiteConfig.preset("huge")


def test_json_round_trip():
    config = NeuroLiteConfig.small(mixer_type="fnet")
    config.use_external_memory = True
    again = NeuroLiteConfig.from_json(config.to_json())
    assert again == config
    assert NeuroLiteConfig.from_config(config.get_config()) == config
    with pytest.raises(ValueError, match="Invalid NeuroLiteConfig JSON"):
        NeuroLiteConfig.from_json("{not json")


@pytest.mark.parametrize(
    "preset, low, high",
    [("tiny", 0.8e6, 1.2e6), ("small", 2.5e6, 3.5e6), ("base", 7e6, 9e6)],
)
def test_preset_parameter_counts(preset, low, high):
    model = NeuroLiteForClassification(
        NeuroLiteConfig.preset(preset), num_labels=7
    )
    assert low <= model.count_params() <= high, model.count_params()


def _small_config(**overrides):
    return NeuroLiteConfig.tiny(
        hidden_size=16,
        projection_size=8,
        num_mixer_layers=1,
        bloom_filter_size=256,
        max_sequence_length=8,
        num_hashes=4,
        **overrides,
    )


def test_a_built_models_config_cannot_be_changed():
    """Setting a field of `model.config` would change what is saved but
    not the model in memory; it raises, and the copy can be edited."""
    config = _small_config()
    model = NeuroLiteForClassification(config, label_names=["a", "b"])
    with pytest.raises(AttributeError, match="minhash_scheme='bottom_k'"):
        model.config.minhash_scheme = "bottom_k"
    with pytest.raises(AttributeError, match="built model"):
        model.backbone.config.hidden_size = 32
    assert model.config.minhash_scheme == "k_functions"
    edited = model.config.copy(minhash_scheme="bottom_k")
    edited.num_hashes = 6  # A copy is an ordinary config.
    assert edited.num_hashes == 6
    # The config the caller passed stays theirs to edit.
    config.hidden_size = 24
    assert model.config.hidden_size == 16


def test_readout_settings_are_set_through_the_model_and_saved(tmp_path):
    import keras

    config = _small_config(
        use_external_memory=True,
        num_memory_slots=4,
        num_episodic_slots=4,
        memory_key_size=8,
    )
    model = NeuroLiteForClassification(config, label_names=["a", "b"])
    model.memory_readout_margin = 0.35
    assert model.config.memory_readout_margin == 0.35
    assert model.get_layer("head").margin == 0.35
    with pytest.raises(ValueError, match="memory_readout_margin=1.5"):
        model.memory_readout_margin = 1.5
    assert model.memory_readout_margin == 0.35
    model.memory_label_lexical_weight = 1.5
    assert model.config.memory_label_lexical_weight == 1.5
    assert model.backbone.memory.label_lexical_weight == 1.5
    with pytest.raises(ValueError, match="memory_label_lexical_weight=-1"):
        model.memory_label_lexical_weight = -1
    assert model.memory_label_lexical_weight == 1.5
    assert model.memory_readout_margin == 0.35
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.memory_readout_margin == 0.35
    assert loaded.memory_label_lexical_weight == 1.5
    assert loaded.backbone.memory.label_lexical_weight == 1.5
    # NumPy scalars (a value read from an array) are numbers too.
    loaded.memory_label_lexical_weight = np.float32(0.5)
    assert loaded.config.memory_label_lexical_weight == 0.5
    assert type(loaded.config.memory_label_lexical_weight) is float


@pytest.mark.parametrize("value", [None, 0.3, "0.3"])
def test_readout_settings_need_a_memory(value):
    model = NeuroLiteForClassification(_small_config(), label_names=["a", "b"])
    assert model.memory_readout_margin is None
    for name in ("memory_readout_margin", "memory_label_lexical_weight"):
        with pytest.raises(
            ValueError, match=f"no `{name}` .received {value!r}"
        ):
            setattr(model, name, value)
        assert getattr(model, name) is None


def test_numpy_scalars_are_numbers_and_come_back_as_python_ones():
    config = NeuroLiteConfig(
        hidden_size=np.int64(48),
        dropout_rate=np.float32(0.25),
        memory_label_lexical_weight=-0.0,
    )
    assert config.hidden_size == 48 and type(config.hidden_size) is int
    assert type(config.dropout_rate) is float
    assert str(config.memory_label_lexical_weight) == "0.0"
    assert NeuroLiteConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="hidden_size=np.True_"):
        NeuroLiteConfig(hidden_size=np.True_)
