"""ResCoin's own network shaping with tc: shares as guaranteed rates on one link.

libvirt's ``setInterfaceParameters`` shapes each tap on its own (and needs
sch_sfq and act_police, which this lab's kernel lacks: docs/DESIGN.md appendix A.11),
so it can cap a VM but cannot guarantee it anything against its neighbours.

``SharedLinkShaper`` (docs/DESIGN.md §7.9): ONE htb tree per host and direction, shared
by all VMs, so a class's ``rate`` is a guarantee against the neighbours. Up
(guest → host): a u32 match-all filter on each tap's ingress hook mirreds to
the ifb ``rcb-up``; down (host → guest): the same on the tap's root hook to
``rcb-down``. Each ifb: htb root, parent 1:1 rate = ceil = link, a leaf per VM
(rate = its share, ceil = link or its ceiling; quantum ∝ rate, so idle
guarantees are lent out in proportion to the shares), classified by u32 on the
guest's MAC (source up, destination down; this kernel has no skbedit, matchall
or fw). Unclassified frames (broadcast to the guests, unregistered MACs) go to
1:2: rate 1 % of the link, ceil the link; the VMs' rates are scaled to fit the
other 99 %, and in proportion whenever they sum above it, so the order of a
period's calls does not matter.

The monitor counts a VM's net use as rx + tx against one capacity C, the
link. A link is full duplex, so each direction's tree gets all of C (one tree
for both would make uploads and downloads compete for half the link). A share
holds per direction, so rx + tx still gets ≥ min(demand, share) whatever the
mix; a ceiling too holds per direction: rx + tx may reach twice it.

Class ids come from an allocator in the object (a 16-bit hash of the VM key
would collide within a few hundred VMs); after a restart ``set_vm`` recovers a
VM's class from the MAC filters on ``rcb-up``, so nothing moves. Rates are
bytes/s here, bit/s to tc; every tc/ip failure raises ShapingError.

The link is the ``alloc``'s network capacity: it comes with every ``set_vm``
(a host's configuration may change it), and a class is rewritten only when its
(rate, ceil) in tc moves.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass


class ShapingError(RuntimeError):
    """A tc or ip command failed; the message has its stderr."""


_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


UP_IFB, DOWN_IFB = "rcb-up", "rcb-down"
_LINK, _DEFAULT, _FIRST_VM, _LAST_VM = 1, 2, 0x10, 0xFFFF  # htb minors: parent, unclassified, VM leaves
_LAST_NODE = 0xFFF  # u32 node ids are 12 bits: at most 4095 MACs per host
_DEFAULT_SHARE = 0.01  # of the link, for unclassified frames
_QUANTUM_MAX, _QUANTUM_MIN = 200_000, 1514  # bytes; a VM with the whole link gets the maximum htb accepts quietly
_MAC_AT = {UP_IFB: -8, DOWN_IFB: -14}  # where u32 finds the source / destination MAC (offsets from the IP header)
_MATCH_MAC = {UP_IFB: "src", DOWN_IFB: "dst"}
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_UNSHAPED_ROOTS = ("noqueue", "pfifo_fast", "fq_codel", "mq", "pfifo", "fq", "noop")  # defaults: nobody's QoS
_TAP_FILTER = ["protocol", "all", "prio", "1", "handle", "800::800", "u32", "match", "u32", "0", "0"]


@dataclass
class _Vm:
    minor: int
    macs: dict[str, int]  # guest MAC -> u32 node id of its filter on both ifbs
    taps: set[str]
    rate: float  # requested, bytes/s
    ceil: float
    applied: tuple[int, int] | None = None  # (rate, ceil) bytes/s as last written to tc


class SharedLinkShaper:
    """One htb tree per direction shared by all VMs; see the module docstring."""

    def __init__(self, netns: str = "") -> None:
        self.link_bps = 0.0  # bytes/s, from the latest set_vm; no class exists before the first
        self.netns = netns
        self._vms: dict[str, _Vm] = {}
        self._found: dict[str, tuple[int, int]] | None = None  # MAC -> (node, minor) left by an earlier process

    # -- commands ------------------------------------------------------------------

    def _run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [args[0], *(["-n", self.netns] if self.netns else []), *args[1:]]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            what = " ".join(args) if stdin is None else f"tc batch:\n{stdin}"
            raise ShapingError(f"{what}: {done.stderr.strip() or done.stdout.strip()}")
        return done

    def _batch(self, lines: list[str]) -> None:
        if lines:  # one tc process for the lot; it stops at the first failing line
            self._run("tc", "-batch", "-", stdin="\n".join(lines) + "\n")

    # -- state -------------------------------------------------------------------

    def _load(self) -> None:
        """Once per object: the MAC filters an earlier process left on rcb-up (MAC -> node, class)."""
        if self._found is not None:
            return
        self._found = {}
        if self._run("ip", "link", "show", UP_IFB, check=False).returncode != 0:
            return
        text = self._run("tc", "filter", "show", "dev", UP_IFB, "parent", "1:").stdout
        for node, minor, mac in _parse_mac_filters(text, _MAC_AT[UP_IFB]):
            self._found[mac] = (node, minor)

    def _used(self) -> tuple[set[int], set[int]]:
        found = self._found or {}
        minors = {vm.minor for vm in self._vms.values()} | {m for _, m in found.values()}
        nodes = {n for vm in self._vms.values() for n in vm.macs.values()} | {n for n, _ in found.values()}
        return minors, nodes

    def _targets(self) -> dict[str, tuple[int, int]]:
        """(rate, ceil) in bytes/s per VM: rates scaled so that they fit next to the default class."""
        room = self.link_bps * (1 - _DEFAULT_SHARE)
        total = sum(vm.rate for vm in self._vms.values())
        scale = min(1.0, room / total) if total > 0 else 1.0
        out = {}
        for key, vm in self._vms.items():
            rate = max(int(vm.rate * scale), 1)
            out[key] = (rate, max(int(min(vm.ceil, self.link_bps)), rate))
        return out

    def _class_lines(self, ifb: str, minor: int, rate: int, ceil: int) -> str:
        quantum = min(max(round(_QUANTUM_MAX * rate / self.link_bps), _QUANTUM_MIN), _QUANTUM_MAX)
        parent = "1:" if minor == _LINK else f"1:{_LINK:x}"
        return (
            f"class replace dev {ifb} parent {parent} classid 1:{minor:x} htb"
            f" rate {rate * 8}bit ceil {ceil * 8}bit quantum {quantum}"
        )

    def _tree_lines(self, qdiscs: str) -> list[str]:
        """Create the ifbs and their roots if missing; the lines that (re)write the link and default classes."""
        lines = []
        link = int(self.link_bps)
        default = max(int(self.link_bps * _DEFAULT_SHARE), 1)
        for ifb in (UP_IFB, DOWN_IFB):
            if f"qdisc htb 1: dev {ifb} root" not in qdiscs:
                if self._run("ip", "link", "show", ifb, check=False).returncode != 0:
                    self._run("ip", "link", "add", ifb, "type", "ifb")
                self._run("ip", "link", "set", ifb, "up")
                self._run(
                    "tc", "qdisc", "replace", "dev", ifb, "root", "handle", "1:", "htb", "default", f"{_DEFAULT:x}"
                )
            lines.append(self._class_lines(ifb, _LINK, link, link))
            lines.append(self._class_lines(ifb, _DEFAULT, default, link))
        return lines

    def _rescale_lines(self, always: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Class lines for the VMs whose (rate, ceil) moved, and for those in ``always``."""
        lines = []
        for key, target in self._targets().items():
            vm = self._vms[key]
            if vm.applied != target or key in always:
                lines += [self._class_lines(ifb, vm.minor, *target) for ifb in (UP_IFB, DOWN_IFB)]
        return lines

    def _commit(self, lines: list[str]) -> None:
        try:
            self._batch(lines)
        except ShapingError:
            for vm in self._vms.values():
                vm.applied = None  # unknown now: rewrite everything next time
            raise
        for key, target in self._targets().items():
            self._vms[key].applied = target

    # -- API ---------------------------------------------------------------------

    def set_vm(
        self, vm_key: str, taps: list[tuple[str, str]], rate_bps: float, ceil_bps: float, link_bps: float
    ) -> None:
        """Shape ``vm_key``'s taps ((tap dev, guest MAC), ...) on a link of ``link_bps``: guarantee
        ``rate_bps``, hold to ``ceil_bps``.

        All in bytes/s, each direction; ``ceil_bps`` = inf (or anything ≥ the link) means the link (shares
        mode). Idempotent; a tap or MAC no longer listed is released."""
        self.set_vms([(vm_key, taps, rate_bps, ceil_bps)], link_bps)

    def set_vms(self, vms: list[tuple[str, list[tuple[str, str]], float, float]], link_bps: float) -> None:
        """``set_vm`` for many VMs at once: one ``tc qdisc show`` and one ``tc -batch`` for all of them
        (a period where every share moves costs two tc processes, not two per VM)."""
        if not link_bps > 0:
            raise ValueError(f"link capacity must be > 0 bytes/s, not {link_bps}")
        checked = [(key, self._wanted(key, taps, rate, ceil), rate, ceil) for key, taps, rate, ceil in vms]
        self.link_bps = float(link_bps)
        self._load()
        qdiscs = self._run("tc", "qdisc", "show").stdout
        changes = [self._prepare(key, wanted, rate, ceil) for key, wanted, rate, ceil in checked]
        lines = self._tree_lines(qdiscs) + self._rescale_lines(always={key for key, *_ in checked})
        for vm, wanted, gone_macs in changes:
            lines += self._vm_lines(vm, wanted, gone_macs, qdiscs)
        self._commit(lines)

    @staticmethod
    def _wanted(vm_key: str, taps: list[tuple[str, str]], rate_bps: float, ceil_bps: float) -> dict[str, str]:
        """tap -> guest MAC, checked."""
        if not taps:
            raise ValueError(f"{vm_key}: no tap to shape")
        if not (rate_bps >= 0 and ceil_bps > 0):
            raise ValueError(f"{vm_key}: rate {rate_bps} and ceil {ceil_bps} bytes/s must be >= 0 and > 0")
        wanted = {}
        for tap, mac in taps:
            mac = mac.lower()
            if not _MAC_RE.match(mac):
                raise ValueError(f"{vm_key}: {mac!r} is not a MAC address")
            wanted[tap] = mac
        return wanted

    def _prepare(
        self, vm_key: str, wanted: dict[str, str], rate_bps: float, ceil_bps: float
    ) -> tuple[_Vm, dict[str, str], dict[str, int]]:
        """The VM's class and filter nodes, its taps no longer listed released: (vm, wanted, gone MACs)."""
        vm = self._vms.get(vm_key)
        if vm is None:
            vm = self._vms[vm_key] = self._claim(set(wanted.values()))
        _, nodes = self._used()
        gone_macs = {mac: vm.macs.pop(mac) for mac in list(vm.macs) if mac not in wanted.values()}
        for mac in wanted.values():
            if mac not in vm.macs:
                vm.macs[mac] = _free(nodes, 1, _LAST_NODE, "u32 filter nodes")
        for tap in vm.taps - set(wanted):
            self._release_tap(tap)
        vm.taps, vm.rate, vm.ceil = set(wanted), float(rate_bps), float(ceil_bps)
        return vm, wanted, gone_macs

    def _vm_lines(self, vm: _Vm, wanted: dict[str, str], gone_macs: dict[str, int], qdiscs: str) -> list[str]:
        lines = [_del_filter(ifb, node) for node in gone_macs.values() for ifb in (UP_IFB, DOWN_IFB)]
        for mac, node in vm.macs.items():
            for ifb in (UP_IFB, DOWN_IFB):
                lines.append(
                    f"filter replace dev {ifb} parent 1: protocol all prio 1 handle 800::{node:x} u32"
                    f" match ether {_MATCH_MAC[ifb]} {mac} flowid 1:{vm.minor:x}"
                )
        redirect = " ".join(_TAP_FILTER)
        for tap in wanted:  # last: a tap's traffic reaches the trees only once its class and filters are there
            if f"qdisc htb 1: dev {tap} root" not in qdiscs:  # replace: libvirt leaves a noqueue root on its taps
                lines.append(f"qdisc replace dev {tap} root handle 1: htb")
            if f"qdisc ingress ffff: dev {tap} " not in qdiscs:
                lines.append(f"qdisc add dev {tap} handle ffff: ingress")
            for hook, ifb in (("1:", DOWN_IFB), ("ffff:", UP_IFB)):
                lines.append(
                    f"filter replace dev {tap} parent {hook} {redirect} action mirred egress redirect dev {ifb}"
                )
        return lines

    def _claim(self, macs: set[str]) -> _Vm:
        """A new VM: the class and filter nodes an earlier process gave its MACs, else fresh ones."""
        assert self._found is not None
        mine = [mac for mac in sorted(macs) if mac in self._found]
        if mine:
            minor = self._found[mine[0]][1]
            nodes = {mac: self._found.pop(mac)[0] for mac in mine if self._found[mac][1] == minor}
            return _Vm(minor, nodes, set(), 0.0, 0.0)
        minors, _ = self._used()
        return _Vm(_free(minors, _FIRST_VM, _LAST_VM, "htb classes"), {}, set(), 0.0, 0.0)

    def foreign_qdisc(self, tap: str) -> str:
        """What shapes ``tap`` that ResCoin did not put there ("" if nothing): a root qdisc other than a
        kernel default or our class-less htb (libvirt's ``<bandwidth>`` is an htb *with* classes), or an
        ingress filter that does not redirect to our tree (a police rate). Such a tap is left alone."""
        shown = self._run("tc", "qdisc", "show", "dev", tap, check=False)
        if shown.returncode != 0:
            return ""  # no such device (yet): the write says so
        for line in shown.stdout.splitlines():
            fields = line.split()  # qdisc KIND HANDLE: [dev TAP] root|parent X|ingress ...
            if len(fields) < 3 or "root" not in fields:
                continue
            kind, handle = fields[1], fields[2]
            ours = kind == "htb" and handle == "1:" and not self._run("tc", "class", "show", "dev", tap).stdout.strip()
            if kind not in _UNSHAPED_ROOTS and not ours:
                return f"a {kind} root qdisc ({handle})"
        ingress = self._run("tc", "filter", "show", "dev", tap, "parent", "ffff:", check=False).stdout
        if ingress.strip() and ("police" in ingress or UP_IFB not in ingress):
            return "an ingress filter (a policing rate)"
        return ""

    def _release_tap(self, tap: str) -> None:
        """Take our filters off ``tap``; it may be gone already (with its VM)."""
        self._run("tc", "qdisc", "del", "dev", tap, "root", check=False)
        self._run("tc", "qdisc", "del", "dev", tap, "ingress", check=False)

    def remove_vm(self, vm_key: str) -> None:
        """Stop shaping ``vm_key``: its taps' filters, its MAC filters and classes go; the others' rates are
        rescaled if they were held back; with the last VM the trees go too. No error if it was not shaped."""
        self._load()
        vm = self._vms.pop(vm_key, None)
        if vm is None:
            return
        for tap in vm.taps:
            self._release_tap(tap)
        qdiscs = self._run("tc", "qdisc", "show").stdout
        lines = []
        for ifb in (UP_IFB, DOWN_IFB):
            if f"qdisc htb 1: dev {ifb} root" in qdiscs:
                lines += [_del_filter(ifb, node) for node in vm.macs.values()]
                lines.append(f"class del dev {ifb} classid 1:{vm.minor:x}")
        self._commit(lines + self._rescale_lines())
        if not self._vms and not self._found:  # nothing shaped any more (restore): no ifbs left behind
            self.clear()

    def _class(self, vm_key: str) -> tuple[float, float] | None:
        vm = self._vms.get(vm_key)
        return None if vm is None else self._class_rates(vm.minor)

    def class_of_mac(self, mac: str) -> tuple[float, float] | None:
        """(rate, ceil) in bytes/s of the class the guest MAC ``mac`` is shaped in, as tc shows it, or None;
        reads the MAC filters, so it sees what any process set."""
        text = self._run("tc", "filter", "show", "dev", UP_IFB, "parent", "1:", check=False).stdout
        minors = [minor for _, minor, found in _parse_mac_filters(text, _MAC_AT[UP_IFB]) if found == mac.lower()]
        return self._class_rates(minors[0]) if minors else None

    def _class_rates(self, minor: int) -> tuple[float, float] | None:
        out = self._run("tc", "class", "show", "dev", UP_IFB, check=False)
        rate = r"(\d+(?:\.\d+)?)([KMGT]?)bit"
        match = re.search(rf"class htb 1:{minor:x} .*?rate {rate} ceil {rate}", out.stdout)
        if out.returncode != 0 or match is None:
            return None
        return (
            float(match.group(1)) * _SI[match.group(2)] / 8,
            float(match.group(3)) * _SI[match.group(4)] / 8,
        )

    def rate_bps(self, vm_key: str) -> float | None:
        """The rate (guarantee) of ``vm_key``'s class in bytes/s as tc shows it, or None if it is not shaped."""
        got = self._class(vm_key)
        return None if got is None else got[0]

    def ceiling_bps(self, vm_key: str) -> float | None:
        """The ceil of ``vm_key``'s class in bytes/s as tc shows it, or None if it is not shaped."""
        got = self._class(vm_key)
        return None if got is None else got[1]

    def _redirected_taps(self) -> set[str]:
        """Every device whose ingress hook redirects to rcb-up (set by this object or an earlier one)."""
        qdiscs = self._run("tc", "qdisc", "show").stdout
        taps = set()
        for dev in set(re.findall(r"qdisc ingress ffff: dev (\S+) ", qdiscs)):
            shown = self._run("tc", "filter", "show", "dev", dev, "ingress", check=False).stdout
            if f"to device {UP_IFB})" in shown:  # "mirred (Egress Redirect to device rcb-up)"
                taps.add(dev)
        return taps

    def clear(self) -> None:
        """Remove everything this shaper (or an earlier one) created: the taps' filters, then both ifbs."""
        for tap in self._redirected_taps() | {tap for vm in self._vms.values() for tap in vm.taps}:
            self._release_tap(tap)
        for ifb in (UP_IFB, DOWN_IFB):
            if self._run("ip", "link", "show", ifb, check=False).returncode == 0:
                self._run("ip", "link", "del", ifb)
        self._vms.clear()
        self._found = {}

    def remove_stale(self) -> None:
        """After a restart, once every live VM has been set: drop what an earlier process left for VMs no
        ``set_vm`` has claimed since (their MAC filters and classes, and the redirects on their taps)."""
        self._load()
        assert self._found is not None
        for tap in self._redirected_taps() - {tap for vm in self._vms.values() for tap in vm.taps}:
            self._release_tap(tap)
        lines = []
        for ifb in (UP_IFB, DOWN_IFB):
            lines += [_del_filter(ifb, node) for node, _ in self._found.values()]
            lines += [f"class del dev {ifb} classid 1:{minor:x}" for minor in {m for _, m in self._found.values()}]
        self._found = {}
        self._batch(lines)


