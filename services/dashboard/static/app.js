// riskalert dashboard: one page, no build step. It calls the same versioned API as any
// integrator, with the API key the user signs in with (kept in this tab's sessionStorage
// only), so the key's tenant and roles bound what it shows. Text from the API is only ever
// set as text (never as HTML).

const KEY_STORAGE = "riskalert.apiKey";
const DAY_MS = 86_400_000;
const SLIDER_DAYS = 730; // how far back the map's time slider reaches
const INCIDENT_WINDOW_DAYS = 90; // incidents shown on the map: those of the last 90 days
const MAX_PAGES = 50; // bounds every paginated read
const BANDS = ["low", "moderate", "elevated", "high", "critical"];
export const BAND_COLOURS = {
  low: "#2e7d32",
  moderate: "#9e9d24",
  elevated: "#f9a825",
  high: "#e65100",
  critical: "#b71c1c",
};
const FAMILIES = [
  { name: "attacks and clashes", colour: "#6a1b9a",
    categories: ["armed_assault", "armed_clash", "other_violence", "territory_seizure"] },
  { name: "explosive devices", colour: "#212121", categories: ["ied", "vbied", "suicide_bombing"] },
  { name: "fire from afar", colour: "#1565c0",
    categories: ["indirect_fire", "air_drone_strike", "anti_aircraft_fire"] },
  { name: "kidnappings", colour: "#ad1457", categories: ["kidnapping"] },
  { name: "threats and statements", colour: "#00838f",
    categories: ["explicit_threat", "political_statement"] },
  { name: "other", colour: "#5d4037", categories: ["looting", "base_established"] },
];
// ISO 3166-1 numeric (the ids of the Natural Earth outlines) to alpha-3 (the API's codes),
// for Africa: area-scoped threats name countries by alpha-3.
const ALPHA3 = {
  "012": "DZA", "024": "AGO", "072": "BWA", "108": "BDI", "120": "CMR", "132": "CPV",
  "140": "CAF", "148": "TCD", "174": "COM", "178": "COG", "180": "COD", "204": "BEN",
  "226": "GNQ", "231": "ETH", "232": "ERI", "262": "DJI", "266": "GAB", "270": "GMB",
  "288": "GHA", "324": "GIN", "384": "CIV", "404": "KEN", "426": "LSO", "430": "LBR",
  "434": "LBY", "450": "MDG", "454": "MWI", "466": "MLI", "478": "MRT", "480": "MUS",
  "504": "MAR", "508": "MOZ", "516": "NAM", "562": "NER", "566": "NGA", "624": "GNB",
  "646": "RWA", "678": "STP", "686": "SEN", "690": "SYC", "694": "SLE", "706": "SOM",
  "710": "ZAF", "716": "ZWE", "728": "SSD", "729": "SDN", "732": "ESH", "748": "SWZ",
  "768": "TGO", "788": "TUN", "800": "UGA", "818": "EGY", "834": "TZA", "854": "BFA",
  "894": "ZMB",
};

// ------------------------------------------------------------------------------------------
// Small helpers

/** Build an element: h("a", {href: "#/map"}, "Map"). Strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function bandBadge(band) {
  return h("span", { class: `band band-${band}` }, band);
}

function day(iso) {
  return iso ? iso.slice(0, 10) : "";
}

function when(iso) {
  return iso ? iso.replace("T", " ").slice(0, 16) + " UTC" : "";
}

function isoAt(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function familyOf(category) {
  return FAMILIES.find((f) => f.categories.includes(category)) || FAMILIES[FAMILIES.length - 1];
}

function humanize(text) {
  return String(text).replaceAll("_", " ");
}

// ------------------------------------------------------------------------------------------
// Status, errors, the API

const statusEl = () => document.getElementById("status");
const errorEl = () => document.getElementById("error");

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Show progress while `promise` runs; errors are shown plainly, then rethrown. */
async function busy(label, promise) {
  const el = statusEl();
  el.textContent = `${label}…`;
  el.classList.add("busy");
  try {
    const result = await promise;
    el.textContent = "";
    return result;
  } catch (err) {
    el.textContent = "";
    showError(err);
    throw err;
  } finally {
    el.classList.remove("busy");
  }
}

function showError(err) {
  const box = errorEl();
  box.replaceChildren();
  const problem = err instanceof ApiError ? err.problem : null;
  const title = problem && problem.title ? `${problem.title} (${err.status})` : "Something went wrong";
  box.append(h("strong", {}, title), ": ", err.message || String(err));
  if (problem && Array.isArray(problem.errors) && problem.errors.length) {
    box.append(h("ul", {}, problem.errors.map((e) => h("li", {}, `${e.field || e.pointer}: ${e.reason}`))));
  }
  box.hidden = false;
}

function clearError() {
  errorEl().hidden = true;
  errorEl().replaceChildren();
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "";
  const doc = type.includes("json") ? await response.json() : null;
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    location.hash = "#/sign-in";
  }
  if (!response.ok) throw new ApiError(response.status, doc);
  return doc;
}

/** Every page of a list (bounded), following `next_cursor`. */
async function all(path, field) {
  const items = [];
  let after = 0;
  for (let page = 0; page < MAX_PAGES; page += 1) {
    const sep = path.includes("?") ? "&" : "?";
    const doc = await api(`${path}${sep}limit=500&after=${after}`);
    items.push(...doc[field]);
    if (doc.next_cursor === null || doc.next_cursor === undefined) break;
    after = doc.next_cursor;
  }
  return items;
}

