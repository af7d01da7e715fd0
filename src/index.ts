/** Programmatic API of shepherd-mesh. */
import './polyfill.js'
export { MeshNode, type PeerView, type PeerEvent } from './node/index.js'
export { buildApi } from './api/index.js'
export { resolveOptions, defaultOptions, type NodeOptions } from './config/index.js'
export { main } from './cli/index.js'
