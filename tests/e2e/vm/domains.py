"""Domain XML for ResCoin's tiny TCG test guests (direct kernel boot, no disk image OS)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEMPLATE_NS = "https://rescoin.dev/xmlns/template/1"


@dataclass
class GuestSpec:
    name: str
    uuid: str
    mode: str  # burn, disk, net, agent (comma-separated)
    mem_mib: int  # ≥ 96: Debian's kernel does not boot in 64 MiB
    template_cpu: float
    template_mem_mib: int
    template_disk_bps: float
    burn_after_s: int  # the guest idles (and saves coins) this long before burning
    agent_port: int  # host 127.0.0.1 port forwarded to the agent's guest port 5556
    disk_image: Path
    keys_dir: Path  # shared read-only: agent.key_secret, server.key
    console_log: Path
    template_net_bps: float = 125_000.0
    claim_uuid: str = ""  # a lying guest: its agent reports as this other VM
    tap: str = ""  # a libvirt-managed tap NIC of this name (in libvirtd's network namespace)
    tap_ip: str = ""  # the guest's address on it, ADDR/LEN
    sink: str = ""  # mode net: IP:PORT to stream to

    def cmdline(self) -> str:
        args = {
            "rescoin.name": self.name,
            "rescoin.mode": self.mode,
            "rescoin.burn_after": str(self.burn_after_s),
            "rescoin.claim": self.claim_uuid,
            "rescoin.ip": self.tap_ip,
            "rescoin.sink": self.sink,
        }
        return "console=ttyS0 quiet " + " ".join(f"{k}={v}" for k, v in args.items() if v)


USERNET_MAC = "52:54:00:12:34:56"  # deploy/guest/init.sh gives this NIC 10.0.2.15


def _tap_xml(spec: GuestSpec) -> str:
    if not spec.tap:
        return ""
    return f"""
    <interface type='ethernet'>
      <target dev='{spec.tap}'/>
      <model type='virtio'/>
    </interface>"""


def domain_xml(spec: GuestSpec, guest_dir: Path) -> str:
    """<domain type='qemu'> (TCG: the /dev/kvm on these machines is PVM and boots no stock guest)."""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{spec.name}</name>
  <uuid>{spec.uuid}</uuid>
  <metadata>
    <rescoin:template xmlns:rescoin="{TEMPLATE_NS}">
      <rescoin:cpu cores="{spec.template_cpu}"/>
      <rescoin:mem bytes="{spec.template_mem_mib * 2**20}"/>
      <rescoin:disk bps="{spec.template_disk_bps:.0f}"/>
      <rescoin:net bps="{spec.template_net_bps:.0f}"/>
    </rescoin:template>
  </metadata>
  <memory unit='MiB'>{spec.mem_mib}</memory>
  <currentMemory unit='MiB'>{spec.mem_mib}</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{guest_dir}/vmlinuz</kernel>
    <initrd>{guest_dir}/initramfs.cpio.gz</initrd>
    <cmdline>{spec.cmdline()}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source file='{spec.disk_image}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='{(guest_dir / "rootfs").resolve()}'/>
      <target dir='rootfs'/>
      <readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='{spec.keys_dir}'/>
      <target dir='keys'/>
      <readonly/>
    </filesystem>
    <serial type='file'>
      <source path='{spec.console_log}'/>
      <target port='0'/>
    </serial>
    {_tap_xml(spec).strip()}
    <memballoon model='virtio'>
      <stats period='1'/>
    </memballoon>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=rcnet0,net=10.0.2.0/24,restrict=on,hostfwd=tcp:127.0.0.1:{spec.agent_port}-:5556'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=rcnet0,mac={USERNET_MAC},bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>"""
