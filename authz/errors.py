"""Every reason a check can deny, as a type that knows its HTTP status and public body.

    RelayError                  base: status + public message (+ optional safe detail)
    ├── BadRequest              400  a JSON body that cannot be read (governed tenants)
    ├── AuthenticationFailed    401  the credential is missing, malformed, forged or stale
    ├── EndpointNotAllowed      403  the tenant's policy does not allow this method and path
    ├── ModelNotAllowed         403  the policy lists models and the body names another
    ├── RateLimitExceeded       429  a request-rate or concurrency limit is reached
    ├── TokenBudgetExhausted    429  a token budget of the current UTC day is used up
    ├── ClientIdNotFound        500  a valid identity, but no usable clientId in its claims
    ├── ApiKeyNotFound          500  a known clientId with no key in Vault
    └── InternalError           500  we could not decide (Vault or the cert endpoint down, a bug)
        ├── VaultUnavailable
        │   └── VaultForbidden      a Vault policy denies a read (not an expired token)
        ├── TenantRecordInvalid     a tenant value that cannot be a header
        └── CertsUnavailable

The public message is exactly the contract's (shared/DESIGN.md). `reason` is a short
machine-readable code shared by logs and metrics. `detail` is public too, so it must
never hold a token, a key or anything read from Vault; internal causes go in `log_detail`.
"""

from __future__ import annotations


class RelayError(Exception):
    status: int = 500
    public_message: str = "OpenAI proxy internal error"
    reason: str = "internal_error"
    #: Whether the public body carries a "details" field (only internal errors do).
    has_details: bool = False
    #: The credential type the failing token was routed to (metrics), when known.
    token_type: str | None = None

    def __init__(self, log_detail: str = "", *, detail: str = "") -> None:
        super().__init__(log_detail or self.reason)
        self.log_detail = log_detail
        self.detail = detail

    def body(self) -> dict[str, str]:
        body = {"error": self.public_message}
        if self.has_details:
            body["details"] = self.detail or self.reason
        return body


class AuthenticationFailed(RelayError):
    status = 401
    public_message = "Authentication failed"
    reason = "authentication_failed"


class BadRequest(RelayError):
    status = 400
    public_message = "Bad request"
    reason = "bad_request"


class EndpointNotAllowed(RelayError):
    status = 403
    public_message = "Endpoint not allowed"
    reason = "endpoint_not_allowed"


class ModelNotAllowed(RelayError):
    status = 403
    public_message = "Model not allowed"
    reason = "model_not_allowed"


class LimitReached(RelayError):
    """429 with `details` = the limit's name and a truthful `Retry-After` (seconds)."""

    status = 429
    has_details = True

    def __init__(self, limit_name: str, retry_after_s: int, log_detail: str = "") -> None:
        super().__init__(log_detail or limit_name, detail=limit_name)
        self.limit_name = limit_name
        self.retry_after_s = max(1, int(retry_after_s))


class RateLimitExceeded(LimitReached):
    public_message = "Rate limit exceeded"
    reason = "rate_limited"


class TokenBudgetExhausted(LimitReached):
    public_message = "Token budget exhausted"
    reason = "budget_exhausted"


class ClientIdNotFound(RelayError):
    status = 500
    public_message = "Client ID not found"
    reason = "client_id_not_found"


class ApiKeyNotFound(RelayError):
    status = 500
    public_message = "OpenAI API key not found"
    reason = "api_key_not_found"


class InternalError(RelayError):
    status = 500
    public_message = "OpenAI proxy internal error"
    reason = "internal_error"
    has_details = True


class VaultUnavailable(InternalError):
    reason = "vault_unavailable"

    def __init__(self, log_detail: str = "") -> None:
        super().__init__(log_detail, detail="secret store unavailable")


class VaultForbidden(VaultUnavailable):
    """Vault refused a read our (valid) token is not granted: a policy to fix, not an
    expired token. log_detail names the path, never a token."""

    reason = "vault_forbidden"


class TenantRecordInvalid(InternalError):
    """A tenant's Vault record holds a value that cannot become a header (CR, LF, a
    control character): refused rather than forwarded. log_detail names the field only."""

    reason = "tenant_record_invalid"

    def __init__(self, log_detail: str = "") -> None:
        super().__init__(log_detail, detail="tenant record invalid")


class CertsUnavailable(InternalError):
    reason = "certs_unavailable"

    def __init__(self, log_detail: str = "") -> None:
        super().__init__(log_detail, detail="token signing certificates unavailable")


class ConfigError(Exception):
    """A setting is missing or invalid: the process refuses to start and says why."""


class AddressInUse(ConfigError):
    """An address to listen on is taken (or cannot be bound): one line naming the setting."""

    def __init__(self, setting: str, addr: str, cause: str = "already in use") -> None:
        super().__init__(f"{setting}: {addr} is {cause}; stop what listens there or "
                         f"choose another address")
        self.setting = setting
        self.addr = addr
