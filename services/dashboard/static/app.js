// riskalert dashboard: one page, no build step. It calls the same versioned API as any
// integrator, with the API key the user signs in with (kept in this tab's sessionStorage
// only), so the key's tenant and roles bound what it shows. Text from the API is only ever
// set as text: every node is built by h(), and Leaflet gets elements, never strings.

const KEY_STORAGE = "riskalert.apiKey";
const NOTE_STORAGE = "riskalert.signInNote"; // why the last key stopped working
const DAY_MS = 86_400_000;
const SLIDER_DAYS = 1826; // how far back the map's time slider reaches: five years
const HISTORY_WEEKS = 104; // the target page's chart
const INCIDENT_WINDOW_DAYS = 90; // incidents shown on the map: those of the 90 days before
const MAX_PAGES = 50; // bounds every paginated read
const MAX_HOTSPOT_CORRIDORS = 100;
const IN_FLIGHT = 6; // requests at once for per-item reads
const RATE_LIMIT_RETRIES = 3;
const BANDS = ["low", "moderate", "elevated", "high", "critical"];
const DELIVERY_ORDER = ["failed", "pending", "sending", "succeeded", "cancelled", "superseded"];
const BAND_COLOURS = {
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

/** Build an element: h("a", {href: "#/map"}, "Map"). Strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    // Through the CSSOM: the page's CSP allows no inline style attributes.
    else if (name === "style") el.style.cssText = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const bandBadge = (band) => h("span", { class: `band band-${band}` }, band);
const day = (iso) => (iso ? iso.slice(0, 10) : "");
const when = (iso) => (iso ? `${iso.replace("T", " ").slice(0, 16)} UTC` : "");
const isoAt = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
const humanize = (text) => String(text).replaceAll("_", " ");
const latLng = ([lon, lat]) => [lat, lon];
const familyOf = (category) =>
  FAMILIES.find((f) => f.categories.includes(category)) || FAMILIES[FAMILIES.length - 1];

/** Run `work(item)` for every item, at most IN_FLIGHT at once; results in order. */
async function eachLimited(items, work) {
  const out = new Array(items.length);
  let next = 0;
  const runner = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await work(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, items.length) }, runner));
  return out;
}

const statusEl = () => document.getElementById("status");
const errorEl = () => document.getElementById("error");
let navigation = 0; // bumped on every page change: work for a page left behind shows nothing

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Show progress while `promise` runs, and its error, as long as `current()` holds. */
async function busy(label, promise, current = onThisPage()) {
  const el = statusEl();
  el.textContent = `${label}…`;
  el.classList.add("busy");
  try {
    return await promise;
  } catch (err) {
    if (current()) showError(err);
    throw err;
  } finally {
    if (current()) {
      el.textContent = "";
      el.classList.remove("busy");
    }
  }
}

function onThisPage() {
  const token = navigation;
  return () => token === navigation;
}

function showError(err) {
  const problem = err instanceof ApiError ? err.problem : null;
  const title = problem && problem.title ? `${problem.title} (${err.status})` : "Something went wrong";
  const fields = problem && Array.isArray(problem.errors) ? problem.errors : [];
  errorEl().replaceChildren(
    h("strong", {}, title), ": ", err.message || String(err),
    fields.length ? h("ul", {}, fields.map((e) => h("li", {}, `${e.field || e.pointer}: ${e.reason}`))) : "",
  );
}

const clearError = () => errorEl().replaceChildren();
const apiKey = () => sessionStorage.getItem(KEY_STORAGE);

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const send = () => fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let response = await send();
  // Over the key's rate limit (a map of many corridors reads them one by one): wait as told,
  // a few times at most.
  for (let retry = 0; response.status === 429 && retry < RATE_LIMIT_RETRIES; retry += 1) {
    const wait = Math.min(Number(response.headers.get("retry-after")) || 1, 10);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    response = await send();
  }
  const type = response.headers.get("content-type") || "";
  const doc = type.includes("json") ? await response.json() : null;
  if (response.status === 401 && apiKey()) {
    // The key stopped working (revoked, or mistyped): say so on the sign-in form.
    sessionStorage.removeItem(KEY_STORAGE);
    sessionStorage.setItem(NOTE_STORAGE, (doc && doc.detail) || "the API key was refused");
    location.hash = "#/sign-in";
  }
  if (!response.ok) throw new ApiError(response.status, doc);
  return doc;
}

/** Every page of a list (at most MAX_PAGES), following `next_cursor`. */
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

