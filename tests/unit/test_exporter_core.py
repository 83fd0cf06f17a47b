"""The exporter's core: messages in, metric families out (no sockets, no HTTP)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from rescoin.proto import Envelope, Heartbeat
from rescoin.proto.messages import Applied, Estimate, Sample
from rescoin.services.exporter.core import ExporterCore, LatencyHistogram, entitlement

from tests.support.messages import alloc_envelope, make_alloc

VMS = ["00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"]
CAPACITY = np.array([8.0, 16e9, 4e8, 2e8])
TEMPLATE = np.array([[2.0, 4e9, 1e8, 5e7], [1.0, 2e9, 5e7, 2e7]])
USAGE = np.array([[3.0, 1e9, 2e7, 1e7], [0.5, 1e9, 1e7, 1e6]])
PERIOD_S = 1.0


def sample_env(period: int, vms: list[str] = VMS, host: str = "h1") -> Envelope:
    body = Sample(
        CAPACITY,
        vms,
        [f"vm-{v[-1]}" for v in vms],
        TEMPLATE[: len(vms)],
        USAGE[: len(vms)],
        ["guest"] * len(vms),
        PERIOD_S,
    )
    return Envelope("sample", host, "monitor", 1, period, int(period * 1e9), period, body)


def estimate_env(period: int, estimate: np.ndarray, vms: list[str] = VMS, host: str = "h1") -> Envelope:
    return Envelope("estimate", host, "predictor", 1, period, 0, period, Estimate(vms, estimate, ["ewma_dev"] * 4))


def applied_env(period: int, ceiling: np.ndarray, mode: str = "normal", latency_s: float = 0.004, sent_s: float = 0.0):
    body = Applied(VMS, ceiling, ceiling, np.ones_like(ceiling), [], latency_s, mode, "sim", 0, ["bbbb"] * len(VMS), [])
    return Envelope("applied", "h1", "actuator", 1, period, int(sent_s * 1e9), period, body)


def hb_env(service: str, state: str = "ok", counters: dict[str, int] | None = None) -> Envelope:
    return Envelope("hb", "h1", service, 1, 0, 0, 9, Heartbeat(service, state, PERIOD_S, counters or {"received": 3}))


def scrape(core: ExporterCore, now: float) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one collect()."""
    return {(s.name, frozenset(s.labels.items())): s.value for family in core.collect(now) for s in family.samples}


def value(scraped: dict, metric: str, **labels: str) -> float:
    return scraped[(metric, frozenset(labels.items()))]


def alloc_for(period: int, alloc: np.ndarray, estimate_source: str = "estimate", enforcement: str = "both"):
    body = make_alloc(VMS, alloc, TEMPLATE, USAGE, CAPACITY, enforcement=enforcement)
    if estimate_source != "estimate":
        body = type(body)(**{**{f: getattr(body, f) for f in body.__slots__}, "estimate_source": estimate_source})
    return alloc_envelope(period, body)


def test_shares_are_exported_for_rate_resources_only_with_the_samples_names():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    alloc = alloc_for(11, TEMPLATE.copy())
    core.on_message(alloc, now=0.0)
    got = scrape(core, 0.0)
    shares = alloc.body.shares
    assert value(got, "rescoin_vm_shares_cpu_cores", host="h1", vm=VMS[0], name="vm-a") == shares[0, 0]
    assert value(got, "rescoin_vm_shares_network_bytes_per_second", host="h1", vm=VMS[1], name="vm-b") == shares[1, 3]
    assert not any(name == "rescoin_vm_shares_memory_bytes" for name, _ in got)  # memory has no weight
    # the allocation now carries the domain name too, as the sample's series do
    assert value(got, "rescoin_vm_allocation_cpu_cores", host="h1", vm=VMS[0], name="vm-a") == TEMPLATE[0, 0]


