/* The web UI: four panels over the HTTP API (/augment, /augment_batch, /classify, /generate). No build step, no dependencies. */
(() => {
  "use strict";

  const I18N = window.I18N;
  const MAX_BATCH_LINES = 50;
  const REQUEST_TIMEOUT_MS = 150000;
  const HEALTH_POLL_MS = 3000; // short enough to show a model replica's few seconds of recovery
  const LANG_KEY = "mt5-ui-lang";
  const API_KEY_KEY = "mt5-ui-api-key";
  const PANELS = ["augment", "batch", "classify", "generate"];
  const TASK_ORDER = ["sentiment", "keywords", "title", "summary", "opinion_target", "translation", "question_generation"];
  const PROMPT_TASK = "__prompt__";
  const SHORT_FIELDS = new Set(["answer"]);

  // Sampling controls; limits mirror the API's, but are only hints: out-of-range values are sent and the server's 422 is shown.
  const PARAMS = {
    num_return_sequences: { slug: "num", min: 1, max: 10, step: 1, value: 1, range: true },
    max_length: { slug: "max-length", min: 1, max: 512, step: 1, value: 128, range: true },
    temperature: { slug: "temperature", min: 0, max: 2, step: 0.05, value: "1.0", range: true },
    top_k: { slug: "top-k", min: 0, max: 1000, step: 1, value: 50, range: true },
    top_p: { slug: "top-p", min: 0.01, max: 1, step: 0.01, value: 0.95, range: true },
    seed: { slug: "seed", min: 0, value: null, range: false },
  };
  const SAMPLING = ["max_length", "temperature", "top_k", "top_p", "seed"];

  const state = {
    lang: "zh",
    panel: "augment",
    apiKey: "",
    busy: {},
    health: null,
    healthFailed: false,
    tasks: null,
    tasksError: null,
    genValues: {},
    labels: [],
    augment: null,
    batch: null,
    classify: null,
    generate: null,
  };

  // ------------------------------------------------------------------ helpers
  const $ = (id) => document.getElementById(id);

  function t(key, params) {
    const table = I18N[state.lang] || I18N.zh;
    let text = key in table ? table[key] : key in I18N.zh ? I18N.zh[key] : key;
    if (params) text = text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
    return text;
  }

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function percent(p) {
    if (!Number.isFinite(p)) return "–";
    const value = p * 100;
    if (value > 0 && value < 0.1) return "<0.1%";
    return `${value.toFixed(1)}%`;
  }

  function seconds(ms) {
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1);
  }

  // A message that is re-translated when the language changes: {key, params} kept on the element.
  function setMessage(node, key, params) {
    if (!node) return;
    if (!key) {
      delete node.dataset.msgKey;
      delete node.dataset.msgParams;
      node.textContent = "";
      return;
    }
    node.dataset.msgKey = key;
    node.dataset.msgParams = JSON.stringify(params || {});
    node.textContent = t(key, params);
  }

  // ------------------------------------------------------------------ HTTP
  class ApiError extends Error {
    constructor(kind, status, detail, retryAfter) {
      super(typeof detail === "string" ? detail : kind);
      this.kind = kind; // "http" | "network" | "timeout"
      this.status = status;
      this.detail = detail;
      this.retryAfter = retryAfter;
    }
  }

  // An integer too large for a JS number (a seed up to 2^63), written into the JSON as typed.
  class RawNumber {
    constructor(text) {
      this.text = text;
    }
  }

  function toJson(payload) {
    const raws = [];
    const json = JSON.stringify(payload, (key, value) => (value instanceof RawNumber ? `\u0000RAW${raws.push(value.text) - 1}\u0000` : value));
    return json.replace(/"\\u0000RAW(\d+)\\u0000"/g, (m, index) => raws[Number(index)]);
  }

  function apiKey() {
    try {
      return sessionStorage.getItem(API_KEY_KEY) || "";
    } catch (err) {
      return state.apiKey || "";
    }
  }

  async function api(method, path, payload) {
    const headers = { Accept: "application/json" };
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: payload === undefined ? undefined : toJson(payload),
        signal: controller.signal,
      });
    } catch (err) {
      throw err && err.name === "AbortError" ? new ApiError("timeout") : new ApiError("network", 0, (err && err.message) || String(err));
    } finally {
      clearTimeout(timer);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (err) {
      data = null;
    }
    if (response.ok) return data;
    const detail = data && "detail" in data ? data.detail : text || response.statusText;
    if (response.status === 401) showAuthBox();
    throw new ApiError("http", response.status, detail, response.headers.get("Retry-After"));
  }

  // ------------------------------------------------------------------ errors next to fields
  function fieldOf(input) {
    return input.closest(".field") || input.parentElement;
  }

  function clearErrors(panel) {
    const section = $(`panel-${panel}`);
    for (const node of section.querySelectorAll(".field-error")) {
      node.hidden = true;
      node.textContent = "";
      delete node.dataset.msgs;
    }
    for (const node of section.querySelectorAll(".has-error")) node.classList.remove("has-error");
    for (const node of section.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
    const panelError = $(`${panel}-error`);
    panelError.hidden = true;
    setMessage(panelError, null);
    if (panel === "batch") hideBatchMessage();
  }

  function clearFieldError(inputId) {
    const input = $(inputId);
    const node = $(`${inputId}-error`);
    if (node) {
      node.hidden = true;
      node.textContent = "";
      delete node.dataset.msgs;
    }
    if (input) {
      input.removeAttribute("aria-invalid");
      fieldOf(input).classList.remove("has-error");
    }
  }

  function renderFieldError(node) {
    const messages = JSON.parse(node.dataset.msgs || "[]");
    node.textContent = messages.map((m) => t(m.key, m.params)).join("\n");
  }

  function showFieldError(inputId, key, params) {
    const input = $(inputId);
    const node = $(`${inputId}-error`);
    if (!input || !node) return false;
    const messages = JSON.parse(node.dataset.msgs || "[]");
    messages.push({ key, params: params || {} });
    node.dataset.msgs = JSON.stringify(messages);
    renderFieldError(node);
    node.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", node.id);
    fieldOf(input).classList.add("has-error");
    const details = input.closest("details");
    if (details) details.open = true;
    return true;
  }

  function showPanelError(panel, key, params) {
    const node = $(`${panel}-error`);
    setMessage(node, key, params);
    node.hidden = false;
  }

  function focusFirstError(panel) {
    const first = $(`panel-${panel}`).querySelector("[aria-invalid='true']");
    if (first && typeof first.focus === "function") first.focus({ preventScroll: false });
  }

  // The input element a 422's `field` (a dotted path in the request body) belongs to, per panel.
  const FIELD_RESOLVERS = {
    augment(field) {
      const [root, sub, index] = field.split(".");
      if (root === "text") return { id: "aug-text" };
      if (root === "keep_label") {
        if (sub === "labels") {
          if (index !== undefined && /^\d+$/.test(index)) return { id: "aug-keep-labels", key: "error.label", params: { n: Number(index) + 1 } };
          return { id: "aug-keep-labels" };
        }
        if (sub === "label") return { id: "aug-keep-label-name" };
        return { id: "aug-keep-label" };
      }
      if (root === "max_candidates") return { id: "aug-max-candidates" };
      if (root === "min_distance") return { id: "aug-min-distance" };
      return PARAMS[root] ? { id: `aug-${PARAMS[root].slug}` } : null;
    },
    batch(field) {
      const [root, index] = field.split(".");
      if (root === "texts") {
        const lines = state.batchSent ? state.batchSent.map((item) => item.line) : [];
        if (index !== undefined && /^\d+$/.test(index)) {
          const line = lines[Number(index)] !== undefined ? lines[Number(index)] : Number(index) + 1;
          return { id: "batch-texts", key: "error.line", params: { n: line } };
        }
        return { id: "batch-texts" };
      }
      if (root === "num_return_sequences") return { id: "batch-num" };
      return PARAMS[root] ? { id: `batch-${PARAMS[root].slug}` } : null;
    },
    classify(field) {
      const [root, index] = field.split(".");
      if (root === "text") return { id: "cls-text" };
      if (root === "labels") {
        if (index !== undefined && /^\d+$/.test(index)) return { id: "cls-labels", key: "error.label", params: { n: Number(index) + 1 } };
        return { id: "cls-labels" };
      }
      if (root === "mode") return { id: "cls-mode" };
      return null;
    },
    generate(field) {
      const parts = field.split(".");
      const root = parts[0];
      if (root === "task") return { id: "gen-task" };
      if (root === "fields" && parts[1] && $(`gen-field-${parts[1]}`)) return { id: `gen-field-${parts[1]}` };
      if (PARAMS[root] && root !== "num_return_sequences") return { id: `gen-${PARAMS[root].slug}` };
      if ($(`gen-field-${root}`)) return { id: `gen-field-${root}` };
      return null;
    },
  };

  function detailText(detail) {
    if (detail === null || detail === undefined) return "";
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  }

  function handleError(panel, err) {
    if (!(err instanceof ApiError)) {
      showPanelError(panel, "error.network", { msg: String((err && err.message) || err) });
      return;
    }
    if (err.kind === "timeout") return showPanelError(panel, "error.timeout");
    if (err.kind === "network") return showPanelError(panel, "error.network", { msg: detailText(err.detail) });
    if (err.status === 422 && Array.isArray(err.detail)) {
      for (const item of err.detail) {
        const field = String((item && item.field) || "body");
        const msg = String((item && item.msg) || "invalid");
        const target = FIELD_RESOLVERS[panel](field);
        const shown = target && showFieldError(target.id, target.key || "{msg}", { ...(target.params || {}), msg });
        if (!shown) showPanelError(panel, "error.field", { field, msg });
      }
      focusFirstError(panel);
      return;
    }
    const msg = detailText(err.detail);
    if (err.status === 401) return showPanelError(panel, "error.401");
    if (err.status === 413) return showPanelError(panel, "error.413", { msg });
    if (err.status === 503) return showPanelError(panel, "error.503", { s: err.retryAfter || 1, msg });
    if (err.status === 504) return showPanelError(panel, "error.504", { msg });
    showPanelError(panel, "error.status", { status: err.status, msg });
  }

  // ------------------------------------------------------------------ sampling controls
  function buildParams(container) {
    const prefix = container.dataset.prefix;
    const defaults = container.dataset.defaults ? JSON.parse(container.dataset.defaults) : {};
    container.classList.add("param-grid");
    for (const name of container.dataset.params.split(/\s+/)) {
      const spec = PARAMS[name];
      const id = `${prefix}-${spec.slug}`;
      const value = name in defaults ? defaults[name] : spec.value;
      const number = h("input", {
        id,
        "data-testid": id,
        "data-param": name,
        type: "number",
        inputmode: spec.step === 1 ? "numeric" : "decimal",
        step: spec.step || 1,
        min: spec.min,
        max: spec.max,
        value: value === null ? null : value,
        class: "num-input",
      });
      if (name === "seed") number.dataset.i18nPlaceholder = "placeholder.seed";
      const controls = [number];
      if (spec.range) {
        const range = h("input", {
          id: `${id}-range`,
          type: "range",
          min: spec.min,
          max: spec.max,
          step: spec.step,
          value,
          tabindex: "-1",
          "aria-hidden": "true",
          class: "range-input",
        });
        range.addEventListener("input", () => {
          number.value = range.value;
          clearFieldError(id);
        });
        number.addEventListener("input", () => {
          const parsed = Number(number.value);
          if (number.value !== "" && Number.isFinite(parsed)) range.value = String(parsed);
        });
        controls.unshift(range);
      }
      number.addEventListener("input", () => clearFieldError(id));
      const hintKey = prefix === "gen" && name === "temperature" ? "hint.temperature.generate" : `hint.${name}`;
      container.append(
        h(
          "div",
          { class: `field param param-${spec.slug}`, "data-param": name },
          h("label", { for: id, "data-i18n": `param.${name}` }, t(`param.${name}`)),
          h("div", { class: spec.range ? "control-row" : "control-row single" }, controls),
          h("p", { class: "hint", id: `${id}-hint`, "data-i18n": hintKey }, t(hintKey)),
          h("p", { class: "field-error", id: `${id}-error`, "data-testid": `error-${id}`, role: "alert", hidden: true }),
        ),
      );
    }
  }

  // A number box's value: undefined when empty (the server's default applies) or not a number (a problem is noted).
  function readNumber(id, problems) {
    const input = $(id);
    if (!input) return undefined;
    if (input.validity && input.validity.badInput) {
      problems.push([id, "error.notNumber"]);
      return undefined;
    }
    const raw = input.value.trim();
    if (raw === "") return undefined;
    const value = Number(raw);
    if (!Number.isFinite(value)) {
      problems.push([id, "error.notNumber"]);
      return undefined;
    }
    return /^\d+$/.test(raw) && !Number.isSafeInteger(value) ? new RawNumber(raw) : value;
  }

  // The sampling fields the user filled in; empty ones are left out so the server's defaults apply.
  function readParams(prefix, names, problems) {
    const payload = {};
    for (const name of names) {
      const value = readNumber(`${prefix}-${PARAMS[name].slug}`, problems);
      if (value !== undefined) payload[name] = value;
    }
    return payload;
  }

  function showProblems(panel, problems) {
    for (const [id, key, params] of problems) showFieldError(id, key, params);
    focusFirstError(panel);
  }

  // ------------------------------------------------------------------ busy state
  const SUBMIT_IDS = { augment: "aug-submit", batch: "batch-submit", classify: "cls-submit", generate: "gen-submit" };

  function setBusy(panel, busy) {
    state.busy[panel] = busy;
    const button = $(SUBMIT_IDS[panel]);
    button.disabled = busy;
    button.classList.toggle("is-loading", busy);
    button.setAttribute("aria-busy", busy ? "true" : "false");
    $(`panel-${panel}`).setAttribute("aria-busy", busy ? "true" : "false");
  }

  // On a phone the results sit below the form: bring them into view once they arrive.
  function revealResults(panel) {
    if (window.matchMedia && window.matchMedia("(max-width: 900px)").matches) {
      const card = $(`panel-${panel}`).querySelector(".results-card");
      if (card && card.getBoundingClientRect().top > window.innerHeight * 0.6) card.scrollIntoView({ behavior: "smooth", block: "start" });
    }
  }

  async function run(panel, work) {
    if (state.busy[panel]) return;
    setBusy(panel, true);
    try {
      await work();
      revealResults(panel);
    } catch (err) {
      handleError(panel, err);
    } finally {
      setBusy(panel, false);
    }
  }

  // ------------------------------------------------------------------ copying and downloading
  async function copyText(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return true;
      }
    } catch (err) {
      /* fall back below */
    }
    const area = h("textarea", { readonly: true, style: "position:fixed;top:-1000px;left:-1000px;opacity:0" });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (err) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  function flash(button, key, params) {
    const original = button.dataset.i18n;
    button.textContent = t(key, params);
    button.classList.add("flashed");
    clearTimeout(button._flashTimer);
    button._flashTimer = setTimeout(() => {
      button.classList.remove("flashed");
      if (original) button.textContent = t(original);
    }, 1600);
  }

  function copyButton(text) {
    const button = h("button", { type: "button", class: "btn btn-small copy-btn", "data-testid": "copy-button", "data-i18n": "common.copy" }, t("common.copy"));
    button.addEventListener("click", async () => flash(button, (await copyText(text)) ? "common.copied" : "common.copyFailed"));
    return button;
  }

  function download(filename, mime, content) {
    const url = URL.createObjectURL(new Blob([content], { type: mime }));
    const link = h("a", { href: url, download: filename, style: "display:none" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function stamp() {
    const d = new Date();
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
  }

  function csvCell(value) {
    const text = String(value);
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  // ------------------------------------------------------------------ results lists
  function resultItem(text, testid) {
    return h("li", { class: "result-item", "data-testid": testid }, h("span", { class: "result-text" }, text), copyButton(text));
  }

  function metaLine(node, parts) {
    node.replaceChildren(...parts.filter(Boolean).map((part) => (part instanceof Node ? part : h("span", {}, part))));
  }

  function truncatedBadge() {
    return h("span", { class: "badge badge-warn", "data-testid": "truncated" }, t("common.truncated"));
  }

  // ------------------------------------------------------------------ single augmentation
  const KEEP_INPUTS = ["aug-keep-labels", "aug-keep-label-name", "aug-min-distance", "aug-max-candidates"];

  // The "keep the label" switch shows its fields; switched off, their errors go and nothing of them is sent.
  function syncKeepLabel() {
    const on = $("aug-keep-label").checked;
    $("aug-keep-fields").hidden = !on;
    $("aug-keep-label").setAttribute("aria-expanded", on ? "true" : "false");
    if (!on) for (const id of ["aug-keep-label", ...KEEP_INPUTS]) clearFieldError(id);
  }

  function setupKeepLabel() {
    $("aug-keep-label").addEventListener("change", () => {
      clearFieldError("aug-keep-label");
      syncKeepLabel();
    });
    for (const id of KEEP_INPUTS) $(id).addEventListener("input", () => clearFieldError(id));
    // the label must be among the labels: changing the labels may settle the label's error too
    $("aug-keep-labels").addEventListener("input", () => clearFieldError("aug-keep-label-name"));
    syncKeepLabel();
  }

  // keep_label, min_distance and max_candidates, only while the switch is on (off: the request is as before).
  function readChecks(problems) {
    if (!$("aug-keep-label").checked) return {};
    const labels = [];
    for (const label of splitLabels($("aug-keep-labels").value)) if (label && !labels.includes(label)) labels.push(label);
    if (labels.length < 2) problems.push(["aug-keep-labels", "classify.needLabels"]);
    const keep = { labels };
    const label = $("aug-keep-label-name").value.trim();
    if (label) keep.label = label; // empty: the text's own top label
    const checks = { keep_label: keep };
    const minDistance = readNumber("aug-min-distance", problems);
    if (minDistance !== undefined) checks.min_distance = minDistance;
    const maxCandidates = readNumber("aug-max-candidates", problems);
    if (maxCandidates !== undefined) checks.max_candidates = maxCandidates;
    return checks;
  }

  function submitAugment() {
    clearErrors("augment");
    const text = $("aug-text").value.trim();
    const problems = [];
    if (!text) problems.push(["aug-text", "error.required"]);
    const params = readParams("aug", ["num_return_sequences", ...SAMPLING], problems);
    const checks = readChecks(problems);
    if (problems.length) return showProblems("augment", problems);
    return run("augment", async () => {
      const started = performance.now();
      const data = await api("POST", "/augment", { text, ...params, ...checks });
      state.augment = {
        texts: data.augmented_texts || [],
        truncated: !!data.truncated,
        label: typeof data.label === "string" ? data.label : null,
        labelScores: Array.isArray(data.label_scores) ? data.label_scores : null,
        candidates: data.candidates || null,
        ms: performance.now() - started,
      };
      renderAugment();
    });
  }

  function augmentItem(text, label, score) {
    if (typeof score !== "number") return resultItem(text, "aug-result");
    return h(
      "li",
      { class: "result-item", "data-testid": "aug-result" },
      h(
        "div",
        { class: "result-body" },
        h("span", { class: "result-text" }, text),
        h(
          "span",
          { class: "label-score", "data-testid": "aug-label-score", "data-label": label, "data-score": score, title: t("augment.labelScoreTitle", { label }) },
          h("span", { class: "label-score-name" }, label),
          " ",
          h("span", { class: "label-score-value" }, percent(score)),
        ),
      ),
      copyButton(text),
    );
  }

  function renderAugment() {
    const result = state.augment;
    const list = $("aug-results");
    if (!result) return;
    $("aug-empty").hidden = true;
    const scores = result.labelScores;
    list.replaceChildren(...result.texts.map((text, index) => augmentItem(text, result.label, scores ? scores[index] : undefined)));
    const counts = result.candidates;
    if (!result.texts.length) list.append(h("li", { class: "result-none" }, t(counts ? "augment.noneKept" : "common.noResults")));
    let kept = null;
    if (counts) {
      const params = { label: result.label, kept: counts.kept, tried: counts.tried };
      kept = h(
        "span",
        {
          class: "kept-meta",
          "data-testid": "aug-kept-meta",
          "data-label": result.label,
          "data-asked": counts.asked,
          "data-tried": counts.tried,
          "data-kept": counts.kept,
          "data-max-candidates": counts.max_candidates,
          title: t("augment.counts", counts),
        },
        t(result.label !== null ? "augment.kept" : "augment.keptNoLabel", params),
      );
    }
    metaLine($("aug-meta"), [
      kept || t("augment.count", { n: result.texts.length }),
      t("common.elapsed", { s: seconds(result.ms) }),
      result.truncated && truncatedBadge(),
    ]);
    const note = $("aug-shortfall");
    if (counts && counts.kept < counts.asked) setMessage(note, "augment.shortfall", { ...counts, max: counts.max_candidates });
    else setMessage(note, null);
    note.hidden = !(counts && counts.kept < counts.asked);
  }

  // ------------------------------------------------------------------ batch augmentation
  function batchLines() {
    const items = [];
    $("batch-texts")
      .value.split(/\r?\n/)
      .forEach((line, index) => {
        const text = line.trim();
        if (text) items.push({ text, line: index + 1 });
      });
    return items;
  }

  function showBatchMessage(key, params) {
    const node = $("batch-message");
    setMessage(node, key, params);
    node.hidden = false;
    $("batch-texts").classList.add("over-limit");
  }

  function hideBatchMessage() {
    const node = $("batch-message");
    node.hidden = true;
    setMessage(node, null);
    $("batch-texts").classList.remove("over-limit");
  }

  function updateBatchCount() {
    const n = batchLines().length;
    const counter = $("batch-count");
    counter.textContent = `${n} / ${MAX_BATCH_LINES}`;
    counter.classList.toggle("over", n > MAX_BATCH_LINES);
    if (n > MAX_BATCH_LINES) showBatchMessage("batch.tooMany", { n, extra: n - MAX_BATCH_LINES });
    else if ($("batch-message").dataset.msgKey === "batch.tooMany" || (n > 0 && $("batch-message").dataset.msgKey === "batch.empty")) hideBatchMessage();
  }

  function submitBatch() {
    clearErrors("batch");
    const items = batchLines();
    if (!items.length) {
      showBatchMessage("batch.empty");
      $("batch-texts").focus();
      return undefined;
    }
    if (items.length > MAX_BATCH_LINES) {
      // Over the limit: say so and send nothing.
      showBatchMessage("batch.tooMany", { n: items.length, extra: items.length - MAX_BATCH_LINES });
      $("batch-texts").focus();
      return undefined;
    }
    const problems = [];
    const params = readParams("batch", SAMPLING, problems);
    if (problems.length) return showProblems("batch", problems);
    const num = Number($("batch-num").value);
    state.batchSent = items;
    return run("batch", async () => {
      const started = performance.now();
      const data = await api("POST", "/augment_batch", { texts: items.map((item) => item.text), num_return_sequences: num, ...params });
      state.batch = {
        items,
        outputs: data.augmented_texts || [],
        truncated: data.truncated || [],
        ms: performance.now() - started,
      };
      renderBatch();
    });
  }

  function renderBatch() {
    const result = state.batch;
    if (!result) return;
    $("batch-empty").hidden = true;
    const groups = result.items.map((item, index) => {
      const outputs = result.outputs[index] || [];
      const list = h("ol", { class: "result-list compact" }, outputs.map((text) => resultItem(text, "batch-result")));
      if (!outputs.length) list.append(h("li", { class: "result-none" }, t("common.noResults")));
      return h(
        "div",
        { class: "batch-group", "data-testid": "batch-group", "data-index": index, "data-line": item.line },
        h(
          "div",
          { class: "group-head" },
          h("span", { class: "group-num" }, t("batch.group", { n: item.line })),
          result.truncated[index] ? truncatedBadge() : null,
        ),
        h("p", { class: "group-source", "data-testid": "batch-source" }, h("span", { class: "source-tag" }, t("batch.source")), h("span", { class: "source-text" }, item.text)),
        list,
      );
    });
    $("batch-results").replaceChildren(...groups);
    const total = result.outputs.reduce((sum, list) => sum + list.length, 0);
    metaLine($("batch-meta"), [t("batch.summary", { n: result.items.length, m: total }), t("common.elapsed", { s: seconds(result.ms) })]);
    for (const id of ["batch-copy-all", "batch-download-jsonl", "batch-download-csv"]) $(id).disabled = false;
  }

  function batchRows() {
    const result = state.batch;
    return result.items.map((item, index) => ({
      line: item.line,
      text: item.text,
      augmented_texts: result.outputs[index] || [],
      truncated: !!result.truncated[index],
    }));
  }

  async function copyAllBatch() {
    if (!state.batch) return;
    const lines = [];
    for (const row of batchRows()) for (const text of row.augmented_texts) lines.push(`${row.text}\t${text}`);
    const ok = await copyText(lines.join("\n"));
    flash($("batch-copy-all"), ok ? "batch.copiedAll" : "common.copyFailed", { n: lines.length });
  }

  function downloadJsonl() {
    if (!state.batch) return;
    const body = batchRows()
      .map((row) => JSON.stringify(row))
      .join("\n");
    download(`augment-batch-${stamp()}.jsonl`, "application/x-ndjson;charset=utf-8", `${body}\n`);
  }

  function downloadCsv() {
    if (!state.batch) return;
    const lines = [["line", "text", "variant", "augmented_text", "truncated"].join(",")];
    for (const row of batchRows()) {
      row.augmented_texts.forEach((text, i) => lines.push([row.line, row.text, i + 1, text, row.truncated].map(csvCell).join(",")));
    }
    // BOM so spreadsheet programs read the Chinese text as UTF-8.
    download(`augment-batch-${stamp()}.csv`, "text/csv;charset=utf-8", `\uFEFF${lines.join("\r\n")}\r\n`);
  }

  // ------------------------------------------------------------------ labels as tags
  function splitLabels(text) {
    return text.split(/[,，]/).map((s) => s.trim());
  }

  function addLabel(label) {
    const text = label.trim();
    if (!text || state.labels.includes(text)) return false;
    state.labels.push(text);
    return true;
  }

  function commitPendingLabels() {
    const input = $("cls-labels");
    const parts = splitLabels(input.value);
    let changed = false;
    for (const part of parts) changed = addLabel(part) || changed;
    input.value = "";
    if (changed) {
      renderTags();
      clearFieldError("cls-labels");
    }
  }

  function renderTags() {
    const tags = state.labels.map((label, index) =>
      h(
        "li",
        { class: "tag", "data-testid": "label-tag" },
        h("span", { class: "tag-text" }, label),
        h(
          "button",
          {
            type: "button",
            class: "tag-remove",
            "aria-label": t("classify.removeLabel", { label }),
            onclick: () => {
              state.labels.splice(index, 1);
              renderTags();
              $("cls-labels").focus();
            },
          },
          "×",
        ),
      ),
    );
    $("cls-tags").replaceChildren(...tags);
  }

  function setupLabelInput() {
    const input = $("cls-labels");
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        commitPendingLabels();
      } else if (event.key === "Backspace" && input.value === "" && state.labels.length) {
        state.labels.pop();
        renderTags();
      }
    });
    input.addEventListener("input", () => {
      if (!/[,，]/.test(input.value)) return;
      const parts = splitLabels(input.value);
      const rest = parts.pop();
      let changed = false;
      for (const part of parts) changed = addLabel(part) || changed;
      input.value = rest;
      if (changed) {
        renderTags();
        clearFieldError("cls-labels");
      }
    });
    input.addEventListener("blur", commitPendingLabels);
    $("cls-labels-box").addEventListener("click", (event) => {
      if (event.target === event.currentTarget || event.target.id === "cls-tags") input.focus();
    });
  }

  // ------------------------------------------------------------------ classification
  function classifyMode() {
    return $("cls-mode-generate").checked ? "generate" : "score";
  }

  function submitClassify() {
    clearErrors("classify");
    commitPendingLabels();
    const text = $("cls-text").value.trim();
    const problems = [];
    if (!text) problems.push(["cls-text", "error.required"]);
    if (state.labels.length < 2) problems.push(["cls-labels", "classify.needLabels"]);
    if (problems.length) return showProblems("classify", problems);
    const mode = classifyMode();
    const labels = state.labels.slice();
    return run("classify", async () => {
      const started = performance.now();
      const data = await api("POST", "/classify", { text, labels, mode });
      state.classify = { mode, data, labels, ms: performance.now() - started };
      renderClassify();
    });
  }

  function renderClassify() {
    const result = state.classify;
    if (!result) return;
    const { data, mode } = result;
    $("cls-empty").hidden = true;
    $("cls-result").hidden = false;
    const top = $("cls-top-label");
    const generatedBox = $("cls-generated-box");
    const barsBox = $("cls-bars-box");
    if (mode === "score") {
      top.textContent = data.label;
      top.classList.remove("muted");
      $("cls-top-score").textContent = t("classify.confidence", { p: percent(data.scores[0]) });
      generatedBox.hidden = true;
      barsBox.hidden = false;
      const rows = data.labels.map((label, index) => {
        const p = data.scores[index];
        const width = Math.max(0, Math.min(100, p * 100));
        return h(
          "div",
          { class: index === 0 ? "bar-row best" : "bar-row", role: "listitem", "data-testid": "cls-bar", "data-label": label, "data-score": p, "aria-label": `${label} ${percent(p)}` },
          h("span", { class: "bar-label", title: label }, label),
          h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: `width:${width.toFixed(2)}%` })),
          h("span", { class: "bar-value" }, percent(p)),
        );
      });
      $("cls-bars").replaceChildren(...rows);
    } else {
      const isCandidate = data.label !== null && data.label !== undefined;
      top.textContent = isCandidate ? data.label : t("classify.noLabel");
      top.classList.toggle("muted", !isCandidate);
      $("cls-top-score").textContent = "";
      generatedBox.hidden = false;
      barsBox.hidden = true;
      $("cls-generated").textContent = data.generated;
      const badge = $("cls-candidate");
      badge.textContent = isCandidate ? t("classify.isCandidate") : t("classify.notCandidate");
      badge.className = isCandidate ? "badge badge-ok" : "badge badge-warn";
      badge.dataset.candidate = String(isCandidate);
    }
    metaLine($("cls-meta"), [t("common.elapsed", { s: seconds(result.ms) }), data.truncated && truncatedBadge()]);
  }

  // ------------------------------------------------------------------ model-card tasks
  function sortTasks(tasks) {
    const rank = (name) => (TASK_ORDER.includes(name) ? TASK_ORDER.indexOf(name) : TASK_ORDER.length);
    return tasks.slice().sort((a, b) => rank(a.name) - rank(b.name) || a.name.localeCompare(b.name));
  }

  function taskLabel(name) {
    const key = `task.${name}`;
    const label = t(key);
    return label === key ? name : label;
  }

  function fieldLabel(name) {
    const key = `field.${name}`;
    const label = t(key);
    return label === key ? name : label;
  }

  async function loadTasks() {
    const status = $("gen-tasks-status");
    setMessage(status, "generate.loadingTasks");
    status.hidden = false;
    status.classList.remove("is-error");
    state.tasksError = null;
    try {
      const data = await api("GET", "/tasks");
      state.tasks = sortTasks(data.tasks || []);
      setMessage(status, null);
      status.hidden = true;
      renderTaskOptions();
      renderGenFields();
    } catch (err) {
      state.tasksError = err;
      setMessage(status, "generate.tasksFailed", { msg: err instanceof ApiError ? `${err.status || ""} ${detailText(err.detail)}`.trim() : String(err) });
      status.classList.add("is-error");
      status.append(" ", h("button", { type: "button", class: "btn btn-link", onclick: loadTasks }, t("generate.retry")));
      renderTaskOptions();
    }
  }

  function currentTask() {
    const name = $("gen-task").value;
    if (name === PROMPT_TASK) return { name: PROMPT_TASK, fields: ["prompt"], template: "{prompt}" };
    return (state.tasks || []).find((task) => task.name === name) || null;
  }

  function renderTaskOptions() {
    const select = $("gen-task");
    const previous = select.value;
    const options = (state.tasks || []).map((task) => h("option", { value: task.name }, taskLabel(task.name)));
    options.push(h("option", { value: PROMPT_TASK }, t("generate.customPrompt")));
    select.replaceChildren(...options);
    if (previous && [...select.options].some((option) => option.value === previous)) select.value = previous;
  }

  function saveGenValues() {
    for (const input of $("gen-fields").querySelectorAll("[data-field]")) state.genValues[input.dataset.field] = input.value;
  }

  function renderGenFields() {
    saveGenValues();
    const task = currentTask();
    const container = $("gen-fields");
    if (!task) {
      container.replaceChildren();
      $("gen-template-box").hidden = true;
      return;
    }
    const fields = task.fields.map((name) => {
      const id = `gen-field-${name}`;
      const known = `field.${name}` in I18N.zh;
      const control = SHORT_FIELDS.has(name)
        ? h("input", { id, type: "text", "data-testid": id, "data-field": name, autocomplete: "off" })
        : h("textarea", { id, rows: name === "passage" || name === "prompt" ? 5 : 4, "data-testid": id, "data-field": name });
      control.value = state.genValues[name] || "";
      control.addEventListener("input", () => clearFieldError(id));
      return h(
        "div",
        { class: "field", "data-gen-field": name },
        h("label", { for: id, "data-i18n": known ? `field.${name}` : null }, fieldLabel(name)),
        control,
        h("p", { class: "field-error", id: `${id}-error`, "data-testid": `error-${id}`, role: "alert", hidden: true }),
      );
    });
    container.replaceChildren(...fields);
    const showTemplate = task.name !== PROMPT_TASK;
    $("gen-template-box").hidden = !showTemplate;
    $("gen-template").textContent = showTemplate ? task.template : "";
  }

  function submitGenerate() {
    clearErrors("generate");
    const task = currentTask();
    const problems = [];
    if (!task) {
      problems.push(["gen-task", "error.required"]);
      return showProblems("generate", problems);
    }
    const payload = task.name === PROMPT_TASK ? {} : { task: task.name };
    const custom = {};
    for (const name of task.fields) {
      const input = $(`gen-field-${name}`);
      const value = input ? input.value.trim() : "";
      if (!value) problems.push([`gen-field-${name}`, "error.required"]);
      if (["text", "passage", "answer", "prompt"].includes(name)) payload[name] = value;
      else custom[name] = value;
    }
    if (Object.keys(custom).length) payload.fields = custom;
    Object.assign(payload, readParams("gen", SAMPLING, problems));
    if (problems.length) return showProblems("generate", problems);
    return run("generate", async () => {
      const started = performance.now();
      const data = await api("POST", "/generate", payload);
      state.generate = { data, ms: performance.now() - started };
      renderGenerate();
    });
  }

  function renderGenerate() {
    const result = state.generate;
    if (!result) return;
    const { data } = result;
    $("gen-empty").hidden = true;
    $("gen-result").hidden = false;
    $("gen-output").textContent = data.text;
    metaLine($("gen-meta"), [data.task ? taskLabel(data.task) : t("generate.customPrompt"), t("common.elapsed", { s: seconds(result.ms) }), data.truncated && truncatedBadge()]);
  }

  // ------------------------------------------------------------------ health and the demo banner
  async function loadHealth() {
    const badge = $("model-info");
    try {
      const data = await api("GET", "/healthz");
      state.health = data;
      state.healthFailed = false;
      $("model-name").textContent = data.model;
      badge.dataset.state = data.demo ? "demo" : "ok";
      badge.title = t("model.details", { device: data.device, dtype: data.dtype });
      $("demo-banner").hidden = !data.demo;
    } catch (err) {
      state.healthFailed = true;
      if (err.status === 503) {
        // the service answers but no model replica runs (starting, crashed, being replaced)
        badge.dataset.state = "unavailable";
        badge.title = typeof err.detail === "string" ? err.detail : "";
        setMessage($("model-name"), "model.unavailable");
      } else {
        badge.dataset.state = "error";
        setMessage($("model-name"), "model.unreachable");
      }
    }
  }

  // The badge follows the model: unavailable while no model replica runs, back when one does.
  function watchHealth() {
    setTimeout(async () => {
      await loadHealth();
      watchHealth();
    }, HEALTH_POLL_MS);
  }

  // ------------------------------------------------------------------ API key (only when the service asks for one)
  function showAuthBox() {
    $("auth-box").hidden = false;
  }

  function saveApiKey() {
    const key = $("api-key").value.trim();
    state.apiKey = key;
    try {
      if (key) sessionStorage.setItem(API_KEY_KEY, key);
      else sessionStorage.removeItem(API_KEY_KEY);
    } catch (err) {
      /* storage off: state.apiKey is used */
    }
    $("api-key").value = "";
    $("auth-box").hidden = true;
    if (!state.tasks) loadTasks();
  }

  // ------------------------------------------------------------------ language
  function applyLang() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.title = t("app.docTitle");
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
    for (const node of document.querySelectorAll("[data-i18n-title]")) node.title = t(node.dataset.i18nTitle);
    for (const node of document.querySelectorAll("[data-i18n-aria-label]")) node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel));
    for (const node of document.querySelectorAll("[data-msg-key]")) node.textContent = t(node.dataset.msgKey, JSON.parse(node.dataset.msgParams || "{}"));
    for (const node of document.querySelectorAll(".field-error[data-msgs]")) renderFieldError(node);
    if (state.health) $("model-info").title = t("model.details", { device: state.health.device, dtype: state.health.dtype });
    if (state.tasks || state.tasksError) renderTaskOptions();
    renderTags();
    renderAugment();
    renderBatch();
    renderClassify();
    renderGenerate();
  }

  function setLang(lang) {
    state.lang = lang === "en" ? "en" : "zh";
    try {
      localStorage.setItem(LANG_KEY, state.lang);
    } catch (err) {
      /* private mode: keep it for this page only */
    }
    applyLang();
  }

  // ------------------------------------------------------------------ panels, tabs, keyboard
  const SUBMITTERS = { augment: submitAugment, batch: submitBatch, classify: submitClassify, generate: submitGenerate };

  function showPanel(name, focusTab) {
    if (!PANELS.includes(name)) name = "augment";
    state.panel = name;
    for (const panel of PANELS) {
      const tab = $(`tab-${panel}`);
      const active = panel === name;
      tab.setAttribute("aria-selected", active ? "true" : "false");
      tab.tabIndex = active ? 0 : -1;
      tab.classList.toggle("active", active);
      $(`panel-${panel}`).hidden = !active;
    }
    if (focusTab) $(`tab-${name}`).focus();
    if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  }

  function fillExample(panel) {
    if (panel === "augment") {
      $("aug-text").value = t("augment.example");
      clearFieldError("aug-text");
    } else if (panel === "batch") {
      $("batch-texts").value = t("batch.example");
      updateBatchCount();
    } else if (panel === "classify") {
      $("cls-text").value = t("classify.exampleText");
      state.labels = [];
      splitLabels(t("classify.exampleLabels")).forEach(addLabel);
      renderTags();
      clearErrors("classify");
    } else if (panel === "generate") {
      const task = currentTask();
      if (!task) return;
      for (const name of task.fields) {
        const input = $(`gen-field-${name}`);
        const key = `generate.example.${name}`;
        if (input && key in I18N.zh) input.value = t(key);
      }
      clearErrors("generate");
    }
  }

  function init() {
    let saved = null;
    try {
      saved = localStorage.getItem(LANG_KEY);
    } catch (err) {
      saved = null;
    }
    state.lang = saved === "en" ? "en" : "zh";

    for (const container of document.querySelectorAll(".params[data-params]")) buildParams(container);

    for (const panel of PANELS) {
      $(`${panel}-form`).addEventListener("submit", (event) => {
        event.preventDefault();
        SUBMITTERS[panel]();
      });
    }
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => showPanel(tab.dataset.panel));
      tab.addEventListener("keydown", (event) => {
        const index = PANELS.indexOf(tab.dataset.panel);
        if (event.key === "ArrowRight") showPanel(PANELS[(index + 1) % PANELS.length], true);
        else if (event.key === "ArrowLeft") showPanel(PANELS[(index + PANELS.length - 1) % PANELS.length], true);
        else if (event.key === "Home") showPanel(PANELS[0], true);
        else if (event.key === "End") showPanel(PANELS[PANELS.length - 1], true);
        else return;
        event.preventDefault();
      });
    }
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
        event.preventDefault();
        SUBMITTERS[state.panel]();
      }
    });
    window.addEventListener("hashchange", () => showPanel(location.hash.slice(1)));
    for (const button of document.querySelectorAll("[data-example]")) button.addEventListener("click", () => fillExample(button.dataset.example));

    $("lang-toggle").addEventListener("click", () => setLang(state.lang === "zh" ? "en" : "zh"));
    $("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      saveApiKey();
    });
    $("aug-text").addEventListener("input", () => clearFieldError("aug-text"));
    $("cls-text").addEventListener("input", () => clearFieldError("cls-text"));
    $("batch-texts").addEventListener("input", () => {
      clearFieldError("batch-texts");
      updateBatchCount();
    });
    $("batch-num").addEventListener("change", () => clearFieldError("batch-num"));
    $("batch-copy-all").addEventListener("click", copyAllBatch);
    $("batch-download-jsonl").addEventListener("click", downloadJsonl);
    $("batch-download-csv").addEventListener("click", downloadCsv);
    $("gen-task").addEventListener("change", () => {
      clearErrors("generate");
      renderGenFields();
    });
    for (const radio of document.querySelectorAll("input[name='cls-mode']")) radio.addEventListener("change", () => clearFieldError("cls-mode"));
    setupLabelInput();
    setupKeepLabel();

    applyLang();
    updateBatchCount();
    showPanel(location.hash.slice(1) || "augment");
    loadHealth().then(watchHealth);
    loadTasks();
    document.body.dataset.ready = "true";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
