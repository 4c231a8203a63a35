"""Repository keys: a random master key, wrapped with a key derived from the passphrase.

`repo init --encrypt` draws 64 random bytes: 32 for AES-256-GCM (`MasterKey.encryption`) and 32
for the HMAC-SHA256 chunk ids (`MasterKey.ids`, so ids reveal nothing about content, as in borg).
They are stored in ``config`` encrypted with AES-256-GCM under a key-encryption key derived from
the passphrase by Argon2id (memory-hard; RFC 9106's second recommended profile: 64 MiB, 3
passes, 4 lanes), with the repository id as associated data. A wrong passphrase fails the GCM tag
check, which is the one clear error `RepositoryPasswordError`; nothing else can tell a wrong
passphrase from a right one. Changing the passphrase re-wraps the same master key.

The key block in ``config``::

    {"cipher": "aes-256-gcm", "kdf": {"name": "argon2id", "memory_kib": 65536,
     "iterations": 3, "lanes": 4, "salt": "<base64, 16 bytes>"},
     "key": "<base64: 12-byte nonce || 64-byte ciphertext || 16-byte tag>"}
"""

from __future__ import annotations

import base64
import os
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from xvatool.errors import ObjectCorruptError, RepositoryPasswordError

__all__ = ["DEFAULT_KDF", "KdfParams", "MasterKey", "new_key_block", "open_key_block"]

KEY_SIZE = 32
NONCE_SIZE = 12
SALT_SIZE = 16
MAX_KDF_MEMORY_KIB = 1 << 20
"""1 GiB: a config asking for more is refused rather than exhausting memory."""
_AAD_PREFIX = b"xvatool-repository-key:"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters (memory in KiB)."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4


DEFAULT_KDF = KdfParams()


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The repository's secrets; `repr` never shows them."""

    encryption: bytes
    ids: bytes

    def __repr__(self) -> str:
        return "MasterKey(…)"


def _derive(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    kdf = Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(passphrase.encode("utf-8"))


def new_key_block(
    passphrase: str, repo_id: str, params: KdfParams = DEFAULT_KDF
) -> tuple[dict[str, Any], MasterKey]:
    """A fresh master key and the JSON block that stores it wrapped by `passphrase`."""
    if not passphrase:
        raise RepositoryPasswordError("the passphrase is empty")
    secret = os.urandom(2 * KEY_SIZE)
    salt = os.urandom(SALT_SIZE)
    nonce = os.urandom(NONCE_SIZE)
    wrapped = AESGCM(_derive(passphrase, salt, params)).encrypt(nonce, secret, _AAD_PREFIX + repo_id.encode())
    block = {
        "cipher": "aes-256-gcm",
        "kdf": {"name": "argon2id", **asdict(params), "salt": base64.b64encode(salt).decode()},
        "key": base64.b64encode(nonce + wrapped).decode(),
    }
    return block, MasterKey(secret[:KEY_SIZE], secret[KEY_SIZE:])


def open_key_block(
    block: dict[str, Any], passphrase: str, repo_id: str, *, location: str | None = None
) -> MasterKey:
    """Unwrap the master key; `RepositoryPasswordError` when the passphrase is wrong."""
    try:
        kdf = block["kdf"]
        if block.get("cipher") != "aes-256-gcm" or kdf.get("name") != "argon2id":
            raise ObjectCorruptError(f"unsupported key block {block.get('cipher')}/{kdf.get('name')}")
        params = KdfParams(int(kdf["memory_kib"]), int(kdf["iterations"]), int(kdf["lanes"]))
        salt = base64.b64decode(kdf["salt"], validate=True)
        sealed = base64.b64decode(block["key"], validate=True)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ObjectCorruptError(f"malformed key block: {exc}", location=location, key="config") from exc
    if not (
        0 < params.memory_kib <= MAX_KDF_MEMORY_KIB
        and 0 < params.iterations <= 100
        and 0 < params.lanes <= 64
    ):
        raise ObjectCorruptError("key block asks for unreasonable KDF costs", location=location, key="config")
    try:
        secret = AESGCM(_derive(passphrase, salt, params)).decrypt(
            sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _AAD_PREFIX + repo_id.encode()
        )
    except (InvalidTag, ValueError) as exc:
        raise RepositoryPasswordError("wrong passphrase for this repository", location=location) from exc
    if len(secret) != 2 * KEY_SIZE:
        raise ObjectCorruptError(
            "the key block holds a key of the wrong size", location=location, key="config"
        )
    return MasterKey(secret[:KEY_SIZE], secret[KEY_SIZE:])
