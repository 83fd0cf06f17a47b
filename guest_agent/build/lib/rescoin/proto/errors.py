"""The one error type of the protocol layer."""


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
