// Live updates for every page: poll /api/status; when something new was recorded, fetch this
// page again and swap its live regions (elements with class "live-region" and an id) in
// place: no reload, so what the user typed or selected elsewhere on the page stays.
(function () {
  "use strict";
  const body = document.body;
  const pollMs = Number(body.dataset.pollMs) || 2000;
  const live = document.getElementById("live");
  let last = null;
  let fresh = 0;

  function keyOf(s) {
    return [s.newest_scan_id, s.newest_run_id, s.queue_depth, s.failures, s.daemon_alive,
            s.active_model ? s.active_model.name : ""].join(":");
  }

  async function refresh() {
    const regions = document.querySelectorAll(".live-region[id]");
    if (!regions.length) return false;
    const response = await fetch(window.location.href, {cache: "no-store",
                                                        headers: {"X-Live-Refresh": "1"}});
    if (!response.ok) return false;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    regions.forEach(function (region) {
      const next = doc.getElementById(region.id);
      if (next) region.replaceWith(document.adoptNode(next));
    });
    document.dispatchEvent(new CustomEvent("defectwatch:refreshed"));
    return true;
  }

  async function tick() {
    try {
      const response = await fetch("/api/status", {cache: "no-store"});
      const status = await response.json();
      const key = keyOf(status);
      if (last !== null && key !== last) {
        const swapped = await refresh();
        if (!swapped) fresh += 1;
      }
      last = key;
      if (live) {
        live.classList.remove("off");
        live.textContent = fresh ? "live · new scans" : "live";
        live.title = "updated " + new Date().toLocaleTimeString();
      }
    } catch (err) {
      if (live) { live.classList.add("off"); live.textContent = "offline"; }
    }
    window.setTimeout(tick, pollMs);
  }
  window.setTimeout(tick, 200);
})();
