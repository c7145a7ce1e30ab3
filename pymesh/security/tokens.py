"""Bootstrap tokens for VMs: JWTs the control plane signs and verifies itself
(no Kubernetes API server to do a TokenReview), in the shape of a Kubernetes
service-account token so the agent reads them as ``istio-token``.

Encoding (RFC 7519, RFC 7515 compact serialisation): base64url (no padding)
of the JSON header ``{"alg": "ES256", "typ": "JWT", "kid": ...}``, ``.``, the
payload, ``.``, the signature — for ES256 the raw ``r || s`` pair, 32 bytes
each (RFC 7518 §3.4), not DER. Claims: ``iss`` (this control plane),
``sub`` ``system:serviceaccount:<ns>:<sa>``, ``aud`` (default ``istio-ca``,
istiod's TOKEN_AUDIENCES), ``iat``, ``nbf``, ``exp``, and the namespace and
account under ``kubernetes.io`` as Kubernetes writes them.

Verification accepts ES256 only (an ``alg`` of ``none`` or HS256 is refused
before anything else is read: the classic algorithm-confusion attacks), then
checks the signature, issuer, audience, expiry (``leeway`` seconds of clock
skew) and the subject's form; every failure is a TokenError saying which.
The signing key is ``<data-dir>/tokens/signing-key.pem`` (0600), created on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from pymesh.security.errors import TokenError
from pymesh.security.files import private_dir, write_private
from pymesh.security.identity import DEFAULT_TRUST_DOMAIN, Identity, identity

ISSUER = "pymesh"
DEFAULT_AUDIENCE = "istio-ca"
DEFAULT_TTL = 3600.0  # istioctl's --tokenDuration
SUBJECT_PREFIX = "system:serviceaccount:"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str, what: str) -> bytes:
    if not text.isascii():
        raise TokenError(f"the token's {what} is not base64url")
    try:
        # validate=True: characters outside the base64url alphabet are an error, not skipped.
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise TokenError(f"the token's {what} is not base64url") from e


class TokenAuthority:
    def __init__(
        self,
        tokens_dir: str | os.PathLike[str],
        *,
        issuer: str = ISSUER,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        leeway: float = 5.0,
    ) -> None:
        self.dir = private_dir(Path(tokens_dir))
        self.issuer = issuer
        self.trust_domain = trust_domain
        self.leeway = leeway
        path = self.dir / "signing-key.pem"
        if not path.exists():
            fresh = ec.generate_private_key(ec.SECP256R1())
            pem = fresh.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_private(path, pem)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise TokenError(f"{path}: cannot load the token signing key: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise TokenError(f"{path}: the token signing key must be an EC P-256 key (ES256)")
        self._key = key
        self._pub = key.public_key()
        spki = self._pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = b64url(hashlib.sha256(spki).digest()[:16])

    def create(
        self, namespace: str, service_account: str, *, ttl: float = DEFAULT_TTL, audience: str = DEFAULT_AUDIENCE
    ) -> str:
        identity(namespace, service_account, self.trust_domain)  # validates the names
        if ttl <= 0:
            raise TokenError(f"token lifetime must be positive, got {ttl}")
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": f"{SUBJECT_PREFIX}{namespace}:{service_account}",
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}},
        }
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(_json(header))}.{b64url(_json(claims))}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def verify(self, token: str, *, audience: str = DEFAULT_AUDIENCE, now: float | None = None) -> Identity:
        """The identity a valid token names; TokenError saying what is wrong otherwise."""
        parts = token.strip().split(".")
        if len(parts) != 3:
            raise TokenError("not a JWT (expected header.payload.signature)")
        header = _object(b64url_decode(parts[0], "header"), "header")
        if header.get("alg") != "ES256":
            raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted (ES256 only)")
        if header.get("kid") not in (None, self.kid):
            raise TokenError("token signed by another key (kid does not match this control plane's)")
        sig = b64url_decode(parts[2], "signature")
        if len(sig) != 64:
            raise TokenError("token signature has the wrong length for ES256")
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            self._pub.verify(der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise TokenError("token signature does not verify (not issued by this control plane)") from None
        claims = _object(b64url_decode(parts[1], "payload"), "payload")
        t = time.time() if now is None else now
        if claims.get("iss") != self.issuer:
            raise TokenError(f"token issuer {claims.get('iss')!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if audience not in auds:
            raise TokenError(f"token audience {aud!r} does not include {audience!r}")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenError("token has no numeric exp claim")
        if t > exp + self.leeway:
            expired = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
            raise TokenError(f"token expired at {expired}")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and t + self.leeway < nbf:
            raise TokenError("token is not valid yet (nbf in the future)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(SUBJECT_PREFIX) or sub.count(":") != 3:
            raise TokenError(f"token subject {sub!r} is not system:serviceaccount:<namespace>:<account>")
        _, _, ns, sa = sub.split(":")
        try:
            return identity(ns, sa, self.trust_domain)
        except Exception as e:
            raise TokenError(f"token subject {sub!r}: {e}") from e


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise TokenError(f"the token's {what} is not JSON") from e
    if not isinstance(obj, dict):
        raise TokenError(f"the token's {what} is not a JSON object")
    return obj


def parse_duration(text: str) -> float:
    """``3600``, ``90s``, ``15m``, ``24h``, ``7d`` → seconds."""
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        v = float(t) * mult
    except ValueError:
        raise TokenError(f"duration {text!r}: expected a number with an optional s/m/h/d suffix") from None
    if not v > 0:
        raise TokenError(f"duration {text!r} must be positive")
    return v