def _del_filter(ifb: str, node: int) -> str:
    return f"filter del dev {ifb} parent 1: protocol all prio 1 handle 800::{node:x} u32"


def _free(used: set[int], low: int, high: int, what: str) -> int:
    for n in range(low, high + 1):
        if n not in used:
            used.add(n)
            return n
    raise ShapingError(f"out of {what} ({high - low + 1})")


def _parse_mac_filters(text: str, mac_at: int) -> list[tuple[int, int, str]]:
    """(node, class minor, MAC) of each u32 MAC filter in ``tc filter show`` output."""
    out = []
    for block in re.split(r"\n(?=filter )", text):
        head = re.search(r"fh 800::([0-9a-f]+) .*?flowid 1:([0-9a-f]+)", block)
        if head is None:
            continue
        data: dict[int, int] = {}
        for value, mask, at in re.findall(r"match ([0-9a-f]{8})/([0-9a-f]{8}) at (-?\d+)", block):
            for i in range(4):
                if mask[2 * i : 2 * i + 2] == "ff":
                    data[int(at) + i] = int(value[2 * i : 2 * i + 2], 16)
        if all(mac_at + i in data for i in range(6)):
            mac = ":".join(f"{data[mac_at + i]:02x}" for i in range(6))
            out.append((int(head.group(1), 16), int(head.group(2), 16), mac))
    return out
