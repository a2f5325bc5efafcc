/* The local hub's pages: charts (uPlot), live updates, sorting, filtering, comparing. */
(function () {
  "use strict";
  var COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0598bc", "#bf3989",
                "#57606a"];
  var GROUPS = ["Losses", "Metrics", "Learning rates", "Other"];

  function group(name) {
    if (name.indexOf("loss") >= 0) return "Losses";
    if (name.indexOf("metrics/") === 0) return "Metrics";
    if (name.indexOf("lr/") === 0) return "Learning rates";
    return "Other";
  }
  function names(metrics) {
    var seen = {}, out = [];
    metrics.forEach(function (e) {
      Object.keys(e.metrics).forEach(function (k) { if (!seen[k]) { seen[k] = 1; out.push(k); } });
    });
    return out;
  }
  function column(metrics, name) {
    return metrics.map(function (e) {
      var v = e.metrics[name];
      return typeof v === "number" && isFinite(v) ? v : null;
    });
  }
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, obj);
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmtValue(u, v) { return v == null ? "-" : +v.toPrecision(5); }
  function sizeOf(n) {
    var units = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < 3) { n /= 1024; i++; }
    return i ? n.toFixed(1) + " " + units[i] : n + " B";
  }
  function chartWidth(el, max) {
    return Math.max(280, Math.min(max || 720, el.clientWidth - 14));
  }
  var INTS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000];

  function makeChart(el, title, seriesLabels, data, max) {
    var series = [{ label: "epoch" }].concat(seriesLabels.map(function (label, i) {
      return { label: label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
               value: fmtValue, points: { show: data[0].length < 60, size: 4 } };
    }));
    return new uPlot({
      title: title, width: chartWidth(el, max), height: max ? 320 : 220, series: series,
      scales: { x: { time: false } },
      axes: [{ label: "epoch", grid: { stroke: "#eaeef2" }, incrs: INTS,
               values: function (u, ticks) { return ticks.map(String); } },
             { size: 60, grid: { stroke: "#eaeef2" },
               values: function (u, ticks) { return ticks.map(function (t) { return +t.toPrecision(4); }); } }],
      legend: { live: true }, cursor: { drag: { x: true, y: false } },
      hooks: { setCursor: [showLast] }
    }, data, el);
  }
  // With the pointer away, the legend shows the latest epoch's values instead of dashes.
  function showLast(u) {
    if (u.cursor.idx == null && u.data[0].length && !u._showingLast) {
      u._showingLast = true;
      u.setLegend({ idx: u.data[0].length - 1 });
      u._showingLast = false;
    }
  }

  // ---- a run's page --------------------------------------------------------------------
  function modelPage(tag) {
    var data = JSON.parse(tag.textContent), charts = {};
    var root = document.getElementById("charts");

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
    function render(d) {
      var epochs = d.metrics.map(function (e) { return e.epoch; });
      var list = names(d.metrics);
      if (list.length) {
        var empty = root.querySelector("p"); if (empty) empty.remove();
      }
      list.forEach(function (name) {
        var cols = [epochs, column(d.metrics, name)];
        if (charts[name]) { charts[name].setData(cols); showLast(charts[name]); return; }
        var box = document.createElement("div");
        box.className = "chart"; box.dataset.metric = name;
        section(group(name)).appendChild(box);
        charts[name] = makeChart(box, name, [name], cols);
        showLast(charts[name]);
      });
      document.querySelectorAll("[data-field]").forEach(function (el) {
        var v = get(d, el.dataset.field);
        el.textContent = v == null ? "-" : v;
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
            "\" download>download</a></td></tr>";
        }).join("");
      }
      var con = document.getElementById("console");
      if (con && d.console != null && con.textContent !== d.console) {
        // Follow the end of the output unless the reader scrolled up.
        var atEnd = con.scrollTop + con.clientHeight >= con.scrollHeight - 4;
        con.textContent = d.console;
        if (atEnd) con.scrollTop = con.scrollHeight;
      }
      document.body.dataset.epochs = String(epochs.length);
    }
    render(data);
    window.hubCharts = charts;  // for inspection (and the browser tests)
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (k) {
        var c = charts[k]; c.setSize({ width: chartWidth(c.root.parentNode), height: 220 });
      });
    });
    var url = location.pathname.replace(/\/$/, "") + "/data.json";
    function poll() {
      fetch(url, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (d) {
        render(d);
        if (d.record.status !== "trained") setTimeout(poll, 2000);
      }).catch(function () { setTimeout(poll, 5000); });
    }
    if (data.record.status !== "trained") setTimeout(poll, 2000);
  }

  // ---- the list of runs ----------------------------------------------------------------
  function indexPage(tag) {
    var table = document.getElementById("runs");
    if (!table) return;
    var tbody = table.tBodies[0], sortKey = null, desc = false, overlay = null, cache = {};
    var filter = document.getElementById("filter"), status = document.getElementById("status-filter");
    var metricSel = document.getElementById("compare-metric");

    function apply() {
      var text = filter.value.toLowerCase(), want = status.value;
      Array.prototype.forEach.call(tbody.rows, function (row) {
        var hit = (row.dataset.name + " " + row.dataset.id).toLowerCase().indexOf(text) >= 0;
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
        th.className = th.dataset.sort === key ? (desc ? "desc" : "asc") : "";
      });
    }
    table.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(th.dataset.sort); });
    });
    filter.addEventListener("input", apply);
    status.addEventListener("change", apply);

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
    function draw() {
      var ids = picked(), hint = document.getElementById("compare-hint");
      var box = document.getElementById("compare-chart");
      if (overlay) { overlay.destroy(); overlay = null; }
      hint.hidden = ids.length > 0;
      if (!ids.length) return;
      Promise.all(ids.map(load)).then(function (runs) {
        var all = {};
        runs.forEach(function (d) { names(d.metrics).forEach(function (n) { all[n] = 1; }); });
        var keep = metricSel.value;
        var options = Object.keys(all);
        metricSel.innerHTML = options.map(function (n) {
          return "<option>" + esc(n) + "</option>";
        }).join("");
        metricSel.value = options.indexOf(keep) >= 0 ? keep :
          (options.indexOf("metrics/mAP50-95(B)") >= 0 ? "metrics/mAP50-95(B)" : options[0]);
        var name = metricSel.value, epochs = {};
        runs.forEach(function (d) { d.metrics.forEach(function (e) { epochs[e.epoch] = 1; }); });
        var xs = Object.keys(epochs).map(Number).sort(function (a, b) { return a - b; });
        var cols = [xs].concat(runs.map(function (d) {
          var at = {}; d.metrics.forEach(function (e) { at[e.epoch] = e.metrics[name]; });
          return xs.map(function (x) { var v = at[x]; return typeof v === "number" ? v : null; });
        }));
        if (overlay) overlay.destroy();
        overlay = makeChart(box, name, runs.map(function (d) {
          return (d.record.name || d.record.id) + " " + d.record.id.slice(0, 6);
        }), cols, 1200);
        showLast(overlay);
      });
    }
    tbody.addEventListener("change", function (e) {
      if (e.target.classList.contains("pick")) draw();
    });
    metricSel.addEventListener("change", draw);
    function rowHtml(run) {
      var r = run.record, s = run.summary, best = s.best ? +s.best.value.toPrecision(6) : "";
      return "<tr data-id=\"" + esc(r.id) + "\" data-name=\"" + esc(r.name || "") +
        "\" data-status=\"" + esc(r.status) + "\" data-percent=\"" + s.percent +
        "\" data-best=\"" + best + "\" data-created=\"" + esc(r.created_at) + "\">" +
        "<td><input type=\"checkbox\" class=\"pick\" value=\"" + esc(r.id) + "\"></td>" +
        "<td><a href=\"/models/" + esc(r.id) + "\">" + esc(r.name || r.id) +
        "</a><div class=\"id\">" + esc(r.id) + "</div></td>" +
        "<td><span class=\"badge " + esc(r.status) + "\">" + esc(r.status) + "</span></td>" +
        "<td><div class=\"bar\"><div class=\"fill\" style=\"width:" + s.percent +
        "%\"></div></div><div>" + esc(s.progress) + "</div></td>" +
        "<td>" + esc(s.best_text) + "</td><td>" + esc(s.created) +
        "<div class=\"hint\">" + esc(s.activity) + "</div></td></tr>";
    }
    function refresh() {
      fetch("/runs.json", { cache: "no-store" }).then(function (r) { return r.json(); })
        .then(function (d) {
          var ticked = picked();
          tbody.innerHTML = d.runs.map(rowHtml).join("");
          tbody.querySelectorAll(".pick").forEach(function (c) {
            c.checked = ticked.indexOf(c.value) >= 0;
          });
          if (sortKey) { desc = !desc; sortBy(sortKey); }
          apply();
          document.querySelector("header .hint").textContent = d.runs.length + " runs";
          var live = d.runs.some(function (run) { return run.record.status !== "trained"; });
          setTimeout(refresh, live ? 3000 : 15000);
        }).catch(function () { setTimeout(refresh, 15000); });
    }
    setTimeout(refresh, 3000);
    window.hubCompare = function (ids) {
      tbody.querySelectorAll(".pick").forEach(function (c) { c.checked = ids.indexOf(c.value) >= 0; });
      draw();
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var model = document.getElementById("model-data");
    if (model) modelPage(model);
    var runs = document.getElementById("runs-data");
    if (runs) indexPage(runs);
  });
})();