// ------------------------------------------------------------------------------------------
// Routing

const routes = [
  [/^#\/sign-in$/, signIn],
  [/^#\/map$/, mapView],
  [/^#\/targets$/, targetsView],
  [/^#\/(sites|corridors)\/(\d+)(?:\?as_of=([0-9TZ:.-]+))?$/, targetView],
  [/^#\/thresholds$/, thresholdsView],
  [/^#\/thresholds\/(\d+)\/(\d+)$/, ruleView],
  [/^#\/deliveries$/, deliveriesView],
];
let currentCleanup = null;

async function route() {
  clearError();
  if (currentCleanup) {
    currentCleanup();
    currentCleanup = null;
  }
  const hash = location.hash || "#/map";
  if (!apiKey() && hash !== "#/sign-in") {
    location.hash = "#/sign-in";
    return;
  }
  document.getElementById("sign-out").hidden = !apiKey();
  for (const link of document.querySelectorAll(".top nav a")) {
    const active = hash.startsWith(link.getAttribute("href").replace(/s?$/, ""));
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  for (const [pattern, view] of routes) {
    const match = hash.match(pattern);
    if (match) {
      try {
        await view(main, ...match.slice(1));
      } catch (err) {
        if (!(err instanceof ApiError)) console.error(err);
      }
      return;
    }
  }
  main.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/map" }, "Back to the map")));
}

// ------------------------------------------------------------------------------------------
// Sign in

function signIn(main) {
  document.title = "Sign in · riskalert";
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "api-key-help", size: 50,
  });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        sessionStorage.setItem(KEY_STORAGE, input.value.trim());
        try {
          await busy("Checking the key", api("/v1/sites?limit=1"));
          location.hash = "#/map";
        } catch (err) {
          sessionStorage.removeItem(KEY_STORAGE);
        }
      },
    },
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("small", { id: "api-key-help" },
        "A tenant key (rak_…). It stays in this browser tab and is sent only to this service.")),
    h("button", { type: "submit" }, "Sign in"),
  );
  main.append(h("h1", {}, "Sign in"), form);
  input.focus();
}

// ------------------------------------------------------------------------------------------
// Map

let outlines = null; // the country outlines, read once per page load

async function countryOutlines() {
  if (!outlines) {
    const response = await fetch("vendor/world-atlas/countries-50m.json");
    const topo = await response.json();
    outlines = topojson.feature(topo, topo.objects.countries);
  }
  return outlines;
}

async function mapView(main) {
  document.title = "Map · riskalert";
  const now = Date.now();
  const slider = h("input", {
    id: "as-of", type: "range", min: -SLIDER_DAYS, max: 0, step: 1, value: 0,
    "aria-describedby": "as-of-value",
  });
  const shown = h("output", { id: "as-of-value", for: "as-of" }, "now");
  const nowButton = h("button", { type: "button", class: "secondary" }, "Back to now");
  const mapEl = h("div", { id: "map", role: "region", "aria-label": "Map of sites, corridors and incidents" });
  const list = h("div", { class: "side", id: "target-list" });
  main.append(
    h("h1", {}, "Map"),
    h("div", { class: "controls" },
      h("label", { for: "as-of" }, "As of"), slider, shown, nowButton),
    h("div", { class: "map-layout" }, mapEl, h("aside", { "aria-label": "Legend and targets" }, legend(), list)),
  );

  const map = L.map(mapEl, { zoomSnap: 0.5, attributionControl: true, keyboard: true });
  map.attributionControl.setPrefix(false);
  map.attributionControl.addAttribution("Outlines: Natural Earth");
  map.setView([14.5, -2], 5);
  const layers = {
    countries: L.layerGroup().addTo(map),
    threats: L.layerGroup().addTo(map),
    corridors: L.layerGroup().addTo(map),
    incidents: L.layerGroup().addTo(map),
    sites: L.layerGroup().addTo(map),
  };
  L.control.layers(null, {
    "Area-scoped threats": layers.threats,
    Incidents: layers.incidents,
    Corridors: layers.corridors,
    Sites: layers.sites,
  }, { collapsed: false }).addTo(map);
  let generation = 0; // each drawing's number: a drawing that is no longer the latest stops
  currentCleanup = () => {
    generation += 1; // leaving the page: drawings still loading stop
    map.stop();
    map.remove();
  };

  const world = await busy("Loading country outlines", countryOutlines());
  if (generation !== 0) return; // left the page meanwhile
  L.geoJSON(world, {
    style: { color: "#7a8793", weight: 1, fillColor: "#f7f5ef", fillOpacity: 1 },
    interactive: false,
  }).addTo(layers.countries);

  const [sites, corridors] = await busy(
    "Loading sites and corridors",
    Promise.all([all("/v1/sites", "features"), all("/v1/corridors", "features")]),
  );
  if (generation !== 0) return;
  const bounds = L.latLngBounds([]);
  for (const s of sites) bounds.extend([s.geometry.coordinates[1], s.geometry.coordinates[0]]);
  for (const c of corridors) for (const [lon, lat] of c.geometry.coordinates) bounds.extend([lat, lon]);
  if (bounds.isValid()) map.fitBounds(bounds.pad(0.25), { animate: false });

  async function draw() {
    const mine = ++generation;
    const offset = Number(slider.value);
    const asOf = offset === 0 ? null : isoAt(now + offset * DAY_MS);
    shown.textContent = asOf ? day(asOf) : "now";
    mapEl.dataset.asOf = asOf || "now";
    mapEl.dataset.ready = "false";
    const [bands, incidents] = await busy(
      asOf ? `Scoring as of ${day(asOf)}` : "Loading scores and incidents",
      Promise.all([bandsAsOf(sites, corridors, asOf), incidentsBefore(asOf ?? isoAt(now))]),
    );
    if (mine !== generation) return; // the slider moved on meanwhile
    const hotspots = await busy("Loading corridor hotspots", hotspotsAsOf(corridors, asOf));
    if (mine !== generation) return;
    drawThreats(layers.threats, world, incidents);
    drawIncidents(layers.incidents, incidents, asOf ?? isoAt(now));
    drawCorridors(layers.corridors, corridors, bands, hotspots, asOf);
    drawSites(layers.sites, sites, bands, asOf);
    list.replaceChildren(targetTable(sites, corridors, bands, asOf));
    mapEl.dataset.ready = "true";
  }
  let pending = null;
  slider.addEventListener("input", () => {
    const offset = Number(slider.value);
    shown.textContent = offset === 0 ? "now" : day(isoAt(now + offset * DAY_MS));
    clearTimeout(pending);
    pending = setTimeout(() => draw().catch(() => {}), 350);
  });
  nowButton.addEventListener("click", () => {
    slider.value = 0;
    draw().catch(() => {});
  });
  await draw();
}

/** Bands of every target: stored now, or from a backtest as of a past time. */
async function bandsAsOf(sites, corridors, asOf) {
  const bands = new Map();
  if (!asOf) {
    for (const s of sites) bands.set(`site:${s.id}`, s.properties.current_score);
    for (const c of corridors) bands.set(`corridor:${c.id}`, c.properties.current_score);
    return bands;
  }
  const targets = [
    ...sites.map((s) => ({ kind: "site", id: s.id })),
    ...corridors.map((c) => ({ kind: "corridor", id: c.id })),
  ];
  for (let start = 0; start < targets.length; start += 1000) {
    const chunk = targets.slice(start, start + 1000);
    const out = await api("/v1/backtests", { method: "POST", body: { targets: chunk, times: [asOf] } });
    chunk.forEach((t, i) => {
      bands.set(`${t.kind}:${t.id}`, { score: out.scores[i][0], band: out.bands[i][0], as_of: asOf });
    });
  }
  return bands;
}

async function incidentsBefore(untilIso) {
  const since = isoAt(Date.parse(untilIso) - INCIDENT_WINDOW_DAYS * DAY_MS);
  const query = `since=${encodeURIComponent(since)}&until=${encodeURIComponent(untilIso)}`;
  const items = await all(`/v1/incidents?${query}`, "features");
  // As the service knew them then: reported by that time.
  return items.filter((f) => f.properties.reported_at <= untilIso && f.properties.lifecycle !== "retracted");
}

async function hotspotsAsOf(corridors, asOf) {
  const out = new Map();
  const query = asOf ? `?as_of=${encodeURIComponent(asOf)}` : "";
  // One request per corridor: bounded to the first 100 (the list beside the map has them all).
  await Promise.all(
    corridors.slice(0, 100).map(async (c) => {
      const score = await api(`/v1/corridors/${c.id}/score${query}`);
      out.set(c.id, score.hotspots || []);
    }),
  );
  return out;
}

function targetLink(plural, id, asOf) {
  return asOf ? `#/${plural}/${id}?as_of=${asOf}` : `#/${plural}/${id}`;
}

function drawSites(layer, sites, bands, asOf) {
  layer.clearLayers();
  for (const s of sites) {
    const current = bands.get(`site:${s.id}`);
    const band = current ? current.band : null;
    const [lon, lat] = s.geometry.coordinates;
    const marker = L.circleMarker([lat, lon], {
      radius: 9, weight: 2, color: "#111", fillOpacity: 0.95,
      fillColor: band ? BAND_COLOURS[band] : "#9e9e9e",
      className: `site-marker band-${band || "none"}`,
    }).addTo(layer);
    const label = `${s.properties.name}: ${band ? `${band}, ${current.score.toFixed(1)}` : "not scored yet"}`;
    marker.bindTooltip(label);
    marker.bindPopup(() => h("div", {},
      h("strong", {}, s.properties.name), h("br"),
      band ? bandBadge(band) : "not scored", " ", current ? current.score.toFixed(1) : "", h("br"),
      h("a", { href: targetLink("sites", s.id, asOf) }, "Score, explanation and history")));
    const el = marker.getElement();
    if (el) {
      el.dataset.siteId = String(s.id);
      el.dataset.band = band || "none";
      focusable(el, label, () => marker.openPopup());
    }
  }
}

/** Make a map shape reachable with Tab and opened with Enter or Space, named for readers. */
function focusable(el, label, open) {
  el.setAttribute("role", "button");
  el.setAttribute("tabindex", "0");
  el.setAttribute("aria-label", label);
  el.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      open();
    }
  });
}

