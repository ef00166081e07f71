"""Mixture-of-experts FFN (LLaDA-MoE): float32 softmax router over all experts, top-k, grouped dropless dispatch,
optional shared expert, expert parallelism over a mesh axis.

Letters of docs/shapes.md: E experts, Ek experts chosen per token (top-k), F the expert's MLP width, BT the B·T
tokens flattened, A = BT·Ek (token, expert) assignments, El the experts one device holds.

Routing follows the reference `LLaDAMoESparseMoeBlock`: router logits in the compute dtype, softmax over all
experts in float32, the top-k probabilities (renormalised only with `norm_topk_prob`; the reference code hard-codes
False whatever its config.json says) cast back to the compute dtype, each chosen expert's SwiGLU output times its
weight, summed; a shared expert (a plain SwiGLU, `shared_expert_hidden_size` wide) is added for every token.

Dispatch is grouped and dropless (no capacity factor, so it computes what the reference computes): the A
assignments are sorted by expert, each expert's SwiGLU runs once on its contiguous group of rows as three grouped
GEMMs (`jax.lax.ragged_dot`: XLA's ragged-dot instruction on TPU; on CPU jax lowers it to a masked dense dot over
the groups, fine at test shapes), and the outputs are unsorted and combined with the weights. The routed FLOPs are
those of the Ek chosen experts per token.

Expert parallelism: expert weights carry the logical axis 'expert' (`param_logical_axes`), which the rules table
maps to a mesh axis. The default table (`parallel.mesh.DEFAULT_RULES`) leaves it unsplit: FSDP shards the experts'
embedding dimension like every other weight and XLA's SPMD partitioner lays out the grouped dispatch. With 'expert'
mapped to a mesh axis (e.g. `expert='fsdp'` in `MeshConfig.rules`), under a mesh context (`jax.set_mesh`) and the
table of `parallel.mesh.use_rules` (`experiments.aot` and the trainer enter both), the routed part runs in a `shard_map`: each
device holds El = E / (axis size) whole experts; the tokens of the devices along the axis are all-gathered, each
device runs its own experts on the assignments routed to them (the others' rows fall outside its groups and give
zero), and the partial outputs are summed back and scattered to their rows (`psum_scatter`), as Megatron's
all-gather token dispatcher does. That is dropless with static shapes, so a device's buffer holds all A gathered
rows whatever the routing: the compiler's cost analysis counts (axis size) times the routed FLOPs of the default
layout, and the layer's temporaries grow (BENCHMARKS.md, LLaDA-MoE on v5e-8); it pays only where the TPU's ragged
dot skips the rows past the groups, which is not measured here. It moves activations [B·T, D], never expert
weights. When the 'expert' axis does not split the batch, tokens are already whole on every device and the partial
outputs are summed (`psum`). The MLP width may also be split over 'tensor' (partial sums added over it).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dllm_rl.models.layers import swiglu
from dllm_rl.parallel import mesh as mesh_lib


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


def route(moe: MoEConfig, h_BxTxD: jax.Array, router_DxE: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(weights [B, T, Ek] in the compute dtype, experts [B, T, Ek] int32): the top-k of the float32 softmax."""
    logits_BxTxE = h_BxTxD @ router_DxE.astype(h_BxTxD.dtype)
    probs_BxTxE = jax.nn.softmax(logits_BxTxE.astype(jnp.float32), axis=-1)
    top_p_BxTxEk, top_i_BxTxEk = jax.lax.top_k(probs_BxTxE, moe.n_experts_per_tok)
    if moe.norm_topk_prob:
        top_p_BxTxEk = top_p_BxTxEk / jnp.sum(top_p_BxTxEk, axis=-1, keepdims=True)
    # as the reference: weights in the compute dtype
    return top_p_BxTxEk.astype(h_BxTxD.dtype), top_i_BxTxEk.astype(jnp.int32)


