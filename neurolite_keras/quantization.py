"""Quantization-aware training (QAT) for int8 TFLite, on any Keras backend.

`QuantizationAwareModel` wraps a trained float model and runs it as the
int8 TFLite model will compute it, so that fine-tuning it with `fit` makes
its weights robust to int8 rounding. It trains under TensorFlow, JAX and
PyTorch alike, because fake quantization goes through
`keras.quantizers.fake_quant_with_min_max_vars`, whose straight-through
gradient every backend implements.

How it reaches every weight, nested ones included, without a hook:
the wrapper calls the float model inside a `keras.StatelessScope` whose
state mapping replaces each quantizable variable by its fake-quantized
value (the public mechanism Keras' own JAX trainer uses to run a model on
given variable values). So every `Dense` kernel is covered wherever it
lives: in the functional graph, in a nested backbone, or built inside a
composite layer such as `MlpMixerBlock`, and layers added later are
covered too, with no change to their code. Nothing in Keras is patched;
the wrapped model is the same object with the same variables, so after
fine-tuning it is exported as it is.

What is simulated, and how it matches the converter:

- `Dense` kernels: symmetric int8 in [-127, 127] with zero point 0, one
  scale per output unit (`per_channel=True`) or one per kernel, each scale
  `max|w| / 127`: exactly the scheme TFLite's full-integer quantizer
  applies to `FULLY_CONNECTED` weights, so the exported weights are the
  ones the model was fine-tuned with.
- Embedding tables (`HashProjection`, `keras.layers.Embedding`): int8 over
  the table's [min, max] with a zero point, one scale per table, as
  TFLite quantizes the constant input of `GATHER`.
- Any other trainable weight of two or more dimensions (raw kernels of a
  layer that multiplies by its own weights): symmetric, one scale per
  tensor.
- Outputs: a `FakeQuant` layer with a learned [min, max] on each float
  output, so the loss sees the int8 rounding of the logits.

**Note:** activations inside the model (layer normalization, the mixing
MLPs' hidden units) are not fake-quantized during QAT: they are not
reachable without a hook in every layer. Their ranges come from
post-training calibration on real sentences, where the measured error of
every operator is the rounding floor (about 0.29 of a quantization step,
RMS). Converting a graph with fake-quant nodes instead was tried and
rejected: TFLite's converter fails on per-channel fake-quantized `Dense`
kernels ("'tfl.transpose' op has mismatched quantized axes").

Example:

>>> inputs = keras.Input((4,))
>>> model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))
>>> qat = QuantizationAwareModel(model)
>>> [w.scheme for w in qat.quantized_weights]
['per_channel']
>>> tuple(qat(np.ones((2, 4))).shape)
(2, 3)
"""

import dataclasses
import warnings

import keras
from keras import ops

from neurolite_keras.layers import HashProjection

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")

# Weight schemes: symmetric int8 with one scale per output unit or per
# kernel, or asymmetric int8 over the tensor's range.
WEIGHT_SCHEMES = ("per_channel", "per_tensor", "asymmetric")


