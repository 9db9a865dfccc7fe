// leukoscope Grad-CAM viewer, shared by the upload, history and verify pages: the image and its overlay side by
// side in the page (not a pop-up), each at the image's own size up to 1024 px a side. No inline script (CSP);
// every user-supplied string is written with textContent. `prefetch(info)` fetches an item's image and overlay
// ahead (the verify worklist asks for the next item's while the current one is on screen).
"use strict";

window.leukoscopeGradcam = (() => {
  const panel = document.getElementById("gradcam-panel");
  if (!panel) return { open() {}, prefetch() {} };
  const $ = (id) => document.getElementById(id);
  const original = $("gradcam-original"), overlay = $("gradcam-image");
  const caption = $("gradcam-caption"), overlayCaption = $("gradcam-overlay-caption");
  const objectUrls = new Map();
  const prefetched = new Map();  // url -> Promise of an object URL, handed over to the first open() that needs it
  const MAX_PREFETCHED = 8;
  let current = 0;

  const pct = (p) => `${(100 * p).toFixed(1)}%`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // An image from the API as an object URL; waits and retries when the server answers 503 (busy).
  async function fetchImage(url) {
    for (let attempt = 0; attempt < 10; attempt++) {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.status === 503) {
        await sleep((Number(response.headers.get("Retry-After")) || 2) * 1000);
        continue;
      }
      if (response.status === 401) {
        window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname)}`);
        throw new Error("log in first");
      }
      if (!response.ok) {
        let detail = `HTTP ${response.status}`;
        try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
        throw new Error(detail);
      }
      return URL.createObjectURL(await response.blob());
    }
    throw new Error("server busy: try again later");
  }

  // A prefetched image when there is one (taken out of the cache: open() now owns its object URL), else fetched now.
  function take(url) {
    const ready = prefetched.get(url);
    if (ready) { prefetched.delete(url); return ready; }
    return fetchImage(url);
  }

  function linksOf(info) {
    const base = `/api/v1/predictions/${encodeURIComponent(info.id)}`;
    const links = info.links || {};
    return { image: links.image || `${base}/image`, gradcam: links.gradcam || `${base}/gradcam` };
  }

  function prefetch(info) {
    for (const url of Object.values(linksOf(info))) {
      if (prefetched.has(url)) continue;
      const ready = fetchImage(url);
      ready.catch(() => prefetched.delete(url));  // a failure is reported when the item is opened
      prefetched.set(url, ready);
      while (prefetched.size > MAX_PREFETCHED) {
        const [oldest, promise] = prefetched.entries().next().value;
        prefetched.delete(oldest);
        promise.then((objectUrl) => URL.revokeObjectURL(objectUrl), () => undefined);
      }
    }
  }

  function show(img, url) {
    if (objectUrls.get(img)) URL.revokeObjectURL(objectUrls.get(img));
    objectUrls.set(img, url);
    img.src = url;
    img.hidden = false;
  }

  function describe(info) {
    const call = info.label ? `${info.label} (${pct(info.confidence || 0)})` : "no class";
    return `${info.file_name}: ${call}`;
  }

  function sizeNote(info) {
    if (!info.width || !overlay.naturalWidth) return "";
    const own = `${info.width}×${info.height} px`;
    return overlay.naturalWidth < info.width
      ? ` · image ${own}; original and overlay reduced to ${overlay.naturalWidth}×${overlay.naturalHeight} px`
      : ` · image ${own}; original and overlay at full resolution`;
  }

  // info: a prediction as the API gives it (id, file_name, label, confidence, width, height, links).
  // options.scroll / options.focus (default true): bring the panel into view and focus it.
  async function open(info, { scroll = true, focus = true } = {}) {
    const token = ++current;
    const links = linksOf(info);
    panel.hidden = false;
    original.hidden = true;
    overlay.hidden = true;
    caption.classList.remove("error");
    caption.textContent = `${describe(info)}. Computing Grad-CAM…`;
    overlayCaption.textContent = info.label ? `Grad-CAM overlay for ${info.label}` : "Grad-CAM overlay";
    if (scroll) panel.scrollIntoView({ block: "start", behavior: "smooth" });
    if (focus) panel.focus({ preventScroll: true });
    const left = take(links.image).then((url) => {
      if (token === current) show(original, url); else URL.revokeObjectURL(url);
    }, (err) => err);  // settled either way: an error is reported below, never left unhandled
    try {
      const url = await take(links.gradcam);
      if (token !== current) { URL.revokeObjectURL(url); return; }
      show(overlay, url);
      await overlay.decode().catch(() => undefined);
      const failed = await left;
      if (failed) throw failed;
      if (token === current) caption.textContent = describe(info) + sizeNote(info);
    } catch (err) {
      if (token !== current) return;
      caption.textContent = `${describe(info)}: ${err.message || err}`;
      caption.classList.add("error");
    }
  }

  function close() {
    current++;
    panel.hidden = true;
  }

  $("gradcam-close").addEventListener("click", close);
  panel.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
  // The history page's buttons carry the prediction in data- attributes.
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-gradcam-id]");
    if (!button) return;
    const d = button.dataset;
    open({ id: d.gradcamId, file_name: d.fileName, label: d.label || null, confidence: Number(d.confidence),
           width: Number(d.width), height: Number(d.height) });
  });
  return { open, prefetch };
})();
