/* Building and translating the page: $, h (elements), t (strings in the current language), number formats. */

import { I18N } from "../i18n.js";
import { state } from "./state.js";

export { I18N };

export const $ = (id) => document.getElementById(id);

export function t(key, params) {
  const table = I18N[state.lang] || I18N.zh;
  let text = key in table ? table[key] : key in I18N.zh ? I18N.zh[key] : key;
  if (params) text = text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  return text;
}

export function h(tag, attrs, ...children) {
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

export function percent(p) {
  if (!Number.isFinite(p)) return "–";
  const value = p * 100;
  if (value > 0 && value < 0.1) return "<0.1%";
  return `${value.toFixed(1)}%`;
}

export function seconds(ms) {
  return (ms / 1000).toFixed(ms < 10000 ? 2 : 1);
}

// A message that is re-translated when the language changes: {key, params} kept on the element.
export function setMessage(node, key, params) {
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
