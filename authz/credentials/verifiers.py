"""The single entry for every credential type: one TokenVerifier that routes each token to
the one verifier its shape and (unverified) issuer name, never trying them in turn.

    rk_…                                   → client_keys.ClientKeyVerifier
    compact JWS, iss = Firebase's issuer   → firebase.FirebaseVerifier (RS256)
                 …and alg "none"           → firebase_emulator.FirebaseEmulatorVerifier,
                                             only in the emulator development mode
    compact JWS, iss = a configured issuer → oidc.OidcVerifier for that issuer
    anything else, an issuer not configured, a type switched off → 401

Reading `iss` before the signature is checked is safe: it only picks which verifier (and
so which keys) must then accept the token, and that verifier checks iss again.

`build_token_verifiers` makes the whole set from Settings, with the background stores
(Firebase certs, one JWKS per issuer) started and stopped together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from authz.credentials.client_keys import ClientKeyVerifier, looks_like_client_key
from authz.credentials.firebase import ISSUER_PREFIX, FirebaseVerifier
from authz.credentials.firebase_emulator import FirebaseEmulatorVerifier
from authz.credentials.identity import Identity, JwsVerifier
from authz.credentials.jose import jwt
from authz.credentials.jose.certs import CertStore, KeyStore
from authz.credentials.jose.jwks import JwksStore
from authz.credentials.oidc import OidcVerifier
from authz.errors import AuthenticationFailed, RelayError
from authz.tenants.client_key_store import ClientKeyReader, parse_pepper_source
from authz.tenants.vault_login import TokenProvider

if TYPE_CHECKING:  # settings sit above credentials: a type, never a runtime import
    from authz.settings import Settings

log = logging.getLogger(__name__)


class _Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class TokenDispatcher:
    firebase_issuer: str | None = None
    firebase: JwsVerifier | None = None
    firebase_emulator: JwsVerifier | None = None
    oidc: Mapping[str, JwsVerifier] = field(default_factory=dict)
    client_keys: ClientKeyVerifier | None = None
    #: Background key stores that must be loaded for the JWT verifiers to work.
    stores: Sequence[KeyStore[Any]] = ()
    closables: Sequence[_Closable] = ()

    def route(self, jws: jwt.ParsedJws) -> JwsVerifier:
        """The one verifier for a decoded JWS, or AuthenticationFailed."""
        header, payload = jws.header, jws.payload
        issuer = payload.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise AuthenticationFailed("token names no issuer")
        if issuer == self.firebase_issuer:
            if header.get("alg") == "none":
                if self.firebase_emulator is None:
                    raise AuthenticationFailed("unsigned token")
                return self.firebase_emulator
            if self.firebase is None:
                raise AuthenticationFailed("Firebase ID tokens are only accepted from the "
                                           "emulator in this mode")
            return self.firebase
        verifier = self.oidc.get(issuer)
        if verifier is None:
            raise AuthenticationFailed("token issuer is not configured")
        return verifier

    def token_type_of(self, token: str) -> str:
        """A guess for metrics; verify() labels its errors itself, so the check path
        never calls this (it would decode the token a second time)."""
        if looks_like_client_key(token):
            return ClientKeyVerifier.token_type if self.client_keys else "unknown"
        try:
            return self.route(jwt.parse(token)).token_type
        except AuthenticationFailed:
            return "unknown"

    async def verify(self, token: str) -> Identity:
        """Decode once, route, verify. A RelayError leaves labelled with the token type
        it was routed to, for metrics and logs."""
        token_type = "unknown"
        try:
            if looks_like_client_key(token):
                if self.client_keys is None:
                    raise AuthenticationFailed("client keys are not enabled")
                token_type = self.client_keys.token_type
                return await self.client_keys.verify(token)
            jws = jwt.parse(token)
            verifier = self.route(jws)
            token_type = verifier.token_type
            return await verifier.verify_jws(jws)
        except RelayError as error:
            error.token_type = token_type
            raise

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget what the verifiers cache about callers (client-key records, Firebase
        user statuses), so revocations apply at the next request."""
        if self.client_keys is not None:
            self.client_keys.invalidate(client_id)
        for verifier in (self.firebase, self.firebase_emulator):
            invalidate = getattr(verifier, "invalidate", None)
            if invalidate is not None:
                invalidate()

    def readiness(self) -> dict[str, Any]:
        """What the readiness report says about credentials beyond the key sets."""
        if self.client_keys is None:
            return {"client_keys": "off"}
        return {"client_keys": self.client_keys.status}

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def keys_loaded(self) -> bool:
        return all(store.loaded for store in self.stores)

    @property
    def ready(self) -> bool:
        """Key sets loaded, and client keys verifiable when AUTHZ_CLIENT_KEYS=on asks for
        them (with auto, an unverifiable client key is only reported)."""
        keys = self.client_keys
        return self.keys_loaded and (
            keys is None or not keys.required or keys.verifiable)

    async def start(self) -> None:
        """First fetch of every key set (failures are logged, not fatal), then refreshers."""
        await asyncio.gather(*(store.refresh(force=True) for store in self.stores))
        for store in self.stores:
            store.start()
        if self.client_keys is not None:
            await self.client_keys.probe()

    async def stop(self) -> None:
        for store in self.stores:
            await store.stop()
        for closable in self.closables:
            closable.close()


