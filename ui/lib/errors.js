/* Errors shown where they belong: next to the field a 422 names, or at the top of the panel. */

import { ApiError, detailText } from "./api.js";
import { $, setMessage, t } from "./dom.js";
import { panels } from "./state.js";

function fieldOf(input) {
  return input.closest(".field") || input.parentElement;
}

export function clearErrors(panel) {
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
  if (panels[panel] && panels[panel].clearErrors) panels[panel].clearErrors();
}

export function clearFieldError(inputId) {
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

export function renderFieldError(node) {
  const messages = JSON.parse(node.dataset.msgs || "[]");
  node.textContent = messages.map((m) => t(m.key, m.params)).join("\n");
}

export function showFieldError(inputId, key, params) {
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

// Problems found before sending: [inputId, key, params] each.
export function showProblems(panel, problems) {
  for (const [id, key, params] of problems) showFieldError(id, key, params);
  focusFirstError(panel);
}

export function handleError(panel, err) {
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
      const target = panels[panel].resolveField(field);
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
