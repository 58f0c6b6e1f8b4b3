// The demo page: choose, drop or paste images; each is sent to the public API in its own request and its top-k
// labels are shown as bars. Plain DOM code, no framework and no build step. Text from the server or from file
// names only ever goes into textContent, never into HTML.
"use strict";

(function () {
  const KEY_STORAGE = "resnet-serve.api-key"; // sessionStorage only: the key leaves with the tab
  const MAX_IN_FLIGHT = 4; // requests at once; the server batches what arrives together
  const DEFAULT_K = 5;
  const MAX_RETRIES = 3; // for a 503 that carries Retry-After
  const MAX_RETRY_WAIT_S = 5;

  const $ = (id) => document.getElementById(id);
  const modelSelect = $("model");
  const topKInput = $("top-k");
  const keyInput = $("api-key");
  const modelInfo = $("model-info");
  const notice = $("notice");
  const dropZone = $("drop-zone");
  const fileInput = $("file-input");
  const chooseButton = $("choose");
  const resultsBar = $("results-bar");
  const resultsList = $("results");
  const clearButton = $("clear");

  let models = []; // from GET /v1/models; empty until listed (then the default route is used)
  const items = []; // one per image on the page
  const queue = [];
  let inFlight = 0;
  let nextId = 1;

  // ------------------------------------------------------------------------------------------ formatting

  function formatBytes(count) {
    if (count < 1024) return `${count} bytes`;
    const units = ["KiB", "MiB", "GiB"];
    let value = count / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    const text = value >= 100 || Number.isInteger(value) ? value.toFixed(0) : value.toFixed(1);
    return `${text.replace(/\.0$/, "")} ${units[unit]}`;
  }

  function formatPercent(score) {
    const percent = score * 100;
    if (percent > 0 && percent < 0.05) return "<0.1%";
    if (percent < 100 && percent >= 99.95) return ">99.9%";
    return `${percent.toFixed(1)}%`;
  }

  function formatMs(ms) {
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------------------------------ the API

  function apiKey() {
    return keyInput.value.trim();
  }

  function headers() {
    const key = apiKey();
    return key ? { "X-API-Key": key } : {};
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  // fetch, then the JSON body (null if none). A 503 with Retry-After (the model's queue is full, it is still
  // starting, or this instance is draining and a load balancer sends the retry elsewhere) is retried as the header
  // asks, a few times, before it is returned; `onRetry(seconds)` says so meanwhile, `isWanted()` false stops it.
  async function callApi(url, options, onRetry, isWanted) {
    for (let attempt = 0; ; attempt += 1) {
      const started = performance.now();
      const response = await fetch(url, options());
      const body = await readJson(response);
      const retryAfter = (response.headers.get("Retry-After") || "").trim();
      if (response.status !== 503 || attempt >= MAX_RETRIES || !/^\d+$/.test(retryAfter) || !isWanted()) {
        return { response, body, roundTripMs: performance.now() - started };
      }
      const seconds = Math.min(Math.max(Number(retryAfter), 0.5), MAX_RETRY_WAIT_S);
      onRetry(seconds);
      await sleep(seconds * 1000);
      if (!isWanted()) return { response, body, roundTripMs: performance.now() - started };
    }
  }

  function firstNumber(pattern, text) {
    const match = pattern.exec(text || "");
    return match ? Number(match[1]) : null;
  }

  // A failed answer in plain words: {title, detail}. `detail` is the server's own message, for the curious.
  function describeError(status, body, file) {
    const error = body && typeof body.error === "object" && body.error ? body.error : {};
    const code = error.code || "";
    let message = typeof error.message === "string" ? error.message : "";
    if (!message && typeof body?.error === "string") message = body.error; // the Open Inference Protocol's shape
    const said = (title) => ({ title, detail: message });
    switch (status) {
      case 401:
        return apiKey()
          ? said("The API key was refused. Check the key in the API key field above and try again.")
          : said("This server needs an API key. Enter it in the API key field above.");
      case 403:
        return said("This API key is not allowed to do this. Ask the server's operator for a key that is.");
      case 404:
        return code === "model_not_found"
          ? said("This model is not served any more. Reload the page to see the models that are.")
          : said("The server has no such address; is it an older version of resnet-serve?");
      case 413: {
        if (code === "upload_too_large") {
          const limit = firstNumber(/limit of (\d+) bytes/, message);
          const size = file ? `; this file is ${formatBytes(file.size)}` : "";
          return said(limit !== null
            ? `This file is too large: the server accepts at most ${formatBytes(limit)} per request${size}.`
            : `This file is larger than the server accepts${size}.`);
        }
        if (code === "too_many_files") {
          const limit = firstNumber(/at most (\d+)/, message);
          return said(`Too many images in one request${limit !== null ? `: the server takes at most ${limit}` : ""}.`);
        }
        const pixels = firstNumber(/over the limit of (\d+)\s*$/, message);
        return said(pixels !== null
          ? `This image has too many pixels: the server decodes at most ${(pixels / 1e6).toLocaleString("en")} ` +
            "megapixels."
          : "This image is too large for the server to decode.");
      }
      case 415:
        return said("The server cannot read this file as an image. It reads JPEG, PNG, WebP, GIF, BMP and TIFF.");
      case 400:
        return code === "invalid_image"
          ? said("This file could not be decoded as an image: it may be damaged or cut short.")
          : said("The server could not read the request.");
      case 422:
        return said("The server refused the settings (the model or k).");
      case 429:
        return said("Too many requests for now. Wait a moment and try again.");
      case 503:
        if (code === "not_ready") return said("The model is still starting up. Try again in a few seconds.");
        if (code === "shutting_down") return said("The server is shutting down. Try again shortly.");
        return said("The server is busy right now. Try again in a moment.");
      case 504:
        return said("The server took too long to answer this image.");
      default:
        if (status >= 500) return said("The server failed on this image; the details are in its log.");
        return said(`The server answered with HTTP status ${status}.`);
    }
  }

  function showNotice(description) {
    notice.replaceChildren(element("strong", "", description.title));
    if (description.detail) notice.append(element("span", "detail", description.detail));
    notice.hidden = false;
  }

  function hideNotice() {
    notice.hidden = true;
    notice.replaceChildren();
  }

  // ------------------------------------------------------------------------------------------ models

  function selectedModel() {
    return models.find((model) => model.name === modelSelect.value) || null;
  }

  function describeModel(model) {
    if (!model) return "";
    const parts = [`version ${model.version}`, `${model.architecture} trained on ${model.dataset}`];
    const others = (model.versions || []).filter((entry) => entry.version !== model.version);
    if (others.length) parts.push(`also ${others.map((entry) => `version ${entry.version} (${entry.state})`).join(", ")}`);
    if (typeof model.test_accuracy === "number") parts.push(`${(model.test_accuracy * 100).toFixed(1)}% test accuracy`);
    parts.push(`${model.labels.length} classes`);
    parts.push(`${model.precision} on ${model.execution_provider.replace(/ExecutionProvider$/, "")}`);
    if (!model.ready) parts.push(model.state === "failed" ? "failed to load" : "still starting up");
    return parts.join(" · ");
  }

  function updateModelDetails() {
    const model = selectedModel();
    modelInfo.textContent = describeModel(model);
    if (model) {
      topKInput.max = String(model.labels.length);
      clampK();
    } else {
      topKInput.removeAttribute("max");
    }
  }

  let modelsRequest = 0;

  async function loadModels() {
    const request = (modelsRequest += 1);
    const wanted = () => request === modelsRequest; // a newer listing (a changed key) replaces this one
    let response;
    let body;
    try {
      const options = () => ({ headers: headers(), cache: "no-store" });
      ({ response, body } = await callApi("v1/models", options, () => {}, wanted));
    } catch (error) {
      if (!wanted()) return;
      showNotice({ title: "Could not reach the server to list its models. Is it running?", detail: String(error) });
      return;
    }
    if (!wanted()) return;
    if (!response.ok || !body || !Array.isArray(body.models)) {
      const description = response.ok
        ? { title: "The server's model list could not be read.", detail: "" }
        : describeError(response.status, body, null);
      const why = description.detail ? ` (${description.detail})` : "";
      showNotice({
        title: description.title,
        detail: `The models could not be listed${why}; images go to the server's default model.`,
      });
      return;
    }
    hideNotice();
    const previous = modelSelect.value;
    models = body.models;
    modelSelect.replaceChildren(
      ...models.map((model) => {
        const label = model.name === body.default_model ? `${model.name} (default)` : model.name;
        const option = element("option", "", label);
        option.value = model.name;
        return option;
      }),
    );
    const keep = models.some((model) => model.name === previous) ? previous : body.default_model;
    if (keep) modelSelect.value = keep;
    updateModelDetails();
  }

  function clampK() {
    const max = Number(topKInput.max) || Infinity;
    let k = Math.round(Number(topKInput.value));
    if (!Number.isFinite(k) || k < 1) k = Math.min(DEFAULT_K, max);
    if (k > max) k = max;
    if (String(k) !== topKInput.value) topKInput.value = String(k);
    return k;
  }

  // ------------------------------------------------------------------------------------------ images

  function classifyUrl() {
    const k = clampK();
    const model = modelSelect.value;
    const path = model ? `v1/models/${encodeURIComponent(model)}/classify` : "v1/classify";
    return `${path}?top_k=${k}`;
  }

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const cards = document.createDocumentFragment(); // the newest images on top, each batch in its own order
    for (const file of files) {
      const item = { id: nextId++, file, generation: 0, controller: null, lastStatus: null };
      item.card = buildCard(item);
      items.push(item);
      cards.append(item.card.root);
      enqueue(item);
    }
    resultsList.prepend(cards);
    resultsBar.hidden = false;
  }

  function buildCard(item) {
    const root = element("li", "result panel");
    root.dataset.state = "pending";
    const thumb = element("figure", "thumb");
    item.previewUrl = URL.createObjectURL(item.file);
    const image = element("img");
    image.alt = `Preview of ${item.file.name || "the pasted image"}`;
    image.decoding = "async";
    image.addEventListener("error", () => {
      thumb.replaceChildren(element("span", "no-preview", "No preview for this format in the browser"));
    });
    image.src = item.previewUrl;
    thumb.append(image);

    const body = element("div", "result-body");
    const head = element("div", "result-head");
    const name = element("h3", "filename", item.file.name || "pasted image");
    const meta = element("span", "meta", formatBytes(item.file.size));
    head.append(name, meta);
    const content = element("div", "result-content");
    body.append(head, content);
    root.append(thumb, body);
    return { root, meta, content };
  }

  function showPending(item, text = "Classifying…") {
    item.card.root.dataset.state = "pending";
    const status = element("p", "status");
    status.append(element("span", "spinner"), document.createTextNode(text));
    item.card.content.replaceChildren(status);
  }

  function showResult(item, body, roundTripMs) {
    const result = body.results[0];
    item.card.root.dataset.state = "done";
    const size = formatBytes(item.file.size);
    item.card.meta.textContent = `${result.width} × ${result.height} px · ${size} · ${body.model}`;
    const scores = element("ol", "scores");
    scores.setAttribute("aria-label", `Top ${result.top_k.length} labels`);
    result.top_k.forEach((entry, rank) => {
      const row = element("li", rank === 0 ? "score top" : "score");
      const bar = element("span", "bar");
      bar.setAttribute("aria-hidden", "true");
      const fill = element("span", "fill");
      fill.style.width = `${Math.max(0, Math.min(1, entry.score)) * 100}%`; // CSSOM, which the CSP allows
      bar.append(fill);
      row.append(element("span", "label", entry.label), element("span", "value", formatPercent(entry.score)), bar);
      scores.append(row);
    });
    const t = body.timings_ms;
    const timings = element(
      "p",
      "timings",
      `Server ${formatMs(t.total)}: preprocess ${formatMs(t.preprocess)}, queue ${formatMs(t.queue_wait)}, ` +
        `inference ${formatMs(t.inference)} · round trip ${formatMs(roundTripMs)}`,
    );
    item.card.content.replaceChildren(scores, timings);
  }

  function showError(item, description, status) {
    item.card.root.dataset.state = "error";
    const box = element("div", "error");
    box.setAttribute("role", "alert");
    box.append(element("strong", "", description.title));
    if (description.detail) box.append(element("span", "detail", description.detail));
    item.card.content.replaceChildren(box);
    // Only what may change by itself (or by a new key) is worth another try; a bad file stays bad.
    if (status === 0 || status === 401 || status === 403 || status === 429 || status >= 500) {
      const retry = element("button", "button retry", "Try again");
      retry.type = "button";
      retry.addEventListener("click", () => enqueue(item));
      const actions = element("p", "actions");
      actions.append(retry);
      item.card.content.append(actions);
    }
  }

  function enqueue(item) {
    item.generation += 1;
    if (item.controller) item.controller.abort(); // a newer request replaces an older one for the same image
    item.controller = null;
    showPending(item);
    if (!queue.includes(item)) queue.push(item);
    pump();
  }

  function pump() {
    while (inFlight < MAX_IN_FLIGHT && queue.length) {
      const item = queue.shift();
      inFlight += 1;
      classify(item).finally(() => {
        inFlight -= 1;
        pump();
      });
    }
  }

  async function classify(item) {
    const generation = item.generation;
    const current = () => generation === item.generation && items.includes(item); // not superseded nor cleared
    const controller = new AbortController();
    item.controller = controller;
    const options = () => {
      const form = new FormData();
      form.append("file", item.file, item.file.name || "pasted-image");
      return { method: "POST", body: form, headers: headers(), signal: controller.signal };
    };
    const waiting = (seconds) => showPending(item, `The server is busy; trying again in ${seconds} s…`);
    let answer;
    try {
      answer = await callApi(classifyUrl(), options, waiting, current);
    } catch (error) {
      if (!current()) return;
      item.lastStatus = 0;
      showError(item, { title: "Could not reach the server. Is it still running?", detail: String(error) }, 0);
      return;
    }
    if (!current()) return;
    const { response, body, roundTripMs } = answer;
    item.controller = null;
    item.lastStatus = response.status;
    if (response.ok && body && Array.isArray(body.results) && body.results.length) {
      showResult(item, body, roundTripMs);
    } else if (response.ok) {
      showError(item, { title: "The server's answer could not be read.", detail: "" }, response.status);
    } else {
      showError(item, describeError(response.status, body, item.file), response.status);
    }
  }

  function reclassifyAll() {
    for (const item of items) enqueue(item);
  }

  function clearAll() {
    queue.length = 0;
    for (const item of items) {
      if (item.controller) item.controller.abort();
      URL.revokeObjectURL(item.previewUrl);
    }
    items.length = 0;
    resultsList.replaceChildren();
    resultsBar.hidden = true;
    chooseButton.focus();
  }

  // ------------------------------------------------------------------------------------------ wiring

  function hasFiles(event) {
    return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
  }

  // Dropping anywhere on the page adds the images (and never navigates away to show the file).
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    dropZone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) dropZone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dropZone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData?.files || []);
    if (!files.length) return; // text pasted into a field stays text
    event.preventDefault();
    addFiles(files);
  });

  chooseButton.addEventListener("click", () => fileInput.click());
  dropZone.addEventListener("click", (event) => {
    if (event.target === dropZone || event.target.closest(".drop-icon, .drop-title")) fileInput.click();
  });
  fileInput.addEventListener("change", () => {
    addFiles(fileInput.files);
    fileInput.value = ""; // the same file can be chosen again
  });
  clearButton.addEventListener("click", clearAll);
  $("settings").addEventListener("submit", (event) => event.preventDefault()); // Enter in a field sends nothing

  modelSelect.addEventListener("change", () => {
    updateModelDetails();
    reclassifyAll();
  });
  topKInput.addEventListener("change", () => {
    clampK();
    reclassifyAll();
  });

  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => {
    const key = apiKey();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  keyInput.addEventListener("change", () => {
    loadModels();
    for (const item of items) if (item.lastStatus === 401 || item.lastStatus === 403) enqueue(item);
  });

  loadModels();
})();
