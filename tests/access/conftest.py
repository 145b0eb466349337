"""The access tests reuse the identity tests' application (auth required) and helpers."""

from tests.identity.conftest import auth_app, identity

__all__ = ["auth_app", "identity"]
