// explain-serve viewer: picks a served model, sends one input to /api/explain (or /api/compare) and
// draws the answer. Every string that comes from a model or a server (labels, tokens, feature names,
// messages) is set with textContent or as an attribute value, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], desc: null, image: null, imageEl: null, lastInputs: null };
const POS = [214, 39, 40];
const NEG = [31, 119, 180];

// -- small helpers ----------------------------------------------------------------------------
function el(tag, opts = {}, children = []) {
  const node = document.createElement(tag);
  if (opts.text !== undefined) node.textContent = String(opts.text);
  if (opts.cls) node.className = opts.cls;
  if (opts.testid) node.dataset.testid = opts.testid;
  if (opts.title !== undefined) node.title = String(opts.title);
  for (const [k, v] of Object.entries(opts.attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c);
  return node;
}

function option(value, text, selected) {
  const o = el("option", { text });
  o.value = value;
  o.selected = Boolean(selected);
  return o;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "n/a";
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(2) : x.toFixed(digits);
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const resp = await fetch(path, opts);
  let data;
  try { data = await resp.json(); } catch (e) { data = { message: `HTTP ${resp.status} ${resp.statusText}` }; }
  return { ok: resp.ok, status: resp.status, data };
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function errorText(res) {
  const msg = res.data && (res.data.message || res.data.error);
  return `${res.status}: ${msg || JSON.stringify(res.data)}`;
}

const path = (...parts) => parts.map(encodeURIComponent).join("/");

// -- models, versions, description -------------------------------------------------------------
async function loadModels() {
  const res = await api("/api/models");
  if (!res.ok) { showError(`could not list the models: ${errorText(res)}`); return; }
  state.models = res.data;
  const select = $("model-select");
  select.replaceChildren(...state.models.map((m) => option(m.name, m.name)));
  if (!state.models.length) { showError("the server has no models"); return; }
  await modelChanged();
}

function currentModel() {
  return state.models.find((m) => m.name === $("model-select").value);
}

async function modelChanged() {
  const m = currentModel();
  $("version-select").replaceChildren(...m.versions.map((v) => option(v, v, v === m.default)));
  const other = m.versions.find((v) => v !== m.default) || m.default;
  $("version-select-b").replaceChildren(...m.versions.map((v) => option(v, v, v === other)));
  await versionChanged();
}

async function versionChanged() {
  const m = currentModel();
  const version = $("version-select").value;
  showError("");
  const res = await api(`/api/describe/${path(m.name, version)}`);
  if (!res.ok) { state.desc = null; showError(`could not describe ${m.name} ${version}: ${errorText(res)}`); return; }
  state.desc = res.data;
  renderDescription();
}

function renderDescription() {
  const d = state.desc;
  const inp = d.input || {};
  const shape = inp.text ? `up to ${inp.text.max_tokens} tokens`
    : inp.shape ? `input [${inp.shape.map((s) => (s === null ? "n" : s)).join(", ")}]` : "";
  $("model-summary").textContent = `${d.model} ${d.version}: ${d.kind} model, ${d.n_classes} classes, ${shape}`;
  renderInput(d);
  const target = $("target-select");
  target.replaceChildren(option("predicted", "predicted class", true),
    ...d.labels.map((label, i) => option(String(i), `${i}: ${label}`)));
  const names = Object.keys(d.methods);
  const methodOptions = (chosen) => names.map((n) => {
    const o = option(n, n + (d.methods[n].compiled ? " (compiled)" : ""), n === chosen);
    o.disabled = Boolean(d.methods[n].unavailable);
    return o;
  });
  $("method-select").replaceChildren(...methodOptions(d.default_method));
  const sameVersion = $("version-select-b").value === $("version-select").value;
  const otherMethod = names.find((n) => n !== d.default_method && !d.methods[n].unavailable) || d.default_method;
  $("method-select-b").replaceChildren(...methodOptions(sameVersion ? otherMethod : d.default_method));
  renderParams();
}

// -- inputs ------------------------------------------------------------------------------------
function renderInput(d) {
  $("image-input").hidden = d.kind !== "image";
  $("input-text").hidden = d.kind !== "text";
  $("input-features").hidden = d.kind !== "tabular";
  const known = ["image", "text", "tabular"].includes(d.kind);
  $("json-box").open = !known;
  $("use-json").checked = !known;
  if (d.kind === "text" && d.input.text) {
    $("input-text").maxLength = 20 * (d.input.text.max_tokens || 128);
    $("input-text").placeholder = `Type the text to classify (at most ${d.input.text.max_tokens} tokens)`;
  }
  if (d.kind === "tabular") {
    const form = $("input-features");
    const example = d.input.example || [];
    const rows = [];
    d.input.features.forEach((name, i) => {
      const id = `feature-${i}`;
      const input = el("input", { attrs: { type: "number", step: "any", id } });
      input.dataset.feature = name;
      input.value = example[i] !== undefined ? String(example[i]) : "0";
      rows.push(el("label", { text: name, title: name, attrs: { for: id } }), input);
    });
    form.replaceChildren(...rows);
  }
}

function loadImageFile(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg)$/.test(file.type)) { showError(`${file.name}: choose a PNG or JPEG image`); return; }
  const reader = new FileReader();
  reader.onload = () => {
    const url = String(reader.result);
    state.image = url.slice(url.indexOf(",") + 1);
    const img = new Image();
    img.onload = () => {
      state.imageEl = img;
      drawFitted($("image-preview"), img, 160);
      $("image-preview").hidden = false;
      $("image-preview").dataset.loaded = "true";
    };
    img.src = url;
    showError("");
  };
  reader.onerror = () => showError(`could not read ${file.name}`);
  reader.readAsDataURL(file);
}

