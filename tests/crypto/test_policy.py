"""The protection policy: what is sealed, what is blinded, what is left alone."""

from __future__ import annotations

import os
from datetime import date, datetime
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from smartmed.crypto.ciphers import AES, suite
from smartmed.crypto.keys import Key
from smartmed.crypto.policy import Policy, Sealer, is_id_number
from smartmed.crypto.protector import CryptoProtector
from smartmed.demo.idcard import make_id_number
from smartmed.fhir import jsonio

RESIDENT = "urn:smartmed:id:resident"
ID_1 = make_id_number("110105", date(1949, 12, 31), 2)
ID_2 = make_id_number("320102", date(1990, 7, 1), 311)


def _fake() -> Sealer:
    return Sealer(Policy(), lambda v: f"S({v})", lambda v: f"B({v})")


def _protector() -> CryptoProtector:
    protector = CryptoProtector(kek=os.urandom(32), algorithm=suite(AES), policy=Policy(), url="")
    now = datetime(2026, 11, 22)
    protector._install(
        {
            "k1": Key("k1", "data", suite(AES), os.urandom(32), "active", now),
            "b1": Key("b1", "blind", suite(AES), os.urandom(32), "active", now),
        }
    )
    return protector


def test_patient_identifier_phone_and_leaks() -> None:
    patient = {
        "resourceType": "Patient",
        "text": {"status": "generated", "div": f"<div>ID {ID_1}, tel 13812345678</div>"},
        "identifier": [
            {"system": RESIDENT, "value": ID_1, "type": {"text": "居民身份证号码"}},
            {"system": "urn:mrn", "value": "M-1"},
        ],
        "telecom": [
            {"system": "phone", "value": "13812345678"},
            {"system": "email", "value": "a@b.cn"},
            {"system": "sms", "value": "120"},
        ],
        "contact": [{"telecom": [{"system": "phone", "value": "13900000000"}]}],
        "note": "enc:v1:k1:looks-sealed",
    }
    forms = _fake().run(patient)
    assert forms is not None
    stored, indexed = forms
    assert stored["identifier"] == [
        {"system": RESIDENT, "value": f"S({ID_1})", "type": {"text": "居民身份证号码"}},
        {"system": "urn:mrn", "value": "M-1"},
    ]
    assert indexed["identifier"][0]["value"] == f"B({ID_1})"
    assert stored["telecom"] == [
        {"system": "phone", "value": "S(13812345678)"},
        {"system": "email", "value": "a@b.cn"},
        {"system": "sms", "value": "S(120)"},
    ]
    assert stored["contact"][0]["telecom"][0]["value"] == "S(13900000000)"
    # the narrative repeats protected values: sealed whole, indexed masked
    div = patient["text"]["div"]  # type: ignore[index]
    assert stored["text"]["div"] == f"S({div})"
    assert indexed["text"]["div"] == f"<div>ID 110***********{ID_1[-4:]}, tel 138****5678</div>"
    # a client string that looks sealed is sealed, so that it reads back as sent
    assert stored["note"] == "S(enc:v1:k1:looks-sealed)"
    # the input is never changed
    assert patient["identifier"][0]["value"] == ID_1  # type: ignore[index]


def test_what_is_left_alone() -> None:
    organization = {
        "resourceType": "Organization",
        "telecom": [{"system": "phone", "value": "0571-88886666"}],
        "identifier": [{"system": "urn:org", "value": "VC0101"}],
    }
    text = jsonio.dumps(organization)
    assert Policy().may_hold("Organization", text) is False
    assert _fake().run(organization) is None
    # a wrong check character is no ID number; quantities and codings are not identifiers
    wrong = ID_1[:-1] + ("0" if ID_1[-1] != "0" else "1")
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:lab", "value": wrong}],
        "valueQuantity": {"value": 5, "system": RESIDENT, "code": "x"},
        "code": {"coding": [{"system": RESIDENT, "code": ID_2[:6]}]},
    }
    assert is_id_number(wrong) is False
    assert _fake().run(observation) is None


def test_anywhere_and_contained() -> None:
    observation = {
        "resourceType": "Observation",
        "subject": {"identifier": {"system": RESIDENT, "value": ID_1}},
        "identifier": [{"system": "urn:lab", "value": ID_2}],  # a valid ID number
        "note": [{"text": f"called back, ID {ID_2}"}],
        "contained": [
            {"resourceType": "RelatedPerson", "telecom": [{"system": "phone", "value": "1390"}]},
            {"resourceType": "Organization", "telecom": [{"system": "phone", "value": "0571"}]},
        ],
    }
    forms = _fake().run(observation)
    assert forms is not None
    stored, indexed = forms
    assert stored["subject"]["identifier"]["value"] == f"S({ID_1})"
    assert stored["identifier"][0]["value"] == f"S({ID_2})"
    assert indexed["identifier"][0]["value"] == f"B({ID_2})"
    assert stored["note"][0]["text"] == f"S(called back, ID {ID_2})"
    assert stored["contained"][0]["telecom"][0]["value"] == "S(1390)"
    assert stored["contained"][1]["telecom"][0]["value"] == "0571"


def test_configured_systems_and_types() -> None:
    policy = Policy(systems=frozenset({"urn:insurance"}), phone_types=frozenset({"Organization"}))
    sealer = Sealer(policy, lambda v: f"S({v})", lambda v: f"B({v})")
    forms = sealer.run(
        {
            "resourceType": "Organization",
            "identifier": [{"system": "urn:insurance", "value": "INS-42"}],
            "telecom": [{"system": "phone", "value": "0571-88886666"}],
        }
    )
    assert forms is not None
    assert forms[0]["identifier"][0]["value"] == "S(INS-42)"
    assert forms[0]["telecom"][0]["value"] == "S(0571-88886666)"


_VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


@given(value=_VALUES, phone=_VALUES)
def test_seal_reveal_round_trip(value: str, phone: str) -> None:
    protector = _protector()
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT, "value": value}],
        "telecom": [{"system": "phone", "value": phone}],
        "active": True,
    }
    text = jsonio.dumps(resource)
    sealed = protector.seal(resource, text)
    assert sealed is not None
    # the stored text reveals to exactly the resource
    assert orjson.loads(protector.reveal(sealed.stored)) == resource
    # the index form carries the blind tokens, the same for the same value
    assert sealed.indexed["identifier"][0]["value"] == protector.blind(value)
    assert sealed.indexed["telecom"][0]["value"] == protector.blind(phone)
    # and a long enough value appears nowhere in the stored text
    skeleton = jsonio.dumps({**resource, "identifier": [], "telecom": []})
    for secret in (value, phone):
        encoded = orjson.dumps(secret).decode()[1:-1]
        if len(secret) >= 6 and encoded not in skeleton and encoded not in "enc:v1:k1:bidx":
            assert encoded not in sealed.stored


@given(value=_VALUES)
def test_seal_text_round_trip(value: str) -> None:
    protector = _protector()
    stored = protector.seal_text(value)
    assert stored.startswith("enc:v1:k1:")
    assert protector.reveal_text(stored) == value
    assert protector.reveal_text("plain body") == "plain body"


def test_reveal_fast_path_returns_the_same_object() -> None:
    protector = _protector()
    text = '{"resourceType":"Observation","status":"final"}'
    assert protector.reveal(text) is text
