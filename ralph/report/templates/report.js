// Only niceties: the tables and pictures are complete without this script.
(function () {
  "use strict";
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d)) { el.title = el.textContent; el.textContent = d.toLocaleString(); }
  });
  var table = document.getElementById("items");
  if (table) {
    var search = document.getElementById("item-filter"), onlyFailed = document.getElementById("only-failed");
    var apply = function () {
      var q = search.value.toLowerCase();
      table.querySelectorAll("tbody tr").forEach(function (tr) {
        var hit = tr.dataset.item.toLowerCase().indexOf(q) >= 0 && (!onlyFailed.checked || tr.classList.contains("bad"));
        tr.hidden = !hit;
      });
    };
    search.addEventListener("input", apply);
    onlyFailed.addEventListener("change", apply);
    table.querySelectorAll("th[data-sort]").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var index = Array.prototype.indexOf.call(th.parentNode.children, th), body = table.tBodies[0];
        var dir = th.dataset.dir === "asc" ? -1 : 1, numeric = th.dataset.sort === "n";
        th.dataset.dir = dir === 1 ? "asc" : "desc";
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[index].dataset.v || a.cells[index].textContent, y = b.cells[index].dataset.v || b.cells[index].textContent;
          return dir * (numeric ? (parseFloat(x) || 0) - (parseFloat(y) || 0) : x.localeCompare(y));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  document.body.dataset.js = "ready";
})();
