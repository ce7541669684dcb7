"""`MixtureOfExperts`: per-token top-k routing over small MLP experts, with
a load-balancing loss (Shazeer et al. 2017; Switch Transformer, Fedus et al.
2022; Mixtral, Jiang et al. 2024), and `ExpertUsageCallback`, which puts
each routed layer's expert usage into the `fit` logs."""

import math
import weakref

import keras
from keras import ops

from neurolite_keras.validation import check_positive_int
from neurolite_keras.validation import check_rate

try:  # Internal Keras API, used only by `MixtureOfExperts._clear_losses`.
    from keras.src.backend import get_stateless_scope
    from keras.src.backend import in_stateless_scope
except ImportError:  # pragma: no cover
    get_stateless_scope = in_stateless_scope = None


def load_balancing_loss(router_probs, expert_mask, token_mask=None):
    """The auxiliary loss that pushes a router towards balanced experts.

    Returns `num_experts * sum_i f_i * P_i`, where `f_i` is the share of
    the real tokens' expert assignments that went to expert `i` and `P_i`
    is the mean router probability of expert `i` over the real tokens. It
    is 1 when both are uniform and reaches `num_experts` when every token
    goes to one expert with probability 1. Only `P_i` carries a gradient:
    the assignments are a hard choice.

    Args:
        router_probs: float tensor `(..., num_experts)`, the router's softmax.
        expert_mask: tensor `(..., num_experts)`, 1 where an expert is among
            a token's top-k choices (before any capacity drop), else 0.
        token_mask: optional tensor `(...)`, nonzero for real tokens. Padded
            tokens count in neither `f` nor `P`.

    Returns:
        A float32 scalar; 0 when there is no real token.
    """
    num_experts = router_probs.shape[-1]
    probs = ops.reshape(ops.cast(router_probs, "float32"), (-1, num_experts))
    chosen = ops.reshape(ops.cast(expert_mask, "float32"), (-1, num_experts))
    if token_mask is None:
        weights = ops.ones_like(probs[:, :1])
    else:
        weights = ops.reshape(ops.cast(token_mask != 0, "float32"), (-1, 1))
    num_tokens = ops.maximum(ops.sum(weights), 1.0)
    mean_probs = ops.sum(probs * weights, axis=0) / num_tokens
    assignments = ops.sum(chosen * weights, axis=0)
    shares = assignments / ops.maximum(ops.sum(assignments), 1.0)
    return num_experts * ops.sum(shares * mean_probs)


def moe_parameter_counts(
    hidden_size, num_experts, expert_size, num_experts_per_token=1
):
    """Parameters of a `MixtureOfExperts`: in total, and used per token.

    A token uses the router and its `num_experts_per_token` experts; the
    others hold parameters it never touches. The dense counterpart at
    equal `active` is the same layer with one expert of width
    `num_experts_per_token * expert_size`: it differs only by
    `hidden_size * (num_experts - 1)` router weights and
    `hidden_size * (num_experts_per_token - 1)` output biases.

    Returns:
        A dict with `total` and `active` (per token) parameter counts.
    """
    router = hidden_size * num_experts
    expert = 2 * hidden_size * expert_size + expert_size + hidden_size
    return {
        "total": router + num_experts * expert,
        "active": router + num_experts_per_token * expert,
    }