function drawFitted(canvas, img, side) {
  const scale = side / Math.max(img.naturalWidth || img.width, img.naturalHeight || img.height);
  canvas.width = Math.max(1, Math.round((img.naturalWidth || img.width) * scale));
  canvas.height = Math.max(1, Math.round((img.naturalHeight || img.height) * scale));
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
}

function readInputs() {
  const d = state.desc;
  if ($("use-json").checked) {
    const text = $("input-json").value.trim();
    if (!text) throw new Error("the JSON input is empty: type the request's \"inputs\" value");
    try { return JSON.parse(text); } catch (e) { throw new Error(`the JSON input is not valid JSON (${e.message})`); }
  }
  if (d.kind === "image") {
    if (!state.image) throw new Error("choose or drop an image first");
    return state.image;
  }
  if (d.kind === "text") {
    const text = $("input-text").value;
    if (!text.trim()) throw new Error("type some text first");
    return text;
  }
  if (d.kind === "tabular") {
    const out = {};
    for (const input of $("input-features").querySelectorAll("input")) {
      const value = Number(input.value);
      if (input.value.trim() === "" || !Number.isFinite(value)) throw new Error(`${input.dataset.feature}: enter a number`);
      out[input.dataset.feature] = value;
    }
    return out;
  }
  throw new Error("this kind of model takes JSON input: open \"JSON input\"");
}

// -- method parameters -------------------------------------------------------------------------
function renderParams() {
  const form = $("params-form");
  const spec = state.desc.methods[$("method-select").value];
  const nodes = [];
  for (const p of (spec ? spec.params : [])) {
    const id = `param-${p.name}`;
    let control;
    if (p.type === "bool") {
      control = el("input", { attrs: { type: "checkbox", id } });
      control.checked = Boolean(p.default);
    } else if (p.type === "choice" || p.type === "baseline") {
      control = el("select", { attrs: { id } }, (p.choices || []).map((c) => option(c, c, c === p.default)));
    } else if (p.type === "int" || p.type === "float") {
      control = el("input", { attrs: { type: "number", id, step: p.type === "int" ? "1" : "any" } });
      if (p.min !== undefined) control.min = String(p.min);
      if (p.max !== undefined) control.max = String(p.max);
      if (p.default !== null && p.default !== undefined) control.value = String(p.default);
    } else {
      control = el("input", { attrs: { type: "text", id, placeholder: "e.g. 2, 2 (empty: default)" } });
    }
    control.dataset.param = p.name;
    control.dataset.type = p.type;
    nodes.push(el("label", { text: p.name, attrs: { for: id } }), control);
    const bounds = [p.min !== undefined ? `min ${p.min}` : "", p.max !== undefined ? `max ${p.max}` : ""].filter(Boolean);
    if (bounds.length) nodes.push(el("span", { cls: "hint", text: bounds.join(", ") }));
  }
  if (!nodes.length) nodes.push(el("span", { cls: "muted", text: "no parameters" }));
  form.replaceChildren(...nodes);
}

