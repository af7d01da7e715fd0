/**
 * Free TCP ports for child servers. The OS picks one (listen on port 0, read it, close); the
 * port is free at that moment only, so a child that then fails to bind it is started again on
 * another (see `isAddressInUse` and `portInUse`).
 */
import { createServer } from 'node:net'

/** Asks the OS for a TCP port that is free on `host` right now. */
export async function freePort (host = '127.0.0.1'): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(err => {
        if (err !== undefined) reject(err)
        else if (port === 0) reject(new Error(`the OS gave no port on ${host}`))
        else resolve(port)
      })
    })
  })
}

/** Log text of a server that could not bind its port (llama.cpp's wording and the errno names). */
const ADDRESS_IN_USE = /EADDRINUSE|address already in use|couldn't bind|could not bind|failed to bind/i

/** True when a child server's output says its port was taken. */
export function isAddressInUse (output: string): boolean {
  return ADDRESS_IN_USE.test(output)
}

/**
 * True when something holds `port` on `host`: a child that exited without saying why (its
 * logger may not flush on exit) is checked this way for a lost race to its port.
 */
export async function portInUse (port: number, host = '127.0.0.1'): Promise<boolean> {
  return await new Promise<boolean>(resolve => {
    const server = createServer()
    server.unref()
    server.once('error', (err: NodeJS.ErrnoException) => { resolve(err.code === 'EADDRINUSE') })
    server.listen({ host, port, exclusive: true }, () => {
      server.close(() => { resolve(false) })
    })
  })
}
