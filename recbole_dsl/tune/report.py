"""What a search leaves behind: the sorted table, trials.csv, best_config.yaml and the plot."""
from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

TEMPERATURE_KEYS = ("loss_tau", "loss_tau_pos")


def _fmt(v):
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def format_table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table (the sorted summary printed at the end)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(out)


def sort_rows(rows: List[Dict[str, Any]], score_key: str, bigger: bool) -> List[Dict[str, Any]]:
    def key(r):
        v = r.get(score_key)
        ok = isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
        return (0, -v if bigger else v) if ok else (1, 0)

    return sorted(rows, key=key)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_float(dumper, value):
    # Write floats so RecBole's YAML loader reads them back as floats (1.0e-05, not 1e-05).
    if math.isnan(value):
        return dumper.represent_scalar("tag:yaml.org,2002:float", ".nan")
    if math.isinf(value):
        return dumper.represent_scalar("tag:yaml.org,2002:float", ".inf" if value > 0 else "-.inf")
    text = repr(float(value))
    if "e" in text or "E" in text:
        mant, exp = text.lower().split("e")
        if "." not in mant:
            mant += ".0"
        text = f"{mant}e{exp}"
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_Dumper.add_representer(float, _represent_float)


def best_config_yaml(config: Mapping[str, Any], header: Sequence[str]) -> str:
    body = yaml.dump(dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return "".join(f"# {h}\n" for h in header) + body


# ----------------------------------------------------------------------------------------------
# Plot: validation metric against the temperature, one series per loss (or per categorical
# combination) when several are searched. A self-contained SVG, no plotting library needed.

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def plot_x_key(searched: Sequence[str], rows: List[Dict[str, Any]]) -> Optional[str]:
    numeric = [k for k in searched
               if any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)]
    for k in TEMPERATURE_KEYS:
        if k in numeric:
            return k
    return numeric[0] if numeric else None


def series_keys(searched: Sequence[str], rows: List[Dict[str, Any]], x_key: str) -> List[str]:
    cat = [k for k in searched if k != x_key
           and all(isinstance(r.get(k), (str, bool)) or r.get(k) is None for r in rows)]
    if "rec_loss" in cat:
        cat.remove("rec_loss")
        cat.insert(0, "rec_loss")
    combos = {tuple(r.get(k) for k in cat) for r in rows}
    if len(combos) > len(PALETTE) and "rec_loss" in cat:
        return ["rec_loss"]
    return cat if len(combos) <= len(PALETTE) else []


def svg_plot(rows: List[Dict[str, Any]], x_key: str, y_key: str, y_label: str, series: Sequence[str],
             title: str, width: int = 640, height: int = 400) -> str:
    pts = [r for r in rows if isinstance(r.get(x_key), (int, float)) and isinstance(r.get(y_key), (int, float))
           and math.isfinite(r[y_key]) and math.isfinite(r[x_key])]
    xs = [float(r[x_key]) for r in pts]
    ys = [float(r[y_key]) for r in pts]
    log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 10
    ml, mr, mt, mb = 70, 170, 40, 55
    pw, ph = width - ml - mr, height - mt - mb

    def tx(v):
        return math.log10(v) if log_x else v

    if xs:
        x0, x1 = min(tx(v) for v in xs), max(tx(v) for v in xs)
        y0, y1 = min(ys), max(ys)
    else:
        x0 = x1 = y0 = y1 = 0.0
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    xpad = (x1 - x0) * 0.05
    x0, x1 = x0 - xpad, x1 + xpad
    pad = (y1 - y0) * 0.08 or max(abs(y1) * 0.05, 1e-3)
    y0, y1 = y0 - pad, y1 + pad

    def px(v):
        return ml + (tx(v) - x0) / (x1 - x0) * pw

    def py(v):
        return mt + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{ml + pw / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    # axes ticks
    if log_x or len(set(xs)) <= 6:
        ticks = sorted(set(xs))
    else:
        a, b = min(xs), max(xs)
        ticks = [a + i * (b - a) / 4 for i in range(5)]
    for t in ticks:
        X = px(t)
        out.append(f'<line x1="{X:.1f}" y1="{mt + ph}" x2="{X:.1f}" y2="{mt + ph + 5}" stroke="#444"/>')
        out.append(f'<text x="{X:.1f}" y="{mt + ph + 18}" text-anchor="middle">{_fmt(float(t))}</text>')
    for i in range(5):
        v = y0 + i * (y1 - y0) / 4
        Y = py(v)
        out.append(f'<line x1="{ml - 5}" y1="{Y:.1f}" x2="{ml}" y2="{Y:.1f}" stroke="#444"/>')
        out.append(f'<line x1="{ml}" y1="{Y:.1f}" x2="{ml + pw}" y2="{Y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 8}" y="{Y + 4:.1f}" text-anchor="end">{v:.4f}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 12}" text-anchor="middle">'
               f'{html.escape(x_key)}{" (log scale)" if log_x else ""}</text>')
    out.append(f'<text x="18" y="{mt + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {mt + ph / 2})">{html.escape(y_label)}</text>')
    groups = defaultdict(list)
    for r in pts:
        groups[tuple(r.get(k) for k in series)].append(r)
    for i, (label, members) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        color = PALETTE[i % len(PALETTE)]
        best_at = {}
        for r in members:
            x, y = float(r[x_key]), float(r[y_key])
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}" fill-opacity="0.45"/>')
            if x not in best_at or y > best_at[x]:
                best_at[x] = y
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(best_at.items()))
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in best_at.items():
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}"/>')
        name = ", ".join(f"{v}" for v in label if v is not None) or "all trials"
        ly = mt + 14 + i * 18
        out.append(f'<line x1="{ml + pw + 14}" y1="{ly - 4}" x2="{ml + pw + 34}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{ml + pw + 40}" y="{ly}">{html.escape(name)}</text>')
    if len(groups) and series:
        out.append(f'<text x="{ml + pw + 14}" y="{mt}" fill="#666">{html.escape(", ".join(series))}</text>')
    out.append(f'<text x="{ml + pw + 14}" y="{mt + ph}" fill="#666">line: best per value</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