def test_ceilings_in_force_come_from_applied_and_none_is_no_series():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    ceiling = np.array([[2.5, -1.0, 1e8, -1.0], [-1.0, 3e9, -1.0, -1.0]])
    core.on_message(applied_env(11, ceiling), now=0.0)
    got = scrape(core, 0.0)
    ceilings = {(n, dict(labels)["vm"]): v for (n, labels), v in got.items() if n.startswith("rescoin_vm_ceiling_")}
    assert ceilings == {
        ("rescoin_vm_ceiling_cpu_cores", VMS[0]): 2.5,
        ("rescoin_vm_ceiling_disk_bytes_per_second", VMS[0]): 1e8,
        ("rescoin_vm_ceiling_memory_bytes", VMS[1]): 3e9,
    }


def test_a_vm_gone_from_the_sample_leaves_the_new_series_too():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    core.on_message(applied_env(11, np.full((2, 4), 1.0)), now=0.0)
    core.on_message(alloc_for(11, TEMPLATE.copy()), now=0.0)
    core.on_message(sample_env(11, vms=VMS[:1]), now=0.0)
    vms = {dict(labels).get("vm") for name, labels in scrape(core, 0.0) if name.startswith("rescoin_vm_")}
    assert vms == {VMS[0]}


def test_entitlement_pairs_the_alloc_with_the_estimate_of_its_period():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    estimate = np.array([[1.5, 5e9, 2e8, 1e7], [0.2, 1e9, 1e7, 3e7]])
    core.on_message(estimate_env(11, estimate), now=0.0)
    core.on_message(estimate_env(12, estimate * 10), now=0.0)  # the next period's: not this alloc's
    core.on_message(alloc_for(11, TEMPLATE.copy()), now=0.0)
    got = scrape(core, 0.0)
    expected = np.minimum(estimate, TEMPLATE)
    assert value(got, "rescoin_vm_entitlement_cpu_cores", host="h1", vm=VMS[0], name="vm-a") == expected[0, 0]
    assert value(got, "rescoin_vm_entitlement_memory_bytes", host="h1", vm=VMS[0], name="vm-a") == expected[0, 1]
    assert value(got, "rescoin_vm_entitlement_network_bytes_per_second", host="h1", vm=VMS[1], name="vm-b") == 2e7


def test_entitlement_uses_the_use_where_the_scheduler_did():
    alloc = alloc_for(11, TEMPLATE.copy(), estimate_source="last_use").body
    assert np.array_equal(entitlement(alloc, None), np.minimum(USAGE, TEMPLATE))
    # a VM the estimate lacks was allocated on its use (estimate_row_missing)
    alloc = alloc_for(11, TEMPLATE.copy()).body
    partial = Estimate(VMS[1:], np.array([[0.1, 1.0, 1.0, 1.0]]), ["ewma_dev"] * 4)
    got = entitlement(alloc, partial)
    assert np.array_equal(got[0], np.minimum(USAGE[0], TEMPLATE[0]))
    assert np.array_equal(got[1], [0.1, 1.0, 1.0, 1.0])


def test_no_entitlement_is_claimed_without_the_estimate_it_was_made_from():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    core.on_message(estimate_env(11, USAGE), now=0.0)
    core.on_message(alloc_for(11, TEMPLATE.copy()), now=0.0)
    assert any(n.startswith("rescoin_vm_entitlement_") for n, _ in scrape(core, 0.0))
    core.on_message(alloc_for(12, TEMPLATE.copy()), now=0.0)  # its estimate never came
    assert not any(n.startswith("rescoin_vm_entitlement_") for n, _ in scrape(core, 0.0))


def test_message_age_counts_from_arrival_per_kind():
    core = ExporterCore()
    core.on_message(sample_env(10), now=100.0)
    core.on_message(alloc_for(11, TEMPLATE.copy()), now=100.4)
    got = scrape(core, 103.0)
    assert value(got, "rescoin_message_age_seconds", host="h1", kind="sample") == pytest.approx(3.0)
    assert value(got, "rescoin_message_age_seconds", host="h1", kind="alloc") == pytest.approx(2.6)
    assert value(got, "rescoin_host_period_seconds", host="h1") == PERIOD_S
    assert ("rescoin_message_age_seconds", frozenset({"host": "h1", "kind": "applied"}.items())) not in got


