// A flash message that says what was asked ("pause requested") carries the status it describes
// (a tap-status-… tag); once the live part shows another status it has been overtaken, and goes,
// rather than stay above a badge that contradicts it.
(function () {
  "use strict";
  function dropOvertaken() {
    var live = document.getElementById("live");
    if (!live) { return; }
    var now = "tap-status-" + live.getAttribute("data-live-status");
    document.querySelectorAll("ul.messages li[class*='tap-status-']").forEach(function (item) {
      if (!item.classList.contains(now)) { item.remove(); }
    });
    document.querySelectorAll("ul.messages").forEach(function (list) {
      if (!list.children.length) { list.remove(); }
    });
  }
  document.addEventListener("DOMContentLoaded", dropOvertaken);
  document.addEventListener("htmx:afterSettle", dropOvertaken);
})();

// Tables with class "sortable": a click on a heading sorts the rows by that column (numbers as
// numbers), a second click the other way round.
document.addEventListener("click", function (event) {
  "use strict";
  var heading = event.target.closest("table.sortable th");
  if (!heading) { return; }
  var table = heading.closest("table"), body = table.tBodies[0];
  var column = Array.prototype.indexOf.call(heading.parentNode.children, heading);
  var descending = heading.getAttribute("aria-sort") === "ascending";
  table.querySelectorAll("th").forEach(function (th) { th.removeAttribute("aria-sort"); });
  heading.setAttribute("aria-sort", descending ? "descending" : "ascending");
  var rows = Array.prototype.slice.call(body.rows);
  function key(row) {
    var text = row.cells[column].textContent.trim(), number = Number(text.replace(/,/g, ""));
    return text !== "" && !isNaN(number) ? number : text.toLowerCase();
  }
  rows.sort(function (a, b) {
    var x = key(a), y = key(b), order = x < y ? -1 : x > y ? 1 : 0;
    return descending ? -order : order;
  });
  rows.forEach(function (row) { body.appendChild(row); });
});
