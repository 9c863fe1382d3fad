"""Rendering a built leaderboard: rich terminal tables, CSV/JSON files, static HTML page."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from arena.leaderboard import safe_text


def _fmt(v, digits=3):
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.{digits}f}"
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        return "; ".join(str(x) for x in v)[:80]
    return str(v)


TRACK_COLUMNS = {
    "attacks": ["rank", "name", "score", "adv_wer", "snr_db", "queries_self_reported", "cells", "errors"],
    "targeted_attacks": ["rank", "name", "score", "cer_to_target", "delta_wer", "queries_self_reported",
                         "cells", "errors"],
    "defenses": ["rank", "name", "score", "non_adaptive_wer", "adaptive_wer", "adaptive", "clean_wer",
                 "regressed", "cells", "errors"],
}
TRACK_TITLES = {
    "attacks": "Untargeted attacks — score: median ΔWER over eligible defenses, mean over models × "
               "budgets (higher is stronger)",
    "targeted_attacks": "Targeted attacks — score: exact-match rate of the target, median over eligible "
                        "defenses (higher is stronger)",
    "defenses": "Defenses — score: WER under the worst attack per utterance, targeted and adaptive "
                "attacks included; non-adaptive and adaptive WER beside it (lower is better)",
}
LEGEND = ("[low, high]: 95% bootstrap interval over utterances; rank a-b: ranks the paired bootstrap "
          "cannot separate; eligible defenses: `none` and those without WER regression on clean or "
          "benign-noise audio; "
          "adaptive: bpda = the reference attack through the defense's purify (straight-through, "
          "averaged over its randomness), transfer = transcribe-only defense, attacked through the bare "
          "model, white-box = the defense is the bare model (labels self-reported); "
          "query counts (fwd/bwd calls) are self-reported by the plugin's process and can be forged")
PRIMARY = {"attacks": "score", "targeted_attacks": "score", "defenses": "score", "cells": "delta_wer",
           "model_robustness": "delta_wer", "transfer": "delta_wer", "clean": "clean_wer"}


def _show(r: dict, c: str, primary: str = "score") -> str:
    """A value as displayed: a rank as its range, a score with its 95% interval."""
    if c == "rank" and r.get("rank_lo") is not None:
        lo, hi = r["rank_lo"], r["rank_hi"]
        return str(lo) if lo == hi else f"{lo}-{hi}"
    if c == "queries_self_reported" and r.get(c) is not None:
        return f"{r.get('forward_calls_self_reported')} fwd / {r.get('backward_calls_self_reported')} bwd"
    keys = ("ci_low", "ci_high") if c == primary else (f"{c}_ci_low", f"{c}_ci_high")
    lo, hi = r.get(keys[0]), r.get(keys[1])
    if isinstance(r.get(c), float) and lo is not None and hi is not None:
        return f"{_fmt(r[c])} [{lo:.2f}, {hi:.2f}]"
    return _fmt(r.get(c))


def _wide(rows: list[dict], index: tuple[str, ...], primary: str = "delta_wer") -> list[dict]:
    """Long rows (one per model) as one display row per `index` with a column per model."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r.get(k) for k in index)
        out.setdefault(key, dict(zip(index, key)))[r["model"]] = _show(r, primary, primary)
    return list(out.values())


def _frame(board: dict, key: str) -> pd.DataFrame:
    """A table for CSV: the numbers, and in front the displayed rank range and interval."""
    df = pd.DataFrame(board[key])
    primary = PRIMARY.get(key, "")
    if df.empty or primary not in df.columns:
        return df
    rows = board[key]
    df.insert(0, f"{primary}_95ci", [_show(r, primary, primary) for r in rows])
    if "rank_lo" in df.columns:
        df.insert(0, "rank_range", [_show(r, "rank") for r in rows])
    return df


def scope_line(board: dict) -> str:
    s = board["scope"]
    return (f"profile {s.get('profile')} · split {s.get('split')} (seed {s.get('seed_tag')}) · "
            f"{s.get('n_utterances')} utterances · budgets {', '.join(s.get('budgets') or [])} · "
            f"device {s.get('device')}")


def print_terminal(board: dict, console=None) -> None:
    # every cell is a rich Text: plugin text (errors) is never parsed as markup, and its
    # control characters are shown, not sent to the terminal
    cell = safe_text.rich_text
    console = console or Console()
    console.print(f"[bold]ASR Arena leaderboard[/bold] — {safe_text.markup(scope_line(board))}")
    for key, cols in TRACK_COLUMNS.items():
        table = Table(title=TRACK_TITLES[key], title_justify="left")
        for c in cols:
            table.add_column(c)
        for r in board[key]:
            table.add_row(*[cell(_show(r, c)) for c in cols])
        console.print(table)
    if board["model_robustness"]:
        models = sorted({r["model"] for r in board["model_robustness"]})
        table = Table(title="ΔWER per target model, no defense (how compression changes robustness)",
                      title_justify="left")
        table.add_column("attack")
        for m in models:
            table.add_column(cell(m))
        for r in _wide(board["model_robustness"], ("attack",)):
            table.add_row(cell(r["attack"]), *[cell(_fmt(r.get(m))) for m in models])
        console.print(table)
    console.print(Text(LEGEND, style="dim"))
    for problem in board.get("not_scored", []):
        console.print(Text.assemble(("not scored", "red"), ": ", cell(problem)))


