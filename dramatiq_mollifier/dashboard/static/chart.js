/* The overview's live chart: polls the overview JSON and draws two polylines as inline SVG.
   Hand-written, no dependencies, no build step. */
(function () {
  "use strict";
  var svg = document.getElementById("chart");
  if (!svg) return;
  var NS = "http://www.w3.org/2000/svg", W = 900, H = 240, PAD = 40;
  var fmt = function (n) { return n === null || n === undefined ? "-" : n.toLocaleString("en-US"); };
  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function draw(series) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = 1, t0 = Infinity, t1 = -Infinity;
    series.forEach(function (s) {
      max = Math.max(max, s.buffer, s.broker || 0);
      t0 = Math.min(t0, s.at_ms); t1 = Math.max(t1, s.at_ms);
    });
    var span = Math.max(1, t1 - t0);
    var x = function (t) { return PAD + (W - 2 * PAD) * (series.length > 1 ? (t - t0) / span : 1); };
    var y = function (v) { return H - PAD + -(H - 2 * PAD) * v / max; };
    svg.appendChild(el("line", {x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: "#9aa3b2"}));
    svg.appendChild(el("line", {x1: PAD, y1: PAD, x2: PAD, y2: H - PAD, stroke: "#9aa3b2"}));
    svg.appendChild(el("text", {x: 4, y: PAD + 4, "font-size": 11, fill: "#5b6578"}, fmt(max)));
    svg.appendChild(el("text", {x: 4, y: H - PAD + 4, "font-size": 11, fill: "#5b6578"}, "0"));
    svg.appendChild(el("text", {x: PAD, y: H - 12, "font-size": 11, fill: "#5b6578"},
      series.length ? Math.round(span / 1000) + " s ago" : "no samples yet"));
    svg.appendChild(el("text", {x: W - PAD - 20, y: H - 12, "font-size": 11, fill: "#5b6578"}, "now"));
    [["buffer", "#2563eb"], ["broker", "#d97706"]].forEach(function (line) {
      var pts = series.filter(function (s) { return s[line[0]] !== null; })
        .map(function (s) { return x(s.at_ms).toFixed(1) + "," + y(s[line[0]]).toFixed(1); });
      if (pts.length) svg.appendChild(el("polyline", {points: pts.join(" "), fill: "none", stroke: line[1], "stroke-width": 2, "class": "series-" + line[0]}));
    });
  }
  function set(id, text) { var node = document.getElementById(id); if (node) node.textContent = text; }
  function poll() {
    fetch(svg.getAttribute("data-src"), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) return;
        draw(d.series);
        set("depth", fmt(d.depth)); set("orgs", fmt(d.orgs)); set("tripped-count", d.tripped.length);
        set("dead-letters", fmt(d.dead_letters)); set("paused", d.paused); set("broker-depth", fmt(d.broker_depth));
        set("outstanding", fmt(d.outstanding) + " / " + fmt(d.max_outstanding));
      })
      .catch(function () {})
      .then(function () { setTimeout(poll, Number(svg.getAttribute("data-interval")) || 2000); });
  }
  poll();
})();
