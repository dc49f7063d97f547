"""libnftables: the packet-filter half of WinNAT and the Windows Firewall, on Linux.

WinNAT's static port mappings and SNAT, and the firewall's allow rules, are nftables rules here.
This module is the one user of libnftables (Debian's ``libnftables1``): a small ctypes wrapper
of ``nft_ctx_new`` / ``nft_ctx_output_set_flags`` / ``nft_run_cmd_from_buffer`` and the output
and error buffers. It is the one place besides ``kernel/libc.py`` that uses ctypes, because the
library is not a syscall and has no Python binding in our venv.

Everything silobox does lives in ONE table of its own (``ip silobox`` by default). Changes are
sent as one JSON batch, which the kernel applies as one transaction: the table is replaced
whole or not at all. The host's other tables (iptables-nft's ``ip nat``/``ip filter``, other
engines') are never listed for writing, flushed or changed.
"""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

from silobox.errors import SystemFailure, Unavailable

_NFT_CTX_OUTPUT_JSON = 1 << 4
_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        except OSError as e:
            raise Unavailable("libnftables is not installed: apt-get install libnftables1",
                              operation="nft", cause=e) from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
    return _lib


class Nft:
    """One libnftables context speaking JSON (commands in, ``{"nftables": [...]}`` out)."""

    def __init__(self) -> None:
        lib = _load()
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise SystemFailure("nft_ctx_new failed", operation="nft")
        lib.nft_ctx_output_set_flags(self._ctx, _NFT_CTX_OUTPUT_JSON)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        """Run one batch of JSON commands atomically; SystemFailure with nft's message on error."""
        doc = json.dumps({"nftables": commands}).encode()
        with _lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, doc)
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise SystemFailure(f"nftables: {err.decode(errors='replace').strip()}",
                                operation="nft")
        return json.loads(out) if out.strip() else {}

    def table_exists(self, family: str, name: str) -> bool:
        try:
            self.run([{"list": {"table": {"family": family, "name": name}}}])
            return True
        except SystemFailure:
            return False

    def replace_table(self, family: str, name: str, body: list[dict[str, Any]]) -> None:
        """Swap our table for ``body`` (chains and rules) in one transaction.

        ``add`` + ``delete`` + re-create is nft's idiom for an atomic reload of one table:
        the ``add`` makes the ``delete`` valid whether or not the table existed."""
        t = {"family": family, "name": name}
        self.run([{"add": {"table": t}}, {"delete": {"table": t}}, {"add": {"table": t}}]
                 + body)

    def delete_table(self, family: str, name: str) -> None:
        t = {"family": family, "name": name}
        self.run([{"add": {"table": t}}, {"delete": {"table": t}}])

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


# ----- rule builders (nft JSON expressions) ---------------------------------------------------

def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def prefix(cidr: str) -> dict[str, Any]:
    addr, _, plen = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(plen)}}


def fib_daddr_local() -> dict[str, Any]:
    return match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
