"""The leaderboard site's stylesheet and script (written next to its pages: no CDN, no
network, so the site works from file:// and from any static server)."""
from __future__ import annotations

CSS = """\
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
       background: #fff; max-width: 1180px; margin: 0 auto; padding: 0 1.2em 3em; }
header { border-bottom: 2px solid #1f4e8c; margin-bottom: 1em; padding: .6em 0; }
header h1 { margin: .2em 0; font-size: 1.6em; }
nav a { margin-right: 1.1em; }
a { color: #1f4e8c; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ccd; padding-bottom: .2em; }
h3 { margin-top: 1.3em; }
.scope { background: #f3f6fa; border: 1px solid #d5dde8; padding: .6em .9em; border-radius: 4px; }
dl.scope { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1.2em; }
.scope dt { font-weight: 600; }
.scope dd { margin: 0; }
.banner { background: #fff4d6; border: 1px solid #e0b84f; padding: .6em .9em; border-radius: 4px;
          margin: .8em 0; }
.banner.published { background: #e8f4ea; border-color: #7fb68a; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #c9ced6; padding: 3px 9px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th { background: #e9edf3; white-space: nowrap; }
.wide { overflow-x: auto; max-width: 100%; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th::after { content: " \\2195"; color: #8a94a3; font-size: .8em; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B2"; color: #1f4e8c; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BC"; color: #1f4e8c; }
tbody tr:nth-child(even) { background: #f7f9fb; }
.ci { color: #555; font-size: .9em; }
.muted { color: #5c6470; }
.err { color: #8a1c1c; }
pre.err { white-space: pre-wrap; background: #fbf1f1; border: 1px solid #e6c3c3; padding: .5em;
          font-size: 13px; }
img.fig { max-width: 100%; border: 1px solid #e1e4e8; background: #fff; }
.rules li { margin-bottom: .4em; }
.utt { border: 1px solid #d5dde8; border-radius: 4px; padding: .5em .8em; margin: .8em 0; }
.utt audio { height: 32px; vertical-align: middle; }
.words ins { background: #d9f2dc; text-decoration: none; border-bottom: 2px solid #2e7d32; }
.words del { background: #fbdcdc; color: #7a1f1f; }
.words mark { background: #ffe9a8; }
.utt figure { margin: .4em 0 0; }
.spec { width: 100%; max-width: 720px; height: 110px; display: block; image-rendering: auto; }
figcaption { font-size: .85em; }
footer { margin-top: 3em; color: #5c6470; font-size: .9em; border-top: 1px solid #ddd; padding-top: .5em; }
"""

JS = """\
// Sortable tables: click a column header (or press Enter on it) to sort by that column;
// again to reverse. Cells sort by their data-v value when they have one (numbers shown
// with intervals or units), else by their text; empty cells go last.
(function () {
  "use strict";
  function key(cell) {
    var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
    if (raw === "" || raw === "\\u2014") { return null; }
    var num = Number(raw);
    return isNaN(num) ? raw.toLowerCase() : num;
  }
  function sortBy(table, th, col) {
    var descending = th.getAttribute("aria-sort") === "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
                                          : (typeof x === "number" ? -1 : 1);
      return descending ? -order : order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      if (!table.tHead || !table.tBodies.length) { return; }
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
        th.tabIndex = 0;
        th.title = "Sort by this column";
        th.addEventListener("click", function () { sortBy(table, th, col); });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter") { sortBy(table, th, col); }
        });
      });
    });
  });
})();
"""
