"""``python -m smartmed.portal create-admin`` makes a platform administrator who can log in."""

from __future__ import annotations

import re
from pathlib import Path

import pyotp
from typer.testing import CliRunner

from smartmed.portal.__main__ import app

SECRET = "synthetic-cli-test-secret-0123456789"


def test_create_admin(tmp_path: Path) -> None:
    env = {
        "SMARTMED_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/smartmed.db",
        "SMARTMED_SECRET_KEY": SECRET,
        "ADMIN_PASSWORD": "First-Admin-2026",
    }
    runner = CliRunner()
    args = ["create-admin", "--username", "root-admin", "--password-env", "ADMIN_PASSWORD"]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    secret = re.search(r"TOTP secret \(shown once\): ([A-Z2-7]+)", result.output)
    assert secret and len(pyotp.TOTP(secret.group(1)).now()) == 6
    again = runner.invoke(app, args, env=env)
    assert again.exit_code == 1 and "taken" in again.output
    weak = runner.invoke(
        app, ["create-admin", "--username", "x", "--password-env", "NOPE"], env=env
    )
    assert weak.exit_code == 1