function readParams() {
  const params = {};
  for (const c of $("params-form").querySelectorAll("[data-param]")) {
    const name = c.dataset.param;
    if (c.dataset.type === "bool") { params[name] = c.checked; continue; }
    if (c.dataset.type === "int" || c.dataset.type === "float") {
      if (c.value.trim() === "") continue;
      const v = Number(c.value);
      if (!Number.isFinite(v)) throw new Error(`${name}: enter a number`);
      if (c.dataset.type === "int" && !Number.isInteger(v)) throw new Error(`${name}: enter a whole number`);
      if ((c.min !== "" && v < Number(c.min)) || (c.max !== "" && v > Number(c.max))) {
        throw new Error(`${name} must be between ${c.min || "-inf"} and ${c.max || "inf"} for this model; got ${v}`);
      }
      params[name] = v;
      continue;
    }
    if (c.dataset.type === "ints") {
      if (c.value.trim() === "") continue;
      const parts = c.value.split(/[\s,]+/).filter(Boolean).map(Number);
      if (!parts.every((v) => Number.isInteger(v) && v >= 1)) throw new Error(`${name}: positive whole numbers separated by commas`);
      params[name] = parts;
      continue;
    }
    params[name] = c.value;
  }
  return params;
}

// -- explain -----------------------------------------------------------------------------------
async function explain() {
  showError("");
  if (!state.desc) { showError("no model description: pick a model"); return; }
  let inputs, params;
  try { inputs = readInputs(); params = readParams(); } catch (e) { showError(e.message); return; }
  const model = $("model-select").value;
  const version = $("version-select").value;
  const method = $("method-select").value;
  const target = $("target-select").value === "predicted" ? "predicted" : Number($("target-select").value);
  const button = $("explain-button");
  button.disabled = true;
  const started = performance.now();
  try {
    state.lastInputs = inputs;
    if ($("compare-toggle").checked) {
      const runs = [{ version, method, params }, { version: $("version-select-b").value, method: $("method-select-b").value }];
      const res = await api(`/api/compare/${path(model)}`, { inputs, target, runs });
      const ms = performance.now() - started;
      if (!res.ok) { clearResults(); showError(errorText(res)); return; }
      renderResults(res.data.runs, ms, res.data);
    } else {
      const res = await api(`/api/explain/${path(model, version)}`, { inputs, target, method, params });
      const ms = performance.now() - started;
      if (!res.ok) { clearResults(); showError(errorText(res)); return; }
      renderResults([res.data], ms, null);
    }
  } catch (e) {
    showError(`the viewer could not reach its server: ${e.message}`);
  } finally {
    button.disabled = false;
    document.body.dataset.explained = String(Number(document.body.dataset.explained || 0) + 1);  // done, for tests
  }
}

function clearResults() {
  $("runs").replaceChildren();
  $("agreement").hidden = true;
  $("placeholder").hidden = false;
}

function renderResults(answers, ms, comparison) {
  $("placeholder").hidden = true;
  $("runs").replaceChildren(...answers.map((a, i) => renderRun(a, answers.length > 1 ? "AB"[i] : "", ms)));
  const box = $("agreement");
  box.hidden = !comparison;
  if (comparison) renderAgreement(box, comparison);
}

