"""The guest agent's readings: meminfo, memory pressure and fault rates, absent (never 0) where the kernel
has none, and every report one the ingress accepts."""

from __future__ import annotations

import uuid
from pathlib import Path

from rescoin.guest_agent.agent import (
    PRESSURE,
    CounterRates,
    read_pressure,
    read_vmstat,
    report,
)
from rescoin.proto import (
    GUEST_FORMAT_PREVIOUS,
    GUEST_FORMAT_VERSION,
    Envelope,
    decode_guest_report,
    encode_guest_report,
)
from rescoin.proto.guest import PSI_FULL, PSI_SOME

VM = str(uuid.UUID(int=0xA))
MEMINFO = {"MemTotal": 2 * 2**30, "MemAvailable": 2**30, "SwapTotal": 2**20, "SwapFree": 2**19}
PSI_TEXT = "some avg10=1.53 avg60=0.42 avg300=0.10 total=123456789\nfull avg10=0.20 avg60=0.05 avg300=0.01 total=4567\n"
VMSTAT_TEXT = "nr_free_pages 1000\npswpin 40\npswpout 50\npgmajfault 8000\npgfault 900000\n"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def sent(body, v: int = GUEST_FORMAT_VERSION):
    """The report as the ingress reads it off the wire."""
    frames = encode_guest_report(Envelope("guest.mem", "guest", "agent", 1, 0, 0, 0, body, v=v))
    return decode_guest_report(frames).body


def test_this_hosts_own_pressure_file_is_read_when_the_kernel_has_one(tmp_path):
    """The real /proc/pressure/memory where this kernel has it, else a file of the same form."""
    path = PRESSURE if Path(PRESSURE).exists() else write(tmp_path, "memory", PSI_TEXT)
    fields = read_pressure(path)
    assert set(fields) == {*PSI_SOME, *PSI_FULL}
    assert all(0 <= fields[k] <= 100 for k in fields if "avg" in k)
    assert all(isinstance(fields[k], int) and fields[k] >= 0 for k in fields if k.endswith("total"))
    assert sent(report(VM, MEMINFO, fields)).psi_some_total == fields["psi_some_total"]


def test_a_pressure_file_gives_both_lines_avg10_avg60_and_total_microseconds(tmp_path):
    fields = read_pressure(write(tmp_path, "memory", PSI_TEXT))
    assert fields == {
        "psi_some_avg10": 1.53,
        "psi_some_avg60": 0.42,
        "psi_some_total": 123456789,
        "psi_full_avg10": 0.20,
        "psi_full_avg60": 0.05,
        "psi_full_total": 4567,
    }


def test_no_pressure_file_means_no_pressure_fields_not_zeros(tmp_path):
    assert read_pressure(str(tmp_path / "no-such-file")) == {}  # kernel before 4.20 or CONFIG_PSI=n
    assert read_pressure(str(tmp_path)) == {}  # unreadable (psi=0 makes the read fail with EOPNOTSUPP)
    body = sent(report(VM, MEMINFO, read_pressure(str(tmp_path / "no-such-file"))))
    assert body.psi_some_avg10 is None and body.psi_full_total is None
    assert not any(k.startswith("psi_") for k in body.to_wire())


def test_a_line_that_is_missing_or_garbled_is_left_out_alone(tmp_path):
    only_some = read_pressure(write(tmp_path, "some", PSI_TEXT.splitlines()[0]))
    assert set(only_some) == set(PSI_SOME)
    garbled = read_pressure(write(tmp_path, "garbled", "some avg10=x avg60=0.1 total=1\n" + PSI_TEXT.splitlines()[1]))
    assert set(garbled) == set(PSI_FULL)
    assert read_pressure(write(tmp_path, "empty", "")) == {}
    assert read_pressure(write(tmp_path, "absurd", "some avg10=250.0 avg60=0 avg300=0 total=1\n")) == {}
    assert sent(report(VM, MEMINFO, only_some)).psi_full_avg10 is None


def test_vmstat_counters_are_read_where_the_kernel_has_them(tmp_path):
    assert read_vmstat(write(tmp_path, "vmstat", VMSTAT_TEXT)) == {"pgmajfault": 8000, "pswpin": 40}
    assert read_vmstat(write(tmp_path, "noswap", "pgmajfault 7\n")) == {"pgmajfault": 7}  # CONFIG_SWAP=n
    assert read_vmstat(str(tmp_path / "none")) == {}
    if Path("/proc/vmstat").exists():
        assert "pgmajfault" in read_vmstat()


def test_the_first_report_has_no_rates_the_next_ones_do():
    rates = CounterRates()
    assert rates.update(100.0, {"pgmajfault": 8000, "pswpin": 40}) == {}
    assert rates.update(102.0, {"pgmajfault": 8100, "pswpin": 40}) == {"pgmajfault_per_s": 50.0, "pswpin_per_s": 0.0}
    assert rates.update(103.0, {"pgmajfault": 8100}) == {"pgmajfault_per_s": 0.0}  # pswpin gone: absent


def test_a_counter_that_goes_back_or_a_clock_that_stands_still_gives_no_rate():
    rates = CounterRates()
    rates.update(10.0, {"pgmajfault": 500, "pswpin": 9})
    assert rates.update(11.0, {"pgmajfault": 10, "pswpin": 10}) == {"pswpin_per_s": 1.0}
    assert rates.update(11.0, {"pgmajfault": 20, "pswpin": 11}) == {}


def test_a_report_with_everything_is_the_current_guest_format(tmp_path):
    pressure = read_pressure(write(tmp_path, "memory", PSI_TEXT))
    body = sent(report(VM, MEMINFO, pressure, {"pgmajfault_per_s": 50.0, "pswpin_per_s": 0.0}))
    assert body.mem_used == 2**30 and body.psi_full_avg10 == 0.2 and body.pgmajfault_per_s == 50.0
    assert body.pswpin_per_s == 0.0  # a measured 0 is a 0


def test_the_previous_guest_format_drops_the_pressure():
    body = report(VM, MEMINFO, {"psi_some_avg10": 1.0, "psi_some_avg60": 1.0, "psi_some_total": 5})
    previous = sent(body.without_pressure(), GUEST_FORMAT_PREVIOUS)
    assert previous == report(VM, MEMINFO) and not previous.has_pressure


def test_odd_meminfo_still_gives_a_valid_report():
    odd = {"MemTotal": 2**30, "MemAvailable": 2**31, "SwapTotal": 0, "SwapFree": 4096}  # as some kernels round
    body = sent(report(VM, odd))
    assert body.mem_available == body.mem_total and body.mem_used == 0 and body.swap_free == 0
