/** Starts bench/standin-process.ts as a child and hands back its URL and pid. */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const SCRIPT = fileURLToPath(new URL('./standin-process.ts', import.meta.url))

export class StandinProcess {
  private constructor (private readonly child: ChildProcess, readonly url: string) {}

  get pid (): number | undefined {
    return this.child.pid
  }

  static async start (): Promise<StandinProcess> {
    const child = spawn(process.execPath, ['--import', 'tsx', SCRIPT], { stdio: ['pipe', 'pipe', 'inherit'] })
    const url = await new Promise<string>((resolve, reject) => {
      let buf = ''
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        buf += d
        const m = /^standin (\S+)$/m.exec(buf)
        if (m != null) resolve(m[1])
      })
      child.once('exit', code => { reject(new Error(`the upstream stand-in exited with ${code}`)) })
    })
    return new StandinProcess(child, url)
  }

  async close (): Promise<void> {
    if (this.child.exitCode != null || this.child.signalCode != null) return
    await new Promise<void>(resolve => {
      this.child.once('exit', () => { resolve() })
      this.child.kill('SIGTERM')
    })
  }
}