def test_control_loop_latency_runs_from_the_measured_periods_end_to_applied():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    # applied for period 11 sent 30 ms after period 11 began (10 ended): the loop took 30 ms
    core.on_message(applied_env(11, np.ones((2, 4)), latency_s=0.004, sent_s=11 * PERIOD_S + 0.03), now=0.0)
    core.on_message(applied_env(12, np.ones((2, 4)), latency_s=0.2, sent_s=12 * PERIOD_S + 0.7), now=0.0)
    # fail-safe and restore answer no sample: they are no loop
    core.on_message(applied_env(13, np.ones((2, 4)), mode="failsafe", sent_s=13 * PERIOD_S + 5), now=0.0)
    got = scrape(core, 0.0)
    loop = "rescoin_control_loop_latency_seconds"
    assert value(got, f"{loop}_count", host="h1") == 2
    assert value(got, f"{loop}_sum", host="h1") == pytest.approx(0.73)
    assert value(got, f"{loop}_bucket", host="h1", le="0.025") == 0
    assert value(got, f"{loop}_bucket", host="h1", le="0.05") == 1
    assert value(got, f"{loop}_bucket", host="h1", le="1.0") == 2
    apply = "rescoin_actuator_apply_latency_seconds"
    assert value(got, f"{apply}_bucket", host="h1", le="0.005") == 1
    assert value(got, f"{apply}_sum", host="h1") == pytest.approx(0.204)


def test_a_clock_step_back_is_not_a_latency():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    core.on_message(applied_env(11, np.ones((2, 4)), sent_s=11 * PERIOD_S - 2.0), now=0.0)
    got = scrape(core, 0.0)
    assert value(got, "rescoin_control_loop_latency_seconds_count", host="h1") == 0
    assert value(got, "rescoin_actuator_apply_latency_seconds_count", host="h1") == 1


def test_latency_histogram_buckets_are_cumulative_and_inclusive():
    hist = LatencyHistogram((0.1, 1.0))
    for v in (0.1, 0.5, 3.0):
        hist.observe(v)
    assert hist.buckets() == [("0.1", 1.0), ("1.0", 2.0), ("+Inf", 3.0)]


def test_heartbeat_metrics_are_unchanged():
    core = ExporterCore(down_after_misses=3)
    core.on_message(hb_env("predictor", counters={"received": 7, "rejected.period": 1}), now=10.0)
    core.on_message(hb_env("actuator", state="failsafe"), now=12.0)
    got = scrape(core, 13.5)
    assert value(got, "rescoin_service_up", host="h1", service="predictor") == 0.0  # 3.5 s > 3 × 1 s
    assert value(got, "rescoin_service_up", host="h1", service="actuator") == 1.0
    assert value(got, "rescoin_service_state", host="h1", service="actuator", state="failsafe") == 1.0
    assert value(got, "rescoin_service_events_total", host="h1", service="predictor", counter="rejected.period") == 1


def test_the_exposition_is_valid_text_with_every_family_once():
    core = ExporterCore()
    core.on_message(sample_env(10), now=0.0)
    core.on_message(estimate_env(11, USAGE), now=0.0)
    core.on_message(alloc_for(11, TEMPLATE.copy()), now=0.0)
    core.on_message(applied_env(11, np.ones((2, 4)), sent_s=11.01), now=0.0)
    core.on_message(hb_env("monitor"), now=0.0)

    class Once:
        def collect(self):
            return core.collect(0.5)

    registry = CollectorRegistry()
    registry.register(Once())
    text = generate_latest(registry).decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert 'rescoin_control_loop_latency_seconds_bucket{host="h1",le="+Inf"} 1.0' in text


def host_hb(host: str, service: str) -> Envelope:
    return Envelope("hb", host, service, 1, 0, 0, 9, Heartbeat(service, "ok", PERIOD_S, {"received": 1}))


