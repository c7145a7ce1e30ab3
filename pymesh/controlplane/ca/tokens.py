"""Bootstrap tokens for VMs: JWTs the control plane signs and verifies itself
(no Kubernetes API server to do a TokenReview), in the shape of a Kubernetes
service-account token so the agent reads them as ``istio-token``.

Encoding and verification are PyJWT's (RFC 7519; ES256 per RFC 7518 §3.4,
the raw ``r || s`` signature). What is ours: the key file, the ``kid`` (a
hash of the public key), the claims and the checks' order and messages.
Claims: ``iss`` (this control plane), ``sub``
``system:serviceaccount:<ns>:<sa>``, ``aud`` (default ``istio-ca``, istiod's
TOKEN_AUDIENCES), ``iat``, ``nbf``, ``exp``, and the namespace and account
under ``kubernetes.io`` as Kubernetes writes them.

Verification reads the header first and accepts ES256 only (``none`` or
HS256 are refused before anything else: the classic algorithm-confusion
attacks), then a ``kid`` of this control plane's key, then lets PyJWT check
the signature, issuer, audience, expiry and not-before (``leeway`` seconds of
clock skew) with every claim required; then the lifetime (at most
``max_ttl``) and the subject's form. Every failure is a TokenError saying
which. The signing key is ``<data-dir>/tokens/signing-key.pem`` (0600),
created on first use. ``pymesh token rotate-key`` replaces it (revoking every
token signed before); a running control plane sees the new file at its next
verification (the file's stamp is checked each time, a ``stat``), so a
revocation takes effect without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pymesh.controlplane.ca.errors import TokenError
from pymesh.mesh.defaults import DEFAULT_TRUST_DOMAIN
from pymesh.mesh.errors import ValueFormatError
from pymesh.mesh.files import private_dir, write_atomic
from pymesh.mesh.identity import Identity, identity
from pymesh.mesh.values import duration

ISSUER = "pymesh"
DEFAULT_AUDIENCE = "istio-ca"
DEFAULT_TTL = 3600.0  # istioctl's --tokenDuration
# Bootstrap tokens only have to last until the VM holds its first certificate (it renews
# with the certificate after that), so a long lifetime is only risk: 30 days at most.
MAX_TTL = 30 * 86400.0
SUBJECT_PREFIX = "system:serviceaccount:"
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenAuthority:
    def __init__(
        self,
        tokens_dir: str | os.PathLike[str],
        *,
        issuer: str = ISSUER,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        leeway: float = 5.0,
        max_ttl: float = MAX_TTL,
    ) -> None:
        try:
            self.dir = private_dir(Path(tokens_dir))
        except OSError as e:
            raise TokenError(f"{tokens_dir}: cannot create a private directory: {e.strerror}") from e
        self.issuer = issuer
        self.trust_domain = trust_domain
        self.leeway = leeway
        self.max_ttl = max_ttl
        self.key_path = self.dir / "signing-key.pem"
        if not self.key_path.exists():
            self._write_key(ec.generate_private_key(ec.SECP256R1()))
        self._load()

    def _write_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            write_atomic(self.key_path, pem)
        except OSError as e:
            raise TokenError(f"{self.key_path}: cannot write the token signing key: {e.strerror}") from e

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.key_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _refresh(self) -> None:
        """Reloads the key when the file changed (another process rotated it)."""
        stamp = self._stamp()
        if stamp is not None and stamp != self._loaded:
            self._load()

    def _load(self) -> None:
        path = self.key_path
        stamp = self._stamp()
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
        self._loaded = stamp

    def rotate_key(self) -> str:
        """Replaces the signing key: every token signed before is refused from
        now on (revocation; VMs that already hold a certificate renew with it
        and are not affected). Returns the new ``kid``."""
        self._write_key(ec.generate_private_key(ec.SECP256R1()))
        self._load()
        return self.kid

    def create(
        self, namespace: str, service_account: str, *, ttl: float = DEFAULT_TTL, audience: str = DEFAULT_AUDIENCE
    ) -> str:
        identity(namespace, service_account, self.trust_domain)  # validates the names
        self._refresh()
        if not ttl > 0:
            raise TokenError(f"token lifetime must be positive, got {ttl}")
        if ttl > self.max_ttl:
            raise TokenError(f"token lifetime {ttl:g}s exceeds the maximum of {self.max_ttl:g}s")
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
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"})

    def verify(self, token: str, *, audience: str = DEFAULT_AUDIENCE, now: float | None = None) -> Identity:
        """The identity a valid token names; TokenError saying what is wrong otherwise."""
        token = token.strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a JWT (expected header.payload.signature)")
        for what, part in zip(("header", "payload", "signature"), parts, strict=True):
            if not part.isascii() or not _B64URL.match(part):
                raise TokenError(f"the token's {what} is not base64url")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as e:
            raise TokenError(f"the token's header is not base64url JSON: {e}") from None
        if header.get("alg") != "ES256":
            raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted (ES256 only)")
        self._refresh()
        if header.get("kid") not in (None, self.kid):
            raise TokenError("token signed by another key (kid does not match this control plane's)")
        t = time.time() if now is None else now
        # PyJWT reads the clock itself; with an explicit ``now`` (tests, replays) the time
        # checks are made below instead.
        options: dict[str, Any] = {"require": ["exp", "iat", "iss", "aud", "sub"], "verify_iat": False}
        if now is not None:
            options.update(verify_exp=False, verify_nbf=False)
        try:
            claims = jwt.decode(
                token,
                self._pub,
                algorithms=["ES256"],
                audience=audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.InvalidSignatureError:
            raise TokenError("token signature does not verify (not issued by this control plane)") from None
        except jwt.ExpiredSignatureError:
            raise TokenError(f"token expired at {_exp_text(token)}") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token is not valid yet (nbf in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"token audience does not include {audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"token issuer is not {self.issuer!r}") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenError(f"token has no {e.claim} claim") from None
        except jwt.InvalidTokenError as e:
            raise TokenError(f"token refused: {e}") from None
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenError("token has no numeric exp claim")
        if now is not None:
            if t > exp + self.leeway:
                raise TokenError(f"token expired at {_exp_text(token)}")
            if isinstance(nbf, (int, float)) and t + self.leeway < nbf:
                raise TokenError("token is not valid yet (nbf in the future)")
        if not isinstance(iat, (int, float)) or isinstance(iat, bool) or exp - iat > self.max_ttl + self.leeway:
            raise TokenError(f"token lifetime exceeds the maximum of {self.max_ttl:g}s; issue a shorter one")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(SUBJECT_PREFIX) or sub.count(":") != 3:
            raise TokenError(f"token subject {sub!r} is not system:serviceaccount:<namespace>:<account>")
        _, _, ns, sa = sub.split(":")
        try:
            return identity(ns, sa, self.trust_domain)
        except Exception as e:
            raise TokenError(f"token subject {sub!r}: {e}") from e


def _exp_text(token: str) -> str:
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(exp)))  # type: ignore[arg-type]
    except Exception:
        return "?"


def parse_duration(text: str) -> float:
    """``3600``, ``90s``, ``15m``, ``24h``, ``7d`` → seconds (:func:`pymesh.mesh.values.duration`)."""
    try:
        return duration(text)
    except ValueFormatError as e:
        raise TokenError(str(e)) from None