def grouped_experts(x_BTxD: jax.Array, weights_BTxEk: jax.Array, experts_BTxEk: jax.Array, ff_proj_ElxDxF: jax.Array,
                    up_proj_ElxDxF: jax.Array, ff_out_ElxFxD: jax.Array, first_expert=0) -> jax.Array:
    """Σ_k weight · SwiGLU_expert(x) [BT, D] over the assignments to the El experts first_expert..first_expert+El-1
    whose weights are given (the other assignments add nothing): sorted by expert, three grouped GEMMs, unsorted."""
    n, k = experts_BTxEk.shape
    n_local, dt = ff_proj_ElxDxF.shape[0], x_BTxD.dtype
    local_BTxEk = experts_BTxEk - first_expert
    is_local_BTxEk = (local_BTxEk >= 0) & (local_BTxEk < n_local)
    group_A = jnp.where(is_local_BTxEk, local_BTxEk, n_local).reshape(n * k)  # n_local: no group of this device
    order_A = jnp.argsort(group_A, stable=True)
    sizes_El = jnp.sum(group_A[None, :] == jnp.arange(n_local, dtype=group_A.dtype)[:, None], axis=1,
                       dtype=jnp.int32)
    x_AxD = jnp.take(x_BTxD, order_A // k, axis=0)
    gate_AxF = jax.lax.ragged_dot(x_AxD, ff_proj_ElxDxF.astype(dt), sizes_El)
    up_AxF = jax.lax.ragged_dot(x_AxD, up_proj_ElxDxF.astype(dt), sizes_El)
    y_AxD = jax.lax.ragged_dot(jax.nn.silu(gate_AxF) * up_AxF, ff_out_ElxFxD.astype(dt), sizes_El)
    y_AxD = jnp.where((jnp.take(group_A, order_A) < n_local)[:, None], y_AxD, 0)  # rows past the groups
    y_BTxEkxD = jnp.take(y_AxD, jnp.argsort(order_A), axis=0).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", y_BTxEkxD, jnp.where(is_local_BTxEk, weights_BTxEk, 0).astype(dt))


def expert_parallel_axes(mesh, rules=None) -> tuple[str | None, Any, str | None]:
    """(expert mesh axis or None, batch axes, MLP-width axis or None) of the rules on `mesh` (size-1 axes dropped);
    the expert axis is None when experts are not split, the MLP axis None unless it splits neither tokens nor
    experts. `rules` default: `parallel.mesh.current_rules()`."""
    rules = mesh_lib.current_rules() if rules is None else rules
    expert_ax = mesh_lib.logical_to_spec(("expert",), rules, mesh)[0]
    if isinstance(expert_ax, tuple):
        raise ValueError(f"the 'expert' rule maps to several mesh axes {expert_ax}; map it to one")
    rows = mesh_lib.logical_to_spec(("batch",), rules, mesh)[0]
    row_axes = (rows,) if isinstance(rows, str) else tuple(rows or ())
    mlp_ax = mesh_lib.logical_to_spec(("mlp",), rules, mesh)[0]
    if not isinstance(mlp_ax, str) or mlp_ax in row_axes or mlp_ax == expert_ax:
        mlp_ax = None
    return expert_ax, rows, mlp_ax


def routed_experts(moe: MoEConfig, h_BxTxD: jax.Array, weights_BxTxEk: jax.Array, experts_BxTxEk: jax.Array,
                   layer: dict[str, Any]) -> jax.Array:
    """The routed experts' combined output [B, T, D]: on this device, or expert-parallel under a mesh context
    whose 'expert' axis has more than one device (module doc)."""
    mesh = jax.sharding.get_abstract_mesh()
    expert_ax, rows, mlp_ax = (None, None, None) if mesh.empty else expert_parallel_axes(mesh)
    kernels = (layer["expert_ff_proj"], layer["expert_up_proj"], layer["expert_ff_out"])
    if expert_ax is None:
        b, t, d = h_BxTxD.shape
        k = moe.n_experts_per_tok
        return grouped_experts(h_BxTxD.reshape(b * t, d), weights_BxTxEk.reshape(b * t, k),
                               experts_BxTxEk.reshape(b * t, k), *kernels).reshape(b, t, d)
    ways = mesh.shape[expert_ax]
    if moe.n_experts % ways:
        raise ValueError(f"{moe.n_experts} experts do not split over mesh axis {expert_ax!r} of size {ways}; "
                         "change MeshConfig.shape or the 'expert' rule of MeshConfig.rules")
    row_axes = (rows,) if isinstance(rows, str) else tuple(rows or ())
    gather = expert_ax in row_axes

    def local(h_BxTxD, w_BxTxEk, e_BxTxEk, ff_proj, up_proj, ff_out):
        if gather:  # the tokens of every device along the expert axis
            h_BxTxD, w_BxTxEk, e_BxTxEk = (jax.lax.all_gather(a, expert_ax, axis=0, tiled=True)
                                           for a in (h_BxTxD, w_BxTxEk, e_BxTxEk))
        b, t, d = h_BxTxD.shape
        k = w_BxTxEk.shape[-1]
        first = jax.lax.axis_index(expert_ax) * ff_proj.shape[0]
        y_BxTxD = grouped_experts(h_BxTxD.reshape(b * t, d), w_BxTxEk.reshape(b * t, k), e_BxTxEk.reshape(b * t, k),
                                  ff_proj, up_proj, ff_out, first).reshape(b, t, d)
        if mlp_ax is not None:  # each device ran a slice of the MLP width
            y_BxTxD = jax.lax.psum(y_BxTxD, mlp_ax)
        if gather:
            return jax.lax.psum_scatter(y_BxTxD, expert_ax, scatter_dimension=0, tiled=True)
        return jax.lax.psum(y_BxTxD, expert_ax)

    tokens = P(rows, None, None)
    column, row = P(expert_ax, None, mlp_ax), P(expert_ax, mlp_ax, None)
    # check_vma=False: with it on, jax 0.10.2 gave a wrong input gradient when the expert axis does not split the
    # rows (tests/test_moe.py checks every layout against the one-device layer).
    fn = jax.shard_map(local, mesh=mesh, in_specs=(tokens, tokens, tokens, column, column, row), out_specs=tokens,
                       check_vma=False)
    return fn(h_BxTxD, weights_BxTxEk, experts_BxTxEk, *kernels)


def moe_ffn(moe: MoEConfig, h_BxTxD: jax.Array, layer: dict[str, Any]) -> jax.Array:
    """The MoE FFN of one layer on normed inputs [B, T, D] (grouped dropless dispatch, see the module doc)."""
    weights_BxTxEk, experts_BxTxEk = route(moe, h_BxTxD, layer["router"])
    y_BxTxD = routed_experts(moe, h_BxTxD, weights_BxTxEk, experts_BxTxEk, layer)
    if moe.shared_expert_hidden_size:
        y_BxTxD = y_BxTxD + swiglu(h_BxTxD, layer["shared_ff_proj"], layer["shared_up_proj"], layer["shared_ff_out"])
    return y_BxTxD
