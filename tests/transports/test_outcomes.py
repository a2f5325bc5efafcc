"""Reading the hub's answers: the ``Retry-After`` header, in seconds and as a date."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.outcomes import parse_retry_after


def test_retry_after_seconds_and_dates():
    now = 1_700_000_000.0
    assert parse_retry_after("120", now=now) == 120.0
    when = datetime.fromtimestamp(now + 90, tz=timezone.utc)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == pytest.approx(
        90, abs=1
    )
    past = datetime.fromtimestamp(now - 90, tz=timezone.utc)
    assert parse_retry_after(format_datetime(past, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None, now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after("\u00b2", now=now) is None
    assert parse_retry_after("\u0663", now=now) is None


@pytest.mark.parametrize("digits", [17, 400, 5000])
def test_retry_after_of_many_digits_is_read_not_raised(digits):
    value = parse_retry_after("9" * digits, now=0.0)
    assert value is not None and value >= 1e16


@given(st.text())
@settings(max_examples=200)
def test_retry_after_parser_is_total(text):
    value = parse_retry_after(text, now=0.0)
    assert value is None or value >= 0
