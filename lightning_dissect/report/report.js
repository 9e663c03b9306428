// lightning-dissect report: sortable tables, a filter, and an image-load check (no network).
(function () {
  "use strict";

  function cellValue(row, index) {
    var cell = row.cells[index];
    var v = cell.getAttribute("data-value");
    if (v === null) { v = cell.textContent.trim(); }
    var n = parseFloat(v);
    return isNaN(n) || !/^-?[0-9.eE+-]+$/.test(v) ? v.toLowerCase() : n;
  }

  function sortTable(table, index, th) {
    var body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  function setupTables() {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
        th.title = "sort by " + th.textContent.trim();
        th.addEventListener("click", function () { sortTable(table, i, th); });
      });
    });
    document.querySelectorAll("input.only-interpretable").forEach(function (box) {
      var table = document.getElementById(box.getAttribute("data-table"));
      box.addEventListener("change", function () {
        Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
          r.style.display = (box.checked && r.classList.contains("dim")) ? "none" : "";
        });
      });
    });
  }

  function checkImages() {
    var images = document.images, loaded = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
    }
    var marker = document.getElementById("image-status");
    if (marker) {
      marker.setAttribute("data-loaded", String(loaded));
      marker.setAttribute("data-total", String(images.length));
      marker.setAttribute("data-checked", "true");
      marker.textContent = loaded + " of " + images.length + " images loaded";
    }
  }

  document.addEventListener("DOMContentLoaded", setupTables);
  window.addEventListener("load", checkImages);
})();
