"""LoRA adapters for the decoder's params tree (every family), without touching the model code.

Targets name kernels of the params tree (`models.decoder`). The AGRPO paper's (docs/algorithm.md) are q_proj,
k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out of every layer, optionally the LM head; HF calls them q/k/v_proj,
o_proj, gate_proj, up_proj, down_proj in the Qwen-style families. Per family:
- Dream's q/k/v biases and every family's norms (A2D-Qwen3's and LLaDA-MoE's per-head q/k norms) stay frozen, as
  PEFT's LoRA leaves a Linear's bias (`bias="none"`) and non-Linear modules alone.
- A tied LM head (A2D-Qwen3-0.6B) is the embedding: `lm_head=True` there is an error, since an adapter on it would
  also change the input embedding (set lm_head=False).
- LLaDA-MoE: the attention projections of every layer; ff_proj / up_proj / ff_out adapt the dense FFN layers only
  (wherever `moe_layer_freq` has them; a model whose every layer is MoE has none, and naming them is an error);
  shared_ff_proj / shared_up_proj / shared_ff_out adapt the shared expert, which every token of an MoE layer runs.
  Not adapted: the routed experts' kernels (a per-expert adapter needs a grouped low-rank path inside
  `moe.grouped_experts`' grouped GEMMs, and E times the adapter parameters) and the router (its output picks the top-k experts:
  an adapter there would change which experts each token runs; frozen, the base model's routing is kept).
`check_targets` tells, from a model config alone, whether a LoRAConfig fits that family (before weights load).
Each adapter holds A [.., in, r] and B [.., r, out] (stacked over layers like the kernels), initialised as PEFT does
(A Kaiming-uniform, B zero), so a fresh adapter leaves the model unchanged.

Two ways to run the adapted model:
- `apply_lora` (training): each target kernel becomes a `LoRAWeight`, which the model's `x @ kernel` evaluates as
  x @ W + s·(x @ A) @ B. Neither the merged kernel nor its gradient is ever materialised, and W gets no gradient.
  The sampler runs this path too, so the policy that samples is the policy that trains.
- `merge_lora` (export): plain arrays W + s·A @ B, one matmul per kernel. It will not round the merged kernel into
  a bf16 W unless asked: that erases every update smaller than half a bf16 step of W.
LoRA dropout (`LoRAConfig.dropout`, as PEFT's `lora_dropout`) acts on the adapter input only, x @ W + s·(drop(x) @ A)
@ B, and only in a training forward that passes a key to `apply_lora`: sampling, evaluation, export and the
reference never drop.
The reference policy of the KL term ("LoRA off") is the base params themselves.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]

CONFIG_FILE = "lora_config.json"  # a run's LoRAConfig as JSON in its workdir (trainer writes, dllm_rl.export reads)
LAYER_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")  # the paper's
SHARED_EXPERT_TARGETS = ("shared_ff_proj", "shared_up_proj", "shared_ff_out")  # LLaDA-MoE's shared expert
TARGETS = LAYER_TARGETS + SHARED_EXPERT_TARGETS
# The stacked per-layer groups of the params tree (`models.decoder`): all layers, or with mixed dense / MoE layers
# the FFN leaves of each kind on their own stacks.
_GROUPS = ("layers", "dense_ffn", "moe_ffn")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Rank r, scale α (the update is (α/r)·A@B), the per-layer kernels adapted, whether the LM head is, and the
    dropout rate of the adapter input in training (0: none)."""

    rank: int = 64
    alpha: float = 64.0
    targets: tuple[str, ...] = LAYER_TARGETS
    lm_head: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"LoRAConfig.rank must be positive, got {self.rank}")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"LoRAConfig.targets has unknown kernel(s) {unknown}; choose from {TARGETS}")
        if not self.targets and not self.lm_head:
            raise ValueError("LoRAConfig adapts nothing: give targets or set lm_head=True")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@jax.tree_util.register_pytree_node_class