function drawCorridors(layer, corridors, bands, hotspots, asOf) {
  layer.clearLayers();
  for (const c of corridors) {
    const current = bands.get(`corridor:${c.id}`);
    const line = c.geometry.coordinates.map(([lon, lat]) => [lat, lon]);
    const band = current ? current.band : null;
    const base = L.polyline(line, {
      color: "#37474f", weight: 4, opacity: 0.7, dashArray: c.properties.mode === "air" ? "6 6" : null,
      className: `corridor-line band-${band || "none"}`,
    }).addTo(layer);
    base.bindTooltip(`${c.properties.name}: ${band || "not scored yet"}`);
    base.bindPopup(() => h("div", {},
      h("strong", {}, c.properties.name), h("br"), band ? bandBadge(band) : "not scored", h("br"),
      h("a", { href: targetLink("corridors", c.id, asOf) }, "Score, explanation and history")));
    const el = base.getElement();
    if (el) {
      el.dataset.corridorId = String(c.id);
      el.dataset.band = band || "none";
      focusable(el, `${c.properties.name}: ${band || "not scored yet"}`, () => base.openPopup());
    }
    // Hotspot segments: the pieces scoring above "low", in their band's colour.
    for (const spot of hotspots.get(c.id) || []) {
      if (spot.properties.band === "low") continue;
      const seg = L.polyline(spot.geometry.coordinates.map(([lon, lat]) => [lat, lon]), {
        color: BAND_COLOURS[spot.properties.band], weight: 8, opacity: 0.9,
        className: `hotspot band-${spot.properties.band}`,
      }).addTo(layer);
      seg.bindTooltip(
        `${c.properties.name}, segment ${spot.properties.index + 1}: ${spot.properties.band}, ` +
          `${spot.properties.score.toFixed(1)} (${spot.properties.incident_count} incidents)`,
      );
    }
  }
}

