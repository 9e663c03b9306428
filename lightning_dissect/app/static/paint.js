// Paint with units: the page's script. No library, nothing from the internet.
// The tab holds its own strokes and sends them all with every render: tabs are independent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, seed: 0, firstSeed: 0, strokes: [], mode: "draw", request: 0, shown: 0,
  last: null, unitsRows: [], drawing: false, points: [],
};
const SAMPLES_SHOWN = 12;

function showMessage(text, isError) {
  const m = $("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `request failed (${response.status})`);
  }
  return body;
}

function percent(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"; }

function delta(before, after) {
  if (before === null || after === null || before === undefined || after === undefined) return ["–", ""];
  const d = 100 * (after - before);
  const text = (d >= 0 ? "+" : "−") + Math.abs(d).toFixed(1) + " pt";
  return [text, d > 0.5 ? "up" : d < -0.5 ? "down" : ""];
}

// ------------------------------------------------------------------ set-up
async function init() {
  try {
    state.info = await api("/api/info");
  } catch (err) {
    showMessage(err.message, true);
    return;
  }
  const info = state.info;
  $("generator-name").textContent = info.generator + (info.checkpoint ? " · " + info.checkpoint : "");
  const [h, w] = info.image_size;
  for (const id of ["brush", "region-original", "region-seg-original", "region-seg-edited"]) {
    $(id).width = w; $(id).height = h;
  }
  const pixelated = Math.max(h, w) < 160;
  for (const id of ["original", "edited", "seg-original", "seg-edited", "brush"]) {
    $(id).classList.toggle("pixelated", pixelated);
  }
  for (const sel of [$("layer"), $("units-layer")]) {
    sel.innerHTML = "";
    for (const layer of info.layers) {
      const o = document.createElement("option");
      o.value = layer.name;
      o.textContent = `${layer.name} (${layer.units} units)`;
      sel.appendChild(o);
    }
    sel.value = info.default_layer;
  }
  $("strength").value = info.strength;
  fillConcepts();
  fillSampleGrid();
  bindControls();
  updateBrushLabel();
  await openSeed(0);
}

function layerInfo(name) { return state.info.layers.find((l) => l.name === name); }

function fillConcepts() {
  const layer = layerInfo($("layer").value);
  const sel = $("concept");
  const previous = sel.value;
  sel.innerHTML = "";
  for (const c of layer.concepts) {
    const o = document.createElement("option");
    o.value = c.name;
    const note = c.causal ? "causal" : c.units ? `${c.units} unit${c.units > 1 ? "s" : ""}` : `IoU ${c.best_iou.toFixed(2)}`;
    o.textContent = `${c.name} — ${note}`;
    sel.appendChild(o);
  }
  if (layer.concepts.some((c) => c.name === previous)) sel.value = previous;
  conceptChanged();
  const filter = $("units-concept");
  const keep = filter.value;
  filter.innerHTML = '<option value="">all</option>';
  for (const c of layer.concepts.filter((c) => c.units > 0)) {
    const o = document.createElement("option");
    o.value = c.name; o.textContent = `${c.name} (${c.units})`;
    filter.appendChild(o);
  }
  filter.value = keep;
}

function conceptChanged() {
  const layer = layerInfo($("layer").value);
  const concept = layer.concepts.find((c) => c.name === $("concept").value);
  if (concept) {
    $("size").value = concept.default_size;
    $("size").max = layer.units;
  }
  refreshUnits();
}

async function refreshUnits() {
  const chips = $("unit-list");
  chips.innerHTML = "";
  if ($("use-units").checked) {
    const text = $("units").value.trim();
    if (!text) return;
    for (const u of text.split(/[\s,]+/).filter(Boolean)) {
      const s = document.createElement("span"); s.textContent = "#" + u; chips.appendChild(s);
    }
    return;
  }
  const q = new URLSearchParams({ layer: $("layer").value, concept: $("concept").value, size: $("size").value });
  try {
    const r = await api("/api/concept-units?" + q);
    $("unit-source").textContent = r.source === "causal" ? "units by α (causal set)" : "units by IoU";
    for (const u of r.units) {
      const s = document.createElement("span"); s.textContent = "#" + u; chips.appendChild(s);
    }
  } catch (err) {
    showMessage(err.message, true);
  }
}

function fillSampleGrid() {
  const grid = $("sample-grid");
  grid.innerHTML = "";
  for (let s = state.firstSeed; s < state.firstSeed + SAMPLES_SHOWN; s++) {
    const img = document.createElement("img");
    img.src = "/api/sample.png?seed=" + s;
    img.alt = "seed " + s; img.title = "seed " + s; img.dataset.seed = s;
    img.loading = "lazy";
    img.classList.toggle("pixelated", Math.max(...state.info.image_size) < 160);
    img.classList.toggle("selected", s === state.seed);
    img.addEventListener("click", () => openSeed(s));
    grid.appendChild(img);
  }
}

function bindControls() {
  for (const tab of document.querySelectorAll("nav .tab")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  for (const tool of document.querySelectorAll(".tool")) {
    tool.addEventListener("click", () => setMode(tool.dataset.mode));
  }
  $("layer").addEventListener("change", fillConcepts);
  $("concept").addEventListener("change", conceptChanged);
  $("size").addEventListener("change", refreshUnits);
  $("units").addEventListener("input", () => { $("use-units").checked = true; refreshUnits(); });
  $("use-units").addEventListener("change", refreshUnits);
  $("use-concept").addEventListener("change", refreshUnits);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); });
  $("brush-size").addEventListener("input", updateBrushLabel);
  $("undo").addEventListener("click", undo);
  $("reset").addEventListener("click", () => { state.strokes = []; render(); });
  $("new-sample").addEventListener("click", () => openSeed(Math.floor(Math.random() * 1000000)));
  $("more-samples").addEventListener("click", () => { state.firstSeed += SAMPLES_SHOWN; fillSampleGrid(); });
  $("seed-go").addEventListener("click", () => {
    const s = Number($("seed-input").value);
    if (Number.isInteger(s) && s >= 0) openSeed(s); else showMessage("the seed must be a whole number ≥ 0", true);
  });
  $("seed-input").addEventListener("keydown", (e) => { if (e.key === "Enter") $("seed-go").click(); });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
  });
  $("units-layer").addEventListener("change", loadUnitsTable);
  $("units-concept").addEventListener("change", drawUnitsTable);
  $("units-interpretable").addEventListener("change", drawUnitsTable);
  const brush = $("brush");
  brush.addEventListener("pointerdown", strokeStart);
  brush.addEventListener("pointermove", strokeMove);
  brush.addEventListener("pointerup", strokeEnd);
  brush.addEventListener("pointerleave", strokeEnd);
}

