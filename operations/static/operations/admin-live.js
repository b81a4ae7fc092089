// The operations admin, live: every 2 s the changelist's rows (or an operation's page) are read
// again and swapped in, so a resume made from the CLI or another tab shows without a reload.
// Nothing is swapped while someone is choosing: a row ticked, an action picked, a field focused.
(function () {
  "use strict";
  var EVERY_MS = 2000;
  function busy() {
    if (document.hidden) { return true; }
    if (document.querySelector("#result_list input.action-select:checked, #action-toggle:checked")) { return true; }
    var action = document.querySelector("select[name=action]");
    if (action && action.value) { return true; }
    var focused = document.activeElement;
    return focused && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(focused.tagName) && focused.type !== "submit";
  }
  function swap(selector, fresh) {
    var now = document.querySelector(selector), next = fresh.querySelector(selector);
    if (now && next && now.innerHTML !== next.innerHTML) { now.innerHTML = next.innerHTML; }
  }
  function refresh() {
    if (busy()) { return; }
    fetch(window.location.href, {credentials: "same-origin", headers: {"X-Requested-With": "tap-live"}})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html || busy()) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        if (document.getElementById("result_list")) {
          swap("#result_list tbody", fresh);
        } else {
          swap("#content-main", fresh);
          swap(".object-tools", fresh);
        }
      })
      .catch(function () { /* the next round tries again */ });
  }
  function start() {  // the script is loaded in <head>: look for the page's parts once they exist
    if (document.getElementById("result_list") || document.querySelector("body.change-form")) {
      window.setInterval(refresh, EVERY_MS);
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