function drawIncidents(layer, incidents, untilIso) {
  layer.clearLayers();
  const until = Date.parse(untilIso);
  for (const f of incidents) {
    if (!f.geometry) continue;
    const p = f.properties;
    const ageDays = Math.max(0, (until - Date.parse(p.occurred_at)) / DAY_MS);
    const family = familyOf(p.category);
    const [lon, lat] = f.geometry.coordinates;
    const marker = L.circleMarker([lat, lon], {
      radius: 5, weight: 1, color: "#fff", fillColor: family.colour,
      fillOpacity: ageDays <= 7 ? 0.95 : ageDays <= 30 ? 0.7 : 0.4,
      className: `incident-marker family-${FAMILIES.indexOf(family)}`,
    }).addTo(layer);
    marker.bindTooltip(`${humanize(p.category)}, ${day(p.occurred_at)}: ${p.title || p.location_name || ""}`);
  }
}

function drawThreats(layer, world, incidents) {
  layer.clearLayers();
  const scoped = new Map(); // alpha-3 -> threats naming it
  for (const f of incidents) {
    const scope = f.properties.scope;
    if (!scope) continue;
    for (const code of scope.countries) {
      if (!scoped.has(code)) scoped.set(code, []);
      scoped.get(code).push(f.properties);
    }
  }
  if (!scoped.size) return;
  const features = world.features.filter((c) => scoped.has(ALPHA3[c.id]));
  L.geoJSON({ type: "FeatureCollection", features }, {
    style: { color: "#c62828", weight: 2, fillColor: "#ef9a9a", fillOpacity: 0.35, dashArray: "4 3" },
    onEachFeature: (feature, shape) => {
      const threats = scoped.get(ALPHA3[feature.id]);
      shape.bindTooltip(
        `${feature.properties.name}: ${threats.length} area-scoped threat(s), latest ` +
          `${day(threats.map((t) => t.occurred_at).sort().at(-1))}`,
      );
    },
  }).addTo(layer);
}

function legend() {
  return h("div", { class: "legend" },
    h("h2", {}, "Legend"),
    h("p", { class: "muted" }, "Sites and corridor hotspots by band:"),
    h("ul", {}, BANDS.map((b) => h("li", {},
      h("span", { class: "swatch", style: `background:${BAND_COLOURS[b]}` }), b))),
    h("p", { class: "muted" }, `Incidents of the ${INCIDENT_WINDOW_DAYS} days before, by kind (fainter when older):`),
    h("ul", {}, FAMILIES.map((f) => h("li", {},
      h("span", { class: "swatch", style: `background:${f.colour}` }), f.name))),
    h("ul", {},
      h("li", {}, h("span", { class: "swatch area", style: "background:#ef9a9a;border:2px dashed #c62828" }),
        "a country named by an area-scoped threat"),
      h("li", {}, h("span", { class: "swatch line", style: "background:#37474f" }), "corridor (dashed: flight leg)")),
  );
}

function targetTable(sites, corridors, bands, asOf) {
  const rows = [
    ...sites.map((s) => ["site", s, bands.get(`site:${s.id}`)]),
    ...corridors.map((c) => ["corridor", c, bands.get(`corridor:${c.id}`)]),
  ].sort((a, b) => (b[2] ? b[2].score : -1) - (a[2] ? a[2].score : -1));
  return h("div", {},
    h("h2", {}, asOf ? `Targets as of ${day(asOf)}` : "Targets now"),
    h("table", { id: "targets-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Target"), h("th", {}, "Band"), h("th", { class: "num" }, "Score"))),
      h("tbody", {}, rows.map(([kind, t, score]) => h("tr", { dataset: { kind, id: t.id, band: score ? score.band : "none" } },
        h("td", {}, h("a", { href: targetLink(`${kind}s`, t.id, asOf) }, t.properties.name)),
        h("td", {}, score ? bandBadge(score.band) : "–"),
        h("td", { class: "num" }, score ? score.score.toFixed(1) : "–"))))));
}

