"""A stand-in for the one Kubernetes API call Vault's kubernetes auth method makes.

Vault (here OpenBao) checks a service-account token it is given at login by posting a
``TokenReview`` to ``<kubernetes_host>/apis/authentication.k8s.io/v1/tokenreviews``.
:class:`FakeKubernetesAPI` answers exactly that, over TLS on 127.0.0.1 (OpenBao requires a
CA certificate for the Kubernetes host), from a table of tokens it issued itself with
:meth:`FakeKubernetesAPI.issue`. It is the only stand-in in the Vault auth tests: the
OpenBao server, its kubernetes auth method, the login and the token renewal are real.

Issued tokens are JWT-shaped like the kubelet's projected tokens (OpenBao reads the
namespace and service account name from the claims, checks ``nbf``/``exp``, and leaves
the signature to the TokenReview); they are signed with a throwaway RSA key.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.tls import TestPKI

__all__ = ["FakeKubernetesAPI", "ServiceAccount"]

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


@dataclass
class _Issued:
    account: ServiceAccount
    audiences: tuple[str, ...]
    expires_at: float
    revoked: bool = False


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            review = json.loads(self.rfile.read(length))
        except ValueError:
            self._send(400, {"kind": "Status", "status": "Failure", "reason": "BadRequest"})
            return
        if self.path != TOKEN_REVIEW_PATH:
            self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound"})
            return
        self.server.owner.reviews.append(review)
        spec = review.get("spec") or {}
        status = self.server.owner.review(str(spec.get("token") or ""),
                                          tuple(spec.get("audiences") or ()))
        self._send(201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                         "metadata": {}, "spec": spec, "status": status})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: FakeKubernetesAPI) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner


class FakeKubernetesAPI:
    """TokenReview over TLS with the test PKI's server certificate."""

    def __init__(self, pki: TestPKI, issuer: str = "https://kubernetes.default.svc") -> None:
        self.pki = pki
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._issued: dict[str, _Issued] = {}
        self.reviews: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def ca_pem(self) -> str:
        return self.pki.ca_file.read_text()

    def start(self) -> Self:
        server = _Server(self)
        server.socket = self.pki.server_context().wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tokens ------------------------------------------------------------------

    def issue(self, account: ServiceAccount, audiences: tuple[str, ...] = ("vault",),
              ttl_s: float = 3600) -> str:
        """A projected-style service account token that this API will vouch for."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": account.username,
            "aud": list(audiences),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_s),
            "jti": secrets.token_hex(8),
            "kubernetes.io": {
                "namespace": account.namespace,
                "serviceaccount": {"name": account.name, "uid": account.uid},
            },
        }
        header = {"alg": "RS256", "kid": "fake-kubernetes", "typ": "JWT"}
        signing_input = (_b64(json.dumps(header).encode()) + "." +
                         _b64(json.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = signing_input + "." + _b64(signature)
        self._issued[token] = _Issued(account, audiences, now + ttl_s)
        return token

    def revoke(self, token: str) -> None:
        self._issued[token].revoked = True

    def review(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        issued = self._issued.get(token)
        if (issued is None or issued.revoked or time.time() >= issued.expires_at
                or (audiences and not set(audiences) & set(issued.audiences))):
            return {"authenticated": False, "error": "token is not valid", "user": {}}
        return {
            "authenticated": True,
            "audiences": list(audiences or issued.audiences),
            "user": {
                "username": issued.account.username,
                "uid": issued.account.uid,
                "groups": ["system:serviceaccounts",
                           f"system:serviceaccounts:{issued.account.namespace}"],
            },
        }