def build_token_verifiers(
    settings: Settings,
    certs: CertStore | None = None,
    vault_tokens: str | TokenProvider | None = None,
) -> TokenDispatcher:
    """Every verifier Settings enable, behind one dispatcher. `vault_tokens` is the service's
    Vault login (shared with the tenant key store); VAULT_TOKEN when not given."""
    dispatcher = TokenDispatcher()
    stores: list[KeyStore[Any]] = []
    closables: list[_Closable] = []
    project = settings.firebase_project_id
    if project:
        dispatcher.firebase_issuer = ISSUER_PREFIX + project
        firebase: Any
        if settings.firebase_emulator_mode:
            log.warning("DEVELOPMENT MODE: unsigned Firebase Auth Emulator tokens are accepted "
                        "(AUTHZ_DEV_ACCEPT_EMULATOR_TOKENS=true); never run this in production",
                        extra={"emulator": settings.firebase_emulator_host})
            firebase = FirebaseEmulatorVerifier(
                project, client_id_claims=settings.client_id_claims,
                clock_skew_s=settings.clock_skew_s)
        else:
            certs = certs or CertStore(settings.firebase_certs_url)
            stores.append(certs)
            firebase = FirebaseVerifier(project, certs,
                                        client_id_claims=settings.client_id_claims,
                                        clock_skew_s=settings.clock_skew_s)
        if settings.firebase_check_revoked:
            from authz.credentials.firebase_users import (
                RevocationCheckingVerifier,
                firebase_admin_lookup,
            )

            firebase = RevocationCheckingVerifier(
                firebase, firebase_admin_lookup(project),
                cache_ttl_s=settings.firebase_user_cache_ttl_s,
                negative_ttl_s=settings.key_negative_ttl_s,
            )
            closables.append(firebase)
        if settings.firebase_emulator_mode:
            dispatcher.firebase_emulator = firebase
        else:
            dispatcher.firebase = firebase
    oidc: dict[str, JwsVerifier] = {}
    for issuer in settings.oidc_issuers:
        store = JwksStore(issuer.jwks_url)
        stores.append(store)
        oidc[issuer.issuer] = OidcVerifier(issuer, store, clock_skew_s=settings.clock_skew_s)
    dispatcher.oidc = oidc
    if settings.client_keys_enabled:
        client_keys = ClientKeyVerifier(
            ClientKeyReader(
                settings.vault_addr, vault_tokens or settings.vault_token,
                mount=settings.vault_mount, index_path=settings.client_key_index_path,
                pepper=parse_pepper_source("AUTHZ_CLIENT_KEY_PEPPER",
                                           settings.client_key_pepper),
            ),
            cache_ttl_s=settings.client_key_cache_ttl_s,
            negative_ttl_s=settings.key_negative_ttl_s,
            stale_if_error_s=settings.client_key_stale_if_error_s,
            required=settings.client_keys == "on",
        )
        dispatcher.client_keys = client_keys
        closables.append(client_keys)
    dispatcher.stores = tuple(stores)
    dispatcher.closables = tuple(closables)
    return dispatcher