// ------------------------------------------------------------------------------------------
// Sites and corridors: list, and one target's score, explanation and history

async function targetsView(main) {
  document.title = "Sites and corridors · riskalert";
  const [sites, corridors] = await busy(
    "Loading sites and corridors",
    Promise.all([all("/v1/sites", "features"), all("/v1/corridors", "features")]),
  );
  const bands = new Map();
  for (const s of sites) bands.set(`site:${s.id}`, s.properties.current_score);
  for (const c of corridors) bands.set(`corridor:${c.id}`, c.properties.current_score);
  main.append(h("h1", {}, "Sites and corridors"), targetTable(sites, corridors, bands, null));
}

async function targetView(main, plural, id, asOf) {
  const kind = plural === "sites" ? "site" : "corridor";
  const at = asOf ? `?as_of=${encodeURIComponent(asOf)}` : "";
  const now = Date.now();
  const times = [];
  for (let week = 104; week >= 0; week -= 1) times.push(isoAt(now - week * 7 * DAY_MS));
  const [target, score, history, alerts, series] = await busy(
    "Loading the score, its history and alerts",
    Promise.all([
      api(`/v1/${plural}/${id}`),
      api(`/v1/${plural}/${id}/score${at}`),
      all(`/v1/${plural}/${id}/score-history?`, "points"),
      firings(id),
      api("/v1/backtests", { method: "POST", body: { targets: [{ kind, id: Number(id) }], times } }),
    ]),
  );
  const name = target.properties.name;
  document.title = `${name} · riskalert`;
  main.append(
    h("p", {}, h("a", { href: "#/map" }, "← Map"),
      asOf ? [" · ", h("a", { href: `#/${plural}/${id}` }, "Now")] : ""),
    h("h1", {}, `${name} (${kind})`),
    h("div", { class: "score-head" },
      h("span", { class: "score-big", id: "score-value" }, score.score.toFixed(1)),
      bandBadge(score.band),
      h("span", { class: "muted" }, `as of ${when(score.as_of)}, model version ${score.model_version}, ` +
        `${score.incident_count} incident(s) counted`)),
    h("p", {}, explainInWords(name, score)),
    h("h2", {}, "Components"),
    componentsTable(score),
    h("h2", {}, "Incidents behind the score"),
    contributionsList(score),
    h("h2", {}, "Score history"),
    historyChart(series, history, alerts),
    h("details", {},
      h("summary", {}, "Score history as a table"),
      historyTable(series, alerts)),
  );
}

/** When alerts on the target fired (or triggered): each alert's history (newest 50 alerts). */
async function firings(targetId) {
  const alerts = await all(`/v1/alerts?target_id=${targetId}`, "alerts");
  const details = await Promise.all(alerts.slice(-50).map((a) => api(`/v1/alerts/${a.id}`)));
  return details.flatMap((d) => d.events
    .filter((e) => e.to_state === "firing" || e.to_state === "triggered")
    .filter((e) => e.from_state !== e.to_state)
    .map((e) => ({ at: e.at, state: e.to_state, band: e.band, reason: e.reason })));
}

function explainInWords(name, score) {
  const parts = Object.entries(score.components)
    .filter(([, points]) => points > 0.05)
    .sort((a, b) => b[1] - a[1])
    .map(([component, points]) => `${component} ${points.toFixed(1)} points`);
  const top = score.contributions[0];
  let text = `${name} scores ${score.score.toFixed(1)} out of 100, in the ${score.band} band.`;
  text += parts.length ? ` It is made of ${parts.join(", ")}.` : " No incident counts towards it now.";
  if (top) text += ` The largest share (${Math.round(top.share * 100)} %) comes from: ${top.why}`;
  return text;
}

function componentsTable(score) {
  return h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Component"), h("th", { class: "num" }, "Points"))),
    h("tbody", {}, Object.entries(score.components).map(([component, points]) =>
      h("tr", {}, h("td", {}, component), h("td", { class: "num" }, points.toFixed(1))))));
}

function contributionsList(score) {
  if (!score.contributions.length) return h("p", { class: "muted" }, "None: no recent incident reaches this target.");
  // `why` starts with the incident's title and says, in words, what made it count.
  return h("ol", { class: "contributions" }, score.contributions.map((c) => h("li", {},
    h("strong", {}, `${c.points.toFixed(1)} points (${Math.round(c.share * 100)} %), ${c.component}`),
    h("br"), c.why)));
}

