"""One monitor period against libvirt's test driver with 10 / 100 / 1000 running domains:
ResCoin's backend (`LibvirtMonitorBackend(uri).read()`: one bulk getAllDomainStats, per-domain
fallbacks for groups the driver leaves empty) versus a per-domain loop of info()/blockStats()/
interfaceStats()/memoryStats(), the way the original prototype polled."""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from xml.etree import ElementTree

import libvirt
from common import ms, timed, write_section
from rescoin.services.monitor.backend_libvirt import STATS, LibvirtMonitorBackend

# one domain as in tests/fixtures/libvirt/host4.xml: a virtio disk, a network interface, a balloon
DOMAIN = """  <domain type='test'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <memory unit='MiB'>512</memory>
    <currentMemory unit='MiB'>512</currentMemory>
    <vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/tmp/rescoin-bench/{name}.img'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <interface type='network'>
        <mac address='{mac}'/>
        <source network='default'/>
        <target dev='vnet{i}'/>
        <model type='virtio'/>
      </interface>
      <memballoon model='virtio'/>
    </devices>
  </domain>"""


def host_xml(n: int) -> str:
    doms = "\n".join(
        DOMAIN.format(
            name=f"d{i}",
            i=i,
            uuid=uuid.UUID(int=i + 1),
            mac=f"52:54:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
        )
        for i in range(n)
    )
    return (
        "<node>\n  <cpu><mhz>3000</mhz><model>x86_64</model><active>64</active><maxcpus>64</maxcpus></cpu>\n"
        f"  <memory>1073741824</memory>\n{doms}\n"
        "  <network><name>default</name><bridge name='virbr0'/><forward/>"
        "<ip address='192.168.122.1' netmask='255.255.255.0'/></network>\n</node>\n"
    )


def device_names(conn: libvirt.virConnect) -> dict[str, tuple[str, str]]:
    """Each domain's disk and interface target, read once from its live XML (the test driver renames
    interface targets to testnetN), as the prototype knew them before polling."""
    out = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        xml = ElementTree.fromstring(dom.XMLDesc(0))
        disk = xml.find("./devices/disk/target").get("dev")  # type: ignore[union-attr]
        iface = xml.find("./devices/interface/target").get("dev")  # type: ignore[union-attr]
        out[dom.name()] = (disk, iface)
    return out


def per_domain_loop(conn: libvirt.virConnect, devices: dict[str, tuple[str, str]]) -> int:
    """The prototype's period: every running domain, four calls."""
    doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    for dom in doms:
        disk, iface = devices[dom.name()]
        dom.info()
        dom.blockStats(disk)
        dom.interfaceStats(iface)
        dom.memoryStats()
    return len(doms)


def main() -> None:
    logging.getLogger("rescoin").setLevel(logging.ERROR)  # the fallback warnings; the doc states them
    rows = [
        "| domains | ResCoin backend `read()` | of which the bulk call | per-domain loop (4 calls each) | loop / ResCoin |",
        "| ---: | --- | --- | --- | ---: |",
    ]
    libvirt.registerErrorHandler(lambda *_: None, None)
    groups = set()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 100, 1000):
            path = Path(tmp) / f"host{n}.xml"
            path.write_text(host_xml(n))
            uri = f"test://{path}"
            backend = LibvirtMonitorBackend(uri)
            reading = backend.read()  # parses every domain's XML once, as a running monitor has
            assert len(reading.domains) == n, len(reading.domains)
            conn = libvirt.openReadOnly(uri)
            devices = device_names(conn)
            assert per_domain_loop(conn, devices) == n
            stats = conn.getAllDomainStats(STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING)
            groups |= {key.split(".")[0] for _dom, st in stats for key in st}
            repeat = 20 if n < 1000 else 7
            t_read = timed(backend.read, repeat=repeat, warmup=1)
            t_bulk = timed(
                lambda c=conn: c.getAllDomainStats(STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING),
                repeat=repeat,
                warmup=1,
            )
            t_loop = timed(lambda c=conn, d=devices: per_domain_loop(c, d), repeat=repeat, warmup=1)
            row = f"| {n:,} | {ms(t_read)} | {ms(t_bulk)} | {ms(t_loop)} | {t_loop[0] / t_read[0]:.2f} |"
            rows.append(row)
            print(row, flush=True)
            fallbacks = sorted(backend.fallbacks)
            conn.close()
            backend.close()
    body = "\n".join(rows) + (
        "\n\nThe host is a generated test-driver XML (`test:///tmp/…/hostN.xml`) of N running domains, each "
        "with a virtio disk, a network interface and a balloon, as in `tests/fixtures/libvirt/host4.xml`. "
        "Both paths use their own read-only connection and have seen every domain once (the backend parses "
        "each domain's XML once and caches it). 20 runs each after a warm-up (1,000 domains: 7).\n\n"
        "**This comparison is unfavourable to the bulk path on the test driver, and says little about a real "
        "host.** Asked for state, cpu-total, balloon, block and interface, the test driver's "
        f"`getAllDomainStats` returns only {', '.join(f'`{g}`' for g in sorted(groups))}; the others "
        f"come back empty, so the backend falls back to per-domain calls for {', '.join(fallbacks) or 'none'} — "
        "the same calls as the loop, plus the bulk call itself and building its readings. On `qemu:///system` "
        "the bulk call carries every group in one round trip (8.3 ms for one VM on a host busy with TCG "
        "guests, docs/DESIGN.md appendix A.7) and the backend makes no per-domain calls; a QEMU host with "
        "1,000 VMs was not available to measure that case. On the test driver every call is in-process and "
        "cheap, so the ratio mostly shows the bulk call's own cost plus the backend's Python per domain "
        "(cached XML facts, assembling each reading). No target was set for this benchmark."
    )
    write_section("Monitor cost versus VM count (libvirt test driver)", body)


if __name__ == "__main__":
    main()
