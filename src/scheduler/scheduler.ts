import type { MeshNode } from '../node/index.js'
import { Reconciler } from './reconciler.js'
import { Router } from './router.js'
import { reconcilerViewOf, routerPortsOf } from './router-ports.js'

/** The scheduler of one node: its request router and, for the groups it leads, the reconciler. */
export class Scheduler {
  readonly router: Router
  readonly reconciler: Reconciler

  constructor (readonly node: MeshNode, opts: { reconcileIntervalMs?: number, pendingTtlMs?: number } = {}) {
    const o = node.options
    this.router = new Router(routerPortsOf(node), { strategy: () => o.routing, breakerFailures: o.breakerFailures, breakerCooldownMs: o.breakerCooldownMs, prefixRouting: () => o.prefixRouting, prefixLoadSlack: () => o.prefixLoadSlack })
    this.reconciler = new Reconciler(reconcilerViewOf(node), this.router, {
      intervalMs: opts.reconcileIntervalMs ?? 1000,
      pendingTtlMs: opts.pendingTtlMs ?? 120_000,
      send: async (target, type, payload, ctx) => await node.control.send(target, type, payload, { ...ctx, ttlMs: 15 * 60_000 })
    })
  }

  start (): void {
    this.reconciler.start()
  }

  stop (): void {
    this.reconciler.stop()
  }
}
