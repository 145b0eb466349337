"""Password hashing (argon2id via pwdlib) and the password policy.

Policy, following NIST SP 800-63B §5.1.1.2 (at least 8 characters, no composition rules
beyond that, refuse context-specific words) tightened for GB/T 22239-2019 (MLPS 2.0)
level 3, 8.1.4.1 a) "identity credentials have complexity requirements": at least 10
characters, not all of one character class, and not containing the account name.
"""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

MIN_LENGTH = 10
MAX_LENGTH = 128

_hasher = PasswordHash((Argon2Hasher(),))
# Verified against when the account does not exist, so both paths take the same time.
_DUMMY = _hasher.hash("not-a-real-password-0")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _hasher.hash(password)


def verify_password(password: str, hashed: str | None) -> bool:
    """Whether ``password`` matches; a None hash still costs one verification."""
    if hashed is None:
        _hasher.verify(password, _DUMMY)
        return False
    try:
        return _hasher.verify(password, hashed)
    except ValueError:  # not a hash pwdlib knows
        return False


def _classes(password: str) -> int:
    kinds = (str.islower, str.isupper, str.isdigit)
    found = {i for ch in password for i, kind in enumerate(kinds) if kind(ch)}
    if any(not (ch.islower() or ch.isupper() or ch.isdigit()) for ch in password):
        found.add(3)
    return len(found)


def policy_problems(password: str, username: str) -> list[str]:
    """Why ``password`` is not acceptable for ``username`` (empty: it is)."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        problems.append(f"the password must have at most {MAX_LENGTH} characters")
    if password and _classes(password) < 2:
        problems.append(
            "the password must mix at least two kinds of character "
            "(lower case, upper case, digits, symbols)"
        )
    if username and username.lower() in password.lower():
        problems.append("the password must not contain the account name")
    return problems