function historyChart(series, history, alerts) {
  const box = h("div", { class: "chart", id: "history-chart", role: "img",
    "aria-label": "Weekly score over the last two years, with the alerts that fired marked" });
  const xs = series.times.map((t) => Date.parse(t) / 1000);
  const ys = series.scores[0];
  const fired = alerts.map((a) => Date.parse(a.at) / 1000).filter((t) => t >= xs[0]);
  const recorded = new Map(history.map((p) => [Math.round(Date.parse(p.as_of) / 1000), p.score]));
  const recordedXs = [...recorded.keys()].filter((t) => t >= xs[0]);
  // One x axis for both series: weekly as-of scores and the recorded changes.
  const allXs = [...new Set([...xs, ...recordedXs])].sort((a, b) => a - b);
  const weekly = new Map(xs.map((x, i) => [x, ys[i]]));
  const data = [allXs, allXs.map((x) => weekly.get(x) ?? null), allXs.map((x) => recorded.get(x) ?? null)];
  const width = Math.max(560, Math.min(1100, (document.getElementById("main").clientWidth || 900) - 40));
  const markAlerts = (u) => {
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#b71c1c";
    ctx.lineWidth = 2;
    ctx.setLineDash([5, 4]);
    for (const t of fired) {
      const x = u.valToPos(t, "x", true);
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  };
  new uPlot({
    width, height: 280,
    scales: { y: { range: [0, 100] } },
    series: [
      {},
      { label: "score (weekly, as of)", stroke: "#0b5cad", width: 2, spanGaps: true },
      { label: "recorded change", stroke: "#e65100", width: 0, points: { show: true, size: 7, fill: "#e65100" } },
    ],
    axes: [{}, { label: "score" }],
    hooks: { draw: [markAlerts] },
  }, data, box);
  box.append(h("p", { class: "muted" }, `Dashed red lines: the ${fired.length} alert(s) that fired in the period.`));
  return box;
}

function historyTable(series, alerts) {
  return h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Week"), h("th", { class: "num" }, "Score"), h("th", {}, "Band"))),
    h("tbody", {}, series.times.map((t, i) => h("tr", {},
      h("td", {}, day(t)), h("td", { class: "num" }, series.scores[0][i].toFixed(1)),
      h("td", {}, bandBadge(series.bands[0][i]))))),
    h("caption", {}, `Alerts fired: ${alerts.map((a) => `${day(a.at)} (${a.state})`).join("; ") || "none"}`));
}

// ------------------------------------------------------------------------------------------
// Thresholds: subscriptions, their rules, preview a change, save it

async function thresholdsView(main) {
  document.title = "Thresholds · riskalert";
  const subscriptions = await busy("Loading subscriptions", all("/v1/subscriptions", "subscriptions"));
  main.append(h("h1", {}, "Thresholds"));
  if (!subscriptions.length) {
    main.append(h("p", {}, "No subscriptions yet: create one through the API (POST /v1/subscriptions)."));
    return;
  }
  main.append(h("table", { id: "rules-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Subscription"), h("th", {}, "Rule"), h("th", {}, ""))),
    h("tbody", {}, subscriptions.flatMap((s) => s.rules.map((r) => h("tr", {},
      h("td", {}, `${s.name} (${s.scope}${s.enabled ? "" : ", disabled"})`),
      h("td", {}, describeRule(r)),
      h("td", {}, h("a", { href: `#/thresholds/${s.id}/${r.id}` }, "Edit and preview"))))))));
}

function describeRule(rule) {
  if (rule.kind === "threshold") {
    return `raise at ${rule.metric} ${rule.raise_at}, clear below ${rule.clear_at}`;
  }
  return `${humanize(rule.trigger)} within ${rule.radius_km} km (${rule.severity})`;
}

/** A rule's editable fields, as form controls, by kind. Durations are edited in hours. */
const THRESHOLD_FIELDS = [
  ["raise_at", "Raise at", "number", "Score 0-100 (or band name when the metric is band)"],
  ["clear_at", "Clear below", "number", "Hysteresis: the alert clears below this"],
  ["pending", "Pending (hours)", "hours", "How long the condition must hold first"],
  ["keep_firing", "Keep firing (hours)", "hours", "How long it stays firing after clearing"],
  ["cooldown", "Cooldown (hours)", "hours", "Least time between two firings"],
];
const EVENT_FIELDS = [
  ["radius_km", "Radius (km)", "number", "Distance from the target"],
  ["max_age", "Maximum age (hours)", "hours", "Older incidents (backfills) do not trigger"],
];

function seconds(duration) {
  // The API serialises durations as ISO 8601 (PT1H30M, P1D...).
  const m = /^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(duration);
  if (!m) return Number(duration) || 0;
  const [, d, hh, mm, ss] = m.map((v) => Number(v || 0));
  return d * 86400 + hh * 3600 + mm * 60 + ss;
}

