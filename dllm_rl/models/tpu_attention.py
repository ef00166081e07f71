"""Bidirectional attention with key padding through jax's Pallas TPU splash-attention kernel.

Selected by `attention_impl="splash"` in the model calls (`models.llada`); "splash_interpret" runs the same
kernel in Pallas interpret mode, which works on CPU (tests). LLaDA attends without a causal mask, so the kernel
gets a full mask, and key padding becomes segment ids: every query is in segment 1, padded keys in segment 0.
GQA: the kernel's MQA form runs once per key/value head over that head's Hg query heads (vmapped over Hk and B).
The kernel tiles T and S in blocks of up to 512; both must be multiples of 128 (in interpret mode too). XLA
cannot partition the kernel's custom call, so under a mesh context (`jax.set_mesh(mesh)` around the jitted call)
it runs in a `shard_map`: rows split over the batch axes ('data', 'fsdp'), heads over 'tensor', as the default
sharding rules lay out activations. Without a mesh context it runs as is (one device, or interpret mode).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = ("splash", "splash_interpret")


def _block(n: int) -> int:
    """Largest tile of 512, 256 or 128 dividing the sequence length n (the kernel's tiles are multiples of 128)."""
    block = next((b for b in (512, 256, 128) if n % b == 0), None)
    if block is None:
        raise ValueError(f"splash attention needs sequence lengths that are multiples of 128, got {n}; pad the "
                         "prompt (max_prompt_length) or use attention_impl=None")
    return block


@functools.lru_cache(maxsize=None)
def _kernel(heads: int, t: int, s: int, interpret: bool):
    """The MQA splash kernel for `heads` query heads over one key/value head, [T, S] full mask."""
    bq, bkv = _block(t), _block(s)
    sizes = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                              block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    mask = mask_lib.MultiHeadMask([mask_lib.FullMask((t, s)) for _ in range(heads)])
    # Built eagerly even when first asked for inside a trace (a jit, a layer scan): the cached kernel keeps its
    # mask arrays, which must be concrete, not tracers of that first trace.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_BxTxHxHd: jax.Array, k_BxSxHkxHd: jax.Array, v_BxSxHkxHd: jax.Array,
                     key_mask_BxS: jax.Array | None, implementation: str) -> jax.Array:
    """softmax(q k^T / sqrt(Hd) + key padding) v, [B, T, H, Hd] in q's dtype (float32 softmax statistics)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl={implementation!r}; the splash kernel takes one of {IMPLEMENTATIONS}")
    b, s = k_BxSxHkxHd.shape[:2]
    if key_mask_BxS is None:
        key_mask_BxS = jnp.ones((b, s), jnp.int32)
    fn = functools.partial(_local_attention, interpret=implementation == "splash_interpret")
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        rows = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1) or None
        heads = "tensor" if mesh.shape.get("tensor", 1) > 1 else None
        spec = P(rows, None, heads, None)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, P(rows, None)), out_specs=spec,
                           check_vma=False)
    return fn(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS.astype(jnp.int32))


def _local_attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS, *, interpret: bool):
    """The kernel on one device's rows and heads: MQA form per key/value head, vmapped over Hk and B."""
    b, t, h, hd = q_BxTxHxHd.shape
    s, hk = k_BxSxHkxHd.shape[1], k_BxSxHkxHd.shape[2]
    kernel = _kernel(h // hk, t, s, interpret)
    scaled_BxTxHxHd = (q_BxTxHxHd.astype(jnp.float32) / np.sqrt(hd)).astype(q_BxTxHxHd.dtype)
    q_BxHkxHgxTxHd = scaled_BxTxHxHd.reshape(b, t, hk, h // hk, hd).transpose(0, 2, 3, 1, 4)
    k_BxHkxSxHd = k_BxSxHkxHd.transpose(0, 2, 1, 3)
    v_BxHkxSxHd = v_BxSxHkxHd.transpose(0, 2, 1, 3)
    segments_T = jnp.ones((t,), jnp.int32)

    def one_head(q_HgxTxHd, k_SxHd, v_SxHd, mask_S):
        return kernel(q_HgxTxHd, k_SxHd, v_SxHd, segment_ids=splash.SegmentIds(q=segments_T, kv=mask_S))

    per_head = jax.vmap(one_head, in_axes=(0, 0, 0, None))
    out_BxHkxHgxTxHd = jax.vmap(per_head)(q_BxHkxHgxTxHd, k_BxHkxSxHd, v_BxHkxSxHd, key_mask_BxS)
    return out_BxHkxHgxTxHd.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q_BxTxHxHd.dtype)
