"""ResCoin's own network shaping with tc: one htb for both directions of a VM's host device.

For hosts whose kernel lacks what libvirt's ``setInterfaceParameters`` uses
(sch_sfq, act_police — as on the machines in shared/LAB.md §3.9). A VM's
network use is rx + tx (DESIGN §5), so its ceiling holds the sum: filters on
the tap (u32 match-all + mirred) redirect what the guest sends (tap ingress)
*and* what it receives (tap egress) to one ifb device, whose htb class has
``rate`` = the template (the guarantee) and ``ceil`` = the ceiling. The ifb
hands each packet back where it came from, past the filters.

Rates are in bytes/s here and given to tc in bit/s. Every step is idempotent
(qdiscs are added once, classes and filters replaced); ``clear`` removes all
of it. ``netns`` runs the commands inside a network namespace (where libvirtd
created the tap).
"""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path


class ShapingError(RuntimeError):
    """A tc or ip command failed; the message has its stderr."""


class NetShaper:
    def __init__(self, netns: str = "") -> None:
        self.netns = netns

    @staticmethod
    def kernel_has_libvirt_shaping(config: str = "/proc/config.gz") -> bool:
        """True if the kernel has sch_sfq and act_police (what libvirt's bandwidth code runs)."""
        path = Path(config)
        if not path.exists():
            return Path("/sys/module/sch_sfq").exists() and Path("/sys/module/act_police").exists()
        text = gzip.decompress(path.read_bytes()).decode(errors="replace")
        return all(f"{opt}=y" in text or f"{opt}=m" in text for opt in ("CONFIG_NET_SCH_SFQ", "CONFIG_NET_ACT_POLICE"))

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = (["ip", "netns", "exec", self.netns] if self.netns else []) + list(args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        if check and done.returncode != 0:
            raise ShapingError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done

    @staticmethod
    def ifb_name(dev: str) -> str:
        return f"rcb-{dev}"[:15]  # interface names are at most 15 bytes

    def _htb(self, dev: str, rate_bps: float, ceil_bps: float) -> None:
        ceil_bit = max(int(ceil_bps * 8), 8)
        rate_bit = max(min(int(rate_bps * 8), ceil_bit), 8)
        if "qdisc htb 1:" not in self._run("tc", "qdisc", "show", "dev", dev).stdout:
            self._run("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
        # a class borrows up to its ceil only from a parent: 1:1 holds the link at the ceiling
        for parent, classid, rate in (("1:", "1:1", ceil_bit), ("1:1", "1:10", rate_bit)):
            self._run("tc", "class", "replace", "dev", dev, "parent", parent, "classid", classid,
                      "htb", "rate", f"{rate}bit", "ceil", f"{ceil_bit}bit")  # fmt: skip

    def shape(self, dev: str, rate_bps: float, ceil_bps: float) -> None:
        """Hold ``dev``'s traffic, both directions together, to ``ceil_bps``, guaranteeing ``rate_bps``."""
        ifb = self.ifb_name(dev)
        if self._run("ip", "link", "show", ifb, check=False).returncode != 0:
            self._run("ip", "link", "add", ifb, "type", "ifb")
        self._run("ip", "link", "set", ifb, "up")
        self._htb(ifb, rate_bps, ceil_bps)
        qdiscs = self._run("tc", "qdisc", "show", "dev", dev).stdout
        # separate qdiscs for the two hooks (not one clsact): u32 keeps its hash tables per qdisc,
        # and the fixed handle that makes `replace` idempotent would name the same rule on both
        if "qdisc htb 1: root" not in qdiscs:  # replace: libvirt leaves an explicit noqueue root on its taps
            self._run("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb")
        if "qdisc ingress ffff:" not in qdiscs:
            self._run("tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress")
        match_all = ["protocol", "all", "prio", "1", "handle", "800::800", "u32", "match", "u32", "0", "0"]
        for parent in ("1:", "ffff:"):
            self._run("tc", "filter", "replace", "dev", dev, "parent", parent, *match_all,
                      "action", "mirred", "egress", "redirect", "dev", ifb)  # fmt: skip

    def clear(self, dev: str) -> None:
        """Remove everything ``shape`` put on ``dev`` (no error if it was not there)."""
        self._run("tc", "qdisc", "del", "dev", dev, "root", check=False)
        self._run("tc", "qdisc", "del", "dev", dev, "ingress", check=False)
        self._run("ip", "link", "del", self.ifb_name(dev), check=False)

    def ceiling_bps(self, dev: str) -> float | None:
        """The ceil of ``dev``'s shaping class in bytes/s, or None if it is not shaped."""
        out = self._run("tc", "class", "show", "dev", self.ifb_name(dev), check=False)
        match = re.search(r"htb 1:10 .*?ceil (\d+(?:\.\d+)?)([KMG]?)bit", out.stdout)
        if out.returncode != 0 or match is None:
            return None
        return float(match.group(1)) * _SI[match.group(2)] / 8


_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
