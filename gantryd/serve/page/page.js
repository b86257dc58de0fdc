// gantryd serve: keeps a project page current without reloading it. The server renders
// the tables (everything escaped there); this script fetches that rendering as JSON about
// once a second and swaps it in when it changed. Without JavaScript the page is the same
// tables, as of its loading.
(function () {
  "use strict";
  var PERIOD_MS = 1000;
  var MAX_BACKOFF_MS = 5000;
  var main = document.getElementById("content");
  var source = main && main.getAttribute("data-live");
  var status = document.getElementById("live");  // announced: changes only on loss/return
  var asOf = document.getElementById("as-of");
  if (!source || !window.fetch) {
    return;
  }
  var shown = null;
  var failures = 0;

  function show(text, lost) {
    if (status.textContent !== text) {
      status.textContent = text;
      status.className = lost ? "lost" : "";
    }
  }

  function poll() {
    fetch(source, {cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        if (data.html !== shown) {
          main.innerHTML = data.html;
          shown = data.html;
        }
        asOf.textContent = "As of " + data.at + ".";
        show("Live: updates about once a second.", false);
      })
      .catch(function (error) {
        failures += 1;
        show("Live updates interrupted (" + error.message + "); retrying. " +
             "The tables below may be out of date.", true);
      })
      .then(function () {
        setTimeout(poll, failures ? Math.min(PERIOD_MS * 2 * failures, MAX_BACKOFF_MS)
                                  : PERIOD_MS);
      });
  }

  poll();
}());
