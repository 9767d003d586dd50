"""`verify --html FILE` / `--plot FILE.png`: the parity report as one self-contained page.

The chart (matplotlib, Agg, no display needed) shows per backend max|d|/max|ref| against node
depth on a log scale with the tolerance line, the first divergent node marked. The page embeds
it as a base64 PNG and inlines its CSS: nothing is fetched when it is viewed. Text from the
model (node and layer names come from user files) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from .errors import MissingFrameworkError

FLOOR = 1e-12  # exact matches (0) are drawn at this floor of the log axis


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingFrameworkError("--html/--plot need matplotlib: pip install 'senet-hub[report]'") from None
    matplotlib.use("Agg", force=True)  # headless: never a window, never a display server
    import matplotlib.pyplot as plt

    return plt


def chart_png(report: Any, dpi: int = 110) -> bytes:
    """The chart as PNG bytes."""
    plt = _pyplot()
    others = [b for b in report.backends if b != "numpy"] or ["numpy"]
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=dpi)
    try:
        for b in others:
            pts = [(i, r["results"][b].rel) for i, r in enumerate(report.rows) if b in r["results"]]
            if not pts:
                continue
            xs = [i for i, _ in pts]
            ys = [max(v, FLOOR) if v == v and v != float("inf") else 1e3 for _, v in pts]
            (line,) = ax.plot(xs, ys, lw=1, marker=".", ms=3, label=b)
            fd = report.first_divergent.get(b)
            if fd:
                i = next(i for i, r in enumerate(report.rows) if r["node"] == fd)
                y = max(report.rows[i]["results"][b].rel, FLOOR)
                ax.plot([i], [min(y, 1e3)], marker="X", ms=11, color=line.get_color(), mec="black")
                ax.annotate(f"first divergent ({b}): {fd}", (i, min(y, 1e3)), textcoords="offset points",
                            xytext=(6, 8), fontsize=8)  # fmt: skip
        ax.axhline(report.rtol, color="crimson", ls="--", lw=1, label=f"tolerance {report.rtol:g}")
        ax.set_yscale("log")
        ax.set_xlabel("node depth (graph order)")
        ax.set_ylabel("max|d| / max|ref|")
        ax.set_title(f"{report.model.arch}: per-node deviation from the float64 numpy reference")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def stage_of(node: str) -> str:
    """Stage of a node for the summary table: its first dotted name part (layer1, layer0, fc...)."""
    return node.split(".", 1)[0]


def stage_rows(report: Any) -> list[dict[str, Any]]:
    """Per stage and backend: node count, nodes over tolerance, worst relative deviation."""
    others = [b for b in report.backends if b != "numpy"] or ["numpy"]
    stages: dict[str, dict[str, Any]] = {}
    for r in report.rows:
        st = stages.setdefault(stage_of(r["node"]), {"stage": stage_of(r["node"]), "nodes": 0, "backends": {}})
        st["nodes"] += 1
        for b in others:
            v = r["results"].get(b)
            if v is None:
                continue
            cell = st["backends"].setdefault(b, {"worst": 0.0, "over": 0, "tapped": 0})
            cell["tapped"] += 1
            cell["worst"] = max(cell["worst"], v.rel)
            cell["over"] += 0 if v.ok else 1
    return list(stages.values())


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.bad{background:#fdd}.ok{color:#060}.fail{color:#b00}
img{max-width:100%;border:1px solid #ddd}code{background:#f5f5f5;padding:1px 4px}"""


def to_html(report: Any, png: bytes | None = None) -> str:
    e = html.escape
    png = chart_png(report) if png is None else png
    others = [b for b in report.backends if b != "numpy"] or ["numpy"]
    verdict = "HOLDS" if report.passed else "FAILED"
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>senet-hub verify: {e(report.model.arch)}</title><style>{_CSS}</style></head><body>",
        f"<h1>senet-hub verify: {e(report.model.arch)} &mdash; parity "
        f"<span class='{'ok' if report.passed else 'fail'}' id='verdict'>{verdict}</span></h1>",
        f"<p>Reference: numpy float64. Tolerance per node: max|d| &le; {report.rtol:g} &middot; max|ref|.</p>",
        f"<img id='chart' alt='per-node deviation chart' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
        "<h2>Backends</h2><table id='backends'><tr><th class='l'>backend</th><th class='l'>version</th>"
        "<th class='l'>first divergent node</th><th>top-1</th><th>top-5</th><th>seconds</th></tr>",
    ]
    for b in others:
        if b in report.errors:
            out.append(f"<tr><td class='l'>{e(b)}</td><td class='l' colspan='5'>ERROR: {e(report.errors[b])}</td></tr>")
            continue
        t = report.topk.get(b, {})
        fd = report.first_divergent.get(b)
        out.append(
            f"<tr><td class='l'>{e(b)}</td><td class='l'>{e(str(report.versions.get(b, '')))}</td>"
            f"<td class='l{' bad' if fd else ''}'>{e(fd or 'none')}</td><td>{t.get('top1', 0):.1%}</td>"
            f"<td>{t.get('top5', 0):.1%}</td><td>{report.timings.get(b, 0):.2f}</td></tr>"
        )
    out.append("</table><h2>Stages</h2><table id='stages'><tr><th class='l'>stage</th><th>nodes</th>")
    out += [f"<th>{e(b)} worst rel</th><th>{e(b)} over</th>" for b in others]
    out.append("</tr>")
    for st in stage_rows(report):
        cells = []
        for b in others:
            c = st["backends"].get(b)
            if c is None:
                cells.append("<td>-</td><td>-</td>")
            else:
                cls = " class='bad'" if c["over"] else ""
                cells.append(f"<td{cls}>{c['worst']:.2e}</td><td{cls}>{c['over']}</td>")
        out.append(f"<tr><td class='l'>{e(st['stage'])}</td><td>{st['nodes']}</td>{''.join(cells)}</tr>")
    out.append("</table><h2>Input</h2><table id='input'>")
    prov = dict(getattr(report, "provenance", {}) or {})
    files = prov.pop("files", None)
    info = {"shape": "x".join(map(str, report.input_shape)), "sha256": report.input_sha256, **prov}
    out += [f"<tr><th class='l'>{e(str(k))}</th><td class='l'>{e(str(v))}</td></tr>" for k, v in info.items()]
    out.append("</table>")
    if files:
        out.append(f"<details><summary>{len(files)} image files (sha256)</summary><table>")
        out += [
            f"<tr><td class='l'>{e(f['path'])}</td><td class='l'><code>{e(f['sha256'])}</code></td></tr>" for f in files
        ]
        out.append("</table></details>")
    out.append(f"<h2>Run</h2><p>Command: <code>{e(report.command)}</code></p><table id='versions'>")
    out += [f"<tr><th class='l'>{e(k)}</th><td class='l'>{e(str(v))}</td></tr>" for k, v in report.versions.items()]
    out.append("</table></body></html>")
    return "\n".join(out)
