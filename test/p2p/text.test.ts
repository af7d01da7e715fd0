import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { hasControl, stripControl, stripControlDeep } from '../../src/p2p/index.js'

const ESC = '\u001b'
const HOSTILE = [
  `${ESC}[2J${ESC}[Hclear`,
  `${ESC}]8;;http://evil.example/${ESC}\\link${ESC}]8;;${ESC}\\`,
  'fake\nrow\r',
  'tab\there',
  'del\u007f',
  'c1\u009b31m\u0085',
  'bidi\u202e\u202a\u2066\u2069'
]

describe('stripControl', () => {
  it('removes C0, DEL, C1 and bidi controls and keeps the printable rest', () => {
    assert.equal(stripControl(HOSTILE[0]), '[2J[Hclear')
    assert.equal(stripControl(HOSTILE[1]), ']8;;http://evil.example/\\link]8;;\\')
    assert.equal(stripControl(HOSTILE[2]), 'fakerow')
    assert.equal(stripControl(HOSTILE[3]), 'tabhere')
    assert.equal(stripControl(HOSTILE[4]), 'del')
    assert.equal(stripControl(HOSTILE[5]), 'c131m')
    assert.equal(stripControl(HOSTILE[6]), 'bidi')
    for (const s of HOSTILE) {
      assert.equal(hasControl(s), true, JSON.stringify(s))
      assert.equal(hasControl(stripControl(s)), false)
    }
  })

  it('keeps ordinary names, Unicode letters and emoji untouched (same string)', () => {
    for (const s of ['gpu-box-1', 'NVIDIA H100 80GB HBM3', 'llama3.1:8b', 'Müller’s Rechner', '東京ノード', 'node 🚀', 'zone=eu-west/1', '\u00a0nbsp']) {
      assert.equal(stripControl(s), s)
      assert.equal(hasControl(s), false)
    }
  })
})

describe('stripControlDeep', () => {
  it('cleans every string and key of a peer view, at any depth', () => {
    const peer = {
      id: '12D3KooWabc',
      name: `${ESC}[2Jevil`,
      labels: { [`k${ESC}[31m`]: `${ESC}]8;;http://x/${ESC}\\v` },
      resources: { gpus: [{ index: 0, name: `H100${ESC}[8m`, totalMemoryBytes: 1 }] },
      models: [{ name: 'm\u202eodel', sizeBytes: 5, fingerprint: null }],
      groups: ['g\u0007'],
      lastSeen: null,
      ok: true
    }
    const out = stripControlDeep(peer)
    assert.equal(out.name, '[2Jevil')
    assert.deepEqual(out.labels, { 'k[31m': ']8;;http://x/\\v' })
    assert.equal(out.resources.gpus[0].name, 'H100[8m')
    assert.equal(out.resources.gpus[0].totalMemoryBytes, 1)
    assert.equal(out.models[0].name, 'model')
    assert.deepEqual(out.groups, ['g'])
    assert.equal(out.lastSeen, null)
    assert.equal(out.ok, true)
    assert.equal(hasControl(JSON.stringify(out)), false)
    assert.ok(!JSON.stringify(out).includes('\\u001b'))
    // The input is not modified.
    assert.equal(peer.name, `${ESC}[2Jevil`)
  })

  it('returns clean values as they are (no copy) and leaves non-plain objects alone', () => {
    const clean = { a: 'x', b: [1, 'y', { c: 'z' }] }
    assert.equal(stripControlDeep(clean), clean)
    const date = new Date(0)
    assert.equal(stripControlDeep(date), date)
    assert.equal(stripControlDeep(null), null)
    assert.equal(stripControlDeep(5), 5)
  })

  it('never turns a cleaned __proto__ key into a prototype', () => {
    const hostile = JSON.parse(`{"__proto__${'\\u0007'}": {"polluted": true}}`)
    const out = stripControlDeep(hostile) as Record<string, unknown>
    assert.equal(Object.getPrototypeOf(out), Object.prototype)
    assert.deepEqual(Object.keys(out), ['__proto__'])
    assert.equal((out as any).polluted, undefined)
    assert.equal(({} as any).polluted, undefined)
  })
})
