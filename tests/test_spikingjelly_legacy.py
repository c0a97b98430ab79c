"""The spikingjelly adapter under SpikingJelly 0.0.0.0.14 (the generation with ``backend='torch'|'cupy'``).

0.0.0.0.14 cannot be installed beside SpikingJelly 2, so the checks run in one subprocess
whose PYTHONPATH puts a separate install first (tests/helpers/sj_legacy.py locates or creates it:
``$SNNBRIDGE_SJ_LEGACY_DIR`` or ``.cache/sj014``). Never skipped: a missing install is
created, and a failed install fails the tests with the command to run by hand.
"""

from __future__ import annotations

import pytest

from helpers.sj_legacy import VERSION, legacy_dir, run_legacy_checks


@pytest.fixture(scope="module")
def report():
    return run_legacy_checks()


def test_subprocess_imports_the_legacy_generation(report):
    env = report["env"]
    assert env["version"] == VERSION
    assert env["file"].startswith(str(legacy_dir()))
    assert env["generation"] == "0.0.0.0.x"
    assert env["has_activation_aware"] is False  # per-channel thresholds must be realized another way


def test_golden_g5_on_legacy(report):
    g = report["golden"]
    assert g["theta1_T8_v05"] == [0, 0, 1, 2, 4, 8, 8, 8]
    assert g["theta2_T4_v1"] == [0, 1, 1, 2, 2, 3, 4, 4]
    assert g["tie_spikes"] == [0, 0, 0, 1]  # ">=" rule: m(4) = 1.0 exactly fires
    assert g["tie_v_seq"] == [0.625, 0.75, 0.875, 0.0]  # post-reset membrane
    assert g["floor_v0"] == [2, 4, 7]
    assert g["shift_cum"] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert g["v0_cum"] == [0, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("case", ["scalar", "scalar_v0_full", "channel", "channel_v0_full", "channel_bias",
                                  "step_mode_s"])
def test_bit_identical_to_reference(report, case):
    r = report["random"][case]
    assert r["spikes_equal"] and r["v_seq_equal"]
    if "v_last_equal" in r:
        assert r["v_last_equal"]


def test_per_channel_uses_one_ifnode_per_distinct_threshold(report):
    assert report["random"]["groups"] == 4  # 5 channels, two share a threshold
    assert report["random"]["step_mode_s"]["modes"] == ["s"]


@pytest.mark.parametrize("recipe", ["maxnorm", "robustnorm"])
def test_converted_resnet_matches_reference(report, recipe):
    r = report["resnet"][recipe]
    assert r["sites"] and all(r["spikes_equal"].values()), r["spikes_equal"]
    assert r["spike_total"] > 0
    assert r["out_max_diff"] <= 1e-5 * max(1.0, r["out_range"])
    assert r["genuine"] and r["n_nodes"] >= len(r["sites"])
    assert r["reset_net_resets"] and r["rerun_equal"]


def test_legacy_kernel_errors(report):
    e = report["errors"]
    assert e["torch_kernel_ok"] is None
    assert e["cupy_here"].startswith("BackendError") and "CuPy" in e["cupy_here"]
    if not e["cuda_available"]:
        assert "CUDA device" in e["cupy_here"]
    stub = e["cupy_stub_no_cuda"]
    if not e["cuda_available"]:
        assert stub.startswith("BackendError") and "CUDA device" in stub and "import cupy" not in stub
    assert e["triton"].startswith("BackendError") and "'torch' and 'cupy'" in e["triton"]
    assert e["set_backend_nodes"] == ["cupy"]
    assert e["set_backend_cpu"].startswith("BackendError") and "CUDA" in e["set_backend_cpu"]
