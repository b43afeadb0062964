/* The HTTP API: one call with the API key (when one is set), a timeout, and errors as ApiError. */

import { $ } from "./dom.js";
import { API_KEY_KEY, REQUEST_TIMEOUT_MS, state } from "./state.js";

export class ApiError extends Error {
  constructor(kind, status, detail, retryAfter) {
    super(typeof detail === "string" ? detail : kind);
    this.kind = kind; // "http" | "network" | "timeout"
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

// An integer too large for a JS number (a seed up to 2^63), written into the JSON as typed.
export class RawNumber {
  constructor(text) {
    this.text = text;
  }
}

export function toJson(payload) {
  const raws = [];
  const json = JSON.stringify(payload, (key, value) => (value instanceof RawNumber ? `\u0000RAW${raws.push(value.text) - 1}\u0000` : value));
  return json.replace(/"\\u0000RAW(\d+)\\u0000"/g, (m, index) => raws[Number(index)]);
}

export function detailText(detail) {
  if (detail === null || detail === undefined) return "";
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

// ------------------------------------------------------------------ API key (only when the service asks for one)
function apiKey() {
  try {
    return sessionStorage.getItem(API_KEY_KEY) || "";
  } catch (err) {
    return state.apiKey || "";
  }
}

function showAuthBox() {
  $("auth-box").hidden = false;
}

export function saveApiKey() {
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
}

function authHeaders(headers) {
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// A file the service sends (a job's results): a Blob and the file name it suggests.
export async function apiFile(path) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders({}) });
  } catch (err) {
    throw new ApiError("network", 0, (err && err.message) || String(err));
  }
  if (!response.ok) {
    const text = await response.text();
    let detail = text || response.statusText;
    try {
      detail = JSON.parse(text).detail;
    } catch (err) {
      /* not JSON: the text is the detail */
    }
    if (response.status === 401) showAuthBox();
    throw new ApiError("http", response.status, detail);
  }
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename\*=UTF-8''([^;]+)/.exec(disposition);
  return { blob: await response.blob(), filename: match ? decodeURIComponent(match[1]) : "download" };
}

/* A JSON call, or with a FormData payload a multipart upload (the browser writes its Content-Type). */
export async function api(method, path, payload) {
  const headers = { Accept: "application/json" };
  const form = payload instanceof FormData;
  if (payload !== undefined && !form) headers["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: payload === undefined ? undefined : form ? payload : toJson(payload),
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
