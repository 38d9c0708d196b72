"""The results page: `<output>/index.html`, written by `run_all.sh` after the notebooks.

One page holds what a run shows: the claims scorecard (ours, the paper's, the rule, the
verdict), Table 1 ours next to the paper's, and every figure the notebooks saved, each
with what the paper's figure shows beside it, grouped by notebook with a link to the
executed notebook. It reads only files in the output folder (`summary.json`,
`scorecard.json`, each notebook's `metrics.json` and PNGs) and links them relatively, so
the folder can be moved or served as it is.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Optional

from .paths import write_text

# What each of the paper's figures shows, in a line, for the page's captions.
PAPER_FIGURES = {
    "1": "β-VAE samples differ from the mean by pixel-wise independent noise; SOS-VAE samples by spatially "
         "coherent changes.",
    "2": "β-VAE against SOS-VAE: μ, a sample y, y − μ, the per-pixel variance and the positive and negative "
         "covariance to a pixel. SOS-VAE's covariance follows the face; the negative part lies on hair and background.",
    "3": "100 samples of Dorta et al.'s model (sparse precision) against SOS-VAE's at 64×64 gray.",
    "4": "Spherical interpolation between four draws of ω_p: every cell is a plausible sample, the steps are smooth.",
    "5": "Each of the ten most principal components of P scaled from −5 to +5 for a fixed ω_p: the SVD makes "
         "each component's effect separable and semantically relevant.",
    "6": "Sequential editing: a stroke on the hair recolours the hair, one on the skin the skin.",
    "7": "The distribution-only model (no latent) against a 25-component PCA: little perceivable difference.",
    "8": "App. A: without εI and the entropy bound the variance explodes (11.76 against 0.0322): over-bright, "
         "high-contrast samples.",
    "9": "App. B: every principal component scaled from −5 to +5 on CelebA (rank 25).",
    "10": "App. B: every principal component scaled from −5 to +5 on UK Biobank brain slices (rank 25).",
    "11": "App. C: sequential interactive editing.",
    "12": "App. C: interactive editing with a one-pixel stroke.",
}
OTHER_FIGURES = {
    "appA": "App. A: the stabilised and unstabilised models side by side.",
    "training": "Training curves: NLL, KL and entropy against their targets, the multipliers, the variance and the "
                "decoded mean's validation MSE.",
    "table1": "Table 1: FID of decoded means and of samples, ours next to the paper's.",
    "scorecard": "The claims scorecard.",
}


def paper_caption(png_name: str) -> str:
    """What the paper shows for one of our PNGs (by its name: fig<N>…, appA…, training…); '' if none."""
    stem = Path(png_name).stem
    m = re.match(r"fig(\d+)", stem)
    if m and m.group(1) in PAPER_FIGURES:
        return f"Paper, Fig. {m.group(1)}: {PAPER_FIGURES[m.group(1)]}"
    for prefix, text in OTHER_FIGURES.items():
        if stem.startswith(prefix):
            return text
    return ""


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _scorecard_html(card: dict) -> str:
    from .scorecard import ours_text
    verdict = {True: '<span class="pass">pass</span>', False: '<span class="fail">fail</span>',
               None: '<span class="na">not measured</span>'}
    rows = [(str(r["claim"]), html.escape(r["title"]), html.escape(r["dataset"]), html.escape(ours_text(r)),
             html.escape(r["paper"]), html.escape(r["rule"]), verdict[r["pass"]]) for r in card["claims"]]
    return (f"<p>{card.get('passed', '?')} of {card.get('measured', '?')} measured claims pass.</p>"
            + _table(["#", "claim", "dataset", "ours", "paper", "rule", "verdict"], rows))


def _table1_html(rows) -> str:
    from .table1 import TABLE1_HEADER, table1_cells
    body = [tuple(html.escape(c) for c in cells) for cells in table1_cells(rows)]
    return (_table(TABLE1_HEADER, body)
            + "<p>The paper's values are at N = 50,000; FID at small N is biased upward, so compare only rows "
              "with the same N.</p>")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
.pass { color: #11752a; font-weight: bold; } .fail { color: #b3261e; font-weight: bold; } .na { color: #777; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
"""


def build_index(output) -> Path:
    """Write `<output>/index.html` from what the notebooks left in `output`; returns its path."""
    output = Path(output)
    summary = _read_json(output / "summary.json") or {}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>SOS-VAE reproduction: results</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>SOS-VAE reproduction: results</h1>"]
    facts = [("profile", summary.get("profile")), ("data root", summary.get("data_root") or "bundled default"),
             ("device", summary.get("device")), ("trained models", summary.get("runs_dir")),
             ("wall time", f"{summary['total_wall_time_s']:.0f} s" if "total_wall_time_s" in summary else None)]
    parts.append("<p>" + " · ".join(f"{k}: <code>{html.escape(str(v))}</code>" for k, v in facts if v) + "</p>")

    card = _read_json(output / "scorecard.json")
    parts.append("<h2>Claims scorecard</h2>")
    parts.append(_scorecard_html(card) if card and card.get("claims") else
                 "<p>No scorecard yet: notebook 11 has not run.</p>")

    table1 = (_read_json(output / "08_table1_fid" / "metrics.json") or {}).get("table1")
    parts.append("<h2>Table 1: FID</h2>")
    parts.append(_table1_html(table1) if table1 else "<p>No Table 1 yet: notebook 08 has not run.</p>")

    parts.append("<h2>Figures, by notebook</h2>")
    books = [b["notebook"] for b in summary.get("notebooks", [])] or sorted(p.name for p in output.glob("[0-9][0-9]_*.ipynb"))
    times = {b["notebook"]: b.get("wall_time_s") for b in summary.get("notebooks", [])}
    for book in books:
        stem = Path(book).stem
        link = f'<a href="{html.escape(book)}">{html.escape(book)}</a>' if (output / book).exists() else html.escape(book)
        took = f" · {times[book]:.0f} s" if times.get(book) is not None else ""
        parts.append(f'<h3 id="{html.escape(stem)}">{html.escape(stem)}</h3><p>executed notebook: {link}{took}</p>')
        for png in sorted((output / stem).glob("*.png")):
            src = html.escape(f"{stem}/{png.name}")
            caption = paper_caption(png.name)
            parts.append(f'<figure><img src="{src}" alt="{html.escape(png.stem)}">'
                         f"<figcaption><b>{html.escape(png.stem)}</b>"
                         + (f" — {html.escape(caption)}" if caption else "") + "</figcaption></figure>")
    parts.append("</body></html>")
    return write_text(output / "index.html", "\n".join(parts))