function renderRun(ans, tag, ms) {
  const d = state.desc;
  const title = `${tag ? tag + ": " : ""}${ans.model} ${ans.version} · ${ans.method}`;
  const run = el("div", { cls: "panel run", testid: "run" }, [el("h2", { text: title })]);
  run.append(renderPrediction(ans));
  const attribution = el("div", { testid: "attribution", cls: "attribution" });
  const label = d.labels[ans.target] !== undefined ? d.labels[ans.target] : String(ans.target);
  attribution.append(el("h3", { text: `Attribution for ${label}` }));
  if (ans.tokens) attribution.append(renderTokens(ans.tokens));
  else if (ans.features) attribution.append(renderFeatures(ans.features));
  else if (ans.shape && ans.shape.length === 3) attribution.append(renderHeatmap(ans));
  else attribution.append(el("pre", { text: JSON.stringify(ans.attributions) }));
  run.append(attribution);
  const meta = el("div", { cls: "meta" });
  const item = (name, value, testid) => el("span", { testid }, [document.createTextNode(`${name} `), el("b", { text: value })]);
  meta.append(item("convergence delta", ans.convergence_delta === null ? "none (method has none)" : fmt(ans.convergence_delta, 5), "delta"));
  meta.append(item("server time", `${fmt(ans.elapsed_ms, 1)} ms`, "elapsed"));
  meta.append(item("round trip", `${fmt(ms, 0)} ms`, "roundtrip"));
  if (ans.baseline !== null && ans.baseline !== undefined) meta.append(item("baseline", String(ans.baseline)));
  meta.append(item("params", JSON.stringify(ans.params)));
  run.append(meta);
  return run;
}

function renderPrediction(ans) {
  const d = state.desc;
  const p = ans.prediction;
  const box = el("div", { testid: "prediction", cls: "prediction" });
  box.append(el("h3", { text: `Prediction: ${p.label}` }));
  const order = p.probabilities.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]).slice(0, 10);
  const bars = el("div", { cls: "bars" });
  for (const [v, i] of order) {
    const fill = el("div", { cls: "fill" + (i === p.index ? " top" : "") });
    fill.style.width = `${(100 * v).toFixed(2)}%`;
    const row = [el("span", { cls: "name" + (i === p.index ? " predicted" : ""), text: d.labels[i] !== undefined ? d.labels[i] : i, title: d.labels[i] }),
      el("div", { cls: "track" }, [fill]), el("span", { cls: "value", text: `${(100 * v).toFixed(1)}%` })];
    row[1].dataset.testid = "probability";
    row[1].dataset.probability = String(v);
    bars.append(...row);
  }
  box.append(bars);
  return box;
}

function rgba(rgb, alpha) {
  return `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha.toFixed(3)})`;
}

function legend(max) {
  if (!(max > 1e-12)) {
    return el("div", { cls: "legend muted", testid: "legend",
      text: "every attribution is 0 (is the input equal to the baseline?)" });
  }
  return el("div", { cls: "legend", testid: "legend" }, [
    el("span", { text: `-${fmt(max)}` }), el("span", { cls: "ramp" }), el("span", { text: `+${fmt(max)}` }),
    el("span", { text: "blue: against the target, red: for it" }),
  ]);
}

function renderTokens(tokens) {
  const max = Math.max(1e-12, ...tokens.map((t) => Math.abs(t.score)));
  const box = el("div", { cls: "tokens" });
  for (const t of tokens) {
    const span = el("span", { cls: "token", testid: "token", text: t.token, title: `${t.token}: ${fmt(t.score, 4)}` });
    span.dataset.score = String(t.score);
    span.style.backgroundColor = rgba(t.score >= 0 ? POS : NEG, Math.abs(t.score) / max);
    if (Math.abs(t.score) / max > 0.6) span.style.color = "#fff";
    box.append(span, document.createTextNode(" "));
  }
  return el("div", {}, [box, legend(max)]);
}

