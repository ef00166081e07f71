"""Mixture-of-experts FFN (LLaDA-MoE): float32 softmax router over all experts, top-k, optional shared expert.

Letters of docs/shapes.md: E experts, Ek experts chosen per token (top-k), F the expert's MLP width.

Routing follows the reference `LLaDAMoESparseMoeBlock`: router logits in the compute dtype, softmax over all
experts in float32, the top-k probabilities (renormalised only with `norm_topk_prob`; the reference code hard-codes
False whatever its config.json says) cast back to the compute dtype, each chosen expert's SwiGLU output times its
weight, summed; a shared expert (a plain SwiGLU, `shared_expert_hidden_size` wide) is added for every token.

Experts are a stacked axis with the logical name 'expert' (`param_logical_axes`), so a rules table can shard them
(expert parallelism) like any other axis. Dispatch is dropless and dense: every expert runs on every token and the
top-k weights (zero elsewhere) combine them. That is exact and simple at test shapes but costs E/k times the
routed FLOPs and an activation of [B, T, E, F]. A real 7B-A1B (64 experts, top-8, assumed from the model card)
needs a grouped dispatch instead: sort the B·T·k (token, expert) pairs by expert, run one grouped GEMM over the E
groups (`jax.lax.ragged_dot`; megablox `gmm` on TPU), unsort and combine with the weights, still dropless (no
capacity factor); with 'expert' mapped to a mesh axis, tokens travel by all-to-all inside a `shard_map`
(`jax.lax.ragged_all_to_all`), as MaxText's `RoutedMoE` sparse-matmul path does.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dllm_rl.models.layers import swiglu


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Experts of the MoE layers; `layers[i]` says whether layer i is MoE (HF `moe_layer_freq`) or dense."""

    n_experts: int
    n_experts_per_tok: int
    expert_hidden_size: int
    layers: tuple[bool, ...]
    shared_expert_hidden_size: int = 0  # 0: no shared expert
    norm_topk_prob: bool = False

    def __post_init__(self):
        from dllm_rl.models.config import ConfigError

        if not 0 < self.n_experts_per_tok <= self.n_experts:
            raise ConfigError(f"n_experts_per_tok {self.n_experts_per_tok} must be in 1..n_experts "
                              f"({self.n_experts})")
        if self.expert_hidden_size <= 0 or self.shared_expert_hidden_size < 0:
            raise ConfigError("expert widths must be positive (shared_expert_hidden_size 0 means none)")
        object.__setattr__(self, "layers", tuple(bool(x) for x in self.layers))


def param_shapes(moe: MoEConfig, d_model: int) -> dict[str, tuple[int, ...]]:
    """Per-layer shapes of one MoE FFN (the decoder stacks them on a leading layer axis)."""
    e, f, d = moe.n_experts, moe.expert_hidden_size, d_model
    shapes = {"router": (d, e), "expert_ff_proj": (e, d, f), "expert_up_proj": (e, d, f),
              "expert_ff_out": (e, f, d)}
    if moe.shared_expert_hidden_size:
        s = moe.shared_expert_hidden_size
        shapes.update(shared_ff_proj=(d, s), shared_up_proj=(d, s), shared_ff_out=(s, d))
    return shapes


def param_logical_axes(moe: MoEConfig) -> dict[str, tuple[str, ...]]:
    """Per-layer logical axes of one MoE FFN (same keys as `param_shapes`)."""
    axes = {"router": ("embed", "expert"), "expert_ff_proj": ("expert", "embed", "mlp"),
            "expert_up_proj": ("expert", "embed", "mlp"), "expert_ff_out": ("expert", "mlp", "embed")}
    if moe.shared_expert_hidden_size:
        axes.update(shared_ff_proj=("embed", "mlp"), shared_up_proj=("embed", "mlp"), shared_ff_out=("mlp", "embed"))
    return axes


def route(moe: MoEConfig, h_BxTxD: jax.Array, router_DxE: jax.Array) -> jax.Array:
    """Combine weights [B, T, E] in the compute dtype: the top-k float32 softmax probabilities, 0 elsewhere."""
    logits_BxTxE = h_BxTxD @ router_DxE.astype(h_BxTxD.dtype)
    probs_BxTxE = jax.nn.softmax(logits_BxTxE.astype(jnp.float32), axis=-1)
    top_p_BxTxEk, top_i_BxTxEk = jax.lax.top_k(probs_BxTxE, moe.n_experts_per_tok)
    if moe.norm_topk_prob:
        top_p_BxTxEk = top_p_BxTxEk / jnp.sum(top_p_BxTxEk, axis=-1, keepdims=True)
    top_p_BxTxEk = top_p_BxTxEk.astype(h_BxTxD.dtype)  # as the reference: weights in the compute dtype
    one_hot_BxTxEkxE = jax.nn.one_hot(top_i_BxTxEk, moe.n_experts, dtype=h_BxTxD.dtype)
    return jnp.einsum("btke,btk->bte", one_hot_BxTxEkxE, top_p_BxTxEk)


def moe_ffn(moe: MoEConfig, h_BxTxD: jax.Array, layer: dict[str, Any]) -> jax.Array:
    """The MoE FFN of one layer on normed inputs [B, T, D] (dense dropless dispatch, see the module doc)."""
    dt = h_BxTxD.dtype
    weights_BxTxE = route(moe, h_BxTxD, layer["router"])
    gate_BxTxExF = jnp.einsum("btd,edf->btef", h_BxTxD, layer["expert_ff_proj"].astype(dt))
    up_BxTxExF = jnp.einsum("btd,edf->btef", h_BxTxD, layer["expert_up_proj"].astype(dt))
    out_BxTxExD = jnp.einsum("btef,efd->bted", jax.nn.silu(gate_BxTxExF) * up_BxTxExF,
                             layer["expert_ff_out"].astype(dt))
    y_BxTxD = jnp.einsum("bted,bte->btd", out_BxTxExD, weights_BxTxE)
    if moe.shared_expert_hidden_size:
        y_BxTxD = y_BxTxD + swiglu(h_BxTxD, layer["shared_ff_proj"], layer["shared_up_proj"], layer["shared_ff_out"])
    return y_BxTxD
