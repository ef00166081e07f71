"""Device mesh from a spec, logical-axis rules → `NamedSharding`s for params and batches.

Each parameter carries logical axis names (`models.decoder.param_logical_axes`); one rules table maps them to
mesh axes (`data`, `fsdp`, `tensor`), as MaxText's `logical_axis_rules` and big_vision's `sharding.py` do. The
table is `MeshConfig.rules`: the trainer lays out params, LoRA adapters, optimizer state and batches with it, so
changing the parallelism strategy is a config change (`dllm_rl.MeshConfig.rules` in gin). Meshes use Auto axis
types project-wide, so `with_sharding_constraint` works inside jitted code. Layers that lay out their own
`shard_map` (the MoE dispatch's expert parallelism) read the table of `use_rules` while they are traced.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis → mesh axis (or tuple of axes, or None = replicated). FSDP shards the embedding dimension of
# every weight; tensor parallelism shards heads, MLP width and vocabulary (Megatron layout).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("expert", None),  # MoE experts: a mesh axis here (e.g. "fsdp") splits them, expert-parallel (models.moe)
    ("lora_rank", "fsdp"),  # where 'fsdp' is not taken by the factor's other dimension (see lora_shardings)
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Axis sizes (-1 on one axis takes all remaining devices, e.g. {"data": -1, "fsdp": 1, "tensor": 1}) and the
    logical-axis rules table: pairs (logical axis, mesh axis or tuple of mesh axes or None = replicated)."""

    shape: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES


_RULES = contextvars.ContextVar("dllm_rl_rules", default=DEFAULT_RULES)


def current_rules() -> tuple[tuple[str, Any], ...]:
    """The rules table of the innermost `use_rules` (default: DEFAULT_RULES): what layers that lay out their own
    activations inside a trace (the MoE dispatch, `models.moe`) read."""
    return _RULES.get()


@contextlib.contextmanager
def use_rules(rules):
    """Makes `rules` the table `current_rules` returns while tracing inside the `with` block. jit's trace cache
    does not see it: a function traced under one table is not traced again under another (jit it afresh)."""
    token = _RULES.set(tuple(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def resolve_shape(spec: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fills in the -1 axis and checks that the axis sizes multiply to the device count."""
    unknown = sorted(set(spec) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh spec has unknown axes {unknown}; use {list(MESH_AXES)}")
    shape = {axis: int(spec.get(axis, 1)) for axis in MESH_AXES}
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1:
        raise ValueError(f"mesh spec {dict(spec)}: at most one axis may be -1")
    if any(n == 0 or n < -1 for n in shape.values()):
        raise ValueError(f"mesh spec {dict(spec)}: sizes must be positive or -1")
    fixed = math.prod(n for n in shape.values() if n != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh spec {dict(spec)}: {num_devices} devices are not divisible by {fixed}")
        shape[free[0]] = num_devices // fixed
    if math.prod(shape.values()) != num_devices:
        raise ValueError(f"mesh spec {dict(spec)} needs {math.prod(shape.values())} devices, "
                         f"{num_devices} are available; use -1 on one axis to absorb the rest")
    return shape


def make_mesh(spec: Mapping[str, int] | MeshConfig | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all) with Auto axis types."""
    if isinstance(spec, MeshConfig):
        spec = spec.shape
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_shape(spec or MeshConfig().shape, len(devices))
    sizes = tuple(shape[a] for a in MESH_AXES)
    try:
        device_array = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # non-physical topologies (CPU fake devices, subsets): plain row-major order
        device_array = np.asarray(devices).reshape(sizes)
    return Mesh(device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None], rules=DEFAULT_RULES, mesh: Mesh | None = None) -> P:
    """PartitionSpec for one array; a mesh axis is used at most once, and size-1 axes are dropped."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical_axes:
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to the rules table")
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        kept = tuple(a for a in targets if a not in used and (mesh is None or mesh.shape[a] > 1))
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return P(*out)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


def tree_shardings(mesh: Mesh, logical_tree: Any, rules=DEFAULT_RULES) -> Any:
    """Tree of logical-axis tuples → tree of NamedSharding."""
    return jax.tree.map(lambda axes: NamedSharding(mesh, logical_to_spec(axes, rules, mesh)), logical_tree,
                        is_leaf=_is_axes)


def param_shardings(mesh: Mesh, config=None, rules=DEFAULT_RULES) -> Any:
    """NamedSharding per parameter of `config`'s family (same tree as the params); None: LLaDA's tree."""
    from dllm_rl.models.decoder import param_logical_axes

    return tree_shardings(mesh, param_logical_axes(config), rules)


def lora_shardings(mesh: Mesh, lora_config, adapter_shapes: Any, rules=DEFAULT_RULES, model_config=None) -> Any:
    """NamedSharding per LoRA factor (the adapters' tree; `adapter_shapes` holds their shape tuples) of
    `model_config`'s family (None: LLaDA's tree).

    With the default rules every factor is split over 'fsdp' once: A along its input (`embed`) or, where that is
    not an fsdp dimension (ff_out's `mlp`), along the rank; B along the rank. A rank the mesh axes do not divide
    (a small rank on a large mesh) stays whole in that factor: adapters are small, replicating them is cheap.
    """
    from dllm_rl.models.decoder import param_logical_axes
    from dllm_rl.models.lora import lora_logical_axes

    whole_rank = tuple((name, None if name == "lora_rank" else target) for name, target in rules)

    def sharding(axes, shape):
        spec = logical_to_spec(axes, rules, mesh)
        rank_axes = spec[axes.index("lora_rank")]
        if rank_axes is not None and shape[axes.index("lora_rank")] % _size(mesh, rank_axes):
            spec = logical_to_spec(axes, whole_rank, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding, lora_logical_axes(lora_config, param_logical_axes(model_config)), adapter_shapes,
                        is_leaf=_is_axes)


def _size(mesh: Mesh, axes) -> int:
    """Devices along one mesh axis or a tuple of them."""
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of a [B, ...] array: batch over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh))


def batch_ways(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways `batch_sharding` splits a batch: the product of the sizes of the mesh axes its rows go to."""
    axes = batch_sharding(mesh, 1, rules).spec[0]
    return 1 if axes is None else _size(mesh, axes)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_divisible(shapes: Any, shardings: Any, what: str = "parameter") -> None:
    """Raises a clear error, before anything is placed or compiled, when a sharded dimension is not divisible by
    its mesh axes. `shapes`: a shape tuple or a tree of them; `shardings`: the matching NamedSharding(s)."""
    def check(path, shape, sharding):
        for dim, axes in zip(shape, sharding.spec):
            if axes is None:
                continue
            size = _size(sharding.mesh, axes)
            if dim % size:
                raise ValueError(f"{what} {jax.tree_util.keystr(path)} dimension {dim} is not divisible by "
                                 f"mesh axes {axes} (size {size}); change MeshConfig.shape or MeshConfig.rules")
    jax.tree_util.tree_map_with_path(check, shapes, shardings, is_leaf=lambda s: isinstance(s, tuple))


def replicate_off_mesh(tree: Any, mesh: Mesh) -> Any:
    """Leaves not laid out on `mesh` (e.g. the optimizer's step counters, made on one device by `tx.init`) become
    global arrays replicated over it, as multi-process programs and checkpoints need; the rest are unchanged."""
    def place(x):
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
            return x
        return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(x))
    return jax.tree.map(place, tree)