function renderFeatures(features) {
  const entries = Object.entries(features).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const max = Math.max(1e-12, ...entries.map((e) => Math.abs(e[1])));
  const bars = el("div", { cls: "bars" });
  for (const [name, score] of entries) {
    const fill = el("div", { cls: `fill ${score >= 0 ? "pos" : "neg"}` });
    const w = (50 * Math.abs(score)) / max;
    fill.style.left = `${score >= 0 ? 50 : 50 - w}%`;
    fill.style.width = `${w}%`;
    const track = el("div", { cls: "track signed", testid: "feature-bar" }, [fill]);
    track.dataset.feature = name;
    track.dataset.score = String(score);
    bars.append(el("span", { cls: "name", text: name, title: name }), track, el("span", { cls: "value", text: fmt(score) }));
  }
  return el("div", {}, [bars, legend(max)]);
}

// -- image heat map ----------------------------------------------------------------------------
function channelSum(attr) {
  const [c0] = attr;
  const h = c0.length, w = c0[0].length;
  const out = Array.from({ length: h }, () => new Float64Array(w));
  for (const channel of attr) for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) out[i][j] += channel[i][j];
  return out;
}

function drawOverlay(canvas, map, sign) {
  const h = map.length, w = map[0].length;
  canvas.width = w;
  canvas.height = h;
  const keep = (v) => sign === "all" || sign === "absolute" || (sign === "positive" ? v > 0 : v < 0);
  let max = 0;
  for (const row of map) for (const v of row) if (keep(v)) max = Math.max(max, Math.abs(v));
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
    const v = map[i][j];
    const k = 4 * (i * w + j);
    const rgb = v >= 0 || sign === "absolute" ? POS : NEG;
    img.data[k] = rgb[0]; img.data[k + 1] = rgb[1]; img.data[k + 2] = rgb[2];
    img.data[k + 3] = keep(v) && max > 0 ? Math.round((255 * Math.abs(v)) / max) : 0;
  }
  ctx.putImageData(img, 0, 0);
  return max;
}

function drawBase(ctx, width, height) {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingEnabled = false;
  if (state.imageEl && !$("use-json").checked) { ctx.drawImage(state.imageEl, 0, 0, width, height); fade(ctx, width, height); return; }
  const x = state.lastInputs;  // a nested list [C, H, W]: draw its mean over channels in gray
  if (!Array.isArray(x) || !Array.isArray(x[0]) || !Array.isArray(x[0][0])) return;
  const map = channelSum(x);
  const h = map.length, w = map[0].length;
  let lo = Infinity, hi = -Infinity;
  for (const row of map) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const off = document.createElement("canvas");
  off.width = w; off.height = h;
  const octx = off.getContext("2d");
  const img = octx.createImageData(w, h);
  for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
    const g = hi > lo ? Math.round((255 * (map[i][j] - lo)) / (hi - lo)) : 0;
    const k = 4 * (i * w + j);
    img.data[k] = img.data[k + 1] = img.data[k + 2] = 255 - g;  // ink dark on white, as digits are drawn
    img.data[k + 3] = 255;
  }
  octx.putImageData(img, 0, 0);
  ctx.drawImage(off, 0, 0, width, height);
  fade(ctx, width, height);
}

function fade(ctx, width, height) {
  // the input in gray at reduced contrast, so the colours drawn over it stay readable
  ctx.fillStyle = "rgba(255, 255, 255, 0.45)";
  ctx.fillRect(0, 0, width, height);
}

