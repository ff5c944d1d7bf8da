"""LineSplitter: bytes of one stream into lines, with a length cap. Deterministic."""

from __future__ import annotations

import random

import pytest

from ringjobs.engine.lines import LineSplitter, split_all


def feed_all(chunks: list[bytes], max_line_bytes: int) -> list[bytes]:
    splitter = LineSplitter(max_line_bytes)
    lines: list[bytes] = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
    return lines + splitter.finish()


def random_chunks(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.randint(0, largest)  # empty chunks happen on real sockets too
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def test_complete_lines_come_out_at_once() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"one\ntwo\nthr") == [b"one", b"two"]
    assert splitter.feed(b"ee\n") == [b"three"]
    assert splitter.finish() == []


def test_line_across_many_chunks() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"he") == []
    assert splitter.feed(b"") == []
    assert splitter.feed(b"ll") == []
    assert splitter.feed(b"o") == []
    assert splitter.feed(b"\nworld\n") == [b"hello", b"world"]


def test_newline_alone_in_a_chunk() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"abc") == []
    assert splitter.feed(b"\n") == [b"abc"]


def test_crlf_keeps_the_carriage_return() -> None:
    assert split_all(b"a\r\nb\r\n\r\nc\rd\n", 100) == [b"a\r", b"b\r", b"\r", b"c\rd"]


def test_crlf_split_between_chunks() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"a\r") == []
    assert splitter.feed(b"\nb") == [b"a\r"]
    assert splitter.finish() == [b"b"]


def test_empty_lines_are_kept() -> None:
    assert split_all(b"\n\na\n\n", 10) == [b"", b"", b"a", b""]
    assert split_all(b"\n", 10) == [b""]


def test_line_of_exactly_max_bytes_is_one_line() -> None:
    assert split_all(b"x" * 8 + b"\n", 8) == [b"x" * 8]
    splitter = LineSplitter(8)
    # Full buffer, newline not seen yet: it must wait rather than cut.
    assert splitter.feed(b"x" * 8) == []
    assert splitter.feed(b"\ny") == [b"x" * 8]
    assert splitter.finish() == [b"y"]


def test_line_of_max_plus_one_bytes_is_split() -> None:
    assert split_all(b"x" * 8 + b"y\n", 8) == [b"x" * 8, b"y"]


def test_long_line_split_into_max_sized_pieces_never_dropped() -> None:
    # ASCII: every byte is a character boundary, so pieces are exactly max bytes.
    line = bytes(range(65, 91)) * 4  # 104 bytes
    pieces = split_all(line + b"\nnext\n", 10)
    assert pieces[:-1] == [line[i : i + 10] for i in range(0, 104, 10)]
    assert pieces[-1] == b"next"
    assert b"".join(pieces[:-1]) == line


def test_long_line_of_exact_multiple_gives_no_empty_tail() -> None:
    assert split_all(b"y" * 30 + b"\n", 10) == [b"y" * 10] * 3


def test_long_line_emitted_while_still_arriving() -> None:
    # Memory stays bounded: a line without a newline does not pile up.
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcdefghij") == [b"abcd", b"efgh"]
    assert splitter.feed(b"k") == []
    assert splitter.finish() == [b"ijk"]


def test_long_line_is_cut_between_utf8_characters() -> None:
    text = "é" * 10  # 2 bytes each: a cut at 5 bytes would fall inside a character
    pieces = split_all(text.encode() + b"\n", 5)
    assert [len(p) for p in pieces] == [4] * 5
    assert "".join(p.decode() for p in pieces) == text


@pytest.mark.parametrize("char", ["é", "€", "😀"])  # 2, 3 and 4 bytes
def test_every_piece_of_a_long_utf8_line_decodes(char: str) -> None:
    text = ("ab" + char) * 50
    for max_line_bytes in range(4, 20):
        pieces = split_all(text.encode(), max_line_bytes)
        assert all(0 < len(p) <= max_line_bytes for p in pieces)
        assert "".join(p.decode() for p in pieces) == text  # decode() is strict


def test_binary_long_line_is_still_cut_at_max() -> None:
    # Continuation bytes with no character start nearby: cut at the limit, as before.
    data = b"\x80" * 20
    assert split_all(data, 8) == [b"\x80" * 8, b"\x80" * 8, b"\x80" * 4]


