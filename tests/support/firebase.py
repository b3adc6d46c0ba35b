"""Firebase-shaped ID tokens with real RS256 signatures, and a cert endpoint on loopback.

:class:`FirebaseKeys` holds one RSA-2048 key and a self-signed x509 certificate
per ``kid`` and mints tokens shaped like Firebase Auth's. :class:`CertsServer`
serves ``{kid: certificate PEM}`` the way Google's securetoken endpoint does
(``Cache-Control: public, max-age=N, must-revalidate, no-transform``); point
``AUTHZ_FIREBASE_CERTS_URL`` at its :attr:`CertsServer.url`.

Forged variants (``mint(..., variant=...)``):

- ``"rs256"``: legitimate, signed by ``kid``'s key.
- ``"unknown_signer"``: RS256 signed by a key that is not published, header ``kid``
  still names a published key.
- ``"none"``: ``alg: none``, empty signature (the Auth Emulator's shape).
- ``"hs256_confusion"``: ``alg: HS256`` keyed with the published certificate PEM
  (the classic RS/HS key-confusion attack).
- ``"tampered"``: a legitimate token whose payload segment was then replaced
  (``tamper=`` claims, default: a different clientId), signature kept.

An unknown ``kid`` is ``header={"kid": "nope"}``; a missing one is
``remove_header=("kid",)``; expired is ``now=time.time() - 7200`` (or ``exp=...``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "GOOGLE_CERTS_PATH",
    "CertsServer",
    "FirebaseKeys",
    "SignVariant",
    "b64url_decode",
    "b64url_encode",
    "decode_unverified",
]

SignVariant = Literal["rs256", "unknown_signer", "none", "hs256_confusion", "tampered"]
GOOGLE_CERTS_PATH = "/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_segment(obj: Mapping[str, Any]) -> str:
    return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, without checking anything."""
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


def _new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(key: rsa.RSAPrivateKey, kid: str) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test-securetoken-{kid}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=14))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _rs256(key: rsa.RSAPrivateKey, signing_input: bytes) -> str:
    return b64url_encode(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))


