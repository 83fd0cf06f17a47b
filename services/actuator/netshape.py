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

A VM with several NICs gets a class per NIC under its own (rate = its share
split evenly, ceil = its ceiling): each NIC is queued on its own and lends its
unused guarantee to the VM's others first.

Traffic between two VMs of this host (a bridge forwards it from one tap to
the other) never leaves through the link, so the link must not cap it: a
frame whose destination MAC (up) or source MAC (down) is a shaped guest's goes
to 1:3, a class beside the link's with ``local_bps`` (default: no cap, 100
Gbit/s). Its u32 filter sits at a lower node id than every VM's own (u32 tries
a bucket's filters in node order), so a guest-to-guest frame is classified as
local first.

Class ids come from an allocator in the object (a 16-bit hash of the VM key
would collide within a few hundred VMs); after a restart ``set_vm`` recovers a
VM's class from the MAC filters on ``rcb-up`` (and a NIC's parent from the
class tree), so nothing moves. Rates are bytes/s here, bit/s to tc; every tc/ip
failure raises ShapingError.

The link is the ``alloc``'s network capacity: it comes with every ``set_vm``
(a host's configuration may change it), and a class is rewritten only when its
(rate, ceil) in tc moves.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field


class ShapingError(RuntimeError):
    """A tc or ip command failed; the message has its stderr."""


_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


UP_IFB, DOWN_IFB = "rcb-up", "rcb-down"
_LINK, _DEFAULT, _LOCAL, _FIRST_VM, _LAST_VM = 1, 2, 3, 0x10, 0xFFFF  # htb minors: link, unclassified, guest to
# guest, VMs' and NICs' classes
# u32 node ids are 12 bits. A guest MAC's own filter is at node n in [_FIRST_NODE, _LAST_NODE], its guest-to-guest
# filter at n - _LOCAL_OFFSET, below every own filter: at most 2048 guest MACs per host
_FIRST_NODE, _LAST_NODE, _LOCAL_OFFSET = 0x800, 0xFFF, 0x7FF
_LOCAL_UNCAPPED = 100e9 / 8  # bytes/s: guest-to-guest traffic with no cap configured
_LOCAL_BURST = 1 << 20  # bytes; htb computes 0 for rates this high
_DEFAULT_SHARE = 0.01  # of the link, for unclassified frames
_QUANTUM_MAX, _QUANTUM_MIN = 200_000, 1514  # bytes; a VM with the whole link gets the maximum htb accepts quietly
_MAC_AT = {UP_IFB: -8, DOWN_IFB: -14}  # where u32 finds the source / destination MAC (offsets from the IP header)
_MATCH_MAC = {UP_IFB: "src", DOWN_IFB: "dst"}  # the guest's own frames
_MATCH_PEER = {UP_IFB: "dst", DOWN_IFB: "src"}  # a frame between two guests: the other end is a guest too
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
    nics: dict[str, int] = field(default_factory=dict)  # guest MAC -> its own class, with two MACs or more
    applied: tuple[int, int] | None = None  # (rate, ceil) bytes/s as last written to tc

    def flow_of(self, mac: str) -> int:
        return self.nics.get(mac, self.minor)


class SharedLinkShaper:
    """One htb tree per direction shared by all VMs; see the module docstring."""

    def __init__(self, netns: str = "", local_bps: float = 0.0) -> None:
        self.link_bps = 0.0  # bytes/s, from the latest set_vm; no class exists before the first
        self.netns = netns
        self.local_bps = local_bps if local_bps > 0 else _LOCAL_UNCAPPED
        self._vms: dict[str, _Vm] = {}
        # left by an earlier process: MAC -> (node, the VM's class, the NIC's class or None)
        self._found: dict[str, tuple[int, int, int | None]] | None = None
        self._moved: list[int] = []  # nodes an earlier version used for own filters: deleted, then reused

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
        parents = _parse_parents(self._run("tc", "class", "show", "dev", UP_IFB).stdout)
        for node, minor, mac in _parse_mac_filters(text, _MAC_AT[UP_IFB]):
            vm_minor = parents.get(minor, _LINK)
            if node < _FIRST_NODE:  # an earlier version's node, where guest-to-guest filters go now
                self._moved.append(node)
                node = 0  # a fresh one is allocated
            self._found[mac] = (node, minor, None) if vm_minor == _LINK else (node, vm_minor, minor)

    def _used(self) -> tuple[set[int], set[int]]:
        found = self._found or {}
        minors = {m for vm in self._vms.values() for m in (vm.minor, *vm.nics.values())}
        minors |= {m for _, vm_minor, nic in found.values() for m in (vm_minor, nic) if m is not None}
        nodes = {n for vm in self._vms.values() for n in vm.macs.values()} | {n for n, _, _ in found.values()}
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

    def _class_lines(self, ifb: str, minor: int, rate: int, ceil: int, parent: int = _LINK) -> str:
        quantum = min(max(round(_QUANTUM_MAX * rate / self.link_bps), _QUANTUM_MIN), _QUANTUM_MAX)
        return (
            f"class replace dev {ifb} parent 1:{'' if minor == parent else f'{parent:x}'} classid 1:{minor:x} htb"
            f" rate {rate * 8}bit ceil {ceil * 8}bit quantum {quantum}"
        )

    def _vm_class_lines(self, ifb: str, vm: _Vm, rate: int, ceil: int) -> list[str]:
        """The VM's class, and under it one per NIC (its rate split evenly) when it has several."""
        lines = [self._class_lines(ifb, vm.minor, rate, ceil)]
        for nic in vm.nics.values():
            lines.append(self._class_lines(ifb, nic, max(rate // len(vm.nics), 1), ceil, parent=vm.minor))
        return lines

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
            local = int(self.local_bps) * 8
            lines.append(f"class replace dev {ifb} parent 1: classid 1:{_LOCAL:x} htb rate {local}bit ceil {local}bit"
                         f" burst {_LOCAL_BURST} cburst {_LOCAL_BURST} quantum {_QUANTUM_MAX}")  # fmt: skip
        return lines

    def _rescale_lines(self, always: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Class lines for the VMs whose (rate, ceil) moved, and for those in ``always``."""
        lines = []
        for key, target in self._targets().items():
            vm = self._vms[key]
            if vm.applied != target or key in always:
                lines += [line for ifb in (UP_IFB, DOWN_IFB) for line in self._vm_class_lines(ifb, vm, *target)]
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
        moved = [_del_filter(ifb, node) for node in self._moved for ifb in (UP_IFB, DOWN_IFB)]
        self._moved = []
        changes = [self._prepare(key, wanted, rate, ceil) for key, wanted, rate, ceil in checked]
        lines = moved + self._tree_lines(qdiscs)
        for _vm, _wanted, gone_macs, _gone_nics in changes:  # a MAC gone: its filters first
            lines += _filter_del_lines(gone_macs.values())
        lines += self._rescale_lines(always={key for key, *_ in checked})
        for vm, wanted, _gone_macs, _gone_nics in changes:
            lines += self._vm_lines(vm, wanted, qdiscs)
        for _vm, _wanted, _gone_macs, gone_nics in changes:  # last: no filter points at them any more
            lines += _class_del_lines(gone_nics)
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
    ) -> tuple[_Vm, dict[str, str], dict[str, int], list[int]]:
        """The VM's class, its NICs' classes and filter nodes, its taps no longer listed released:
        (vm, wanted, gone MACs -> their nodes, gone NIC classes)."""
        vm = self._vms.get(vm_key)
        if vm is None:
            vm = self._vms[vm_key] = self._claim(set(wanted.values()))
        minors, nodes = self._used()
        gone_macs = {mac: vm.macs.pop(mac) for mac in list(vm.macs) if mac not in wanted.values()}
        for mac in wanted.values():
            if not vm.macs.get(mac):
                vm.macs[mac] = _free(nodes, _FIRST_NODE, _LAST_NODE, "u32 filter nodes")
        several = len(vm.macs) > 1
        gone_nics = [vm.nics.pop(mac) for mac in list(vm.nics) if mac not in vm.macs or not several]
        for mac in vm.macs if several else ():
            if mac not in vm.nics:
                vm.nics[mac] = _free(minors, _FIRST_VM, _LAST_VM, "htb classes")
                vm.applied = None  # its new NIC needs its class
        for tap in vm.taps - set(wanted):
            self._release_tap(tap)
        vm.taps, vm.rate, vm.ceil = set(wanted), float(rate_bps), float(ceil_bps)
        return vm, wanted, gone_macs, gone_nics

    def _vm_lines(self, vm: _Vm, wanted: dict[str, str], qdiscs: str) -> list[str]:
        lines = []
        for mac, node in vm.macs.items():
            for ifb in (UP_IFB, DOWN_IFB):
                lines.append(
                    f"filter replace dev {ifb} parent 1: protocol all prio 1 handle 800::{node:x} u32"
                    f" match ether {_MATCH_MAC[ifb]} {mac} flowid 1:{vm.flow_of(mac):x}"
                )
                lines.append(
                    f"filter replace dev {ifb} parent 1: protocol all prio 1 handle 800::{node - _LOCAL_OFFSET:x} u32"
                    f" match ether {_MATCH_PEER[ifb]} {mac} flowid 1:{_LOCAL:x}"
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
        """A new VM: the classes and filter nodes an earlier process gave its MACs, else fresh ones (node
        0: allocated by ``_prepare``)."""
        assert self._found is not None
        mine = [mac for mac in sorted(macs) if mac in self._found]
        if mine:
            minor = self._found[mine[0]][1]
            # every MAC that was in its class, also those it no longer has (``_prepare`` removes them)
            found = {mac: self._found.pop(mac) for mac in list(self._found) if self._found[mac][1] == minor}
            nics = {mac: nic for mac, (_, _, nic) in found.items() if nic is not None}
            return _Vm(minor, {mac: node for mac, (node, _, _) in found.items()}, set(), 0.0, 0.0, nics)
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
        if f"qdisc htb 1: dev {UP_IFB} root" in qdiscs:
            lines += _filter_del_lines(vm.macs.values()) + _class_del_lines([*vm.nics.values(), vm.minor])
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
        found = self._found.values()
        lines = [_del_filter(ifb, node) for node in self._moved for ifb in (UP_IFB, DOWN_IFB)]
        lines += _filter_del_lines(node for node, _, _ in found)
        lines += _class_del_lines([nic for _, _, nic in found if nic is not None])  # a VM's NICs before the VM
        lines += _class_del_lines(sorted({vm_minor for _, vm_minor, _ in found}))
        self._found, self._moved = {}, []
        self._batch(lines)


def _del_filter(ifb: str, node: int) -> str:
    return f"filter del dev {ifb} parent 1: protocol all prio 1 handle 800::{node:x} u32"


def _filter_del_lines(nodes: Iterable[int]) -> list[str]:
    """Both filters of each guest MAC (its own, its guest-to-guest one) on both trees; 0: none yet."""
    return [_del_filter(ifb, n) for node in nodes if node for n in (node, node - _LOCAL_OFFSET)
            for ifb in (UP_IFB, DOWN_IFB)]  # fmt: skip


def _class_del_lines(minors: Iterable[int]) -> list[str]:
    return [f"class del dev {ifb} classid 1:{minor:x}" for minor in minors for ifb in (UP_IFB, DOWN_IFB)]


def _parse_parents(text: str) -> dict[int, int]:
    """class minor -> its parent's minor, from ``tc class show`` (root classes left out)."""
    return {int(m, 16): int(p, 16) for m, p in re.findall(r"class htb 1:([0-9a-f]+) parent 1:([0-9a-f]+)", text)}


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
