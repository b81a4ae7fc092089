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
