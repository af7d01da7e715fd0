/**
 * The console (issue 15 item 1) in a real browser: Debian's headless Chromium driven by
 * puppeteer-core, against a real 3-node mesh on loopback (a tiny GGUF model on one node, an API
 * key on another). The page renders the peers, reacts to a peer's death, deploys a model until it
 * is placed, streams a chat through the mesh showing the answering node, and asks for the key
 * where one is set; API clients still get `Ollama is running` at `/`.
 *
 * `CHROMIUM_PATH` names the browser (default /usr/bin/chromium: `apt install chromium`); without
 * one the suite fails, it never skips. `CONSOLE_SCREENSHOTS=docs` also writes the README's
 * screenshots (docs/console-*.png).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import puppeteer, { type Browser, type Page } from 'puppeteer-core'
import { createTinyModel } from '../support/tiny-model.js'
import { parseNvidiaSmiXml } from '../../src/node/resources/nvidia.js'
import { ROOT, getJson, startNode, stopNode, tempDir, waitFor, type NodeProcess } from '../support/cluster.js'

// The callbacks given to page.evaluate/$eval run in the browser; this project compiles without the
// DOM lib (it would retype Node's timers for every file), so the page's globals are declared here.
declare const document: any
declare const window: any
declare const sessionStorage: any
type HTMLElement = any
type HTMLInputElement = any

const MODEL = 'tiny-chat'
const KEY = 'console-test-key-9f2c'
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
/** Generous: the page refreshes every 2 s and the peer is dead on the nodes in well under a second. */
const DEATH_LIMIT_MS = 20_000
/** Safety limit for a model copy, load and a chat on a 2-core machine shared with other work (~10 s quiet). */
const BUSY_LIMIT_MS = 180_000

/**
 * startNode, once more on new ports when the free ports it picked were taken meanwhile by another
 * process of a busy machine (freePorts can only say they were free when it looked).
 */
async function start (opts: Parameters<typeof startNode>[0]): Promise<NodeProcess> {
  try {
    return await startNode(opts)
  } catch (err) {
    if (!/already in use/.test(String(err))) throw err
    return await startNode(opts)
  }
}

async function chromium (): Promise<string> {
  try {
    await fs.access(CHROMIUM, fs.constants.X_OK)
    return CHROMIUM
  } catch {
    throw new Error(`No Chromium at ${CHROMIUM}: the console tests need Debian's chromium (apt install chromium) or CHROMIUM_PATH naming a Chromium binary`)
  }
}

/** The status the page shows on node `id`'s card, or undefined when it has no card. */
async function cardStatus (page: Page, id: string): Promise<string | undefined> {
  return await page.evaluate((nodeId) => {
    const card = [...document.querySelectorAll('#node-list .node')].find(el => el.dataset.id === nodeId)
    return card?.dataset.status
  }, id)
}

/**
 * Clicks a button the page re-renders with its data (every refresh may replace it): found and
 * clicked in one step inside the page, so it cannot be detached between the two.
 */
async function press (page: Page, selector: string): Promise<void> {
  await page.$eval(selector, el => { el.click() })
}

async function cards (page: Page): Promise<Array<{ id: string, name: string, status: string, meters: string[] }>> {
  return await page.evaluate(() => [...document.querySelectorAll('#node-list .node')].map(el => ({
    id: el.dataset.id ?? '',
    name: el.dataset.name ?? '',
    status: el.dataset.status ?? '',
    meters: [...el.querySelectorAll('.meter')].map(m => m.dataset.meter ?? '')
  })))
}

