import assert from 'node:assert/strict'
import type { FastifyInstance } from 'fastify'
import { buildApi } from '../../src/api/index.js'
import { resolveOptions } from '../../src/config/index.js'
import { logSink, setLogSink } from '../../src/logger.js'
import { MeshNode } from '../../src/node/index.js'
import { tempDir } from './cluster.js'

/** A real node (no peers, no model) and its API for `fastify.inject` fuzzing, quiet while it runs. */
export interface FuzzApi {
  node: MeshNode
  app: FastifyInstance
  /** Closes both, restores the log sink and checks that nothing polluted `Object.prototype`. */
  close: () => Promise<void>
}

export async function startFuzzApi (name: string, key: string, bodyLimitBytes: number): Promise<FuzzApi> {
  const protoKeys = Object.getOwnPropertyNames(Object.prototype).sort()
  const originalSink = logSink
  setLogSink(() => {})
  const opts = await resolveOptions({ env: {}, flags: { 'no-mdns': true, 'data-dir': await tempDir(`shepherd-${name}-`), listen: ['/ip4/127.0.0.1/tcp/0'], 'api-key': [key], name } })
  const node = await MeshNode.create(opts)
  await node.start()
  const app = await buildApi({ node, bodyLimitBytes })
  return {
    node,
    app,
    close: async () => {
      await app.close()
      await node.stop({ announce: false })
      setLogSink(originalSink)
      assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), protoKeys, 'Object.prototype gained keys')
      assert.equal(({} as Record<string, unknown>).polluted, undefined)
    }
  }
}
