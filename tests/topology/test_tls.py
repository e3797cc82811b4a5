"""TLS in nginx (contract section 6): https:// and wss:// with a generated CA, HSTS, TLS 1.2 or later only."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

from devstack import embedded, nginx, tls
from devstack.stack import Stack
from tests.fix_world import World
from tests.helpers import seconds

pytestmark = pytest.mark.needs_system("nginx")


@pytest.fixture
def tls_site(tmp_path: Path, start_api: Any, start_gateway: Any) -> Any:
    files = tls.self_signed(tmp_path / "tls")
    _, api = start_api()
    _, gw = start_gateway(name="tls")
    site = nginx.Site(api_ports=(int(api.rsplit(":", 1)[1]),), gateway_ports=(int(gw["http"].rsplit(":", 1)[1]),),
                      listen_port=embedded.free_port(), tls_cert_file=str(files.cert_file),
                      tls_key_file=str(files.key_file))
    server = nginx.start(site, tmp_path / "nginx")
    yield f"127.0.0.1:{site.listen_port}", files
    server.stop(sig=signal.SIGTERM, timeout_s=10)


def test_https_and_wss_with_the_generated_ca(tls_site: Any, world: World) -> None:
    address, files = tls_site
    trusted = ssl.create_default_context(cafile=str(files.ca_file))
    for path in ("/health", "/api/restaurants"):
        request = urllib.request.Request(f"https://{address}{path}", headers={"Authorization": f"Bearer {world.admin}"})
        with urllib.request.urlopen(request, context=trusted, timeout=seconds(10)) as response:
            assert response.status == 200
            assert response.headers.get_all("Strict-Transport-Security") == ["max-age=31536000; includeSubDomains"]
    ticket = urllib.request.Request(f"https://{address}/api/realtime/ticket", method="POST",
                                    headers={"Authorization": f"Bearer {world.admin}"})
    with urllib.request.urlopen(ticket, context=trusted, timeout=seconds(10)) as response:
        issued = json.loads(response.read())["ticket"]
    ws = websocket.create_connection(f"wss://{address}/ws?ticket={issued}", timeout=seconds(10),
                                     sslopt={"ca_certs": str(files.ca_file)})
    assert '"welcome"' in ws.recv()
    ws.close()
    # Without the CA the certificate is not trusted: it really is TLS with our pair.
    with pytest.raises(urllib.error.URLError) as untrusted:
        urllib.request.urlopen(f"https://{address}/health", context=ssl.create_default_context(),
                               timeout=seconds(10))
    assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)


def _handshake(address: str, version: ssl.TLSVersion, ca_file: Path) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca_file))
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer an old version at all
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=seconds(10)) as raw, \
            context.wrap_socket(raw, server_hostname=host) as wrapped:
        return str(wrapped.version())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused_and_1_2_accepted(tls_site: Any) -> None:
    address, files = tls_site
    assert _handshake(address, ssl.TLSVersion.TLSv1_2, files.ca_file) == "TLSv1.2"
    assert _handshake(address, ssl.TLSVersion.TLSv1_3, files.ca_file) == "TLSv1.3"
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(address, ssl.TLSVersion.TLSv1_1, files.ca_file)
    # The server refused it with a protocol-version alert (not this client failing to offer it).
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value), refused.value


def test_dms_up_tls_pair_is_made_once_and_kept(tmp_path: Path) -> None:
    first = tls.self_signed(tmp_path / "tls")
    pem = first.cert_file.read_bytes()
    assert tls.self_signed(tmp_path / "tls").cert_file.read_bytes() == pem
    assert first.key_file.stat().st_mode & 0o077 == 0  # the key is the owner's only


def test_dms_up_tls_writes_https_and_wss_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "PUBLIC_GATEWAY_URL"):
        monkeypatch.delenv(name, raising=False)
    stack = Stack(home=tmp_path, tls=True, nginx_port=18443)
    settings = dict(line.split("=", 1) for line in stack.write_env_file().read_text().splitlines())
    assert settings["NGINX_URL"] == "https://127.0.0.1:18443"
    assert settings["GATEWAY_URL"] == settings["PUBLIC_GATEWAY_URL"] == "wss://127.0.0.1:18443/ws"
    assert Path(settings["TLS_CA_FILE"]) == tmp_path / "tls" / "ca.pem"
    assert (tmp_path / "tls" / "cert.pem").exists()