def _del_path(claims: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = claims
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


class FirebaseKeys:
    """Signing keys (one per kid) for Firebase-shaped ID tokens.

    ``server`` is set by whoever starts a :class:`CertsServer` for these keys
    (the ``firebase`` fixture does), so tests reach both through one object.
    """

    def __init__(self, project_id: str = "demo-relay", kids: int | Sequence[str] = 1) -> None:
        self.project_id = project_id
        self.server: CertsServer | None = None
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[rsa.RSAPrivateKey, str]] = {}
        self._rogue: rsa.RSAPrivateKey | None = None
        names = [None] * kids if isinstance(kids, int) else list(kids)
        for kid in names:
            self.add_key(kid)

    # -- keys ----------------------------------------------------------------

    def add_key(self, kid: str | None = None) -> str:
        """Generate and publish a new key (rotation); returns its kid."""
        kid = kid or uuid.uuid4().hex[:40]
        key = _new_rsa()
        with self._lock:
            self._keys[kid] = (key, _self_signed(key, kid))
        return kid

    def remove_key(self, kid: str) -> None:
        with self._lock:
            del self._keys[kid]

    def snapshot(self) -> dict[str, tuple[rsa.RSAPrivateKey, str]]:
        """The current key set, for :meth:`restore` (undo a test's rotation)."""
        with self._lock:
            return dict(self._keys)

    def restore(self, snapshot: Mapping[str, tuple[rsa.RSAPrivateKey, str]]) -> None:
        with self._lock:
            self._keys = dict(snapshot)

    @property
    def kids(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    @property
    def default_kid(self) -> str:
        """The first published kid: the signer when ``mint`` is given none."""
        kids = self.kids
        if not kids:
            raise RuntimeError("no keys")
        return kids[0]

    def private_key(self, kid: str) -> rsa.RSAPrivateKey:
        with self._lock:
            return self._keys[kid][0]

    def cert_pem(self, kid: str) -> str:
        with self._lock:
            return self._keys[kid][1]

    def certs_json(self) -> dict[str, str]:
        """``{kid: x509 certificate PEM}``, the shape Google's endpoint serves."""
        with self._lock:
            return {kid: pem for kid, (_, pem) in self._keys.items()}

    # -- tokens --------------------------------------------------------------

    def claims(
        self,
        project_id: str | None,
        uid: str,
        client_id: str | None = None,
        tenant: str | None = None,
        *,
        now: float | None = None,
        lifetime: int = 3600,
        remove: Iterable[str] = (),
        **overrides: Any,
    ) -> dict[str, Any]:
        """Firebase ID token claims; ``overrides`` replace top-level claims and
        ``remove`` deletes claims by dotted name (``"firebase.tenant"``)."""
        project = project_id if project_id is not None else self.project_id
        iat = int(now if now is not None else time.time())
        firebase: dict[str, Any] = {"identities": {}, "sign_in_provider": "password"}
        if tenant is not None:
            firebase["tenant"] = tenant
        claims: dict[str, Any] = {
            "iss": f"https://securetoken.google.com/{project}",
            "aud": project,
            "auth_time": iat,
            "user_id": uid,
            "sub": uid,
            "iat": iat,
            "exp": iat + lifetime,
            "firebase": firebase,
        }
        if client_id is not None:
            claims["clientId"] = client_id
        claims.update(overrides)
        for name in remove:
            _del_path(claims, name)
        return claims

    def mint(
        self,
        project_id: str | None,
        uid: str,
        client_id: str | None = None,
        tenant: str | None = None,
        *,
        kid: str | None = None,
        variant: SignVariant = "rs256",
        header: Mapping[str, Any] | None = None,
        remove_header: Iterable[str] = (),
        remove: Iterable[str] = (),
        now: float | None = None,
        lifetime: int = 3600,
        tamper: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A compact JWS Firebase ID token. ``project_id=None`` uses ``self.project_id``."""
        claims = self.claims(
            project_id,
            uid,
            client_id,
            tenant,
            now=now,
            lifetime=lifetime,
            remove=remove,
            **overrides,
        )
        return self.sign(
            claims,
            kid=kid,
            variant=variant,
            header=header,
            remove_header=remove_header,
            tamper=tamper,
        )

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        variant: SignVariant = "rs256",
        header: Mapping[str, Any] | None = None,
        remove_header: Iterable[str] = (),
        tamper: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign arbitrary ``claims`` (see the module docstring for ``variant``)."""
        kid = kid or self.default_kid
        alg = {"none": "none", "hs256_confusion": "HS256"}.get(variant, "RS256")
        hdr: dict[str, Any] = {"alg": alg, "kid": kid, "typ": "JWT"}
        hdr.update(header or {})
        for name in remove_header:
            hdr.pop(name, None)
        head, body = _json_segment(hdr), _json_segment(claims)
        signing_input = f"{head}.{body}".encode("ascii")

        if variant == "none":
            return f"{head}.{body}."
        if variant == "hs256_confusion":
            secret = self.cert_pem(kid).encode("ascii") if kid in self.kids else b"secret"
            mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
            return f"{head}.{body}.{b64url_encode(mac)}"
        if variant == "unknown_signer":
            if self._rogue is None:
                self._rogue = _new_rsa()
            return f"{head}.{body}.{_rs256(self._rogue, signing_input)}"
        key = self.private_key(kid) if kid in self.kids else self.private_key(self.default_kid)
        sig = _rs256(key, signing_input)
        if variant == "tampered":
            changed = dict(claims)
            if tamper:
                changed.update(tamper)
            elif "clientId" in changed:
                changed["clientId"] = f"{changed['clientId']}-tampered"
            else:
                changed["sub"] = changed["user_id"] = f"{changed.get('sub', '')}-tampered"
            return f"{head}.{_json_segment(changed)}.{sig}"
        return f"{head}.{body}.{sig}"


# --------------------------------------------------------------------------- cert endpoint


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.split("?", 1)[0] != owner.path:
            self._send(404, b'{"error":"not found"}', {})
            return
        status, body, headers, delay = owner._answer()
        if delay:
            time.sleep(delay)
        self._send(status, body, headers)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: CertsServer) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self._sock_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self._sock_lock:
            self.open_sockets.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._sock_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._sock_lock:
            socks = list(self.open_sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class CertsServer:
    """Plain HTTP on 127.0.0.1 serving ``keys.certs_json()`` (live: rotation shows at once)."""

    def __init__(
        self,
        keys: FirebaseKeys,
        *,
        max_age: int = 3600,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = GOOGLE_CERTS_PATH,
    ) -> None:
        self.host = host
        self.path = path
        self._port = port
        self._keys = keys
        self._max_age = max_age
        self._down_status: int | None = None
        self._delay = 0.0
        self._fetch_count = 0
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- state ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("CertsServer not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def fetch_count(self) -> int:
        """Requests to the certs path so far (including ones answered 503)."""
        with self._lock:
            return self._fetch_count

    def reset_fetch_count(self) -> None:
        with self._lock:
            self._fetch_count = 0

    @property
    def keys(self) -> FirebaseKeys:
        return self._keys

    def set_keys(self, keys: FirebaseKeys) -> None:
        with self._lock:
            self._keys = keys

    def set_max_age(self, seconds: int) -> None:
        with self._lock:
            self._max_age = seconds

    def set_down(self, down: bool = True, status: int = 503) -> None:
        """Answer ``status`` instead of the certs (endpoint failing) while down."""
        with self._lock:
            self._down_status = status if down else None

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering (a slow endpoint)."""
        with self._lock:
            self._delay = seconds

    def reset(self) -> None:
        """Back to serving normally: up, no delay, count zeroed (max-age kept)."""
        with self._lock:
            self._down_status = None
            self._delay = 0.0
            self._fetch_count = 0

    def _answer(self) -> tuple[int, bytes, dict[str, str], float]:
        with self._lock:
            self._fetch_count += 1
            delay = self._delay
            if self._down_status is not None:
                body = b'{"error":"unavailable"}'
                return self._down_status, body, {"Cache-Control": "no-store"}, delay
            keys, max_age = self._keys, self._max_age
        body = json.dumps(keys.certs_json(), indent=2).encode()
        cc = f"public, max-age={max_age}, must-revalidate, no-transform"
        expires = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + max_age))
        return 200, body, {"Cache-Control": cc, "Expires": expires}, delay

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        """Bind (the same port again after a stop) and serve in a thread."""
        if self._httpd is not None:
            raise RuntimeError("already running")
        httpd = _HTTPServer((self.host, self._port), self)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop entirely: close the listener and every open connection."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if thread is not None:
            thread.join(5)
        self._httpd = self._thread = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
