/* The web UI: five panels over the HTTP API (/augment, /augment_batch, /classify, /generate, /jobs). Native ES modules,
   no build step, no dependencies: lib/ holds the shared helpers, panels/ one module per panel. */

import { saveApiKey } from "./lib/api.js";
import { $, t } from "./lib/dom.js";
import { renderFieldError } from "./lib/errors.js";
import { loadHealth, relabelHealth, watchHealth } from "./lib/health.js";
import { applySchemaDefaults, buildParams } from "./lib/params.js";
import { LANG_KEY, PANELS, panels, state } from "./lib/state.js";
import "./panels/augment.js";
import "./panels/batch.js";
import "./panels/classify.js";
import "./panels/dataset.js";
import { loadTasks } from "./panels/generate.js";

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
  relabelHealth();
  for (const name of PANELS) panels[name].relabel();
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
      panels[panel].submit();
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
      panels[state.panel].submit();
    }
  });
  window.addEventListener("hashchange", () => showPanel(location.hash.slice(1)));
  for (const button of document.querySelectorAll("[data-example]")) button.addEventListener("click", () => panels[button.dataset.example].example());

  $("lang-toggle").addEventListener("click", () => setLang(state.lang === "zh" ? "en" : "zh"));
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveApiKey();
    if (!state.tasks) loadTasks();
  });
  for (const name of PANELS) panels[name].setup();

  applyLang();
  showPanel(location.hash.slice(1) || "augment");
  loadHealth().then(watchHealth);
  loadTasks();
  // Ready once the controls show the service's defaults (or the document could not be read: they stay empty).
  applySchemaDefaults().finally(() => {
    document.body.dataset.ready = "true";
  });
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
