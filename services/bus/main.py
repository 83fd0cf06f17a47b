"""rescoin-bus: the host's XSUB -> XPUB proxy, with counters in `hb`.

The forwarding itself runs in libzmq (``zmq.proxy_steerable`` in a thread,
no Python per message); this process only asks it for statistics once a
period and publishes them. A slow subscriber hits the XPUB high-water mark
and loses messages (subscribers see the gap in ``seq``); it never blocks a
publisher.
"""

from __future__ import annotations

import argparse
import logging
import struct
import threading
import time

import zmq
from rescoin.proto import KIND_HB, Heartbeat

from ..runtime.config import Config, use_schema
from ..runtime.service import (
    MAX_FRAME_BYTES,
    MAX_SUBSCRIPTION_BYTES,
    PeriodPacer,
    Publisher,
    common_arguments,
    config_from_args,
)
from ..runtime.support import StopFlag, load_curve_keypair
from ..schema import service_schema
from .ipc import PUBLISH_MODE, SUBSCRIBE_MODE, prepare_socket_dir, restrict_socket

log = logging.getLogger("rescoin.bus")

SCHEMA = service_schema()  # the config sections this program reads


STAT_NAMES = (
    "in_frames",
    "in_bytes",
    "xsub_sent_frames",
    "xsub_sent_bytes",
    "xpub_received_frames",
    "xpub_received_bytes",
    "out_frames",
    "out_bytes",
)  # the order of libzmq's STATISTICS reply: frontend in/out, backend in/out


class Bus:
    """Owns the proxy thread and its control socket."""

    def __init__(self, ctx: zmq.Context, cfg: Config) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.xsub = ctx.socket(zmq.XSUB)
        self.xpub = ctx.socket(zmq.XPUB)
        # a publisher sending a larger frame, or a subscriber a larger subscription, is disconnected
        # before it is buffered (the decoders refuse such frames anyway)
        self.xsub.maxmsgsize = MAX_FRAME_BYTES
        self.xpub.maxmsgsize = MAX_SUBSCRIPTION_BYTES
        for sock in (self.xsub, self.xpub):
            sock.linger = 0
            sock.rcvhwm = cfg.bus.hwm
            sock.sndhwm = cfg.bus.hwm
            if cfg.bus.curve_server_key:
                public, secret = load_curve_keypair(cfg.bus.curve_server_key)
                sock.curve_server = True
                sock.curve_publickey = public
                sock.curve_secretkey = secret
        for endpoint in (cfg.bus.pub_endpoint, cfg.bus.sub_endpoint):
            prepare_socket_dir(endpoint)  # ipc://: who may connect is decided by Unix permissions
        self.xsub.bind(cfg.bus.pub_endpoint)
        self.xpub.bind(cfg.bus.sub_endpoint)
        restrict_socket(cfg.bus.pub_endpoint, PUBLISH_MODE)  # the pipeline's own services publish
        restrict_socket(cfg.bus.sub_endpoint, SUBSCRIBE_MODE)  # group rescoin may subscribe
        control_addr = f"inproc://bus-control-{id(self)}"
        self.control = ctx.socket(zmq.PAIR)
        self.control.bind(control_addr)
        proxy_control = ctx.socket(zmq.PAIR)
        proxy_control.connect(control_addr)
        self.thread = threading.Thread(target=self._run_proxy, args=(proxy_control,), name="bus-proxy", daemon=True)

    def _run_proxy(self, proxy_control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, proxy_control)
        except zmq.ContextTerminated:
            pass
        finally:
            proxy_control.close(linger=0)

    def start(self) -> None:
        self.thread.start()

    def statistics(self) -> dict[str, int]:
        self.control.send(b"STATISTICS")
        reply = self.control.recv_multipart()
        return {name: struct.unpack("<Q", value)[0] for name, value in zip(STAT_NAMES, reply, strict=True)}

    def stop(self) -> None:
        self.control.send(b"TERMINATE")
        self.thread.join(timeout=5)
        for sock in (self.control, self.xsub, self.xpub):
            sock.close(linger=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-bus", description=__doc__.split("\n")[0])
    common_arguments(parser)
    args = parser.parse_args(argv)
    use_schema(SCHEMA)
    cfg = config_from_args(args)
    stop = StopFlag().install()
    ctx = zmq.Context()
    try:
        bus = Bus(ctx, cfg)
    except (zmq.ZMQError, OSError) as exc:
        log.error("cannot bind %s / %s: %s", cfg.bus.pub_endpoint, cfg.bus.sub_endpoint, exc)
        return 1
    bus.start()
    hb_sock = ctx.socket(zmq.PUB)
    hb_sock.linger = 500
    hb_sock.maxmsgsize = MAX_SUBSCRIPTION_BYTES
    if cfg.bus.curve_client_key:
        from ..runtime.support import secure_client

        secure_client(hb_sock, cfg.bus.curve_client_key, cfg.bus.curve_server_public)
    hb_sock.connect(cfg.bus.pub_endpoint)
    publisher = Publisher(hb_sock, cfg.host.name, "bus")
    period_s = cfg.host.period_s
    log.info(
        "bus up: publishers -> %s, subscribers -> %s (host %s)",
        cfg.bus.pub_endpoint,
        cfg.bus.sub_endpoint,
        cfg.host.name,
    )
    pacer = PeriodPacer(period_s)  # monotonic pace: a wall clock stepping back stops no heartbeat
    try:
        while not stop.stopping:
            time.sleep(min(0.2, pacer.timeout_s()))
            ended = pacer.due()
            if ended is not None:
                stats = bus.statistics()
                counters = {
                    "received": stats["in_frames"] // 2,
                    "sent": stats["out_frames"] // 2,
                    "received_bytes": stats["in_bytes"],
                    "sent_bytes": stats["out_bytes"],
                    "subscription_frames": stats["xpub_received_frames"],
                }
                hb = Heartbeat(
                    "bus",
                    "ok",
                    period_s,
                    counters,
                    {"pub_endpoint": cfg.bus.pub_endpoint, "sub_endpoint": cfg.bus.sub_endpoint},
                    [],
                )
                publisher.send(KIND_HB, ended, hb)
        log.info("stopping on %s", stop.signal_name)
    finally:
        hb_sock.close(linger=200)
        bus.stop()
        ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
