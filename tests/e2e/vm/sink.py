"""A TCP sink for the streaming test guest: python sink.py HOST PORT COUNT_FILE.

Accepts any number of connections, discards what arrives and rewrites
COUNT_FILE (atomically) every 0.1 s with "monotonic_seconds total_bytes", so
a test can measure the delivered rate without talking to this process. Runs
inside the test's network namespace (nsenter --net), where the guest's tap is.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time


def main(host: str, port: int, count_file: str) -> None:
    total = 0
    lock = threading.Lock()

    def drain(conn: socket.socket) -> None:
        nonlocal total
        with conn:
            while chunk := conn.recv(1 << 16):
                with lock:
                    total += len(chunk)

    def report() -> None:
        while True:
            with lock:
                line = f"{time.monotonic():.6f} {total}\n"
            with open(count_file + ".tmp", "w") as f:
                f.write(line)
            os.replace(count_file + ".tmp", count_file)
            time.sleep(0.1)

    threading.Thread(target=report, daemon=True).start()
    server = socket.create_server((host, port), reuse_port=False)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
