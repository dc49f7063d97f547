"""Random container names in Docker's adjective_surname style, from our own word lists."""

from __future__ import annotations

import secrets

_ADJECTIVES = (
    "agile", "amber", "bold", "brave", "bright", "calm", "clever", "cosy", "crisp", "daring",
    "eager", "fair", "fast", "fond", "gentle", "glad", "grand", "happy", "hardy", "humble",
    "jolly", "keen", "kind", "lively", "lucid", "merry", "mighty", "neat", "nimble", "noble",
    "patient", "plucky", "proud", "quick", "quiet", "rapid", "serene", "sharp", "shiny", "silent",
    "sleek", "smart", "steady", "sturdy", "sunny", "swift", "tidy", "vivid", "warm", "witty",
)
_NAMES = (
    "babbage", "bardeen", "bohr", "boole", "cerf", "curie", "dijkstra", "euler", "faraday",
    "fermi", "feynman", "gauss", "germain", "goldberg", "hamilton", "hopper", "hypatia", "kahan",
    "knuth", "kowalevski", "lamarr", "lamport", "liskov", "lovelace", "maxwell", "meitner",
    "mirzakhani", "neumann", "noether", "pascal", "perlman", "poincare", "ritchie", "shannon",
    "somerville", "tesla", "thompson", "torvalds", "turing", "wirth", "wozniak", "yalow",
)


def random_name(with_number: bool = False) -> str:
    name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NAMES)}"
    if with_number:
        name += str(secrets.randbelow(10))
    return name
