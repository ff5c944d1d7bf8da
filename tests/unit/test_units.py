"""Kubernetes-style quantities and Go-style durations: valid forms and error messages."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ringjobs.units import UnitError, format_bytes, parse_cpu, parse_duration, parse_memory

Ki, Mi, Gi, Ti = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512Mi", 512 * Mi),
        ("4Gi", 4 * Gi),
        ("1Ki", Ki),
        ("2Ti", 2 * Ti),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1048576", 1048576),
        ("1.5Gi", 3 * Gi // 2),
        ("0.5Mi", Mi // 2),
        (" 64Mi ", 64 * Mi),
        (1048576, 1048576),
        (1, 1),
    ],
)
def test_memory_valid(value: str | int, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5GB", 'invalid quantity "5GB" (use 512Mi, 4Gi, ...)'),
        ("512mi", 'invalid quantity "512mi" (use 512Mi, 4Gi, ...)'),
        ("Mi", 'invalid quantity "Mi" (use 512Mi, 4Gi, ...)'),
        ("", 'invalid quantity "" (use 512Mi, 4Gi, ...)'),
        ("1e9", 'invalid quantity "1e9" (use 512Mi, 4Gi, ...)'),
        ("1 Gi", 'invalid quantity "1 Gi" (use 512Mi, 4Gi, ...)'),
        (".5Gi", 'invalid quantity ".5Gi" (use 512Mi, 4Gi, ...)'),
        ("-1Gi", 'invalid quantity "-1Gi" (use 512Mi, 4Gi, ...)'),
        ("-5", 'invalid quantity "-5" (use 512Mi, 4Gi, ...)'),
        ("0", 'invalid quantity "0" (must be positive; use 512Mi, 4Gi, ...)'),
        ("0Mi", 'invalid quantity "0Mi" (must be positive; use 512Mi, 4Gi, ...)'),
        ("0.1", 'invalid quantity "0.1" (must be positive; use 512Mi, 4Gi, ...)'),
        (0, "invalid quantity 0 (must be positive; use 512Mi, 4Gi, ...)"),
        (-5, "invalid quantity -5 (must be positive; use 512Mi, 4Gi, ...)"),
        (True, "invalid quantity True (use 512Mi, 4Gi, ...)"),
        (False, "invalid quantity False (use 512Mi, 4Gi, ...)"),
    ],
)
def test_memory_invalid(value: str | int, message: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_memory(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500m", 500_000_000),
        ("1m", 1_000_000),
        ("1500m", 1_500_000_000),
        ("0.5", 500_000_000),
        ("2", 2_000_000_000),
        ("0.25", 250_000_000),
        (" 1 ", 1_000_000_000),
        (2, 2_000_000_000),
        (0.5, 500_000_000),
        (1.5, 1_500_000_000),
    ],
)
def test_cpu_valid(value: str | int | float, expected: int) -> None:
    assert parse_cpu(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1 core", 'invalid cpu "1 core" (use 500m, 0.5, 2, ...)'),
        ("500M", 'invalid cpu "500M" (use 500m, 0.5, 2, ...)'),
        ("m", 'invalid cpu "m" (use 500m, 0.5, 2, ...)'),
        ("", 'invalid cpu "" (use 500m, 0.5, 2, ...)'),
        ("-1", 'invalid cpu "-1" (use 500m, 0.5, 2, ...)'),
        (-1, 'invalid cpu "-1" (use 500m, 0.5, 2, ...)'),
        (-0.5, 'invalid cpu "-0.5" (use 500m, 0.5, 2, ...)'),
        ("0", 'invalid cpu "0" (must be positive; use 500m, 0.5, 2, ...)'),
        ("0m", 'invalid cpu "0m" (must be positive; use 500m, 0.5, 2, ...)'),
        (0, 'invalid cpu "0" (must be positive; use 500m, 0.5, 2, ...)'),
        ("0.0000000001", 'invalid cpu "0.0000000001" (must be positive; use 500m, 0.5, 2, ...)'),
        (True, "invalid cpu True (use 500m, 0.5, 2, ...)"),
        (False, "invalid cpu False (use 500m, 0.5, 2, ...)"),
    ],
)
def test_cpu_invalid(value: str | int | float, message: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_cpu(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("parse", "value", "expected"),
    [
        (parse_cpu, "2.01", 2_010_000_000),
        (parse_cpu, "4.02", 4_020_000_000),
        (parse_memory, "2.01G", 2_010_000_000),
        (parse_memory, "2.03M", 2_030_000),
        (parse_memory, "2.01k", 2_010),
    ],
)
def test_decimal_quantities_are_exact(
    parse: Callable[[str], int], value: str, expected: int
) -> None:
    # Through float, 2.01 * 10**9 is 2009999999.9999998 and int() truncates it.
    assert parse(value) == expected


def test_every_hundredth_is_exact() -> None:
    for hundredths in range(1, 1000):
        text = f"{hundredths // 100}.{hundredths % 100:02d}"
        assert parse_cpu(text) == hundredths * 10**7, text
        assert parse_memory(text + "G") == hundredths * 10**7, text
        assert parse_memory(text + "Mi") == hundredths * 2**20 // 100, text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("1h1m1s", 3661.0),
        ("2m500ms", 120.5),
        ("0s", 0.0),
        (" 5s ", 5.0),
        (45, 45.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_duration_valid(value: str | int | float, expected: float) -> None:
    result = parse_duration(value)
    assert result == pytest.approx(expected)
    assert isinstance(result, float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30", 'invalid duration "30" (use 30s, 10m, 1h30m, ...)'),
        ("", 'invalid duration "" (use 30s, 10m, 1h30m, ...)'),
        ("   ", 'invalid duration "   " (use 30s, 10m, 1h30m, ...)'),
        ("10 m", 'invalid duration "10 m" (use 30s, 10m, 1h30m, ...)'),
        ("1h 30m", 'invalid duration "1h 30m" (use 30s, 10m, 1h30m, ...)'),
        ("1w", 'invalid duration "1w" (use 30s, 10m, 1h30m, ...)'),
        ("5S", 'invalid duration "5S" (use 30s, 10m, 1h30m, ...)'),
        ("1m30", 'invalid duration "1m30" (use 30s, 10m, 1h30m, ...)'),
        ("s", 'invalid duration "s" (use 30s, 10m, 1h30m, ...)'),
        ("-5s", 'invalid duration "-5s" (use 30s, 10m, 1h30m, ...)'),
        (-1, "invalid duration -1 (must not be negative)"),
        (-0.5, "invalid duration -0.5 (must not be negative)"),
        (True, "invalid duration True (use 30s, 10m, 1h30m, ...)"),
        (False, "invalid duration False (use 30s, 10m, 1h30m, ...)"),
    ],
)
def test_duration_invalid(value: str | int | float, message: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_duration(value)
    assert str(info.value) == message


def test_unit_error_is_a_value_error() -> None:
    # Callers (manifest, config, API) catch ValueError to turn it into a violation.
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_memory("lots")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (512 * Mi, "512Mi"),
        (4 * Gi, "4Gi"),
        (Ki, "1Ki"),
        (1536, "1536"),  # not a whole Ki multiple of a larger unit: 1.5Ki
        (3 * Ki, "3Ki"),
        (1000, "1000"),
        (0, "0"),
    ],
)
def test_format_bytes(value: int, expected: str) -> None:
    assert format_bytes(value) == expected


@pytest.mark.parametrize("text", ["512Mi", "4Gi", "1Ki", "3Ki", "1000"])
def test_format_bytes_round_trips(text: str) -> None:
    assert format_bytes(parse_memory(text)) == text