class LoRAWeight:
    """A frozen kernel W [.., in, out] with a low-rank update; `x @ self` = x @ W + scale·(drop(x) @ A) @ B.

    Quacks like the kernel where the model uses it (`.astype`, right-matmul, `.shape`, `.dtype`); `lax.scan` over
    stacked layers slices W, A, B and the dropout keys (one per layer, [..] keys; None: no dropout) together since
    they are the pytree children.
    """

    def __init__(self, w, a, b, scale: float, dropout_key=None, dropout: float = 0.0):
        self.w, self.a, self.b, self.scale = w, a, b, scale
        self.dropout_key, self.dropout = dropout_key, dropout

    def tree_flatten(self):
        return (self.w, self.a, self.b, self.dropout_key), (self.scale, self.dropout)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children[:3], aux[0], children[3], aux[1])

    @property
    def shape(self):
        return self.w.shape

    @property
    def dtype(self):
        return self.w.dtype

    def astype(self, dtype) -> "LoRAWeight":
        return LoRAWeight(self.w.astype(dtype), self.a.astype(dtype), self.b.astype(dtype), self.scale,
                          self.dropout_key, self.dropout)

    def __rmatmul__(self, x):
        x_in = x if self.dropout_key is None else _dropout(self.dropout_key, self.dropout, x)
        return x @ self.w + ((x_in @ self.a) @ self.b) * jnp.asarray(self.scale, x.dtype)


def _dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """Inverted dropout (torch's nn.Dropout): each entry zeroed with probability `rate`, the rest scaled by
    1/(1 − rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def _targets(base: Params, config: LoRAConfig) -> list[tuple[tuple[str, ...], Any]]:
    """(path, base kernel) of every adapted kernel; a target the params lack is an error naming the fix."""
    out = []
    for name in config.targets:
        paths = [(group, name) for group in _GROUPS if name in base.get(group, {})]
        if not paths:
            present = [t for t in TARGETS if any(t in base.get(group, {}) for group in _GROUPS)]
            raise ValueError(f"LoRAConfig.targets names {name!r}, which this model does not have (dense FFN "
                             f"kernels are absent when every layer is MoE, shared-expert kernels without MoE); "
                             f"choose LoRAConfig.targets from {present}")
        out += [(path, _get(base, path)) for path in paths]
    if config.lm_head:
        if "lm_head" not in base:
            raise ValueError("LoRAConfig.lm_head=True but this model's LM head is tied to the input embedding (no "
                             "'lm_head' param; tie_word_embeddings): an adapter on it would change the embedding "
                             "too. Set LoRAConfig.lm_head=False")
        out.append((("lm_head",), base["lm_head"]))
    return out


def check_targets(config: LoRAConfig, model_config) -> None:
    """Raises ValueError (naming the field and the fix) when `config` adapts a kernel `model_config`'s params lack."""
    from dllm_rl.models.decoder import param_shapes

    _targets(param_shapes(model_config), config)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def init_lora(base: Params, config: LoRAConfig, rng: jax.Array) -> Params:
    """Fresh adapters {..: {"a": [.., in, r], "b": [.., r, out]}}: A ~ U(±1/√in) (PEFT's kaiming_uniform(a=√5)),
    B = 0; float32 whatever the base dtype."""
    lora: Params = {}
    targets = _targets(base, config)
    for key, (path, w) in zip(jax.random.split(rng, len(targets)), targets):
        *lead, d_in, d_out = w.shape
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(key, (*lead, d_in, config.rank), jnp.float32, -bound, bound)
        _set(lora, path, {"a": a, "b": jnp.zeros((*lead, config.rank, d_out), jnp.float32)})
    return lora


def _with_targets(base: Params, config: LoRAConfig, make) -> Params:
    """Copy of the base tree with every target kernel replaced by make(path, kernel)."""
    out = dict(base)
    for group in _GROUPS:
        if group in base:
            out[group] = dict(base[group])
    for path, w in _targets(base, config):
        _set(out, path, make(path, w))
    return out


