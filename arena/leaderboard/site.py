"""The leaderboard site: static pages made from a built board and the store's cells.

One folder, relative links only, no script or style from elsewhere, so it opens from
file:// and from any static server (`python -m http.server`). Pages: the index (three
rankings, models, figures, the profile, date and commit, the rules in words), one page per
submission, one per model, and a listening page (clean and adversarial audio of a few
utterances per attack on the dense model). Every text a plugin supplied is escaped and
stripped of host paths (safe_text). Files are rewritten only when their bytes change and
audio is named by its content, so regenerating an unchanged board changes nothing.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import TypeGuard

import numpy as np
import pandas as pd

from arena.core.audio import SAMPLE_RATE
from arena.core.text import normalize_text
from arena.leaderboard import build as lb_build
from arena.leaderboard import formulas, render, safe_text, site_assets

MANIFEST = ".arena-site"     # the files the last generation wrote (so stale ones can go)
LISTEN_PER_ATTACK = 3        # utterances per attack on the listening page: the first ids
LISTEN_DIR = "listen"
TRACKS = ("attacks", "targeted_attacks", "defenses")
TRACK_NAMES = {"attacks": "untargeted attack", "targeted_attacks": "targeted attack",
               "defenses": "defense"}
TRACK_HEADINGS = {"attacks": "Untargeted attacks", "targeted_attacks": "Targeted attacks",
                  "defenses": "Defenses"}
TRACK_EXPLAINED = {
    "attacks": "Score: for each model and budget, the median ΔWER over the eligible defenses "
               "(no defense, and every defense that is not regressed); then the mean over models "
               "× budgets. Each utterance counts at most 1.0. Higher is stronger.",
    "targeted_attacks": "Score: share of utterances transcribed exactly as the target, median "
                        "over the eligible defenses, mean over models × budgets. Higher is "
                        "stronger; ties go to the lower character error rate to the target.",
    "defenses": "Score: WER under the worst attack per utterance (targeted attacks' audio "
                "and the harness's adaptive attack included), averaged over models × budgets. "
                "Beside it: the same without the adaptive attack (non_adaptive_wer) and the "
                "adaptive attack alone (adaptive_wer): the reference APGD run through the "
                "defense's purify in its sandbox, straight-through on the way back and averaged "
                "over its randomness (adaptive = bpda), or through the bare model for a defense "
                "that only implements transcribe (adaptive = transfer; labels self-reported). "
                "Lower is better; a regressed defense ranks after every other one.",
}
# row fields that have their own rendering (or none) in the ranking tables
_SHOWN_APART = {"name", "rank", "score", "ci_low", "ci_high", "rank_lo", "rank_hi", "errors",
                "by_budget"}

e = safe_text.html


# ------------------------------------------------------------------ small helpers
def slug(name: str) -> str:
    """A file name for any entry or model name (`int4+2:4` -> `int4_2b2_3a4`): letters,
    digits and '-' stay, anything else becomes _xx (its code), so two names never collide."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "-") else f"_{ord(c):02x}"
                   for c in str(name).lower()) or "_"


