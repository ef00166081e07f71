"""Train-state checkpoints: params, optimizer state, data state and the optional base round-trip exactly."""
import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.rl import train_state


def _tree(scale):
    return {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * scale, "b": jnp.ones(3, jnp.bfloat16) * scale}


def test_save_then_restore_round_trips(tmp_path):
    manager = train_state.checkpoint_manager(tmp_path / "ckpt", keep=2)
    data_state = {"epoch": 1, "index": 17}
    for step in (0, 1, 2):
        train_state.save(manager, step, _tree(step + 1), (_tree(10 * step),), data_state, base=_tree(-1))
    assert manager.latest_step() == 2
    assert sorted(manager.all_steps()) == [1, 2]  # keep=2
    trainable, opt_state, data, base = train_state.restore(manager, 2, _tree(0), (_tree(0),), _tree(0))
    for got, want in zip(jax.tree.leaves((trainable, opt_state, base)), jax.tree.leaves((_tree(3), (_tree(20),),
                                                                                         _tree(-1)))):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert data == data_state
    manager.close()


def test_restore_without_base(tmp_path):
    manager = train_state.checkpoint_manager(tmp_path / "ckpt", keep=1)
    train_state.save(manager, 5, _tree(2), (), {"i": 0})
    trainable, opt_state, data, base = train_state.restore(manager, 5, _tree(0), ())
    np.testing.assert_array_equal(np.asarray(trainable["w"]), np.asarray(_tree(2)["w"]))
    assert base is None and data == {"i": 0}
    manager.close()
