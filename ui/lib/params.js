/* The sampling controls (a number box and a slider per knob) and reading numbers from the form. */

import { RawNumber } from "./api.js";
import { $, h, t } from "./dom.js";
import { clearFieldError } from "./errors.js";
import { PARAMS } from "./state.js";

export function buildParams(container) {
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
export function readNumber(id, problems) {
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
export function readParams(prefix, names, problems) {
  const payload = {};
  for (const name of names) {
    const value = readNumber(`${prefix}-${PARAMS[name].slug}`, problems);
    if (value !== undefined) payload[name] = value;
  }
  return payload;
}