def _finite(v) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if _finite(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    if v is None or isinstance(v, float):
        return "—"
    return str(v)


@dataclass
class Cell:
    """A table cell: its HTML, and the value it sorts by (numbers sort as numbers)."""
    html: str
    v: float | str | None = None

    @property
    def numeric(self) -> bool:
        return _finite(self.v)


def num(v, digits: int = 3) -> Cell:
    return Cell(e(_fmt(v, digits)), v if _finite(v) else None)


def text(v) -> Cell:
    return Cell(e(_fmt(v)))


def with_interval(v, lo, hi, digits: int = 3) -> Cell:
    """A score with its interval when the board has one."""
    out = e(_fmt(v, digits))
    if _finite(lo) and _finite(hi):
        out += f" <span class='ci'>[{_fmt(lo, digits)}, {_fmt(hi, digits)}]</span>"
    return Cell(out, v if _finite(v) else None)


def rank_cell(r: dict) -> Cell:
    out = e(_fmt(r.get("rank")))
    lo, hi = r.get("rank_lo"), r.get("rank_hi")
    if _finite(lo) and _finite(hi) and lo != hi:
        out += f" <span class='ci'>({int(float(lo))}–{int(float(hi))})</span>"
    return Cell(out, r.get("rank"))


def table(headers: list[str], rows: list[list[Cell]], *, sortable: bool = True,
          caption: str = "") -> str:
    if not rows:
        return "<p class='muted'><em>no results</em></p>"
    head = "".join(f"<th scope='col'>{e(h.replace('_', ' '))}</th>" for h in headers)
    body = []
    for row in rows:
        tds = []
        for c in row:
            attrs = " class='num'" if c.numeric else ""
            if c.v is not None:
                attrs += f" data-v='{e(str(c.v))}'"
            tds.append(f"<td{attrs}>{c.html}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>\n")
    cap = f"<caption>{caption}</caption>" if caption else ""
    cls = " class='sortable'" if sortable else ""
    return (f"<div class='wide'><table{cls}>{cap}<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{''.join(body)}</tbody></table></div>\n")


def pivot(rows: list[dict], index: str | tuple[str, ...], columns: str, value: str, *,
          digits: int = 3, first: str | tuple[str, ...] = "", link=None) -> str:
    """A sortable index × columns table of `value` (e.g. model × budget): the mean where
    several rows meet, else the row's value with its interval (ci_low, ci_high) if any."""
    keys = (index,) if isinstance(index, str) else index
    acc: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if _finite(r.get(value)):
            acc[(tuple(r[k] for k in keys), r[columns])].append(r)
    if not acc:
        return "<p class='muted'><em>no results</em></p>"
    idx = sorted({k[0] for k in acc}, key=lambda t: tuple(_budget_order(x) for x in t))
    cols = sorted({k[1] for k in acc}, key=_budget_order)
    out = []
    for i in idx:
        head = [Cell(link(i[0]), str(i[0])) if link else text(i[0])] + [text(x) for x in i[1:]]
        row = []
        for c in cols:
            group = acc.get((i, c), [])
            if len(group) == 1:
                g = group[0]
                row.append(with_interval(g[value], g.get("ci_low"), g.get("ci_high"), digits)
                           if value == "delta_wer" or value == "clean_wer" else num(g[value], digits))
            else:
                row.append(num(mean(g[value] for g in group), digits) if group else text(None))
        out.append(head + row)
    names = (first,) if isinstance(first, str) and first else (first or keys)
    return table([*names, *(str(c) for c in cols)], out)


def long_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """ΔWER rows one per model (the board's long form: attack, [budget,] model, delta_wer,
    ci_low, ci_high) from either form (the older one has a column per model)."""
    out = []
    for r in rows:
        if "model" in r and "delta_wer" in r:
            out.append(r)
            continue
        for k, v in r.items():
            if k not in keys and k not in ("budgets", "source_model") and _finite(v):
                out.append({**{f: r.get(f) for f in keys}, "model": k, "delta_wer": v})
    return out


def _budget_order(b) -> tuple:
    m = re.fullmatch(r"([a-z]+)([0-9.]+)", str(b))
    if not m:
        return (str(b), 0.0)
    family, value = m.group(1), float(m.group(2))
    return (family, -value if family == "snr" else value)   # larger perturbation to the right


# ------------------------------------------------------------------ the files
class SiteWriter:
    """Writes files under `root` only when their bytes differ; remembers what it wrote so
    files of an earlier generation that are no longer made can be removed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files: dict[str, int] = {}
        self.changed: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, data: bytes | str) -> str:
        blob = data.encode() if isinstance(data, str) else data
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.is_file() and path.read_bytes() == blob):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
            self.changed.append(rel)
        self.files[rel] = len(blob)
        return rel

    def keep(self, rel: str) -> bool:
        """A file named by its content that is already there: nothing to make."""
        path = self.root / rel
        if path.is_file():
            self.files[rel] = path.stat().st_size
            return True
        return False

    def previous(self) -> list[str]:
        path = self.root / MANIFEST
        try:
            return [line for line in path.read_text().splitlines() if line.strip()]
        except OSError:
            return []

    def finish(self) -> None:
        old = self.previous()
        for rel in old:
            if rel in self.files or rel == MANIFEST or ".." in Path(rel).parts:
                continue
            path = self.root / rel
            if path.is_file():
                path.unlink()
                self.changed.append(rel)
        for folder in sorted({(self.root / r).parent for r in old}, key=lambda p: -len(p.parts)):
            if folder != self.root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self.write(MANIFEST, "".join(f"{r}\n" for r in sorted(self.files) if r != MANIFEST))

    @property
    def size(self) -> int:
        return sum(self.files.values())


# ------------------------------------------------------------------ the data behind pages
def model_info(names: list[str]) -> dict[str, dict]:
    """Size and card fields of the zoo's models (only what the site shows: never a path)."""
    try:
        from arena.zoo.registry import list_models

        rows = list_models()
    except Exception:   # a broken or missing zoo must not stop the board
        rows = []
    keep = ("bytes", "size_ratio", "recipe", "wer", "rel_wer_regression", "fine_tuned")
    info = {r["name"]: {k: r.get(k) for k in keep} for r in rows if r["name"] in names}
    return {n: info.get(n, {}) for n in names}


def robust_wer(cells: list[dict], model: str, defense: str = formulas.NO_DEFENSE) -> float | None:
    """WER under the worst untargeted attack per utterance, mean over budgets."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        if (c["kind"] == "defense" and c["model"] == model and c["defense"] == defense
                and c["metrics"].get("track", "attack") == "attack" and c["metrics"].get("ids")):
            groups[c["budget"]].append(c)
    values = [formulas.worst_case_wer(g) for g in groups.values()]
    return mean(values) if values else None


def clean_wer(board: dict, model: str, defense: str = formulas.NO_DEFENSE) -> float | None:
    for r in board.get("clean", []):
        if r["model"] == model and r["defense"] == defense:
            return r["clean_wer"]
    return None


def word_diff(reference: str, hypothesis: str | None) -> tuple[str, str]:
    """(reference, hypothesis) as HTML with the word differences marked: reference words
    the hypothesis lost in <del>, words it put instead or in addition in <ins>."""
    if hypothesis is None:
        return e(reference), "<em class='err'>no transcript (the defense failed)</em>"
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        a, b = " ".join(ref[i1:i2]), " ".join(hyp[j1:j2])
        if op == "equal":
            left.append(e(a))
            right.append(e(b))
            continue
        if a:
            left.append(f"<del>{e(a)}</del>")
        if b:
            right.append(f"<ins>{e(b)}</ins>")
    return " ".join(left) or "<em>(empty)</em>", " ".join(right) or "<em>(empty)</em>"


# ------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.facecolor": "white", "axes.facecolor": "white",
                         "text.color": "#111", "axes.labelcolor": "#111", "xtick.color": "#111",
                         "ytick.color": "#111", "axes.edgecolor": "#333", "font.size": 10})
    return plt


def _png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def fig_budget_curves(board: dict) -> bytes | None:
    """ΔWER (no defense, mean over models) against the budget: one panel per budget kind,
    a curve per attack where the profile has several budgets of the kind, bars where it
    has one."""
    curves = board.get("budget_curves") or {}
    if not curves:
        return None
    budgets = sorted({b for bs in curves.values() for b in bs}, key=_budget_order)
    families: dict[str, list[str]] = defaultdict(list)
    for b in budgets:
        families[_budget_order(b)[0]].append(b)
    plt = _plt()
    attacks = sorted(curves)
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(families), figsize=(5.2 * len(families), 3.6), squeeze=False)
    for ax, (family, bs) in zip(axes[0], sorted(families.items())):
        label = {"snr": "SNR budget (dB), larger perturbation →", "linf": "L∞ budget ε"}.get(family, family)
        if len(bs) > 1:
            xs = [float(re.sub(r"^[a-z]+", "", b)) for b in bs]
            for i, a in enumerate(attacks):
                pts = [(x, curves[a][b]) for x, b in zip(xs, bs) if b in curves[a]]
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=colours(i % 10), label=a)
            if family == "snr":
                ax.invert_xaxis()
            elif family == "linf":
                ax.set_xscale("log")
            ax.set_xlabel(label)
        else:
            vals = [curves[a].get(bs[0], float("nan")) for a in attacks]
            ax.bar(range(len(attacks)), vals, color=[colours(i % 10) for i in range(len(attacks))])
            ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
            for i, v in enumerate(vals):
                if math.isfinite(v):
                    ax.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=8,
                                xytext=(0, 2), textcoords="offset points")
            ax.set_xlabel(f"budget {bs[0]} (the profile's only {family} budget)")
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_ylabel("ΔWER, no defense")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + [x for x, y in zip(h, lab) if y not in labels], \
            labels + [y for y in lab if y not in labels]
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 0.86, 1))
    else:
        fig.tight_layout()
    return _png(fig)


def fig_heatmap(values: dict[tuple[str, str], float], rows: list[str], cols: list[str],
                title: str, xlabel: str) -> bytes | None:
    """Annotated heatmap on a light colour scale; each number black or white by the
    darkness of its square, so every label stays readable."""
    if not values:
        return None
    plt = _plt()
    grid = np.array([[values.get((r, c), np.nan) for c in cols] for r in rows], dtype=float)
    top = max(0.05, float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.05)
    fig, ax = plt.subplots(figsize=(1.6 + 0.95 * len(cols), 1.1 + 0.42 * len(rows)))
    im = ax.imshow(grid, cmap="Blues", vmin=min(0.0, float(np.nanmin(grid))), vmax=top, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = grid[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if v / top > 0.55 else "#111")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    fig.colorbar(im, ax=ax, label="ΔWER")
    fig.tight_layout()
    return _png(fig)


def fig_compression(points: list[dict]) -> bytes | None:
    """Size against clean WER and robust WER, one column of markers per model."""
    pts = [p for p in points if _finite(p.get("clean")) or _finite(p.get("robust"))]
    if not pts:
        return None
    plt = _plt()
    sized = all(_finite(p.get("bytes")) for p in pts)
    xs = [p["bytes"] / 1e6 if sized else i for i, p in enumerate(pts)]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for x, p in zip(xs, pts):
        ys = [float(v) for v in (p.get("clean"), p.get("robust")) if _finite(v)]
        ax.plot([x, x], [min(ys), max(ys)], color="#999", lw=1, zorder=1)
        ax.annotate(p["name"], (x, max(ys)), xytext=(4, 4), textcoords="offset points", fontsize=9)
    ax.scatter([x for x, p in zip(xs, pts) if _finite(p.get("clean"))],
               [p["clean"] for p in pts if _finite(p.get("clean"))],
               color="#1f77b4", marker="o", label="clean WER", zorder=2)
    ax.scatter([x for x, p in zip(xs, pts) if _finite(p.get("robust"))],
               [p["robust"] for p in pts if _finite(p.get("robust"))],
               color="#c62828", marker="v", label="robust WER (worst attack, no defense)", zorder=2)
    if sized:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel("model size (MB, log scale)")
    else:
        ax.set_xticks(xs, [p["name"] for p in pts])
        ax.set_xlabel("model")
    ax.set_ylabel("WER on the scored split")
    ax.set_title("Compression × robustness", fontsize=11)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _png(fig)


SPECTROGRAM_CAPTION = ("spectrogram: time left to right, 0 to 8 kHz bottom to top, 25 ms frames, "
                       "brighter is louder, 70 dB range in 16 steps")


def spectrogram_png(signal: np.ndarray, levels: int = 16, bands: int = 100) -> bytes:
    """Log-power spectrogram (25 ms Hann frames, 10 ms hop, 80 Hz bands, 70 dB range in 16
    viridis steps) as a palette PNG, one pixel per frame and band: a few kB where
    matplotlib's RGB figure took 50 kB and half a second (the page says what the axes are)."""
    from matplotlib import colormaps
    from PIL import Image

    x = np.asarray(signal, dtype=np.float64)
    n, hop = 400, 160
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)
    power = np.abs(np.fft.rfft(frames, axis=1)[:, :200]) ** 2
    power = power.reshape(len(power), bands, -1).mean(axis=2)
    db = 10 * np.log10(power + 1e-12).T[::-1]            # low frequencies at the bottom
    step = np.round(np.clip((db - (db.max() - 70)) / 70, 0, 1) * (levels - 1)).astype(np.uint8)
    palette = (colormaps["viridis"](np.linspace(0, 1, levels))[:, :3] * 255).astype(np.uint8)
    image = Image.fromarray(step, mode="P")
    image.putpalette(palette.flatten().tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ------------------------------------------------------------------ audio
def _pcm16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(wave, dtype=np.float64) * 32768), -32768, 32767).astype("<i2")


