"""Splitting raw output chunks into lines, with a line-length cap. Pure."""

from __future__ import annotations


class LineSplitter:
    """Accumulates bytes of one stream and hands back complete lines.

    Lines longer than `max_line_bytes` are split into several records, never dropped.
    Deterministic: the same bytes always give the same lines, which lets recovery
    after a restart skip the lines already stored by counting them.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines: list[bytes] = []
        while True:
            cut = self._buffer.find(b"\n", 0, self._max + 1)
            if cut >= 0:
                lines.append(bytes(self._buffer[:cut]))
                del self._buffer[: cut + 1]
            elif len(self._buffer) > self._max:
                cut = _utf8_boundary(self._buffer, self._max)
                lines.append(bytes(self._buffer[:cut]))
                del self._buffer[:cut]
            else:
                return lines

    def finish(self) -> list[bytes]:
        """The unterminated last line, if any."""
        if not self._buffer:
            return []
        rest = bytes(self._buffer)
        self._buffer.clear()
        return [rest]


def _utf8_boundary(data: bytearray, limit: int) -> int:
    """The largest cut <= limit that does not split a UTF-8 character (binary: limit)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > limit - 4 and cut > 0 else limit


def split_all(data: bytes, max_line_bytes: int) -> list[bytes]:
    splitter = LineSplitter(max_line_bytes)
    return splitter.feed(data) + splitter.finish()


def unseen_lines(
    retained: list[bytes], stored_count: int, stored_tail: list[str]
) -> tuple[list[bytes], bool]:
    """Lines Docker kept that the store lacks, and whether some may be lost (a gap).

    Docker's log keeps everything unless it rotated: then counting no longer lines up,
    and the last stored lines are looked for in what it kept instead. Lines are
    compared as stored: decoded, with invalid UTF-8 replaced.
    """
    if not stored_tail:
        return retained, False
    texts = [line.decode("utf-8", errors="replace") for line in retained]
    width = len(stored_tail)
    if width <= stored_count <= len(texts) and texts[stored_count - width : stored_count] == (
        stored_tail
    ):
        return retained[stored_count:], False  # the whole history is there: count it
    for end in range(len(texts), width - 1, -1):
        if texts[end - width : end] == stored_tail:
            return retained[end:], False
    return retained, True  # rotated past everything we stored: some lines are gone
