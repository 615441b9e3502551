/* medq-bench report: every table.data scrolls in its own box, sorts by a click on a column
   header and follows the filter bar (method, bit-width, device). Rows carry data-method,
   data-bits and data-device; cells and header cells of a device's columns carry data-device.
   A table whose rows carry no data-method / data-bits is filtered on its rows' text, unless
   it is marked data-filter="none". Allowed by the page's CSP through this text's sha256. */
(function () {
  "use strict";
  var KEYS = ["method", "bits", "device"];
  var NUMBER = /^\s*[<>\u2264\u2265~\u2248]?\s*([-+\u2212]?\d+(?:\.\d+)?(?:e[-+\u2212]?\d+)?)/i;
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.data"));
  var all = function (list) { return Array.prototype.slice.call(list); };

  function wrap(table) {
    var parent = table.parentElement;
    if (parent && parent.classList.contains("scroll")) { return; }
    var box = document.createElement("div");
    box.className = "scroll";
    parent.insertBefore(box, table);
    box.appendChild(table);
  }

  function headerRow(table) {
    if (table.tHead && table.tHead.rows.length) {
      return table.tHead.rows[table.tHead.rows.length - 1];
    }
    var first = table.rows[0];
    return first && all(first.cells).every(function (c) { return c.tagName === "TH"; })
      ? first : null;
  }

  function isDataRow(row, header) {
    return row !== header && !row.classList.contains("block") &&
      all(row.cells).some(function (c) { return c.tagName === "TD"; });
  }

  function cellAt(row, column) {
    var start = 0;
    for (var i = 0; i < row.cells.length; i += 1) {
      var span = row.cells[i].colSpan || 1;
      if (column < start + span) { return row.cells[i]; }
      start += span;
    }
    return null;
  }

  function sortKey(row, column) {
    var cell = cellAt(row, column);
    var text = cell ? cell.textContent.trim() : "";
    var m = NUMBER.exec(text);
    if (m) { return { missing: false, number: parseFloat(m[1].replace(/\u2212/g, "-")), text: text }; }
    return { missing: text === "" || text === "-" || text === "\u2014", number: null, text: text };
  }

  function compare(a, b, direction) {
    if (a.missing !== b.missing) { return a.missing ? 1 : -1; }
    if (a.number !== null && b.number !== null) { return direction * (a.number - b.number); }
    if ((a.number === null) !== (b.number === null)) { return a.number === null ? 1 : -1; }
    return direction * a.text.localeCompare(b.text, undefined, { numeric: true });
  }

  function sortBy(table, header, th, column) {
    var direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    all(header.cells).forEach(function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    all(table.tBodies).forEach(function (body) {
      var rows = all(body.rows);
      var data = rows.filter(function (r) { return isDataRow(r, header); });
      var keyed = data.map(function (r, i) { return { row: r, key: sortKey(r, column), i: i }; });
      keyed.sort(function (a, b) { return compare(a.key, b.key, direction) || a.i - b.i; });
      keyed.forEach(function (k) { body.appendChild(k.row); });
    });
  }

  function makeSortable(table) {
    var header = headerRow(table);
    if (!header) { return; }
    var column = 0;
    all(header.cells).forEach(function (th) {
      var at = column;
      column += th.colSpan || 1;
      if ((th.colSpan || 1) !== 1) { return; }
      th.classList.add("sortable");
      th.tabIndex = 0;
      th.title = "Sort by this column (again: reverse)";
      th.addEventListener("click", function () { sortBy(table, header, th, at); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, header, th, at); }
      });
    });
  }

  function norm(value) { return (value || "").toLowerCase().replace(/\s+/g, ""); }

  function rowValue(row, key, byText) {
    if (row.hasAttribute("data-" + key)) { return norm(row.getAttribute("data-" + key)); }
    if (!byText) { return null; }
    if (key === "bits") {
      var tokens = row.textContent.match(/W\d+A\d+/gi);
      return tokens ? norm(tokens.join(" ")) : null;
    }
    return norm(row.textContent);
  }

  function applyFilters(query, status) {
    var hidden = 0;
    tables.forEach(function (table) {
      var header = headerRow(table);
      var rows = all(table.rows).filter(function (r) { return isDataRow(r, header); });
      var tagged = {};
      KEYS.forEach(function (k) {
        tagged[k] = rows.some(function (r) { return r.hasAttribute("data-" + k); });
      });
      var byText = table.getAttribute("data-filter") !== "none" &&
        !tagged.method && !tagged.bits && !tagged.device;
      rows.forEach(function (row) {
        var show = KEYS.every(function (k) {
          if (!query[k]) { return true; }
          var value = rowValue(row, k, byText && k !== "device");
          return value === null ? !tagged[k] : value.indexOf(query[k]) !== -1;
        });
        row.hidden = !show;
        hidden += show ? 0 : 1;
      });
      all(table.querySelectorAll("th[data-device], td[data-device]")).forEach(function (c) {
        c.hidden = Boolean(query.device) && norm(c.getAttribute("data-device")).indexOf(query.device) === -1;
      });
    });
    status.textContent = hidden ? hidden + " rows hidden by the filter" : "";
  }

  function values(key) {
    var seen = {};
    all(document.querySelectorAll("[data-" + key + "]")).forEach(function (e) {
      var v = e.getAttribute("data-" + key);
      if (v) { seen[v] = true; }
    });
    return Object.keys(seen).sort();
  }

  function filterBar() {
    var bar = document.createElement("form");
    bar.id = "table-filter";
    bar.className = "filters";
    bar.setAttribute("role", "search");
    var inputs = {};
    var labels = { method: "method", bits: "bit-width", device: "device" };
    KEYS.forEach(function (key) {
      var label = document.createElement("label");
      label.textContent = labels[key] + " ";
      var input = document.createElement("input");
      input.type = "search";
      input.name = key;
      input.id = "filter-" + key;
      input.setAttribute("list", "filter-" + key + "-values");
      input.placeholder = "all";
      var list = document.createElement("datalist");
      list.id = "filter-" + key + "-values";
      values(key).forEach(function (v) {
        var option = document.createElement("option");
        option.value = v;
        list.appendChild(option);
      });
      label.appendChild(input);
      label.appendChild(list);
      bar.appendChild(label);
      inputs[key] = input;
    });
    var status = document.createElement("span");
    status.className = "muted";
    status.id = "filter-status";
    status.setAttribute("aria-live", "polite");
    bar.appendChild(status);
    var update = function () {
      var query = {};
      KEYS.forEach(function (k) { query[k] = norm(inputs[k].value); });
      applyFilters(query, status);
    };
    bar.addEventListener("input", update);
    bar.addEventListener("submit", function (e) { e.preventDefault(); update(); });
    var nav = document.querySelector("nav");
    if (nav) { nav.parentNode.insertBefore(bar, nav.nextSibling); }
  }

  tables.forEach(wrap);
  tables.forEach(makeSortable);
  if (tables.length) { filterBar(); }
}());
