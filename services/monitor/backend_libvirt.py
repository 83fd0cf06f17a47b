"""The monitor's libvirt backend: one bulk getAllDomainStats per period, any URI.

Driver differences handled here and nowhere else:

* a stats group the driver returns empty (libvirt's test driver answers only
  ``state``) falls back to the per-domain call for that group — ``info()``
  cpu time, ``blockStats`` per disk, ``interfaceStats`` per NIC (device names
  read back from the XML), ``memoryStats`` — logged once and shown in `hb`;
* sizes, devices and ``<rescoin:template>`` metadata come from the domain XML,
  read when a domain first appears and every ``xml_refresh_periods`` after;
* libvirtd going away: the connection is dropped and reopened on the next
  period; until then ``read()`` raises BackendError (no sample is published).

Units converted here: libvirt's KiB (balloon) to bytes; cpu time is already ns.
"""

from __future__ import annotations

import logging
import time

import libvirt

from ..runtime.domxml import DomainFacts, DomainXMLError, parse_domain_xml
from ..runtime.host import HostFactsError, host_memory_bytes, usable_cores
from ..runtime.libvirt_conn import LibvirtConnection, LibvirtDown
from .backend import BackendError, DomainReading, HostCapacity, HostReading

log = logging.getLogger("rescoin.monitor.libvirt")

STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)
GROUP_KEYS = {"cpu": "cpu.time", "balloon": "balloon.current", "block": "block.count", "interface": "net.count"}
KIB = 1024


class LibvirtMonitorBackend:
    name = "libvirt"

    def __init__(self, uri: str, xml_refresh_periods: int = 60) -> None:
        self.uri = uri
        self.xml_refresh_periods = xml_refresh_periods
        self.libvirt = LibvirtConnection(uri, read_only=True)
        self.facts: dict[str, tuple[int, DomainFacts]] = {}  # uuid -> (reads since parsed, facts)
        self.fallbacks: set[str] = set()

    def read(self) -> HostReading:
        try:
            conn = self.libvirt.get()
        except LibvirtDown as exc:
            raise BackendError(str(exc)) from exc
        try:
            stats = conn.getAllDomainStats(STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING)
            ts_ns, monotonic_ns = time.time_ns(), time.monotonic_ns()
            empty = {g for g, key in GROUP_KEYS.items() if stats and not any(key in st for _d, st in stats)}
            self._note_fallbacks(empty)
            domains = []
            for dom, st in stats:
                reading = self._reading(dom, st, empty)
                if reading is not None:
                    domains.append(reading)
        except libvirt.libvirtError as exc:
            if self.libvirt.failed(exc):
                raise BackendError(f"lost {self.uri}: {exc}") from exc
            raise BackendError(f"getAllDomainStats on {self.uri}: {exc}") from exc
        live = {d.uuid for d in domains}
        self.facts = {u: f for u, f in self.facts.items() if u in live}
        return HostReading(ts_ns, sorted(domains, key=lambda d: d.uuid), monotonic_ns)  # stable rows

    def _note_fallbacks(self, empty: set[str]) -> None:
        for group in empty - self.fallbacks:
            log.warning("driver of %s returns the %s stats group empty: using per-domain calls for it", self.uri, group)
        self.fallbacks |= empty

    def _facts(self, dom: libvirt.virDomain) -> DomainFacts:
        uuid = dom.UUIDString().lower()
        age, facts = self.facts.get(uuid, (self.xml_refresh_periods, None))
        if facts is None or age >= self.xml_refresh_periods:
            facts = parse_domain_xml(dom.XMLDesc(0))
            age = 0
            if facts.template_problem:
                log.warning("domain %s: %s (the configured template is used)", dom.name(), facts.template_problem)
        self.facts[uuid] = (age + 1, facts)
        return facts

    def _reading(self, dom: libvirt.virDomain, st: dict, empty: set[str]) -> DomainReading | None:
        try:
            facts = self._facts(dom)
        except (DomainXMLError, libvirt.libvirtError) as exc:
            log.warning("skipping domain %s: %s", dom.name(), exc)
            return None
        if "cpu" in empty or "cpu.time" not in st:
            cpu_ns = float(dom.info()[4])
        else:
            cpu_ns = _get(st, "cpu.time")
        if "block" in empty:
            disk = sum(float(s[1] + s[3]) for s in (dom.blockStats(d) for d in facts.disks))
        else:
            disk = sum(
                _get(st, f"block.{i}.rd.bytes") + _get(st, f"block.{i}.wr.bytes")
                for i in range(int(st.get("block.count", 0)))
            )
        if "interface" in empty:
            net = sum(float(s[0] + s[4]) for s in (dom.interfaceStats(d) for d in facts.interfaces))
        else:
            net = sum(
                _get(st, f"net.{i}.rx.bytes") + _get(st, f"net.{i}.tx.bytes")
                for i in range(int(st.get("net.count", 0)))
            )
        balloon = {k.split(".", 1)[1]: v for k, v in st.items() if k.startswith("balloon.")}
        if "balloon" in empty:
            balloon = dom.memoryStats()
        current = float(balloon.get("current", balloon.get("actual", facts.mem_max_bytes / KIB))) * KIB
        return DomainReading(
            uuid=facts.uuid or dom.UUIDString().lower(),
            name=facts.name or dom.name(),
            vcpus=float(facts.vcpus),
            mem_max_bytes=float(balloon.get("maximum", facts.mem_max_bytes / KIB)) * KIB,
            mem_current_bytes=current,
            cpu_time_ns=cpu_ns,
            disk_bytes=disk,
            net_bytes=net,
            balloon_used_bytes=_balloon_used(balloon),
            template=facts.template,
            balloon_unreclaimable_bytes=_balloon_unreclaimable(balloon),
            balloon_stats_at_s=_float_or_none(balloon.get("last-update", balloon.get("last_update"))),
            carried_coins=facts.carried_coins,
        )

    def capacity(self) -> HostCapacity:
        try:  # isolated cores and the hugepage pool are no VM's to share (runtime/host.py)
            return HostCapacity(usable_cores(), host_memory_bytes())
        except HostFactsError as exc:
            raise BackendError(str(exc)) from exc

    def info(self) -> dict[str, str | int | float | bool]:
        return {
            "backend": "libvirt",
            "uri": self.uri,
            "fallback_groups": ",".join(sorted(self.fallbacks)) or "none",
            "connects": self.libvirt.connects,
        }

    def close(self) -> None:
        self.libvirt.drop()


def _get(st: dict, key: str, default: float = 0.0) -> float:
    return float(st.get(key, default))


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _balloon_used(balloon: dict) -> float | None:
    """In-use memory from balloon stats (KiB → bytes): available − usable, else rss."""
    if "available" in balloon and "usable" in balloon:
        return max(float(balloon["available"]) - float(balloon["usable"]), 0.0) * KIB
    if "rss" in balloon:
        return float(balloon["rss"]) * KIB
    return None


def _balloon_unreclaimable(balloon: dict) -> float | None:
    """What the guest cannot give back (KiB → bytes): the balloon's actual size − what the guest could
    still use without swapping (``usable``, its MemAvailable). None without the guest's stats."""
    actual = balloon.get("current", balloon.get("actual"))
    if actual is None or "usable" not in balloon:
        return None
    return max(float(actual) - float(balloon["usable"]), 0.0) * KIB