function setMode(mode) {
  state.mode = mode;
  for (const tool of document.querySelectorAll(".tool")) {
    const on = tool.dataset.mode === mode;
    tool.classList.toggle("active", on);
    tool.setAttribute("aria-checked", on ? "true" : "false");
  }
}

function updateBrushLabel() {
  $("brush-value").textContent = $("brush-size").value + " % of the width";
}

function showView(id) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== id;
  for (const tab of document.querySelectorAll("nav .tab")) tab.classList.toggle("active", tab.dataset.view === id);
  if (id === "units-view" && !state.unitsRows.length) loadUnitsTable();
}

// ------------------------------------------------------------------ samples and renders
async function openSeed(seed) {
  state.seed = seed;
  state.strokes = [];
  $("seed-input").value = seed;
  $("seed-label").textContent = "seed " + seed;
  for (const img of document.querySelectorAll("#sample-grid img")) {
    img.classList.toggle("selected", Number(img.dataset.seed) === seed);
  }
  await render();
}

function undo() {
  if (!state.strokes.length) return;
  state.strokes.pop();
  render();
}

async function render(newStroke) {
  const id = ++state.request;
  document.body.dataset.busy = "true";
  showMessage(state.strokes.length ? "rendering…" : "");
  const payload = { seed: state.seed, concept: $("concept").value, strokes: state.strokes.slice() };
  let r;
  try {
    r = await api("/api/render", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload),
    });
  } catch (err) {
    if (id !== state.request) return;
    // a new stroke that failed is taken back: what is shown stays what the strokes give
    if (newStroke && state.strokes.length === payload.strokes.length) state.strokes.pop();
    document.body.dataset.busy = "false";
    showMessage(err.message, true);
    return;
  }
  if (id !== state.request) return; // a newer render is under way
  state.last = r;
  $("original").src = r.original;
  $("edited").src = r.edited;
  $("seg-original").src = r["segmentation_original"];
  $("seg-edited").src = r["segmentation_edited"];
  drawRegion();
  showStats(r.stats);
  const name = `seed${r.seed}-${state.strokes.length}strokes`;
  $("export-png").href = r.edited;
  $("export-png").download = name + ".png";
  const json = JSON.stringify(r.edit, null, 1);
  $("export-json").href = URL.createObjectURL(new Blob([json], { type: "application/json" }));
  $("export-json").download = name + ".json";
  $("replay-code").textContent =
    "from lightning_dissect.app import replay_edit\n" +
    `image = replay_edit(generator, "${name}.json")  # (1, C, H, W): these pixels`;
  $("undo").disabled = $("reset").disabled = !state.strokes.length;
  const edited = $("edited");
  edited.dataset.version = String(Number(edited.dataset.version) + 1);
  edited.dataset.strokes = String(state.strokes.length);
  document.body.dataset.busy = "false";
  if (state.strokes.length) {
    const units = r.units[r.units.length - 1];
    showMessage(`${units.mode === "draw" ? "drew" : "erased"} units ${units.units.join(", ")} of ${units.layer} · ` +
                `${(1000 * r.seconds).toFixed(0)} ms`);
  }
}

