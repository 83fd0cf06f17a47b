"""The one error type of the protocol layer."""

from collections.abc import Iterator
from contextlib import contextmanager


class ProtocolError(ValueError):
    """A frame that does not follow proto/README.md.

    ``field`` names where decoding failed (``"body.tc"``, ``"topic"``...), so a
    service can count rejections by cause and an operator can see what a peer
    got wrong.
    """

    def __init__(self, reason: str, field: str = "") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


@contextmanager
def only_protocol_errors() -> Iterator[None]:
    """Around a decoder: any exception its checks did not foresee is still a rejection
    (``ProtocolError`` with field ``decoder``, a bug to fix, counted meanwhile), never a crash."""
    try:
        yield
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"internal decoder error {type(exc).__name__}: {exc}"[:300], "decoder") from exc
