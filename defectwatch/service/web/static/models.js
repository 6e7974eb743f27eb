// Activate a version or roll back (POST /api/models/...), then show the new state.
(function () {
  "use strict";
  const message = document.getElementById("model-message");

  async function post(url) {
    message.textContent = "working… (the version's files are checked first)";
    const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}});
    const data = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      message.textContent = "refused: " + (data.detail || response.status);
      message.className = "message error";
      return;
    }
    message.textContent = data.changed ? ("active: " + data.version + " (was " + data.previous + ")")
                                       : (data.version + " was already active");
    window.setTimeout(function () { window.location.reload(); }, 600);
  }

  document.querySelectorAll("button.activate").forEach(function (b) {
    b.addEventListener("click", function () {
      post("/api/models/" + encodeURIComponent(b.dataset.version) + "/activate");
    });
  });
  const rollback = document.getElementById("rollback");
  if (rollback) rollback.addEventListener("click", function () { post("/api/models/rollback"); });
})();
