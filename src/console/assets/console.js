// learnvault console: the live cohort view (Server-Sent Events from
// /console/courses/{id}/live, the API's released messages). No third-party code.
"use strict";
(function () {
  var SVGNS = "http://www.w3.org/2000/svg";
  var REASONS = {
    small_cell: "fewer learners than the minimum cell size", extreme_share: "a 0% or 100% share of a small group",
    small_group: "a statistic of a group below the minimum size", derived_from_withheld: "derived from a withheld count",
    complementary: "would reveal another withheld cell", sticky: "withheld earlier in this live view"
  };
  var COLOURS = ["#1f5fa8", "#b3471d", "#2a7d3b", "#7a3fa0", "#8a6d00", "#0f6f75"];

  function td(cell) {
    var el = document.createElement("td");
    if (!cell || cell.suppressed) {
      var r = cell ? cell.suppressed : "unknown";
      el.className = "withheld";
      el.setAttribute("data-withheld", r);
      var ab = document.createElement("abbr");
      ab.title = REASONS[r] || "withheld by disclosure control";
      ab.textContent = "withheld";
      el.appendChild(ab);
      return el;
    }
    el.className = "num";
    var v = cell.value;
    if (cell.band && cell.band > 1 && typeof v === "number") el.textContent = v + "–" + (v + cell.band - 1);
    else el.textContent = typeof v === "number" ? String(Math.round(v * 100) / 100) : "—";
    return el;
  }
  function th(text) { var el = document.createElement("th"); el.scope = "row"; el.textContent = text; return el; }
  function val(cell) { return cell && !cell.suppressed && typeof cell.value === "number" ? cell.value : null; }

  function funnel(msg) {
    var body = document.querySelector("#funnel-table tbody");
    if (!body) return;
    var rows = (msg.cohorts || []).map(function (c) { return [c.cohort_id, c]; });
    rows.push(["All cohorts", msg.total]);
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.appendChild(th(r[0]));
      ["enrolled", "started", "completed", "assessed"].forEach(function (m) { tr.appendChild(td(r[1][m])); });
      body.appendChild(tr);
    });
  }

  function chart(svg, minutes, series) {
    var W = 720, H = 240, L = 48, B = 36, T = 12, pw = W - L - 8, ph = H - B - T;
    var max = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v > max) max = v; }); });
    if (max <= 0) max = 1; else { var mag = Math.pow(10, Math.floor(Math.log10(max))); max = Math.ceil(max / mag) * mag; }
    var n = Math.max(minutes.length, 2);
    function px(i) { return L + pw * i / (n - 1); }
    function py(v) { return T + ph - ph * v / max; }
    while (svg.lastChild) svg.removeChild(svg.lastChild);
    var title = document.createElementNS(SVGNS, "title");
    title.textContent = svg.getAttribute("aria-label");
    svg.appendChild(title);
    function add(tag, attrs, text) {
      var e = document.createElementNS(SVGNS, tag);
      Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    }
    for (var k = 0; k <= 4; k++) {
      var y = T + ph - ph * k / 4;
      add("line", { x1: L, x2: W, y1: y.toFixed(1), y2: y.toFixed(1), stroke: "#d0d0d0" });
      add("text", { x: L - 4, y: (y + 4).toFixed(1), "text-anchor": "end", "font-size": 11, fill: "#333" }, String(Math.round(max * k / 4 * 10) / 10));
    }
    var step = Math.max(Math.floor(minutes.length / 6), 1);
    minutes.forEach(function (m, i) {
      if (i % step === 0) add("text", { x: px(i).toFixed(1), y: H - B + 14, "text-anchor": px(i) > W - 24 ? "end" : "middle", "font-size": 11, fill: "#333" }, m);
    });
    add("text", { x: (L + W) / 2, y: H - 4, "text-anchor": "middle", "font-size": 12, fill: "#222" }, "minute (UTC)");
    series.forEach(function (s, k) {
      var d = "", pen = false;
      s.values.forEach(function (v, i) {
        if (v === null) { pen = false; return; }
        d += (pen ? "L" : "M") + px(i).toFixed(1) + "," + py(v).toFixed(1) + " ";
        pen = true;
      });
      var p = add("path", { d: d.trim(), fill: "none", stroke: COLOURS[k % COLOURS.length], "stroke-width": 2 });
      var t = document.createElementNS(SVGNS, "title");
      t.textContent = s.name;
      p.appendChild(t);
    });
  }

  function engagement(msg) {
    var rows = msg.rows || [];
    var minutes = rows.map(function (r) { return String(r.minute).slice(11, 16); });
    var cohorts = msg.cohorts || [];
    var series = [{ name: "All cohorts", values: rows.map(function (r) { return val(r.total.active_learners); }) }];
    cohorts.forEach(function (c, j) {
      series.push({ name: c, values: rows.map(function (r) { return val((r.cohorts[j] || {}).active_learners); }) });
    });
    var svg = document.getElementById("engagement-chart");
    if (svg) chart(svg, minutes, series);
    var body = document.querySelector("#engagement-table tbody");
    if (body) {
      body.textContent = "";
      rows.forEach(function (r, i) {
        var tr = document.createElement("tr");
        tr.appendChild(th(minutes[i]));
        tr.appendChild(td(r.total.active_learners));
        tr.appendChild(td(r.total.time_on_task_seconds));
        cohorts.forEach(function (c, j) { tr.appendChild(td((r.cohorts[j] || {}).active_learners)); });
        body.appendChild(tr);
      });
    }
  }

  function live(el) {
    var status = document.getElementById("live-status");
    var updates = 0;
    var src = new EventSource(el.getAttribute("data-src"));
    function mark(kind) {
      updates += 1;
      el.setAttribute("data-updates", String(updates));
      el.setAttribute("data-updated-at", String(Date.now()));
      el.setAttribute("data-last-" + kind, String(Date.now()));
      if (status) status.textContent = "Live: last update " + new Date().toLocaleTimeString() + " (" + kind + ")";
    }
    src.addEventListener("funnel", function (e) { var m = JSON.parse(e.data); funnel(m); el.setAttribute("data-funnel-total", JSON.stringify(m.total.enrolled)); mark("funnel"); });
    src.addEventListener("engagement", function (e) { engagement(JSON.parse(e.data)); mark("engagement"); });
    src.addEventListener("error", function (e) {
      if (status) status.textContent = e.data ? "Live view ended: " + e.data : "Live view interrupted; reconnecting";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var el = document.getElementById("live");
    if (el && window.EventSource) live(el);
  });
})();
