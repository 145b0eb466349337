"""Templates in both languages; recipients' addresses and language from their FHIR resource."""

from __future__ import annotations

from typing import Any

import pytest

from smartmed.notify.recipients import WECHAT_OPENID_SYSTEM, language, openid, telecom
from smartmed.notify.templates import LOCALES, TEMPLATE_DIR, render, template_names

SAMPLES: dict[str, dict[str, Any]] = {
    "bp-alert": {
        "patient": "张三",
        "systolic": 182,
        "diastolic": 110,
        "measured_at": "2026-11-22T01:30:00Z",
    },
    "followup-reminder": {"name": "李四", "doctor": "王", "due": "2026-12-01", "place": "卫生院"},
    "contract-renewal": {"name": "李四", "team": "一队", "ends": "2026-12-31"},
    "contract-invitation": {
        "name": "李四",
        "team": "一队",
        "link": "https://county.example/contracting/apply?t=abc",
        "expires": "2026-11-29T05:30:00.000000Z",
    },
    "break-glass": {
        "clinician": "Practitioner/12",
        "reason": "昏迷送急诊",
        "until": "2026-11-22T05:30:00.000000Z",
    },
    "payment-review": {
        "order": "9057ab46-b2bf-4cd5-9ebf-7c233d7eee72",
        "anomaly": "amount-mismatch",
        "amount": "1.20",
        "expected": "120.00",
        "description": "高血压随访服务包",
    },
}


def test_every_template_exists_in_every_locale() -> None:
    assert template_names() == frozenset(SAMPLES)
    for locale in LOCALES:
        names = {p.name.removesuffix(".j2") for p in (TEMPLATE_DIR / locale).glob("*.j2")}
        assert names == set(SAMPLES), locale


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_template_renders(name: str, locale: str) -> None:
    rendered = render(name, locale, SAMPLES[name], timezone="Asia/Shanghai")
    assert rendered.locale == locale
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.body and rendered.sms
    assert len(rendered.sms) <= 140  # one or two SMS segments
    assert all(rendered.wechat.values())


def test_english_and_chinese_differ_and_unknown_locale_falls_back() -> None:
    zh = render("bp-alert", "zh-CN", SAMPLES["bp-alert"], timezone="Asia/Shanghai")
    en = render("bp-alert", "en", SAMPLES["bp-alert"], timezone="Asia/Shanghai")
    assert (zh.subject, en.subject) == ("血压异常提醒：张三", "Blood pressure alert: 张三")
    assert render("bp-alert", "fr", SAMPLES["bp-alert"], timezone="UTC").locale == "zh-CN"
    # The platform time zone decides the clock shown.
    assert "01:30" in render("bp-alert", "en", SAMPLES["bp-alert"], timezone="UTC").body


def test_wechat_defaults_without_wechat_blocks() -> None:
    r = render("contract-renewal", "en", SAMPLES["contract-renewal"], timezone="Asia/Shanghai")
    assert r.wechat == {"first": r.subject, "remark": r.body}


def _concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": "urn:ietf:bcp:47", "code": code}]}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"resourceType": "Patient"}, None),
        ({"resourceType": "Patient", "communication": [{"language": _concept("en-US")}]}, "en"),
        ({"resourceType": "Patient", "communication": [{"language": _concept("zh")}]}, "zh-CN"),
        ({"resourceType": "Patient", "communication": [{"language": _concept("fr")}]}, None),
        (
            {
                "resourceType": "Patient",
                "communication": [
                    {"language": _concept("zh-CN")},
                    {"language": _concept("en"), "preferred": True},
                ],
            },
            "en",
        ),
        ({"resourceType": "Practitioner", "communication": [_concept("en")]}, "en"),
        ({"resourceType": "RelatedPerson", "communication": [{"language": _concept("en")}]}, "en"),
    ],
)
def test_language(body: dict[str, Any], expected: str | None) -> None:
    assert language(body) == expected


def test_telecom_choice() -> None:
    body = {
        "telecom": [
            {"system": "phone", "value": "0571-1234567", "use": "home"},
            {"system": "phone", "value": "+8613800000009", "use": "old"},
            {"system": "phone", "value": "+8613800000008", "period": {"end": "2020-01-01"}},
            {"system": "phone", "value": "+8613800000001", "use": "mobile", "rank": 2},
            {"system": "sms", "value": "+8613800000002", "rank": 1},
            {"system": "email", "value": "b@example.org", "rank": 2},
            {"system": "email", "value": "a@example.org", "rank": 1},
        ]
    }
    assert telecom(body, "sms") == "+8613800000002"
    assert telecom(body, "email") == "a@example.org"
    landline_only = {"telecom": [{"system": "phone", "value": "0571-1234567", "use": "work"}]}
    assert telecom(landline_only, "sms") is None
    unranked = {
        "telecom": [
            {"system": "phone", "value": "+8613800000003"},
            {"system": "phone", "value": "+8613800000004", "use": "mobile"},
        ]
    }
    assert telecom(unranked, "sms") == "+8613800000004"


def test_openid() -> None:
    body = {
        "identifier": [
            {"system": "urn:other", "value": "x"},
            {"system": WECHAT_OPENID_SYSTEM, "value": " o-abc "},
        ]
    }
    assert openid(body) == "o-abc"
    assert openid({"identifier": [{"system": WECHAT_OPENID_SYSTEM, "value": ""}]}) is None
