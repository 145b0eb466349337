"""Masking of ID numbers and phones: helpers and the structlog processor."""

from __future__ import annotations

import io
import json
from datetime import date

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from smartmed.config import Settings
from smartmed.crypto import mask_id, mask_phone, mask_processor, mask_text
from smartmed.demo.idcard import make_id_number
from smartmed.logging import configure_logging


def test_mask_id_and_phone() -> None:
    assert mask_id("110105194912310021") == "110***********0021"
    assert mask_id("11010519491231002X") == "110***********002X"
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+86 138-1234-5678") == "+86 138****5678"
    assert mask_phone("8613812345678") == "86 138****5678"
    assert mask_phone("0571-88886666") == "057*****6666"
    assert mask_phone("12345") == "***45"
    assert mask_id("") == ""


@given(value=st.text(min_size=8, max_size=40))
def test_masked_keeps_length_and_ends(value: str) -> None:
    masked = mask_id(value)
    assert len(masked) == len(value)
    assert masked[:3] == value[:3] and masked[-4:] == value[-4:]
    assert set(masked[3:-4]) <= {"*"}


def test_mask_text_finds_numbers_in_free_text() -> None:
    number = make_id_number("110105", date(1949, 12, 31), 2)
    text = f"identifier=urn%3Asmartmed%3Aid%3Aresident%7C{number}&phone=13812345678"
    assert mask_text(text) == (
        f"identifier=urn%3Asmartmed%3Aid%3Aresident%7C110***********{number[-4:]}&phone=138****5678"
    )
    # digits that are no ID number or mobile stay: versions, timestamps, counts
    untouched = "version 12 at 2026-11-22T00:01:11.869059Z took 1234567 µs; pk 123456789012"
    assert mask_text(untouched) == untouched
    # a 19-digit run is no ID number
    assert mask_text("1101051949123100211") == "1101051949123100211"


def test_processor_masks_nested_values() -> None:
    event = {
        "event": "patient 13812345678 registered",
        "query": {"identifier": ["110105194912310021"]},
        "count": 3,
        "error": ValueError("bad id 110105194912310021"),
    }
    out = mask_processor(None, "info", event)
    assert out == {
        "event": "patient 138****5678 registered",
        "query": {"identifier": ["110***********0021"]},
        "count": 3,
        "error": "ValueError('bad id 110***********0021')",
    }


def test_configured_logging_masks(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_json=True))
    try:
        stream = io.StringIO()
        logger = structlog.wrap_logger(
            structlog.PrintLogger(stream),
            processors=structlog.get_config()["processors"],
        )
        logger.info("lookup", url="/fhir/R4/Patient?phone=13812345678", id="110105194912310021")
        line = json.loads(stream.getvalue())
        assert line["url"] == "/fhir/R4/Patient?phone=138****5678"
        assert line["id"] == "110***********0021"
        assert "13812345678" not in stream.getvalue()
    finally:
        structlog.reset_defaults()