def check_quantization(quantization):
    """Returns `quantization` if it is a known mode, else raises.

    Modes: `"float32"` (no quantization), `"float16"` (float16 weights),
    `"dynamic"` (int8 weights, float activations) and `"int8"` (full
    integer: int8 weights and activations).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown quantization {quantization!r}. Choose one of "
            f"{', '.join(QUANTIZATIONS)}."
        )
    return quantization


def fake_quantize_weight(value, scheme):
    """`value` rounded to the int8 grid of `scheme`, in float.

    The range is taken from the value itself and treated as a constant, so
    the gradient is the straight-through estimator: it passes unchanged to
    every element inside the range.

    Args:
        value: float tensor, a kernel `(..., units)` or a table.
        scheme: `"per_channel"` (symmetric, one scale per last-axis entry),
            `"per_tensor"` (symmetric, one scale) or `"asymmetric"`
            (one scale and a zero point over `[min, max]`).

    Returns:
        A float tensor of the shape of `value`.
    """
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(
            f"`scheme` must be one of {WEIGHT_SCHEMES}. Received: {scheme!r}"
        )
    # `ops.copy` gives a tensor even where a backend hands out its
    # variable object (the fake-quant op reads `.ndim`).
    value = ops.copy(value)
    if scheme == "asymmetric":
        low = ops.stop_gradient(ops.min(value))
        high = ops.stop_gradient(ops.max(value))
        return keras.quantizers.fake_quant_with_min_max_vars(
            value, low, high, num_bits=8, narrow_range=False
        )
    per_channel = scheme == "per_channel" and len(value.shape) > 1
    axes = tuple(range(len(value.shape) - 1)) if per_channel else None
    bound = ops.stop_gradient(ops.max(ops.abs(value), axis=axes))
    # An all-zero channel would give a zero scale.
    bound = ops.maximum(bound, 1e-12)
    return keras.quantizers.fake_quant_with_min_max_vars(
        value,
        -bound,
        bound,
        num_bits=8,
        narrow_range=True,
        axis=len(value.shape) - 1 if per_channel else None,
    )


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """A weight that QAT fake-quantizes.

    Attributes:
        path: str. The variable's path, such as
            `"mixer_0/token_dense_in/kernel"`.
        scheme: str. One of `WEIGHT_SCHEMES`.
        variable: the `keras.Variable`.
    """

    path: str
    scheme: str
    variable: object = dataclasses.field(compare=False, repr=False)


def _sublayers(model):
    # Keras has no public recursive iterator over sublayers; this private
    # one is what `Model.quantize` itself walks. It is only read.
    return model._flatten_layers(include_self=False, recursive=True)


def quantizable_weights(model, per_channel=True):
    """The weights QAT fake-quantizes in `model`, nested layers included.

    - every `keras.layers.Dense` kernel, with the symmetric scheme
      `per_channel` selects (as TFLite quantizes `FULLY_CONNECTED`);
    - every embedding table of `HashProjection` or
      `keras.layers.Embedding`, asymmetric (as TFLite quantizes a `GATHER`
      table);
    - every other trainable float weight with two or more dimensions (the
      raw kernels of a mixture of experts, memory slots...), symmetric per
      tensor: the coarser grid, so the weights also suit a per-channel
      conversion.

    Biases and normalization scales (one dimension) stay float; TFLite
    keeps biases in int32 at the scale of their products.

    Raises:
        ValueError: on a `Dense` that uses LoRA or Keras' own quantization,
            whose kernel is not a plain variable.
    """
    schemes = {}
    kernel_scheme = "per_channel" if per_channel else "per_tensor"
    for layer in _sublayers(model):
        if isinstance(layer, keras.layers.Dense):
            if layer.quantization_mode is not None or layer.lora_enabled:
                raise ValueError(
                    f"Dense layer {layer.name!r} is already quantized by "
                    "Keras or uses LoRA; quantization-aware training needs "
                    "a plain float kernel. Merge or remove that first."
                )
            schemes.setdefault(id(layer.kernel), (layer.kernel, kernel_scheme))
        elif isinstance(layer, (HashProjection, keras.layers.Embedding)):
            table = layer.embeddings
            schemes.setdefault(id(table), (table, "asymmetric"))
    for variable in model.trainable_weights:
        floating = "float" in str(variable.dtype)
        if floating and len(variable.shape) >= 2:
            schemes.setdefault(id(variable), (variable, "per_tensor"))
    return [
        QuantizedWeight(variable.path, scheme, variable)
        for variable, scheme in schemes.values()
    ]


@keras.saving.register_keras_serializable(package="neurolite")
class FakeQuant(keras.layers.Layer):
    """Fake int8 quantization of activations into a learned range.

    The output is the input clamped to `[min, max]` and rounded to one of
    256 evenly spaced levels (the range nudged so that zero is exact), in
    float. `min` and `max` are trainable scalars: the gradient reaches
    them from the clipped inputs, and reaches the inputs inside the range
    unchanged (straight-through estimator). On the TensorFlow backend the
    op is `FakeQuantWithMinMaxVars`, which the TFLite converter reads.

    Args:
        initial_min: float. Starting lower bound. Defaults to `-6.0`.
        initial_max: float. Starting upper bound; must exceed
            `initial_min`. Defaults to `6.0`.
        narrow_range: bool. Use 255 levels instead of 256. Defaults to
            `False`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: float tensor of any shape.

    Returns:
        Float tensor of the shape of `inputs`.

    Example:

    >>> layer = FakeQuant(initial_min=-1.0, initial_max=1.0)
    >>> outputs = layer(np.array([[-2.0, 0.3, 0.5]]))
    >>> np.round(keras.ops.convert_to_numpy(outputs), 3)
    array([[-0.996,  0.298,  0.502]], dtype=float32)
    """

    def __init__(
        self, initial_min=-6.0, initial_max=6.0, narrow_range=False, **kwargs
    ):
        for name, value in (
            ("initial_min", initial_min),
            ("initial_max", initial_max),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"`{name}` must be a number. Received: {name}={value!r}"
                )
        if not initial_min < initial_max:
            raise ValueError(
                "`initial_min` must be below `initial_max`. Received: "
                f"initial_min={initial_min}, initial_max={initial_max}"
            )
        if not isinstance(narrow_range, bool):
            raise ValueError(
                "`narrow_range` must be True or False. "
                f"Received: narrow_range={narrow_range!r}"
            )
        super().__init__(**kwargs)
        self.initial_min = float(initial_min)
        self.initial_max = float(initial_max)
        self.narrow_range = narrow_range

    def build(self, input_shape):
        self.min = self.add_weight(
            name="min",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_min),
        )
        self.max = self.add_weight(
            name="max",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_max),
        )

    def set_range(self, low, high):
        """Sets the range, for example from a calibration batch."""
        low, high = float(min(low, 0.0)), float(max(high, 0.0))
        if not high > low:
            high = low + 1e-3
        self.min.assign(low)
        self.max.assign(high)

    def call(self, inputs):
        # Keep the range non-empty whatever the optimizer does.
        high = ops.maximum(self.max, self.min + 1e-3)
        return keras.quantizers.fake_quant_with_min_max_vars(
            inputs,
            self.min,
            high,
            num_bits=8,
            narrow_range=self.narrow_range,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_min": self.initial_min,
                "initial_max": self.initial_max,
                "narrow_range": self.narrow_range,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="neurolite")
class QuantizationAwareModel(keras.Model):
    """A float model run as its int8 TFLite export will compute it.

    Wraps `model` (any built Keras model) and, at every call, replaces each
    `Dense` kernel and embedding table by its int8 fake-quantized value
    (see the module docstring for the schemes), then passes each float
    output through a `FakeQuant` layer. `compile` and `fit` it like any
    model: the gradients update `model`'s own variables, so after
    fine-tuning `model` is the float model to export. Random state (such
    as dropout seeds) and losses added by layers flow through as usual.

    Args:
        model: a built `keras.Model`.
        per_channel: bool. One scale per output unit of each `Dense`
            kernel (`True`) or one per kernel (`False`, for accelerators
            such as Android NNAPI that reject per-channel fully connected
            weights). Must match the export. Defaults to `True`.
        quantize_outputs: bool. Fake-quantize the model's float outputs.
            Defaults to `True`.
        deterministic: bool. Call `model` with `training=False` even while
            fitting, so dropout is off and fine-tuning sees exactly the
            graph that will be exported. Defaults to `True`.
        **kwargs: `keras.Model` arguments (`name`).

    Call arguments:
        inputs: what `model` takes.
        training: bool.

    Returns:
        What `model` returns, fake-quantized.

    Example:

    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    >>> qat = QuantizationAwareModel(model, per_channel=False)
    >>> qat.compile(optimizer="sgd", loss="mse")
    >>> history = qat.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    >>> len(history.history["loss"])
    1
    """

    def __init__(
        self,
        model,
        per_channel=True,
        quantize_outputs=True,
        deterministic=True,
        **kwargs,
    ):
        if not isinstance(model, keras.Model):
            raise ValueError(
                "`model` must be a keras.Model. Received: "
                f"{type(model).__name__}"
            )
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built; call it once or load "
                "it from a file before wrapping it for QAT."
            )
        for name, value in (
            ("per_channel", per_channel),
            ("quantize_outputs", quantize_outputs),
            ("deterministic", deterministic),
        ):
            if not isinstance(value, bool):
                raise ValueError(
                    f"`{name}` must be True or False. Received: "
                    f"{name}={value!r}"
                )
        super().__init__(**kwargs)
        self.model = model
        self.per_channel = per_channel
        self.quantize_outputs = quantize_outputs
        self.deterministic = deterministic
        self.quantized_weights = quantizable_weights(model, per_channel)
        if not self.quantized_weights:
            warnings.warn(
                f"Model {model.name!r} has no Dense kernel or embedding "
                "table to fake-quantize.",
                stacklevel=2,
            )
        self._schemes = {
            id(w.variable): w.scheme for w in self.quantized_weights
        }
        self.output_quantizers = []
        if quantize_outputs:
            for index, spec in enumerate(keras.tree.flatten(model.output)):
                quantizer = FakeQuant(name=f"output_fake_quant_{index}")
                quantizer.build(spec.shape)
                self.output_quantizers.append(quantizer)

    @property
    def float_model(self):
        """The wrapped float model (it shares every variable)."""
        return self.model

    def calibrate(self, inputs):
        """Sets the output ranges from the float outputs on `inputs`."""
        # `predict` runs compiled, where an eager call would run op by op.
        outputs = self.model.predict(inputs, verbose=0)
        for quantizer, output in zip(
            self.output_quantizers, keras.tree.flatten(outputs)
        ):
            values = ops.convert_to_numpy(output)
            quantizer.set_range(values.min(), values.max())

    def call(self, inputs, training=None):
        mapping = []
        for variable in self.model.variables:
            value = variable.value
            scheme = self._schemes.get(id(variable))
            if scheme is not None:
                value = fake_quantize_weight(value, scheme)
            mapping.append((variable, value))
        scope = keras.StatelessScope(state_mapping=mapping, collect_losses=True)
        given = {
            id(variable): scope.get_current_value(variable)
            for variable, _ in mapping
        }
        if self.deterministic:
            training = False
        with scope:
            outputs = self.model(inputs, training=training)
        # Hand state updates (dropout seeds...) and losses on to the
        # enclosing context, which applies or records them as usual.
        for variable, _ in mapping:
            value = scope.get_current_value(variable)
            if value is not given[id(variable)]:
                variable.assign(value)
        for loss in scope.losses:
            self.add_loss(loss)
        if not self.output_quantizers:
            return outputs
        flat = keras.tree.flatten(outputs)
        flat = [q(x) for q, x in zip(self.output_quantizers, flat)]
        return keras.tree.pack_sequence_as(outputs, flat)

    def get_config(self):
        return {
            "model": keras.saving.serialize_keras_object(self.model),
            "per_channel": self.per_channel,
            "quantize_outputs": self.quantize_outputs,
            "deterministic": self.deterministic,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)
