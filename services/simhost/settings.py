"""[simhost]: the trace-driven virtual host of the demo (rescoin-simhost)."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import between, non_negative, positive, setting


def _four_fractions(value: list[float]) -> str | None:
    if len(value) != 4 or not all(0.0 <= v <= 1.0 for v in value):
        return "must be 4 numbers in [0, 1] (cpu, mem, disk, net)"
    return None


def _capacity(value: list[float]) -> str | None:
    if value and (len(value) != 4 or not all(v > 0 for v in value)):
        return "must be empty (derived) or 4 positive numbers (cores, bytes, bytes/s, bytes/s)"
    return None


def _endpoint(value: str) -> str | None:
    return None if value.startswith(("tcp://", "ipc://")) else "must be a tcp:// or ipc:// endpoint"


@dataclass
class SimhostSettings:
    """The sim host: VMs replaying real traces, served to the monitor and actuator sim backends."""

    endpoint: str = setting(
        "tcp://127.0.0.1:7720",
        "request/reply endpoint the sim host binds and the sim backends connect to",
        _endpoint,
    )
    traces_dir: str = setting(
        "",
        "the traces to replay: a shipped set ('bitbrains') or a directory of Bitbrains .csv.gz files, as "
        "`rescoin evaluate --trace` names them; empty = the month shipped in the package",
    )
    traces: list[str] = setting([], "trace files (VM ids, e.g. '7') to replay, one VM each; empty = the first n_vms")
    state_file: str = setting(
        "simhost.json", "the sim host's tunables and trace position, relative to host.state_dir (kept across restarts)"
    )
    n_vms: int = setting(
        8,
        "how many VMs when `traces` is empty; more than the trace files reuse them, shifted in time",
        between(1, 10000),
    )
    samples_per_period: int = setting(
        1, "trace samples (5 min each) advanced per control period: the time compression", positive
    )
    start_sample: int = setting(0, "trace sample replayed at period 0 (offset)", non_negative)
    template_fraction: list[float] = setting(
        [0.25, 0.5, 0.25, 0.25],
        "template = this fraction of each VM's provisioned size (cpu, mem, disk, net)",
        _four_fractions,
    )
    contention: list[float] = setting(
        [0.5, 0.5, 0.5, 0.5],
        "host capacity between sum of templates (0) and peak total demand (1), per resource",
        _four_fractions,
    )
    capacity: list[float] = setting(
        [],
        "explicit host capacity (cores, bytes, bytes/s, bytes/s); empty = from contention",
        _capacity,
    )
    stop_grace_s: float = setting(
        10.0,
        "on SIGTERM keep serving (the actuator restores through us) until quiet for 2 periods, at most this long",
        non_negative,
    )
    rpc_timeout_s: float = setting(2.0, "sim backends: how long to wait for a reply before reconnecting", positive)