function showStats(stats) {
  const table = $("stats");
  $("stats-concept").textContent = stats ? stats.concept : "concept";
  const cells = [["in-before", "inside_before"], ["in-after", "inside_after"], ["out-before", "outside_before"],
                 ["out-after", "outside_after"]];
  for (const [id, key] of cells) {
    $(id).textContent = stats ? percent(stats[key]) : "–";
    table.dataset[key.replace("_b", "B").replace("_a", "A")] = stats && stats[key] !== null ? stats[key] : "";
  }
  for (const [id, a, b] of [["in-delta", "inside_before", "inside_after"], ["out-delta", "outside_before", "outside_after"]]) {
    const [text, cls] = stats ? delta(stats[a], stats[b]) : ["–", ""];
    $(id).textContent = text;
    $(id).className = cls;
  }
  table.dataset.regionPixels = stats ? stats.region_pixels : 0;
  $("seg-legend").textContent = stats ? `${stats.concept} in colour, the other concepts pale; the outline is the brushed region` : "";
}

function decodeRuns(mask) {
  const [h, w] = mask.size;
  const out = new Uint8Array(h * w);
  let pos = 0;
  mask.runs.forEach((n, i) => { if (i % 2) out.fill(1, pos, pos + n); pos += n; });
  return out;
}

function drawRegion() {
  const [h, w] = state.info.image_size;
  const region = new Uint8Array(h * w);
  for (const s of state.strokes) decodeRuns(s.mask).forEach((v, i) => { if (v) region[i] = 1; });
  for (const id of ["region-original", "region-seg-original", "region-seg-edited"]) {
    const ctx = $(id).getContext("2d");
    const image = ctx.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!region[i]) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !region[i - 1] || !region[i + 1] ||
                     !region[i - w] || !region[i + w];
        const p = 4 * i;
        const ink = id === "region-original" ? 255 : 29; // white on the image, dark on the pale segmentation
        if (edge) { image.data[p] = ink; image.data[p + 1] = ink; image.data[p + 2] = ink + (ink < 255 ? 19 : 0); image.data[p + 3] = 230; }
        else if (id !== "region-original") { image.data[p + 3] = 0; }
      }
    }
    ctx.putImageData(image, 0, 0);
  }
}

// ------------------------------------------------------------------ the brush
function brushPoint(event) {
  const canvas = $("brush");
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) / rect.width * canvas.width, (event.clientY - rect.top) / rect.height * canvas.height];
}

function brushRadius() { return Math.max(0.5, Number($("brush-size").value) / 100 * $("brush").width); }

function strokeStart(event) {
  if (event.button !== 0) return;
  state.drawing = true;
  $("brush").setPointerCapture(event.pointerId);
  state.points = [brushPoint(event)];
  paintSegment();
}

function strokeMove(event) {
  if (!state.drawing) return;
  state.points.push(brushPoint(event));
  paintSegment();
}

function paintSegment() {
  const ctx = $("brush").getContext("2d");
  const pts = state.points;
  const r = brushRadius();
  ctx.fillStyle = ctx.strokeStyle = state.mode === "draw" ? "rgba(31, 157, 85, 0.6)" : "rgba(214, 69, 69, 0.6)";
  const [x, y] = pts[pts.length - 1];
  ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.fill();
  if (pts.length > 1) {
    const [px, py] = pts[pts.length - 2];
    ctx.lineWidth = 2 * r; ctx.lineCap = "round";
    ctx.beginPath(); ctx.moveTo(px, py); ctx.lineTo(x, y); ctx.stroke();
  }
}