async function ruleView(main, subscriptionId, ruleId) {
  const subscription = await busy("Loading the rule", api(`/v1/subscriptions/${subscriptionId}`));
  const rule = subscription.rules.find((r) => String(r.id) === ruleId);
  if (!rule) {
    main.append(h("h1", {}, "Rule not found"));
    return;
  }
  document.title = `Rule ${rule.id} · riskalert`;
  const fields = rule.kind === "threshold" ? THRESHOLD_FIELDS : EVENT_FIELDS;
  const inputs = {};
  const form = h("form", { id: "rule-form", onsubmit: (e) => e.preventDefault() });
  if (rule.kind === "threshold") {
    const metric = h("select", { id: "f-metric", name: "metric" },
      ["score", "band"].map((m) => h("option", { value: m, selected: rule.metric === m }, m)));
    inputs.metric = metric;
    form.append(h("div", { class: "field" }, h("label", { for: "f-metric" }, "Metric"), metric));
  } else {
    const severity = h("select", { id: "f-severity", name: "severity" },
      BANDS.map((b) => h("option", { value: b, selected: rule.severity === b }, b)));
    inputs.severity = severity;
    form.append(h("div", { class: "field" }, h("label", { for: "f-severity" }, "Severity"), severity));
  }
  for (const [name, label, type, help] of fields) {
    const value = type === "hours" ? seconds(rule[name]) / 3600 : rule[name];
    const input = h("input", {
      // Levels are text: a score, or a band name when the metric is band.
      id: `f-${name}`, name, value: value ?? "", type: type === "hours" ? "number" : "text",
      min: type === "hours" ? 0 : null, step: type === "hours" ? "any" : null,
      "aria-describedby": `f-${name}-help`,
    });
    inputs[name] = input;
    form.append(h("div", { class: "field" },
      h("label", { for: `f-${name}` }, label), input, h("small", { id: `f-${name}-help` }, help)));
  }
  const today = new Date();
  const sinceInput = h("input", { id: "p-since", type: "date", value: isoAt(today - 90 * DAY_MS).slice(0, 10) });
  const untilInput = h("input", { id: "p-until", type: "date", value: isoAt(today).slice(0, 10) });
  const stepInput = h("select", { id: "p-step" },
    [["PT6H", "every 6 hours"], ["P1D", "every day"], ["P7D", "every week"]].map(([v, t]) =>
      h("option", { value: v, selected: v === "P1D" }, t)));
  const previewButton = h("button", { type: "button", id: "preview" }, "Preview on history");
  const saveButton = h("button", { type: "button", id: "save", class: "secondary" }, "Save the rule");
  const result = h("div", { id: "preview-result", "aria-live": "polite" });
  const saved = h("p", { id: "saved", role: "status" });

  function changes() {
    const out = {};
    for (const [name, input] of Object.entries(inputs)) {
      const raw = input.value.trim();
      const field = fields.find((f) => f[0] === name);
      if (!field) out[name] = raw;
      else if (field[2] === "hours") out[name] = Math.round(Number(raw) * 3600);
      else if (raw === "") out[name] = null;
      else out[name] = Number.isNaN(Number(raw)) ? raw : Number(raw);
    }
    return out;
  }
  function period() {
    const until = untilInput.value === isoAt(today).slice(0, 10)
      ? isoAt(Date.now() - 60_000)
      : `${untilInput.value}T23:59:59Z`;
    return { since: `${sinceInput.value}T00:00:00Z`, until, step: stepInput.value };
  }
  previewButton.addEventListener("click", async () => {
    previewButton.disabled = true;
    clearError();
    try {
      const body = { rule_id: rule.id, changes: changes(), ...period() };
      const out = await busy("Replaying the current and the edited rule on history",
        api("/v1/alert-previews", { method: "POST", body }));
      result.replaceChildren(previewReport(out));
    } catch (err) {
      result.replaceChildren();
    } finally {
      previewButton.disabled = false;
    }
  });
  saveButton.addEventListener("click", async () => {
    saveButton.disabled = true;
    clearError();
    saved.textContent = "";
    try {
      const { id, ...stored } = rule;
      const body = { ...stored, ...changes() };
      const out = await busy("Saving", api(`/v1/subscriptions/${subscription.id}/rules/${rule.id}`,
        { method: "PUT", body }));
      Object.assign(rule, out);
      saved.textContent = `Saved: ${describeRule(out)}.`;
      saved.className = "ok";
    } catch (err) {
      // Shown in the error box by busy(); the stored rule is unchanged.
    } finally {
      saveButton.disabled = false;
    }
  });

  main.append(
    h("p", {}, h("a", { href: "#/thresholds" }, "← Thresholds")),
    h("h1", {}, `${subscription.name}: ${rule.kind} rule ${rule.id}`),
    h("p", {}, "Now: ", describeRule(rule), "."),
    h("div", { class: "compare" },
      h("section", { class: "panel", "aria-labelledby": "edit-h" }, h("h2", { id: "edit-h" }, "Edit"), form),
      h("section", { class: "panel", "aria-labelledby": "period-h" },
        h("h2", { id: "period-h" }, "Preview period"),
        h("div", { class: "field" }, h("label", { for: "p-since" }, "From"), sinceInput),
        h("div", { class: "field" }, h("label", { for: "p-until" }, "To"), untilInput),
        h("div", { class: "field" }, h("label", { for: "p-step" }, "Evaluate"), stepInput),
        h("div", { class: "row" }, previewButton, saveButton), saved)),
    result,
  );
}

