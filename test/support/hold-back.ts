/**
 * Slows a process down without stopping it: SIGSTOP for 40 ms of every 50, SIGCONT between.
 * A test that must act mid-answer (kill a worker at the second chunk) holds the process that
 * produces the answer back, so a busy machine that schedules the test late cannot let the answer
 * finish first. `signal` sends one signal to the process (errors once it is gone are ignored).
 * Returns `release`: stops holding and lets the process run (safe to call more than once).
 */
export function holdBack (signal: (sig: NodeJS.Signals) => void): () => void {
  const send = (sig: NodeJS.Signals): void => { try { signal(sig) } catch {} }
  let held = true
  const hold = setInterval(() => {
    send('SIGSTOP')
    setTimeout(() => { if (held) send('SIGCONT') }, 40)
  }, 50)
  return () => {
    if (!held) return
    held = false
    clearInterval(hold)
    send('SIGCONT')
  }
}
