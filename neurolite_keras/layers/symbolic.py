"""`SymbolicFusion`: a learned soft-logic layer that adds rule evidence to a
classifier's logits."""

import math

import keras
from keras import ops

from neurolite_keras.validation import check_positive_int


def _inverse_softplus(value):
    return value + math.log(-math.expm1(-value))


def _check_positive(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 < value < math.inf
    ):
        raise ValueError(
            f"`{name}` must be a positive finite number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


@keras.saving.register_keras_serializable(package="neurolite")
class SymbolicFusion(keras.layers.Layer):
    """Fuses rule evidence into logits with learned per-label trust.

    `RuleSet.evaluate` gives, for each label, a support and an opposition
    in `[0, 1]`, each a noisy-OR of the firing rules' weights. This layer
    turns each into a strength `-log(1 - p)`, which is the sum of
    `-log(1 - weight)` over the firing rules (0 when none fires), and
    returns

        logits + softplus(a) * support_strength
               - softplus(b) * opposition_strength

    with `a` and `b` trainable per label, so training learns how far to
    trust the rules of each label, and the scales stay positive: support
    never lowers a label. They start at `initial_support_scale` and
    `initial_opposition_scale`, so rules count from the first step. The
    rules themselves live outside the graph: editing them changes the
    evidence, and so the predictions, without retraining, and the
    evidence's shape does not depend on the number of rules.

    **Note:** evidence is clipped to `max_evidence` before the logarithm,
    so a rule of weight 1 adds at most `-log(1 - max_evidence)` (6.9 for
    the default) times its scale.

    Args:
        num_labels: int. Number of labels (the logits' last axis).
        initial_support_scale: float. Starting `softplus(a)`. Defaults to
            `1.0`.
        initial_opposition_scale: float. Starting `softplus(b)`. Defaults
            to `1.0`.
        max_evidence: float in `(0, 1)`. Clip of the evidence. Defaults to
            `0.999`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        logits: float tensor `(batch, num_labels)`.
        rule_evidence: float tensor `(batch, 2, num_labels)`: support at
            `[:, 0]`, opposition at `[:, 1]`.

    Returns:
        Float tensor `(batch, num_labels)`, the fused logits.

    Example:

    >>> fusion = SymbolicFusion(num_labels=3)
    >>> evidence = np.zeros((1, 2, 3))
    >>> evidence[0, 0, 1] = 0.5  # One support rule of weight 0.5 fired.
    >>> fused = fusion(np.zeros((1, 3)), evidence)
    >>> np.round(keras.ops.convert_to_numpy(fused), 4)
    array([[0.    , 0.6931, 0.    ]], dtype=float32)
    """

    def __init__(
        self,
        num_labels,
        initial_support_scale=1.0,
        initial_opposition_scale=1.0,
        max_evidence=0.999,
        **kwargs,
    ):
        check_positive_int("num_labels", num_labels)
        initial_support_scale = _check_positive(
            "initial_support_scale", initial_support_scale
        )
        initial_opposition_scale = _check_positive(
            "initial_opposition_scale", initial_opposition_scale
        )
        max_evidence = _check_positive("max_evidence", max_evidence)
        if not max_evidence < 1.0:
            raise ValueError(
                "`max_evidence` must be in (0, 1). "
                f"Received: max_evidence={max_evidence!r}"
            )
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.initial_support_scale = initial_support_scale
        self.initial_opposition_scale = initial_opposition_scale
        self.max_evidence = max_evidence

    def build(self, logits_shape, rule_evidence_shape=None):
        if len(logits_shape) != 2 or logits_shape[-1] != self.num_labels:
            raise ValueError(
                f"SymbolicFusion expects logits of shape (batch, "
                f"{self.num_labels}). Received: {logits_shape}"
            )
        self._check_evidence_shape(rule_evidence_shape)
        self.support_scale = self.add_weight(
            name="support_scale",
            shape=(self.num_labels,),
            initializer=keras.initializers.Constant(
                _inverse_softplus(self.initial_support_scale)
            ),
        )
        self.opposition_scale = self.add_weight(
            name="opposition_scale",
            shape=(self.num_labels,),
            initializer=keras.initializers.Constant(
                _inverse_softplus(self.initial_opposition_scale)
            ),
        )

    def _check_evidence_shape(self, shape):
        if shape is None:
            return
        if len(shape) != 3 or tuple(shape[1:]) != (2, self.num_labels):
            raise ValueError(
                "SymbolicFusion expects `rule_evidence` of shape (batch, 2, "
                f"{self.num_labels}) (support and opposition per label), as "
                f"RuleSet.evaluate returns. Received: {shape}"
            )

    def call(self, logits, rule_evidence):
        self._check_evidence_shape(rule_evidence.shape)
        evidence = ops.clip(
            ops.cast(rule_evidence, self.compute_dtype), 0.0, self.max_evidence
        )
        strength = -ops.log1p(-evidence)
        support = strength[:, 0, :]
        opposition = strength[:, 1, :]
        return (
            logits
            + ops.softplus(self.support_scale) * support
            - ops.softplus(self.opposition_scale) * opposition
        )

    def rule_scales(self):
        """The current per-label trust: a dict of `support` and
        `opposition` lists, `softplus(a)` and `softplus(b)`."""
        return {
            "support": ops.convert_to_numpy(
                ops.softplus(self.support_scale)
            ).tolist(),
            "opposition": ops.convert_to_numpy(
                ops.softplus(self.opposition_scale)
            ).tolist(),
        }

    def compute_output_shape(self, logits_shape, rule_evidence_shape=None):
        return tuple(logits_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_labels": self.num_labels,
                "initial_support_scale": self.initial_support_scale,
                "initial_opposition_scale": self.initial_opposition_scale,
                "max_evidence": self.max_evidence,
            }
        )
        return config
