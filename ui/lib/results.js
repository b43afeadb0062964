/* Results: list items with a copy button, meta lines, copying to the clipboard and downloading files. */

import { h, t } from "./dom.js";

export async function copyText(text) {
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

export function flash(button, key, params) {
  const original = button.dataset.i18n;
  button.textContent = t(key, params);
  button.classList.add("flashed");
  clearTimeout(button._flashTimer);
  button._flashTimer = setTimeout(() => {
    button.classList.remove("flashed");
    if (original) button.textContent = t(original);
  }, 1600);
}

export function copyButton(text) {
  const button = h("button", { type: "button", class: "btn btn-small copy-btn", "data-testid": "copy-button", "data-i18n": "common.copy" }, t("common.copy"));
  button.addEventListener("click", async () => flash(button, (await copyText(text)) ? "common.copied" : "common.copyFailed"));
  return button;
}

export function download(filename, mime, content) {
  const url = URL.createObjectURL(new Blob([content], { type: mime }));
  const link = h("a", { href: url, download: filename, style: "display:none" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function stamp() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

export function csvCell(value) {
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function resultItem(text, testid) {
  return h("li", { class: "result-item", "data-testid": testid }, h("span", { class: "result-text" }, text), copyButton(text));
}

export function metaLine(node, parts) {
  node.replaceChildren(...parts.filter(Boolean).map((part) => (part instanceof Node ? part : h("span", {}, part))));
}

export function truncatedBadge() {
  return h("span", { class: "badge badge-warn", "data-testid": "truncated" }, t("common.truncated"));
}
