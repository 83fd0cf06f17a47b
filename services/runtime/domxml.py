"""What ResCoin reads from a libvirt domain's XML: size, devices, template metadata.

Shared by the monitor's and the actuator's libvirt backends. The template a VM
was sold can be stored in the domain itself, in libvirt's ``<metadata>``::

    <metadata>
      <rescoin:template xmlns:rescoin="https://rescoin.dev/xmlns/template/1">
        <rescoin:cpu cores="1.5"/>          <!-- optional; default: the vcpus -->
        <rescoin:mem bytes="1073741824"/>   <!-- optional; default: the memory size -->
        <rescoin:disk bps="10485760"/>      <!-- disk read+write bytes/s -->
        <rescoin:net bps="1250000"/>        <!-- network rx+tx bytes/s -->
      </rescoin:template>
    </metadata>

(``virsh metadata DOMAIN https://rescoin.dev/xmlns/template/1 --key rescoin
--set '<template><disk bps="10485760"/></template>'`` writes it on a live host.)

The actuator keeps ResCoin's own state of a VM in the domain too, so that it
travels with a live migration (libvirt carries a domain's metadata along)::

    <rescoin:state xmlns:rescoin="https://rescoin.dev/xmlns/state/1">
      <rescoin:coins cpu="0.8" mem="0.1" disk="0" net="0.02" period="1765000000"/>
      <rescoin:original resource="cpu" ceiling="-1" weight="1"/>   <!-- one per resource read -->
    </rescoin:state>

``coins``: the VM's balance when written (the destination's scheduler starts
from it, not from 0); ``original``: the settings found before ResCoin's first
write on the first host it ran on (the destination restores those, not the
source's ResCoin-set values). Whoever can define domains can write this, so
the receivers bound what they accept.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

TEMPLATE_NS = "https://rescoin.dev/xmlns/template/1"
STATE_NS = "https://rescoin.dev/xmlns/state/1"  # what ResCoin keeps in the domain: it travels with a migration
TEMPLATE_FIELDS = (("cpu", "cores"), ("mem", "bytes"), ("disk", "bps"), ("net", "bps"))
RESOURCE_NAMES = tuple(name for name, _ in TEMPLATE_FIELDS)
_UNIT_BYTES = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
}


class DomainXMLError(ValueError):
    """The XML lacks what ResCoin needs, or holds nonsense."""


@dataclass(frozen=True)
class DomainFacts:
    uuid: str
    name: str
    vcpus: int
    mem_max_bytes: float
    disks: list[str] = field(default_factory=list)  # target devs: vda, vdb
    interfaces: list[str] = field(default_factory=list)  # host-side target devs: vnet0
    disk_sources: list[str] = field(default_factory=list)  # host paths behind `disks` ("" if none), same order
    macs: list[str] = field(default_factory=list)  # guest MAC of each of `interfaces`, same order
    template: tuple[float | None, float | None, float | None, float | None] = (None, None, None, None)
    template_problem: str = ""  # a malformed <rescoin:template>: ignored (None above), said here
    balloon: bool = True  # a balloon device (<memballoon model='none'> has none)
    hugepages: bool = False  # hugepage-backed memory: a balloon frees nothing on the host
    hostless_nics: list[str] = field(default_factory=list)  # NIC types with no host tap (user, vhostuser, hostdev…)
    macvtap: bool = False  # an <interface type='direct'>: traffic bypasses the host's own tap ingress
    carried_coins: tuple[float, float, float, float] | None = None  # <rescoin:state>'s coins
    carried_originals: tuple[tuple[float, float] | None, ...] | None = None  # per resource (ceiling, weight)


def _memory_bytes(elem: ET.Element | None) -> float:
    text = (elem.text or "").strip() if elem is not None else ""
    if elem is None or not text:
        raise DomainXMLError("no <memory> element")
    unit = elem.get("unit", "KiB").lower()
    if unit not in _UNIT_BYTES:
        raise DomainXMLError(f"unknown memory unit {unit!r}")
    return float(text) * _UNIT_BYTES[unit]


TAP_TYPES = ("network", "bridge", "ethernet", "direct")  # NIC types with a host device ResCoin can shape


def _devs(root: ET.Element, path: str) -> list[str]:
    """The ``dev`` names of the <target> elements at ``path``, in order."""
    return [dev for t in root.findall(path) if (dev := t.get("dev"))]


def _mac(interface: ET.Element) -> str:
    mac = interface.find("mac")
    return "" if mac is None else mac.get("address", "").lower()


def _disk_source(disk: ET.Element) -> str:
    source = disk.find("source")
    if source is None:
        return ""
    return source.get("file") or source.get("dev") or ""


def parse_domain_xml(xml: str) -> DomainFacts:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXMLError(f"not XML: {exc}") from exc
    vcpu = root.find("vcpu")
    try:
        vcpus = int(vcpu.get("current", vcpu.text or "")) if vcpu is not None else 1
    except (TypeError, ValueError) as exc:
        raise DomainXMLError("bad <vcpu>") from exc
    try:
        template, problem = _template(root), ""
    except DomainXMLError as exc:  # one VM's typo costs only its own template, never its enforcement
        template, problem = [None, None, None, None], f"<rescoin:template> ignored: {exc}"
    try:
        coins, originals = _state(root)
    except DomainXMLError as exc:
        coins, originals = None, None
        problem = f"{problem}; " if problem else ""
        problem += f"<rescoin:state> ignored: {exc}"
    balloon = root.find("devices/memballoon")
    nics = root.findall("devices/interface")
    tapped = [nic for nic in nics if nic.get("type") in TAP_TYPES and nic.find("target") is not None]
    return DomainFacts(
        uuid=(root.findtext("uuid") or "").strip().lower(),
        name=(root.findtext("name") or "").strip(),
        vcpus=vcpus,
        mem_max_bytes=_memory_bytes(root.find("memory")),
        disks=_devs(root, "devices/disk[@device='disk']/target"),
        interfaces=[dev for nic in tapped if (dev := nic.find("target").get("dev", ""))],  # type: ignore[union-attr]
        disk_sources=[
            _disk_source(d) for d in root.findall("devices/disk[@device='disk']") if d.find("target") is not None
        ],
        macs=[_mac(nic) for nic in tapped if nic.find("target").get("dev", "")],  # type: ignore[union-attr]
        template=(template[0], template[1], template[2], template[3]),
        template_problem=problem,
        balloon=balloon is not None and balloon.get("model", "virtio") != "none",
        hugepages=root.find("memoryBacking/hugepages") is not None,
        hostless_nics=[nic.get("type", "?") for nic in nics if nic not in tapped],
        macvtap=any(nic.get("type") == "direct" for nic in nics),
        carried_coins=coins,
        carried_originals=originals,
    )


def _number(elem: ET.Element, attr: str) -> float:
    raw = elem.get(attr)
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DomainXMLError(f"{elem.tag.split('}')[-1]} {attr}={raw!r} is not a finite number")
    return value


def _state(root: ET.Element) -> tuple[tuple[float, float, float, float] | None, tuple | None]:
    """<rescoin:state>: (coins, originals per resource), each None where absent."""
    state = root.find(f"metadata/{{{STATE_NS}}}state")
    if state is None:
        return None, None
    coins_elem = state.find(f"{{{STATE_NS}}}coins")
    coins = None
    if coins_elem is not None:
        c, m, d, n = (_number(coins_elem, r) for r in RESOURCE_NAMES)
        coins = (c, m, d, n)
    found: list[tuple[float, float] | None] = [None] * 4
    for elem in state.findall(f"{{{STATE_NS}}}original"):
        resource = elem.get("resource", "")
        if resource not in RESOURCE_NAMES:
            raise DomainXMLError(f"original resource={resource!r}")
        found[RESOURCE_NAMES.index(resource)] = (_number(elem, "ceiling"), _number(elem, "weight"))
    return coins, (tuple(found) if any(o is not None for o in found) else None)


def state_xml(coins: tuple[float, ...] | None, originals: list | None, period: int) -> str:
    """The <state> element (libvirt's setMetadata adds the namespace prefix) for ``parse_domain_xml``."""
    parts = []
    if coins is not None:
        values = " ".join(f'{r}="{float(v)!r}"' for r, v in zip(RESOURCE_NAMES, coins, strict=True))
        parts.append(f'<coins {values} period="{int(period)}"/>')
    for resource, original in zip(RESOURCE_NAMES, originals or [], strict=False):
        if original is not None:
            parts.append(
                f'<original resource="{resource}" ceiling="{float(original[0])!r}" weight="{float(original[1])!r}"/>'
            )
    return "<state>" + "".join(parts) + "</state>"


def _template(root: ET.Element) -> list[float | None]:
    template: list[float | None] = [None, None, None, None]
    meta = root.find(f"metadata/{{{TEMPLATE_NS}}}template")
    if meta is not None:
        for i, (tag, attr) in enumerate(TEMPLATE_FIELDS):
            elem = meta.find(f"{{{TEMPLATE_NS}}}{tag}")
            raw = elem.get(attr) if elem is not None else None
            if raw is not None:
                try:
                    value = float(raw)
                except ValueError as exc:
                    raise DomainXMLError(f"template {tag} {attr}={raw!r} is not a number") from exc
                if not math.isfinite(value) or value < 0:
                    raise DomainXMLError(f"template {tag} {attr} must be a finite number >= 0")
                template[i] = value
    return template
