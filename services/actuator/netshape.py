"""ResCoin's own network shaping with tc: an htb per direction on a VM's host device.

For hosts whose kernel lacks what libvirt's ``setInterfaceParameters`` uses
(sch_sfq, act_police — as on the machines in shared/LAB.md §3.9):

* traffic *into* the guest leaves the host through the tap: an htb qdisc on
  the tap's egress, one class with ``rate`` = the template (the guarantee) and
  ``ceil`` = the ceiling;
* traffic *out of* the guest enters the host on the tap: an ingress qdisc
  redirects it (u32 match-all + mirred) to an ifb device with the same htb.

Each direction is held to the ceiling. Rates are in bytes/s here and given to
tc in bit/s. Every step is idempotent (a qdisc is added once, classes are replaced); ``clear`` removes all
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
            # replace, not add: libvirt puts an explicit noqueue root on its taps, which add refuses to override
            self._run("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
        # a class borrows up to its ceil only from a parent: 1:1 holds the link at the ceiling
        for parent, classid, rate in (("1:", "1:1", ceil_bit), ("1:1", "1:10", rate_bit)):
            self._run("tc", "class", "replace", "dev", dev, "parent", parent, "classid", classid,
                      "htb", "rate", f"{rate}bit", "ceil", f"{ceil_bit}bit")  # fmt: skip

    def shape(self, dev: str, rate_bps: float, ceil_bps: float) -> None:
        """Hold both directions of ``dev`` to ``ceil_bps``, guaranteeing ``rate_bps``."""
        self._htb(dev, rate_bps, ceil_bps)
        ifb = self.ifb_name(dev)
        if self._run("ip", "link", "show", ifb, check=False).returncode != 0:
            self._run("ip", "link", "add", ifb, "type", "ifb")
        self._run("ip", "link", "set", ifb, "up")
        if "qdisc ingress ffff:" not in self._run("tc", "qdisc", "show", "dev", dev).stdout:
            self._run("tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress")
        self._run(
            "tc",
            "filter",
            "replace",
            "dev",
            dev,
            "parent",
            "ffff:",
            "protocol",
            "all",
            "prio",
            "1",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "action",
            "mirred",
            "egress",
            "redirect",
            "dev",
            ifb,
        )
        self._htb(ifb, rate_bps, ceil_bps)

    def clear(self, dev: str) -> None:
        """Remove everything ``shape`` put on ``dev`` (no error if it was not there)."""
        self._run("tc", "qdisc", "del", "dev", dev, "root", check=False)
        self._run("tc", "qdisc", "del", "dev", dev, "ingress", check=False)
        self._run("ip", "link", "del", self.ifb_name(dev), check=False)

    def ceiling_bps(self, dev: str) -> float | None:
        """The ceil of ``dev``'s shaping class in bytes/s, or None if it is not shaped."""
        out = self._run("tc", "class", "show", "dev", dev, check=False)
        match = re.search(r"htb 1:10 .*?ceil (\d+(?:\.\d+)?)([KMG]?)bit", out.stdout)
        if out.returncode != 0 or match is None:
            return None
        return float(match.group(1)) * _SI[match.group(2)] / 8


_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
