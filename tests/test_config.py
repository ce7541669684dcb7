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
