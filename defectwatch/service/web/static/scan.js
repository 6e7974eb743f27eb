// The scan page: zoom and pan over the flattened scan, markers with hover details, the
// uncertainty map, and the review (reject, switch kind, add, undo, save).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("scan-data").textContent);
  const viewport = document.getElementById("viewport");
  if (!viewport) return;
  const stage = document.getElementById("stage");
  const svg = document.getElementById("markers");
  const tip = document.getElementById("tip");
  const note = document.getElementById("viewer-note");
  const canWrite = document.body.dataset.canWrite === "true";
  const SVGNS = "http://www.w3.org/2000/svg";
  const other = {trough: "peak", peak: "trough"};

  // -- state: one item per marker -------------------------------------------------------------
  const items = [];
  svg.querySelectorAll("circle.marker").forEach(function (el) {
    const d = data.defects[Number(el.dataset.index)];
    items.push({row: d.row, col: d.col, kind: d.kind, detected: d, rejected: false, added: false, el: el});
  });
  const history = [];
  let selected = null;

  // -- view: translate + scale ----------------------------------------------------------------
  let scale = 1, tx = 0, ty = 0;
  function apply() {
    stage.style.transform = "translate(" + tx + "px," + ty + "px) scale(" + scale + ")";
  }
  function fit() {
    const w = viewport.clientWidth, h = viewport.clientHeight;
    scale = Math.min(w / data.nx, h / data.ny);
    tx = (w - data.nx * scale) / 2;
    ty = (h - data.ny * scale) / 2;
    apply();
  }
  function zoomAt(factor, mx, my) {
    const next = Math.min(64, Math.max(0.05, scale * factor));
    tx = mx - (mx - tx) * (next / scale);
    ty = my - (my - ty) * (next / scale);
    scale = next;
    apply();
  }
  function zoomCentre(factor) { zoomAt(factor, viewport.clientWidth / 2, viewport.clientHeight / 2); }
  function local(ev) {
    const r = viewport.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top];
  }

  viewport.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    const [mx, my] = local(ev);
    zoomAt(ev.deltaY < 0 ? 1.25 : 0.8, mx, my);
  }, {passive: false});

  let down = null;
  viewport.addEventListener("pointerdown", function (ev) {
    if (ev.button !== 0) return;
    down = {x: ev.clientX, y: ev.clientY, tx: tx, ty: ty, moved: false, target: ev.target};
    viewport.setPointerCapture(ev.pointerId);
  });
  viewport.addEventListener("pointermove", function (ev) {
    if (down) {
      const dx = ev.clientX - down.x, dy = ev.clientY - down.y;
      if (!down.moved && Math.hypot(dx, dy) > 4) { down.moved = true; viewport.classList.add("panning"); }
      if (down.moved) { tx = down.tx + dx; ty = down.ty + dy; apply(); }
    }
  });
  viewport.addEventListener("pointerup", function (ev) {
    if (!down) return;
    const was = down;
    down = null;
    viewport.classList.remove("panning");
    if (was.moved) return;
    const item = itemOf(was.target);
    if (item) { select(item); return; }
    if (!canWrite) return;
    const [mx, my] = local(ev);
    const col = (mx - tx) / scale - 0.5, row = (my - ty) / scale - 0.5;
    if (row < -0.5 || col < -0.5 || row > data.ny - 0.5 || col > data.nx - 0.5) return;
    add(row, col, addKind());
  });

  // -- markers --------------------------------------------------------------------------------
  function itemOf(el) {
    return items.find(function (it) { return it.el === el; }) || null;
  }
  function draw(it) {
    const el = it.el;
    el.setAttribute("class", "marker " + it.kind + (it.added ? " added" : "") +
                    (it.rejected ? " rejected" : "") + (it === selected ? " selected" : ""));
    el.dataset.defectKind = it.kind;
  }
  function drawAll() { items.forEach(draw); counts(); }
  function counts() {
    const kept = items.filter(function (it) { return !it.rejected; });
    setText("count-trough", kept.filter(function (it) { return it.kind === "trough"; }).length);
    setText("count-peak", kept.filter(function (it) { return it.kind === "peak"; }).length);
    setText("count-rejected", items.filter(function (it) { return it.rejected && !it.added; }).length);
    setText("count-added", items.filter(function (it) { return it.added && !it.rejected; }).length);
    const undo = document.getElementById("undo");
    if (undo) undo.disabled = history.length === 0;
  }
  function setText(id, v) { const el = document.getElementById(id); if (el) el.textContent = String(v); }

  function describe(it) {
    const parts = [it.kind + (it.added ? " (added)" : "") + (it.rejected ? " – rejected" : "")];
    if (it.detected) {
      const d = it.detected;
      if (it.kind !== d.kind) parts.push("detected as " + d.kind);
      parts.push("confidence " + d.confidence.toFixed(2), "uncertainty " + d.uncertainty.toFixed(3));
      if (d.contrast !== null && d.contrast !== undefined) parts.push("contrast " + d.contrast.toFixed(1) + " σ");
      parts.push("at (" + d.x_nm.toFixed(2) + ", " + d.y_nm.toFixed(2) + ") nm");
    }
    parts.push("row " + it.row.toFixed(1) + ", col " + it.col.toFixed(1));
    return parts.join(" · ");
  }
  function select(it) {
    const before = selected;
    selected = it;
    if (before) draw(before);
    if (it) draw(it);
    const box = document.getElementById("selection");
    if (box) box.textContent = it ? describe(it) : "Click a marker to select it.";
    ["reject", "switch"].forEach(function (id) {
      const b = document.getElementById(id);
      if (b) b.disabled = !it;
    });
    const rej = document.getElementById("reject");
    if (rej && it) rej.textContent = it.rejected ? "restore (x)" : "reject (x)";
  }

  svg.addEventListener("pointerover", function (ev) {
    const it = itemOf(ev.target);
    if (!it) return;
    tip.textContent = describe(it);
    tip.classList.remove("hidden");
  });
  svg.addEventListener("pointermove", function (ev) {
    const [mx, my] = local(ev);
    // keep the tip inside the viewer: to the left / above the pointer near the far edges
    const w = tip.offsetWidth, h = tip.offsetHeight;
    const left = mx + 14 + w > viewport.clientWidth ? mx - 14 - w : mx + 14;
    const top = my + 14 + h > viewport.clientHeight ? my - 14 - h : my + 14;
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = Math.max(0, top) + "px";
  });
  svg.addEventListener("pointerout", function () { tip.classList.add("hidden"); });

  // -- review ---------------------------------------------------------------------------------
  function addKind() {
    const r = document.querySelector("input[name=add-kind]:checked");
    return r ? r.value : "trough";
  }
  function done(undo) { history.push(undo); drawAll(); if (selected) select(selected); status(""); }
  function reject(it) {
    if (!canWrite || !it) return;
    it.rejected = !it.rejected;
    done(function () { it.rejected = !it.rejected; });
  }
  function switchKind(it) {
    if (!canWrite || !it) return;
    it.kind = other[it.kind];
    done(function () { it.kind = other[it.kind]; });
  }
  function add(row, col, kind) {
    const el = document.createElementNS(SVGNS, "circle");
    el.setAttribute("cx", String(col + 0.5));
    el.setAttribute("cy", String(row + 0.5));
    el.setAttribute("r", String(data.marker_r));
    el.dataset.added = "true";
    svg.appendChild(el);
    const it = {row: row, col: col, kind: kind, detected: null, rejected: false, added: true, el: el};
    items.push(it);
    select(it);
    done(function () {
      items.splice(items.indexOf(it), 1);
      el.remove();
      if (selected === it) select(null);
    });
  }
  function undo() {
    const last = history.pop();
    if (!last) return;
    last();
    drawAll();
    if (selected) select(selected);
    status("undone");
  }
  function status(text, cls) {
    const el = document.getElementById("save-status");
    if (el) { el.textContent = text; el.className = "message " + (cls || ""); }
  }
  async function save() {
    if (!canWrite) return;
    const kept = items.filter(function (it) { return !it.rejected; });
    const body = {defects: kept.map(function (it) { return {row: it.row, col: it.col, kind: it.kind}; }),
                  exhaustive: document.getElementById("exhaustive").checked};
    status("saving…");
    try {
      const response = await fetch("/api/scans/" + data.id + "/review", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      const result = await response.json().catch(function () { return {}; });
      if (!response.ok) { status("not saved: " + (result.detail || response.status), "error"); return; }
      status("saved: " + result.counts.trough + " trough, " + result.counts.peak + " peak (" +
             (result.exhaustive ? "exhaustive" : "partial") + ")", "ok");
      document.body.dataset.saved = "true";
    } catch (err) {
      status("not saved: " + err, "error");
    }
  }

  function on(id, fn) { const el = document.getElementById(id); if (el) el.addEventListener("click", fn); }
  on("reject", function () { reject(selected); });
  on("switch", function () { switchKind(selected); });
  on("undo", undo);
  on("save", save);
  on("zoom-in", function () { zoomCentre(1.25); });
  on("zoom-out", function () { zoomCentre(0.8); });
  on("zoom-fit", fit);
  on("zoom-1", function () { zoomCentre(1 / scale); });

  document.addEventListener("keydown", function (ev) {
    const t = ev.target;
    if (t && (t.tagName === "INPUT" && t.type === "text" || t.tagName === "TEXTAREA")) return;
    const k = ev.key;
    if ((ev.ctrlKey || ev.metaKey) && k.toLowerCase() === "s") { ev.preventDefault(); save(); return; }
    if ((ev.ctrlKey || ev.metaKey) && k.toLowerCase() === "z") { ev.preventDefault(); undo(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (k === "x" || k === "Delete" || k === "Backspace") { ev.preventDefault(); reject(selected); }
    else if (k === "s") switchKind(selected);
    else if (k === "z") undo();
    else if (k === "t" || k === "p") {
      const r = document.querySelector("input[name=add-kind][value=" + (k === "t" ? "trough" : "peak") + "]");
      if (r) r.checked = true;
    }
    else if (k === "+" || k === "=") zoomCentre(1.25);
    else if (k === "-") zoomCentre(0.8);
    else if (k === "0") fit();
    else if (k === "Escape") select(null);
  });

  // -- layers ---------------------------------------------------------------------------------
  document.getElementById("show-markers").addEventListener("change", function (ev) {
    svg.classList.toggle("hidden", !ev.target.checked);
  });
  const unc = document.getElementById("unc-img");
  document.getElementById("show-uncertainty").addEventListener("change", function (ev) {
    if (!ev.target.checked) { unc.classList.add("hidden"); return; }
    if (!unc.getAttribute("src")) {
      note.textContent = "computing the uncertainty map (the first time takes a few seconds)…";
      unc.addEventListener("load", function () { note.textContent = ""; });
      unc.addEventListener("error", async function () {
        const r = await fetch(unc.src).catch(function () { return null; });
        const body = r ? await r.json().catch(function () { return {}; }) : {};
        note.textContent = "no uncertainty map: " + (body.detail || "it could not be made");
      });
      unc.src = "/api/scans/" + data.id + "/uncertainty.png";
    }
    unc.classList.remove("hidden");
  });

  // a saved review is where the reviewer left off: its labels over the detections (a detection
  // with a label within a pixel is kept with the label's kind, without one it was rejected;
  // a label with no detection there was added)
  function resume(review) {
    const free = review.labels.slice();
    items.slice().forEach(function (it) {
      let best = -1, bestD = 1.0;
      free.forEach(function (lab, i) {
        const d = Math.hypot(lab.row - it.row, lab.col - it.col);
        if (d <= bestD) { best = i; bestD = d; }
      });
      if (best < 0) { it.rejected = true; return; }
      it.kind = free[best].kind;
      free.splice(best, 1);
    });
    free.forEach(function (lab) {
      const el = document.createElementNS(SVGNS, "circle");
      el.setAttribute("cx", String(lab.col + 0.5));
      el.setAttribute("cy", String(lab.row + 0.5));
      el.setAttribute("r", String(data.marker_r));
      svg.appendChild(el);
      items.push({row: lab.row, col: lab.col, kind: lab.kind, detected: null, rejected: false,
                  added: true, el: el});
    });
    const box = document.getElementById("exhaustive");
    if (box) box.checked = review.exhaustive;
  }
  if (data.review) resume(data.review);

  fit();
  drawAll();
  window.addEventListener("resize", fit);
  window.defectwatchReview = {items: items, save: save, fit: fit};
})();
