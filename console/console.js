// shepherd-mesh console: one vanilla module, no framework, no network but this node's own API.
// Everything a peer announces (names, models, groups, GPU names) is hostile input: it reaches the
// page through textContent only, never as HTML.

const KEY_STORE = 'shepherd-api-key'
const REFRESH_MS = 2000
const MAX_EVENTS = 200

const $ = (id) => document.getElementById(id)

/** Builds an element: h('td', { class: 'x', dataset: { id } }, 'text', child, ...). */
function h (tag, attrs, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue
    if (k === 'dataset') Object.assign(el.dataset, v)
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn)
    else if (k === 'class') el.className = v
    // CSSOM, not the style attribute: the page's CSP (no 'unsafe-inline') drops style attributes.
    else if (k === 'style') Object.assign(el.style, v)
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return el
}

const short = (id) => (id ?? '').length > 10 ? '…' + id.slice(-8) : (id ?? '')
const pct = (used, total) => total > 0 ? Math.max(0, Math.min(100, used / total * 100)) : 0
function bytes (n) {
  if (n == null || !Number.isFinite(n)) return '—'
  const u = ['B', 'K', 'M', 'G', 'T']
  let i = 0
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++ }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)}${u[i]}`
}
const clock = (t) => new Date(t).toLocaleTimeString([], { hour12: false })
/** A time of today as its clock time, an older one with its date. */
const when = (t) => new Date(t).toDateString() === new Date().toDateString() ? clock(t) : new Date(t).toLocaleString([], { hour12: false })

// ---------------------------------------------------------------- API access

class AuthError extends Error {}

const keyOf = () => sessionStorage.getItem(KEY_STORE)

/** fetch() against this node, with the key when one is stored; JSON in, JSON out. */
async function api (path, { method = 'GET', body, signal, raw = false } = {}) {
  const headers = { accept: raw ? 'text/event-stream' : 'application/json' }
  // Mutating routes take JSON only (the API refuses simple cross-site requests), `{}` when empty.
  if (method !== 'GET') headers['content-type'] = 'application/json'
  const key = keyOf()
  if (key) headers.authorization = `Bearer ${key}`
  const res = await fetch(path, { method, headers, signal, body: method !== 'GET' ? JSON.stringify(body ?? {}) : undefined })
  if (res.status === 401) {
    // A request still in flight with a key the operator has replaced since says nothing about the new one.
    if (keyOf() === key) askKey(key ? 'That key was refused.' : '')
    throw new AuthError('API key needed')
  }
  if (raw) return res
  const text = await res.text()
  let data = null
  try { data = text ? JSON.parse(text) : null } catch { data = null }
  if (!res.ok) {
    const msg = data?.error?.message ?? (typeof data?.error === 'string' ? data.error : `${res.status} ${res.statusText}`)
    throw new Error(msg)
  }
  return data
}

function askKey (why) {
  $('key-error').textContent = why
  if (!$('key-dialog').hidden) return
  $('key-dialog').hidden = false
  $('key-input').value = ''
  $('key-input').focus()
}

$('key-form').addEventListener('submit', (e) => {
  e.preventDefault()
  sessionStorage.setItem(KEY_STORE, $('key-input').value.trim())
  $('key-dialog').hidden = true
  // A refresh in flight runs with the old key: start a new one.
  refreshing = null
  refresh()
  loadAudit()
  startEvents()
})
$('key-cancel').addEventListener('click', () => { $('key-dialog').hidden = true })
$('key-button').addEventListener('click', () => askKey(''))

function banner (msg) {
  $('banner').hidden = !msg
  $('banner').textContent = msg ?? ''
}

/** Runs an action from a button: disabled while it runs, errors in the banner. */
async function act (button, what, fn) {
  if (button) button.disabled = true
  try {
    await fn()
    banner(null)
    await refresh()
  } catch (err) {
    if (!(err instanceof AuthError)) banner(`${what}: ${err.message}`)
  } finally {
    if (button) button.disabled = false
  }
}

// ---------------------------------------------------------------- state and refresh

const state = { self: null, peers: [], models: [], groups: [], deployments: [] }
const rendered = new Map()

/** Re-renders a section only when its data changed, and not while the operator types in it. */
function paint (id, data, render) {
  const json = JSON.stringify(data)
  const el = $(id)
  if (rendered.get(id) === json) return
  if (el.contains(document.activeElement) && document.activeElement.matches('input, select, textarea')) return
  rendered.set(id, json)
  render(el)
}

let refreshing = null
let unreachable = false
async function refresh () {
  if (refreshing) return refreshing
  refreshing = (async () => {
    try {
      const [self, peers, models, groups, deployments] = await Promise.all([
        api('/api/node'), api('/api/peers'), api('/api/models'), api('/api/groups'), api('/api/deployments')
      ])
      Object.assign(state, { self, peers: peers.peers, models: models.models, groups: groups.groups, deployments: deployments.deployments })
      render()
      if (unreachable) { unreachable = false; banner(null) }
    } catch (err) {
      if (!(err instanceof AuthError)) { unreachable = true; banner(`This node does not answer: ${err.message}`) }
    } finally {
      refreshing = null
    }
  })()
  return refreshing
}

let refreshSoon = null
function scheduleRefresh () {
  clearTimeout(refreshSoon)
  refreshSoon = setTimeout(refresh, 150)
}

const nameOf = (id) => id === state.self?.id ? state.self.name : (state.peers.find(p => p.id === id)?.name ?? short(id))

function render () {
  const s = state.self
  $('self-info').textContent = s ? `${s.name} · ${short(s.id)} · v${s.version ?? '?'}` : ''
  document.title = s ? `${s.name} · shepherd-mesh` : 'shepherd-mesh'
  renderNodes()
  renderModels()
  renderDeployments()
  renderGroups()
  renderModelChoices()
}

// ---------------------------------------------------------------- nodes

function meter (label, percent, value) {
  const p = Math.max(0, Math.min(100, Math.round(Number(percent)) || 0))
  return h('div', { class: 'meter', dataset: { meter: label.toLowerCase() } },
    h('span', {}, label),
    h('span', { class: 'bar', role: 'meter', 'aria-valuenow': p, 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-label': label },
      h('i', { class: p >= 90 ? 'full' : p >= 70 ? 'hot' : '', style: { width: `${p}%` } })),
    h('span', { class: 'v' }, value))
}

function nodeCard (p, self) {
  const r = p.resources
  const leads = state.groups.filter(g => g.leader === p.id).map(g => g.name)
  const loaded = (p.models ?? []).filter(m => m.state !== 'on_disk').length
  const card = h('article', { class: 'card node', dataset: { id: p.id, name: p.name, status: p.status } },
    h('header', {},
      h('span', { class: 'name', title: p.name }, p.name),
      h('span', { class: `badge ${p.status}`, dataset: { role: 'status' } }, p.status),
      self && h('span', { class: 'badge self' }, 'this node'),
      h('span', { class: 'id', title: p.id }, short(p.id))),
    h('div', { class: 'facts' }, [
      r ? `${r.platform}/${r.arch}` : null,
      p.rttMs != null ? `rtt ${p.rttMs < 10 ? p.rttMs.toFixed(1) : Math.round(p.rttMs)} ms` : null,
      p.load ? `load ${p.load.active}+${p.load.queued}` : null,
      (p.groups ?? []).length ? `groups ${p.groups.join(', ')}` : null,
      leads.length ? `leader of ${leads.join(', ')}` : null,
      p.duplicateIdentity ? 'DUPLICATE ID' : null
    ].filter(Boolean).join(' · ')))
  if (r) {
    card.append(meter('CPU', r.cpu?.usagePercent ?? 0, `${r.cpu?.cores ?? '?'}× ${Math.round(r.cpu?.usagePercent ?? 0)}%${r.cpu?.temperatureC != null ? ` ${Math.round(r.cpu.temperatureC)}°C` : ''}`))
    const m = r.memory ?? {}
    card.append(meter('RAM', pct(m.usedBytes, m.totalBytes), `${bytes(m.usedBytes)}/${bytes(m.totalBytes)}`))
    for (const g of r.gpus ?? []) {
      const temp = g.temperatureC != null ? ` ${Math.round(g.temperatureC)}°C` : ''
      card.append(h('div', { class: 'facts', title: g.name }, `GPU ${g.index}: ${g.name}${g.driverVersion ? ` · driver ${g.driverVersion}` : ''}`))
      card.append(meter('GPU', g.utilizationPercent ?? 0, `${g.utilizationPercent != null ? Math.round(g.utilizationPercent) + '%' : '—'}${temp}`))
      card.append(meter('VRAM', pct(g.usedMemoryBytes, g.totalMemoryBytes), `${bytes(g.usedMemoryBytes)}/${bytes(g.totalMemoryBytes)}`))
    }
    if ((r.gpus ?? []).length === 0) card.append(h('div', { class: 'facts' }, 'no GPU'))
    if (r.disk) card.append(meter('Disk', pct(r.disk.usedBytes, r.disk.totalBytes), `${bytes(r.disk.availableBytes)} free`))
  } else if (p.status !== 'pending') {
    card.append(h('div', { class: 'facts' }, 'no resources reported yet'))
  }
  if ((p.models ?? []).length) {
    card.append(h('ul', { class: 'models' }, p.models.map(m =>
      h('li', { dataset: { model: m.name } }, h('span', { title: m.name }, m.name), h('span', { class: `badge ${m.state}` }, m.state.replace('_', ' ')), m.pinned && h('span', { class: 'badge' }, 'replica')))))
  }
  const actions = h('div', { class: 'actions' })
  if (p.status === 'pending' || p.trust === 'pending') {
    actions.append(h('button', { type: 'button', dataset: { action: 'admit' }, on: { click: (e) => act(e.target, `admit ${p.name}`, () => api(`/api/members/${encodeURIComponent(p.id)}/admit`, { method: 'POST' })) } }, 'Admit'))
  }
  if (p.status !== 'pending') {
    actions.append(h('button', { type: 'button', class: 'ghost small', dataset: { action: 'logs' }, on: { click: (e) => showLogs(e.target, p) } }, 'Logs'))
  }
  card.append(actions)
  if (!r && loaded === 0 && p.status === 'pending') card.append(h('div', { class: 'facts' }, 'said hello; not a member: admit it to let it in'))
  return card
}

function renderNodes () {
  const self = state.self
  const list = self ? [self, ...state.peers.filter(p => p.id !== self.id)] : state.peers
  // Pending peers that only the membership list knows (no connection right now) are left out: they cannot be admitted blind.
  paint('node-list', { list, groups: state.groups }, (el) => {
    el.replaceChildren(...list.map(p => nodeCard(p, p.id === self?.id)))
  })
  const counts = {}
  for (const p of list) counts[p.status] = (counts[p.status] ?? 0) + 1
  $('nodes-count').textContent = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(' · ')
}

async function showLogs (button, peer) {
  $('logs').hidden = false
  $('logs-of').textContent = `of ${peer.name} (${short(peer.id)})`
  $('logs-out').textContent = 'asking…'
  $('logs').scrollIntoView({ behavior: 'smooth' })
  const target = peer.id === state.self?.id ? 'self' : peer.id
  await act(button, `logs of ${peer.name}`, async () => {
    try {
      const res = await api('/api/commands', { method: 'POST', body: { target, type: 'collect_logs', payload: { lines: 300 } } })
      if (res.status !== 'ok') throw new Error(res.error ? `${res.error.code}: ${res.error.message}` : String(res.status))
      $('logs-out').textContent = (res.output ?? []).join('\n') || '(no log lines at info level or above yet)'
    } catch (err) {
      $('logs-out').textContent = `Could not collect the logs: ${err.message}`
      if (!(err instanceof AuthError)) return
      throw err
    }
  })
}
$('logs-close').addEventListener('click', () => { $('logs').hidden = true })

// ---------------------------------------------------------------- models

function command (button, what, target, type, payload) {
  return act(button, what, async () => {
    const res = await api('/api/commands', { method: 'POST', body: { target, type, payload } })
    if (res.status !== 'ok') throw new Error(res.error ? `${res.error.code}: ${res.error.message}` : String(res.status))
  })
}

function renderModels () {
  paint('model-table', state.models, (el) => {
    const rows = state.models.map(m => h('tr', { dataset: { model: m.name } },
      h('td', {}, h('strong', {}, m.name), h('div', { class: 'facts' }, [m.architecture, m.quantization, m.conflict ? 'CONFLICT: different files share this name' : null].filter(Boolean).join(' · '))),
      h('td', {}, bytes(m.sizeBytes)),
      h('td', {}, h('div', { class: 'hosts' }, m.hosts.map(host => h('span', { class: 'host' },
        h('span', { class: `badge ${host.state}`, title: host.peerId }, `${host.name} · ${host.state.replace('_', ' ')}`),
        host.state === 'loading'
          ? null
          : host.state === 'on_disk'
          ? h('button', { type: 'button', class: 'ghost small', dataset: { action: 'load', node: host.peerId }, on: { click: (e) => command(e.target, `load ${m.name} on ${host.name}`, host.local ? 'self' : host.peerId, 'load_model', { model: m.name }) } }, 'load')
          : h('button', { type: 'button', class: 'ghost small', dataset: { action: 'unload', node: host.peerId }, on: { click: (e) => command(e.target, `unload ${m.name} on ${host.name}`, host.local ? 'self' : host.peerId, 'unload_model', { model: m.name }) } }, 'unload'))))),
      h('td', {}, h('button', { type: 'button', class: 'ghost small', on: { click: () => { $('deploy-model').value = m.name; $('deploy-model').focus() } } }, 'deploy…'))))
    el.tBodies[0].replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No model on any node yet (put GGUF files in a models dir).'))]))
  })
}

function renderModelChoices () {
  const names = state.models.map(m => m.name)
  for (const id of ['deploy-model', 'chat-model']) {
    const sel = $(id)
    const have = [...sel.options].map(o => o.value)
    if (JSON.stringify(have) === JSON.stringify(names)) continue
    const keep = sel.value
    sel.replaceChildren(...names.map(n => h('option', { value: n }, n)))
    if (names.includes(keep)) sel.value = keep
  }
}

// ---------------------------------------------------------------- deployments

/** The phase of a deployment: the API's `progress.phase` when it has one, else derived from its status. */
function phaseOf (d) {
  if (d.progress?.phase) return d.progress.phase
  const s = d.status ?? {}
  const loaded = (s.actual ?? []).filter(r => r.state === 'loaded').length
  if (loaded >= d.replicas) return 'placed'
  if ((s.actual ?? []).some(r => r.state === 'loading')) return 'loading'
  if (s.unplaceable > 0) return 'unplaceable'
  return 'pending'
}

function replicaRows (d) {
  if (d.progress?.replicas?.length) {
    return d.progress.replicas.map(r => {
      // Peers report these numbers: only a number in range reaches a style attribute.
      const p = Math.max(0, Math.min(100, Number(r.percent) || 0))
      const moving = r.percent != null && r.phase === 'transferring'
      return h('span', { class: 'host' },
        h('span', { class: `badge ${r.phase}`, title: r.error ?? r.nodeId }, `${r.name} · ${r.phase}`),
        moving && h('span', { class: 'progress', title: `${p}%` }, h('i', { style: { width: `${p}%` } })),
        moving && h('small', {}, `${p}%${r.bytesPerSec ? ` · ${bytes(Number(r.bytesPerSec))}/s` : ''}`))
    })
  }
  return (d.status?.actual ?? []).map(r => h('span', { class: `badge ${r.state}`, title: r.nodeId }, `${r.name} · ${r.state.replace('_', ' ')}`))
}

function renderDeployments () {
  paint('deployment-table', state.deployments, (el) => {
    const rows = state.deployments.filter(d => d && !d.deleted).map(d => {
      const phase = phaseOf(d)
      const placed = d.progress?.placed ?? (d.status?.actual ?? []).filter(r => r.state === 'loaded').length
      const input = h('input', { type: 'number', min: 1, max: 1024, value: d.replicas, 'aria-label': 'replicas' })
      return h('tr', { dataset: { model: d.model, phase } },
        h('td', {}, h('strong', {}, d.model), h('div', { class: 'facts' }, [d.strategy, d.status?.leader ? `leader ${nameOf(d.status.leader)}` : 'no leader yet'].filter(Boolean).join(' · '))),
        h('td', {}, d.group),
        h('td', {}, `${placed}/${d.replicas}`),
        h('td', {}, h('span', { class: `badge ${phase}`, dataset: { role: 'phase' } }, phase), d.status?.lastError && h('div', { class: 'facts' }, d.status.lastError)),
        h('td', {}, h('div', { class: 'hosts' }, replicaRows(d))),
        h('td', {}, h('div', { class: 'row' }, input,
          h('button', { type: 'button', class: 'ghost small', dataset: { action: 'scale' }, on: { click: (e) => act(e.target, `scale ${d.model}`, () => api('/api/deployments', { method: 'POST', body: { model: d.model, group: d.group, replicas: Number(input.value), ...(d.strategy ? { strategy: d.strategy } : {}), ...(d.fingerprint ? { fingerprint: d.fingerprint } : {}) } })) } }, 'scale'),
          h('button', { type: 'button', class: 'danger small', dataset: { action: 'undeploy' }, on: { click: (e) => { if (confirm(`Undeploy ${d.model}?`)) act(e.target, `undeploy ${d.model}`, () => api(`/api/deployments/${encodeURIComponent(d.model)}`, { method: 'DELETE' })) } } }, 'undeploy'))))
    })
    el.tBodies[0].replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No deployment: models load on demand. Deploy one to keep replicas loaded.'))]))
  })
}

$('deploy-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const body = { model: $('deploy-model').value, replicas: Number($('deploy-replicas').value), group: $('deploy-group').value }
  act(e.submitter, `deploy ${body.model}`, () => api('/api/deployments', { method: 'POST', body }))
})

// ---------------------------------------------------------------- groups

function renderGroups () {
  paint('group-list', state.groups, (el) => {
    const cards = state.groups.map(g => h('article', { class: 'card', dataset: { group: g.name } },
      h('h3', {}, g.name, ' ', g.joined && h('span', { class: 'badge self' }, 'joined')),
      h('div', { class: 'facts' }, g.leader ? `leader ${nameOf(g.leader)} (${short(g.leader)}) · term ${g.term}` : `no leader · term ${g.term}`),
      h('ul', { class: 'models' }, (g.members ?? []).map(m => h('li', {},
        h('span', {}, m.name), h('span', { class: `badge ${m.status}` }, m.status), m.id === g.leader && h('span', { class: 'badge self' }, 'leader'))))))
    el.replaceChildren(...(cards.length ? cards : [h('p', { class: 'empty' }, 'No group.')]))
  })
}

// ---------------------------------------------------------------- live events (SSE over fetch: EventSource cannot send a key)

let events = null
async function startEvents () {
  events?.abort()
  const ctl = new AbortController()
  events = ctl
  let delay = 1000
  while (!ctl.signal.aborted) {
    try {
      const res = await api('/api/events', { raw: true, signal: ctl.signal })
      if (!res.ok || !res.body) throw new Error(`events: ${res.status}`)
      $('live').dataset.state = 'on'
      delay = 1000
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
      let buf = ''
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        buf += value
        let cut
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          onEvent(buf.slice(0, cut))
          buf = buf.slice(cut + 2)
        }
      }
    } catch (err) {
      if (err instanceof AuthError || ctl.signal.aborted) break
    }
    $('live').dataset.state = 'error'
    await new Promise(resolve => setTimeout(resolve, delay))
    delay = Math.min(delay * 2, 10_000)
  }
  if (events === ctl) $('live').dataset.state = 'off'
}

function onEvent (block) {
  let type = 'message'
  const data = []
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) type = line.slice(6).trim()
    else if (line.startsWith('data:')) data.push(line.slice(5).trim())
  }
  if (data.length === 0) return
  let ev
  try { ev = JSON.parse(data.join('\n')) } catch { return }
  if (type === 'hello') { scheduleRefresh(); return }
  if (type !== 'peer:snapshot') logEvent(type, ev)
  // A peer's status changes the page at once; the 2 s refresh picks up the rest.
  const peer = state.peers.find(p => p.id === ev.id)
  if (peer && typeof ev.status === 'string' && type.startsWith('peer:') && ['alive', 'suspect', 'dead', 'left', 'pending'].includes(ev.status)) {
    peer.status = ev.status
    // Only members enter the peer table, so a member status means the peer was admitted; the
    // refresh confirms its trust, and an Admit button must not linger on it until then.
    if (ev.status !== 'pending' && peer.trust === 'pending') peer.trust = undefined
    renderNodes()
  }
  scheduleRefresh()
}

/** The badge colour of an event: the state it reports. */
const badgeOf = (type, ev) => type === 'deployment:progress' ? ev.phase : type === 'group:leader' ? 'self' : (ev.status ?? '')

function logEvent (type, ev) {
  let text
  if (type === 'deployment:progress') {
    text = `${ev.model} on ${ev.name ?? short(ev.nodeId)}: ${ev.phase}${ev.percent != null && ev.phase === 'transferring' ? ` ${ev.percent}%` : ''}${ev.error ? ` (${ev.error})` : ''}`
  } else if (type === 'group:leader') {
    text = `${ev.name ?? short(ev.id)} leads ${ev.group} (term ${ev.term})`
  } else {
    text = `${ev.name ?? ''} ${short(ev.id)} ${ev.status ?? ''}`
  }
  const list = $('event-list')
  list.prepend(h('li', { dataset: { type } }, h('time', {}, clock(ev.at ?? Date.now())), h('span', { class: `badge ${badgeOf(type, ev)}` }, type), h('span', {}, text)))
  while (list.children.length > MAX_EVENTS) list.lastChild.remove()
}

// ---------------------------------------------------------------- command audit

async function loadAudit () {
  try {
    const { commands } = await api('/api/commands?limit=50')
    const rows = (commands ?? []).map(c => h('tr', {},
      h('td', { class: 'mono' }, when(c.at)),
      h('td', {}, h('span', { class: `badge ${c.verdict}` }, c.verdict)),
      h('td', {}, c.type ?? ''),
      h('td', { title: c.issuer ?? '' }, c.issuer ? nameOf(c.issuer) : ''),
      h('td', {}, [c.status, c.reason, c.error?.message, c.detail, c.durationMs != null ? `${c.durationMs} ms` : null].filter(Boolean).join(' · '))))
    $('audit-table').tBodies[0].replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No command has reached this node.'))]))
  } catch (err) {
    if (!(err instanceof AuthError)) banner(`audit: ${err.message}`)
  }
}
$('audit-refresh').addEventListener('click', loadAudit)

// ---------------------------------------------------------------- playground

const chat = { messages: [], busy: null }

$('chat-clear').addEventListener('click', () => {
  chat.busy?.abort()
  chat.messages = []
  $('chat-log').replaceChildren()
  $('chat-meta').textContent = ''
})

$('chat-input').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('chat-form').requestSubmit() }
})

$('chat-form').addEventListener('submit', async (e) => {
  e.preventDefault()
  if (chat.busy) return
  const text = $('chat-input').value.trim()
  const model = $('chat-model').value
  if (!text || !model) return
  $('chat-input').value = ''
  chat.messages.push({ role: 'user', content: text })
  $('chat-log').append(h('div', { class: 'msg user' }, text))
  const out = h('div', { class: 'msg assistant', dataset: { role: 'reply' } })
  const body = h('span', {})
  const foot = h('small', {})
  out.append(body, foot)
  $('chat-log').append(out)
  const ctl = new AbortController()
  chat.busy = ctl
  $('chat-send').disabled = true
  $('chat-meta').textContent = 'waiting for the first token…'
  const t0 = performance.now()
  let first = null
  let chunks = 0
  let usage = null
  let answer = ''
  try {
    const key = keyOf()
    const res = await fetch('/v1/chat/completions', {
      method: 'POST',
      signal: ctl.signal,
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', ...(key ? { authorization: `Bearer ${key}` } : {}) },
      body: JSON.stringify({ model, messages: chat.messages, stream: true, stream_options: { include_usage: true }, max_tokens: Number($('chat-max').value) || 128 })
    })
    if (res.status === 401) { if (keyOf() === key) askKey(key ? 'That key was refused.' : ''); throw new Error('API key needed') }
    if (!res.ok) {
      const err = await res.json().catch(() => null)
      throw new Error(err?.error?.message ?? `${res.status} ${res.statusText}`)
    }
    const host = res.headers.get('x-shepherd-host') ?? ''
    out.dataset.host = host
    const hostName = host ? nameOf(host) : 'unknown node'
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    let buf = ''
    const status = () => {
      const now = performance.now()
      const tokens = usage?.completion_tokens ?? chunks
      // Decode speed: tokens after the first over the time since it, as llama.cpp reports it.
      const secs = first != null && tokens > 1 ? (now - first) / 1000 : (now - t0) / 1000
      const rate = secs > 0 ? (first != null && tokens > 1 ? (tokens - 1) / secs : tokens / secs) : 0
      const text = `answered by ${hostName} (${short(host)}) · ${tokens} tokens · ${rate.toFixed(1)} tok/s · first token ${first != null ? Math.round(first - t0) : '—'} ms`
      foot.textContent = text
      $('chat-meta').textContent = text
      $('chat-meta').dataset.host = host
      $('chat-meta').dataset.tokensPerSec = rate.toFixed(2)
    }
    // How many network reads added text: more than one means the reply really arrived as a stream.
    let pieces = 0
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      buf += value
      const before = answer.length
      let cut
      while ((cut = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, cut).trim()
        buf = buf.slice(cut + 1)
        if (!line.startsWith('data:')) continue
        const data = line.slice(5).trim()
        if (data === '[DONE]') continue
        let chunk
        try { chunk = JSON.parse(data) } catch { continue }
        if (chunk.error) throw new Error(chunk.error.message ?? 'the stream failed')
        if (chunk.usage) usage = chunk.usage
        const delta = chunk.choices?.[0]?.delta?.content
        if (delta) {
          first ??= performance.now()
          chunks++
          answer += delta
          body.textContent = answer
          $('chat-log').scrollTop = $('chat-log').scrollHeight
        }
      }
      if (answer.length > before) out.dataset.pieces = String(++pieces)
      status()
    }
    status()
    out.dataset.done = 'true'
    chat.messages.push({ role: 'assistant', content: answer })
  } catch (err) {
    if (!ctl.signal.aborted) {
      out.classList.add('error')
      body.textContent = err.message
      $('chat-meta').textContent = ''
    }
    chat.messages.pop()
  } finally {
    chat.busy = null
    $('chat-send').disabled = false
  }
})

// ---------------------------------------------------------------- start

refresh()
loadAudit()
startEvents()
setInterval(refresh, REFRESH_MS)
setInterval(() => { if (!document.hidden && !$('audit').hidden) loadAudit() }, 10_000)