const routes = [
  [/^#\/sign-in$/, signIn],
  [/^#\/map$/, mapView],
  [/^#\/targets$/, targetsView],
  [/^#\/(sites|corridors)\/(\d+)(?:\?as_of=([0-9TZ:.-]+))?$/, targetView],
  [/^#\/thresholds$/, thresholdsView],
  [/^#\/thresholds\/(\d+)\/(\d+)$/, ruleView],
  [/^#\/deliveries$/, deliveriesView],
  [/^#\/model$/, modelView],
];
let leavePage = null;

async function route() {
  const hash = location.hash || "#/map";
  if (!hash.startsWith("#/")) return; // an in-page anchor, not a page
  navigation += 1;
  clearError();
  statusEl().textContent = "";
  if (leavePage) {
    leavePage();
    leavePage = null;
  }
  if (!apiKey() && hash !== "#/sign-in") {
    location.hash = "#/sign-in";
    return;
  }
  document.getElementById("sign-out").hidden = !apiKey();
  for (const link of document.querySelectorAll(".top nav a")) {
    const section = link.getAttribute("href");
    const active = hash === section || hash.startsWith(`${section}/`)
      || (section === "#/targets" && /^#\/(sites|corridors)\//.test(hash));
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Each page draws into its own container: one left behind mid-load draws into nothing.
  const view = h("div");
  document.getElementById("main").replaceChildren(view);
  const [pattern, render] = routes.find(([p]) => p.test(hash)) || [null, notFound];
  const match = pattern ? hash.match(pattern) : [];
  try {
    await render(view, ...match.slice(1));
  } catch (err) {
    if (!(err instanceof ApiError)) {
      console.error(err);
      showError(err);
    }
  }
  // Focus went with the link or button that was clicked: put it on the new page's heading.
  const heading = view.querySelector("h1");
  if (heading && view.isConnected && (!document.activeElement || document.activeElement === document.body)) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
}

function notFound(view) {
  view.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/map" }, "Back to the map")));
}

function titled(view, text) {
  if (view.isConnected) document.title = `${text} · riskalert`;
}

function signIn(view) {
  titled(view, "Sign in");
  const note = sessionStorage.getItem(NOTE_STORAGE);
  if (note) {
    sessionStorage.removeItem(NOTE_STORAGE);
    showError(new ApiError(401, { title: "Signed out", detail: note }));
  }
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
          sessionStorage.removeItem(NOTE_STORAGE); // shown already, by busy()
          input.focus();
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
  view.append(h("h1", {}, "Sign in"), form);
  input.focus();
}

let outlines = null; // the country outlines, read once per page load
let pageConfig = null; // the service's word on the page (config.json), read once per page load
// Under `serve --demo` the map opens at the demo's story time, until the user picks another
// time in this tab; from then on, as without the demo, at now.
let demoLeft = false;

/** When the map opens, in ms, as the demo's story time; null: now. */
async function demoStart() {
  if (!pageConfig) {
    pageConfig = fetch("config.json")
      .then((response) => (response.ok ? response.json() : {}))
      .catch(() => ({}));
  }
  const at = Date.parse((await pageConfig).demo_as_of);
  return Number.isFinite(at) && !demoLeft ? at : null;
}

async function countryOutlines() {
  if (!outlines) {
    const response = await fetch("vendor/world-atlas/countries-50m.json");
    const topo = await response.json();
    outlines = topojson.feature(topo, topo.objects.countries);
  }
  return outlines;
}

/** The tenant's sites and corridors, and their stored (current) scores by "kind:id". */
async function loadTargets() {
  const [sites, corridors] = await busy(
    "Loading sites and corridors",
    Promise.all([all("/v1/sites", "features"), all("/v1/corridors", "features")]),
  );
  const current = new Map();
  for (const s of sites) current.set(`site:${s.id}`, s.properties.current_score);
  for (const c of corridors) current.set(`corridor:${c.id}`, c.properties.current_score);
  return { sites, corridors, current };
}

async function mapView(view) {
  titled(view, "Map");
  const here = onThisPage();
  const now = Date.now();
  const demoAt = await demoStart();
  if (!here()) return;
  let at = demoAt; // the time shown, in ms; null: now
  const label = () => (at === null ? "now" : day(isoAt(at)));
  // The slider counts days back from now; a demo's story time may not fall on one of them.
  const offset = at === null ? 0 : Math.max(-SLIDER_DAYS, Math.min(0, Math.round((at - now) / DAY_MS)));
  const slider = h("input", {
    id: "as-of", type: "range", min: -SLIDER_DAYS, max: 0, step: 1, value: offset,
    "aria-describedby": demoAt === null ? "as-of-value" : "as-of-value demo-note",
    "aria-valuetext": label(),
  });
  const shown = h("output", { id: "as-of-value", for: "as-of" }, label());
  const nowButton = h("button", { type: "button", class: "secondary" }, "Back to now");
  const note = demoAt === null ? null : h("p", { id: "demo-note", class: "note" },
    h("strong", {}, `The demo, as of ${when(isoAt(demoAt))}`),
    ": its incidents are too old to count today, so the map opens at the time of its story. ",
    "“Back to now” shows today's map.");
  const leaveDemo = () => {
    demoLeft = true;
    if (note) note.hidden = true;
  };
  const mapEl = h("div", { id: "map", role: "region", "aria-label": "Map of sites, corridors and incidents" });
  const list = h("div", { id: "target-list" });
  view.append(
    h("h1", {}, "Map"),
    ...(note ? [note] : []), // append() would write a null as the text "null"
    h("div", { class: "controls" },
      h("label", { for: "as-of" }, "As of"), slider, shown, nowButton),
    h("div", { class: "map-layout" }, mapEl,
      h("aside", { class: "side", "aria-label": "Legend, targets and what the map shows" }, legend(), list)),
  );

  const map = L.map(mapEl, { zoomSnap: 0.5, keyboard: true });
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
  let generation = 0; // each drawing's number: only the latest one draws
  let pending = null;
  leavePage = () => {
    clearTimeout(pending);
    generation += 1;
    map.stop();
    map.remove();
  };

  const world = await busy("Loading country outlines", countryOutlines());
  if (!here()) return;
  L.geoJSON(world, {
    style: { color: "#7a8793", weight: 1, fillColor: "#f7f5ef", fillOpacity: 1 },
    interactive: false,
  }).addTo(layers.countries);
  const { sites, corridors, current } = await loadTargets();
  if (!here()) return;
  const bounds = L.latLngBounds([]);
  for (const s of sites) bounds.extend(latLng(s.geometry.coordinates));
  for (const c of corridors) for (const point of c.geometry.coordinates) bounds.extend(latLng(point));
  if (bounds.isValid()) map.fitBounds(bounds.pad(0.25), { animate: false });

  async function draw() {
    const mine = ++generation;
    const latest = () => mine === generation && here();
    const asOf = at === null ? null : isoAt(at);
    mapEl.dataset.asOf = asOf || "now";
    mapEl.dataset.ready = "false";
    const until = asOf ?? isoAt(now);
    const [bands, incidents, hotspots] = await busy(
      asOf ? `Scoring as of ${day(asOf)}` : "Loading scores, incidents and hotspots",
      Promise.all([
        asOf ? bandsAsOf(sites, corridors, asOf) : current,
        incidentsBefore(asOf, now),
        hotspotsAsOf(corridors, asOf),
      ]),
      latest,
    );
    if (!latest()) return;
    const threatened = drawThreats(layers.threats, world, incidents);
    drawIncidents(layers.incidents, incidents, until);
    drawCorridors(layers.corridors, corridors, bands, hotspots, asOf);
    drawSites(layers.sites, sites, bands, asOf);
    list.replaceChildren(
      targetTable(sites, corridors, bands, asOf),
      shownOnMap(corridors, hotspots, incidents, threatened),
    );
    mapEl.dataset.ready = "true";
  }
  slider.addEventListener("input", () => {
    const days = Number(slider.value);
    at = days === 0 ? null : now + days * DAY_MS;
    leaveDemo();
    shown.textContent = label();
    slider.setAttribute("aria-valuetext", label());
    clearTimeout(pending);
    pending = setTimeout(() => draw().catch(() => {}), 350);
  });
  nowButton.addEventListener("click", () => {
    at = null;
    leaveDemo();
    slider.value = 0;
    shown.textContent = "now";
    slider.setAttribute("aria-valuetext", "now");
    clearTimeout(pending);
    draw().catch(() => {});
  });
  await draw();
}

/** Bands of every target as of a past time, from one backtest per 1,000 targets. */
async function bandsAsOf(sites, corridors, asOf) {
  const bands = new Map();
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

/** Incidents of the 90 days before `asOf` that had been reported by then; with no `asOf`,
 * the latest 90 days as the service knows them (the browser's clock may be off). */
async function incidentsBefore(asOf, now) {
  const until = asOf ? Date.parse(asOf) : now;
  let query = `since=${encodeURIComponent(isoAt(until - INCIDENT_WINDOW_DAYS * DAY_MS))}`;
  if (asOf) query += `&until=${encodeURIComponent(asOf)}`;
  const items = await all(`/v1/incidents?${query}`, "features");
  return items.filter((f) => f.properties.lifecycle !== "retracted"
    && (!asOf || Date.parse(f.properties.reported_at) <= until));
}

/** Each corridor's scored pieces (the first MAX_HOTSPOT_CORRIDORS corridors). */
async function hotspotsAsOf(corridors, asOf) {
  const query = asOf ? `?as_of=${encodeURIComponent(asOf)}` : "";
  const shown = corridors.slice(0, MAX_HOTSPOT_CORRIDORS);
  const scores = await eachLimited(shown, (c) => api(`/v1/corridors/${c.id}/score${query}`));
  return new Map(shown.map((c, i) => [c.id, scores[i].hotspots || []]));
}

function targetLink(plural, id, asOf) {
  return asOf ? `#/${plural}/${id}?as_of=${asOf}` : `#/${plural}/${id}`;
}

/** A map shape named for screen readers, reached with Tab, opened with Enter or Space; kept
 * so when Leaflet redraws its element (a layer turned off and on again). */
function accessible(shape, label, data) {
  shape.bindTooltip(h("span", {}, label));
  const dress = () => {
    const el = shape.getElement();
    if (!el) return;
    Object.assign(el.dataset, data);
    el.setAttribute("role", "button");
    el.setAttribute("tabindex", "0");
    el.setAttribute("aria-label", label);
    el.onkeydown = (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        shape.openPopup();
      }
    };
  };
  shape.on("add", dress);
  dress();
}

function targetPopup(name, score, link) {
  return () => h("div", {},
    h("strong", {}, name), h("br"),
    score ? [bandBadge(score.band), ` ${score.score.toFixed(1)}`] : "not scored yet", h("br"),
    h("a", { href: link }, "Score, explanation and history"));
}

function drawSites(layer, sites, bands, asOf) {
  layer.clearLayers();
  for (const s of sites) {
    const score = bands.get(`site:${s.id}`);
    const band = score ? score.band : "none";
    const marker = L.circleMarker(latLng(s.geometry.coordinates), {
      radius: 9, weight: 2, color: "#111", fillOpacity: 0.95,
      fillColor: BAND_COLOURS[band] || "#9e9e9e", className: `site-marker band-${band}`,
    }).addTo(layer);
    marker.bindPopup(targetPopup(s.properties.name, score, targetLink("sites", s.id, asOf)));
    const label = `${s.properties.name}: ${score ? `${band}, ${score.score.toFixed(1)}` : "not scored yet"}`;
    accessible(marker, label, { siteId: String(s.id), band });
  }
}

function drawCorridors(layer, corridors, bands, hotspots, asOf) {
  layer.clearLayers();
  for (const c of corridors) {
    const score = bands.get(`corridor:${c.id}`);
    const band = score ? score.band : "none";
    const line = L.polyline(c.geometry.coordinates.map(latLng), {
      color: BAND_COLOURS[band] || "#607d8b", weight: 4, opacity: 0.75,
      dashArray: c.properties.mode === "air" ? "6 6" : null, className: `corridor-line band-${band}`,
    }).addTo(layer);
    line.bindPopup(targetPopup(c.properties.name, score, targetLink("corridors", c.id, asOf)));
    accessible(line, `${c.properties.name}: ${score ? band : "not scored yet"}`, { corridorId: String(c.id), band });
    for (const spot of hotspotsAbove(hotspots, c)) {
      L.polyline(spot.geometry.coordinates.map(latLng), {
        color: BAND_COLOURS[spot.properties.band], weight: 9, opacity: 0.9,
        className: `hotspot band-${spot.properties.band}`,
      }).addTo(layer).bindTooltip(h("span", {}, hotspotText(c, spot)));
    }
  }
}

/** A corridor's pieces scoring above "low", worst first. */
const hotspotsAbove = (hotspots, corridor) =>
  (hotspots.get(corridor.id) || []).filter((s) => s.properties.band !== "low");

const hotspotText = (corridor, spot) =>
  `${corridor.properties.name}, segment ${spot.properties.index + 1}: ${spot.properties.band}, ` +
  `${spot.properties.score.toFixed(1)} (${spot.properties.incident_count} incidents)`;

const incidentText = (p) =>
  `${humanize(p.category)}, ${day(p.occurred_at)}: ${p.title || p.location_name || "no title"}`;

function drawIncidents(layer, incidents, untilIso) {
  layer.clearLayers();
  const until = Date.parse(untilIso);
  for (const f of incidents) {
    if (!f.geometry) continue;
    const p = f.properties;
    const ageDays = Math.max(0, (until - Date.parse(p.occurred_at)) / DAY_MS);
    const family = familyOf(p.category);
    L.circleMarker(latLng(f.geometry.coordinates), {
      radius: 5, weight: 1, color: "#fff", fillColor: family.colour,
      fillOpacity: ageDays <= 7 ? 0.95 : ageDays <= 30 ? 0.7 : 0.4,
      className: `incident-marker family-${FAMILIES.indexOf(family)}`,
    }).addTo(layer).bindTooltip(h("span", {}, incidentText(p)));
  }
}

/** Shade the countries named by area-scoped threats; return their names with the threats. */
function drawThreats(layer, world, incidents) {
  layer.clearLayers();
  const scoped = new Map(); // alpha-3 -> threats naming it
  for (const f of incidents) {
    for (const code of f.properties.scope ? f.properties.scope.countries : []) {
      if (!scoped.has(code)) scoped.set(code, []);
      scoped.get(code).push(f.properties);
    }
  }
  const features = world.features.filter((c) => scoped.has(ALPHA3[c.id]));
  L.geoJSON({ type: "FeatureCollection", features }, {
    style: { color: "#c62828", weight: 2, fillColor: "#ef9a9a", fillOpacity: 0.35, dashArray: "4 3" },
    onEachFeature: (feature, shape) => {
      const threats = scoped.get(ALPHA3[feature.id]);
      shape.bindTooltip(h("span", {}, `${feature.properties.name}: ${threats.length} area-scoped threat(s)`));
    },
  }).addTo(layer);
  return features.map((c) => [c.properties.name, scoped.get(ALPHA3[c.id])]);
}

function legend() {
  const swatch = (style) => h("span", { class: "swatch", style });
  return h("div", { class: "legend" },
    h("h2", {}, "Legend"),
    h("p", { class: "muted" }, "Sites, corridors and their hotspots by band:"),
    h("ul", {}, BANDS.map((b) => h("li", {}, swatch(`background:${BAND_COLOURS[b]}`), b))),
    h("p", { class: "muted" }, `Incidents of the ${INCIDENT_WINDOW_DAYS} days before, by kind (fainter when older):`),
    h("ul", {}, FAMILIES.map((f) => h("li", {}, swatch(`background:${f.colour}`), f.name))),
    h("ul", {},
      h("li", {}, swatch("background:#ef9a9a;border:2px dashed #c62828;border-radius:0"),
        "a country named by an area-scoped threat"),
      h("li", {}, swatch("background:#607d8b;border-radius:0;height:5px;border:0"),
        "corridor (dashed: flight leg); thick pieces: hotspots")),
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

/** The map's other layers as text: hotspots, scoped threats and incidents. */
function shownOnMap(corridors, hotspots, incidents, threatened) {
  const spots = corridors.flatMap((c) => hotspotsAbove(hotspots, c).map((s) => hotspotText(c, s)));
  const located = incidents.filter((f) => f.geometry);
  return h("div", { id: "shown-on-map" },
    h("h2", {}, "Also on the map"),
    h("details", {}, h("summary", {}, `Hotspots: ${spots.length}`),
      h("ul", {}, spots.map((t) => h("li", {}, t)))),
    h("details", {}, h("summary", {}, `Countries under area-scoped threats: ${threatened.length}`),
      h("ul", {}, threatened.map(([name, threats]) => h("li", {},
        `${name}: ${threats.map((t) => t.title || humanize(t.category)).join("; ")}`)))),
    h("details", {}, h("summary", {}, `Incidents: ${located.length}`),
      h("ul", {}, located.map((f) => h("li", {}, incidentText(f.properties))))));
}

async function targetsView(view) {
  titled(view, "Sites and corridors");
  const { sites, corridors, current } = await loadTargets();
  view.append(h("h1", {}, "Sites and corridors"), targetTable(sites, corridors, current, null));
}

async function targetView(view, plural, id, asOf) {
  const kind = plural === "sites" ? "site" : "corridor";
  const at = asOf ? `?as_of=${encodeURIComponent(asOf)}` : "";
  const now = Date.now();
  const times = [];
  for (let week = HISTORY_WEEKS; week >= 0; week -= 1) times.push(isoAt(now - week * 7 * DAY_MS));
  const since = encodeURIComponent(times[0]);
  const [target, score, history, fired, series] = await busy(
    "Loading the score, its history and alerts",
    Promise.all([
      api(`/v1/${plural}/${id}`),
      api(`/v1/${plural}/${id}/score${at}`),
      all(`/v1/${plural}/${id}/score-history?since=${since}`, "points"),
      firings(id),
      api("/v1/backtests", { method: "POST", body: { targets: [{ kind, id: Number(id) }], times } }),
    ]),
  );
  const name = target.properties.name;
  titled(view, name);
  view.append(
    h("p", {}, h("a", { href: "#/map" }, "← Map"),
      asOf ? [" · ", h("a", { href: `#/${plural}/${id}` }, "Now")] : ""),
    h("h1", {}, `${name} (${kind})`),
    h("div", { class: "score-head" },
      h("span", { class: "score-big" }, h("span", { id: "score-value" }, score.score.toFixed(1)), " %"),
      bandBadge(score.band),
      h("span", { class: "muted" }, `as of ${when(score.as_of)}, model version ${score.model_version}, ` +
        `${score.incident_count} incident(s) counted`)),
    h("p", { id: "score-question" }, h("strong", {}, chanceInWords(score))),
    h("p", {}, explainInWords(name, score)),
    h("h2", {}, "Components"),
    componentsTable(score),
    h("h2", {}, "Incidents behind the score"),
    contributionsList(score),
    h("h2", {}, `Adjustments for this ${kind}`),
    adjustmentsList(score),
    h("h2", {}, "Score history"),
    historyChart(series, history, fired),
    h("details", {},
      h("summary", {}, "Score history as a table"),
      historyTable(series, fired)),
  );
}

/** When alerts on the target fired or triggered (the newest 50 alerts' histories); null when
 * the key may not read alerts. */
async function firings(targetId) {
  let alerts;
  try {
    alerts = await all(`/v1/alerts?target_id=${targetId}`, "alerts");
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return null;
    throw err;
  }
  const details = await eachLimited(alerts.slice(-50), (a) => api(`/v1/alerts/${a.id}`));
  return details.flatMap((d) => d.events
    .filter((e) => (e.to_state === "firing" || e.to_state === "triggered") && e.from_state !== e.to_state)
    .map((e) => ({ at: e.at, state: e.to_state })));
}

/** A number as short as it can be written: 50.0 becomes "50". */
const plain = (x) => String(Number(x));

/** The score as the question it answers: "12.3 % chance of violence within 50 km in the next
 * 30 days". */
function chanceInWords(score) {
  const text = `${score.score.toFixed(1)} % chance of violence`;
  const f = score.forecast;
  return f ? `${text} within ${plain(f.distance_km)} km in the next ${plain(f.horizon_days)} days` : text;
}

function explainInWords(name, score) {
  const parts = Object.entries(score.components)
    .filter(([, points]) => points > 0.05)
    .sort((a, b) => b[1] - a[1])
    .map(([component, points]) => `${component} ${points.toFixed(1)}`);
  const top = score.contributions[0];
  let text = `${name} is in the ${score.band} band.`;
  text += parts.length
    ? ` Its ${score.score.toFixed(1)} % is made of ${parts.join(", ")} percentage points.`
    : " No incident counts towards it now.";
  if (top) text += ` The largest share (${Math.round(top.share * 100)} %) comes from: ${top.why}`;
  return text;
}

function componentsTable(score) {
  return h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Component"), h("th", { class: "num" }, "Percentage points"))),
    h("tbody", {}, Object.entries(score.components).map(([component, points]) =>
      h("tr", {}, h("td", {}, component), h("td", { class: "num" }, points.toFixed(1))))));
}

function contributionsList(score) {
  if (!score.contributions.length) return h("p", { class: "muted" }, "None: no recent incident reaches this target.");
  // `why` starts with the incident's title and says, in words, what made it count.
  return h("div", {},
    h("ol", { class: "contributions" }, score.contributions.map((c) => h("li", {},
      h("strong", {}, `${c.points.toFixed(1)} points (${Math.round(c.share * 100)} %), ${c.component}`),
      h("br"), c.why))),
    score.incident_count > score.contributions.length
      ? h("p", { class: "muted" }, `The ${score.contributions.length} largest of ${score.incident_count}.`)
      : "");
}

// The API's adjustment kinds in words (docs/scoring.md, "Firm-specific exposure").
const ADJUSTMENT_KINDS = {
  expatriate_kidnapping: "Kidnappings of expatriates",
  victim_sector: "Victims in the target's sector",
  foreign_firm_targeted: "Attacks aimed at foreign firms",
  mining_targeted: "Attacks aimed at mining",
  corridor_mode: "The corridor's mode (road or air)",
  threats: "Explicit threats aimed at the target",
};

/** The firm-specific factors on the odds, apart from the fitted incidents' points. */
function adjustmentsList(score) {
  const adjustments = score.adjustments || [];
  const generic = `${(score.generic_probability * 100).toFixed(1)} %`;
  if (!adjustments.length) {
    return h("p", { class: "muted", id: "adjustments-none" },
      `None: nothing in its profile changes the fitted probability (${generic}).`);
  }
  return h("table", { id: "adjustments-table" },
    h("caption", {}, `Factors on the odds of the fitted probability (${generic} before them), from the ` +
      "target's profile, its mode and threats aimed at it; they are not fitted (docs/scoring.md)."),
    h("thead", {}, h("tr", {}, h("th", {}, "Adjustment"), h("th", { class: "num" }, "Odds factor"),
      h("th", {}, "Why"), h("th", { class: "num" }, "Incidents"))),
    h("tbody", {}, adjustments.map((a) => h("tr", {},
      h("td", {}, ADJUSTMENT_KINDS[a.kind] || humanize(a.kind)),
      h("td", { class: "num" }, `× ${a.odds_factor.toFixed(2)}`),
      h("td", {}, a.why),
      h("td", { class: "num" }, String(a.incident_ids.length))))));
}

function historyChart(series, history, fired) {
  const canvas = h("div", { id: "history-canvas", role: "img",
    "aria-label": "Weekly score (chance of violence, %) over the last two years, with the alerts that fired marked; the table below has the figures" });
  const xs = series.times.map((t) => Date.parse(t) / 1000);
  const marks = (fired || []).map((a) => Date.parse(a.at) / 1000).filter((t) => t >= xs[0]);
  const recorded = new Map(history.map((p) => [Math.round(Date.parse(p.as_of) / 1000), p.score]));
  // One x axis for both series: weekly as-of scores and the recorded changes.
  const allXs = [...new Set([...xs, ...recorded.keys()].filter((t) => t >= xs[0]))].sort((a, b) => a - b);
  const weekly = new Map(xs.map((x, i) => [x, series.scores[0][i]]));
  const data = [allXs, allXs.map((x) => weekly.get(x) ?? null), allXs.map((x) => recorded.get(x) ?? null)];
  const width = Math.max(560, Math.min(1100, (document.getElementById("main").clientWidth || 900) - 40));
  const markAlerts = (u) => {
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#b71c1c";
    ctx.lineWidth = 2;
    ctx.setLineDash([5, 4]);
    for (const t of marks) {
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
      { label: "score, % (weekly, as of)", stroke: "#0b5cad", width: 2, spanGaps: true },
      { label: "recorded change", stroke: "#e65100", width: 0, points: { show: true, size: 7, fill: "#e65100" } },
    ],
    axes: [{}, { label: "chance of violence (%)" }],
    hooks: { draw: [markAlerts] },
  }, data, canvas);
  const note = fired === null
    ? "Alerts are not shown: this API key may not read them (alerts:read)."
    : `Dashed red lines: the ${marks.length} alert(s) that fired in the period.`;
  return h("div", { class: "chart", id: "history-chart" }, canvas, h("p", { class: "muted" }, note));
}

function historyTable(series, fired) {
  const alerts = (fired || []).map((a) => `${day(a.at)} (${a.state})`).join("; ") || "none";
  return h("table", {},
    h("caption", {}, `Alerts fired: ${alerts}`),
    h("thead", {}, h("tr", {}, h("th", {}, "Week"), h("th", { class: "num" }, "Score (%)"), h("th", {}, "Band"))),
    h("tbody", {}, series.times.map((t, i) => h("tr", {},
      h("td", {}, day(t)), h("td", { class: "num" }, series.scores[0][i].toFixed(1)),
      h("td", {}, bandBadge(series.bands[0][i]))))));
}

async function thresholdsView(view) {
  titled(view, "Thresholds");
  const subscriptions = await busy("Loading subscriptions", all("/v1/subscriptions", "subscriptions"));
  view.append(h("h1", {}, "Thresholds"));
  if (!subscriptions.length) {
    view.append(h("p", {}, "No subscriptions yet: create one through the API (POST /v1/subscriptions)."));
    return;
  }
  view.append(h("table", { id: "rules-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Subscription"), h("th", {}, "Rule"), h("th", {}, "Change"))),
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

// A rule's editable fields by kind: [name, label, type, help]. Durations are edited in hours.
const THRESHOLD_FIELDS = [
  ["raise_at", "Raise at", "level", "Score 0-100 (or band name when the metric is band)"],
  ["clear_at", "Clear below", "level", "Hysteresis: the alert clears below this"],
  ["pending", "Pending (hours)", "hours", "How long the condition must hold first"],
  ["keep_firing", "Keep firing (hours)", "hours", "How long it stays firing after clearing"],
  ["cooldown", "Cooldown (hours)", "hours", "Least time between two firings"],
];
const EVENT_FIELDS = [
  ["radius_km", "Radius (km)", "level", "Distance from the target"],
  ["max_age", "Maximum age (hours)", "hours", "Older incidents (backfills) do not trigger"],
];

/** Seconds in an ISO 8601 duration as the API writes them (PT1H30M, P1D...). */
function seconds(duration) {
  const m = /^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(duration);
  if (!m) return Number(duration) || 0;
  const [, d, hh, mm, ss] = m.map((v) => Number(v || 0));
  return d * 86400 + hh * 3600 + mm * 60 + ss;
}

const dateField = (ms) => isoAt(ms).slice(0, 10);

async function ruleView(view, subscriptionId, ruleId) {
  const subscription = await busy("Loading the rule", api(`/v1/subscriptions/${subscriptionId}`));
  const rule = subscription.rules.find((r) => String(r.id) === ruleId);
  if (!rule) {
    view.append(h("h1", {}, "Rule not found"));
    return;
  }
  titled(view, `Rule ${rule.id}`);
  const fields = rule.kind === "threshold" ? THRESHOLD_FIELDS : EVENT_FIELDS;
  const choices = rule.kind === "threshold"
    ? ["metric", "Metric", ["score", "band"]]
    : ["severity", "Severity", BANDS];
  const inputs = {};
  const select = h("select", { id: `f-${choices[0]}`, name: choices[0] },
    choices[2].map((v) => h("option", { value: v, selected: rule[choices[0]] === v }, v)));
  inputs[choices[0]] = select;
  const form = h("form", { id: "rule-form", onsubmit: (e) => e.preventDefault() },
    h("div", { class: "field" }, h("label", { for: select.id }, choices[1]), select));
  for (const [name, label, type, help] of fields) {
    const value = type === "hours" ? seconds(rule[name]) / 3600 : rule[name];
    // Levels are text: a score, or a band name when the metric is band.
    const input = h("input", {
      id: `f-${name}`, name, value: value ?? "", type: type === "hours" ? "number" : "text",
      min: type === "hours" ? 0 : null, step: type === "hours" ? "any" : null,
      "aria-describedby": `f-${name}-help`,
    });
    inputs[name] = input;
    form.append(h("div", { class: "field" },
      h("label", { for: input.id }, label), input, h("small", { id: `f-${name}-help` }, help)));
  }
  const today = dateField(Date.now());
  const sinceInput = h("input", { id: "p-since", type: "date", value: dateField(Date.now() - 90 * DAY_MS) });
  const untilInput = h("input", { id: "p-until", type: "date", value: today });
  const stepInput = h("select", { id: "p-step" },
    [["PT6H", "every 6 hours"], ["P1D", "every day"], ["P7D", "every week"]].map(([v, t]) =>
      h("option", { value: v, selected: v === "P1D" }, t)));
  const previewButton = h("button", { type: "button", id: "preview" }, "Preview on history");
  const saveButton = h("button", { type: "button", id: "save", class: "secondary" }, "Save the rule");
  const result = h("div", { id: "preview-result" });
  const saved = h("p", { id: "saved", role: "status" });
  const nowLine = h("p", { id: "rule-now" }, `Now: ${describeRule(rule)}.`);

  /** The edited fields; an emptied one is left out (the API's default applies on save). */
  function changes() {
    const out = {};
    for (const [name, input] of Object.entries(inputs)) {
      const raw = input.value.trim();
      const field = fields.find((f) => f[0] === name);
      if (!field) out[name] = raw;
      else if (raw === "") continue;
      else if (field[2] === "hours") out[name] = Math.round(Number(raw) * 3600);
      else out[name] = Number.isNaN(Number(raw)) ? raw : Number(raw);
    }
    return out;
  }
  function period() {
    // Today's end lies in the future, which a preview refuses: up to a minute ago instead.
    const until = untilInput.value === today ? isoAt(Date.now() - 60_000) : `${untilInput.value}T23:59:59Z`;
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
      for (const [name] of fields) if (inputs[name].value.trim() === "") delete body[name];
      const out = await busy("Saving", api(`/v1/subscriptions/${subscription.id}/rules/${rule.id}`,
        { method: "PUT", body }));
      Object.assign(rule, out);
      saved.textContent = `Saved: ${describeRule(out)}.`;
      saved.className = "ok";
      nowLine.textContent = `Now: ${describeRule(out)}.`;
    } catch (err) {
      // Shown in the error box by busy(); the stored rule is unchanged.
    } finally {
      saveButton.disabled = false;
    }
  });

  view.append(
    h("p", {}, h("a", { href: "#/thresholds" }, "← Thresholds")),
    h("h1", {}, `${subscription.name}: ${rule.kind} rule ${rule.id}`),
    nowLine,
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
    h("p", { id: "preview-summary", role: "status" },
      `Over ${day(out.since)} to ${day(out.until)} on ${out.targets} target(s): the edited rule would have raised `,
      h("strong", { id: "edited-total" }, String(out.total)),
      " alert(s); the current rule ",
      h("strong", { id: "current-total" }, current ? String(current.total) : "–"), ".",
      out.truncated ? " (The list below is cut short.)" : ""),
    h("table", { id: "weeks-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Week of"), h("th", { class: "num" }, "Current"),
        h("th", { class: "num" }, "Edited"), h("th", {}, "Compared"))),
      h("tbody", {}, [...weeks.entries()].sort().map(([week, r]) => h("tr", {},
        h("td", {}, week), h("td", { class: "num" }, String(r.current)), h("td", { class: "num" }, String(r.edited)),
        h("td", { "aria-hidden": "true" }, bar(r.current, "current"), h("br"), bar(r.edited, "edited")))))),
    h("h2", {}, "Alerts the edited rule would have raised, and why"),
    out.alerts.length
      ? h("ol", { id: "preview-alerts" }, out.alerts.map((a) => h("li", {},
        h("strong", {}, `${when(a.at)}: ${a.target_name}`), " ", bandBadge(a.band), " ", a.reason,
        h("ul", {}, [...(a.incident ? [a.incident] : []), ...a.why].map((i) =>
          h("li", {}, `${day(i.occurred_at)}: ${i.why}`))))))
      : h("p", { class: "muted" }, "None in this period."));
}

async function deliveriesView(view) {
  titled(view, "Deliveries");
  const status = h("select", { id: "d-status" },
    [["failed,pending", "failed and pending"], ...DELIVERY_ORDER.map((s) => [s, s])]
      .map(([v, t]) => h("option", { value: v }, t)));
  const table = h("div", { id: "deliveries" });
  view.append(
    h("h1", {}, "Deliveries"),
    h("div", { class: "controls" }, h("label", { for: "d-status" }, "Status"), status),
    table,
  );
  const endpoints = new Map(
    (await busy("Loading endpoints", all("/v1/endpoints", "endpoints"))).map((e) => [e.id, e]),
  );
  if (!view.isConnected) return; // left meanwhile
  let asked = 0;
  async function load() {
    const mine = ++asked;
    const chosen = status.value.split(",");
    const lists = await busy(`Loading ${status.selectedOptions[0].textContent} deliveries`,
      Promise.all(chosen.map((s) => all(`/v1/deliveries?status=${s}`, "deliveries"))));
    if (mine !== asked) return; // the choice changed meanwhile
    const rank = (d) => DELIVERY_ORDER.indexOf(d.status);
    const items = lists.flat().sort((a, b) => rank(a) - rank(b) || b.id - a.id);
    table.replaceChildren(deliveryTable(items, endpoints));
  }
  status.addEventListener("change", () => load().catch(() => {}));
  await load();
}

function deliveryTable(deliveries, endpoints) {
  if (!deliveries.length) return h("p", { class: "muted" }, "None.");
  const headings = ["Id", "Status", "Event", "Endpoint", "Attempts", "Last error", "Next attempt", "Actions"];
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
        if (open) return;
        try {
          const detail = await busy("Loading attempts", api(`/v1/deliveries/${d.id}`));
          attempts.replaceChildren(attemptTable(detail.attempt_log));
        } catch (err) {
          attempts.replaceChildren(h("p", { class: "muted" }, "Could not load the attempts."));
        }
      });
      const replay = h("button", { type: "button" }, "Replay");
      replay.addEventListener("click", async () => {
        replay.disabled = true;
        try {
          const out = await busy("Replaying", api(`/v1/deliveries/${d.id}/replay`, { method: "POST" }));
          const done = h("span", { class: "ok", tabindex: "-1" }, `queued again (${out.status})`);
          replay.replaceWith(done);
          done.focus();
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

const SVG_NS = "http://www.w3.org/2000/svg";
const KERNEL_KM = [0, 10, 25, 50, 100]; // where the Model page reads each group's kernel
const MEMORY_DAYS = [0, 7, 30, 90, 180]; // and its memory
const DEFAULT_BAND_THRESHOLDS = [5, 15, 30, 50];

/** An SVG element, as h() builds HTML ones (attributes only: no listeners, no style). */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const percent = (fraction, digits = 1) => `${(fraction * 100).toFixed(digits)} %`;
const count = (n) => Number(n).toLocaleString("en-GB");
const cell = (value, format) => h("td", { class: "num" }, value === undefined || value === null ? "–" : format(value));

const categoryInWords = (category) => humanize(category).replace(/\b(v?bied|ied)\b/, (m) => m.toUpperCase());

/** The question a model version answers, in words. */
function questionInWords(question) {
  return `the probability of a violent incident within ${plain(question.distance_km)} km ` +
    `in the next ${plain(question.horizon_days)} days`;
}

async function modelView(view) {
  titled(view, "Model");
  const model = await busy("Loading the model in force", api("/v1/model"));
  const params = model.params || {};
  const report = model.report;
  const question = (report && report.question) || {
    distance_km: params.forecast_distance_km,
    horizon_days: params.forecast_horizon_days,
    categories: params.forecast_categories || [],
  };
  view.append(
    h("h1", {}, "Model"),
    h("p", { id: "model-version" },
      h("strong", {}, `Version ${model.version}`),
      `, in force since ${when(model.created_at)}, published by ${model.created_by}: ${model.note}.`),
    h("h2", {}, "What the score answers"),
    h("p", { id: "model-question" },
      `A score is ${questionInWords(question)}, in percent, calibrated on the incident history: `,
      "of the places and times it puts at 30 %, about 30 % saw such an incident."),
    h("p", { class: "muted" }, `Violent: ${(question.categories || []).map(categoryInWords).join(", ")}.`),
  );
  if (!report) {
    view.append(
      h("h2", {}, "No fit report"),
      h("p", { id: "no-report" },
        `Version ${model.version} has no fit report: its parameters were published by hand. To make one, `,
        "fit the model on the incident history with ", h("code", {}, "riskalert model fit"),
        " (add ", h("code", {}, "--dry-run"), " to read the report without publishing it) or ",
        h("code", {}, "POST /v1/model/fits"), "; the fit publishes its version, with the report, only ",
        "when it forecasts better than the version in force."),
    );
    return;
  }
  view.append(
    h("h2", {}, "What it was fitted on"),
    h("p", { id: "model-data" }, dataInWords(report)),
    h("h2", {}, "Validation: the model against the decay baseline"),
    validationTable(report),
    h("h2", {}, "Reliability: is a forecast of N % right N % of the time?"),
    h("div", { class: "side-by-side" }, reliabilityFigure(report), reliabilityTable(report)),
    h("h2", {}, "Bands"),
    bandsTable(report, params.band_thresholds || DEFAULT_BAND_THRESHOLDS),
    h("h2", {}, "What was fitted, per group of incidents"),
    groupsTable(report),
  );
}

function dataInWords(report) {
  const d = report.data || {};
  const folds = report.folds || [];
  let text = `${count(d.incidents)} incidents at ${count(d.places)} places, ${count(d.origins)} times ` +
    `(origins) from ${day(d.first_origin)} to ${day(d.last_origin)}: ${count(d.rows)} place-times.`;
  if (folds.length) {
    text += ` Validated on ${folds.length} later blocks (${day(folds[0].validation_start)} to ` +
      `${day(folds[folds.length - 1].validation_end)}), each forecast by a model trained only on ` +
      "what had been reported before the block.";
  }
  if (report.fitted_at) text += ` Fitted ${when(report.fitted_at)}.`;
  return text;
}

// [field, heading, digits, better]: the validation scores as the table shows them.
const VALIDATION_SCORES = [
  ["roc_auc", "ROC AUC", 3, "higher is better"],
  ["average_precision", "Average precision", 3, "higher is better"],
  ["brier", "Brier score", 4, "lower is better"],
  ["brier_skill", "Brier skill", 3, "higher is better"],
];

function validationTable(report) {
  const v = report.validation || {};
  const rows = [["model", "This version"], ["baseline", "Decay baseline"],
    ["active", "Version in force when it was fitted"]].filter(([key]) => v[key]);
  return h("table", { id: "validation-table" },
    h("caption", {}, "On the pooled validation blocks. Brier skill is against climatology (the training ",
      `base rate, ${percent(v.climatology_rate ?? 0)}); violence followed in ${percent(v.observed_rate ?? 0)} `,
      "of the place-times. The decay baseline weighs past violent events by distance and a 30-day half-life."),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Forecast"),
      VALIDATION_SCORES.map(([, heading, , better]) => h("th", { scope: "col", class: "num" },
        heading, h("br"), h("small", {}, better))))),
    h("tbody", {}, rows.map(([key, label]) => h("tr", { dataset: { row: key } },
      h("th", { scope: "row" }, label),
      VALIDATION_SCORES.map(([field, , digits]) => cell(v[key][field], (x) => x.toFixed(digits)))))));
}

function reliabilityFigure(report) {
  const size = 340;
  const pad = { left: 56, right: 16, top: 14, bottom: 46 };
  const x = (p) => pad.left + p * size;
  const y = (p) => pad.top + (1 - p) * size;
  const ticks = [0, 0.2, 0.4, 0.6, 0.8, 1];
  const grid = ticks.map((t) => [
    svg("line", { x1: x(t), y1: y(0), x2: x(t), y2: y(1), class: "grid" }),
    svg("line", { x1: x(0), y1: y(t), x2: x(1), y2: y(t), class: "grid" }),
    svg("text", { x: x(t), y: y(0) + 18, "text-anchor": "middle" }, `${t * 100}`),
    svg("text", { x: x(0) - 8, y: y(t) + 4, "text-anchor": "end" }, `${t * 100}`),
  ]);
  const points = (rows) => rows.map((r) => [x(r.mean_predicted), y(r.observed), r.decile]);
  const line = (rows, cls) => svg("polyline", {
    class: cls, points: points(rows).map(([px, py]) => `${px},${py}`).join(" "),
  });
  const model = report.reliability || [];
  const baseline = report.baseline_reliability || [];
  const legendY = (i) => pad.top + 12 + i * 20;
  const legend = [
    svg("line", { x1: x(0.04), y1: legendY(0), x2: x(0.12), y2: legendY(0), class: "diagonal" }),
    svg("text", { x: x(0.14), y: legendY(0) + 4 }, "exactly right"),
    svg("circle", { cx: x(0.08), cy: legendY(1), r: 5, class: "model" }),
    svg("text", { x: x(0.14), y: legendY(1) + 4 }, "this version"),
    svg("rect", { x: x(0.08) - 4.5, y: legendY(2) - 4.5, width: 9, height: 9, class: "baseline" }),
    svg("text", { x: x(0.14), y: legendY(2) + 4 }, "decay baseline"),
  ];
  const chart = svg("svg", {
    viewBox: `0 0 ${pad.left + size + pad.right} ${pad.top + size + pad.bottom}`,
    width: pad.left + size + pad.right, height: pad.top + size + pad.bottom,
    role: "img", "aria-labelledby": "reliability-caption", class: "reliability",
  },
  grid,
  svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "diagonal" }),
  line(baseline, "baseline"),
  points(baseline).map(([cx, cy, decile]) => svg("rect", {
    x: cx - 4.5, y: cy - 4.5, width: 9, height: 9, class: "baseline", "data-decile": decile,
  })),
  line(model, "model"),
  points(model).map(([cx, cy, decile]) => svg("circle", { cx, cy, r: 5, class: "model", "data-decile": decile })),
  svg("text", { x: x(0.5), y: y(0) + 38, "text-anchor": "middle" }, "mean forecast (%)"),
  svg("text", { x: 14, y: y(0.5), "text-anchor": "middle", transform: `rotate(-90 14 ${y(0.5)})` },
    "observed frequency (%)"),
  legend);
  return h("figure", { class: "chart", id: "reliability-chart" }, chart,
    h("figcaption", { id: "reliability-caption" },
      "Reliability diagram: the validation place-times in tenths by forecast, each at its mean forecast ",
      "(across) and the share that saw violence (up); on the dashed diagonal a forecast is exactly right. ",
      "Circles: this version; squares: the decay baseline. The table below gives the figures."));
}

function reliabilityTable(report) {
  const model = report.reliability || [];
  const baseline = new Map((report.baseline_reliability || []).map((r) => [r.decile, r]));
  return h("table", { id: "reliability-table" },
    h("caption", {}, "Reliability by decile of the forecast (1: the lowest tenth of forecasts, 10: the highest)."),
    h("colgroup", { span: 1 }), h("colgroup", { span: 3 }), h("colgroup", { span: 2 }),
    h("thead", {},
      h("tr", {}, h("th", { scope: "col", rowspan: 2 }, "Decile"),
        h("th", { scope: "colgroup", colspan: 3 }, "This version"),
        h("th", { scope: "colgroup", colspan: 2 }, "Decay baseline")),
      h("tr", {}, ["Mean forecast", "Observed", "Place-times", "Mean forecast", "Observed"]
        .map((t) => h("th", { scope: "col", class: "num" }, t)))),
    h("tbody", {}, model.map((r) => {
      const b = baseline.get(r.decile) || {};
      return h("tr", {},
        h("th", { scope: "row" }, String(r.decile)),
        cell(r.mean_predicted, percent), cell(r.observed, percent), cell(r.count, count),
        cell(b.mean_predicted, percent), cell(b.observed, percent));
    })));
}

/** A band's range of the probability, from the version's thresholds in percent. */
function bandRange(band, thresholds) {
  const i = BANDS.indexOf(band);
  if (i === 0) return `under ${plain(thresholds[0])} %`;
  if (i === BANDS.length - 1) return `${plain(thresholds[i - 1])} % or more`;
  return `${plain(thresholds[i - 1])} % to ${plain(thresholds[i])} %`;
}

function bandsTable(report, thresholds) {
  return h("table", { id: "bands-table" },
    h("caption", {}, "Each band's share of the validation place-times, and how often violence followed in them."),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Band"), h("th", { scope: "col" }, "Probability"),
      h("th", { scope: "col", class: "num" }, "Share of place-times"),
      h("th", { scope: "col", class: "num" }, "Observed frequency"),
      h("th", { scope: "col", class: "num" }, "Place-times"))),
    h("tbody", {}, (report.bands || []).map((b) => h("tr", { dataset: { band: b.band } },
      h("td", {}, bandBadge(b.band)), h("td", {}, bandRange(b.band, thresholds)),
      cell(b.share, percent), cell(b.observed, percent), cell(b.count, count)))));
}

function groupsTable(report) {
  const fitted = report.fitted || {};
  const groups = Object.entries(fitted.groups || {}).sort((a, b) => b[1].weight - a[1].weight);
  const gain = fitted.escalation_gain ?? 0;
  return h("div", {},
    h("table", { id: "groups-table" },
      h("caption", {}, "Kernel: a group's weight at a distance; memory: at an age; both as a share of ",
        "their value at 0. Regional share: the part of the weight on the 100 and 200 km scales."),
      h("colgroup", { span: 2 }), h("colgroup", { span: KERNEL_KM.length }),
      h("colgroup", { span: MEMORY_DAYS.length }), h("colgroup", { span: 1 }),
      h("thead", {},
        h("tr", {}, h("th", { scope: "col", rowspan: 2 }, "Group"),
          h("th", { scope: "col", rowspan: 2, class: "num" }, "Weight"),
          h("th", { scope: "colgroup", colspan: KERNEL_KM.length }, "Kernel at"),
          h("th", { scope: "colgroup", colspan: MEMORY_DAYS.length }, "Memory at"),
          h("th", { scope: "col", rowspan: 2, class: "num" }, "Regional share")),
        h("tr", {},
          KERNEL_KM.map((km) => h("th", { scope: "col", class: "num" }, `${km} km`)),
          MEMORY_DAYS.map((d) => h("th", { scope: "col", class: "num" }, `${d} days`)))),
      h("tbody", {}, groups.map(([name, g]) => h("tr", { dataset: { group: name } },
        h("th", { scope: "row" }, humanize(name)),
        cell(g.weight, (w) => w.toFixed(2)),
        KERNEL_KM.map((km) => cell((g.kernel || {})[`${km}km`], (k) => percent(k))),
        MEMORY_DAYS.map((d) => cell((g.memory || {})[`${d}d`], (m) => percent(m))),
        cell(g.regional_share, percent))))),
    h("p", { id: "escalation-gain" }, `Escalation gain: ${plain(gain)}`, gain === 0
      ? ": the fit found that a recent rise in tempo adds nothing the groups do not already carry."
      : ": how much a recent rise in tempo, against the place's own past, raises the intensity."));
}

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  location.hash = "#/sign-in";
});
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});
window.addEventListener("hashchange", () => route());
route();