function renderHeatmap(ans) {
  const map = channelSum(ans.attributions);
  const h = map.length, w = map[0].length;
  const side = 288;
  const scale = side / Math.max(h, w);
  const view = el("canvas", { testid: "heatmap", attrs: { width: Math.round(w * scale), height: Math.round(h * scale) } });
  const overlay = el("canvas", { testid: "heatmap-overlay" });
  overlay.hidden = true;
  const opacity = el("input", { testid: "opacity", attrs: { type: "range", min: "0", max: "100", value: "70" } });
  const sign = el("select", { testid: "sign" }, [option("all", "positive and negative", true),
    option("positive", "positive only"), option("negative", "negative only"), option("absolute", "absolute value")]);
  const legendBox = el("div");
  const draw = () => {
    const max = drawOverlay(overlay, map, sign.value);
    const ctx = view.getContext("2d");
    drawBase(ctx, view.width, view.height);
    ctx.globalAlpha = Number(opacity.value) / 100;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(overlay, 0, 0, view.width, view.height);
    ctx.globalAlpha = 1;
    view.dataset.drawn = `${sign.value}:${opacity.value}`;
    legendBox.replaceChildren(legend(max));
  };
  opacity.addEventListener("input", draw);
  sign.addEventListener("change", draw);
  draw();
  const controls = el("div", { cls: "controls" }, [
    el("label", { text: "Opacity" }), opacity, el("label", { text: "Sign" }), sign, legendBox,
  ]);
  return el("div", { cls: "heat" }, [view, overlay, controls]);
}

// -- compare -----------------------------------------------------------------------------------
const METRICS = [
  ["spearman", "Spearman rank correlation"], ["kendall", "Kendall tau-b"],
  ["top_k_jaccard", "top-k overlap (Jaccard)"], ["sign_agreement", "sign agreement in A's top-k"], ["cosine", "cosine similarity"],
];

function renderAgreement(box, cmp) {
  const rows = [el("h2", { text: "Agreement of A and B" })];
  if (!cmp.agreement) {
    rows.push(el("p", { cls: "muted", text: cmp.why_no_agreement || "no agreement: the explanations differ in shape" }));
  } else {
    const table = el("table");
    for (const [key, name] of METRICS) {
      if (!(key in cmp.agreement)) continue;
      const value = cmp.agreement[key];
      const td = el("td", { cls: "num", text: value === null ? "undefined" : fmt(value) });
      td.dataset.metric = key;
      td.dataset.value = value === null ? "" : String(value);
      table.append(el("tr", {}, [el("th", { text: name.replace("top-k", `top-${cmp.top_k}`) }), td]));
    }
    rows.push(table, el("p", { cls: "muted", text: "computed as the audit computes it (explain_serve.audit); 1 = same ranking" }));
  }
  box.replaceChildren(...rows);
}

// -- reports -----------------------------------------------------------------------------------
async function loadReports() {
  const list = $("reports");
  const res = await api("/api/reports");
  if (!res.ok) { list.replaceChildren(el("li", { cls: "muted", text: errorText(res) })); return; }
  if (!res.data.reports.length) {
    const why = res.data.folder ? `no reports in ${res.data.folder}` : "start the viewer with --reports DIR to list audit reports";
    list.replaceChildren(el("li", { cls: "muted", text: why }));
    return;
  }
  list.replaceChildren(...res.data.reports.map((r) => {
    const a = el("a", { text: r.name, attrs: { target: "_blank", rel: "noopener" } });
    a.href = `/reports/${encodeURIComponent(r.name)}`;
    const when = new Date(r.modified * 1000).toISOString().slice(0, 16).replace("T", " ");
    return el("li", {}, [a, el("span", { cls: "muted", text: ` ${when}, ${Math.ceil(r.bytes / 1024)} KiB` })]);
  }));
}

// -- wiring ------------------------------------------------------------------------------------
function wire() {
  $("model-select").addEventListener("change", modelChanged);
  $("version-select").addEventListener("change", versionChanged);
  $("method-select").addEventListener("change", renderParams);
  $("explain-button").addEventListener("click", explain);
  $("compare-toggle").addEventListener("change", () => { $("compare-controls").hidden = !$("compare-toggle").checked; });
  $("input-file").addEventListener("change", (e) => loadImageFile(e.target.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    loadImageFile(e.dataTransfer.files[0]);
  });
}

wire();
loadModels().then(() => { document.body.dataset.ready = "true"; });
loadReports();
