// leukoscope verify worklist: keyboard first, no framework, no inline script (the page's CSP forbids it).
// Keys: 1-9 verify as the model's class of that number, Enter confirms the model's call, u marks the image
// unusable, arrows move without verifying. Typing in the comment field never triggers a key; Esc or Enter
// leaves it. A verification is posted in the background and the next item shows at once, its image and
// Grad-CAM fetched while the current one is on screen. Every user-supplied string is written with textContent.
// With data-unit="cells" (/verify?unit=cells) the items are cells: the same keys, each shown as its crop and its
// field with the cell outlined, verified through /api/v1/cells/{id}/verifications.
"use strict";

(() => {
  const root = document.getElementById("verify");
  if (!root) return;
  const classes = JSON.parse(root.dataset.classes || "[]");
  const cells = root.dataset.unit === "cells";
  const noun = cells ? "cell" : "prediction";
  const $ = (id) => document.getElementById(id);
  const status = $("verify-status"), empty = $("verify-empty"), itemBox = $("verify-item");
  const position = $("verify-position"), fileName = $("verify-file"), flag = $("verify-flag");
  const call = $("verify-call"), probs = document.querySelector("#verify-probs tbody");
  const reasons = $("verify-reasons"), doneNote = $("verify-done"), comment = $("verify-comment");
  // A cell: its crop, and its field (the stored image) with an SVG rectangle over the cell's bounding box.
  const cellViewer = {
    open(item) {
      const crop = $("cell-crop"), svg = $("cell-field"), image = $("cell-field-image"), rect = $("cell-field-outline");
      const [x0, y0, x1, y1] = item.bbox, w = item.field_width, h = item.field_height;
      crop.src = item.crop;
      crop.alt = `cell ${item.index + 1} of ${item.file_name}`;
      svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
      svg.setAttribute("aria-label", `field ${item.file_name} with cell ${item.index + 1} outlined`);
      image.setAttribute("href", `/api/v1/predictions/${encodeURIComponent(item.prediction_id)}/image`);
      image.setAttribute("width", String(w));
      image.setAttribute("height", String(h));
      rect.setAttribute("x", String(x0));
      rect.setAttribute("y", String(y0));
      rect.setAttribute("width", String(x1 - x0));
      rect.setAttribute("height", String(y1 - y0));
      rect.setAttribute("stroke-width", String(Math.max(2, Math.floor(Math.max(w, h) / 150))));
    },
    prefetch(item) { new Image().src = item.crop; },
  };
  const viewer = cells ? cellViewer : window.leukoscopeGradcam;
  const BATCH = 50, AHEAD = 5;
  const items = [], seen = new Set(), verdicts = new Map(), pending = new Set(), inflight = new Set();
  let index = 0, verifiedHere = 0, awaiting = 0, exhausted = false, loading = null;

  const pct = (p) => `${(100 * p).toFixed(1)}%`;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(text, isError = false) {
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function toLogin() {
    window.location.assign(cells ? "/login?next=%2Fverify%3Funit%3Dcells" : "/login?next=%2Fverify");
  }

  // Load the next items of the worklist (after the last one loaded); `fresh` starts from the top again (new uploads).
  function load(fresh = false) {
    if (loading) return loading;
    const last = items[items.length - 1];
    const query = new URLSearchParams({ limit: String(BATCH) });
    if (last && !fresh) {
      query.set("after_id", String(last.id));
      query.set("after_flagged", String(Boolean(last.review)));
    }
    loading = (async () => {
      try {
        const response = await fetch(`/api/v1/worklist${cells ? "/cells" : ""}?${query}`, {
          credentials: "same-origin", headers: { Accept: "application/json" },
        });
        if (response.status === 401) { toLogin(); return 0; }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const body = await response.json();
        awaiting = body.total;
        let added = 0;
        for (const item of body.items) {
          if (seen.has(item.id)) continue;
          seen.add(item.id);
          items.push(item);
          added++;
        }
        if (!fresh) exhausted = body.items.length === 0;
        return added;
      } catch (err) {
        setStatus(`Could not load the worklist: ${err.message || err}`, true);
        return 0;
      } finally {
        loading = null;
      }
    })();
    return loading;
  }

  function describeVerdict(v) {
    return v.label === null ? "unusable" : v.label;
  }

  function updatePosition() {
    const more = exhausted ? "" : " loaded";
    position.textContent = `${index + 1} of ${items.length}${more}`;
  }

  function render() {
    if (index >= items.length) {
      itemBox.hidden = true;
      empty.hidden = false;
      empty.textContent = items.length
        ? `Nothing more awaits verification (${verifiedHere} verified on this page). ← goes back.`
        : "Nothing awaits verification.";
      return;
    }
    const item = items[index];
    itemBox.hidden = false;
    empty.hidden = true;
    updatePosition();
    fileName.textContent = cells ? `${item.file_name} · cell ${item.index + 1}` : item.file_name;
    flag.replaceChildren(item.review ? el("span", "flag", "flagged for review") : el("span", "ok", "not flagged"));
    call.replaceChildren();
    if (item.status === "unusable" || !item.label) {
      call.append(el("span", "error", "no class: the model found the image unusable"));
    } else {
      call.append(el("span", "label", item.label), ` ${pct(item.confidence)}`);
    }
    probs.replaceChildren();
    classes.forEach((name, i) => {
      const p = (item.probabilities || {})[name] || 0;
      const row = el("tr", name === item.label ? "top" : "");
      row.append(el("th", "", i < 9 ? `${i + 1} · ${name}` : name));
      const cell = el("td"), bar = el("div", "bar"), fill = el("span");
      fill.style.width = pct(p);  // CSSOM, allowed by the CSP (inline style attributes are not)
      bar.append(fill);
      cell.append(bar);
      row.append(cell, el("td", "num", pct(p)));
      probs.append(row);
    });
    reasons.replaceChildren();
    for (const reason of item.review_reasons || []) reasons.append(el("li", "", reason));
    if (!(item.review_reasons || []).length) reasons.append(el("li", "", "none"));
    const verdict = verdicts.get(item.id);
    doneNote.hidden = !verdict && !pending.has(item.id);
    doneNote.textContent = verdict
      ? `Verified as ${describeVerdict(verdict)} by ${verdict.user}; another key adds a verification that supersedes it.`
      : "Saving…";
    viewer.open(item, { scroll: false, focus: false });
    if (items[index + 1]) viewer.prefetch(items[index + 1]);
    if (index >= items.length - AHEAD && !exhausted) {  // read ahead once the verifications sent so far are in
      Promise.allSettled([...inflight]).then(() => load()).then(updatePosition);
    }
  }

  async function move(delta) {
    const target = Math.max(0, Math.min(items.length, index + delta));
    if (target >= items.length && delta > 0) {  // past the last one loaded: anything more, or anything new?
      await Promise.allSettled([...inflight]);
      if (!exhausted) await load();
      if (target >= items.length) await load(true);
    }
    index = Math.max(0, Math.min(items.length, target));
    render();
  }

  function submit(choice) {
    const item = items[index];
    if (!item || pending.has(item.id)) return;
    const body = { ...choice, comment: comment.value.trim() };
    comment.value = "";
    pending.add(item.id);
    const request = fetch(`/api/v1/${cells ? "cells" : "predictions"}/${encodeURIComponent(item.id)}/verifications`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body),
    }).then(async (response) => {
      if (response.status === 401) { toLogin(); return; }
      let answer = {};
      try { answer = await response.json(); } catch { /* not JSON */ }
      if (response.status !== 201) throw new Error(answer.detail || `HTTP ${response.status}`);
      verdicts.set(item.id, answer);
      verifiedHere++;
      setStatus(`${verifiedHere} verified on this page; last: ${item.file_name} as ${describeVerdict(answer)}.`);
    }).catch((err) => {
      setStatus(`Not saved: ${item.file_name}: ${err.message || err}. Go back (←) and verify it again.`, true);
    }).finally(() => {
      pending.delete(item.id);
      inflight.delete(request);
      if (items[index] === item) render();
    });
    inflight.add(request);
    move(1);
  }

  function confirmModel() {
    const item = items[index];
    if (!item) return;
    submit(item.label ? { label: item.label } : { unusable: true });
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target instanceof Element ? event.target : null;
    if (target === comment) {
      if (event.key === "Escape" || event.key === "Enter") { event.preventDefault(); comment.blur(); }
      return;  // typing a comment never triggers a key
    }
    if (target && target.closest("input, textarea, select, [contenteditable]")) return;
    if (target && target.closest("button, a, summary") && (event.key === "Enter" || event.key === " ")) return;
    const key = event.key;
    if (key === "ArrowRight" || key === "ArrowDown") { event.preventDefault(); move(1); return; }
    if (key === "ArrowLeft" || key === "ArrowUp") { event.preventDefault(); move(-1); return; }
    if (event.repeat || itemBox.hidden) return;  // a held key verifies once
    if (/^[1-9]$/.test(key) && Number(key) <= classes.length) {
      event.preventDefault();
      submit({ label: classes[Number(key) - 1] });
    } else if (key === "Enter") {
      event.preventDefault();
      confirmModel();
    } else if (key === "u" || key === "U") {
      event.preventDefault();
      submit({ unusable: true });
    }
  });

  root.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button") : null;
    if (!button || !root.contains(button)) return;
    if (button.dataset.verifyLabel !== undefined) submit({ label: button.dataset.verifyLabel });
    else if (button.dataset.verifyModel !== undefined) confirmModel();
    else if (button.dataset.verifyUnusable !== undefined) submit({ unusable: true });
    else return;
    button.blur();  // keys act on the worklist again, not on the clicked button
  });

  (async () => {
    await load();
    setStatus(awaiting ? `${awaiting} ${noun}${awaiting === 1 ? "" : "s"} await verification.` : "");
    render();
  })();
})();
