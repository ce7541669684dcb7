"""Per-token functions applied to a long sequence a block of positions at a
time."""

from keras import ops

# Positions per block, read when a layer is called (a process-wide
# setting: it changes speed, not results; 0 passes every sequence whole).
# At 512 tokens the channel MLP's hidden activations of the base preset
# (1,024 wide, float32) take 2 MB, about what a core's cache holds; a whole
# 4,096-token sequence's take 16 MB and go through main memory twice
# (written by the first dense layer, read by the second). On two CPU cores
# under JAX, blocks cut the base mixers' latency at 4,096 tokens by 12 to
# 15% (`benchmarks/mixer_scaling.py --chunk-positions 0` measures without).
CHUNK_POSITIONS = 512


def per_position_in_chunks(function, x, chunk=None):
    """`function(x)` computed on blocks of `chunk` positions of axis 1.

    `function` must treat each position on its own (a norm or an MLP over
    the last axis): then the result equals `function(x)`, but the
    intermediate tensors of a long sequence are made and used one block at
    a time, which keeps them in cache. Sequences of unknown length, or no
    longer than `chunk`, are passed whole. `chunk` defaults to
    `CHUNK_POSITIONS`.
    """
    chunk = CHUNK_POSITIONS if chunk is None else chunk
    length = x.shape[1]
    if not chunk or length is None or length <= chunk:
        return function(x)
    return ops.concatenate(
        [function(x[:, i : i + chunk]) for i in range(0, length, chunk)],
        axis=1,
    )
