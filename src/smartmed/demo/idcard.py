"""Resident identity card numbers (公民身份号码) of GB 11643-1999.

An 18-character number: a 6-digit administrative region code (GB/T 2260), the
birth date ``YYYYMMDD``, a 3-digit sequence number whose last digit is odd for men
and even for women, and a check character computed with ISO 7064 MOD 11-2 over the
first 17 digits (``X`` stands for the value 10).
"""

from __future__ import annotations

from datetime import date

# Weights of ISO 7064 MOD 11-2 for positions 1..17: 2**(18 - i) mod 11.
_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_CHECK = "10X98765432"  # check character for (sum of weighted digits) mod 11


def check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError(f"17 digits expected, got {first17!r}")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK[total % 11]


def make_id_number(region: str, birth: date, sequence: int) -> str:
    """The identity number for ``region``, ``birth`` and a sequence 1..999 (odd = male)."""
    if len(region) != 6 or not region.isdigit():
        raise ValueError(f"6-digit region code expected, got {region!r}")
    if not 1 <= sequence <= 999:
        raise ValueError(f"sequence out of range: {sequence}")
    first17 = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return first17 + check_char(first17)


def is_valid(number: str) -> bool:
    """Whether ``number`` has the 18-character form, a real birth date and the right check."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        birth_of(number)
    except ValueError:
        return False
    return check_char(number[:17]) == number[17].upper()


def birth_of(number: str) -> date:
    """The birth date coded in an identity number."""
    return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))


def is_male(number: str) -> bool:
    """Whether the sequence number codes a man (odd) rather than a woman (even)."""
    return int(number[16]) % 2 == 1
