"""experiments.aot: a training step's programs compiled by libtpu for a TPU topology, on the tiny demo model."""
import json

import pytest

from experiments import aot


def test_parse_mesh():
    assert aot.parse_mesh("data=1, fsdp=8,tensor=1") == {"data": 1, "fsdp": 8, "tensor": 1}


def test_vocab_sorts_finds_sorts_over_the_vocabulary_only():
    hlo = "\n".join([
        "%body.1 (p: f32[2,160]) -> f32[2,160] {",
        "  %s = f32[2,160]{1,0} sort(f32[2,160]{1,0} %p), dimensions={1}",
        "  %t = f32[2,150]{1,0} sort(f32[2,150]{1,0} %q), dimensions={1}",
        "}",
        "ENTRY %main (x: f32[4,160]) -> f32[4,160] {",
        "  %u = f32[4,160]{1,0} sort(f32[4,160]{1,0} %x), dimensions={1}",
    ])
    found = aot.vocab_sorts(hlo, 160)
    assert [f.split(":")[0] for f in found] == ["%body.1", "ENTRY"]


class _Device:
    def __init__(self, kind):
        self.device_kind = kind


def test_device_hbm_splits_a_chip_over_its_devices():
    assert aot.device_hbm_bytes("v5e:2x4", [_Device("TPU v5 lite")] * 8) == 16 * aot.GIB
    assert aot.device_hbm_bytes("v4:2x2x1", [_Device("TPU v4")] * 8) == 16 * aot.GIB  # two cores per chip


def test_demo_config_compiles_for_a_tpu_topology(capsys):
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        pytest.skip(f"libtpu cannot be imported: {e}")
    rows = aot.main(["--topology", "v5e:2x4", "--gin", "experiments/configs/demo.gin",
                     "--mesh", "data=2,fsdp=4,tensor=1", "--programs", "rollout,loss,update"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == rows
    assert [r["program"] for r in rows] == ["rollout", "loss", "update"]
    for r in rows:
        assert r["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
        assert r["chip_hbm_bytes"] == 16 * aot.GIB and r["fits"]
        assert 0 < r["per_chip_bytes"] == r["argument_bytes"] + r["temp_bytes"] + r["output_bytes"] - r["alias_bytes"]
    assert rows[0]["vocab_sorts"] == 0
    # the update donates params and optimizer state: their buffers are reused for the outputs
    assert rows[2]["alias_bytes"] > 0