function previewReport(out) {
  const current = out.baseline;
  const weeks = new Map();
  for (const w of out.counts_per_week) weeks.set(w.week_start, { edited: w.count, current: 0 });
  for (const w of current ? current.counts_per_week : []) {
    const row = weeks.get(w.week_start) || { edited: 0, current: 0 };
    row.current = w.count;
    weeks.set(w.week_start, row);
  }
  const peak = Math.max(1, ...[...weeks.values()].flatMap((r) => [r.edited, r.current]));
  const bar = (n, cls) => h("span", { class: `bar ${cls}`, style: `width:${(n / peak) * 120}px` });
  return h("section", { "aria-labelledby": "preview-h" },
    h("h2", { id: "preview-h" }, "Preview"),
    h("p", { id: "preview-summary" },
      `Over ${day(out.since)} to ${day(out.until)} on ${out.targets} target(s): the edited rule would have raised `,
      h("strong", { id: "edited-total" }, String(out.total)),
      " alert(s); the current rule ",
      h("strong", { id: "current-total" }, current ? String(current.total) : "–"), ".",
      out.truncated ? " (The list below is cut short.)" : ""),
    h("table", { id: "weeks-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Week of"), h("th", { class: "num" }, "Current"),
        h("th", { class: "num" }, "Edited"), h("th", {}, ""))),
      h("tbody", {}, [...weeks.entries()].sort().map(([week, r]) => h("tr", {},
        h("td", {}, week), h("td", { class: "num" }, String(r.current)), h("td", { class: "num" }, String(r.edited)),
        h("td", {}, bar(r.current, "current"), h("br"), bar(r.edited, "edited")))))),
    h("h2", {}, "Alerts the edited rule would have raised, and why"),
    out.alerts.length
      ? h("ol", { id: "preview-alerts" }, out.alerts.map((a) => h("li", {},
        h("strong", {}, `${when(a.at)}: ${a.target_name}`), " ", bandBadge(a.band), " ", a.reason,
        h("ul", {}, [...(a.incident ? [a.incident] : []), ...a.why].map((i) =>
          h("li", {}, `${day(i.occurred_at)}: ${i.why}`))))))
      : h("p", { class: "muted" }, "None in this period."));
}

// ------------------------------------------------------------------------------------------
// Deliveries: failed and pending, their attempts, replay

async function deliveriesView(main) {
  document.title = "Deliveries · riskalert";
  const status = h("select", { id: "d-status" },
    [["failed,pending", "failed and pending"], ...["failed", "pending", "sending", "succeeded",
      "cancelled", "superseded"].map((s) => [s, s])].map(([v, t]) => h("option", { value: v }, t)));
  const table = h("div", { id: "deliveries" });
  main.append(
    h("h1", {}, "Deliveries"),
    h("div", { class: "controls" }, h("label", { for: "d-status" }, "Status"), status),
    table,
  );
  const endpoints = new Map(
    (await busy("Loading endpoints", all("/v1/endpoints", "endpoints"))).map((e) => [e.id, e]),
  );
  async function load() {
    const statuses = status.value.split(",");
    const pages = await busy(`Loading ${status.selectedOptions[0].textContent} deliveries`,
      Promise.all(statuses.map((s) => api(`/v1/deliveries?status=${s}&limit=200`))));
    const items = pages.flatMap((p) => p.deliveries).sort((a, b) => b.id - a.id);
    table.replaceChildren(deliveryTable(items, endpoints));
  }
  status.addEventListener("change", () => load().catch(() => {}));
  await load();
}

function deliveryTable(deliveries, endpoints) {
  if (!deliveries.length) return h("p", { class: "muted" }, "None.");
  const headings = ["Id", "Status", "Event", "Endpoint", "Attempts", "Last error", "Next attempt", ""];
  return h("table", {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, deliveries.map((d) => {
      const attempts = h("td", { colspan: headings.length });
      const detailRow = h("tr", { hidden: true }, attempts);
      const show = h("button", { type: "button", class: "secondary", "aria-expanded": "false" }, "Attempts");
      show.addEventListener("click", async () => {
        const open = show.getAttribute("aria-expanded") === "true";
        show.setAttribute("aria-expanded", String(!open));
        detailRow.hidden = open;
        if (!open) {
          try {
            const detail = await busy("Loading attempts", api(`/v1/deliveries/${d.id}`));
            attempts.replaceChildren(attemptTable(detail.attempt_log));
          } catch (err) {
            attempts.replaceChildren(h("p", { class: "muted" }, "Could not load the attempts."));
          }
        }
      });
      const replay = h("button", { type: "button" }, "Replay");
      replay.addEventListener("click", async () => {
        replay.disabled = true;
        try {
          const out = await busy("Replaying", api(`/v1/deliveries/${d.id}/replay`, { method: "POST" }));
          replay.replaceWith(h("span", { class: "ok" }, `queued again (${out.status})`));
        } catch (err) {
          replay.disabled = false;
        }
      });
      const endpoint = endpoints.get(d.endpoint_id);
      return [
        h("tr", { dataset: { deliveryId: d.id } },
          h("td", {}, String(d.id)), h("td", {}, d.status), h("td", {}, d.event_type),
          h("td", {}, endpoint ? `${endpoint.name} (${endpoint.kind})` : String(d.endpoint_id)),
          h("td", { class: "num" }, String(d.attempts)), h("td", {}, d.last_error || ""),
          h("td", {}, d.status === "pending" ? when(d.next_attempt_at) : ""),
          h("td", {}, show, " ", d.status === "failed" ? replay : "")),
        detailRow,
      ];
    })));
}

function attemptTable(attempts) {
  if (!attempts.length) return h("p", { class: "muted" }, "No attempt yet.");
  return h("table", {},
    h("thead", {}, h("tr", {}, ["#", "Started", "Outcome", "Status", "Took", "Error"].map((t) => h("th", {}, t)))),
    h("tbody", {}, attempts.map((a) => h("tr", {},
      h("td", {}, String(a.number)), h("td", {}, when(a.started_at)), h("td", {}, a.outcome),
      h("td", {}, a.status_code ?? ""), h("td", { class: "num" }, `${Math.round(a.duration_ms)} ms`),
      h("td", {}, a.error || "")))));
}

// ------------------------------------------------------------------------------------------

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  location.hash = "#/sign-in";
});
window.addEventListener("hashchange", () => route());
route();
