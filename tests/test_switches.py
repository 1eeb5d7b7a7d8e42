"""The test and fault switches (rayot.switches): what a sweep carries to its trials, and how a
trial process takes them over."""

import os

from rayot import switches


def test_a_trial_takes_over_exactly_the_switches_its_sweep_carried(monkeypatch):
    monkeypatch.setenv(switches.FAULT, "1:/tmp/marker")
    monkeypatch.setenv(switches.IMAGE_READ_LOG, "")
    monkeypatch.setenv("RAYOT_LEASE_TTL_S", "30")  # a user setting: not a switch
    carried = switches.carried()  # the test session's own mark (conftest) among them
    assert carried.items() >= {switches.FAULT: "1:/tmp/marker", switches.IMAGE_READ_LOG: ""}.items()
    assert all(name.startswith("RAYOT_TEST_") for name in carried)
    assert switches.value(switches.IMAGE_READ_LOG) is None  # set but empty: off

    # a process of a Ray started before the sweep: a stale switch of its own, none of the sweep's
    monkeypatch.delenv(switches.FAULT)
    monkeypatch.setenv(switches.RUN_LOG, "/tmp/stale")
    switches.adopt(carried)
    assert switches.value(switches.FAULT) == "1:/tmp/marker"
    assert switches.RUN_LOG not in os.environ
    assert os.environ["RAYOT_LEASE_TTL_S"] == "30"
