/**
 * Stored responses (`store`, `previous_response_id`, `item_reference`, `GET`/`DELETE
 * /v1/responses/:id`), kept in memory on the node whose API answered, bounded by count and bytes,
 * least recently used first out. Node-local on purpose: the client talks to one entry node, and
 * the stored conversation (which may hold prompts) never crosses the mesh. Pure: no I/O.
 *
 * Each response belongs to the API key that created it (`owner`, a digest; null on a node without
 * keys): another key's id is not found, exactly like an unknown one, so holding one key to a shared
 * node does not open another key holder's conversations, nor tell that they exist.
 */

type Item = Record<string, unknown>

/** One stored response: the object as answered, and the conversation a follow-up continues. */
export interface StoredResponse {
  response: Record<string, unknown>
  /** Input items of the whole chain (previous responses' included) then this response's output. */
  conversation: Item[]
}

export interface ResponseStoreLimits {
  /** Responses kept at most. */
  maxResponses: number
  /** Bytes (JSON) kept at most, over every stored response. */
  maxBytes: number
}

/** Who may read a stored response: a digest naming the API key that stored it, or null without keys. */
export type ResponseOwner = string | null

interface Entry extends StoredResponse {
  owner: ResponseOwner
  bytes: number
  /** Ids of this response's output items, indexed for `item_reference`. */
  itemIds: string[]
}

/** An LRU of responses; `item()` finds an output item of any stored response by its id. */
export class ResponseStore {
  private readonly entries = new Map<string, Entry>()
  /** Output item id → the response holding it (its owner is checked through the entry). */
  private readonly items = new Map<string, { item: Item, response: string }>()
  private bytes = 0

  constructor (private readonly limits: ResponseStoreLimits) {
    if (!(limits.maxResponses >= 0) || !(limits.maxBytes >= 0)) throw new RangeError('response store limits must be non-negative')
  }

  /** Keeps a response for `owner`; false when it alone is over the byte bound (then it is not kept). */
  put (id: string, stored: StoredResponse, owner: ResponseOwner = null): boolean {
    this.drop(id)
    const bytes = Buffer.byteLength(JSON.stringify(stored))
    if (bytes > this.limits.maxBytes || this.limits.maxResponses === 0) return false
    const output = Array.isArray(stored.response.output) ? stored.response.output as Item[] : []
    const itemIds = output.flatMap(item => typeof item.id === 'string' ? [item.id] : [])
    this.entries.set(id, { ...stored, owner, bytes, itemIds })
    for (const [i, itemId] of itemIds.entries()) this.items.set(itemId, { item: output[i], response: id })
    this.bytes += bytes
    while (this.entries.size > this.limits.maxResponses || this.bytes > this.limits.maxBytes) {
      this.drop(this.entries.keys().next().value as string)
    }
    return true
  }

  /** A stored response of `owner`'s, now the most recently used. */
  get (id: string, owner: ResponseOwner = null): StoredResponse | undefined {
    const entry = this.entries.get(id)
    if (entry === undefined || entry.owner !== owner) return undefined
    this.entries.delete(id)
    this.entries.set(id, entry)
    return { response: entry.response, conversation: entry.conversation }
  }

  /** An output item of one of `owner`'s stored responses (`item_reference`). */
  item (id: string, owner: ResponseOwner = null): Item | undefined {
    const found = this.items.get(id)
    return found !== undefined && this.entries.get(found.response)?.owner === owner ? found.item : undefined
  }

  /** Forgets one of `owner`'s responses; false when `owner` has none by that id. */
  delete (id: string, owner: ResponseOwner = null): boolean {
    if (this.entries.get(id)?.owner !== owner) return false
    return this.drop(id)
  }

  private drop (id: string): boolean {
    const entry = this.entries.get(id)
    if (entry === undefined) return false
    this.entries.delete(id)
    this.bytes -= entry.bytes
    for (const itemId of entry.itemIds) this.items.delete(itemId)
    return true
  }

  get size (): number {
    return this.entries.size
  }

  get totalBytes (): number {
    return this.bytes
  }
}
