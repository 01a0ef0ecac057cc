// Membrane's web view: the map of flows (live, from the agent's flow ring), a pod's policy, and why a flow was judged.
// Read-only: every request here reads, except a trace (computed) and "probe now" (sends test traffic between pods).
'use strict';

const state = { filters: new URLSearchParams(), map: null, shape: '', cy: null, source: null };
const $ = (selector) => document.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? '')));
  return e;
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(data.error ?? `${response.status}`);
  return data;
}

const verdictClass = (v) => v === 'DROPPED' ? 'dropped' : v === 'AUDIT' ? 'audit' : 'allowed';
const verdictWord = (v) => v === 'DROPPED' ? 'dropped' : v === 'AUDIT' ? 'audit' : 'allowed';

// Layout without iteration: namespaces as blocks in rows, their pods on a grid inside, peers that are no pod in a
// column on the left. Linear in the number of pods, so a thousand pods lay out at once.
function positions(map) {
  const result = {};
  const groups = new Map();
  const others = [];
  for (const n of map.nodes) {
    if (n.kind === 'pod') {
      const key = n.namespace ?? '';
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(n);
    } else {
      others.push(n);
    }
  }
  const step = 110;
  others.forEach((n, i) => { result[n.id] = { x: 0, y: i * step }; });
  let x = others.length ? 2 * step : 0, y = 0, rowHeight = 0;
  const width = Math.max(6, Math.ceil(Math.sqrt(map.nodes.length)) * 2) * step;
  for (const [, pods] of [...groups.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    const columns = Math.ceil(Math.sqrt(pods.length));
    const blockWidth = columns * step, blockHeight = Math.ceil(pods.length / columns) * step;
    if (x + blockWidth > width && x > 0) { x = others.length ? 2 * step : 0; y += rowHeight + step; rowHeight = 0; }
    pods.forEach((p, i) => { result[p.id] = { x: x + (i % columns) * step, y: y + Math.floor(i / columns) * step }; });
    x += blockWidth + step;
    rowHeight = Math.max(rowHeight, blockHeight);
  }
  return result;
}

function elementsOf(map) {
  const at = positions(map);
  const namespaces = [...new Set(map.nodes.filter((n) => n.kind === 'pod' && n.namespace).map((n) => n.namespace))];
  return [
    ...namespaces.map((ns) => ({ group: 'nodes', data: { id: `ns:${ns}`, label: ns }, classes: 'namespace' })),
    ...map.nodes.map((n) => ({
      group: 'nodes',
      data: { id: n.id, label: n.node ? `${n.label}\n(${n.node})` : n.label, parent: n.kind === 'pod' && n.namespace ? `ns:${n.namespace}` : undefined },
      position: at[n.id], classes: n.kind === 'pod' ? 'pod' : 'entity',
    })),
    ...map.edges.map((e) => ({
      group: 'edges', data: { id: e.id, source: e.source, target: e.target, label: `${e.what} ×${e.count}` }, classes: verdictClass(e.verdict),
    })),
  ];
}

function draw(map) {
  const elements = elementsOf(map);
  if (!state.cy) {
    state.cy = cytoscape({
      container: $('#map'), elements, layout: { name: 'preset', fit: true, padding: 20 }, wheelSensitivity: 0.3,
      style: [
        { selector: 'node', style: { label: 'data(label)', 'text-wrap': 'wrap', 'font-size': 10, 'text-valign': 'bottom', width: 24, height: 24, 'background-color': '#0969da' } },
        { selector: 'node.entity', style: { shape: 'round-rectangle', 'background-color': '#8250df' } },
        { selector: 'node.namespace', style: { 'background-opacity': 0.06, 'border-width': 1, 'border-color': '#8c959f', 'text-valign': 'top', 'font-weight': 'bold', shape: 'round-rectangle' } },
        { selector: 'edge', style: { label: 'data(label)', 'font-size': 9, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', width: 2, 'text-rotation': 'autorotate', 'text-background-color': '#fff', 'text-background-opacity': 0.8 } },
        { selector: 'edge.allowed', style: { 'line-color': '#1a7f37', 'target-arrow-color': '#1a7f37', color: '#1a7f37' } },
        { selector: 'edge.dropped', style: { 'line-color': '#cf222e', 'target-arrow-color': '#cf222e', color: '#cf222e', 'line-style': 'dashed' } },
        { selector: 'edge.audit', style: { 'line-color': '#bf8700', 'target-arrow-color': '#bf8700', color: '#bf8700' } },
        { selector: ':selected', style: { 'border-width': 3, 'border-color': '#1f2328', width: 4 } },
      ],
    });
    state.cy.on('tap', 'node.pod', (event) => showPod(event.target.id()));
    state.cy.on('tap', 'edge', (event) => showEdge(state.map.edges.find((e) => e.id === event.target.id())));
    return;
  }
  state.cy.batch(() => {
    state.cy.elements().remove();
    state.cy.add(elements);
  });
  state.cy.layout({ name: 'preset', fit: false }).run();
}

// A pod in the table opens its policy (the keyboard's way to what a click on the map does); other peers are named.
function side(map, id) {
  if (!id.startsWith('identity:')) {
    return element('button', { type: 'button', class: 'pod-link', 'data-pod': id, 'aria-label': `Policy of ${id}`, onclick: () => showPod(id) }, id);
  }
  return map.nodes.find((n) => n.id === id)?.label ?? id;
}

function drawTable(map) {
  const body = $('#edges tbody');
  body.replaceChildren(...map.edges.map((e) => element('tr', { 'data-edge': e.id, class: `verdict-${e.verdict.toLowerCase()}` },
    element('td', {}, side(map, e.source)), element('td', {}, side(map, e.target)), element('td', {}, e.what),
    element('td', { class: verdictClass(e.verdict) }, verdictWord(e.verdict)), element('td', {}, e.count),
    element('td', {}, new Date(e.last).toLocaleTimeString()), element('td', {}, e.reason ?? ''),
    element('td', {}, element('button', { type: 'button', 'aria-label': `Why: ${e.what} from ${e.source} to ${e.target}`, onclick: () => showEdge(e) }, 'Why?')))));
  $('#edges-caption').textContent = `${map.edges.length} edges from ${map.flows} flows of the ring (capacity ${map.capacity}; ` +
    `${map.eventsLost} events lost by the kernel)`;
}

function render(map) {
  state.map = map;
  window.membraneMap = map; // for tests and the curious: the data behind the page
  draw(map);
  drawTable(map);
  document.body.dataset.edges = String(map.edges.length);
}

function connect() {
  state.source?.close();
  const source = new EventSource(`/api/events?${state.filters}`);
  state.source = source;
  source.addEventListener('map', (event) => render(JSON.parse(event.data)));
  source.addEventListener('problem', (event) => { $('#status').textContent = `agent: ${JSON.parse(event.data).error}`; });
  source.onerror = () => { $('#status').textContent = 'the connection to membrane ui was lost; retrying…'; };
}

async function showStatus() {
  try {
    const s = await api('/api/status');
    $('#status').textContent = `revision ${s.revision} · ${s.endpoints} pods in ${s.namespaces} namespaces · ${s.policies} policies` +
      (s.cluster ? ` · node ${s.cluster.node} (${s.cluster.health})` : '') + (s.policyAuditMode ? ' · audit mode on every endpoint' : '');
  } catch (e) {
    $('#status').textContent = `agent: ${e.message}`;
  }
}

function policyTable(title, rows) {
  return element('table', { 'aria-label': title },
    element('caption', {}, title),
    element('thead', {}, element('tr', {}, ...['Peer', 'What', 'Verdict', 'Packets', 'From'].map((h) => element('th', { scope: 'col' }, h)))),
    element('tbody', {}, ...rows.map((r) => element('tr', { class: r.verdict === 'deny' ? 'deny' : '' },
      element('td', {}, `${r.peer} (${r.identity})`), element('td', {}, r.what),
      element('td', {}, r.verdict === 'deny' ? 'DENY' : 'allow'), element('td', {}, r.packets), element('td', {}, r.derivedFrom)))));
}

async function showPod(name) {
  const details = $('#details');
  details.replaceChildren(element('p', {}, `Loading ${name}…`));
  try {
    const view = await api(`/api/pod?name=${encodeURIComponent(name)}`);
    const open = (enforced) => enforced ? 'enforced' : 'open (no policy selects it)';
    details.replaceChildren(
      element('h2', {}, name),
      element('p', {}, `identity ${view.endpoint.identity} · ${view.endpoint.iPv4 ?? ''} ${view.endpoint.iPv6 ?? ''}`),
      element('p', {}, `ingress ${open(view.ingressEnforced)} · egress ${open(view.egressEnforced)}` + (view.audit ? ' · audit mode: nothing is dropped by policy' : '')),
      policyTable(`Who may reach ${name} (ingress)`, view.ingress),
      policyTable(`Whom ${name} may reach (egress)`, view.egress));
  } catch (e) {
    details.replaceChildren(element('p', { class: 'error' }, `${name}: ${e.message}`));
  }
}

function flowQuery(edge) {
  return {
    from: edge.source, to: edge.target, protocol: edge.protocol, port: edge.port ?? null,
    icmpType: edge.icmpType === null || edge.icmpType === undefined ? null : String(edge.icmpType), icmpCode: null,
    family: edge.family === 'IPv6' ? 'ipv6' : 'ipv4',
  };
}

async function showEdge(edge) {
  if (!edge) return;
  const details = $('#details');
  const heading = element('h2', {}, `${edge.what}: ${edge.source} → ${edge.target}`);
  const summary = element('p', {}, `${verdictWord(edge.verdict)} ×${edge.count}${edge.reason ? ` — ${edge.reason}` : ''}`);
  if (edge.source.startsWith('identity:') || edge.target.startsWith('identity:')) {
    details.replaceChildren(heading, summary, element('p', {}, 'A trace and a probe need two pods; this flow has a peer that is no pod.'));
    return;
  }
  const probeResult = element('p', { id: 'probe-result', 'aria-live': 'polite' });
  const probe = element('button', {
    type: 'button', id: 'probe-now', onclick: async () => {
      probeResult.textContent = 'probing…';
      try {
        const r = await api('/api/probe', { ...flowQuery(edge), timeoutMs: 1000 });
        probeResult.textContent = `${r.result}: ${r.detail} (${r.milliseconds.toFixed(1)} ms)`;
      } catch (e) {
        probeResult.textContent = `probe failed: ${e.message}`;
      }
    },
  }, 'Probe now');
  details.replaceChildren(heading, summary, element('p', {}, 'Tracing…'));
  try {
    const t = await api('/api/trace', flowQuery(edge));
    const side = (s, title) => element('li', {},
      `${title} ${s.endpoint}: ${s.enforced ? 'enforced' : 'not enforced'}; ${s.verdict} — ${s.reason}` +
      (s.matchedEntry ? ` (entry ${s.matchedEntry}, ${s.matchKind})` : '') + (s.rules.length ? `; rules: ${s.rules.join('; ')}` : ''));
    details.replaceChildren(heading, summary,
      element('h3', {}, `Trace: ${t.verdict}`),
      element('ol', { class: 'steps', 'aria-label': 'Trace, step by step' },
        element('li', {}, `source identity ${t.sourceIdentity}, destination identity ${t.destinationIdentity}`),
        side(t.egress, 'egress from'), side(t.ingress, 'ingress to'),
        ...(t.checkedAt ? [element('li', {}, `where: ${t.checkedAt}`)] : [])),
      element('pre', { class: 'trace', 'aria-label': 'policy trace output' }, t.text ?? ''),
      probe, probeResult);
  } catch (e) {
    details.replaceChildren(heading, summary, element('p', { class: 'error' }, `trace: ${e.message}`), probe, probeResult);
  }
}

function download(name, url) {
  const link = element('a', { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

// The map as SVG from the drawn positions: namespaces, pods, peers and arrows with their labels.
function svgOfMap() {
  const cy = state.cy;
  const box = cy.elements().boundingBox();
  const escape = (text) => String(text).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
  const colour = { allowed: '#1a7f37', dropped: '#cf222e', audit: '#bf8700' };
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" viewBox="${box.x1 - 10} ${box.y1 - 10} ${box.w + 20} ${box.h + 20}" font-family="sans-serif">`];
  cy.nodes('.namespace').forEach((n) => {
    const b = n.boundingBox();
    parts.push(`<rect x="${b.x1}" y="${b.y1}" width="${b.w}" height="${b.h}" rx="8" fill="#0969da" fill-opacity="0.06" stroke="#8c959f"/>`,
      `<text x="${b.x1 + 6}" y="${b.y1 + 12}" font-size="11" font-weight="bold">${escape(n.data('label'))}</text>`);
  });
  cy.edges().forEach((e) => {
    const s = e.source().position(), t = e.target().position();
    const c = colour[['allowed', 'dropped', 'audit'].find((k) => e.hasClass(k))];
    parts.push(`<line x1="${s.x}" y1="${s.y}" x2="${t.x}" y2="${t.y}" stroke="${c}" stroke-width="2"/>`,
      `<text x="${(s.x + t.x) / 2}" y="${(s.y + t.y) / 2}" font-size="9" fill="${c}">${escape(e.data('label'))}</text>`);
  });
  cy.nodes('.pod, .entity').forEach((n) => {
    const p = n.position();
    parts.push(`<circle cx="${p.x}" cy="${p.y}" r="12" fill="${n.hasClass('pod') ? '#0969da' : '#8250df'}"/>`,
      `<text x="${p.x}" y="${p.y + 24}" font-size="10" text-anchor="middle">${escape(n.data('label'))}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

window.membraneUi = { render, svgOfMap, positions, png: () => state.cy.png({ full: true, bg: '#ffffff', scale: 2 }) };

$('#export-png').addEventListener('click', () => download('membrane-map.png', state.cy.png({ full: true, bg: '#ffffff', scale: 2 })));
$('#export-svg').addEventListener('click', () => {
  download('membrane-map.svg', URL.createObjectURL(new Blob([svgOfMap()], { type: 'image/svg+xml' })));
});
$('#filters').addEventListener('submit', (event) => {
  event.preventDefault();
  state.filters = new URLSearchParams([...new FormData(event.target)].filter(([, v]) => v !== ''));
  connect();
});

// The token came in the URL once; it now lives in a same-site cookie, so it leaves the address bar (and bookmarks).
if (new URLSearchParams(location.search).has('token')) history.replaceState(null, '', location.pathname);
showStatus();
setInterval(showStatus, 5000);
connect();
