// The ops page's only script: keep the WMS sync table fresh (every 2 s while the page
// is visible), so a forced sync is seen moving to DONE without a reload. No framework,
// no outside origin; the session cookie goes with the request (same origin).
(function () {
  "use strict";
  var box = document.getElementById("syncs");
  if (!box) { return; }
  var url = box.getAttribute("data-refresh");
  function refresh() {
    if (document.hidden) { return; }
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { box.innerHTML = html; } })
      .catch(function () { /* the next round tries again */ });
  }
  setInterval(refresh, 2000);
})();