def _check_non_negative(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 <= value < math.inf
    ):
        raise ValueError(
            f"`{name}` must be a non-negative finite number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


@keras.saving.register_keras_serializable(package="neurolite")
class MixtureOfExperts(keras.layers.Layer):
    """A feed-forward block whose weights are chosen per token by a router.

    A linear router scores the experts for each token; a softmax turns the
    scores into probabilities and the top `num_experts_per_token` experts
    are kept. Each expert is a small MLP (`hidden -> expert_size ->
    hidden`), and a token's output is the sum of its chosen experts'
    outputs, weighted by their probabilities. With one expert per token the
    weight is the raw probability (Switch), so the task loss trains the
    router; with several they are renormalized to sum to 1 (Mixtral),
    unless `renormalize_weights` says otherwise.

    While training, the layer adds `aux_loss_weight` times
    `load_balancing_loss` with `add_loss` (once per call, so a layer shared
    by two inputs adds two terms), and accumulates routing statistics in
    three non-trainable weights: `routed_fraction_sum` (per expert, the sum
    over training batches of the share of assignments it received),
    `dropped_fraction_sum` and `training_batches`. `routing_statistics()`
    reads them; `ExpertUsageCallback` puts them in the `fit` logs, one
    value per expert and epoch. At inference, `return_expert_usage=True`
    also returns each token's expert weights and each sequence's usage.

    This is a feed-forward block only: it has no normalization and no
    residual. Use it as `x + MixtureOfExperts(...)(LayerNorm(x))`.

    **Note on compute (dense dispatch):** every expert runs on every token
    and the top-k weights, zero for the experts a token did not choose,
    combine their outputs. The result equals sparse dispatch, but the cost
    is `num_experts` dense experts, not `num_experts_per_token`: routing
    buys capacity (parameters), not speed. For the few small experts of a
    phone model this is the usual choice: the graph stays two matrix
    products with static shapes, which TFLite runs with built-in
    operators only, where sparse dispatch needs gathers and scatters of a
    data-dependent size. A large mixture would want real dispatch.

    **Note on capacity (overflow policy):** with `capacity_factor=None`
    (the default) there is no limit: every token gets its experts. With a
    number, each expert accepts at most `ceil(capacity_factor *
    num_experts_per_token * real_tokens / num_experts)` assignments per
    batch while training; first choices are served before second choices,
    then in token order, and an assignment over capacity is dropped: it
    contributes nothing, so the caller's residual carries that token
    unchanged (Switch Transformer). The other weights of a token are not
    renormalized after a drop. At inference nothing is dropped, so a
    prediction never depends on the other texts of its batch.

    **Note on ties:** the experts kept are those whose probability reaches
    the k-th largest, so on an exact tie (an all-zero token, say) every
    tied expert is kept, on every backend alike. This selection, unlike
    expert indices and one-hot tensors, survives full-integer int8
    quantization; a router still close to uniform (untrained) can flip
    near-tied choices there.

    **Note on masking:** padded tokens are neither routed (their output is
    zero) nor counted in the loss, the capacity or the statistics.

    Args:
        num_experts: int. Number of experts.
        expert_size: int. Hidden width of each expert MLP.
        num_experts_per_token: int. Experts per token (top-k), at most
            `num_experts`. Defaults to `1`.
        aux_loss_weight: float. Weight of the load-balancing loss; `0`
            turns it off. Defaults to `0.01`.
        capacity_factor: float or `None`. Expert capacity while training,
            as a multiple of an even share (see the note). Defaults to
            `None`, no limit.
        renormalize_weights: bool or `None`. Rescale each token's top-k
            weights to sum to 1. `None` does so when `num_experts_per_token
            > 1`. Defaults to `None`.
        activation: str. Activation of the experts' hidden layer. Defaults
            to `"gelu"`.
        dropout_rate: float. Dropout on the experts' hidden activations.
            Defaults to `0.0`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: float tensor `(batch, sequence, hidden)`.
        padding_mask: optional tensor `(batch, sequence)`, nonzero for real
            tokens.
        training: bool. Adds the auxiliary loss, updates the statistics,
            applies the capacity limit and dropout.
        return_expert_usage: bool. Also return the routing. Defaults to
            `False`.

    Returns:
        Float tensor with the shape of `inputs`. With `return_expert_usage`,
        a tuple `(outputs, usage)` where `usage` is a dict:
        `"expert_weights"`, `(batch, sequence, num_experts)`, each token's
        combination weights (zero for experts it did not choose and for
        padding), and `"expert_fractions"`, `(batch, num_experts)`, the
        share of each sequence's real-token assignments per expert (zeros
        for an empty sequence).

    Example:

    >>> moe = MixtureOfExperts(num_experts=4, expert_size=8)
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 6))
    >>> y, usage = moe(x, padding_mask=np.ones((2, 5)),
    ...                return_expert_usage=True)
    >>> tuple(y.shape), tuple(usage["expert_fractions"].shape)
    ((2, 5, 6), (2, 4))
    >>> moe_parameter_counts(6, num_experts=4, expert_size=8)
    {'total': 464, 'active': 134}
    """

    def __init__(
        self,
        num_experts,
        expert_size,
        num_experts_per_token=1,
        aux_loss_weight=0.01,
        capacity_factor=None,
        renormalize_weights=None,
        activation="gelu",
        dropout_rate=0.0,
        **kwargs,
    ):
        check_positive_int("num_experts", num_experts)
        check_positive_int("expert_size", expert_size)
        check_positive_int("num_experts_per_token", num_experts_per_token)
        if num_experts_per_token > num_experts:
            raise ValueError(
                "`num_experts_per_token` must not exceed `num_experts`. "
                f"Received: num_experts_per_token={num_experts_per_token}, "
                f"num_experts={num_experts}"
            )
        aux_loss_weight = _check_non_negative(
            "aux_loss_weight", aux_loss_weight
        )
        if capacity_factor is not None:
            _check_non_negative("capacity_factor", capacity_factor)
            if capacity_factor == 0:
                raise ValueError(
                    "`capacity_factor` must be positive or None. "
                    f"Received: capacity_factor={capacity_factor!r}"
                )
            capacity_factor = float(capacity_factor)
        if renormalize_weights not in (None, True, False):
            raise ValueError(
                "`renormalize_weights` must be True, False or None. "
                f"Received: renormalize_weights={renormalize_weights!r}"
            )
        if not isinstance(activation, str):
            raise ValueError(
                "`activation` must be the name of a Keras activation. "
                f"Received: activation={activation!r}"
            )
        keras.activations.get(activation)  # Raises for unknown names.
        check_rate("dropout_rate", dropout_rate)
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.expert_size = expert_size
        self.num_experts_per_token = num_experts_per_token
        self.aux_loss_weight = aux_loss_weight
        self.capacity_factor = capacity_factor
        self.renormalize_weights = renormalize_weights
        self.activation = activation
        self.dropout_rate = dropout_rate
        self.supports_masking = False
        self._loss_scope = None

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "MixtureOfExperts expects inputs of shape (batch, sequence, "
                f"hidden) with a known hidden size. Received: {input_shape}"
            )
        hidden_size = input_shape[-1]
        num_experts = self.num_experts
        # Every expert exists from the start, whatever a call routes to.
        # Kernels are stacked on a leading expert axis; `scale=num_experts`
        # cancels that axis in the fan computation, so each expert gets a
        # Glorot-uniform kernel of its own size.
        per_expert = keras.initializers.VarianceScaling(
            scale=float(num_experts), mode="fan_avg", distribution="uniform"
        )
        self.router_kernel = self.add_weight(
            name="router_kernel",
            shape=(hidden_size, num_experts),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        self.expert_kernel_in = self.add_weight(
            name="expert_kernel_in",
            shape=(num_experts, hidden_size, self.expert_size),
            initializer=per_expert,
        )
        self.expert_bias_in = self.add_weight(
            name="expert_bias_in",
            shape=(num_experts, self.expert_size),
            initializer="zeros",
        )
        self.expert_kernel_out = self.add_weight(
            name="expert_kernel_out",
            shape=(num_experts, self.expert_size, hidden_size),
            initializer=per_expert,
        )
        self.expert_bias_out = self.add_weight(
            name="expert_bias_out",
            shape=(num_experts, hidden_size),
            initializer="zeros",
        )
        self.routed_fraction_sum = self.add_weight(
            name="routed_fraction_sum",
            shape=(num_experts,),
            initializer="zeros",
            trainable=False,
        )
        self.dropped_fraction_sum = self.add_weight(
            name="dropped_fraction_sum",
            shape=(),
            initializer="zeros",
            trainable=False,
        )
        self.training_batches = self.add_weight(
            name="training_batches",
            shape=(),
            initializer="zeros",
            trainable=False,
        )
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self._activation_fn = keras.activations.get(self.activation)

    def _renormalizes(self):
        if self.renormalize_weights is None:
            return self.num_experts_per_token > 1
        return self.renormalize_weights

    def _capacity_keep(self, router_probs, expert_mask, token_mask):
        """1 where a token's assignment to an expert is within capacity.

        Queues are filled slot-major: every token's first choice, in token
        order, then every second choice, and so on. Returns a float tensor
        shaped like `expert_mask`, `(batch, sequence, experts)`.
        """
        k, num_experts = self.num_experts_per_token, self.num_experts
        # An expert's slot is its rank among the token's choices: the
        # number of experts with a strictly higher probability.
        higher = ops.cast(
            router_probs[..., None, :] > router_probs[..., :, None], "float32"
        )
        rank = ops.sum(higher, axis=-1)
        flat_mask = ops.reshape(expert_mask, (-1, num_experts))
        flat_rank = ops.reshape(rank, (-1, num_experts))
        queue = ops.concatenate(
            [flat_mask * ops.cast(flat_rank == slot, "float32")
             for slot in range(k)],
            axis=0,
        )  # fmt: skip
        position = ops.cumsum(queue, axis=0) * queue
        capacity = ops.ceil(
            self.capacity_factor * k * ops.sum(token_mask) / num_experts
        )
        capacity = ops.maximum(capacity, 1.0)
        kept = queue * ops.cast(position <= capacity, "float32")
        kept = ops.sum(ops.reshape(kept, (k, -1, num_experts)), axis=0)
        return ops.reshape(kept, ops.shape(expert_mask))

    def call(
        self,
        inputs,
        padding_mask=None,
        training=None,
        return_expert_usage=False,
    ):
        num_experts = self.num_experts
        if padding_mask is None:
            token_mask = ops.ones_like(inputs[..., 0], dtype="float32")
        else:
            token_mask = ops.cast(padding_mask != 0, "float32")

        # Routing, in float32: softmax over experts, then the top k, kept
        # by comparing each probability with the k-th largest. Unlike
        # indices and one-hot tensors, this quantizes well to int8.
        router_logits = ops.matmul(
            ops.cast(inputs, "float32"),
            ops.cast(self.router_kernel, "float32"),
        )
        if num_experts == 1:
            # The softmax over one expert, written out: exactly 1, with a
            # zero gradient, and without Keras' warning about a softmax
            # over an axis of size 1.
            router_probs = ops.exp(
                router_logits - ops.max(router_logits, axis=-1, keepdims=True)
            )
        else:
            router_probs = ops.softmax(router_logits, axis=-1)
        k = self.num_experts_per_token
        if k == 1:
            threshold = ops.max(router_probs, axis=-1, keepdims=True)
        else:
            threshold = ops.top_k(router_probs, k)[0][..., -1:]
        expert_mask = ops.cast(router_probs >= threshold, "float32")
        expert_mask = expert_mask * token_mask[..., None]
        gates = router_probs * expert_mask
        if self._renormalizes():
            # A real token's chosen probabilities sum to at least k / E;
            # padded tokens divide by 1 (no divisor near 0, even in int8).
            total = ops.sum(gates, axis=-1, keepdims=True)
            gates = gates / (total + 1.0 - token_mask[..., None])

        # Overflow: drop assignments over capacity (training only).
        kept = None
        if training and self.capacity_factor is not None:
            kept = self._capacity_keep(router_probs, expert_mask, token_mask)
            gates = gates * kept

        if training:
            if self.aux_loss_weight > 0:
                self.add_loss(
                    self.aux_loss_weight
                    * load_balancing_loss(router_probs, expert_mask, token_mask)
                )
                self._remember_loss_scope()
            self._update_statistics(expert_mask, kept)

        # Experts, dense: each expert's hidden units form a block of the
        # flattened (experts * expert_size) axis, scaled by its gate, so
        # the whole mixture is two matrix products.
        dtype = self.compute_dtype
        hidden_size = inputs.shape[-1]
        width = num_experts * self.expert_size
        kernel_in = ops.reshape(
            ops.transpose(self.expert_kernel_in, (1, 0, 2)),
            (hidden_size, width),
        )
        kernel_out = ops.reshape(self.expert_kernel_out, (width, hidden_size))
        hidden = ops.matmul(inputs, kernel_in) + ops.reshape(
            self.expert_bias_in, (width,)
        )
        hidden = self._activation_fn(hidden)
        hidden = self.dropout(hidden, training=training)
        gates = ops.cast(gates, dtype)
        # (experts, experts * expert_size) block of ones: a matrix product
        # spreads each gate over its expert's block, with static shapes.
        spread = ops.repeat(
            ops.eye(num_experts, dtype=dtype), self.expert_size, axis=1
        )
        block_gates = ops.matmul(gates, spread)
        outputs = ops.matmul(hidden * block_gates, kernel_out) + ops.matmul(
            gates, self.expert_bias_out
        )
        if not return_expert_usage:
            return outputs

        per_sequence = ops.sum(expert_mask, axis=1)
        total = ops.maximum(ops.sum(per_sequence, axis=-1, keepdims=True), 1.0)
        usage = {
            "expert_weights": ops.cast(gates, "float32"),
            "expert_fractions": per_sequence / total,
        }
        return outputs, usage

    def _remember_loss_scope(self):
        scope = None
        if in_stateless_scope is not None and in_stateless_scope():
            scope = weakref.ref(get_stateless_scope())
        self._loss_scope = scope

    def _clear_losses(self):
        # TODO: drop this override once Keras keeps a shared layer's losses
        # under `stateless_call`. In Keras 3.15 the JAX trainer runs the
        # model through `stateless_call`, which opens no model-level call
        # context, so each call of a layer counts as an outermost call and
        # clears the losses of that layer's earlier calls: a block shared by
        # two inputs would train with only its last auxiliary loss. Inside
        # the stateless scope in which the losses were added (one forward
        # pass), keep them; a new scope (the next step) clears as usual.
        if (
            self._loss_scope is not None
            and in_stateless_scope()
            and self._loss_scope() is get_stateless_scope()
        ):
            return
        self._loss_scope = None
        super()._clear_losses()

    def _update_statistics(self, expert_mask, kept):
        per_expert = ops.sum(
            ops.reshape(expert_mask, (-1, self.num_experts)), axis=0
        )
        assignments = ops.sum(per_expert)
        denominator = ops.maximum(assignments, 1.0)
        has_tokens = ops.cast(assignments > 0, "float32")
        if kept is None:
            dropped = ops.zeros((), "float32")
        else:
            dropped = (assignments - ops.sum(kept)) / denominator
        # Statistics only: no gradient flows into them.
        self.routed_fraction_sum.assign_add(
            ops.stop_gradient(per_expert / denominator)
        )
        self.dropped_fraction_sum.assign_add(ops.stop_gradient(dropped))
        self.training_batches.assign_add(ops.stop_gradient(has_tokens))

    def _statistics_totals(self):
        """The raw sums: (per-expert fractions, dropped fraction, batches)."""
        return (
            ops.convert_to_numpy(self.routed_fraction_sum).astype("float64"),
            float(ops.convert_to_numpy(self.dropped_fraction_sum)),
            float(ops.convert_to_numpy(self.training_batches)),
        )

    def routing_statistics(self):
        """Expert usage over every training batch since the last reset.

        Returns:
            A dict: `"expert_fractions"`, a list with each expert's mean
            share of a batch's assignments; `"dropped_fraction"`, the mean
            share dropped by the capacity limit; `"batches"`, the number of
            training batches (with at least one real token) seen.
        """
        routed, dropped, batches = self._statistics_totals()
        scale = 1.0 / batches if batches else 0.0
        return {
            "expert_fractions": [float(v) * scale for v in routed],
            "dropped_fraction": dropped * scale,
            "batches": int(batches),
        }

    def reset_routing_statistics(self):
        """Sets the accumulated routing statistics back to zero."""
        for weight in (
            self.routed_fraction_sum,
            self.dropped_fraction_sum,
            self.training_batches,
        ):
            weight.assign(ops.zeros(weight.shape, weight.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(
        self,
        inputs,
        padding_mask=None,
        training=None,
        return_expert_usage=False,
    ):
        outputs = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not return_expert_usage:
            return outputs
        batch, sequence = inputs.shape[0], inputs.shape[1]
        usage = {
            "expert_weights": keras.KerasTensor(
                (batch, sequence, self.num_experts), dtype="float32"
            ),
            "expert_fractions": keras.KerasTensor(
                (batch, self.num_experts), dtype="float32"
            ),
        }
        return outputs, usage

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "expert_size": self.expert_size,
                "num_experts_per_token": self.num_experts_per_token,
                "aux_loss_weight": self.aux_loss_weight,
                "capacity_factor": self.capacity_factor,
                "renormalize_weights": self.renormalize_weights,
                "activation": self.activation,
                "dropout_rate": self.dropout_rate,
            }
        )
        return config


class ExpertUsageCallback(keras.callbacks.Callback):
    """Writes each `MixtureOfExperts` layer's expert usage into the logs.

    At the end of every epoch, for each routed layer of the model (nested
    models included), it adds `"<layer>_expert_<i>"`, the mean share of a
    training batch's assignments that went to expert `i` during that epoch,
    and `"<layer>_dropped"`, the share dropped by the capacity limit. The
    values land in `history.history` under every backend; they are read
    from the layers' statistics weights, so they cost nothing per step.

    **Note:** Keras' progress bar prints an epoch's line before this
    callback runs, so the values appear in `history.history` and in later
    callbacks' logs (CSV logger, TensorBoard), not on the printed line.

    Example:

    >>> inputs = keras.Input((5, 6))
    >>> model = keras.Model(inputs, MixtureOfExperts(4, 8, name="moe")(inputs))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = np.random.default_rng(0).normal(size=(8, 5, 6))
    >>> history = model.fit(x, x, verbose=0, callbacks=[ExpertUsageCallback()])
    >>> sorted(history.history)[:3]
    ['loss', 'moe_dropped', 'moe_expert_0']
    >>> usage = [history.history[f"moe_expert_{i}"][0] for i in range(4)]
    >>> round(sum(usage), 4)
    1.0
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = {
            id(layer): layer._statistics_totals()
            for layer in self._routed_layers()
        }

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        start = getattr(self, "_start", {})
        for layer in self._routed_layers():
            routed, dropped, batches = layer._statistics_totals()
            if id(layer) in start:
                routed0, dropped0, batches0 = start[id(layer)]
                routed, dropped = routed - routed0, dropped - dropped0
                batches -= batches0
            scale = 1.0 / batches if batches else 0.0
            for index, value in enumerate(routed):
                logs[f"{layer.name}_expert_{index}"] = float(value) * scale
            logs[f"{layer.name}_dropped"] = dropped * scale

    def _routed_layers(self):
        # `_flatten_layers` walks nested models and layers, as Keras' own
        # `Model.metrics` does.
        return [
            layer
            for layer in self.model._flatten_layers(include_self=False)
            if isinstance(layer, MixtureOfExperts)
        ]
