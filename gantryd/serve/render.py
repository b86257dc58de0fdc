"""The web page's HTML: the project list, and a project's components with every host and
the history table. Pure functions over the documents of state.py (plus history rows);
every value from etcd is escaped here, in one place, since project data is untrusted. The
page script (page/page.js) swaps in `project_body` as the server renders it."""
from __future__ import annotations

import functools
import html
from importlib import resources
from string import Template
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from ..commands.listing import short

# Status -> colour class (always shown with its text). Unknown statuses are "busy".
TONES = {"ready": "ok", "failed": "bad", "halted": "bad", "unhealthy": "bad",
         "stopped": "idle", "killed": "idle", "frozen": "idle", "-": "idle",
         "canary": "warn", "split": "warn"}
NOT_CURRENT = ' <span class="note">(not the desired revision)</span>'


def esc(value: Any) -> str:
    """Text as HTML (None and "" as `-`), quotes included: safe in attributes too."""
    return html.escape("-" if value is None or value == "" else str(value), quote=True)


def project_href(project: str) -> str:
    return "/projects/" + quote(project, safe="")


@functools.cache
def _template() -> Template:
    text = resources.files("gantryd.serve").joinpath("page/page.html").read_text("utf-8")
    return Template(text)


def document(title: str, heading: str, content: str, as_of: str, crumbs: str = "",
             live: str | None = None) -> str:
    """A whole page around `content` (HTML); `live`: the URL page.js polls."""
    return _template().substitute(
        title=esc(title), heading=heading, content=content, crumbs=crumbs,
        as_of=f"As of {esc(as_of)}.",
        live=f' data-live="{esc(live)}"' if live else "")


def tone(status: Any) -> str:
    """The colour class of a status: ok, bad, busy, warn or idle."""
    text = "-" if status is None or status == "" else str(status)
    return TONES.get(text.split(" ", 1)[0], "busy")


def badge(status: Any) -> str:
    return f'<span class="badge tone-{tone(status)}">{esc(status)}</span>'


def table(caption: str, headers: Sequence[str], rows: Iterable[str], klass: str,
          empty: str) -> str:
    """A table with column headers; `rows` are rendered `<tr>`s."""
    body = "\n".join(rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    return (f'<table class="{klass}">\n<caption>{esc(caption)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")


# -- the project list ------------------------------------------------------------------------

def index_body(projects: Sequence[str]) -> str:
    rows = (f'<tr><th scope="row"><a href="{esc(project_href(p))}">{esc(p)}</a></th>'
            f'<td><a href="/v1/projects/{esc(quote(p, safe=""))}">JSON</a></td></tr>'
            for p in projects)
    return table("Projects with a stored config", ["Project", "API"], rows, "projects",
                 "No project has a stored config yet (gantryd setconfig PROJECT FILE).")


# -- one project -----------------------------------------------------------------------------

def project_body(view: Mapping[str, Any]) -> str:
    """Every component of `view` (state.project_state plus `history` rows per component)."""
    parts = [component_section(c) for c in view.get("components") or ()]
    return "\n".join(parts) or '<p class="empty">The config holds no component.</p>'


def component_section(comp: Mapping[str, Any]) -> str:
    name = esc(comp.get("name"))
    machines = comp.get("machines") or ()
    return "\n".join([
        f'<section class="component" id="component-{name}" data-component="{name}" '
        f'aria-labelledby="heading-{name}">',
        f'<h2 id="heading-{name}">{name}</h2>',
        summary(comp),
        table(f"Hosts of {comp.get('name')}", ["Machine", "Version", "Status", "Since", "Error"],
              (host_row(m, bool(comp.get("desired"))) for m in machines), "hosts",
              "No live host reports this component."),
        history_table(comp),
        "</section>"])


def summary(comp: Mapping[str, Any]) -> str:
    desired = comp.get("desired") or {}
    revision = desired.get("revision")
    record = (f"r{esc(revision)}: {esc(comp.get('cause'))} by {esc(desired.get('actor'))}, "
              f"{esc(desired.get('updatedAt'))}" if revision else "-")
    items = [("Desired version", f'<span class="mono" data-field="version">'
                                 f'{esc(comp.get("version"))}</span>'),
             ("Desired status", badge(comp.get("status"))),
             ("Revision", record),
             ("Progress", progress_text(comp)),
             ("Rollout slots", slots_text(comp.get("slots") or ()))]
    return '<dl class="summary">' + "".join(
        f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def progress_text(comp: Mapping[str, Any]) -> str:
    p = comp.get("progress") or {}
    machines = comp.get("machines") or ()
    if not comp.get("desired"):
        return "nothing deployed yet (gantryd update)"
    on = sum(1 for m in machines if m.get("current"))
    parts = [f"{on} of {len(machines)} hosts on the desired revision"
             + (" (done)" if p.get("done") else "")]
    failed = p.get("failed")
    if failed:
        parts.append(f'<span class="error">failed on {esc(failed.get("machine"))}: '
                     f'{esc(failed.get("error"))}</span>')
    for key, what in (("pending", "pending"), ("canaries", "canary hosts"),
                      ("frozen", "frozen")):
        if p.get(key):
            parts.append(f"{what}: {esc(', '.join(map(str, p[key])))}")
    return "; ".join(parts)


def slots_text(slots: Sequence[Mapping[str, Any]]) -> str:
    if not slots:
        return "none held"
    return ", ".join(f"{esc(s.get('machine'))} ({esc(s.get('pool'))} slot {esc(s.get('slot'))})"
                     for s in slots)


def host_row(m: Mapping[str, Any], has_desired: bool = True) -> str:
    """One host: data attributes carry machine, version and status for scripts and tests."""
    status = str(m.get("status") or "-")
    if m.get("traffic"):
        status += f" ({', '.join(map(str, m['traffic']))})"
    current = bool(m.get("current"))
    return (f'<tr class="{"current" if current else "behind"}" '
            f'data-machine="{esc(m.get("machine"))}" data-version="{esc(m.get("version"))}" '
            f'data-status="{esc(m.get("status"))}" data-current="{str(current).lower()}">'
            f'<th scope="row">{esc(m.get("machine"))}</th>'
            f'<td class="version mono" title="{esc(m.get("image"))}">{esc(m.get("version"))}'
            f'{NOT_CURRENT if has_desired and not current else ""}</td>'
            f"<td>{badge(status)}</td>"
            f"<td>{since(m.get('since'))}</td>"
            # Hosts also report notes there (waiting for a rollout slot): red for failures.
            f'<td class="{"error" if tone(m.get("status")) == "bad" else "note"}">'
            f'{esc(m.get("error")) if m.get("error") else ""}</td></tr>')


def since(at: Any) -> str:
    return f'<time datetime="{esc(at)}">{esc(at)}</time>' if at else "-"


def history_table(comp: Mapping[str, Any]) -> str:
    rows = (f'<tr data-revision="{esc(r.get("revision"))}">'
            f'<th scope="row">r{esc(r.get("revision"))}</th><td>{esc(r.get("at"))}</td>'
            f'<td>{esc(r.get("actor"))}</td><td>{esc(r.get("cause"))}</td>'
            f'<td class="mono" title="{esc(r.get("image"))}">{esc(short(r.get("image")))}</td>'
            f'<td>{esc(r.get("outcome"))}{" (stable)" if r.get("stable") else ""}</td></tr>'
            for r in comp.get("history") or ())
    return ("<h3>History</h3>\n" + table(
        f"Last revisions of {comp.get('name')}, newest first",
        ["Revision", "Time", "Actor", "Cause", "Image", "Outcome"], rows, "history",
        "No revision kept yet."))
