"""The three processes start the same way: a bad environment stops them with status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.boot import EXIT_BAD_CONFIG, boot


def test_a_bad_value_exits_with_2_and_names_it(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("API_PORT", "not-a-port")
    with pytest.raises(SystemExit) as stopped:
        boot("api")
    assert stopped.value.code == EXIT_BAD_CONFIG
    assert "API_PORT" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["api", "gateway", "relay", "gateway.relay"])
def test_every_process_boots_through_it(module: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "API_PORT": "not-a-port"}
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_BAD_CONFIG, done.stderr
    assert "API_PORT" in done.stderr