describe('console page in headless Chromium on a 3-node mesh', () => {
  const nodes: NodeProcess[] = []
  let a: NodeProcess
  let b: NodeProcess
  let c: NodeProcess
  let browser: Browser | undefined
  const pageErrors: string[] = []

  before(async () => {
    const executablePath = await chromium()
    const modelsDir = await tempDir('shepherd-console-models-')
    await createTinyModel(path.join(modelsDir, `${MODEL}.gguf`))
    const common = ['--threads', '1']
    a = await start({ name: 'console-a', args: [...common, '--models-dir', modelsDir], timeoutMs: 60_000 })
    nodes.push(a)
    const boot = ['--bootstrap', `/ip4/127.0.0.1/tcp/${a.p2pPort}`]
    const emptyB = await tempDir('shepherd-console-models-')
    const emptyC = await tempDir('shepherd-console-models-')
    ;[b, c] = await Promise.all([
      start({ name: 'console-b', args: [...common, ...boot, '--models-dir', emptyB], timeoutMs: 60_000 }),
      start({ name: 'console-c', args: [...common, ...boot, '--models-dir', emptyC], env: { SHEPHERD_API_KEYS: KEY }, timeoutMs: 60_000 })
    ])
    nodes.push(b, c)
    await waitFor('all three alive on a, and one leader for default', async () => {
      const { peers } = await getJson(`${a.api}/api/peers`)
      const g = await getJson(`${a.api}/api/groups/default`)
      return peers.filter((p: any) => p.status === 'alive').length === 2 && g.leader != null && g.members.length === 3
    }, 30_000)
    browser = await puppeteer.launch({ executablePath, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
  })

  after(async () => {
    await browser?.close()
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
  })

  /** The last stderr lines of each node, for a failure's message. */
  const logTails = (): string => nodes.map(n => `${n.name}: ${n.stderr.join('').slice(-1500)}`).join('\n')

  async function open (api: string, viewport: { width: number, height: number, deviceScaleFactor?: number } = { width: 1280, height: 900 }): Promise<Page> {
    if (browser == null) throw new Error('no browser')
    const page = await browser.newPage()
    await page.setViewport(viewport)
    page.on('pageerror', err => { pageErrors.push(String(err)) })
    // The page's own CSP refusing something the page does (an inline style, a script) is a bug.
    page.on('console', msg => { if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) pageErrors.push(msg.text()) })
    await page.goto(api + '/', { waitUntil: 'domcontentloaded' })
    return page
  }

  it('answers API clients at / as Ollama does, and a browser with the page and its assets', async () => {
    const plain = await fetch(`${a.api}/`)
    assert.equal(plain.status, 200)
    assert.equal(await plain.text(), 'Ollama is running')
    const curl = await fetch(`${a.api}/`, { headers: { accept: '*/*' } })
    assert.equal(await curl.text(), 'Ollama is running')
    const html = await fetch(`${a.api}/`, { headers: { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' } })
    assert.equal(html.status, 200)
    assert.match(html.headers.get('content-type') ?? '', /^text\/html/)
    assert.match(html.headers.get('content-security-policy') ?? '', /frame-ancestors 'none'/)
    assert.match(await html.text(), /<script type="module" src="\/console\/console.js">/)
    const js = await fetch(`${a.api}/console/console.js`)
    assert.equal(js.status, 200)
    assert.match(js.headers.get('content-type') ?? '', /^text\/javascript/)
    assert.equal((await fetch(`${a.api}/console/../package.json`)).status, 404)
    assert.equal((await fetch(`${a.api}/console/index.html`)).status, 404, 'only the listed assets are served')

    // With a key: the page and its assets are public (they hold no data), the API is not.
    assert.equal((await fetch(`${c.api}/`, { headers: { accept: 'text/html' } })).status, 200)
    assert.equal((await fetch(`${c.api}/console/console.css`)).status, 200)
    assert.equal((await fetch(`${c.api}/`)).status, 401, 'an API client without the key is refused at / as before')
    assert.equal((await fetch(`${c.api}/api/peers`, { headers: { accept: 'text/html' } })).status, 401)
    const keyed = await fetch(`${c.api}/`, { headers: { authorization: `Bearer ${KEY}` } })
    assert.equal(await keyed.text(), 'Ollama is running')
  })

  it('renders the three nodes with status, resource bars and the model', async () => {
    const page = await open(a.api)
    const { value } = await waitFor('three alive cards', async () => {
      const list = await cards(page)
      return list.length === 3 && list.every(x => x.status === 'alive') ? list : null
    }, 15_000, 200)
    assert.deepEqual(value.map(x => x.id).sort(), [a.id, b.id, c.id].sort())
    assert.deepEqual(value.map(x => x.name).sort(), ['console-a', 'console-b', 'console-c'])
    for (const card of value) assert.ok(card.meters.includes('cpu') && card.meters.includes('ram'), `bars on ${card.name}: ${card.meters.join(',')}`)
    await waitFor('the model listed with its host', async () => await page.evaluate((m) =>
      document.querySelector(`#model-table tr[data-model="${m}"]`)?.textContent?.includes('console-a') === true, MODEL), 15_000, 200)
    const leader = await page.evaluate(() => document.querySelector('#group-list [data-group="default"] .facts')?.textContent ?? '')
    assert.match(leader, /^leader console-[abc]/)
    await page.close()
  })

  it('draws GPU and VRAM bars with temperatures for a node with GPUs (real nvidia-smi output)', async () => {
    // No GPU here: this node's answer is given the GPUs the project's parser reads from a real 2-GPU nvidia-smi.
    const { gpus } = parseNvidiaSmiXml(await fs.readFile(path.join(ROOT, 'test/fixtures/gpu/nvidia-smi-q-x-2xRTXA5000-v13.xml'), 'utf8'))
    assert.equal(gpus.length, 2)
    if (browser == null) throw new Error('no browser')
    const page = await browser.newPage()
    page.on('console', msg => { if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) pageErrors.push(msg.text()) })
    await page.setRequestInterception(true)
    page.on('request', (req) => {
      if (!req.url().endsWith('/api/node')) { void req.continue(); return }
      void getJson(req.url()).then(self => req.respond({ status: 200, contentType: 'application/json', body: JSON.stringify({ ...self, resources: { ...self.resources, gpus } }) }))
    })
    await page.goto(a.api + '/', { waitUntil: 'domcontentloaded' })
    const card = `#node-list .node[data-id="${a.id}"]`
    await page.waitForSelector(`${card} .meter[data-meter="vram"]`, { timeout: 15_000 })
    const meters = await page.$$eval(`${card} .meter`, els => els.map(el => ({ kind: el.dataset.meter, value: el.querySelector('.v')?.textContent ?? '', width: el.querySelector('i')?.style.width })))
    const vram = meters.filter(m => m.kind === 'vram')
    const gpu = meters.filter(m => m.kind === 'gpu')
    assert.equal(vram.length, 2)
    assert.equal(gpu.length, 2)
    gpus.forEach((g, i) => {
      assert.equal(vram[i].width, `${Math.round(g.usedMemoryBytes / g.totalMemoryBytes * 100)}%`)
      if (g.temperatureC != null) assert.match(gpu[i].value, new RegExp(`${Math.round(g.temperatureC)}°C`))
    })
    const names = await page.$eval(card, el => el.textContent ?? '')
    assert.ok(names.includes(gpus[0].name), names)
    await page.close()
  })

  it('loads and unloads a model, shows a node\'s logs and the command audit', async () => {
    const page = await open(a.api)
    const hostState = async (): Promise<string | undefined> => await page.evaluate((m, id) =>
      document.querySelector(`#model-table tr[data-model="${m}"] button[data-node="${id}"]`)?.getAttribute('data-action') ?? undefined, MODEL, a.id)
    await waitFor('a load button for the model on a', async () => await hostState() === 'load', 15_000, 100)
    await press(page, `#model-table tr[data-model="${MODEL}"] button[data-node="${a.id}"]`)
    await waitFor('loaded on a, as the page shows it', async () => await hostState() === 'unload', BUSY_LIMIT_MS, 100)
    assert.equal((await getJson(`${a.api}/api/node`)).models.find((m: any) => m.name === MODEL)?.state, 'loaded')
    await press(page, `#model-table tr[data-model="${MODEL}"] button[data-node="${a.id}"]`)
    await waitFor('unloaded on a, as the page shows it', async () => await hostState() === 'load', 30_000, 100)
    assert.equal((await getJson(`${a.api}/api/node`)).models.find((m: any) => m.name === MODEL)?.state, 'on_disk')

    await press(page, `#node-list .node[data-id="${a.id}"] button[data-action="logs"]`)
    await waitFor('log lines', async () => await page.$eval('#logs-out', el => /^\{"t":"/m.test(el.textContent ?? '')), 30_000, 100)

    await page.click('#audit-refresh')
    await waitFor('the commands in the audit', async () => await page.$$eval('#audit-table tbody tr', rows => {
      const text = rows.map(r => r.textContent ?? '')
      return ['load_model', 'unload_model', 'collect_logs'].every(t => text.some(x => x.includes(t)))
    }), 15_000, 200)
    assert.equal(await page.$eval('#banner', el => (el as HTMLElement).hidden), true, 'no error shown')
    await page.close()
  })

  it('deploys from the page until the deployment is placed, then the playground streams through the mesh', async () => {
    const page = await open(a.api)
    await page.waitForSelector(`#deploy-model option[value="${MODEL}"]`, { timeout: 15_000 })
    await page.select('#deploy-model', MODEL)
    await page.$eval('#deploy-replicas', el => { (el as HTMLInputElement).value = '2' })
    const t0 = performance.now()
    await page.click('#deploy-form button[type="submit"]')
    await page.waitForSelector(`#deployment-table tr[data-model="${MODEL}"][data-phase="placed"]`, { timeout: BUSY_LIMIT_MS }).catch(async (err: Error) => {
      const shown = await page.evaluate(() => ({ banner: document.getElementById('banner')?.textContent, row: document.querySelector('#deployment-table tbody')?.textContent }))
      const api = await getJson(`${a.api}/api/deployments`).catch((e: Error) => e.message)
      throw new Error(`${err.message}; the page shows ${JSON.stringify(shown)}; the API ${JSON.stringify(api)}`)
    })
    console.log(`# placed ${(performance.now() - t0).toFixed(0)} ms after the click`)
    const { deployments } = await getJson(`${a.api}/api/deployments`)
    const d = deployments.find((x: any) => x.model === MODEL)
    assert.equal(d.replicas, 2)
    // At least: the leader may hold an extra for a moment (it unloads extras on its next rounds).
    assert.ok(d.status.actual.filter((r: any) => r.state === 'loaded').length >= 2, `the page says placed only when both replicas are loaded: ${JSON.stringify(d.status)}`)

    // The playground: a streamed chat; the page names the node that answered and its speed.
    await page.select('#chat-model', MODEL)
    await page.$eval('#chat-max', el => { (el as HTMLInputElement).value = '48' })
    const sent = page.waitForResponse(res => res.url().endsWith('/v1/chat/completions'), { timeout: BUSY_LIMIT_MS })
    await page.type('#chat-input', 'hello world')
    await page.click('#chat-send')
    const response = await sent
    assert.equal(JSON.parse(response.request().postData() ?? '{}').stream, true)
    assert.match(response.headers()['content-type'] ?? '', /^text\/event-stream/, `${response.status()} ${await response.text().catch(() => '')}; ${logTails()}`)
    await page.waitForSelector('#chat-log [data-role="reply"][data-done="true"], #chat-log .error', { timeout: BUSY_LIMIT_MS }).catch(async (err: Error) => {
      const shown = await page.evaluate(() => ({ log: document.getElementById('chat-log')?.textContent, meta: document.getElementById('chat-meta')?.textContent }))
      throw new Error(`${err.message}; the page shows ${JSON.stringify(shown)}`)
    })
    const reply = await page.evaluate(() => {
      const el = document.querySelector('#chat-log [data-role="reply"]')
      const meta = document.getElementById('chat-meta') as HTMLElement
      return { host: el?.dataset.host, text: el?.querySelector('span')?.textContent ?? '', meta: meta.textContent ?? '', rate: Number(meta.dataset.tokensPerSec), error: el?.classList.contains('error'), pieces: Number(el?.dataset.pieces) }
    })
    assert.equal(reply.error, false, reply.text)
    console.log(`# playground: ${reply.meta} (text arrived in ${reply.pieces} reads)`)
    const holders = d.status.actual.map((r: any) => r.nodeId)
    assert.ok(holders.includes(reply.host), `answered by a replica holder (${String(reply.host)})`)
    const answeredBy = nodes.find(n => n.id === reply.host)
    assert.ok(answeredBy != null)
    assert.match(reply.meta, new RegExp(`answered by ${answeredBy.name} .* (\\d+) tokens · [0-9.]+ tok/s`))
    const tokens = Number(/ (\d+) tokens/.exec(reply.meta)?.[1])
    assert.ok(tokens >= 1 && reply.rate > 0, reply.meta)
    assert.ok(reply.text.length > 0)
    // The reply grew on the page as the chunks came, not in one piece at the end.
    assert.ok(reply.pieces >= 2, `the reply arrived in ${reply.pieces} reads for ${tokens} tokens`)

    if (process.env.CONSOLE_SCREENSHOTS != null) await screenshots(page, a.api)
    await page.close()
  })

  async function screenshots (page: Page, api: string): Promise<void> {
    const dir = path.join(ROOT, process.env.CONSOLE_SCREENSHOTS === '' ? 'docs' : (process.env.CONSOLE_SCREENSHOTS ?? 'docs'))
    await page.evaluate(() => { window.scrollTo(0, 0) })
    await page.screenshot({ path: path.join(dir, 'console-desktop.png'), fullPage: true })
    await page.$eval('#playground', el => { el.scrollIntoView() })
    await page.screenshot({ path: path.join(dir, 'console-playground-desktop.png') })
    const phone = await open(api, { width: 390, height: 844, deviceScaleFactor: 2 })
    await phone.waitForSelector('#node-list .node', { timeout: 15_000 })
    await new Promise(resolve => setTimeout(resolve, 2500))
    await phone.screenshot({ path: path.join(dir, 'console-phone.png') })
    await phone.waitForSelector(`#chat-model option[value="${MODEL}"]`, { timeout: 15_000 })
    await phone.select('#chat-model', MODEL)
    await phone.$eval('#chat-max', el => { el.value = '24' })
    await phone.type('#chat-input', 'hello')
    await phone.$eval('#chat-form', form => { form.requestSubmit() })
    await phone.waitForSelector('#chat-log [data-role="reply"][data-done="true"], #chat-log .error', { timeout: BUSY_LIMIT_MS }).catch(async (err: Error) => {
      const shown = await phone.evaluate(() => ({ log: document.getElementById('chat-log')?.textContent, meta: document.getElementById('chat-meta')?.textContent }))
      throw new Error(`phone playground: ${err.message}; the page shows ${JSON.stringify(shown)}`)
    })
    await phone.$eval('#playground', el => { el.scrollIntoView() })
    await phone.screenshot({ path: path.join(dir, 'console-playground-phone.png') })
    await phone.close()
  }

  it('asks for the API key on a node that has one, refuses a wrong one and works with the right one', async () => {
    const page = await open(c.api)
    await page.waitForSelector('#key-dialog:not([hidden])', { timeout: 15_000 })
    assert.equal((await cards(page)).length, 0, 'nothing shown without the key')
    await page.type('#key-input', 'wrong-key')
    await page.click('#key-form button[type="submit"]')
    await waitFor('the wrong key refused', async () => await page.evaluate(() =>
      !(document.getElementById('key-dialog') as HTMLElement).hidden && document.getElementById('key-error')?.textContent === 'That key was refused.'), 15_000, 100)
    await page.$eval('#key-input', el => { (el as HTMLInputElement).value = '' })
    await page.type('#key-input', KEY)
    await page.click('#key-form button[type="submit"]')
    await waitFor('three alive cards on the keyed node', async () => {
      const list = await cards(page)
      return list.length === 3 && list.every(x => x.status === 'alive')
    }, 15_000, 200)
    assert.equal(await page.$eval('#key-dialog', el => (el as HTMLElement).hidden), true)
    // Live events arrive over fetch() with the key (EventSource cannot send one).
    await waitFor('live events on', async () => await page.$eval('#live', el => (el as HTMLElement).dataset.state === 'on'), 15_000, 100)
    assert.equal(await page.evaluate(() => sessionStorage.getItem('shepherd-api-key')), KEY)
    await page.close()
  })

  it("shows a peer's death within the detection time", async () => {
    const page = await open(a.api)
    await waitFor('b alive on the page', async () => await cardStatus(page, b.id) === 'alive', 15_000, 100)
    await waitFor('live events on', async () => await page.$eval('#live', el => (el as HTMLElement).dataset.state === 'on'), 15_000, 100)
    const t0 = performance.now()
    await stopNode(b, 'SIGKILL')
    const { ms } = await waitFor('b dead on the page', async () => await cardStatus(page, b.id) === 'dead', DEATH_LIMIT_MS, 50)
    console.log(`# kill -9 → dead on the page in ${ms.toFixed(0)} ms (${(performance.now() - t0).toFixed(0)} ms)`)
    const events = await page.$$eval('#event-list li', els => els.map(el => el.textContent ?? ''))
    assert.ok(events.some(e => e.includes('peer:dead')), `the events list shows it: ${events.slice(0, 5).join(' | ')}`)
    await page.close()
    assert.deepEqual(pageErrors, [], 'no script error on any page')
  })
})

describe('console page: admitting a pending node', () => {
  const nodes: NodeProcess[] = []
  let browser: Browser | undefined

  before(async () => {
    const executablePath = await chromium()
    // The product default: no swarm key, a newcomer waits as pending until a member admits it.
    const founder = await start({ name: 'console-founder', membership: 'admission', args: ['--threads', '1'], timeoutMs: 60_000 })
    nodes.push(founder)
    nodes.push(await start({ name: 'console-newcomer', membership: 'admission', args: ['--threads', '1', '--bootstrap', `/ip4/127.0.0.1/tcp/${founder.p2pPort}`], timeoutMs: 60_000 }))
    browser = await puppeteer.launch({ executablePath, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
  })

  after(async () => {
    await browser?.close()
    await Promise.all(nodes.map(async n => await stopNode(n, 'SIGKILL')))
  })

  it('shows the newcomer as pending with an Admit button, and as an alive member once admitted', async () => {
    const [founder, newcomer] = nodes
    if (browser == null) throw new Error('no browser')
    const page = await browser.newPage()
    await page.goto(founder.api + '/', { waitUntil: 'domcontentloaded' })
    const card = `#node-list .node[data-id="${newcomer.id}"]`
    await page.waitForSelector(`${card}[data-status="pending"] button[data-action="admit"]`, { timeout: 30_000 })
    await press(page, `${card} button[data-action="admit"]`)
    await page.waitForSelector(`${card}[data-status="alive"]`, { timeout: 30_000 })
    // The page's next refresh (within 2 s) has the member's trust too: by then no Admit button.
    await waitFor('no Admit button on the member', async () => await page.$(`${card} button[data-action="admit"]`) == null, 5_000, 100)
    const { members } = await getJson(`${founder.api}/api/members`)
    assert.equal(members.find((m: any) => m.id === newcomer.id)?.status, 'member')
    await page.close()
  })
})
