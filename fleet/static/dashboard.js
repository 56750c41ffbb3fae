// edge-fleet dashboard: optional auto-refresh of the page body (no framework).
// With the box ticked, the page is re-fetched every 5 s and <main> is swapped in place.
"use strict";
(function () {
  const box = document.getElementById("autorefresh");
  if (!box) return;
  const KEY = "edge-fleet-autorefresh";
  box.checked = window.localStorage.getItem(KEY) === "1";
  box.addEventListener("change", function () {
    window.localStorage.setItem(KEY, box.checked ? "1" : "0");
  });
  async function refresh() {
    if (!box.checked || document.hidden) return;
    try {
      const resp = await fetch(window.location.href, { credentials: "same-origin" });
      if (resp.redirected || !resp.ok) { window.location.reload(); return; }
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.getElementById("main");
      const current = document.getElementById("main");
      if (fresh && current) current.replaceWith(fresh);
    } catch (err) {
      console.warn("refresh failed", err);
    }
  }
  window.setInterval(refresh, 5000);
})();
