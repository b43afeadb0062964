/* 零样本分类: a text and its candidate labels (typed as tags), the best label and a probability bar per label. */

import { api } from "../lib/api.js";
import { run } from "../lib/busy.js";
import { $, h, percent, seconds, t } from "../lib/dom.js";
import { clearErrors, clearFieldError, showProblems } from "../lib/errors.js";
import { splitLabels } from "../lib/labels.js";
import { metaLine, truncatedBadge } from "../lib/results.js";
import { registerPanel, state } from "../lib/state.js";

// ------------------------------------------------------------------ labels as tags
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

function submit() {
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
    render();
  });
}

function render() {
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

function resolveField(field) {
  const [root, index] = field.split(".");
  if (root === "text") return { id: "cls-text" };
  if (root === "labels") {
    if (index !== undefined && /^\d+$/.test(index)) return { id: "cls-labels", key: "error.label", params: { n: Number(index) + 1 } };
    return { id: "cls-labels" };
  }
  if (root === "mode") return { id: "cls-mode" };
  return null;
}

function setup() {
  $("cls-text").addEventListener("input", () => clearFieldError("cls-text"));
  for (const radio of document.querySelectorAll("input[name='cls-mode']")) radio.addEventListener("change", () => clearFieldError("cls-mode"));
  setupLabelInput();
}

function relabel() {
  renderTags();
  render();
}

function example() {
  $("cls-text").value = t("classify.exampleText");
  state.labels = [];
  splitLabels(t("classify.exampleLabels")).forEach(addLabel);
  renderTags();
  clearErrors("classify");
}

registerPanel("classify", { submit, relabel, resolveField, setup, example });