def _dropout_keys(base: Params, config: LoRAConfig, rng: jax.Array | None) -> dict:
    """{path: key, or [Ly] keys for stacked kernels} of every target (independent draws per target and layer, as
    PEFT's separate dropout modules); {} without dropout."""
    if rng is None or not config.dropout:
        return {}
    targets = _targets(base, config)
    return {path: jax.random.split(key, w.shape[:-2]) if w.ndim > 2 else key
            for key, (path, w) in zip(jax.random.split(rng, len(targets)), targets)}


def apply_lora(base: Params, lora: Params, config: LoRAConfig, dropout_rng: jax.Array | None = None) -> Params:
    """Params for `models.forward` with an added low-rank path on each target (usable inside jit; see module doc).

    `dropout_rng` (training forwards only) draws the adapter-input dropout of `config.dropout`; None: no dropout.
    """
    keys = _dropout_keys(base, config, dropout_rng)
    return _with_targets(base, config, lambda path, w: LoRAWeight(w, _get(lora, path)["a"], _get(lora, path)["b"],
                                                                  config.scale, keys.get(path), config.dropout))


def merge_lora(base: Params, lora: Params, config: LoRAConfig, *, dtype=None) -> Params:
    """Plain params with W + (α/r)·A@B on each target, computed in float32 and stored as `dtype`.

    dtype None keeps W's dtype only when W is float32. A narrower W raises: rounding the merged kernel to bf16
    loses every update below half a bf16 step of W (most of a small LoRA update), so pass dtype=jnp.float32 for
    an exact merge or W's dtype to round on purpose.
    """

    def merge(path, w):
        out_dtype = dtype if dtype is not None else w.dtype
        if dtype is None and jnp.finfo(w.dtype).bits < 32:
            raise ValueError(f"merge_lora: kernel {'/'.join(path)} is {w.dtype}; merging into it rounds small "
                             "LoRA updates away. Pass dtype=jnp.float32 (exact) or dtype=its dtype (lossy).")
        ad = _get(lora, path)
        delta = jnp.einsum("...ir,...ro->...io", ad["a"].astype(jnp.float32), ad["b"].astype(jnp.float32))
        return (w.astype(jnp.float32) + config.scale * delta).astype(out_dtype)

    return _with_targets(base, config, merge)


def lora_logical_axes(config: LoRAConfig, base_axes: Params) -> Params:
    """Logical axis names of the adapters, from the base kernels' (`models.param_logical_axes(model_config)`): A is
    (..., kernel input, `lora_rank`), B (..., `lora_rank`, kernel output)."""
    axes: Params = {}
    for path, kernel_axes in _targets(base_axes, config):
        *lead, ax_in, ax_out = kernel_axes
        _set(axes, path, {"a": (*lead, ax_in, "lora_rank"), "b": (*lead, "lora_rank", ax_out)})
    return axes


def split_params(params: Params, lora_config: LoRAConfig | None, rng: jax.Array | None = None
                 ) -> tuple[Params, Params | None]:
    """(trainable, frozen): full fine-tuning → (params, None); LoRA → (fresh adapters, base params).

    The optimizer sees only `trainable`; `policy_params` rebuilds the model params from the pair.
    """
    if lora_config is None:
        return params, None
    if rng is None:
        raise ValueError("split_params: LoRA adapters need an rng key for A's initialisation; pass rng=")
    return init_lora(params, lora_config, rng), params


def policy_params(trainable: Params, frozen: Params | None, lora_config: LoRAConfig | None,
                  dropout_rng: jax.Array | None = None) -> Params:
    """Model params of the policy: the trainable tree (full fine-tuning) or base + adapters (LoRA), with the
    adapters' dropout drawn from `dropout_rng` when given (training forwards)."""
    if lora_config is None:
        return trainable
    if frozen is None:
        raise ValueError("policy_params: LoRA needs the frozen base params as `frozen`")
    return apply_lora(frozen, trainable, lora_config, dropout_rng)
