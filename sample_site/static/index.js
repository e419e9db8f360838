/* reportgen index: filter the layer list, and jump to a unit by "layer:channel". */
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
