import pytest

from agent.config import format_duration, parse_duration, parse_interval


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("4h", 14400), ("1d", 86400),
                                          ("1h30m", 5400), ("1.5h", 5400), ("2w", 1209600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "-5m", "0s", "1h 3", "h1"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_interval_ranges():
    interval = parse_interval("4h..6h")
    assert (interval.low, interval.high, interval.is_range) == (14400, 21600, True)
    assert not parse_interval("24h").is_range
    with pytest.raises(ValueError, match="low end"):
        parse_interval("6h..4h")


def test_format_duration():
    assert format_duration(5400) == "1h30m" and format_duration(30) == "30s"