def test_utf8_cut_is_the_same_for_any_chunking() -> None:
    data = ("x€" * 40 + "\n" + "😀" * 30).encode()
    expected = split_all(data, 7)
    rng = random.Random(5)
    for _ in range(100):
        assert feed_all(random_chunks(data, rng, 13), 7) == expected


def test_finish_returns_the_unterminated_rest_once() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"done\npartial") == [b"done"]
    assert splitter.finish() == [b"partial"]
    assert splitter.finish() == []


def test_finish_on_nothing() -> None:
    assert LineSplitter(10).finish() == []
    assert split_all(b"", 10) == []


def test_splitter_is_reusable_after_finish() -> None:
    splitter = LineSplitter(100)
    splitter.feed(b"a")
    assert splitter.finish() == [b"a"]
    assert splitter.feed(b"b\n") == [b"b"]


def make_output(rng: random.Random) -> bytes:
    parts = []
    for _ in range(300):
        kind = rng.random()
        if kind < 0.1:
            parts.append(b"")  # empty line
        elif kind < 0.2:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randint(40, 120))))
        elif kind < 0.3:
            parts.append(b"windows line\r")
        else:
            parts.append(b"z" * rng.randint(1, 40))
    # Binary parts may contain newlines of their own; the tail is unterminated.
    return b"\n".join(parts) + b"tail without newline"


@pytest.mark.parametrize("max_line_bytes", [1, 7, 16, 32, 64, 4096])
def test_split_all_equals_any_chunking(max_line_bytes: int) -> None:
    rng = random.Random(20240611 + max_line_bytes)
    data = make_output(rng)
    expected = split_all(data, max_line_bytes)
    assert all(len(line) <= max_line_bytes for line in expected)
    for _ in range(150):
        chunks = random_chunks(data, rng, rng.choice([3, 9, 17, 100, 700, 5000]))
        assert feed_all(chunks, max_line_bytes) == expected


@pytest.mark.parametrize("max_line_bytes", [1, 5, 64])
def test_byte_at_a_time_equals_split_all(max_line_bytes: int) -> None:
    data = make_output(random.Random(7))
    chunks = [data[i : i + 1] for i in range(len(data))]
    assert feed_all(chunks, max_line_bytes) == split_all(data, max_line_bytes)


@pytest.mark.parametrize("max_line_bytes", [3, 10, 64])
def test_no_byte_lost_or_added(max_line_bytes: int) -> None:
    """Rejoining pieces gives back the input, less exactly the newlines consumed."""
    rng = random.Random(99)
    data = make_output(rng)
    splitter = LineSplitter(max_line_bytes)
    pieces: list[bytes] = []
    consumed = 0
    for chunk in random_chunks(data, rng, 50):
        pieces += splitter.feed(chunk)
        consumed += len(chunk)
    pieces += splitter.finish()
    assert consumed == len(data)
    total = sum(len(p) for p in pieces)
    assert total == len(data) - data.count(b"\n")
    assert b"".join(pieces) == data.replace(b"\n", b"")


def test_unseen_lines_counts_when_docker_kept_everything() -> None:
    from ringjobs.engine.lines import unseen_lines

    retained = [b"1", b"2", b"3", b"4"]
    assert unseen_lines(retained, 2, ["1", "2"]) == ([b"3", b"4"], False)
    assert unseen_lines(retained, 0, []) == (retained, False)


def test_unseen_lines_anchors_on_the_stored_tail_after_a_rotation() -> None:
    from ringjobs.engine.lines import unseen_lines

    # 1000 lines stored, Docker kept only 998..1003 after rotating.
    retained = [str(i).encode() for i in range(998, 1004)]
    tail = [str(i) for i in range(996, 1001)][-3:]  # "998", "999", "1000"
    assert unseen_lines(retained, 1000, tail) == ([b"1001", b"1002", b"1003"], False)


def test_unseen_lines_reports_a_gap_when_rotation_passed_everything_stored() -> None:
    from ringjobs.engine.lines import unseen_lines

    retained = [b"2000", b"2001"]
    assert unseen_lines(retained, 1000, ["999", "1000"]) == (retained, True)


def test_unseen_lines_compares_text_as_stored() -> None:
    from ringjobs.engine.lines import unseen_lines

    retained = [b"\xff bad", b"next"]
    assert unseen_lines(retained, 1, ["\ufffd bad"]) == ([b"next"], False)
