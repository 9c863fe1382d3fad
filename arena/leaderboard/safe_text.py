"""Plugin-supplied text on its way out: to a terminal, an HTML page or a CSV file.

Error messages, transcripts, descriptions and authors come from submissions. Unescaped, a
message can recolour or rewrite the terminal (ANSI escapes, carriage returns), crash rich
(`[/]` is markup), inject HTML, or run as a spreadsheet formula (`=HYPERLINK(...)`), and a
traceback shows where the harness lives on this machine. Every renderer goes through here.
"""
from __future__ import annotations

import html as _html
import os
import re
import sys
import sysconfig
import tempfile
import unicodedata
from functools import lru_cache
from pathlib import Path

from rich.markup import escape as _rich_escape
from rich.text import Text

from arena.core import paths

_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")   # what spreadsheets read as a formula


def _visible(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def visible_controls(text: str, keep: str = "") -> str:
    """Control characters (ESC included, so no ANSI sequence survives), line separators and
    bidi overrides shown as \\xNN / \\uNNNN; characters in `keep` stay."""
    if text is None:
        return ""
    text = str(text)
    return "".join(_visible(c) if c not in keep and (
        unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI) else c for c in text)


def terminal(text, *, multiline: bool = False) -> str:
    """Plain text safe to print: no escape codes; newlines kept only when `multiline`."""
    return visible_controls(text, keep="\n" if multiline else "")


def rich_text(text, *, multiline: bool = False, style: str = "") -> Text:
    """A rich Text (never parsed as markup, so `[/]` or `:emoji:` print as typed)."""
    return Text(terminal(text, multiline=multiline), style=style)


def markup(text, *, multiline: bool = False) -> str:
    """For a rich markup string built by hand: terminal-safe and markup-escaped."""
    return _rich_escape(terminal(text, multiline=multiline))


def html(text) -> str:
    """Element content or a quoted attribute value."""
    return _html.escape(visible_controls(text, keep="\n\t"), quote=True)


def csv_cell(value):
    """A CSV field: strings starting like a formula get a leading quote; other values pass."""
    if not isinstance(value, str):
        return value
    value = visible_controls(value, keep="\n")
    return "'" + value if value.startswith(CSV_TRIGGERS) else value


def csv_frame(df):
    """A copy of a pandas DataFrame with every text cell passed through csv_cell; lists and
    dicts (rendered by pandas with repr) become their repr first, so the check sees it."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype.kind not in "biufcmM":   # text (object or str dtype), not numbers
            out[col] = out[col].map(lambda v: csv_cell(repr(v) if isinstance(v, (list, dict, tuple))
                                                       else v))
    return out


# ---------------------------------------------------------------- host paths
@lru_cache(maxsize=1)
def _host_roots() -> tuple[tuple[str, str], ...]:
    """(path, placeholder) for the places on this machine that a traceback or an error can
    name, longest first so the most specific placeholder wins. System prefixes shared by
    every machine (/usr, /usr/local) are not secrets and are left alone."""
    roots: dict[str, str] = {}

    def add(p, label):
        try:
            p = str(Path(p).resolve()) if p else ""
        except (OSError, RuntimeError):
            return
        if p and p not in ("/", "/usr", "/usr/local", "/opt") and p not in roots:
            roots[p] = label

    add(paths.PACKAGE, "<arena>")
    if paths.checkout_root():
        add(paths.ROOT, "<checkout>")
    add(paths.home(), "<arena-home>")
    for key in ("purelib", "platlib"):
        add(sysconfig.get_paths().get(key), "<site-packages>")
    for p in {sys.prefix, sys.exec_prefix, sys.base_prefix}:
        add(p, "<python>")
    add(tempfile.gettempdir(), "<tmp>")
    add(os.path.expanduser("~"), "~")
    return tuple(sorted(roots.items(), key=lambda kv: -len(kv[0])))


# someone's home on any machine, and the harness's per-job temporary folders
_OTHER_HOMES = re.compile(r"(?<![\w.:/~<>-])/(?:home|Users)/[^/\s'\"]+")
_JOB_DIR = re.compile(r"<tmp>/arena-[a-z]+-[A-Za-z0-9_]+")


def redact_paths(text):
    """Absolute paths of this machine replaced by placeholders (<arena>, <checkout>,
    <site-packages>, <python>, <tmp>, ~); non-strings pass unchanged."""
    if not isinstance(text, str) or "/" not in text:
        return text
    for root, label in _host_roots():
        # only at a path boundary: /work/main must not eat /work/mainline
        text = re.sub(re.escape(root) + r"(?=[/\s'\":,)\]]|$)", label, text)
    text = _OTHER_HOMES.sub("~", text)
    return _JOB_DIR.sub("<job>", text)


def redact_tree(obj):
    """redact_paths applied to every string in nested dicts/lists (a built leaderboard)."""
    if isinstance(obj, str):
        return redact_paths(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return obj