def write_files(board: dict, out_dir) -> list[Path]:
    """CSV per table, leaderboard.json, images and index.html in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in ("attacks", "targeted_attacks", "defenses", "model_robustness", "transfer", "clean", "cells"):
        path = out / f"{key}.csv"
        safe_text.csv_frame(_frame(board, key)).to_csv(path, index=False)
        written.append(path)
    path = out / "leaderboard.json"
    path.write_text(json.dumps(to_json(board), indent=2, default=str))
    written.append(path)
    written += plot_images(board, out)
    path = out / "index.html"
    path.write_text(to_html(board))
    written.append(path)
    return written


def to_json(board: dict) -> dict:
    return {k: board.get(k) for k in ("scope", "attacks", "targeted_attacks", "defenses",
                                      "model_robustness", "transfer", "clean", "convergence",
                                      "report", "not_scored")}


def to_csv(board: dict) -> str:
    frames = []
    for key in ("attacks", "targeted_attacks", "defenses"):
        df = _frame(board, key)
        if not df.empty:
            df.insert(0, "track", key)
            frames.append(df.drop(columns=[c for c in ("by_budget",) if c in df.columns]))
    return safe_text.csv_frame(pd.concat(frames)).to_csv(index=False) if frames else ""


def plot_images(board: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pd.DataFrame(board["cells"])
    written: list[Path] = []
    if rows.empty:
        return written
    untargeted = rows[rows["track"] == "attack"]
    for name, index, columns in (("heatmap_attack_defense.png", "attack", "defense"),
                                 ("heatmap_attack_model.png", "attack", "model")):
        if untargeted.empty:
            continue
        sub = untargeted if columns == "defense" else untargeted[untargeted["defense"] == "none"]
        if sub.empty:
            continue
        pivot = sub.pivot_table(index=index, columns=columns, values="delta_wer", aggfunc="mean")
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(pivot.columns), 1 + 0.5 * len(pivot.index)))
        im = ax.imshow(pivot.values, cmap="magma", aspect="auto", vmin=0,
                       vmax=max(0.05, float(pd.DataFrame(pivot).max().max())))
        ax.set_xticks(range(len(pivot.columns)), pivot.columns, rotation=30, ha="right")
        ax.set_yticks(range(len(pivot.index)), pivot.index)
        for (i, j), v in pd.DataFrame(pivot.values).stack().items():
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="cyan", fontsize=8)
        ax.set_title(f"mean ΔWER, {index} × {columns}" + (" (no defense)" if columns == "model" else ""))
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    curves = board["budget_curves"]
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, prefix, label in ((axes[0], "snr", "SNR budget (dB)"), (axes[1], "linf", "L∞ ε")):
            for attack, by_budget in sorted(curves.items()):
                pts = sorted((float(b[len(prefix):]), v) for b, v in by_budget.items()
                             if b.startswith(prefix))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=attack)
            ax.set_xlabel(label)
            ax.set_ylabel("mean ΔWER (no defense)")
            if prefix == "snr":
                ax.invert_xaxis()  # larger perturbations to the right
            else:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "budget_curves.png", dpi=110)
        plt.close(fig)
        written.append(out / "budget_curves.png")
    return written


def _html_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p><em>no results</em></p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{safe_text.html(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{safe_text.html(_show(r, c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(board: dict) -> str:
    s = board["scope"]
    parts = [f"<h1>ASR Arena leaderboard</h1><p class='scope'>{safe_text.html(scope_line(board))}. "
             f"Produced by the <b>{safe_text.html(str(s.get('profile')))}</b> profile.</p>"]
    for key, cols in TRACK_COLUMNS.items():
        parts.append(f"<h2>{safe_text.html(TRACK_TITLES[key])}</h2>" + _html_table(board[key], cols))
    parts.append("<h2>ΔWER per target model (no defense)</h2>"
                 "<p>How compression changes robustness: the same attack, crafted against each model.</p>"
                 + _html_table(_wide(board["model_robustness"], ("attack",))))
    parts.append("<h2>Transfer: audio crafted on the dense model, transcribed by each model</h2>"
                 + _html_table(_wide(board["transfer"], ("attack", "budget", "source_model"))))
    parts.append("<h2>Clean WER per model and defense</h2>" + _html_table(board["clean"]))
    if board.get("not_scored"):
        parts.append("<h2>Not scored</h2><ul>" + "".join(
            f"<li>{safe_text.html(p)}</li>" for p in board["not_scored"]) + "</ul>")
    for img, title in (("heatmap_attack_defense.png", "Attack × defense"),
                       ("heatmap_attack_model.png", "Attack × model"),
                       ("budget_curves.png", "ΔWER versus budget")):
        parts.append(f"<h2>{title}</h2><img src='{img}' alt='{title}'>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#eee}"
             "img{max-width:100%}.scope{color:#555}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ASR Arena leaderboard</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
