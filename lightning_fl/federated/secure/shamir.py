"""Shamir t-of-n secret sharing over the prime field GF(p), p = 2^256 + 297 (Shamir 1979).

The secrets are 32-byte X25519 private keys, i.e. integers below 2^256 < p, so one field element holds
one key. A share is the point (x, f(x)) of a random polynomial f of degree t − 1 with f(0) = secret;
x is never 0. Any t shares determine f (Lagrange interpolation at 0); any t − 1 shares are uniformly
distributed whatever the secret, so they reveal nothing (information-theoretically).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from lightning_fl.errors import check

PRIME = (1 << 256) + 297  # the smallest prime above 2^256 (checked by the tests)
SHARE_BYTES = 33  # a field element, little-endian


def split(
    secret: int,
    threshold: int,
    xs: Sequence[int],
    randbelow: Callable[[int], int] = secrets.randbelow,
    prime: int = PRIME,
) -> list[int]:
    """The shares f(x) for each x in ``xs`` of a random degree-(threshold − 1) polynomial with f(0) = secret."""
    check(0 <= secret < prime, "shamir: the secret must be a field element")
    check(1 <= threshold <= len(xs), f"shamir: threshold must be in [1, {len(xs)}], got {threshold}")
    check(len({x % prime for x in xs}) == len(xs) and all(x % prime for x in xs), "shamir: xs must be distinct, non-zero")
    coefficients = [secret] + [randbelow(prime) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % prime
        shares.append(y)
    return shares


def reconstruct(points: Sequence[tuple[int, int]], prime: int = PRIME) -> int:
    """f(0) of the polynomial of degree < len(points) through ``points`` (Lagrange interpolation)."""
    xs = [x % prime for x, _ in points]
    check(len(set(xs)) == len(xs) and all(xs), "shamir: share points must have distinct, non-zero x")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (-xj) % prime
                den = den * (xi - xj) % prime
        secret = (secret + yi * num * pow(den, -1, prime)) % prime
    return secret


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "little")


def from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "little")