function strokeMask() {
  const canvas = $("brush");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const runs = [];
  let current = 0, length = 0, any = false;
  for (let i = 3; i < data.length; i += 4) {
    const v = data[i] >= 64 ? 1 : 0;
    any = any || v === 1;
    if (v === current) { length++; } else { runs.push(length); current = v; length = 1; }
  }
  runs.push(length);
  return any ? { size: [canvas.height, canvas.width], runs } : null;
}

function strokeEnd() {
  if (!state.drawing) return;
  state.drawing = false;
  const mask = strokeMask();
  const canvas = $("brush");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  if (!mask) return;
  const stroke = {
    mode: state.mode, layer: $("layer").value, concept: $("concept").value, mask,
    strength: Number($("strength").value),
  };
  if ($("use-units").checked) {
    stroke.units = $("units").value.split(/[\s,]+/).filter(Boolean).map(Number);
    if (stroke.units.some((u) => !Number.isInteger(u))) {
      showMessage("the unit set must be whole unit numbers, e.g. 3, 17, 42", true);
      return;
    }
  } else {
    stroke.size = Number($("size").value);
  }
  state.strokes.push(stroke);
  render(true);
}

// ------------------------------------------------------------------ the units table
async function loadUnitsTable() {
  const layer = $("units-layer").value;
  try {
    const r = await api("/api/units?" + new URLSearchParams({ layer }));
    state.unitsRows = r.units;
  } catch (err) {
    showMessage(err.message, true);
    return;
  }
  drawUnitsTable();
}

function formatUncertainty(u) {
  if (!u || u.p_value === null || u.p_value === undefined) return "";
  const parts = [`p = ${u.p_value.toPrecision(2)}`];
  if (typeof u.excess === "number") parts.push(`excess ${u.excess.toFixed(3)}`);
  return parts.join(" · ");
}

function drawUnitsTable() {
  const concept = $("units-concept").value;
  const onlyInterpretable = $("units-interpretable").checked;
  const rows = state.unitsRows.filter((r) => (!concept || r.label === concept) && (!onlyInterpretable || r.interpretable));
  const alphaConcepts = state.unitsRows.length ? Object.keys(state.unitsRows[0].alpha) : [];
  $("alpha-head").textContent = alphaConcepts.length ? "α (" + alphaConcepts.join(", ") + ")" : "α";
  $("units-count").textContent = `${rows.length} of ${state.unitsRows.length} units`;
  const body = $("units-table").querySelector("tbody");
  body.innerHTML = "";
  const layer = $("units-layer").value;
  rows.sort((a, b) => (b.interpretable - a.interpretable) || ((b.iou || 0) - (a.iou || 0)));
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.className = r.interpretable ? "" : "dim";
    const alpha = alphaConcepts.length ? alphaConcepts.map((c) => r.alpha[c].toFixed(2)).join(" / ") : "–";
    const iou = r.iou === null ? "–" : r.iou.toFixed(3);
    const unc = formatUncertainty(r.uncertainty);
    tr.innerHTML = `<td class="num">${r.unit}</td><td class="label"></td>` +
      `<td class="num">${iou}${unc ? ` <span class="muted">${unc}</span>` : ""}</td>` +
      `<td class="num">${r.chance_iou === null ? "–" : r.chance_iou.toFixed(3)}</td><td class="num">${alpha}</td>` +
      `<td>${r.strip ? `<img loading="lazy" alt="top images of unit ${r.unit}" src="/api/strip.png?${new URLSearchParams({ layer, unit: r.unit })}">` : ""}</td>` +
      `<td><button data-unit="${r.unit}">paint with it</button></td>`;
    tr.querySelector(".label").textContent = r.label + (r.interpretable ? "" : " (not interpretable)");
    tr.querySelector("button").addEventListener("click", () => {
      $("layer").value = layer; fillConcepts();
      if (r.interpretable) $("concept").value = r.label;
      $("units").value = String(r.unit); $("use-units").checked = true; refreshUnits();
      showView("paint-view");
    });
    body.appendChild(tr);
  }
}

init();
