"""The built wheel is the product: installed outside the checkout it migrates a fresh database and serves /board."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

from common.migrations import discover
from devstack import embedded
from tests.fix_infra import Infra
from tests.helpers import ROOT, Process, seconds


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                            capture_output=True, timeout=seconds(300), check=False)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_the_installed_wheel_migrates_and_serves_the_pages(infra: Infra, tmp_path: Path) -> None:
    # Build from a copy of the tracked files, so the build leaves nothing in the checkout.
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source,
         cwd=tmp_path)
    (wheel,) = dist.glob("dms_realtime-*.whl")

    # A fresh environment: the wheel alone, its dependencies read from the dev environment's site-packages
    # (a path entry, not a site dir, so the editable install of the checkout stays out of it).
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    (site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(python, "-c", "import api, common.migrations as m; print(api.__file__); print(m.SQL_DIR)",
                 cwd=elsewhere).stdout.split()
    # The code from the installed package, the migrations from its data files (not the checkout).
    assert where[0].startswith(str(site)) and where[1] == str(venv / "share" / "dms-realtime" / "sql"), where

    url = embedded.create_database(infra.postgres.port, "wheel_install")
    env = {**infra.env(DATABASE_URL=url), "PYTHONPATH": ""}
    dms = [venv / "bin" / "dms"]  # the console script the wheel installed
    migrated = _run(*dms, "migrate", cwd=elsewhere, env=env)
    assert f"applied {len(discover())} migration" in migrated.stdout, migrated.stdout
    assert _run(*dms, "--version", cwd=elsewhere).stdout.startswith("dms 0.")

    api_port, gateway_port = embedded.free_port(), embedded.free_port()
    gateway = Process("gateway", {**env, "GATEWAY_PORT": str(gateway_port)}, tmp_path / "gateway.log",
                      python=str(python), cwd=elsewhere)
    api = Process("api", {**env, "API_PORT": str(api_port),
                          "PUBLIC_GATEWAY_URL": f"ws://127.0.0.1:{gateway_port}/ws"}, tmp_path / "api.log",
                  python=str(python), cwd=elsewhere)
    try:
        gateway.wait_http_ok(f"http://127.0.0.1:{gateway_port}/health")
        api.wait_http_ok(f"http://127.0.0.1:{api_port}/ready")
        status, page = _get(f"http://127.0.0.1:{api_port}/board")
        assert status == 200
        assets = re.findall(r'(?:src|href|data-client-url)="(/static/[^"]+)"', page)
        assert any("dms-client.js" in a for a in assets) and any("board.js" in a for a in assets), assets
        for asset in assets:
            assert _get(f"http://127.0.0.1:{api_port}{asset.replace('&amp;', '&')}")[0] == 200, asset
        assert _get(f"http://127.0.0.1:{api_port}/api/asyncapi.json")[0] == 200
    finally:
        api.stop()
        gateway.stop()
