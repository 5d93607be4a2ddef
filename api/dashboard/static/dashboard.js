/* strata dashboard: draws the page's charts from the JSON the server rendered into
   #dash-data. Every number plotted is the server's (already suppressed and rounded): the
   charts never compute a figure of their own. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("dash-data").textContent);
  var L = data.labels;
  var charts = {};
  window.strataDashboard = { data: data, charts: charts };

  function num(v) { return typeof v === "number" ? v : null; }
  function lab(kind, name) { return (L[kind] && L[kind][name]) || name; }
  function fmt(v, d) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "string") return v;
    return d ? v.toFixed(d) : v.toLocaleString("en-US");
  }
  function chart(id, option) {
    var el = document.getElementById(id);
    if (!el) return null;
    var c = echarts.init(el, null, { locale: data.lang === "zh" ? "ZH" : "EN" });
    option.animation = false;
    c.setOption(option);
    charts[id] = c;
    return c;
  }
  function dates(view) { return view.snapshots.map(function (s) { return s.as_of.slice(0, 10); }); }
  var grid = { left: 16, right: 40, top: 48, bottom: 16, containLabel: true };
  var legend = { type: "scroll", top: 0 };

  function sharesChart(id, view, names, kind, pick, hiddenKey) {
    var series = names.map(function (n) {
      return { id: kind + ":" + n, name: lab(kind, n), type: "line", stack: "share", areaStyle: {},
               connectNulls: false, data: view.snapshots.map(function (s) { return num(pick(s, n)); }) };
    });
    if (view.snapshots.some(function (s) { return s[hiddenKey] > 0; })) {
      series.push({ id: "hidden", name: L.ui.hidden_cells.replace("{k}", data.k), type: "line", stack: "share",
                    areaStyle: { color: "#c8ccd6" }, lineStyle: { color: "#a0a6b4" }, itemStyle: { color: "#a0a6b4" },
                    data: view.snapshots.map(function (s) { return s[hiddenKey]; }) });
    }
    chart(id, {
      tooltip: { trigger: "axis", valueFormatter: function (v) { return v === null ? "<" + data.k : v.toFixed(1) + "%"; } },
      legend: legend, grid: grid,
      xAxis: { type: "category", boundaryGap: false, data: dates(view) },
      yAxis: { type: "value", max: 100, axisLabel: { formatter: "{value}%" } },
      series: series
    });
  }

  function tiersPage(view) {
    sharesChart("chart-tier-shares", view, view.tier_order, "tier",
      function (s, t) { return s.tiers[t] ? s.tiers[t].share_pct : null; }, "hidden_share_pct");
    sharesChart("chart-stage-shares", view, view.stage_order, "stage",
      function (s, st) { return s.lifecycle_pct[st]; }, "lifecycle_hidden_pct");
  }

  function transitionsPage(view) {
    if (data.chosen === null) return;
    var tr = view.transitions[data.chosen];
    var tiers = view.tier_order;
    var cells = [], hiddenCells = [], max = 0;
    tiers.forEach(function (f, y) {
      tiers.forEach(function (t, x) {
        var v = tr.matrix[f] ? tr.matrix[f][t] : undefined;
        if (v === undefined) v = 0;
        if (typeof v === "number" && v > max) max = v;
        cells.push({ value: [x, y, num(v)], from: f, to: t, shown: fmt(v) });
        if (typeof v === "string") hiddenCells.push([x, y]);
      });
    });
    var c = chart("chart-transitions", {
      tooltip: { formatter: function (p) { return lab("tier", p.data.from) + " → " + lab("tier", p.data.to) + ": " + p.data.shown; } },
      grid: { left: 16, right: 16, top: 24, bottom: 72, containLabel: true },
      xAxis: { type: "category", data: tiers.map(function (t) { return lab("tier", t); }), name: L.ui.to_tier, nameLocation: "middle", nameGap: 28, splitArea: { show: true } },
      yAxis: { type: "category", data: tiers.map(function (t) { return lab("tier", t); }), name: L.ui.from_tier, inverse: true, splitArea: { show: true } },
      visualMap: { seriesIndex: 0, min: 0, max: Math.max(max, 1), calculable: false, orient: "horizontal", left: "center", bottom: 0, itemHeight: 120 },
      series: [{ id: "matrix", type: "heatmap", data: cells, label: { show: true, formatter: function (p) { return p.data.shown; } },
                 emphasis: { itemStyle: { borderColor: "#1d2433", borderWidth: 1 } } },
               // suppressed cells: no colour (no number), only their "<k" label
               { id: "hidden", type: "scatter", symbolSize: 0, silent: true, data: hiddenCells,
                 label: { show: true, color: "#5b6478", formatter: "<" + data.k } }]
    });
    function show(f, t) {
      var panel = document.getElementById("rules-panel");
      var list = document.getElementById("rules-list");
      document.getElementById("rules-cell").textContent = lab("tier", f) + " → " + lab("tier", t);
      list.textContent = "";
      var rules = (tr.by_rule[f] || {})[t] || {};
      var names = Object.keys(rules);
      if (!names.length) { var li0 = document.createElement("li"); li0.textContent = "–"; list.appendChild(li0); }
      names.forEach(function (r) {
        var li = document.createElement("li");
        li.dataset.rule = r;
        li.textContent = lab("rule", r) + ": " + fmt(rules[r]);
        list.appendChild(li);
      });
      panel.hidden = false;
    }
    if (c) c.on("click", function (p) { if (p.data) show(p.data.from, p.data.to); });
    document.querySelectorAll("#table-transitions td[data-from]").forEach(function (td) {
      td.addEventListener("click", function () { show(td.dataset.from, td.dataset.to); });
    });
  }

  function metricsPage(view) {
    document.querySelectorAll(".chart[data-metric]").forEach(function (el) {
      var m = el.dataset.metric;
      chart(el.id, {
        tooltip: { trigger: "axis" }, legend: legend, grid: grid,
        xAxis: { type: "category", data: dates(view) },
        yAxis: { type: "value", scale: true },
        series: view.tier_order.map(function (t) {
          return { id: "tier:" + t, name: lab("tier", t), type: "line", connectNulls: false,
                   data: view.snapshots.map(function (s) { return s.tiers[t] ? num(s.tiers[t][m]) : null; }) };
        })
      });
    });
    var last = view.snapshots[view.snapshots.length - 1];
    document.querySelectorAll(".chart[data-group]").forEach(function (el) {
      var cells = last.bands[el.dataset.group] || {};
      var names = Object.keys(cells);
      chart(el.id, {
        tooltip: {}, grid: { left: 16, right: 16, top: 16, bottom: 16, containLabel: true },
        xAxis: { type: "category", data: names.map(function (b) { return lab("band", b); }), axisLabel: { interval: 0, rotate: names.length > 4 ? 30 : 0 } },
        yAxis: { type: "value" },
        series: [{ id: "band:" + el.dataset.group, type: "bar", name: L.metric.users,
                   data: names.map(function (b) { return num(cells[b]); }),
                   label: { show: true, position: "top", formatter: function (p) { return fmt(cells[names[p.dataIndex]]); } } }]
      });
    });
  }

  function realtimePage() {
    if (data.rules && data.rules.length) {
      chart("chart-rules", {
        tooltip: { trigger: "axis" }, legend: legend, grid: grid,
        xAxis: { type: "category", data: data.rules.map(function (r) { return r.name; }), axisLabel: { interval: 0, rotate: 20 } },
        yAxis: { type: "value" },
        series: ["fired", "converted"].map(function (m) {
          return { id: m, name: L.metric[m], type: "bar", data: data.rules.map(function (r) { return num(r[m]); }) };
        })
      });
    }
    (data.experiments || []).forEach(function (e, i) {
      var rows = e.comparisons.filter(function (c) { return !c.hidden && c.absolute; });
      if (!rows.length) return;
      var cats = rows.map(function (c) { return c.arm + " – " + c.baseline + ": " + c.metric; });
      chart("chart-exp-" + i, {
        tooltip: { trigger: "item" },
        grid: { left: 16, right: 24, top: 16, bottom: 16, containLabel: true },
        yAxis: { type: "category", data: cats },
        xAxis: { type: "value", scale: true },
        series: [
          { id: "ci", type: "custom", name: L.ui.ci,
            data: rows.map(function (c, y) { return [y, c.absolute.ci_low, c.absolute.ci_high]; }),
            renderItem: function (params, api) {
              var lo = api.coord([api.value(1), api.value(0)]), hi = api.coord([api.value(2), api.value(0)]);
              return { type: "line", shape: { x1: lo[0], y1: lo[1], x2: hi[0], y2: hi[1] }, style: { stroke: "#2f6fdf", lineWidth: 2 } };
            },
            encode: { x: [1, 2], y: 0 } },
          { id: "effect", type: "scatter", name: L.ui.effect, symbolSize: 10,
            data: rows.map(function (c, y) { return [c.absolute.effect, y]; }) }
        ]
      });
    });
  }

  function whatifPage() {
    document.querySelectorAll(".slider input[type=range]").forEach(function (input) {
      var out = input.parentNode.querySelector("output");
      input.addEventListener("input", function () { out.textContent = input.value; });
    });
    var r = data.whatif;
    if (!r) return;
    var tiers = Object.keys(r.before);
    Object.keys(r.after).forEach(function (t) { if (tiers.indexOf(t) < 0) tiers.push(t); });
    chart("chart-whatif", {
      tooltip: { trigger: "axis" }, legend: legend, grid: grid,
      xAxis: { type: "category", data: tiers.map(function (t) { return lab("tier", t); }) },
      yAxis: { type: "value" },
      series: ["before", "after"].map(function (k) {
        return { id: k, name: L.ui[k], type: "bar", data: tiers.map(function (t) { return num(r[k][t]); }) };
      })
    });
  }

  var pages = {
    "/dashboard": tiersPage, "/dashboard/transitions": transitionsPage,
    "/dashboard/metrics": metricsPage, "/dashboard/realtime": realtimePage,
    "/dashboard/whatif": whatifPage
  };
  var draw = pages[data.page];
  if (draw && (data.view || data.page === "/dashboard/realtime" || data.page === "/dashboard/whatif")) draw(data.view);
  window.addEventListener("resize", function () { Object.keys(charts).forEach(function (k) { charts[k].resize(); }); });
})();
