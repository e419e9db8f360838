/* reportgen layer page: draws a unit's view (top images with grid, argmax cell, receptive field and
   heatmap; histogram; classes) from the layer's data file, at the address layers/<layer>.html#unit-N.
   Data come in by <script src> (reportgen.layer(...), reportgen.images(...)), never by a request
   from script, so pages work from file:// too. Everything shown is set as text or built as elements: no HTML from data. */
(function () {
  "use strict";
  var RG = (window.reportgen = window.reportgen || {});
  var layerData = null, imageData = null, options = {};
  RG.layer = function (d) { layerData = d; };
  RG.images = function (d) { imageData = d; };
  var evolutionData = null;
  RG.evolution = function (d) { evolutionData = d; };

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "style") node.setAttribute("style", attrs[k]);
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }
  function num(v, digits) {
    digits = digits || 4;
    if (v === null || v === undefined) return "–";
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 1000 || a < 1e-3) return v.toExponential(digits - 1);
    return String(Number(v.toPrecision(digits)));
  }
  function cssUrl(path) { return "url('" + encodeURI(options.root + path).replace(/'/g, "%27") + "')"; }
  function pct(i, n) { return n <= 1 ? 0 : (i / (n - 1)) * 100; }

  function thumb(index) {
    var entry = imageData.images[String(index)];
    if (!entry) return el("span", { class: "missing", text: "no image" });
    var size = imageData.sheet_tiles[entry[0]];
    return el("span", {
      class: "thumb", role: "img", "aria-label": entry[3],
      style: "background-image: " + cssUrl(imageData.sheets[entry[0]]) + "; background-size: " + size[0] * 100 + "% " + size[1] * 100 +
        "%; background-position: " + pct(entry[1], size[0]) + "% " + pct(entry[2], size[1]) + "%"
    });
  }

  function box(rf, row, col) {
    // [x0, y0, x1, y1] of the input pixels the position reads, and whether the full field reaches past them
    var cy = rf.offset[0] + row * rf.stride[0], cx = rf.offset[1] + col * rf.stride[1];
    var full = [cx - rf.size[1] / 2, cy - rf.size[0] / 2, cx + rf.size[1] / 2, cy + rf.size[0] / 2];
    var hw = layerData.input_hw, seen;
    if (rf.rows && rf.cols) {
      var r = rf.rows[row], c = rf.cols[col];
      seen = r[0] === null || c[0] === null ? [0, 0, 0, 0] : [c[0], r[0], c[1], r[1]];
    } else {
      seen = [Math.max(0, full[0]), Math.max(0, full[1]), Math.min(hw[1], full[2]), Math.min(hw[0], full[3])];
    }
    var clipped = seen.some(function (v, i) { return v !== full[i]; });
    return { box: seen, clipped: clipped };
  }

  function histogram(h) {
    var counts = h.counts.slice(), width = 320, height = 90;
    var bars = [["≤ 0", h.nonpositive, true]];
    var step = h.hi / 32;
    counts.forEach(function (c, i) { bars.push([num(i * step, 3) + " – " + num((i + 1) * step, 3), c, false]); });
    var peak = Math.max.apply(null, bars.map(function (b) { return b[1]; })) || 1, slot = width / bars.length;
    var shapes = bars.map(function (b, i) {
      var bh = (height * b[1]) / peak;
      return svg("rect", { class: b[2] ? "nonpos" : "bar", x: (i * slot + 0.5).toFixed(2), y: (height - bh).toFixed(2),
        width: Math.max(slot - 1, 0.5).toFixed(2), height: bh.toFixed(2) }, [el("title", { text: b[0] + ": " + b[1] + " image" + (b[1] === 1 ? "" : "s") })]);
    });
    var lo = svg("text", { x: 0, y: height + 12 }); lo.textContent = "≤0";
    var hi = svg("text", { x: width, y: height + 12, "text-anchor": "end" }); hi.textContent = num(counts.length * step, 3);
    var picture = svg("svg", { viewBox: "0 0 " + width + " " + (height + 14), role: "img", "aria-label": "histogram of the unit's maximum activation over the dataset" }, shapes.concat([lo, hi]));
    return el("figure", { class: "histogram" }, [picture, el("figcaption", { text: "Maximum activation per image over the dataset (grey: at or below 0; tallest bar " + peak + " images)" })]);
  }

  function rfText(rf) {
    if (!rf.exact) return "grid cell " + num(rf.size[0]) + " × " + num(rf.size[1]) + " px (" + rf.note + ")";
    return num(rf.size[0]) + " × " + num(rf.size[1]) + " px, stride " + num(rf.stride[0]) + " × " + num(rf.stride[1]) +
      (rf.note ? " (" + rf.note + ")" : "");
  }

  function toggles(heat) {
    function box(id, label, on) {
      var input = el("input", { type: "checkbox", id: id });
      input.checked = on;
      return el("label", {}, [input, " " + label]);
    }
    return el("div", { class: "toggles", role: "group", "aria-label": "overlays" }, [
      box("show-grid", "grid", !options.grid.dense), box("show-cell", "argmax cell", true), box("show-rf", "receptive field", true),
      heat ? box("show-heat", "activation heatmap", false) : null
    ]);
  }

  function card(unit, rank, entry) {
    var image = entry[0], value = entry[1], row = entry[2], col = entry[3];
    var hw = layerData.input_hw, rows = options.grid.rows, cols = options.grid.cols;
    var ch = hw[0] / rows, cw = hw[1] / cols, rf = box(layerData.receptive_field, row, col);
    var frame = el("div", { class: "frame" }, [thumb(image)]);
    if (unit.heat && !unit.dead) {
      var k = layerData.top_k, tile = unit.heat;
      frame.appendChild(el("div", { class: "heat", style: "background-image: " + cssUrl(layerData.heat.atlases[tile[0]]) +
        "; background-size: " + k * 100 + "% " + tile[2] * 100 + "%; background-position: " + pct(rank, k) + "% " + pct(tile[1], tile[2]) + "%" }));
    }
    frame.appendChild(svg("svg", { class: "overlay", viewBox: "0 0 " + hw[1] + " " + hw[0], preserveAspectRatio: "none" }, [
      svg("rect", { class: "cell", x: (col * cw).toFixed(2), y: (row * ch).toFixed(2), width: cw.toFixed(2), height: ch.toFixed(2) }),
      svg("rect", { class: "rf" + (rf.clipped ? " clipped" : ""), x: rf.box[0], y: rf.box[1], width: rf.box[2] - rf.box[0], height: rf.box[3] - rf.box[1] })
    ]));
    var info = imageData.images[String(image)] || [0, 0, 0, "(image " + image + ")", null];
    var label = info[4] === null || info[4] === undefined ? null : imageData.classes[info[4]];
    var caption = el("p", { class: "caption" }, [
      el("i", { text: "#" + (rank + 1) }), " ", el("b", { text: num(value) }), label !== null ? " " : null,
      label !== null ? el("em", { text: label }) : null, " ", el("i", { text: "(" + row + ", " + col + ")" }), " ",
      el("span", { class: "path", text: info[3] })
    ]);
    return el("li", { class: "card" }, [frame, caption]);
  }

  function render(channel) {
    var view = document.getElementById("unit-view");
    var unit = layerData.units[channel];
    view.textContent = "";
    var n = layerData.units.length, shape = layerData.output_shape;
    var nav = el("nav", { class: "unit-nav" }, [
      channel > 0 ? el("a", { href: "#unit-" + (channel - 1), rel: "prev", text: "← unit " + (channel - 1) }) : null,
      el("a", { href: "#units", text: "all units" }),
      channel + 1 < n ? el("a", { href: "#unit-" + (channel + 1), rel: "next", text: "unit " + (channel + 1) + " →" }) : null
    ]);
    var title = el("h2", {}, [layerData.layer + " · unit " + channel + " ", unit.dead ? el("span", { class: "dead-tag", text: "dead" }) : null]);
    var counts = {};
    unit.top.forEach(function (e) {
      var info = imageData.images[String(e[0])];
      if (info && info[4] !== null && info[4] !== undefined) counts[info[4]] = (counts[info[4]] || 0) + 1;
    });
    var chips = imageData.classes.map(function (name, i) { return el("span", { class: "chip", text: name + ": " + (counts[i] || 0) }); });
    var facts = el("dl", { class: "facts" }, [
      el("dt", { text: "Top activation" }), el("dd", { text: num(unit.max) + (unit.dead ? " — never above zero on any image: this unit is dead" : "") }),
      el("dt", { text: "Score" }), el("dd", { text: "the maximum of the unit's " + shape[1] + " × " + shape[2] + " map over all positions" }),
      el("dt", { text: "Receptive field" }), el("dd", { text: rfText(layerData.receptive_field) }),
      chips.length ? el("dt", { text: "Classes in the top " + unit.top.length }) : null, chips.length ? el("dd", {}, chips) : null
    ]);
    var gallery = el("ol", { class: "gallery", style: "--ar: " + layerData.input_hw[1] + " / " + layerData.input_hw[0] + "; --cols: " + options.grid.cols + "; --rows: " + options.grid.rows },
      unit.top.map(function (e, rank) { return card(unit, rank, e); }));
    var relevance = null;
    if (unit.relevance) {
      var drives = unit.relevance.drives.map(function (d) {
        var page = imageData.class_pages[d[0]];
        return el("a", { class: "chip", href: options.root + page, text: imageData.classes[d[0]] + ": " + num(d[1], 3) });
      });
      relevance = el("section", { class: "relevance-section" }, [
        el("h3", { text: "Classes it drives" }),
        drives.length ? el("p", {}, drives) : el("p", { class: "note", text: "It contributes to no class on average." }),
        el("h3", { text: "Top " + unit.relevance.top.length + " images by relevance for the predicted class" }),
        el("ol", { class: "gallery", style: "--ar: " + layerData.input_hw[1] + " / " + layerData.input_hw[0] + "; --cols: " + options.grid.cols + "; --rows: " + options.grid.rows },
          unit.relevance.top.map(function (e, rank) { return card({ heat: null, dead: true }, rank, e); })),
        el("p", { class: "note", text: "Relevance: the unit's contribution to the logit of the class the model predicts for that image (gradient × activation, summed over positions). The cell marks its largest contribution." })
      ]);
    }
    var over = null;
    if (evolutionData) {
      var rows = evolutionData.epochs.map(function (epoch, i) {
        var ids = evolutionData.top[channel][i];
        return el("div", { class: "epoch-row" }, [el("span", { class: "epoch", text: "epoch " + epoch })].concat(ids.map(function (id) {
          return el("span", { class: "frame" }, [thumb(id)]);
        })));
      });
      over = el("section", { class: "evolution-section", style: "--ar: " + layerData.input_hw[1] + " / " + layerData.input_hw[0] }, [el("h3", { text: "Over training: the top images, epoch by epoch" })].concat(rows));
    }
    var first = layerData.ranked_as, tied = unit.top.every(function (e) { return e[1] === unit.max; });
    var warning = !unit.dead ? null : el("p", { class: "warning", text: "This unit never fires (never above zero on any image)" + (!tied ? "." :
      first ? ": the images shown all score " + num(unit.max) + " here; they are the ones " + first + " scores highest, the closest to making it fire." :
      ": the images shown all score " + num(unit.max) + ", so they are simply the first such images in dataset order.") });
    var note = el("p", { class: "note", text: "Grid: one cell per position of the " + shape[1] + " × " + shape[2] + " map. Filled cell: where the maximum is. Outline: the pixels its receptive field reads" +
      (layerData.receptive_field.exact ? "" : " (not defined here: the grid cell)") + ", dashed where the field reaches into the padding. Heatmap: the unit's map on that image, 100% = the unit's top activation." +
      (first ? " This layer ranks images as " + first + " does (it keeps each channel's ranking): the images, filled cells and heatmaps come from " + first + "; the scores are this layer's." : "") });
    [nav, title, el("div", { class: "unit-head" }, [facts, histogram(unit.histogram)]), toggles(!unit.dead && unit.heat),
      el("h3", { text: "Top " + unit.top.length + " images" }), warning, gallery, note, relevance, over].forEach(function (c) { if (c) view.appendChild(c); });
    view.hidden = false;
    document.title = layerData.layer + " · unit " + channel + " · " + document.title.split(" · ").slice(-2).join(" · ");
  }

  function show() {
    var m = /^#unit-(\d+)$/.exec(location.hash), view = document.getElementById("unit-view");
    if (!view || !layerData || !imageData) return;
    if (m && +m[1] < layerData.units.length) {
      render(+m[1]);
      // after the browser's own jump to the list item of that id
      window.setTimeout(function () { view.scrollIntoView({ block: "start" }); }, 0);
    } else {
      view.hidden = true;
      view.textContent = "";
    }
  }

  RG.start = function (opts) {
    options = opts;
    window.addEventListener("hashchange", show);
    show();
  };
})();