def test_hosts_and_services_not_heard_for_forget_after_leave_the_metrics():
    core = ExporterCore(forget_after_s=100.0)
    core.on_message(sample_env(10, host="old"), now=0.0)
    core.on_message(alloc_envelope(11, make_alloc(VMS, TEMPLATE.copy(), TEMPLATE, USAGE, CAPACITY)), now=0.0)
    core.on_message(estimate_env(11, USAGE), now=0.0)  # h1: its sample below keeps the whole host
    core.on_message(host_hb("old", "monitor"), now=0.0)
    core.on_message(sample_env(10, host="h1"), now=90.0)
    core.on_message(host_hb("h1", "monitor"), now=90.0)
    assert core.forget(100.0) == 0  # exactly forget_after_s: still kept
    assert core.forget(150.0) == 2  # host "old" and ("old", "monitor"); h1 was heard at 90
    hosts = {dict(labels).get("host") for _, labels in scrape(core, 150.0)}
    assert hosts == {"h1"}
    assert core.counters.snapshot()["series_forgotten"] == 2
    assert ("h1", "alloc") in core.latest and "h1" in core.estimates  # a host goes whole or not at all
    assert core.total_vms == len(VMS)
    core.on_period(0, now=191.0)  # on_period forgets too
    assert not any(dict(labels).get("host") for _, labels in scrape(core, 191.0))
    assert core.total_vms == 0 and not core.heard and not core.beats and not core.estimates and not core.entitled


def test_a_forgotten_host_comes_back_when_it_speaks_again():
    core = ExporterCore(forget_after_s=10.0)
    core.on_message(sample_env(10), now=0.0)
    core.forget(20.0)
    core.on_message(sample_env(30), now=21.0)
    assert value(scrape(core, 21.0), "rescoin_host_period_seconds", host="h1") == PERIOD_S


def test_distinct_services_are_capped_counted_and_logged_rate_limited(caplog):
    core = ExporterCore(max_services=100)
    for i in range(100):
        core.on_message(host_hb("h1", f"svc{i}"), now=0.0)
    with caplog.at_level("WARNING", logger="rescoin.exporter"):
        for i in range(100, 5000):
            core.on_message(host_hb("h1", f"svc{i}"), now=0.0)
    core.on_message(host_hb("h1", "svc7"), now=5.0)  # one already kept still updates
    got = scrape(core, 5.0)
    assert len([k for k in got if k[0] == "rescoin_service_up"]) == 100
    assert value(got, "rescoin_service_last_period", host="h1", service="svc7") == 9.0
    counters = core.counters.snapshot()
    assert counters["series_capped"] == counters["series_capped.service"] == 4900
    assert len(caplog.records) == core.counters.max_warnings  # per period, the rest counted
    assert "max_services" in caplog.records[0].getMessage()


def test_hosts_and_vms_are_capped():
    core = ExporterCore(max_hosts=2, max_vms=3)
    core.on_message(sample_env(10, host="a"), now=0.0)  # 2 VMs
    core.on_message(sample_env(10, host="b", vms=VMS[:1]), now=0.0)  # 1 VM: 3 in all
    core.on_message(sample_env(10, host="c", vms=VMS[:1]), now=0.0)  # a third host
    assert core.counters.snapshot()["series_capped.host"] == 1
    core.on_message(sample_env(11, host="b"), now=0.0)  # b grows to 2 VMs: 4 > 3
    assert core.counters.snapshot()["series_capped.vm"] == 1
    core.on_message(estimate_env(11, USAGE[:1], vms=VMS[:1], host="b"), now=0.0)  # no more VMs: fine
    core.on_message(sample_env(12, host="a", vms=VMS[:1]), now=0.0)  # a shrinks to 1 VM...
    core.on_message(sample_env(12, host="b"), now=0.0)  # ...so b may grow
    assert core.total_vms == 3
    assert core.counters.snapshot()["series_capped"] == 2
    got = scrape(core, 0.0)
    assert {dict(labels)["host"] for name, labels in got if name == "rescoin_vm_usage_cpu_cores"} == {"a", "b"}
    assert value(got, "rescoin_vm_usage_cpu_cores", host="b", vm=VMS[1], name="vm-b") == USAGE[1, 0]
