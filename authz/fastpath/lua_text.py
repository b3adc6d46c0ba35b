"""Lua string literals for generated code: no text from Vault or a setting is ever
spliced into the fast path's Lua raw."""

from __future__ import annotations


def lua_string(value: str) -> str:
    """A Lua string literal for any text: printable ASCII as is, all else as \\ddd."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in ('"', "\\"):
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'
