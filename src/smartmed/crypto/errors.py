"""Errors of the encryption layer.

CryptoError
 ├── CryptoConfigError   bad or mismatched configuration: stops start-up
 ├── KeyUnavailable      a stored value names a data key the key table does not have
 └── DecryptError        a stored value does not decrypt (corrupted, or a wrong key)
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of the encryption layer's errors."""


class CryptoConfigError(CryptoError):
    """The configured keys or algorithm cannot serve this database."""


class KeyUnavailable(CryptoError):
    """A data key named by a stored value is not in the key table."""


class DecryptError(CryptoError):
    """A stored value failed authentication."""
