/* reportgen index: filter the layer list, and jump to a unit by "layer:channel". */
window.reportgen = window.reportgen || {};
window.reportgen.confusion = function (d) { window.reportgen.confusionData = d; };
(function () {
  "use strict";
  var filter = document.getElementById("layer-filter");
  var rows = Array.prototype.slice.call(document.querySelectorAll(".layer-row"));
  var groups = Array.prototype.slice.call(document.querySelectorAll("details.group"));
  var pages = JSON.parse(document.getElementById("jump-pages").textContent);

  function apply() {
    var q = filter.value.trim().toLowerCase();
    rows.forEach(function (row) {
      var hit = !q || row.dataset.name.toLowerCase().indexOf(q) >= 0 || row.dataset.type.toLowerCase().indexOf(q) >= 0;
      row.hidden = !hit;
    });
    groups.slice().reverse().forEach(function (g) {  // inner groups first
      var any = g.querySelector(".layer-row:not([hidden])") !== null;
      g.hidden = !any;
      if (q) g.open = any;
    });
  }
  filter.addEventListener("input", apply);

  var jump = document.getElementById("unit-jump"), message = document.getElementById("jump-message");
  function go() {
    var text = jump.value.trim(), cut = text.lastIndexOf(":");
    var name = cut > 0 ? text.slice(0, cut) : text, channel = cut > 0 ? text.slice(cut + 1) : "";
    var target = pages[name];
    if (!target) { message.textContent = "no layer with feature maps is called " + JSON.stringify(name); return; }
    if (channel === "") { location.href = target.page; return; }
    if (!/^\d+$/.test(channel) || +channel >= target.units) {
      message.textContent = name + " has units 0 to " + (target.units - 1); return;
    }
    location.href = target.page + "#unit-" + channel;
  }
  document.getElementById("unit-go").addEventListener("click", go);
  jump.addEventListener("keydown", function (e) { if (e.key === "Enter") { e.preventDefault(); go(); } });
})();

/* the per-class tables: sort by a column, filter by name */
(function () {
  "use strict";
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.sortable"));
  if (!tables.length) return;
  var state = {};
  function rowsOf(group) {
    var bodies = tables.filter(function (t) { return t.dataset.group === group; }).map(function (t) { return t.tBodies[0]; });
    return { bodies: bodies, rows: bodies.reduce(function (all, b) { return all.concat(Array.prototype.slice.call(b.rows)); }, []) };
  }
  tables.forEach(function (table) {
    table.querySelectorAll("th button[data-key]").forEach(function (button) {
      button.addEventListener("click", function () {
        var key = button.dataset.key, group = table.dataset.group, id = group + ":" + key;
        var descending = state[id] = !state[id];
        var found = rowsOf(group), sizes = found.bodies.map(function (b) { return b.rows.length; });
        var column = Array.prototype.indexOf.call(button.closest("tr").children, button.closest("th"));
        function value(row, col) {  // the cell's text: a name, a whole number, or a percentage ("–" sorts lowest)
          var text = row.cells[col].firstChild.textContent.trim();
          if (col === 0) return text.toLowerCase();
          var v = parseFloat(text);
          return isNaN(v) ? -1 : v;
        }
        found.rows.sort(function (a, b) {
          var x = value(a, column), y = value(b, column);
          var order = x < y ? -1 : x > y ? 1 : value(a, 1) - value(b, 1);
          return descending && x !== y ? -order : order;
        });
        var at = 0;
        found.bodies.forEach(function (body, i) {
          found.rows.slice(at, at + sizes[i]).forEach(function (row) { body.appendChild(row); });
          at += sizes[i];
        });
        button.setAttribute("aria-sort", descending ? "descending" : "ascending");
      });
    });
  });
  var filter = document.getElementById("class-filter");
  if (filter) filter.addEventListener("input", function () {
    var q = filter.value.trim().toLowerCase();
    tables.forEach(function (t) {
      Array.prototype.forEach.call(t.tBodies[0].rows, function (row) {
        row.hidden = q !== "" && row.cells[0].textContent.toLowerCase().indexOf(q) < 0;
      });
    });
    var all = document.querySelector("details.all-classes");
    if (all && q) all.open = true;
  });
})();

/* the confusion picture: point at a cell for its classes and count, click it for its images
   (its data file loads after this script: start once the page is parsed) */
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var picture = document.getElementById("confusion-picture"), tip = document.getElementById("confusion-tip");
  var data = window.reportgen && window.reportgen.confusionData;
  if (!picture || !data) return;
  var counts = {};
  data.cells.forEach(function (c) { counts[c[0] + "," + c[1]] = c[2]; });
  var n = data.classes.length;
  function cellAt(event) {
    var box = picture.getBoundingClientRect();
    var row = Math.floor((event.clientY - box.top) / box.height * n), col = Math.floor((event.clientX - box.left) / box.width * n);
    return row >= 0 && row < n && col >= 0 && col < n ? [row, col] : null;
  }
  picture.addEventListener("pointermove", function (event) {
    var cell = cellAt(event);
    if (!cell) { tip.hidden = true; return; }
    var count = counts[cell[0] + "," + cell[1]] || 0;
    tip.textContent = data.classes[cell[0]] + " → predicted " + data.classes[cell[1]] + ": " + count + " image" + (count === 1 ? "" : "s");
    tip.style.left = (event.offsetX + 12) + "px";
    tip.style.top = (event.offsetY + 12) + "px";
    tip.hidden = false;
  });
  picture.addEventListener("pointerleave", function () { tip.hidden = true; });
  picture.addEventListener("click", function (event) {
    var cell = cellAt(event);
    if (cell && counts[cell[0] + "," + cell[1]]) location.href = data.pages.replace("{t}", cell[0]).replace("{p}", cell[1]);
  });
});
