/* The local hub's pages: charts (uPlot), live updates, sorting, filtering, comparing. */
(function () {
  "use strict";
  var COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0598bc", "#bf3989",
                "#57606a"];
  var GROUPS = ["Losses", "Metrics", "Learning rates", "Other"];
  var BEST = "metrics/mAP50-95(B)", MARK = "#bf8700";

  function group(name) {
    if (name.indexOf("loss") >= 0) return "Losses";
    if (name.indexOf("metrics/") === 0) return "Metrics";
    if (name.indexOf("lr/") === 0) return "Learning rates";
    return "Other";
  }
  function lowerBetter(name) { return name.toLowerCase().indexOf("loss") >= 0; }
  function names(metrics) {
    var seen = {}, out = [];
    metrics.forEach(function (e) {
      Object.keys(e.metrics).forEach(function (k) { if (!seen[k]) { seen[k] = 1; out.push(k); } });
    });
    return out;
  }
  function primary(list) {
    if (list.indexOf(BEST) >= 0) return BEST;
    for (var i = 0; i < list.length; i++) if (list[i].indexOf("metrics/") === 0) return list[i];
    return list[0];
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function column(metrics, name) {
    return metrics.map(function (e) { return num(e.metrics[name]); });
  }
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, obj);
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function tagsHtml(tags) {
    return (tags || []).map(function (t) { return "<span class=\"tag\">" + esc(t) + "</span>"; }).join("");
  }
  // A training argument as the tables show it: text as it is (a Platform trainer sends
  // every argument as text), any other value as JSON. Runs compare by what is shown.
  function argText(v) { return typeof v === "string" ? v : JSON.stringify(v); }
  function fmt(v) { return v == null ? "-" : String(+v.toPrecision(5)); }
  function fmtValue(u, v) { return fmt(v); }
  // Seconds as people read a run's time: 45 s, 12.5 min, 3.2 h.
  function fmtSeconds(t) {
    if (t == null) return "";
    var a = Math.abs(t);
    if (a < 120) return +t.toPrecision(3) + " s";
    if (a < 7200) return +(t / 60).toPrecision(3) + " min";
    return +(t / 3600).toPrecision(3) + " h";
  }
  function sizeOf(n) {
    var units = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < 3) { n /= 1024; i++; }
    return i ? n.toFixed(1) + " " + units[i] : n + " B";
  }
  function chartWidth(el, max) {
    return Math.max(200, Math.min(max || 720, el.clientWidth - 14));
  }
  var INTS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000];

  // TensorBoard's smoothing: an exponential moving average, debiased so that the first
  // points are not pulled towards zero. Gaps stay gaps.
  function ema(values, weight) {
    if (!weight) return values.slice();
    var last = 0, n = 0;
    return values.map(function (v) {
      if (v == null) return null;
      last = last * weight + (1 - weight) * v; n++;
      return last / (1 - Math.pow(weight, n));
    });
  }
  // The best value of a series and the x it is at (earliest on a tie), or null.
  function bestOf(xs, ys, lower) {
    var at = null;
    ys.forEach(function (v, i) {
      if (v != null && (at == null || (lower ? v < ys[at] : v > ys[at]))) at = i;
    });
    return at == null ? null : { x: xs[at], value: ys[at], i: at };
  }
  function lastOf(xs, ys) {
    for (var i = ys.length - 1; i >= 0; i--) {
      if (ys[i] != null) return { x: xs[i], value: ys[i], i: i };
    }
    return null;
  }

  // A range that shows a single point or a flat line in the middle, not on an edge.
  function padRange(lo, hi, log) {
    if (lo == null || hi == null) return log ? [1, 10] : [0, 1];
    if (lo === hi) {
      if (log) return [lo / 2, hi * 2];
      var pad = Math.abs(lo) * 0.1 || 1;
      return [lo - pad, hi + pad];
    }
    if (log) return [lo, hi];
    return uPlot.rangeNum(lo, hi, 0.1, true);
  }

  // Options: {title, labels, xs, ys (one array per series), max, settings, best: {x} or null,
  //           faint: indexes of series drawn faint (the raw line under a smoothed one)}
  function makeChart(el, o) {
    var s = o.settings || {}, log = !!s.log, zero = !!s.zero && !log;
    var ys = o.ys.map(function (col) {
      return log ? col.map(function (v) { return v != null && v > 0 ? v : null; }) : col;
    });
    var faint = o.faint || {};
    var time = o.x === "time";
    var series = [time ? { label: "time", value: function (u, v) { return fmtSeconds(v); } }
                       : { label: "epoch" }].concat(o.labels.map(function (label, i) {
      var color = COLORS[(o.colors ? o.colors[i] : i) % COLORS.length];
      return { label: label, stroke: faint[i] ? color + "55" : color, width: faint[i] ? 1 : 2,
               spanGaps: true, value: fmtValue,
               points: { show: !faint[i] && o.xs.length < 60, size: 4 } };
    }));
    var opts = {
      title: o.title, width: chartWidth(el, o.max), height: o.max ? 320 : 220, series: series,
      scales: {
        x: { time: false },
        y: { auto: true, distr: log ? 3 : 1, range: function (u, lo, hi) {
          if (zero && lo != null) { lo = Math.min(0, lo); hi = Math.max(0, hi); }
          return padRange(lo, hi, log);
        } }
      },
      axes: [time ? { label: "time since the start", grid: { stroke: "#eaeef2" },
                      values: function (u, ticks) { return ticks.map(fmtSeconds); } }
                  : { label: "epoch", grid: { stroke: "#eaeef2" }, incrs: INTS,
                      values: function (u, ticks) { return ticks.map(String); } },
             { size: 60, grid: { stroke: "#eaeef2" },
               values: function (u, ticks) {
                 return ticks.map(function (t) { return t == null ? "" : +t.toPrecision(4); });
               } }],
      legend: { live: true },
      // The charts of a page share their pointer and their zoom: one epoch, every metric.
      cursor: { drag: { x: true, y: false }, sync: { key: o.sync || "page" } },
      hooks: { init: [function (u) { u._best = o.best || null; }],
               setCursor: [showLast], draw: [drawBest], setScale: [shareZoom] }
    };
    var u = new uPlot(opts, [o.xs].concat(ys), el);
    centre(u);
    var canvas = u.root.querySelector("canvas");
    if (canvas) { canvas.setAttribute("role", "img"); canvas.setAttribute("aria-label", o.title); }
    return u;
  }
  // A single epoch in the middle of the x axis, not on its edge (uPlot puts it at 0).
  function centre(u) {
    var xs = u.data[0];
    if (xs.length === 1) u.setScale("x", { min: xs[0] - 1, max: xs[0] + 1 });
  }
  var zoomed = [], sharing = false;
  // A zoom (or its reset) on one chart is applied to the others of the same page.
  function shareZoom(u, key) {
    if (key !== "x" || sharing || !u._sig) return;
    sharing = true;
    try {
      zoomed.forEach(function (other) {
        if (other !== u && other.root.isConnected && other.data[0].length) {
          other.setScale("x", { min: u.scales.x.min, max: u.scales.x.max });
        }
      });
    } finally { sharing = false; }
  }
  // A dashed vertical line at the best epoch.
  function drawBest(u) {
    if (!u._best || u._best.x == null) return;
    var x = Math.round(u.valToPos(u._best.x, "x", true)), ctx = u.ctx;
    if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
    ctx.save();
    ctx.strokeStyle = MARK; ctx.lineWidth = 2; ctx.setLineDash([5, 4]);
    ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke(); ctx.restore();
  }
  // With the pointer away, the legend shows the latest epoch's values instead of dashes.
  function showLast(u) {
    if (u.cursor.idx == null && u.data[0].length && !u._showingLast) {
      u._showingLast = true;
      u.setLegend({ idx: u.data[0].length - 1 });
      u._showingLast = false;
    }
  }

  // The page's chart settings, kept in the URL so that a link shows the same view.
  function readSettings() {
    var q = new URLSearchParams(location.search);
    var smooth = parseFloat(q.get("smooth"));
    return { smooth: isFinite(smooth) ? Math.min(0.99, Math.max(0, smooth)) : 0,
             log: q.get("log") === "1", zero: q.get("zero") === "1",
             x: q.get("x") === "time" ? "time" : "epoch" };
  }
  function writeSettings(s) {
    var q = new URLSearchParams(location.search);
    if (s.smooth) q.set("smooth", String(s.smooth)); else q.delete("smooth");
    if (s.log) q.set("log", "1"); else q.delete("log");
    if (s.zero) q.set("zero", "1"); else q.delete("zero");
    if (s.x === "time") q.set("x", "time"); else q.delete("x");
    var text = q.toString();
    history.replaceState(null, "", location.pathname + (text ? "?" + text : ""));
  }

  // Charts of a run: a metric each, except train/x and val/x, which share one.
  function chartPlan(list) {
    var has = {}, out = [];
    list.forEach(function (n) { has[n] = 1; });
    list.forEach(function (n) {
      if (n.indexOf("val/") === 0 && has["train/" + n.slice(4)]) return;
      if (n.indexOf("train/") === 0 && has["val/" + n.slice(6)]) {
        var rest = n.slice(6);
        out.push({ key: n, title: rest + " (train and val)", metrics: [n, "val/" + rest] });
      } else {
        out.push({ key: n, title: n, metrics: [n] });
      }
    });
    return out;
  }

  function offline(down) {
    var el = document.getElementById("offline");
    if (el) el.hidden = !down;
    document.body.dataset.offline = down ? "1" : "0";
  }

  // ---- a run's page --------------------------------------------------------------------
  function modelPage(tag) {
    var data = JSON.parse(tag.textContent), charts = {}, settings = readSettings();
    var root = document.getElementById("charts");
    var smooth = document.getElementById("smooth"), smoothOut = document.getElementById("smooth-value");
    var logBox = document.getElementById("log"), zeroBox = document.getElementById("zero");

    function section(title) {
      var id = "group-" + title.replace(/\W+/g, "-").toLowerCase();
      var sec = document.getElementById(id);
      if (!sec) {
        sec = document.createElement("section");
        sec.id = id;
        sec.innerHTML = "<h2>" + esc(title) + "</h2><div class=\"grid\"></div>";
        var after = null;
        GROUPS.slice(GROUPS.indexOf(title) + 1).forEach(function (g) {
          after = after || document.getElementById("group-" + g.replace(/\W+/g, "-").toLowerCase());
        });
        root.insertBefore(sec, after);
      }
      return sec.querySelector(".grid");
    }
    // The epochs a chart shows and its x values: epochs, or seconds since the start
    // (epochs whose arrival the hub did not note are left out of that one).
    function axis(d) {
      var rows = d.metrics, xs;
      if (settings.x === "time") {
        var at = d.since_start || [];
        rows = rows.filter(function (e, i) { return at[i] != null; });
        xs = at.filter(function (t) { return t != null; });
      } else {
        xs = rows.map(function (e) { return e.epoch; });
      }
      return { rows: rows, xs: xs, epochs: rows.map(function (e) { return e.epoch; }) };
    }
    function drawChart(plan, d, box) {
      var ax = axis(d), rows = ax.rows, xs = ax.xs;
      var labels = [], ys = [], faint = {}, colors = [];
      plan.metrics.forEach(function (name, k) {
        var raw = column(rows, name);
        var label = plan.metrics.length > 1 ? name.split("/")[0] : name;
        if (settings.smooth) {
          faint[labels.length] = true; labels.push(label + " (raw)"); ys.push(raw); colors.push(k);
        }
        labels.push(label); ys.push(ema(raw, settings.smooth)); colors.push(k);
      });
      var name = plan.metrics[0], lower = lowerBetter(name);
      var best = name.indexOf("lr/") === 0 ? null : bestOf(xs, column(rows, name), lower);
      var sig = JSON.stringify([labels, settings]), u = charts[plan.key];
      if (u && u._sig === sig) {
        // The same chart with more epochs: new data, so a pointer on it keeps its place,
        // and a zoom stays where the reader put it.
        u._best = best;
        var old = u.data[0], sx = u.scales.x;
        var zoomedIn = old.length > 1 && sx.min != null &&
          (sx.min > old[0] || sx.max < old[old.length - 1]);
        u.setData([xs].concat(settings.log ? ys.map(function (col) {
          return col.map(function (v) { return v != null && v > 0 ? v : null; });
        }) : ys), !zoomedIn);
        if (zoomedIn) {
          sharing = true;  // every chart keeps its own zoom: no need to share it again
          try { u.setScale("x", { min: sx.min, max: sx.max }); } finally { sharing = false; }
        } else {
          centre(u);
        }
      } else {
        if (u) u.destroy();
        u = makeChart(box.querySelector(".plot"), {
          title: plan.title, labels: labels, xs: xs, ys: ys, faint: faint, colors: colors,
          settings: settings, best: best, x: settings.x
        });
        u._sig = sig; u._metric = name;
        charts[plan.key] = u;
        zoomed = Object.keys(charts).map(function (k) { return charts[k]; });
      }
      showLast(u);
      var cap = plan.metrics.map(function (m) {
        var col = column(rows, m), last = lastOf(xs, col);
        var b = m.indexOf("lr/") === 0 ? null : bestOf(xs, col, lowerBetter(m));
        return m + ": last " + (last ? fmt(last.value) + " (epoch " + ax.epochs[last.i] + ")" : "-") +
          (b ? ", best " + fmt(b.value) + " (epoch " + ax.epochs[b.i] + ", " +
           (lowerBetter(m) ? "lower" : "higher") + " is better)" : "");
      }).join("; ");
      box.querySelector("figcaption").textContent = cap;
    }
    function render(d) {
      data = d;
      var list = names(d.metrics);
      if (list.length) {
        var empty = root.querySelector("p"); if (empty) empty.remove();
      }
      chartPlan(list).forEach(function (plan) {
        var box = root.querySelector('.chart[data-metric="' + CSS.escape(plan.key) + '"]');
        if (!box) {
          box = document.createElement("figure");
          box.className = "chart"; box.dataset.metric = plan.key;
          box.innerHTML = "<div class=\"plot\"></div><figcaption></figcaption>";
          section(group(plan.key)).appendChild(box);
        }
        drawChart(plan, d, box);
      });
      document.querySelectorAll("[data-field]").forEach(function (el) {
        var v = get(d, el.dataset.field);
        el.textContent = v == null ? (el.tagName === "P" ? "" : "-") : v;
        if (el.classList.contains("badge")) el.className = "badge " + v;
      });
      var fill = document.querySelector("#progress-bar .fill");
      if (fill) fill.style.width = d.summary.percent + "%";
      var stale = document.getElementById("stale");
      if (stale) { stale.hidden = !d.summary.stale; stale.textContent = d.summary.stale || ""; }
      var body = document.getElementById("weights-body");
      if (body) {
        body.innerHTML = d.weights.map(function (w) {
          return "<tr><td><code>" + esc(w.file) + "</code></td><td>" + esc(w.epoch) + "</td><td>" +
            sizeOf(w.size) + "</td><td><code title=\"" + esc(w.sha256) + "\">" +
            esc(w.sha256.slice(0, 16)) + "…</code></td><td><a href=\"" + esc(w.href) +
            "\" download=\"" + esc(w.download) + "\">" + esc(w.download) + "</a></td></tr>";
        }).join("");
      }
      renderTable(d.metrics, list);
      var con = document.getElementById("console");
      if (con && d.console != null && con.textContent !== d.console) {
        // Follow the end of the output unless the reader scrolled up.
        var atEnd = con.scrollTop + con.clientHeight >= con.scrollHeight - 4;
        con.textContent = d.console;
        if (atEnd) con.scrollTop = con.scrollHeight;
      }
      document.body.dataset.epochs = String(d.metrics.length);
      document.body.dataset.state = d.summary.state;
    }
    function renderTable(metrics, list) {
      var table = document.getElementById("metrics-table");
      if (!table) return;
      var html = "<tr><th>epoch</th>" + list.map(function (n) {
        return "<th>" + esc(n) + "</th>";
      }).join("") + "</tr>" + metrics.map(function (e) {
        return "<tr><td>" + esc(e.epoch) + "</td>" + list.map(function (n) {
          var v = e.metrics[n];
          return "<td>" + (v == null ? "" : typeof v === "number" && !Number.isInteger(v) ?
            esc(+v.toPrecision(5)) : esc(v)) + "</td>";
        }).join("") + "</tr>";
      }).join("");
      table.innerHTML = html;
      document.getElementById("metrics-count").textContent = String(metrics.length);
    }
    // Name, tags and notes, changed with the hub's key (kept in this tab only).
    function editing() {
      var form = document.getElementById("edit-form");
      if (!form) return;
      var key = document.getElementById("edit-key"), said = document.getElementById("edit-status");
      key.value = sessionStorage.getItem("hubfsm-key") || "";
      var base = location.pathname.replace(/\/$/, "");
      function send(action, body) {
        sessionStorage.setItem("hubfsm-key", key.value);
        return fetch(base + "/" + action, {
          method: "POST", cache: "no-store",
          headers: { "Content-Type": "application/json", "x-api-key": key.value },
          body: JSON.stringify(body || {})
        }).then(function (r) {
          return r.text().then(function (t) { if (!r.ok) throw new Error(t || String(r.status)); return t; });
        });
      }
      function shown(record) {
        document.getElementById("run-name").textContent = record.name;
        document.title = record.name + " - local hub";
        document.getElementById("run-tags").innerHTML = tagsHtml(record.tags);
        var notes = document.getElementById("run-notes");
        notes.textContent = record.notes || ""; notes.hidden = !record.notes;
      }
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var tags = document.getElementById("edit-tags").value.split(",")
          .map(function (t) { return t.trim(); }).filter(Boolean);
        send("annotate", { name: document.getElementById("edit-name").value, tags: tags,
                           notes: document.getElementById("edit-notes").value })
          .then(function (t) { shown(JSON.parse(t)); said.textContent = "Saved."; })
          .catch(function (e) { said.textContent = "Not saved: " + e.message; });
      });
      document.getElementById("edit-delete").addEventListener("click", function () {
        if (!confirm("Delete this run, its metrics and its weights? This cannot be undone.")) return;
        send("delete").then(function () { location.href = "/"; })
          .catch(function (e) { said.textContent = "Not deleted: " + e.message; });
      });
    }
    function controls() {
      if (!smooth) return;
      smooth.value = String(settings.smooth); smoothOut.textContent = String(settings.smooth);
      logBox.checked = settings.log; zeroBox.checked = settings.zero;
      var xSel = document.getElementById("xaxis");
      xSel.value = settings.x;
      function changed() {
        settings = { smooth: parseFloat(smooth.value) || 0, log: logBox.checked,
                     zero: zeroBox.checked, x: xSel.value === "time" ? "time" : "epoch" };
        smoothOut.textContent = String(settings.smooth);
        writeSettings(settings);
        render(data);
      }
      smooth.addEventListener("input", changed);
      logBox.addEventListener("change", changed);
      zeroBox.addEventListener("change", changed);
      xSel.addEventListener("change", changed);
    }
    controls();
    editing();
    render(data);
    window.hubCharts = charts;  // for inspection (and the browser tests)
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (k) {
        var c = charts[k]; c.setSize({ width: chartWidth(c.root.parentNode), height: 220 });
      });
    });
    var url = location.pathname.replace(/\/$/, "") + "/data.json";
    function poll() {
      fetch(url, { cache: "no-store" }).then(function (r) {
        if (!r.ok) throw new Error(String(r.status));
        return r.json();
      }).then(function (d) {
        offline(false);
        render(d);
        document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
        if (d.summary.state !== "trained") setTimeout(poll, 2000);
      }).catch(function () { offline(true); setTimeout(poll, 2000); });
    }
    if (data.summary.state !== "trained") setTimeout(poll, 2000);
  }

  // ---- the list of runs ----------------------------------------------------------------
  function indexPage(tag) {
    var table = document.getElementById("runs");
    if (!table) {
      // No runs yet: the page reloads when the first one arrives.
      var wait = function () {
        fetch("/runs.json" + location.search, { cache: "no-store" }).then(function (r) { return r.json(); })
          .then(function (d) { offline(false); if (d.runs.length) location.reload(); else setTimeout(wait, 3000); })
          .catch(function () { offline(true); setTimeout(wait, 3000); });
      };
      setTimeout(wait, 3000);
      return;
    }
    var runsData = JSON.parse(tag.textContent).runs;
    var tbody = table.tBodies[0], sortKey = null, desc = false, overlays = [], cache = {};
    var filter = document.getElementById("filter"), status = document.getElementById("status-filter");
    var metricSel = document.getElementById("compare-metric");
    var listMetric = document.getElementById("list-metric"), listWhich = document.getElementById("list-which");

    function apply() {
      var text = filter.value.toLowerCase(), want = status.value;
      Array.prototype.forEach.call(tbody.rows, function (row) {
        var hit = (row.dataset.name + " " + row.dataset.tags + " " + row.dataset.id)
          .toLowerCase().indexOf(text) >= 0;
        row.hidden = !hit || (want && row.dataset.status !== want);
      });
    }
    function sortBy(key) {
      desc = sortKey === key ? !desc : key === "percent" || key === "best" || key === "created";
      sortKey = key;
      var rows = Array.prototype.slice.call(tbody.rows);
      rows.sort(function (a, b) {
        var x = a.dataset[key], y = b.dataset[key], nx = parseFloat(x), ny = parseFloat(y);
        var c = !isNaN(nx) && !isNaN(ny) ? nx - ny : (x || "").localeCompare(y || "");
        if (x === "" && y !== "") c = -1; if (y === "" && x !== "") c = 1;
        return desc ? -c : c;
      });
      rows.forEach(function (r) { tbody.appendChild(r); });
      table.querySelectorAll("th[data-sort]").forEach(function (th) {
        var on = th.dataset.sort === key;
        th.className = on ? (desc ? "desc" : "asc") : "";
        th.setAttribute("aria-sort", on ? (desc ? "descending" : "ascending") : "none");
      });
    }
    table.querySelectorAll("th[data-sort] button").forEach(function (button) {
      button.addEventListener("click", function () { sortBy(button.parentNode.dataset.sort); });
    });
    filter.addEventListener("input", apply);
    status.addEventListener("change", apply);

    // The best column: each run's primary metric, or one metric for all, best or last.
    function column_(run) {
      var stats = run.summary.stats || {}, name = listMetric.value, which = listWhich.value;
      if (!name) name = run.summary.best ? run.summary.best.name : null;
      var st = name ? stats[name] : null;
      if (!st) return { value: "", html: "-" };
      var epoch = which === "last" ? st.last_epoch : st.best_epoch;
      return { value: String(st[which]), html: esc(fmt(st[which])) + " (epoch " + esc(epoch) +
               ")<div class=\"hint\">" + esc(name.replace(/^metrics\//, "")) + "</div>" };
    }
    function columns() {
      var byId = {};
      runsData.forEach(function (run) { byId[run.record.id] = run; });
      Array.prototype.forEach.call(tbody.rows, function (row) {
        var run = byId[row.dataset.id]; if (!run) return;
        var c = column_(run);
        row.dataset.best = c.value;
        row.querySelector("td.best").innerHTML = c.html;
      });
      var name = listMetric.value;
      document.getElementById("best-head").textContent =
        listWhich.value + " " + (name ? name.replace(/^metrics\//, "") : "(primary metric)");
      if (sortKey === "best") { desc = !desc; sortBy("best"); }
    }
    listMetric.addEventListener("change", columns);
    listWhich.addEventListener("change", columns);

    function picked() {
      return Array.prototype.map.call(tbody.querySelectorAll(".pick:checked"), function (c) {
        return c.value;
      });
    }
    function load(id) {
      return fetch("/models/" + id + "/data.json", { cache: "no-store" })
        .then(function (r) { return r.json(); })
        .then(function (d) { cache[id] = d; return d; });
    }
    function label(d) { return (d.record.name || d.record.id) + " " + d.record.id.slice(0, 6); }
    function chosen() {
      return Array.prototype.filter.call(metricSel.options, function (o) { return o.selected; })
        .map(function (o) { return o.value; });
    }
    function compareTables(runs, metrics) {
      var keys = {};
      runs.forEach(function (d) { Object.keys(d.summary.params || {}).forEach(function (k) { keys[k] = 1; }); });
      var differ = Object.keys(keys).filter(function (k) {
        var seen = runs.map(function (d) { return argText((d.summary.params || {})[k]); });
        return seen.some(function (v) { return v !== seen[0]; });
      });
      var head = "<tr><th>run</th>" + runs.map(function (d) {
        return "<th>" + esc(label(d)) + "</th>";
      }).join("") + "</tr>";
      var params = differ.map(function (k) {
        return "<tr><th>" + esc(k) + "</th>" + runs.map(function (d) {
          var v = (d.summary.params || {})[k];
          return "<td>" + esc(v === undefined ? "-" : argText(v)) + "</td>";
        }).join("") + "</tr>";
      }).join("");
      var same = Object.keys(keys).length - differ.length;
      var values = metrics.map(function (m) {
        return "<tr><th>" + esc(m) + "</th>" + runs.map(function (d) {
          var st = (d.summary.stats || {})[m];
          return "<td>" + (st ? "best " + esc(fmt(st.best)) + " (epoch " + esc(st.best_epoch) +
            ")<br>last " + esc(fmt(st.last)) : "-") + "</td>";
        }).join("") + "</tr>";
      }).join("");
      return "<h3>Parameters that differ</h3><div class=\"scroll\"><table id=\"compare-params\">" +
        head + (params || "<tr><td colspan=\"" + (runs.length + 1) +
        "\">none</td></tr>") + "</table></div><p class=\"hint\">" + same +
        " identical parameters not shown</p><h3>Metrics</h3><div class=\"scroll\">" +
        "<table id=\"compare-values\">" + head + values + "</table></div>";
    }
    function draw() {
      var ids = picked(), hint = document.getElementById("compare-hint");
      var box = document.getElementById("compare-chart"), tables = document.getElementById("compare-tables");
      overlays.forEach(function (o) { o.destroy(); }); overlays = [];
      box.innerHTML = ""; tables.innerHTML = "";
      hint.hidden = ids.length > 0;
      document.getElementById("compare-pick").hidden = !ids.length;
      if (!ids.length) return;
      Promise.all(ids.map(load)).then(function (runs) {
        var all = {};
        runs.forEach(function (d) { names(d.metrics).forEach(function (n) { all[n] = 1; }); });
        var keep = chosen(), options = Object.keys(all);
        keep = keep.filter(function (n) { return options.indexOf(n) >= 0; });
        if (!keep.length && options.length) keep = [primary(options)];
        metricSel.innerHTML = options.map(function (n) {
          return "<option" + (keep.indexOf(n) >= 0 ? " selected" : "") + ">" + esc(n) + "</option>";
        }).join("");
        tables.innerHTML = compareTables(runs, keep);
        var epochs = {};
        runs.forEach(function (d) { d.metrics.forEach(function (e) { epochs[e.epoch] = 1; }); });
        var xs = Object.keys(epochs).map(Number).sort(function (a, b) { return a - b; });
        box.innerHTML = "";
        overlays.forEach(function (o) { o.destroy(); }); overlays = [];
        keep.forEach(function (name) {
          var fig = document.createElement("figure");
          fig.className = "chart"; fig.dataset.metric = name;
          fig.innerHTML = "<div class=\"plot\"></div><figcaption></figcaption>";
          box.appendChild(fig);
          var ys = runs.map(function (d) {
            var at = {}; d.metrics.forEach(function (e) { at[e.epoch] = e.metrics[name]; });
            return xs.map(function (x) { return num(at[x]); });
          });
          var u = makeChart(fig.querySelector(".plot"), {
            title: name, labels: runs.map(label), xs: xs, ys: ys, max: 1200 });
          showLast(u);
          overlays.push(u);
          fig.querySelector("figcaption").textContent = runs.map(function (d) {
            var st = (d.summary.stats || {})[name];
            return label(d) + ": " + (st ? "last " + fmt(st.last) + ", best " + fmt(st.best) +
              " (epoch " + st.best_epoch + ")" : "no values");
          }).join("; ");
        });
      });
    }
    tbody.addEventListener("change", function (e) {
      if (e.target.classList.contains("pick")) draw();
    });
    metricSel.addEventListener("change", draw);
    function rowHtml(run) {
      var r = run.record, s = run.summary, st = s.state || r.status;
      return "<tr data-id=\"" + esc(r.id) + "\" data-name=\"" + esc(r.name || "") +
        "\" data-tags=\"" + esc((r.tags || []).join(" ")) + "\" data-status=\"" + esc(st) + "\" data-percent=\"" + s.percent +
        "\" data-best=\"\" data-created=\"" + esc(r.created_at) + "\">" +
        "<td><input type=\"checkbox\" class=\"pick\" value=\"" + esc(r.id) +
        "\" aria-label=\"compare " + esc(r.name || r.id) + "\"></td>" +
        "<td><a href=\"/models/" + esc(r.id) + "\">" + esc(r.name || r.id) +
        "</a><div class=\"id\">" + esc(r.id) + "</div>" + tagsHtml(r.tags) + "</td>" +
        "<td><span class=\"badge " + esc(st) + "\">" + esc(st) + "</span></td>" +
        "<td><div class=\"bar\"><div class=\"fill\" style=\"width:" + s.percent +
        "%\"></div></div><div>" + esc(s.progress) + "</div></td>" +
        "<td class=\"best\"></td><td>" + esc(s.created) +
        "<div class=\"hint\">" + esc(s.activity) + "</div></td></tr>";
    }
    function refresh() {
      fetch("/runs.json" + location.search, { cache: "no-store" }).then(function (r) {
        if (!r.ok) throw new Error(String(r.status));
        return r.json();
      }).then(function (d) {
        offline(false);
        var ticked = picked();
        runsData = d.runs;
        tbody.innerHTML = d.runs.map(rowHtml).join("");
        tbody.querySelectorAll(".pick").forEach(function (c) {
          c.checked = ticked.indexOf(c.value) >= 0;
        });
        columns();
        if (sortKey) { desc = !desc; sortBy(sortKey); }
        apply();
        document.getElementById("count").textContent = d.runs.length + " runs";
        // A stalled run may come back, but not every three seconds.
        var live = d.runs.some(function (run) {
          return run.summary.state === "training" || run.summary.state === "new";
        });
        setTimeout(refresh, live ? 3000 : 15000);
      }).catch(function () { offline(true); setTimeout(refresh, 3000); });
    }
    setTimeout(refresh, 3000);
    window.hubCompare = function (ids) {
      tbody.querySelectorAll(".pick").forEach(function (c) { c.checked = ids.indexOf(c.value) >= 0; });
      draw();
    };
    window.hubCompareCharts = function () { return overlays; };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var model = document.getElementById("model-data");
    if (model) modelPage(model);
    var runs = document.getElementById("runs-data");
    if (runs) indexPage(runs);
  });
})();
