// leukoscope upload page: plain JavaScript, no framework, no inline script (the page's CSP forbids it).
// Every user-supplied string is written with textContent, never as HTML.
"use strict";

(() => {
  const app = document.getElementById("app");
  if (!app) return;
  const maxFiles = Number(app.dataset.maxFiles);
  const maxFileBytes = Number(app.dataset.maxFileBytes);
  const maxRequestBytes = Number(app.dataset.maxRequestBytes);
  const classes = JSON.parse(app.dataset.classes || "[]");
  const $ = (id) => document.getElementById(id);
  const input = $("file-input"), drop = $("drop"), status = $("status");
  const tbody = document.querySelector("#results tbody"), resultsSection = $("results-section");
  const summary = $("summary"), summaryText = $("summary-text"), summaryBody = document.querySelector("#summary-table tbody");
  const csvLink = $("csv-link");
  const cellsLink = $("cells-link");  // the sample's cell gallery (cells are found when it is first opened)
  let busy = false;

  const pct = (p) => `${(100 * p).toFixed(1)}%`;
  const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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

  function newSampleId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Split the files into requests that respect the server's count and size limits.
  function batches(files) {
    const out = [];
    let current = [], bytes = 0;
    for (const file of files) {
      if (current.length && (current.length >= maxFiles || bytes + file.size > maxRequestBytes * 0.95)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(file);
      bytes += file.size;
    }
    if (current.length) out.push(current);
    return out;
  }

  async function readJson(response) {
    try { return await response.json(); } catch { return { detail: `HTTP ${response.status}` }; }
  }

  async function postBatch(files, sampleId) {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    form.append("sample_id", sampleId);
    for (let attempt = 0; attempt < 10; attempt++) {
      const response = await fetch("/api/v1/predict", {
        method: "POST", body: form, credentials: "same-origin", headers: { Accept: "application/json" },
      });
      if (response.status === 503) {  // server saturated: wait as told, then retry
        const wait = Number(response.headers.get("Retry-After")) || 2;
        setStatus(`Server busy, retrying in ${wait} s…`);
        await sleep(wait * 1000);
        continue;
      }
      if (response.status === 401) {
        window.location.assign("/login?next=%2F");
        return [];
      }
      const body = await readJson(response);
      if (Array.isArray(body.results)) return body.results;
      const message = body.detail || `HTTP ${response.status}`;
      return files.map((file) => ({ file_name: file.name, ok: false, error: message }));
    }
    return files.map((file) => ({ file_name: file.name, ok: false, error: "server busy: try again later" }));
  }

  function probabilityTable(probabilities, top) {
    const table = el("table", "probs"), body = el("tbody");
    const names = classes.length ? classes : Object.keys(probabilities);
    for (const name of names) {
      const p = probabilities[name] || 0;
      const row = el("tr", name === top ? "top" : "");
      row.append(el("th", "", name));
      const cell = el("td"), bar = el("div", "bar"), fill = el("span");
      fill.style.width = pct(p);  // CSSOM, allowed by the CSP (inline style attributes are not)
      bar.append(fill);
      cell.append(bar);
      row.append(cell, el("td", "num", pct(p)));
      body.append(row);
    }
    table.append(body);
    return table;
  }

  // Review reasons in plain words; the numbers behind each (review_details, by code) show on hover.
  function reasonList(result) {
    const list = el("ul", "reasons");
    const codes = result.review_codes || [], details = result.review_details || {};
    result.review_reasons.forEach((reason, i) => {
      const item = el("li", "", reason);
      const numbers = details[codes[i]];
      if (numbers) item.title = Object.entries(numbers).map(([k, v]) => `${k}: ${v}`).join(", ");
      list.append(item);
    });
    return list;
  }

  function addRow(result) {
    const row = el("tr", result.ok ? "predicted" : "failed");
    const thumbCell = el("td");
    if (result.ok) {
      row.dataset.predictionId = String(result.id);
      const img = el("img", "thumb");
      img.src = result.links.thumbnail;
      img.alt = `thumbnail of ${result.file_name}`;
      img.title = "Show Grad-CAM";
      img.addEventListener("click", () => openGradcam(result));
      thumbCell.append(img);
    }
    row.append(thumbCell, el("td", "file", result.file_name));
    if (!result.ok) {
      row.append(el("td", "error", "not predicted"));
      const reason = el("td", "error", result.error || "unknown error");
      reason.colSpan = 3;
      row.append(reason);
      tbody.append(row);
      return;
    }
    if (result.status === "unusable") {  // read, but nothing to analyse: no class, only the reason
      row.className = "unusable";
      row.append(el("td", "error", "unusable: no class"));
      const reason = el("td");
      reason.append(reasonList(result));
      reason.colSpan = 3;
      row.append(reason);
      tbody.append(row);
      return;
    }
    const labelCell = el("td");
    labelCell.append(el("span", "label", result.label));
    labelCell.append(el("div", "muted small", pct(result.confidence)));
    const probCell = el("td");
    probCell.append(probabilityTable(result.probabilities, result.label));
    const reviewCell = el("td");
    if (result.review) {
      reviewCell.append(el("span", "flag", "review"), reasonList(result));
    } else {
      reviewCell.append(el("span", "ok", "no flag"));
    }
    const actionCell = el("td");
    const button = el("button", "secondary gradcam-button", "Grad-CAM");
    button.type = "button";
    button.addEventListener("click", () => openGradcam(result));
    actionCell.append(button);
    row.append(labelCell, probCell, reviewCell, actionCell);
    tbody.append(row);
  }

  // The viewer itself is static/gradcam.js (shared with the history page).
  function openGradcam(result) {
    window.leukoscopeGradcam.open(result);
  }

  async function showSummary(sampleId, failed) {
    const response = await fetch(`/api/v1/samples/${encodeURIComponent(sampleId)}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const s = await response.json();
    summaryText.replaceChildren(`${s.usable} image${s.usable === 1 ? "" : "s"} predicted · `);
    summaryText.append(el("strong", s.call === "leukemia" ? "call-leukemia" : "", `Sample call: ${s.headline}`));
    summaryText.append(" · ", s.summary);
    if (s.flagged_images) summaryText.append(` · ${s.flagged_images} flagged for review`);
    if (failed) summaryText.append(` · ${failed} not readable (not counted)`);
    if (s.review) {
      const list = el("ul", "reasons");
      for (const reason of s.review_reasons) list.append(el("li", "", reason));
      summaryText.append(" ", el("span", "flag", "review sample"), list);
    }
    summaryBody.replaceChildren();
    const table = probabilityTable(s.mean_probabilities, s.label);
    for (const row of table.querySelectorAll("tr")) {
      const name = row.querySelector("th").textContent;
      row.append(el("td", "muted", `${s.counts[name] || 0} image${s.counts[name] === 1 ? "" : "s"}`));
      summaryBody.append(row);
    }
    summary.hidden = false;
  }

  async function handleFiles(fileList) {
    const files = Array.from(fileList || []);
    if (busy || !files.length) return;
    busy = true;
    try {
      const sampleId = newSampleId();
      tbody.replaceChildren();
      summary.hidden = true;
      resultsSection.hidden = false;
      csvLink.href = `/api/v1/predictions.csv?sample_id=${sampleId}`;
      csvLink.hidden = true;
      cellsLink.href = `/cells?sample_id=${encodeURIComponent(sampleId)}`;
      cellsLink.hidden = true;
      let failed = 0, predicted = 0, unusable = 0, done = 0;
      const sendable = [];
      for (const file of files) {
        if (file.size > maxFileBytes) {
          addRow({ file_name: file.name, ok: false, error: `file too large (${mib(file.size)}; limit ${mib(maxFileBytes)})` });
          failed++;
        } else {
          sendable.push(file);
        }
      }
      for (const batch of batches(sendable)) {
        setStatus(`Predicting ${done + 1}–${done + batch.length} of ${sendable.length}…`);
        for (const result of await postBatch(batch, sampleId)) {
          addRow(result);
          if (!result.ok) failed++; else if (result.status === "unusable") unusable++; else predicted++;
        }
        done += batch.length;
      }
      csvLink.hidden = predicted + unusable === 0;
      cellsLink.hidden = csvLink.hidden;
      if (files.length > 1 && predicted + unusable > 0) await showSummary(sampleId, failed);
      setStatus(`${predicted} of ${files.length} image${files.length === 1 ? "" : "s"} predicted` +
                (unusable ? `, ${unusable} unusable (no class)` : "") + (failed ? `, ${failed} failed.` : "."),
                failed > 0 && predicted === 0);
    } catch (err) {
      setStatus(`Upload failed: ${err.message || err}`, true);
    } finally {
      busy = false;
      input.value = "";
    }
  }

  input.addEventListener("change", () => handleFiles(input.files));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => { event.preventDefault(); handleFiles(event.dataTransfer.files); });
  // A file dropped beside the zone must not make the browser navigate away from the results.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
})();