def encode_audio(wave: np.ndarray) -> bytes:
    """16 kHz mono Ogg/Opus (libsndfile's default rate: about 1.5 kB a second of speech)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, _pcm16(wave), SAMPLE_RATE, format="OGG", subtype="OPUS")
    return buf.getvalue()


def audio_file(writer: SiteWriter, wave: np.ndarray) -> str:
    """The file name of a wave's audio in the listening folder. Encoded once: the name is
    the samples' hash, because the encoder's stream id is random and its bytes are not."""
    name = hashlib.sha256(_pcm16(wave).tobytes() + b"ogg-opus-16k").hexdigest()[:20] + ".ogg"
    rel = f"{LISTEN_DIR}/{name}"
    if not writer.keep(rel):
        writer.write(rel, encode_audio(wave))
    return name


# ------------------------------------------------------------------ pages
@dataclass
class SiteInput:
    board: dict
    cells: list[dict]                      # the store's cells the board shows (scoped_cells)
    meta: dict
    context: dict                          # published, filtered, date, commit, history
    store: object | None = None            # for the attack audio (has_artifact, read_waves)
    clean: dict[str, tuple[str, np.ndarray]] | None = None   # id -> (reference, clean wave)
    models: dict[str, dict] = field(default_factory=dict)
    effort: str | None = None


def _page(title: str, body: str, depth: int, site: SiteInput) -> str:
    up = "../" * depth
    ctx = site.context
    nav = "".join(f"<a href='{up}{href}'>{label}</a>" for href, label in (
        ("index.html", "Rankings"), ("index.html#models", "Models"),
        (f"{LISTEN_DIR}/index.html", "Listen"), ("index.html#rules", "Rules"),
        ("index.html#data", "Data")))
    if ctx.get("published"):
        banner = (f"<div class='banner published'>Published board, {e(ctx.get('date'))}, "
                  f"commit <code>{e(ctx.get('commit'))}</code>.</div>")
    else:
        filtered = ctx.get("filtered") or []
        what = ("Filtered: " + "; ".join(e(f) for f in filtered) + ". ") if filtered else ""
        banner = (f"<div class='banner'><b>Local run, not the published board.</b> {what}"
                  f"Run of {e(ctx.get('date'))}, code at commit <code>{e(ctx.get('commit'))}</code>."
                  "</div>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)} · ASR Arena</title><link rel='icon' href='data:,'>"
            f"<link rel='stylesheet' href='{up}style.css'><script src='{up}site.js' defer></script>"
            f"</head>\n<body><header><h1>ASR Arena · {e(title)}</h1><nav>{nav}</nav></header>\n"
            f"{banner}\n{body}\n<footer>ASR Arena leaderboard · generated from the results store by "
            "<code>arena leaderboard</code> · static, offline</footer></body></html>\n")


def _sub_link(name: str, depth: int, known: set[str]) -> str:
    if name not in known:
        return e(name)
    return f"<a href='{'../' * depth}s/{slug(name)}.html'>{e(name)}</a>"


def _model_link(name: str, depth: int) -> str:
    return f"<a href='{'../' * depth}m/{slug(name)}.html'>{e(name)}</a>"


def _queries(cells: list[dict], attack: str | None = None) -> dict[tuple[str, str], dict]:
    """(attack, model) -> forward and backward calls per utterance over the attack cells."""
    acc: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for c in cells:
        m = c["metrics"]
        if c["kind"] != "attack" or (attack and c["attack"] != attack) or not m.get("n"):
            continue
        if _finite(m.get("forward_calls")) and _finite(m.get("backward_calls")):
            acc[(c["attack"], c["model"])].append((m["forward_calls"] / m["n"], m["backward_calls"] / m["n"]))
    return {k: dict(forward=mean(f for f, _ in v), backward=mean(b for _, b in v))
            for k, v in acc.items()}


def scope_html(site: SiteInput) -> str:
    s = site.board.get("scope", {})
    ctx = site.context
    rows = [("Profile", s.get("profile")), ("Split", f"{s.get('split')} (seed tag {s.get('seed_tag')})"),
            ("Utterances", s.get("n_utterances")), ("Budgets", ", ".join(s.get("budgets") or []) or None),
            ("Attack effort", site.effort), ("Device", s.get("device")),
            ("Models", ", ".join(s.get("models") or []) or None),
            ("Date", ctx.get("date")), ("Commit", ctx.get("commit"))]
    return "<dl class='scope'>" + "".join(f"<dt>{e(k)}</dt><dd>{e(_fmt(v))}</dd>" for k, v in rows) + "</dl>"


def ranking_table(site: SiteInput, track: str, depth: int = 0) -> str:
    rows = site.board.get(track, [])
    known = _submission_names(site.board)
    extra: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in _SHOWN_APART and k not in extra and not k.endswith(("_ci_low", "_ci_high")) \
                    and (v is None or isinstance(v, (int, float, str))):
                extra.append(k)
    own_count = any(k.startswith("queries") for k in extra)
    queries = _queries(site.cells) if track != "defenses" and not own_count else {}
    headers = ["rank", "name", "score"] + extra + (["queries / utterance (self-reported)"]
                                                    if queries else []) + ["errors"]
    out = []
    for r in rows:
        cells = [rank_cell(r), Cell(_sub_link(r["name"], depth, known), r["name"]),
                 with_interval(r.get("score"), r.get("ci_low"), r.get("ci_high"))]
        cells += [text(r.get(k)) if isinstance(r.get(k), str)
                  else with_interval(r.get(k), r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high"))
                  for k in extra]
        if queries:
            q = [v for (a, _), v in queries.items() if a == r["name"]]
            cells.append(num(mean(x["forward"] + x["backward"] for x in q), 1) if q else text(None))
        n_err = len(r.get("errors") or [])
        cells.append(Cell(f"<a class='err' href='{'../' * depth}s/{slug(r['name'])}.html#errors'>"
                          f"{n_err}</a>" if n_err else "", n_err))
        out.append(cells)
    return table(headers, out)


def _submission_names(board: dict) -> set[str]:
    return {r["name"] for t in TRACKS for r in board.get(t, [])}


def _model_points(site: SiteInput) -> list[dict]:
    names = list(site.models) or sorted({c["model"] for c in site.cells if c.get("model")})
    return [dict(name=m, bytes=site.models.get(m, {}).get("bytes"), clean=clean_wer(site.board, m),
                 robust=robust_wer(site.cells, m)) for m in names]


def models_table(site: SiteInput, depth: int = 0) -> str:
    dense = site.models.get("dense", {}).get("bytes")
    rows = []
    mr = long_rows(site.board.get("model_robustness", []), ("attack",))
    for p in _model_points(site):
        info = site.models.get(p["name"], {})
        ratio = info.get("size_ratio")
        if not _finite(ratio) and _finite(p["bytes"]) and dense:
            ratio = p["bytes"] / dense
        deltas = [r["delta_wer"] for r in mr if r["model"] == p["name"] and _finite(r["delta_wer"])]
        rows.append([Cell(_model_link(p["name"], depth), p["name"]),
                     num(p["bytes"] / 1e6 if _finite(p["bytes"]) else None, 2),
                     num(100 * float(ratio) if _finite(ratio) else None, 1), text(info.get("recipe")),
                     num(info.get("wer"), 4), num(p["clean"]), num(p["robust"]),
                     num(mean(deltas) if deltas else None)])
    return table(["model", "size (MB)", "% of dense", "recipe", "test WER (model card)",
                  "clean WER (scored split)", "robust WER (worst attack)", "mean ΔWER (attacks)"], rows)


def rules_html(board: dict) -> str:
    margin = formulas.CLEAN_REGRESSION_MARGIN
    has_ci = any(_finite(r.get("ci_low")) for t in TRACKS for r in board.get(t, []))
    has_rank = any(_finite(r.get("rank_lo")) for t in TRACKS for r in board.get(t, []))
    items = [
        "<b>A cell</b> is one attack at one budget against one model behind one defense, scored "
        "on every utterance of the split. <b>WER</b> is the word error rate over those utterances "
        "(word edits ÷ reference words, after lower-casing and dropping punctuation); "
        "<b>ΔWER</b> is the WER on the attacked audio minus the WER on the clean audio for the "
        "same model and defense.",
        "<b>Budgets.</b> <code>snrN</code>: the perturbation is at least N dB quieter than the "
        "utterance. <code>linfE</code>: no sample moves by more than E (full scale is 1). The "
        "harness projects every attack's output into its budget, clips it to [−1, 1] and rounds "
        "it to 16 bits, whatever the attack returned.",
        f"<b>Untargeted attacks</b>: {e(TRACK_EXPLAINED['attacks'])}",
        f"<b>Targeted attacks</b>: {e(TRACK_EXPLAINED['targeted_attacks'])}",
        "<b>Defenses</b>: for each model and budget, each utterance counts with the attack that "
        "hurt it most (the most word errors, targeted attacks included); the WER of those worst "
        "cases is averaged over models and budgets. Lower is better.",
        "<b>Why a median</b>: one defense, whatever it answers, moves an attack's median only "
        "between its neighbours among the other defenses; the bound is printed per attack "
        "(<em>defense influence bound</em>). With a mean, an attack and a sacrificial defense "
        "that recognises it could buy rank 1.",
        f"<b>Regressed</b>: a defense whose clean WER (mean over models) is more than "
        f"{margin:.2f} ({100 * margin:.0f} percentage points, absolute) above the undefended "
        "models' clean WER, or whose WER on the <em>noise</em> baseline's audio (random noise "
        "of the budget's size) is that much above the undefended models' on the same audio, is "
        "marked <em>regressed</em> and ranked after every defense that is not, whatever its "
        "robust score: a defense may not buy robustness by breaking speech, and the second "
        "check stops one that spares only audio it recognises as clean.",
        "<b>Failures</b>: an attack that fails on a batch is scored on the clean audio of that "
        "batch (it gains nothing) and its error is shown; a defense that fails scores WER 1.0 "
        "on the utterances it did not transcribe.",
        "<b>Transfer</b>: audio crafted against the dense model, transcribed by each compressed "
        "model without a defense; ΔWER against that model's clean WER.",
        "<b>Query counts</b> are the model's forward and backward calls counted by the model "
        "wrapper inside the attack's own sandboxed process and reported by it: they are "
        "<em>self-reported</em>, not verified by the harness.",
    ]
    if has_ci:
        items.append("<b>Intervals</b>: [low, high] after a score is its 95% bootstrap interval over "
                     "the utterances (the scored split is a sample; another sample would move the score "
                     "within about that range).")
    if has_rank:
        items.append("<b>Rank ranges</b>: (a–b) after a rank are the ranks the paired bootstrap "
                     "cannot separate the entry from; no range means its rank is settled.")
    return "<ul class='rules'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def index_page(site: SiteInput, figures: dict[str, str], data_files: list[str]) -> str:
    b = site.board
    parts = ["<h2 id='profile'>Profile</h2>", scope_html(site)]
    for track in TRACKS:
        parts.append(f"<h2 id='{track}'>{e(TRACK_HEADINGS[track])}</h2>"
                     f"<p class='muted'>{e(TRACK_EXPLAINED[track])}</p>" + ranking_table(site, track))
    parts.append("<h2 id='models'>Models</h2>" + models_table(site))
    if "compression" in figures:
        parts.append(f"<p><img class='fig' src='{figures['compression']}' alt='Model size against "
                     "clean and robust WER'></p>")
    parts.append("<h2 id='robustness'>ΔWER per attack and model, no defense</h2>"
                 "<p class='muted'>How compression changes robustness: the same attack, crafted "
                 "against each model (mean over budgets).</p>")
    known = _submission_names(b)
    parts.append(pivot(long_rows(b.get("model_robustness", []), ("attack",)), "attack", "model",
                       "delta_wer", link=lambda a: _sub_link(a, 0, known)))
    if "heatmap_model" in figures:
        parts.append(f"<p><img class='fig' src='{figures['heatmap_model']}' alt='ΔWER heatmap, "
                     "attack by model'></p>")
    if "budget_curves" in figures:
        parts.append("<h2 id='budgets'>ΔWER against the budget</h2>"
                     f"<p><img class='fig' src='{figures['budget_curves']}' alt='ΔWER against the "
                     "budget per attack'></p>")
    if "heatmap_defense" in figures:
        parts.append("<h2 id='attack-defense'>Attack × defense</h2>"
                     f"<p><img class='fig' src='{figures['heatmap_defense']}' alt='ΔWER heatmap, "
                     "attack by defense'></p>")
    parts.append("<h2 id='transfer'>Transfer: audio crafted on the dense model</h2>"
                 "<p class='muted'>ΔWER on each model of the dense model's adversarial audio, "
                 "no defense.</p>"
                 + pivot(long_rows(b.get("transfer", []), ("attack", "budget")), ("attack", "budget"),
                         "model", "delta_wer", link=lambda a: _sub_link(a, 0, known)))
    parts.append(convergence_html(b.get("convergence", [])))
    parts.append("<h2 id='clean'>Clean WER per model and defense</h2>"
                 + pivot(b.get("clean", []), "defense", "model", "clean_wer",
                         link=lambda n: _sub_link(n, 0, known)))
    if b.get("not_scored"):
        parts.append("<h2 id='not-scored'>Not scored</h2><ul>" + "".join(
            f"<li class='err'>{e(p)}</li>" for p in b["not_scored"]) + "</ul>")
    parts.append("<h2 id='rules'>Rules</h2>" + rules_html(b))
    parts.append("<h2 id='data'>Data files</h2><ul>" + "".join(
        f"<li><a href='{e(f)}'>{e(f)}</a></li>" for f in data_files) + "</ul>")
    return _page("Leaderboard", "\n".join(parts), 0, site)


def convergence_html(rows: list[dict]) -> str:
    """The reference attacks' ΔWER against their step count, and whether each profile's
    effort is converged (within the tolerance of 4x its steps)."""
    head = ("<h2 id='convergence'>Convergence of the reference attacks</h2><p class='muted'>ΔWER "
            "(95% interval over utterances) against the attack's step count, made with "
            "<code>arena bench convergence --record</code>. An effort is converged when ΔWER "
            "there is within the tolerance of ΔWER at 4× its steps.</p>")
    if not rows:
        return head + "<p class='muted'>No curve recorded.</p>"
    body = []
    for r in rows:
        steps = [p["steps"] for p in r["points"]]
        cells = [with_interval(p["delta_wer"], p["ci_low"], p["ci_high"]) for p in r["points"]]
        body.append(f"<h3>{e(r['attack'])} on {e(r['model'])}, {e(r['budget'])} "
                    f"({r['n_utterances']} utterances)</h3>"
                    + table(["steps"] + [str(s) for s in steps], [[text("ΔWER")] + cells],
                            sortable=False))
        verdict = [f"{e(name)} ({v['steps']} steps): "
                   + ("converged" if v["converged"] else "not converged" if v["converged"] is False
                      else "not measured")
                   for name, v in r["efforts"].items()]
        body.append("<p>" + "; ".join(verdict) + "</p>")
    return head + "".join(body)


def _history_html(site: SiteInput, name: str, track: str) -> str:
    history = site.context.get("history") or []
    entries = [(h, h.get("ranks", {}).get(track, {}).get(name)) for h in history]
    entries = [(h, r) for h, r in entries if r]
    if not entries:
        return "<p class='muted'>Not on the published board yet.</p>"
    rows = [[text(h.get("date")), Cell(f"<code>{e(h.get('commit'))}</code>", h.get("commit")),
             num(r.get("rank"), 0), num(r.get("score"))] for h, r in entries]
    note = "<p class='muted'>First published run: no earlier rank to compare with.</p>" \
        if len(entries) == 1 else ""
    return note + table(["published", "commit", "rank", "score"], rows)


def submission_page(site: SiteInput, name: str, track: str) -> str:
    b = site.board
    row = next(r for r in b[track] if r["name"] == name)
    best = b[track][0] if b[track] else row
    score = with_interval(row.get("score"), row.get("ci_low"), row.get("ci_high")).html
    parts = [f"<p>{e(TRACK_NAMES[track]).capitalize()} · rank {rank_cell(row).html} of "
             f"{len(b[track])} · score {score} · <span class='muted'>{e(TRACK_EXPLAINED[track])}</span></p>"]
    if best["name"] != name and _finite(best.get("score")) and _finite(row.get("score")):
        parts.append(f"<p>Best in this track: {_sub_link(best['name'], 1, _submission_names(b))} "
                     f"with {_fmt(best['score'])} (difference {_fmt(row['score'] - best['score'])}).</p>")
    elif best["name"] == name:
        parts.append("<p>Best in this track.</p>")
    rows = b.get("cells", [])
    if track in ("attacks", "targeted_attacks"):
        mine = [r for r in rows if r["attack"] == name]
        none = [r for r in mine if r["defense"] == formulas.NO_DEFENSE]
        if track == "targeted_attacks":
            parts.append("<h2>Exact-match rate of the target by model × budget (no defense)</h2>"
                         + pivot(none, "model", "budget", "exact_match", link=lambda m: _model_link(m, 1)))
            parts.append("<h2>Character error rate to the target by model × budget (no defense)</h2>"
                         + pivot(none, "model", "budget", "cer_to_target", link=lambda m: _model_link(m, 1)))
        parts.append("<h2>ΔWER by model × budget, no defense</h2>"
                     + pivot(none, "model", "budget", "delta_wer", link=lambda m: _model_link(m, 1)))
        parts.append("<h2>ΔWER by model × budget, mean over defenses</h2>"
                     + pivot(mine, "model", "budget", "delta_wer", link=lambda m: _model_link(m, 1)))
        parts.append("<h2>ΔWER by defense × budget, mean over models</h2>"
                     + pivot(mine, "defense", "budget", "delta_wer",
                             link=lambda d: _sub_link(d, 1, _submission_names(b))))
        parts.append("<h2>SNR of the adversarial audio (dB) by model × budget</h2>"
                     + pivot(none, "model", "budget", "snr_db", digits=1, link=lambda m: _model_link(m, 1)))
        q = [dict(model=c["model"], budget=c["budget"],
                  calls=(m["forward_calls"] + m["backward_calls"]) / m["n"])
             for c in site.cells if c["kind"] == "attack" and c["attack"] == name
             for m in [c["metrics"]]
             if m.get("n") and _finite(m.get("forward_calls")) and _finite(m.get("backward_calls"))]
        parts.append("<h2>Model queries per utterance (self-reported)</h2><p class='muted'>Forward "
                     "plus backward calls per utterance, counted by the model wrapper inside the "
                     "attack's own process and reported by it; not verified.</p>"
                     + pivot(q, "model", "budget", "calls", digits=1, link=lambda m: _model_link(m, 1)))
    else:
        mine = [r for r in rows if r["defense"] == name]
        worst = []
        for model in sorted({c["model"] for c in site.cells if c["defense"] == name}):
            for budget in sorted({c["budget"] for c in site.cells if c["budget"]}, key=_budget_order):
                group = [c for c in site.cells if c["kind"] == "defense" and c["defense"] == name
                         and c["model"] == model and c["budget"] == budget
                         and c["metrics"].get("track", "attack") == "attack" and c["metrics"].get("ids")]
                if group:
                    worst.append(dict(model=model, budget=budget, wer=formulas.worst_case_wer(group)))
        parts.append("<h2>WER under the worst attack by model × budget</h2>"
                     + pivot(worst, "model", "budget", "wer", link=lambda m: _model_link(m, 1)))
        clean = [dict(model=r["model"], what="clean WER", v=r["clean_wer"]) for r in b.get("clean", [])
                 if r["defense"] == name]
        if name != formulas.NO_DEFENSE:
            clean += [dict(model=r["model"], what="without a defense", v=r["clean_wer"])
                      for r in b.get("clean", []) if r["defense"] == formulas.NO_DEFENSE]
        parts.append("<h2>Clean WER by model</h2>"
                     + pivot(clean, "model", "what", "v", link=lambda m: _model_link(m, 1)))
        parts.append("<h2>ΔWER by attack × budget, mean over models</h2>"
                     + pivot(mine, "attack", "budget", "delta_wer",
                             link=lambda a: _sub_link(a, 1, _submission_names(b))))
    errors = sorted(set(row.get("errors") or []) | {
        safe_text.redact_paths(c["error"]) for c in site.cells if c.get("error")
        and (c["attack"] == name or c["defense"] == name)})
    parts.append("<h2 id='errors'>Errors</h2>" + ("".join(f"<pre class='err'>{e(x)}</pre>" for x in errors)
                                                  if errors else "<p>None.</p>"))
    parts.append("<h2 id='history'>Rank history</h2>" + _history_html(site, name, track))
    return _page(name, "\n".join(parts), 1, site)


def model_page(site: SiteInput, model: str) -> str:
    b = site.board
    known = _submission_names(b)
    info = site.models.get(model, {})
    facts = [("Size", f"{info['bytes'] / 1e6:.2f} MB" if _finite(info.get("bytes")) else None),
             ("Share of dense",
              f"{100 * info['size_ratio']:.1f}%" if _finite(info.get("size_ratio")) else None),
             ("Recipe", info.get("recipe")), ("Fine-tuned", info.get("fine_tuned")),
             ("Test WER (model card)", _fmt(info.get("wer"), 4) if info.get("wer") is not None else None),
             ("Clean WER, scored split, no defense", _fmt(clean_wer(b, model))),
             ("Robust WER (worst attack per utterance, no defense)", _fmt(robust_wer(site.cells, model)))]
    parts = ["<dl class='scope'>" + "".join(f"<dt>{e(k)}</dt><dd>{e(_fmt(v))}</dd>" for k, v in facts)
             + "</dl>"]
    rows = [r for r in b.get("cells", []) if r["model"] == model and r["defense"] == formulas.NO_DEFENSE]
    table_rows = []
    for r in sorted(rows, key=lambda r: (r["attack"], _budget_order(r["budget"]))):
        table_rows.append([Cell(_sub_link(r["attack"], 1, known), r["attack"]), text(r["budget"]),
                           with_interval(r.get("delta_wer"), r.get("ci_low"), r.get("ci_high")),
                           num(r.get("clean_wer")), num(r.get("adv_wer")), num(r.get("snr_db"), 1)])
    parts.append("<h2>Robustness per attack, no defense</h2>"
                 + table(["attack", "budget", "ΔWER", "clean WER", "attacked WER", "SNR (dB)"], table_rows))
    parts.append("<h2>Per defense, mean over attacks and budgets</h2>"
                 + pivot([r for r in b.get("cells", []) if r["model"] == model and r["track"] == "attack"],
                         "defense", "budget", "delta_wer", link=lambda d: _sub_link(d, 1, known)))
    transfer = [r for r in long_rows(b.get("transfer", []), ("attack", "budget")) if r["model"] == model]
    if transfer:
        parts.append("<h2>Transfer from the dense model</h2><p class='muted'>ΔWER of audio crafted "
                     "against the dense model, transcribed by this one.</p>"
                     + pivot(transfer, "attack", "budget", "delta_wer",
                             link=lambda a: _sub_link(a, 1, known)))
    parts.append("<h2>Compression × robustness</h2><p><img class='fig' src='../img/compression.png' "
                 "alt='Model size against clean and robust WER'></p>")
    return _page(f"model {model}", "\n".join(parts), 1, site)


# ------------------------------------------------------------------ listening
def listening_page(site: SiteInput, writer: SiteWriter) -> str | None:
    """Per attack on the dense model: the first utterances (sorted ids), clean and attacked
    audio, reference and recognised text with differences marked, the perturbation's
    spectrogram. None when the store has none of the attack audio."""
    from arena.score.targets import choose_target

    attack_cells = sorted((c for c in site.cells if c["kind"] == "attack" and c["model"] == "dense"),
                          key=lambda c: (c["attack"], _budget_order(c["budget"])))
    store = site.store
    available = [c for c in attack_cells if store is not None and c.get("artifact")
                 and store.has_artifact(c["artifact"])]     # type: ignore[attr-defined]
    if not available:
        return None
    hyps: dict[tuple, dict[str, str | None]] = {}
    for c in site.cells:
        if c["kind"] in ("defense", "clean") and c["model"] == "dense" \
                and c["defense"] == formulas.NO_DEFENSE and "hypotheses" in c["metrics"]:
            hyps[(c["attack"], c["budget"])] = dict(zip(c["metrics"]["ids"], c["metrics"]["hypotheses"]))
    clean = site.clean or {}
    ids = sorted({u for c in available for u in c["metrics"].get("ids", [])})[:LISTEN_PER_ATTACK]
    media_before = set(writer.files)
    parts = [f"<p>For each attack on the dense model: the first {len(ids)} utterances of the split "
             "(sorted by id; the same for every attack), each budget's adversarial audio, what the "
             "dense model recognised with no defense (words it lost <del>struck</del>, words it "
             "put instead <ins>underlined</ins>), and the spectrogram of the perturbation "
             f"(adversarial minus clean audio; {SPECTROGRAM_CAPTION}).</p>"]
    clean_block = []
    for uid in ids:
        ref, wave = clean.get(uid, (None, None))
        audio = (f"<audio controls preload='metadata' src='{audio_file(writer, wave)}'></audio>"
                 if wave is not None else "<em class='muted'>clean audio not available here</em>")
        hyp = hyps.get((None, None), {}).get(uid, "")
        _, marked = word_diff(ref or "", hyp) if ref is not None else ("", e(hyp))
        clean_block.append(f"<div class='utt'><b>{e(uid)}</b> {audio}<br>reference: "
                           f"<span class='words'>{e(ref) if ref else '—'}</span><br>recognised: "
                           f"<span class='words'>{marked}</span></div>")
    parts.append("<h2 id='clean'>Clean audio</h2>" + "".join(clean_block))
    by_attack: dict[str, list[dict]] = defaultdict(list)
    for c in available:
        by_attack[c["attack"]].append(c)
    for attack, cells in sorted(by_attack.items()):
        targeted = cells[0]["metrics"].get("track") == "targeted-attack"
        block = [f"<h2 id='{slug(attack)}'>{e(attack)}"
                 f"{' (targeted)' if targeted else ''}</h2>"]
        for c in cells:
            waves = store.read_waves(c["artifact"])   # type: ignore[attr-defined]
            block.append(f"<h3>{e(attack)} at {e(c['budget'])}</h3>")
            snr = dict(zip(c["metrics"].get("ids", []), c["metrics"].get("snr_db", [])))
            for uid in ids:
                if uid not in waves:
                    continue
                adv = waves[uid]
                ref, wave = clean.get(uid, (None, None))
                hyp = hyps.get((attack, c["budget"]), {}).get(uid)
                left, right = word_diff(ref, hyp) if ref is not None else ("—", e(hyp or ""))
                goal = ""
                if targeted and ref is not None:
                    goal = f"<br>target: <span class='words'>{e(choose_target(ref, uid))}</span>"
                if wave is not None and len(wave) == len(adv):
                    delta, what = np.asarray(adv) - np.asarray(wave), "perturbation (adversarial − clean)"
                else:
                    delta, what = np.asarray(adv), "adversarial audio (clean not available)"
                if not np.any(delta):
                    spectrum = "<p class='muted'>No perturbation: the attacked audio is the clean audio.</p>"
                else:
                    spec_name = hashlib.sha256(np.asarray(delta, dtype="<f4").tobytes()
                                               + b"spec-v2").hexdigest()[:20] + ".png"
                    if not writer.keep(f"{LISTEN_DIR}/{spec_name}"):
                        writer.write(f"{LISTEN_DIR}/{spec_name}", spectrogram_png(delta))
                    spectrum = (f"<figure><img class='spec' src='{spec_name}' alt='spectrogram of the "
                                f"{e(what)}'><figcaption class='muted'>{e(what)}</figcaption></figure>")
                block.append(
                    f"<div class='utt'><b>{e(uid)}</b> · SNR {e(_fmt(snr.get(uid), 1))} dB · "
                    f"<audio controls preload='metadata' src='{audio_file(writer, adv)}'></audio>"
                    f"<br>reference: <span class='words'>{left}</span><br>recognised: "
                    f"<span class='words'>{right}</span>{goal}{spectrum}</div>")
        parts.append("".join(block))
    media = {k: v for k, v in writer.files.items() if k not in media_before}
    kb = sum(media.values()) / 1024
    parts.append(f"<p class='muted'>Listening files: {sum(k.endswith('.ogg') for k in media)} Ogg/Opus "
                 f"clips (16 kHz mono) and {sum(k.endswith('.png') for k in media)} spectrograms, "
                 f"{kb:.0f} kB.</p>")
    return _page("listen", "\n".join(parts), 1, site)


# ------------------------------------------------------------------ the whole site
def data_files(writer: SiteWriter, board: dict) -> list[str]:
    out = []
    for key in ("attacks", "targeted_attacks", "defenses", "model_robustness", "transfer", "clean", "cells"):
        frame = pd.DataFrame(board.get(key, []))
        out.append(writer.write(f"data/{key}.csv", safe_text.csv_frame(frame).to_csv(index=False)))
    board_json = {k: v for k, v in render.to_json(board).items() if k != "report"}
    out.append(writer.write("data/leaderboard.json", json.dumps(board_json, indent=2, default=str) + "\n"))
    return out


def write_site(out_dir, board: dict, cells: list[dict], meta: dict, context: dict, *,
               store=None, clean: dict | None = None, models: dict | None = None) -> dict:
    """Write the site into out_dir; returns {index, files, changed, bytes, listen}.
    `cells`: the store's cells (all of them; the board's scope is applied here)."""
    from arena.score.profiles import PROFILES

    scoped = lb_build.scoped_cells(cells, meta)
    model_names = list(board.get("scope", {}).get("models")
                       or sorted({c["model"] for c in scoped if c["model"]}))
    profile = PROFILES.get(str(board.get("scope", {}).get("profile")))
    if clean is None:
        clean = corpus_clean(board.get("scope", {}), scoped)
    site = SiteInput(board, scoped, meta, context, store=store, clean=clean,
                     models=models if models is not None else model_info(model_names),
                     effort=profile.effort if profile else None)
    writer = SiteWriter(Path(out_dir))
    writer.write("style.css", site_assets.CSS)
    writer.write("site.js", site_assets.JS)
    figures: dict[str, str] = {}
    fig = fig_compression(_model_points(site))
    if fig:
        figures["compression"] = writer.write("img/compression.png", fig)
    fig = fig_budget_curves(board)
    if fig:
        figures["budget_curves"] = writer.write("img/budget_curves.png", fig)
    untargeted = [r for r in board.get("cells", []) if r["track"] == "attack"]
    for key, col, sub, title in (
            ("heatmap_model", "model", [r for r in untargeted if r["defense"] == formulas.NO_DEFENSE],
             "mean ΔWER, no defense (mean over budgets)"),
            ("heatmap_defense", "defense", untargeted, "mean ΔWER (mean over models and budgets)")):
        acc: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in sub:
            if _finite(r.get("delta_wer")):
                acc[(r["attack"], r[col])].append(r["delta_wer"])
        rows = sorted({a for a, _ in acc})
        cols = sorted({c for _, c in acc})
        fig = fig_heatmap({k: mean(v) for k, v in acc.items()}, rows, cols, title, col)
        if fig:
            figures[key] = writer.write(f"img/{key}.png", fig)
    files = data_files(writer, board)
    writer.write("index.html", index_page(site, figures, files))
    for track in TRACKS:
        for r in board.get(track, []):
            writer.write(f"s/{slug(r['name'])}.html", submission_page(site, r["name"], track))
    for m in model_names:
        writer.write(f"m/{slug(m)}.html", model_page(site, m))
    listen = listening_page(site, writer)
    kept_listening = False
    if listen is None:
        previous = [r for r in writer.previous() if r.startswith(f"{LISTEN_DIR}/")]
        if (writer.root / LISTEN_DIR / "index.html").is_file() and previous:
            # the store's audio is not versioned: a machine without it keeps the published clips
            kept_listening = all(writer.keep(r) for r in previous)
        if not kept_listening:
            listen = _page("listen", "<p>No adversarial audio in this store: the attacks' audio is "
                           "kept only on the machine that computed them (it is not versioned). Run "
                           "<code>arena score</code> there, or a run that computes the attacks, to "
                           "fill this page.</p>", 1, site)
    if listen is not None:
        writer.write(f"{LISTEN_DIR}/index.html", listen)
    writer.finish()
    return dict(index=str(writer.root / "index.html"), files=len(writer.files), changed=len(writer.changed),
                bytes=writer.size, listen=listen is not None or kept_listening)


def corpus_clean(scope: dict, cells: list[dict]) -> dict[str, tuple[str, np.ndarray]] | None:
    """Reference and clean audio of the listened utterances, read from the corpus split when
    it is on this machine (it is never built here)."""
    try:
        from arena.data.corpus import CorpusSpec, resolve_seed, seed_tag
        from arena.data.manifest import load_audio, read_manifest

        split = scope.get("split")
        if split not in ("dev", "test", "train"):
            return None
        seed = resolve_seed(split)
        if seed_tag(seed) != scope.get("seed_tag"):
            return None
        manifest = CorpusSpec(split, seed).manifest
        if not manifest.is_file():
            return None
        wanted = sorted({u for c in cells if c["kind"] == "attack" for u in c["metrics"].get("ids", [])})
        wanted = wanted[:LISTEN_PER_ATTACK]
        return {u.id: (u.text, load_audio(u)) for u in read_manifest(manifest) if u.id in wanted}
    except Exception:   # no corpus here: the page says the clean audio is missing
        return None


def subset_clean(subset, n: int = LISTEN_PER_ATTACK) -> dict[str, tuple[str, np.ndarray]]:
    """The same from a loaded scoring subset (what `arena score` has in memory)."""
    ids = sorted(subset.ids)[:n]
    index = {u: i for i, u in enumerate(subset.ids)}
    return {u: (subset.texts[index[u]], subset.waves[index[u]]) for u in ids}
